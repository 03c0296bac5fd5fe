"""Shared pieces of the volume loaders (BraTS, INSTANCE, MS-Lesion): case splits, crops, 2D slicing."""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import torch

from .common import fit, nonempty_slices


def split_of(name: str) -> str:
    """The split of a case or patient: bucket = sha1(name) % 100; test < 15, val < 25, train otherwise.

    The same rule as the lidc128 split, so every loader splits by case without a file to ship.
    """
    bucket = int(hashlib.sha1(name.encode()).hexdigest(), 16) % 100
    return "test" if bucket < 15 else "val" if bucket < 25 else "train"


def select_split(names: Sequence[str], split: str) -> list[str]:
    """The names of ``split`` ("train", "val", "test" or "all")."""
    if split not in ("train", "val", "test", "all"):
        raise ValueError(f"split must be train, val, test or all, got {split!r}")
    return [n for n in names if split == "all" or split_of(n) == split]


def crop_or_pad(x: np.ndarray, center: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """A window of ``size`` centred at ``center`` of (C, *S), zero-padded where it leaves the array."""
    out = np.zeros((x.shape[0], *size), dtype=x.dtype)
    src, dst = [slice(None)], [slice(None)]
    for c, s, n in zip(center, size, x.shape[1:]):
        a = int(c) - s // 2
        lo, hi = max(a, 0), min(a + s, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - a, hi - a))
    out[tuple(dst)] = x[tuple(src)]
    return out


def bbox_center(mask: np.ndarray) -> list[int]:
    """Centre of the bounding box of a boolean array (the array's centre when empty)."""
    idx = np.nonzero(mask)
    if not idx[0].size:
        return [s // 2 for s in mask.shape]
    return [(int(i.min()) + int(i.max()) + 1) // 2 for i in idx]


def to_item(image: np.ndarray, labels: np.ndarray, name: str, size: Sequence[int] | None,
            how: str) -> dict:
    """Numpy (Cin, *S) image and (A, *S) labels -> an item of the requested size."""
    img = fit(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), size, how, False)
    ann = fit(torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)), size, how, True)
    return {"image": img.contiguous(), "annotations": ann.contiguous(), "id": name}


def slice_items(image: np.ndarray, labels: np.ndarray, name: str, which: str,
                size: Sequence[int] | None, how: str) -> list[dict]:
    """Axial 2D items of a volume: (Cin, Z, Y, X), (A, Z, Y, X) -> items (Cin, Y, X), (A, Y, X).

    which: "foreground" (slices where any annotation is non-empty), "brain" (any nonzero image
    voxel; MRI is skull-stripped) or "all".
    """
    if which == "foreground":
        zs = nonempty_slices(labels)
    elif which == "brain":
        zs = np.nonzero(np.abs(image).reshape(image.shape[0], image.shape[1], -1).any(axis=(0, 2)))[0]
    elif which == "all":
        zs = np.arange(image.shape[1])
    else:
        raise ValueError(f"data.slices must be foreground, brain or all, got {which!r}")
    return [to_item(image[:, z], labels[:, z], f"{name}-z{int(z)}", size, how) for z in zs]
