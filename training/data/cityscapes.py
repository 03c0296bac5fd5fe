"""Cityscapes with the stochastic class-flipping protocol of Kohl et al. (2018) (HSRDiff Table 4).

On disk under ``root`` (DIFFSEG_CITYSCAPES), the public layout:
``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` and
``gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png`` (19 trainIds 0..18, 255 = void; made by
cityscapesScripts' createTrainIdLabelImgs). PNGs are read with SimpleITK. Kohl et al. train on the
official train split minus a held-out set and test on the official val split: ``split`` names the
folder (train / val).

Classes (index 0 must be background for the model card): 0 = void (trainId 255), 1..19 = trainId + 1
(road, sidewalk, ..., bicycle), and with ``flip=True`` five more:

    trainId  class        new class (index)   probability
    1        sidewalk  -> sidewalk 2 (20)      8/17
    11       person    -> person 2 (21)        7/17
    13       car       -> car 2 (22)           6/17
    8        vegetation-> vegetation 2 (23)    5/17
    0        road      -> road 2 (24)          4/17

Each class flips as a whole and independently of the others, per image. An item then carries the
2^5 = 32 possible label maps as annotations and their probabilities under ``weights`` (A,), which
``pick_annotation`` honours; GED against the full distribution needs these weights.
Images: RGB / 255, resized (bilinear/area) with labels (nearest) to ``size`` (default 128 x 256).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from DiffSegUncertaintyLib.engine.files.volumes import preprocess

from .common import DataMissing, as_size, data_root, read_image, resize

TRAIN_IDS = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
             "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
             "motorcycle", "bicycle"]
# (trainId flipped, its new class name, probability): Kohl et al. 2018, Sec. 4.2.
FLIPS = [(1, "sidewalk 2", 8 / 17), (11, "person 2", 7 / 17), (13, "car 2", 6 / 17),
         (8, "vegetation 2", 5 / 17), (0, "road 2", 4 / 17)]


def flip_modes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All 32 flipped versions of one label map (model classes) and their probabilities."""
    maps, weights = [], []
    for choice in itertools.product((False, True), repeat=len(FLIPS)):
        out, w = labels.copy(), 1.0
        for k, (flipped, (tid, _, p)) in enumerate(zip(choice, FLIPS)):
            if flipped:
                out[labels == tid + 1] = 20 + k
            w *= p if flipped else 1 - p
        maps.append(out)
        weights.append(w)
    return np.stack(maps), np.asarray(weights, dtype=np.float64)


class Cityscapes(Dataset):
    """RGB street scenes, 20 (+5 flipped) classes."""

    in_channels, spatial_dims = 3, 2
    channels = [{"name": c, "modality": "RGB"} for c in ("red", "green", "blue")]
    preprocessing = {"kind": "scale", "scale": 1 / 255, "offset": 0.0}

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train", dims: int = 2,
                 size: int | list[int] | None = (128, 256), fit: str = "resize", flip: bool = True,
                 limit: int | None = None):
        root = Path(data_root("DIFFSEG_CITYSCAPES", None, root, "Cityscapes (leftImg8bit/, gtFine/)"))
        images = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))[:limit]
        if not images:
            raise DataMissing(f"no {root}/leftImg8bit/{split}/<city>/*_leftImg8bit.png")
        self.pairs = []
        for im in images:
            stem = im.name[: -len("_leftImg8bit.png")]
            gt = root / "gtFine" / split / im.parent.name / f"{stem}_gtFine_labelTrainIds.png"
            if not gt.exists():
                raise DataMissing(f"{gt} is missing (run cityscapesScripts createTrainIdLabelImgs)")
            self.pairs.append((stem, im, gt))
        self.size, self.flip = as_size(size, 2), flip
        self.class_names = ["void"] + TRAIN_IDS + ([f[1] for f in FLIPS] if flip else [])
        self.num_classes = len(self.class_names)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        stem, im, gt = self.pairs[i]
        rgb = preprocess(read_image(im).astype(np.float32)[None], self.preprocessing)[0]  # (H, W, 3), x / 255
        tid = read_image(gt).astype(np.int64)
        labels = np.where(tid == 255, 0, tid + 1)
        if tid.ndim == 3:
            raise ValueError(f"{gt} is not a single-channel trainId image")
        img = resize(torch.from_numpy(np.moveaxis(rgb, -1, 0).copy()), self.size or rgb.shape[:2], False)
        lab = resize(torch.from_numpy(labels[None]), self.size or labels.shape, True)[0].numpy()
        item = {"image": img.contiguous(), "id": stem}
        if self.flip:
            maps, weights = flip_modes(lab)
            item["annotations"], item["weights"] = torch.from_numpy(maps), torch.from_numpy(weights)
        else:
            item["annotations"] = torch.from_numpy(lab[None])
        return item
