"""LIDC-IDRI lung-nodule crops with four readings (the lidc128 npz files, ../shared/data/lidc128).

On disk: ``<root>/{train,val}.npz`` with ``images`` uint8 (S,128,128), ``masks`` uint8 (S,4,128,128),
``patient`` str (S,), ``nodule`` int (S,), ``slice`` int (S,). Splits are by patient and must not be
re-split.

- dims=2: one item per slice, image (1, H, W), annotations (4, H, W).
- dims=3: nodule mini-volumes: ``depth`` consecutive slices of one (patient, nodule), windows every
  ``stride`` slices (the last window is moved to end on the nodule's last slice); image (1, D, H, W)
  in (slice, row, column) order, annotations (4, D, H, W). Nodules shorter than ``depth`` are padded
  by repeating their first/last slice together with its masks (``pad="edge"``: image and labels stay a
  consistent pair) or dropped (``pad="skip"``).

Intensities: the publisher's 8-bit crops scaled to [0, 1] (x / 255); there are no HU or spacings. Every
crop holds a 0 and a 255: the publisher stretched each crop to its own range (training/estimate_ct_window.py),
which is why exported cards map a CT in HU with the "minmax" preprocessing over ``CT_WINDOW_HU``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from DiffSegUncertaintyLib.engine.analysis.evaluation import nodule_stacks

from .common import DataMissing, data_root, fit

ENV = "DIFFSEG_LIDC"
DEFAULT = "shared/data/lidc128"
# engine/volumes.preprocess form of what the training loader does: the 8-bit crops times 1/255
PREPROCESSING = {"kind": "scale", "scale": 1 / 255, "offset": 0.0}
# The HU range a card maps to [0, 1] for a CT in HU (training/export.py writes {"kind": "minmax",
# "lower": -1000, "upper": 1400}): the publisher stretched each crop to its own minimum and maximum, and
# training/estimate_ct_window.py finds air at 0 and a median crop maximum of about +1400 HU
# (docs/cli.md, "CT intensities (HU)").
CT_WINDOW_HU = (-1000.0, 1400.0)
# What a card asks of a CT in HU (issue 14, docs/decisions.md): the publisher's own per-slice stretch over
# the crop's 128x128 box around the ROI, clipped below at -1024 HU (scanner padding is not tissue).
# On the crops written in HU through CT_WINDOW_HU it gives exactly x / 255, as training did.
CT_PREPROCESSING = {"kind": "slice_minmax", "lower": -1024.0, "context": 128}
# Standard terminology of the nodule class for Slicer (and its DICOM SEG export): SNOMED CT.
TERMINOLOGY = {"nodule": {"contextName": "Segmentation category and type - 3D Slicer General Anatomy list",
                          "category": ["SCT", "49755003", "Morphologically Altered Structure"],
                          "type": ["SCT", "27925004", "Nodule"],
                          "anatomicContextName": "Anatomic codes - DICOM master list",
                          "anatomicRegion": ["SCT", "39607008", "Lung"]}}


class LIDC(Dataset):
    """2D slices or 3D nodule stacks of LIDC with all four readings per item."""

    in_channels, num_classes = 1, 2
    class_names = ["background", "nodule"]
    channels = [{"name": "CT", "modality": "CT"}]
    preprocessing = PREPROCESSING
    roi_required = True  # 128x128 boxes around a nodule: a model of them needs the box at inference

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train", dims: int = 2,
                 size: int | None = 128, fit: str = "crop", depth: int = 8, stride: int | None = None,
                 pad: str = "edge", limit: int | None = None, foreground_only: bool = False):
        root = data_root(ENV, DEFAULT, root, "LIDC (lidc128: train.npz, val.npz)")
        path = Path(root) / f"{split}.npz"
        if not path.exists():
            raise DataMissing(f"{path} is missing: the LIDC folder needs {split}.npz (see docs/training.md)")
        if dims not in (2, 3) or pad not in ("edge", "skip"):
            raise ValueError("LIDC needs dims 2 or 3 and pad 'edge' or 'skip'")
        with np.load(path) as z:
            self.images, self.masks = z["images"], z["masks"]
            self.patient, self.nodule, self.slice = z["patient"], z["nodule"], z["slice"]
        self.dims, self.size, self.fit = dims, size, fit
        self.spatial_dims = dims
        if dims == 2:
            self.index = [[i] for i in range(len(self.images))]
        else:
            self.index = self._stacks(depth, stride or depth, pad)
        if foreground_only:  # items where at least one reading marks the nodule
            self.index = [ix for ix in self.index if self.masks[ix].any()]
        if limit is not None:
            self.index = self.index[:int(limit)]
        self.split = split

    def _stacks(self, depth: int, stride: int, pad: str) -> list[list[int]]:
        return nodule_stacks(self.patient, self.nodule, self.slice, depth, stride, pad)

    def __len__(self) -> int:
        return len(self.index)

    def item_id(self, i: int) -> str:
        rows = self.index[i]
        r = rows[0]
        tag = f"{self.patient[r]}-n{int(self.nodule[r])}-s{int(self.slice[r])}"
        return tag if self.dims == 2 else f"{tag}-{int(self.slice[rows[-1]])}"

    def __getitem__(self, i: int) -> dict:
        rows = self.index[i]
        img = torch.from_numpy(self.images[rows].astype(np.float32) / 255.0)       # (D, H, W)
        ann = torch.from_numpy(self.masks[rows].astype(np.int64)).transpose(0, 1)   # (4, D, H, W)
        if self.dims == 2:
            img, ann = img, ann[:, 0]                                               # (1, H, W), (4, H, W)
        else:
            img = img[None]
        if self.size is not None:
            size = (self.size,) * 2 if isinstance(self.size, int) else tuple(self.size)
            size = size if self.dims == 2 else (img.shape[1], *size[-2:])
            img, ann = fit(img, size, self.fit, False), fit(ann, size, self.fit, True)
        return {"image": img.contiguous(), "annotations": ann.contiguous(), "id": self.item_id(i)}
