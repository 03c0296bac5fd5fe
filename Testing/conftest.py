"""Suite-wide settings and the real-data fixtures.

One torch thread: the suite's models are tiny, and on the 2-core CI machine several threads per tiny
convolution cost more in synchronisation than they gain (measured 10-40x slower under contention).

The real data lives beside the project (../shared/data, or DIFFSEG_LIDC / DIFFSEG_GLIOMA); a test that
needs it is skipped with the reason when it is absent.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # also for session fixtures, which are built before any test's fixture


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test starts with one torch thread, whatever the one before it set (the benchmark's
    --threads, for instance)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `import training` from any working directory
    sys.path.insert(0, str(REPO))

LIDC = Path(os.environ.get("DIFFSEG_LIDC", REPO.parent / "shared" / "data" / "lidc128"))
GLIOMA = Path(os.environ.get("DIFFSEG_GLIOMA", REPO.parent / "shared" / "data" / "glioma-example"))
LIDC_CT = Path(os.environ.get("DIFFSEG_LIDC_CT", REPO.parent / "shared" / "data" / "lidc-ct" / "LIDC-IDRI-0001"))


@pytest.fixture(scope="session")
def lidc_root() -> Path:
    if not (LIDC / "val.npz").exists():
        pytest.skip(f"LIDC data not found at {LIDC} (set DIFFSEG_LIDC to the lidc128 folder)")
    return LIDC


@pytest.fixture(scope="session")
def glioma_root() -> Path:
    if not (GLIOMA / "t1.nii.gz").exists():
        pytest.skip(f"glioma example not found at {GLIOMA} (set DIFFSEG_GLIOMA)")
    return GLIOMA


@pytest.fixture(scope="session")
def lidc_ct_root() -> Path:
    """The whole CT of LIDC-IDRI-0001 with its four readers' masks (issue 14)."""
    if not (LIDC_CT / "ct.nrrd").exists():
        pytest.skip(f"whole LIDC CT not found at {LIDC_CT} (set DIFFSEG_LIDC_CT)")
    return LIDC_CT
