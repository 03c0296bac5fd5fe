"""INSTANCE 2022 intracranial haemorrhage, non-contrast head CT (PGRD Table I, 2D column).

On disk under ``root`` (DIFFSEG_INSTANCE), the challenge's release layout:
``data/<case>.nii.gz`` (CT in HU) and ``label/<case>.nii.gz`` (0 background, 1 haemorrhage).
Cases are split by sha1 bucket of the case name (volumes.split_of). Items are axial 2D slices
(``slices``: foreground / all) brought to ``size`` (default 256: the 512 x 512 slices halved).

Intensities: HU clipped to the window [``hu_min``, ``hu_max``] (default -20..120: brain
parenchyma 20-40 HU and fresh blood 50-90 HU both inside) and scaled to [0, 1].
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from DiffSegUncertaintyLib.engine.files.volumes import preprocess

from .common import DataMissing, as_size, data_root, read_image
from .volumes import select_split, slice_items


class Instance(Dataset):
    """2D haemorrhage slices with one annotation each."""

    in_channels, num_classes = 1, 2
    class_names = ["background", "haemorrhage"]
    channels = [{"name": "CT", "modality": "CT"}]

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train", dims: int = 2,
                 size: int | list[int] | None = 256, fit: str = "resize", slices: str = "foreground",
                 hu_min: float = -20.0, hu_max: float = 120.0, limit: int | None = None):
        root = Path(data_root("DIFFSEG_INSTANCE", None, root, "INSTANCE 2022 (data/, label/)"))
        files = sorted((root / "data").glob("*.nii*"))
        if not files:
            raise DataMissing(f"no CT under {root / 'data'}: expected data/<case>.nii.gz and label/<case>.nii.gz")
        if dims != 2:
            raise ValueError("INSTANCE is loaded as 2D slices (the paper's 2D CT setting)")
        names = {f.name.split(".nii")[0]: f for f in files}
        keep = select_split(sorted(names), split)[:limit]
        self.spatial_dims = 2
        self.preprocessing = {"kind": "window", "lower": hu_min, "upper": hu_max}
        self.items = []
        for name in keep:
            label = next(iter(sorted((root / "label").glob(f"{name}.nii*"))), None)
            if label is None:
                raise DataMissing(f"{root / 'label'} has no label for case {name}")
            image = preprocess(read_image(names[name])[None], self.preprocessing)
            labels = (read_image(label) > 0).astype(np.int64)[None]
            self.items += slice_items(image, labels, name, slices, as_size(size, 2), fit)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]
