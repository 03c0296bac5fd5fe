"""Data loaders by name. Every dataset returns items ``{"image", "annotations", "id"}`` (common.py)
and exposes ``in_channels``, ``num_classes``, ``class_names``, ``channels``, ``preprocessing`` and
``spatial_dims`` for the model and its card."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from .common import DataMissing, pick_annotation

DATASETS = ("lidc", "brats", "glioma-example", "instance", "mslesion", "cityscapes")


def build_dataset(data: dict[str, Any], split: str, root: str | None = None) -> Dataset:
    """The dataset a config's ``[data]`` table names, for ``split``; ``root`` overrides the env var.

    Keys other than ``dataset``, ``split`` and ``val_split`` are passed to the loader (size, dims, fit,
    depth, limit, ...); ``train_limit`` / ``val_limit`` cap the items of that split (tests, quick runs).
    """
    cfg = dict(data)
    name = cfg.pop("dataset")
    for key in ("split", "val_split", "train_limit", "val_limit"):
        cfg.pop(key, None)
    limit = data.get("train_limit" if split == data.get("split", "train") else "val_limit")
    if limit is not None:
        cfg["limit"] = limit
    if name == "lidc":
        from .lidc import LIDC
        return LIDC(root, split=split, **cfg)
    if name == "brats":
        from .brats import BraTS
        return BraTS(root, split=split, **cfg)
    if name == "glioma-example":
        from .brats import glioma_example
        return glioma_example(root, **cfg)
    if name == "instance":
        from .instance import Instance
        return Instance(root, split=split, **cfg)
    if name == "mslesion":
        from .mslesion import MSLesion
        return MSLesion(root, split=split, **cfg)
    if name == "cityscapes":
        from .cityscapes import Cityscapes
        return Cityscapes(root, split=split, **cfg)
    raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")


__all__ = ["DATASETS", "DataMissing", "build_dataset", "pick_annotation"]
