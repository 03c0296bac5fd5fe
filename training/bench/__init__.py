"""Helpers of ``training/benchmark_sampling.py`` (issue 7): the paper-faithful reference samplers
(``reference``) and the timing / memory / FLOP measurements (``measure``)."""
