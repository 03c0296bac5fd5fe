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


def seg_image(folder: Path) -> sitk.Image:
    """The .seg.nrrd's layers on the full input grid (the file holds only the ROI's box, engine/files/segfile.py)
    as a SimpleITK vector image, one component per segment, on the grid of the run's consensus.nrrd."""
    from DiffSegUncertaintyLib.engine.files.segfile import read_layers
    from DiffSegUncertaintyLib.engine.files.volumes import read_inputs

    ref = read_inputs([folder / "consensus.nrrd"]).geometry
    layers, _ = read_layers(folder / "hypotheses.seg.nrrd", ref)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.moveaxis(layers, 0, -1)), isVector=True)
    return ref.apply_to(img)


def arrays(folder: Path, reorient: str | None = None) -> dict[str, np.ndarray]:
    """Every output volume of a run folder (optionally reoriented with DICOMOrient) plus the layers of
    the .seg.nrrd on the full grid (``seg_image``: one component per segment, last axis)."""
    out = {}
    for name in MAPS + ("hypotheses.seg.nrrd",):
        img = seg_image(folder) if name == "hypotheses.seg.nrrd" else sitk.ReadImage(str(folder / name))
        if reorient:
            img = sitk.DICOMOrient(img, reorient)
        out[name] = sitk.GetArrayFromImage(img)
    return out


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def leftovers(parent: Path, name: str) -> list[str]:
    """Anything a run into parent/name may have left: the folder or its hidden temporary siblings."""
    return sorted(p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}."))
