"""Helpers shared by the command-line tests (plain functions; fixtures are in conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SHAPE = (12, 20, 24)  # array order (k, j, i)
MAPS = ("consensus.nrrd", "mean_probability.nrrd", "entropy.nrrd", "mutual_information.nrrd",
        "variance.nrrd")


def grid(path: Path) -> tuple:
    img = sitk.ReadImage(str(path))
    return img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection()


def arrays(folder: Path, reorient: str | None = None) -> dict[str, np.ndarray]:
    """Every output volume of a run folder (optionally reoriented with DICOMOrient) plus the layers of
    the .seg.nrrd (read by SimpleITK as a vector image: one component per segment)."""
    out = {}
    for name in MAPS + ("hypotheses.seg.nrrd",):
        img = sitk.ReadImage(str(folder / name))
        if reorient:
            img = sitk.DICOMOrient(img, reorient)
        out[name] = sitk.GetArrayFromImage(img)
    return out


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def leftovers(parent: Path, name: str) -> list[str]:
    """Anything a run into parent/name may have left: the folder or its hidden temporary siblings."""
    return sorted(p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}."))
