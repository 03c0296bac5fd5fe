"""Research code: data loaders, training, validation and export of PGRD, HSRDiff and the baselines.

Imports the engine (``DiffSegUncertaintyLib.engine``), never Slicer. Entry points:
``python -m training.train`` and ``python -m training.export`` (docs/training.md).
"""
