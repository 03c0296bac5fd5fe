"""Keep freed memory in the process (Linux, glibc), so the sampler's per-step tensors reuse pages.

Why: every denoising step allocates and frees the same activations (16 hypotheses of 64 x 64 x 64
channels are 16 MB each). glibc serves blocks above its mmap threshold with fresh ``mmap`` calls and gives
them back on ``free``, so each step page-faults its whole working set again: the whole-CT demo took
4.4 million minor page faults and 16 s of system time for 22 s of sampling. Raising the mmap and trim
thresholds keeps the freed blocks in the heap: 128 thousand faults and 16 s of sampling, the same
hypotheses bit for bit, about 20 % more peak memory (docs/benchmarks.md "Allocator"). This is glibc's
documented ``mallopt`` tuning, what ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` set from the
environment; jemalloc or tcmalloc would do the same but need LD_PRELOAD before the process starts.

Only ``diffseg`` (its own process: the command line and the module's background run) calls it; a library
caller keeps its process's allocator settings.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc malloc.h

#: Blocks below this come from the heap and stay there when freed. glibc versions that cap the mmap
#: threshold (at 32 MiB on 64-bit before 2.35) refuse 1 GiB; the cap is tried next.
MMAP_THRESHOLDS = (1 << 30, 32 << 20)
TRIM_THRESHOLD = 2 << 30   # free heap kept before it is returned to the system
TOP_PAD = 64 << 20         # extra heap asked for at each growth


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where there is no glibc ``mallopt``
    (macOS, Windows, musl: nothing changed) or glibc refused a setting."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not any(mallopt(M_MMAP_THRESHOLD, v) == 1 for v in MMAP_THRESHOLDS):
        return False
    return mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and mallopt(M_TOP_PAD, TOP_PAD) == 1
