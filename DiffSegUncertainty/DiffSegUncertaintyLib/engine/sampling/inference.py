"""Running a model over a whole volume: 2D slice-wise or 3D sliding window, ROI, resampling.

Why the choices:
- Orientation: the volume is first put in canonical (S, P, L) array order (axial slices along axis 0,
  see volumes.canonical_orientation) by axis permutation and flips only, so a model sees the same
  anatomy layout whatever the file's storage order, and the result maps back exactly (no resampling).
  ``input.size`` of the card is in that canonical order (2D: rows, columns of an axial slice).
- Coherent hypotheses: every slice or patch is sampled with the same sample ids and seed, so
  hypothesis k gets the same noise everywhere and is one object, not a patchwork.
- Constant slices/patches (e.g. the zero background around a skull-stripped brain) are not sampled:
  they get the label embedding of background (what a perfect model answers), which also keeps
  sampler.check_image from rejecting them.
- Out of GPU memory: the batch is halved and the work retried (``run_with_oom_retry``).
- Two sizes, because they answer different questions: a *group* (``DEFAULT_BATCH_2D`` pairs' worth of
  slices, ``DEFAULT_PATCHES_3D`` patches) is the unit of work, progress and cancellation; the *chunk*
  is how many (slice or patch, hypothesis) pairs go through the network at once. Without
  ``batch_size`` the chunk is the sampler's device default (``sampler.default_batch_size``: all pairs
  of a group on a GPU, a voxel budget on a CPU, where large batches fall out of cache and run slower,
  docs/benchmarks.md); an explicit ``batch_size`` sets both, as before.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..networks.checks import InputError
from .diffusion import DiffusionSegmenter
from .sampler import CancelFn, ProgressFn, SamplerConfig, SamplingCancelled, default_batch_size, sample
from ..files.volumes import Canonical, Geometry, canonical_orientation

T = TypeVar("T")
DEFAULT_BATCH_2D = 64  # (slice, hypothesis) pairs per group of slices
DEFAULT_PATCHES_3D = 2  # patches per sliding-window call (each with all its hypotheses)


@dataclass
class Roi:
    """An index box [start, stop) in SimpleITK index order (i, j, k)."""

    start: list[int]
    stop: list[int]

    def slices(self) -> tuple[slice, ...]:
        """Array-order (k, j, i) slices."""
        return tuple(slice(a, b) for a, b in zip(reversed(self.start), reversed(self.stop)))

    def as_list(self) -> list[int]:
        return list(self.start) + list(self.stop)


def check_roi(roi: Roi | None, geometry: Geometry) -> Roi:
    """The ROI clipped to the image (the whole image when None); empty or outside -> InputError."""
    size = list(geometry.size)
    if roi is None:
        return Roi([0] * len(size), size)
    if len(roi.start) != len(size) or len(roi.stop) != len(size):
        raise InputError(f"the ROI needs {2 * len(size)} numbers for a {len(size)}D image")
    start = [max(0, int(a)) for a in roi.start]
    stop = [min(n, int(b)) for b, n in zip(roi.stop, size)]
    if any(b <= a for a, b in zip(start, stop)):
        raise InputError(f"the ROI {roi.as_list()} (start inclusive, stop exclusive, index order i j k) "
                         f"is empty or outside the image of size {size}")
    return Roi(start, stop)


@dataclass
class InferenceResult:
    """y0 (M, C, *roi_shape) float32 on the CPU, in the input's array order, restricted to the ROI
    (``roi``); steps: sampler steps per chunk; skipped: constant slices/patches given background."""

    y0: Tensor
    roi: Roi
    timesteps: list[int]
    units: int
    skipped: int
    batch_size: int
    extras: dict[str, Any] = field(default_factory=dict)


# -- helpers ---------------------------------------------------------------------------------------

def _is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def run_with_oom_retry(fn: Callable[[int], T], batch_size: int,
                       on_retry: Callable[[int], None] | None = None) -> tuple[T, int]:
    """Call fn(batch_size); on out-of-memory halve the batch and call again, down to 1.

    Returns (result, the batch size that worked) so later calls start from it."""
    bs = max(1, int(batch_size))
    while True:
        try:
            return fn(bs), bs
        except Exception as err:  # noqa: BLE001 - only OOM is handled, everything else re-raised
            if not _is_oom(err) or bs == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            bs = max(1, bs // 2)
            if on_retry is not None:
                on_retry(bs)


class _Progress:
    """Global progress over all units (slice groups / patch batches): each unit counts ``steps`` ticks
    whatever its internal chunking, so N is known up front and a retry never moves it backwards."""

    def __init__(self, units: int, steps: int, progress: ProgressFn | None):
        self.steps, self.total = steps, max(1, units * steps)
        self.progress, self.last, self.unit = progress, 0, 0

    def _emit(self, value: int) -> None:
        value = min(value, self.total)
        if value > self.last:
            self.last = value
            if self.progress is not None:
                self.progress(value, self.total)

    def callback(self) -> ProgressFn:
        base = self.unit * self.steps

        def cb(done: int, total: int) -> None:
            self._emit(base + (done * self.steps) // max(total, 1))
        return cb

    def finish_unit(self) -> None:
        self.unit += 1
        self._emit(self.unit * self.steps)


def _background(num_classes: int, shape: Sequence[int]) -> Tensor:
    """The label embedding (2*onehot - 1) of background: +1 on class 0, -1 elsewhere."""
    out = -torch.ones((num_classes, *shape), dtype=torch.float32)
    out[0] = 1
    return out


def _nonconstant(x: Tensor) -> Tensor:
    """(B, C, *S) -> bool (B,): False where every channel is constant (nothing to segment)."""
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    return ~(flat.amax(-1) == flat.amin(-1)).all(dim=1)


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return F.interpolate(x, size=tuple(int(s) for s in size), mode=mode, align_corners=False)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the entry point -------------------------------------------------------------------------------

def run_model(model: DiffusionSegmenter, card: dict[str, Any], image_arrays: np.ndarray,
              geometry: Geometry, num_samples: int, sampler_config: SamplerConfig, seed: int,
              roi: Roi | None = None, batch_size: int | None = None,
              progress: ProgressFn | None = None, cancel: CancelFn | None = None,
              overlap: float = 0.25, precision: str = "fp32",
              channels_last: bool = False, sample_fn: Callable[..., Any] = sample) -> InferenceResult:
    """Draw ``num_samples`` hypotheses of a whole image. Called by ``pipeline.Segmenter.run``, which has
    checked the request against the model and the image (channels, dimensions, ranges, precision).

    image_arrays: (Cin, *array_shape) float32, already preprocessed (volumes.preprocess), on
        ``geometry``'s grid. roi: index box (None = everything). batch_size: (slice or patch,
        hypothesis) pairs per network call (None: the sampler's device default within groups of
        64 pairs' worth of slices (2D) or 2 patches (3D), module docstring).
        precision, channels_last: the sampler's options (``sampler.sample``); sample_fn: the sampler.
    """
    dims = int(card["architecture"]["spatial_dims"])
    roi = check_roi(roi, geometry)
    crop = image_arrays[(slice(None),) + roi.slices()]
    if geometry.dimension == 2:
        crop, canon = crop[:, None], Canonical((0, 1, 2), (False, False, False))
    else:
        canon = canonical_orientation(geometry.direction, [b - a for a, b in zip(roi.start, roi.stop)])
    vol = torch.from_numpy(np.ascontiguousarray(canon.forward(crop), dtype=np.float32))
    timesteps = model.schedule.timesteps(sampler_config.steps, sampler_config.spacing)
    size = [int(s) for s in card["input"]["size"]]

    def draw(x: Tensor, b: int, cb: ProgressFn) -> Tensor:
        """(G, Cin, *size) -> y0 (G, M, C, *size): the M hypotheses of G slices or patches."""
        return sample_fn(model, x, num_samples, sampler_config, seed=seed, batch_size=b, progress=cb,
                         cancel=cancel, precision=precision, channels_last=bool(channels_last)).y0

    run = _run_2d if dims == 2 else _run_3d
    y0, units, skipped, bs = run(model, vol, size, num_samples, draw, batch_size, len(timesteps), progress,
                                 cancel, overlap)
    back = canon.backward(y0.numpy())
    if geometry.dimension == 2:
        back = back[:, :, 0]
    y0 = torch.from_numpy(np.ascontiguousarray(back))
    return InferenceResult(y0=y0, roi=roi, timesteps=timesteps, units=units, skipped=skipped,
                           batch_size=bs)


DrawFn = Callable[[Tensor, int, ProgressFn], Tensor]


def _run_2d(model: DiffusionSegmenter, vol: Tensor, size: list[int], m: int, draw: DrawFn,
            batch_size: int | None, steps: int, progress: ProgressFn | None,
            cancel: CancelFn | None, overlap: float) -> tuple[Tensor, int, int, int]:
    """vol (Cin, S, P, L): slices along S, each resized to ``size`` and back."""
    n_slices, plane = vol.shape[1], tuple(vol.shape[2:])
    c = model.num_classes
    device = next(model.parameters()).device
    group = max(1, (batch_size or DEFAULT_BATCH_2D) // m)
    bs = batch_size or default_batch_size(device, size, group * m)
    out = _background(c, (n_slices, *plane)).unsqueeze(0).repeat(m, 1, 1, 1, 1)  # (M, C, S, P, L)
    slices = vol.movedim(1, 0)  # (S, Cin, P, L)
    todo = [int(i) for i in torch.nonzero(_nonconstant(slices)).flatten()]
    groups = [todo[i:i + group] for i in range(0, len(todo), group)]
    track = _Progress(len(groups), steps, progress)
    for idx in groups:
        if cancel is not None and cancel():
            raise SamplingCancelled("sampling cancelled")
        x = _resize(slices[idx], size).to(device)
        cb = track.callback()
        y, bs = run_with_oom_retry(lambda b: draw(x, b, cb), bs,
                                   lambda b: _log(f"out of memory: batch size now {b}"))
        g = y.shape[0]
        y = _resize(y.reshape(g * m, c, *size), plane).reshape(g, m, c, *plane)
        out[:, :, idx] = y.permute(1, 2, 0, 3, 4)
        track.finish_unit()
    return out, len(groups), n_slices - len(todo), bs


def count_windows(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> int:
    """How many patches MONAI's sliding_window_inference visits (same formula, for the progress N)."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    padded = [max(i, r) for i, r in zip(image_size, roi_size)]
    interval = _get_scan_interval(padded, roi_size, len(roi_size), [overlap] * len(roi_size))
    return len(dense_patch_slices(padded, roi_size, interval))


def _run_3d(model: DiffusionSegmenter, vol: Tensor, size: list[int], m: int, draw: DrawFn,
            batch_size: int | None, steps: int, progress: ProgressFn | None,
            cancel: CancelFn | None, overlap: float) -> tuple[Tensor, int, int, int]:
    """vol (Cin, S, P, L): MONAI sliding window with patch size ``size``; the predictor samples M
    hypotheses per patch and returns them stacked on channels (M*C), which MONAI blends."""
    from monai.inferers import sliding_window_inference

    c = model.num_classes
    device = next(model.parameters()).device
    patches_per_call = max(1, (batch_size or DEFAULT_PATCHES_3D * m) // m)
    bs = batch_size or default_batch_size(device, size, patches_per_call * m)
    n_windows = count_windows(vol.shape[1:], size, overlap)
    units = math.ceil(n_windows / patches_per_call)
    track = _Progress(units, steps, progress)
    state = {"bs": bs, "skipped": 0}

    def predictor(patches: Tensor) -> Tensor:
        if cancel is not None and cancel():
            raise SamplingCancelled("sampling cancelled")
        p = patches.shape[0]
        out = _background(c, patches.shape[2:]).unsqueeze(0).repeat(p, m, 1, 1, 1)  # (P, M*C, ...)
        keep = _nonconstant(patches.cpu())
        state["skipped"] += int((~keep).sum())
        if bool(keep.any()):
            x = patches[keep.to(patches.device)]
            cb = track.callback()
            y, state["bs"] = run_with_oom_retry(lambda b: draw(x, b, cb), state["bs"],
                                                lambda b: _log(f"out of memory: batch size now {b}"))
            out[keep] = y.reshape(y.shape[0], m * c, *y.shape[3:])
        track.finish_unit()
        return out.to(patches.device)

    with torch.no_grad():
        y = sliding_window_inference(vol[None], roi_size=size, sw_batch_size=patches_per_call,
                                     predictor=predictor, overlap=overlap, mode="gaussian",
                                     sw_device=device, device=torch.device("cpu"))
    y = y[0].reshape(m, c, *vol.shape[1:]).float()
    return y, units, state["skipped"], state["bs"]
