"""MS-Lesion (ISBI 2015 longitudinal challenge; HSRDiff Table 2): four MRI sequences, two raters.

Accepted layouts under ``root`` (DIFFSEG_MSLESION), found by the mask files:

- the challenge release: ``<subject>/preprocessed/<scan>_{flair,mprage,pd,t2}_pp.nii`` and
  ``<subject>/masks/<scan>_mask1.nii``, ``<scan>_mask2.nii`` (scan = e.g. training01_01);
- flat: ``<subject>/<scan>_{flair,mprage,pd,t2}.nii[.gz]`` beside ``<scan>_mask1``/``_mask2``.

Every ``*_mask<k>`` file of a scan is one rater. Items are axial 2D slices (``slices``: brain /
foreground / all) resized to 128 x 128 (paper), channels flair, mprage, pd, t2, each z-scored over
the brain. The split is by subject: ``val_subjects`` (default: the last subject in name order, the
five-subject data's one-fifth, near the paper's 2300 / 531 slices); ``split="all"`` keeps everything.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from DiffSegUncertaintyLib.engine.files.volumes import preprocess

from .common import DataMissing, as_size, data_root, read_image
from .volumes import slice_items

MODALITIES = ("flair", "mprage", "pd", "t2")


def find_scans(root: Path) -> list[tuple[str, str, dict[str, Path], list[Path]]]:
    """(subject, scan, modality files, rater masks) for every scan with at least one mask."""
    found: dict[tuple[str, str], list[Path]] = {}
    for m in sorted(root.rglob("*_mask*.nii*")):
        match = re.match(r"(.+)_mask\d+\.nii(\.gz)?$", m.name)
        if match:
            subject = m.relative_to(root).parts[0]
            found.setdefault((subject, match.group(1)), []).append(m)
    scans = []
    for (subject, scan), masks in sorted(found.items()):
        files = {}
        for mod in MODALITIES:
            hits = sorted((root / subject).rglob(f"{scan}_{mod}*.nii*"))
            if not hits:
                raise DataMissing(f"MS-Lesion scan {scan} has masks but no {mod} image under {root / subject}")
            files[mod] = hits[0]
        scans.append((subject, scan, files, masks))
    return scans


class MSLesion(Dataset):
    """2D slices of the four sequences with both raters' lesion masks."""

    in_channels, num_classes = 4, 2
    class_names = ["background", "lesion"]
    channels = [{"name": n, "modality": "MR"} for n in ("FLAIR", "MPRAGE", "PD", "T2")]
    preprocessing = {"kind": "zscore", "nonzero": True}

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train", dims: int = 2,
                 size: int | list[int] | None = 128, fit: str = "resize", slices: str = "brain",
                 val_subjects: list[str] | None = None, limit: int | None = None):
        root = Path(data_root("DIFFSEG_MSLESION", None, root, "MS-Lesion (ISBI 2015)"))
        scans = find_scans(root)
        if not scans:
            raise DataMissing(f"no <scan>_mask1.nii files under {root} (see docs/training.md, MS-Lesion)")
        if dims != 2:
            raise ValueError("MS-Lesion is loaded as 2D slices (the paper's setting)")
        subjects = sorted({s[0] for s in scans})
        val = set(val_subjects or subjects[-1:])
        if split not in ("train", "val", "all"):
            raise ValueError("MS-Lesion splits: train, val, all")
        keep = [s for s in scans if split == "all" or (s[0] in val) == (split == "val")][:limit]
        self.spatial_dims = 2
        self.items = []
        for subject, scan, files, masks in keep:
            image = preprocess(np.stack([read_image(files[m]) for m in MODALITIES]), self.preprocessing)
            labels = np.stack([(read_image(m) > 0).astype(np.int64) for m in masks])
            self.items += slice_items(image, labels, scan, slices, as_size(size, 2), fit)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]
