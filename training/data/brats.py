"""BraTS 2024 glioma MRI (PGRD Table I, 3D column), and the glioma example beside the project.

Accepted layouts under ``root`` (DIFFSEG_BRATS; the example: DIFFSEG_GLIOMA):

- BraTS 2024: one folder per case, ``<case>/<case>-{t1c,t1n,t2f,t2w}.nii.gz`` and ``<case>/<case>-seg.nii.gz``;
  labels 0 background, 1 NETC, 2 SNFH (edema), 3 ET, (4 RC in the post-treatment set: kept when
  ``num_classes = 5``, otherwise an error names the case).
- Old naming (the glioma example, BraTS <= 2021 exports): ``{t1,t1c,t2,fla}.nii.gz`` and either
  ``seg.nii.gz`` or ``segmentations/*.nii.gz`` (every file one rater, sorted by name), with the root
  itself or its sub-folders as cases. Old labels {1, 2, 4} are mapped to {1, 2, 3}.

Channels are always in the order t1c, t1n (t1), t2f (flair), t2w (t2). Each channel is z-scored over
the brain (nonzero voxels). dims=3: crop/pad ``size`` around the brain's bounding-box centre
(``fit="crop"``) or crop the bounding box and resize it to ``size`` (``fit="resize"``). dims=2: axial
slices (``slices``: foreground / brain / all) brought to ``size``. Cases split by sha1 bucket
(volumes.split_of); ``split="all"`` keeps every case (the one-case example).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from DiffSegUncertaintyLib.engine.files.volumes import preprocess

from .common import DataMissing, as_size, data_root, read_image
from .volumes import bbox_center, crop_or_pad, select_split, slice_items, to_item

NEW = ("t1c", "t1n", "t2f", "t2w")
OLD = ("t1c", "t1", "fla", "t2")
CLASS_NAMES = ["background", "necrosis / non-enhancing core", "edema (SNFH)", "enhancing tumour",
               "resection cavity"]


def find_cases(root: Path) -> list[tuple[str, dict[str, Path], list[Path], bool]]:
    """(name, channel files, rater segmentations, old labels) for each case under root."""
    cases = []
    for folder in [root] + sorted(p for p in root.iterdir() if p.is_dir()):
        name = folder.name
        new = {m: folder / f"{name}-{m}.nii.gz" for m in NEW}
        if all(p.exists() for p in new.values()):
            segs = [folder / f"{name}-seg.nii.gz"]
            cases.append((name, new, [s for s in segs if s.exists()], False))
            continue
        old = {m: folder / f"{m}.nii.gz" for m in OLD}
        if all(p.exists() for p in old.values()):
            segs = sorted((folder / "segmentations").glob("*.nii*")) or [folder / "seg.nii.gz"]
            cases.append((name, old, [s for s in segs if s.exists()], True))
    return cases


class BraTS(Dataset):
    """Multi-modal glioma MRI with one (BraTS) or several (the example's raters) annotations."""

    in_channels = 4
    channels = [{"name": n, "modality": "MR"} for n in ("T1c", "T1n", "T2-FLAIR", "T2w")]
    preprocessing = {"kind": "zscore", "nonzero": True}

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train", dims: int = 3,
                 size: int | list[int] | None = 96, fit: str = "crop", slices: str = "foreground",
                 num_classes: int = 4, limit: int | None = None, env: str = "DIFFSEG_BRATS",
                 default: str | None = None):
        root = data_root(env, default, root, "BraTS (case folders of NIfTI files)")
        cases = find_cases(Path(root))
        if not cases:
            raise DataMissing(f"no BraTS cases under {root}: expected <case>/<case>-t1c.nii.gz ... "
                              "<case>-seg.nii.gz, or t1/t1c/t2/fla.nii.gz with segmentations/*.nii.gz")
        names = select_split([c[0] for c in cases], split)
        self.cases = [c for c in cases if c[0] in names][:limit]
        self.dims, self.spatial_dims = dims, dims
        self.size, self.fit, self.slices = as_size(size, dims), fit, slices
        self.num_classes = int(num_classes)
        self.class_names = CLASS_NAMES[:self.num_classes]
        # 2D slices come from every volume: read them once (the 3D volumes are read per item).
        self.items2d = [it for i in range(len(self.cases)) for it in self._slices(i)] if dims == 2 else None

    def read_case(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(Cin, Z, Y, X) z-scored image and (A, Z, Y, X) int labels of case i."""
        name, files, segs, old = self.cases[i]
        if not segs:
            raise DataMissing(f"case {name} has no segmentation file")
        image = preprocess(np.stack([read_image(files[m]) for m in files]), self.preprocessing)
        labels = np.stack([read_image(s).astype(np.int64) for s in segs])
        if old:
            labels[labels == 4] = 3
        if labels.max() >= self.num_classes:
            raise ValueError(f"case {name} has label {labels.max()} but num_classes = {self.num_classes}")
        return image, labels

    def _slices(self, i: int) -> list[dict]:
        image, labels = self.read_case(i)
        return slice_items(image, labels, self.cases[i][0], self.slices, self.size, self.fit)

    def __len__(self) -> int:
        return len(self.items2d) if self.dims == 2 else len(self.cases)

    def __getitem__(self, i: int) -> dict:
        if self.dims == 2:
            return self.items2d[i]
        image, labels = self.read_case(i)
        brain = np.abs(image).sum(0) > 0
        if self.size is None:
            return to_item(image, labels, self.cases[i][0], None, "crop")
        if self.fit == "crop":
            c = bbox_center(brain)
            return to_item(crop_or_pad(image, c, self.size), crop_or_pad(labels, c, self.size),
                           self.cases[i][0], None, "crop")
        idx = np.nonzero(brain)
        box = (slice(None),) + tuple(slice(int(a.min()), int(a.max()) + 1) for a in idx)
        return to_item(image[box], labels[box], self.cases[i][0], self.size, "resize")


def glioma_example(root: str | os.PathLike | None = None, **kw) -> BraTS:
    """The one-case glioma example (five algorithm segmentations as raters), every case kept."""
    kw.setdefault("split", "all")
    return BraTS(root, env="DIFFSEG_GLIOMA", default="shared/data/glioma-example", **kw)
