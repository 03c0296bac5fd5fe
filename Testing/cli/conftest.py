"""Fixtures for the command-line tests: tiny untrained model folders and small volumes, built once per
session (the helpers live in DiffSegUncertaintyLib.engine.testing so other suites can use them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from cli_helpers import SHAPE

from DiffSegUncertaintyLib.engine import testing


@pytest.fixture(scope="session")
def model2d(tmp_path_factory) -> Path:
    return testing.make_tiny_model_folder(tmp_path_factory.mktemp("models") / "tiny2d")


@pytest.fixture(scope="session")
def model3d(tmp_path_factory) -> Path:
    """3D, 3 classes (one segment per hypothesis and foreground class), patch 8 x 16 x 16."""
    return testing.make_tiny_model_folder(tmp_path_factory.mktemp("models") / "tiny3d", spatial_dims=3,
                                          num_classes=3, size=[8, 16, 16])


@pytest.fixture(scope="session")
def volumes(tmp_path_factory) -> dict[str, Path]:
    """The same blob stored three ways: permuted + flipped + anisotropic with a non-zero origin, the
    identity-direction (LPS) re-storage of exactly those voxels, and an oblique rotation."""
    d = tmp_path_factory.mktemp("volumes")
    arr = testing.blob_array(SHAPE, seed=1)[0]
    out = {}
    for name, geo in testing.ORIENTATIONS.items():
        if name != "identity":
            out[name] = testing.write_volume(d / f"{name}.nrrd", arr, **geo)
    lps = sitk.DICOMOrient(sitk.ReadImage(str(out["permuted-flipped-anisotropic"])), "LPS")
    assert np.allclose(np.array(lps.GetDirection()), np.eye(3).ravel())
    out["lps"] = d / "lps.nii.gz"
    sitk.WriteImage(lps, str(out["lps"]))
    return out


@pytest.fixture(scope="session")
def model_pgrd(tmp_path_factory) -> Path:
    return testing.make_tiny_model_folder(tmp_path_factory.mktemp("models") / "pgrd2d", method="pgrd")
