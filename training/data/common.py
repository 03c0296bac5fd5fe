"""What every loader returns and the helpers they share.

An item is a dict ``{"image": float32 (Cin, *S), "annotations": int64 (A, *S), "id": str}``: all the
annotations of the image (LIDC: the four readings; MS-Lesion: two raters; BraTS/INSTANCE: one). Which
annotation a training step uses is chosen by the training loop (``pick_annotation``), not by the
dataset, so the choice is seeded per step and a resumed run makes the same choices.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

REPO = Path(__file__).resolve().parents[2]


class DataMissing(FileNotFoundError):
    """The data folder is absent or not laid out as the loader expects (message says what to put where)."""


def data_root(env: str, default: str | None, given: str | os.PathLike | None, what: str) -> Path:
    """The data folder: the argument, else the environment variable, else the default beside the repo."""
    raw = given or os.environ.get(env) or (str(REPO.parent / default) if default else None)
    if raw is None:
        raise DataMissing(f"no data path for {what}: pass --data PATH or set {env}")
    path = Path(raw).expanduser()
    if not path.exists():
        raise DataMissing(f"{what} not found at {path}: pass --data PATH or set {env} "
                          f"to the folder described in docs/training.md")
    return path


def pick_annotation(annotations: Tensor, generator: torch.Generator,
                    weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One annotation per item, at random (HSRDiff Algorithm 1, line 1: uniform over the raters).

    annotations: (B, A, *S); weights: optional (B, A) probabilities (Cityscapes' flip modes). Returns
    the labels (B, *S) and the chosen indices (B,). The CPU generator is seeded per step by the caller,
    so a resumed run draws the same readings.
    """
    B, A = annotations.shape[:2]
    if weights is None:
        idx = torch.randint(0, A, (B,), generator=generator)
    else:
        idx = torch.multinomial(weights.double().cpu(), 1, generator=generator)[:, 0]
    return annotations[torch.arange(B), idx.to(annotations.device)], idx


def resize(x: Tensor, size: Sequence[int], labels: bool) -> Tensor:
    """Resize (C, *S) to ``size``: area-averaging (or trilinear) for images, nearest for labels."""
    if tuple(x.shape[1:]) == tuple(size):
        return x
    if labels:
        return F.interpolate(x[None].float(), size=tuple(size), mode="nearest-exact")[0].to(x.dtype)
    mode = "area" if all(s <= t for s, t in zip(size, x.shape[1:])) else (
        "bilinear" if len(size) == 2 else "trilinear")
    kw = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(x[None].float(), size=tuple(size), mode=mode, **kw)[0]


def center_crop(x: Tensor, size: Sequence[int]) -> Tensor:
    """Centre crop (C, *S) to ``size`` (each size no larger than the input's)."""
    sl = [slice(None)]
    for s, t in zip(x.shape[1:], size):
        if t > s:
            raise ValueError(f"cannot crop size {s} to {t}")
        a = (s - t) // 2
        sl.append(slice(a, a + t))
    return x[tuple(sl)]


def fit(x: Tensor, size: Sequence[int] | None, how: str, labels: bool) -> Tensor:
    """Bring (C, *S) to ``size`` by "crop" (centre) or "resize"; None keeps it."""
    if size is None:
        return x
    if how == "crop":
        return center_crop(x, size)
    if how == "resize":
        return resize(x, size, labels)
    raise ValueError(f"data.fit must be 'crop' or 'resize', got {how!r}")


def as_size(size: Any, dims: int) -> tuple[int, ...] | None:
    """A config size (int or list) as a tuple of ``dims`` ints."""
    if size is None:
        return None
    if isinstance(size, int):
        return (size,) * dims
    size = tuple(int(s) for s in size)
    if len(size) != dims:
        raise ValueError(f"data.size {size} needs {dims} entries")
    return size


def read_image(path: Path) -> np.ndarray:
    """A volume or picture as a numpy array (SimpleITK order: z, y, x; colour last)."""
    import SimpleITK as sitk
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def nonempty_slices(labels: np.ndarray) -> np.ndarray:
    """Indices along axis 1 of (A, Z, Y, X) where any annotation has foreground."""
    return np.nonzero(labels.reshape(labels.shape[0], labels.shape[1], -1).any(axis=(0, 2)))[0]
