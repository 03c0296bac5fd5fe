"""Input checks that run before any work starts, with messages that name what is wrong."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError

__all__ = ["InputError", "check_batch", "check_image", "check_labels", "check_label_shape", "check_size"]


def check_image(image: torch.Tensor | np.ndarray, spatial_dims: int, in_channels: int,
                name: str = "image") -> None:
    """A batch (B, Cin, *spatial) of finite, non-empty, non-constant images."""
    shape = tuple(image.shape)
    if len(shape) != spatial_dims + 2:
        raise InputError(
            f"{name} has shape {shape}: a {spatial_dims}D model needs (batch, channels, "
            f"{', '.join('HWD'[:spatial_dims])}) with {spatial_dims + 2} dimensions")
    if shape[1] != in_channels:
        raise InputError(f"{name} has {shape[1]} channel(s) but the model expects {in_channels}")
    if any(s == 0 for s in shape):
        raise InputError(f"{name} is empty (shape {shape})")
    t = torch.as_tensor(image)
    if not torch.is_floating_point(t):
        t = t.float()
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        raise InputError(f"{name} has {int(bad.sum())} NaN or infinite voxel(s)")
    flat = t.reshape(shape[0], shape[1], -1)
    constant = (flat.amax(-1) == flat.amin(-1))
    if bool(constant.all(dim=1).any()):
        b = int(constant.all(dim=1).nonzero()[0, 0])
        raise InputError(f"{name} {b} is constant (every voxel {float(flat[b, 0, 0]):g}): nothing to segment")


def check_labels(labels: torch.Tensor | np.ndarray, num_classes: int, name: str = "labels") -> None:
    """Integer labels in 0..num_classes-1."""
    t = torch.as_tensor(labels)
    if torch.is_floating_point(t) and not bool((t == t.round()).all()):
        raise InputError(f"{name} must hold integer class indices")
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= num_classes:
        raise InputError(f"{name} hold values {lo}..{hi} but the model has {num_classes} classes "
                         f"(0..{num_classes - 1})")


def check_size(image: torch.Tensor, multiple: int, name: str = "image") -> None:
    """Spatial sizes must be multiples of ``multiple`` (the network's total downsampling)."""
    bad = [int(s) for s in image.shape[2:] if int(s) % multiple]
    if bad:
        raise InputError(f"{name} has spatial size {tuple(image.shape[2:])}: every size must be a multiple of "
                         f"{multiple} for this network (pad or crop it)")


def check_label_shape(image: torch.Tensor, labels: torch.Tensor) -> None:
    """Labels (B, *S) must match the image (B, Cin, *S) voxel for voxel: one annotation per image."""
    want = (image.shape[0], *image.shape[2:])
    if tuple(labels.shape) != tuple(want):
        raise InputError(f"labels have shape {tuple(labels.shape)} but the image needs {tuple(want)} "
                         "(batch, *spatial) of integer classes")


def check_batch(image: torch.Tensor, labels: torch.Tensor | None = None, *, spatial_dims: int,
                in_channels: int, num_classes: int, size_multiple: int = 1) -> None:
    """Everything a network checks before a forward pass or a loss: the image, its size, the labels."""
    check_image(image, spatial_dims=spatial_dims, in_channels=in_channels)
    check_size(image, size_multiple)
    if labels is not None:
        check_label_shape(image, labels)
        check_labels(labels, num_classes)
