"""Shared fixtures of the training tests: the real LIDC data (skip with a reason when absent)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `import training` from any working directory
    sys.path.insert(0, str(REPO))

LIDC = Path(os.environ.get("DIFFSEG_LIDC", REPO.parent / "shared" / "data" / "lidc128"))
GLIOMA = Path(os.environ.get("DIFFSEG_GLIOMA", REPO.parent / "shared" / "data" / "glioma-example"))


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
