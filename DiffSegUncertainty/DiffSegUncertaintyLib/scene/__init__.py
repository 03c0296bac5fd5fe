"""The scene layer: runs ``diffseg sample`` in a background process and turns its output files into MRML
nodes (slicer-core; never Qt, never torch at import time). Modules:

- ``logic``: DiffSegUncertaintyLogic, the whole flow (validate, write inputs, run, load, export)
- ``inputs``: checks against the model card, ROI -> LPS box, temporary NRRDs
- ``runner``: the background process (own process group, cancel kills the tree)
- ``progress``: ``progress k/N`` lines -> step, pass, time left
- ``results``: output files -> nodes in a subject-hierarchy folder, all or nothing
- ``export``: one run -> .seg.nrrd, NIfTI consensus, NRRD maps, TSV volumes
- ``colors``: the Inferno colour table; ``signal``: a pure-Python Signal; ``app``: headless set-up
"""
