"""The engine: networks, diffusion, sampling, uncertainty, metrics, model files and the command line.

Imports torch, numpy, SimpleITK, MONAI; never Slicer, VTK or Qt. Importing this package is cheap: the
submodules are imported by whoever needs them.
"""
