"""Drawing M segmentation hypotheses of one or more images with any DiffusionSegmenter.

What users need beyond the papers' Algorithm 2 (methods.md, last section):
- the image-only work (``model.encode``) runs once per image, not once per step and sample;
- the M samples of an image run as batches of ``batch_size`` (image, sample) pairs (memory; CPU cache);
- sample k draws its noise from its own generator seeded by (seed, k), on the CPU: a run is
  reproducible bit for bit on the same device, chunking does not change which noise a sample gets, and
  hypothesis k gets the *same* noise on every slice or patch of a volume (a coherent 3D object);
- a progress callback after each step and cancellation between steps.

CPU/GPU efficiency switches (docs/benchmarks.md has the measurements behind them):
- everything runs under ``torch.inference_mode()`` (no autograd bookkeeping); the returned tensors are
  ordinary tensors (copied out of inference mode), so callers may modify them or train afterwards;
- ``batch_size=None`` picks a device-aware chunk (``default_batch_size``): on a CPU a batch of 16
  hypotheses of 128 x 128 falls out of cache, so the CPU default is a voxel budget per chunk
  (``CPU_CHUNK_VOXELS``); on a GPU all pairs run together;
- ``precision="bf16"`` (opt-in) runs the networks under ``torch.autocast`` (CPU and CUDA); the chain's
  arithmetic, the noise and the returned y0 stay float32. Default "fp32": no autocast;
- ``channels_last=True`` (opt-in) switches the model to the channels-last memory format for the call
  (restored afterwards).

Reproducibility: with the same seed, device, chunk size, precision and memory format a run is
reproducible bit for bit. The *noise* of hypothesis k does not depend on the chunk size; the network's
arithmetic can (oneDNN / cuDNN choose convolution kernels by batch size), so hypotheses drawn with
different chunk sizes agree to float rounding (~1e-6), not bit for bit (Testing/engine/test_sampler.py).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import torch
from torch import Tensor

from ..networks.checks import check_image
from .diffusion import Condition, DiffusionSegmenter, Spacing, Variance, select_condition
from ..files.modelfile import PRECISIONS

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]

#: CPU default chunk as a budget of voxels per network call (items x voxels of one item):
#: ``batch_size=None`` on a CPU runs max(1, CPU_CHUNK_VOXELS // voxels) (image, sample) pairs at a time.
#: Set from the chunk-size sweep in docs/benchmarks.md (hsrdiff-light, 128 x 128, 2 quiet cores): chunks
#: of 2-4 ran 1.4-1.5x faster than 16 in fp32 and 4 was best in bf16 (1.3x over 16).
CPU_CHUNK_VOXELS = 4 * 128 * 128


class SamplingCancelled(RuntimeError):
    """Raised between two steps when the cancel callback returns True."""


@dataclass
class SamplerConfig:
    """How to walk the reverse chain.

    method: "ddpm" (ancestral, HSRDiff Algorithm 2) or "ddim" (PGRD Sec. III-B, eta = 0).
    steps: network evaluations; None = all T. With "ddpm" and steps < T the skip-step posterior is used.
    clip: clamp the clean estimate to [-1, 1] in label space (off by default: neither paper clips).
    """

    method: Literal["ddpm", "ddim"] = "ddim"
    steps: int | None = None
    eta: float = 0.0
    spacing: Spacing = "leading"
    variance: Variance = "posterior"
    clip: bool = False

    def stochastic(self) -> bool:
        return self.method == "ddpm" or self.eta > 0


@dataclass
class SampleResult:
    """y0: (B, M, C, *spatial) final clean estimates in label-embedding space (float32, CPU).
    extras: per-step scalars the model reports, name -> (B, M, steps) (e.g. HSRDiff's kappa)."""

    y0: Tensor
    timesteps: list[int]
    extras: dict[str, Tensor] = field(default_factory=dict)
    batch_size: int = 0          # the chunk used: (image, sample) pairs per network call


def sample_seed(seed: int, sample_id: int) -> int:
    """The generator seed of hypothesis ``sample_id`` in a run seeded with ``seed``."""
    return (int(seed) * 1_000_003 + int(sample_id)) % (2 ** 63)


class NoiseSource:
    """Per-hypothesis Gaussian noise: every call returns the next draw of each item's generator.

    Items that share a sample id get identical noise; generators live on the CPU so the noise does
    not depend on the device.
    """

    def __init__(self, seed: int, sample_ids: list[int], shape: tuple[int, ...], device: torch.device):
        self.ids = sample_ids
        self.unique = sorted(set(sample_ids))
        self.gens = {k: torch.Generator().manual_seed(sample_seed(seed, k)) for k in self.unique}
        self.shape, self.device = shape, device

    def __call__(self) -> Tensor:
        draws = {k: torch.randn(self.shape, generator=self.gens[k]) for k in self.unique}
        return torch.stack([draws[k] for k in self.ids]).to(self.device)


def default_batch_size(device: torch.device | str, spatial: Sequence[int], items: int) -> int:
    """The chunk ``sample`` uses when ``batch_size`` is None: on a CPU as many (image, sample) pairs as
    fit in ``CPU_CHUNK_VOXELS`` voxels (at least 1), elsewhere all ``items`` at once."""
    items = max(1, int(items))
    if torch.device(device).type == "cpu":
        return max(1, min(items, CPU_CHUNK_VOXELS // max(1, math.prod(int(s) for s in spatial))))
    return items


def check_precision(precision: str, device: torch.device | str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    if precision != "fp32" and torch.device(device).type not in ("cpu", "cuda"):
        raise ValueError(f"precision {precision!r} is supported on cpu and cuda only")


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """torch.autocast for ``precision`` on ``device``; a no-op for "fp32"."""
    check_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def _float32(v: Any) -> Any:
    """Every floating tensor of a condition as float32 (after an autocast encoding)."""
    if isinstance(v, Tensor):
        return v.float() if v.is_floating_point() else v
    if isinstance(v, dict):
        return {k: _float32(u) for k, u in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_float32(u) for u in v)
    return v


@contextlib.contextmanager
def _memory_format(model: DiffusionSegmenter, channels_last: bool):
    """Switch the model to channels-last for the block (restored unless it already was); yields the
    format inputs should use (None: leave them alone)."""
    if not channels_last:
        yield None
        return
    fmt = torch.channels_last if int(model.spatial_dims) == 2 else torch.channels_last_3d
    conv_weights = [p for p in model.parameters() if p.ndim == int(model.spatial_dims) + 2]
    already = bool(conv_weights) and all(p.is_contiguous(memory_format=fmt) for p in conv_weights)
    model.to(memory_format=fmt)
    try:
        yield fmt
    finally:
        if not already:
            model.to(memory_format=torch.contiguous_format)


@torch.inference_mode()
def run_chain(model: DiffusionSegmenter, cond: Condition, x: Tensor, timesteps: list[int],
              config: SamplerConfig, noise: Callable[[], Tensor] | None = None,
              on_step: Callable[[], None] | None = None, *,
              precision: str = "fp32") -> tuple[Tensor, dict[str, list[Tensor]]]:
    """Walk the reverse chain from x at timesteps[0] down to t = 0; returns the final clean variable
    (diffusion space, i.e. without the offset) and the per-step extras. ``precision`` "bf16" runs the
    network under autocast; its outputs are cast back to x's dtype, so the chain itself is float32."""
    sched = model.schedule
    offset = model.offset(cond)
    extras: dict[str, list[Tensor]] = {}
    amp = autocast(precision, x.device)
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else 0
        tb = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        if precision == "fp32":
            pred = model.denoise(x, tb, cond)
            x0, eps = pred.x0, pred.eps
        else:
            with amp:
                pred = model.denoise(x, tb, cond)
            x0, eps = pred.x0.to(x.dtype), pred.eps.to(x.dtype)
        if config.clip:
            y0 = x0 if offset is None else offset + x0
            y0 = y0.clamp(-1, 1)
            x0 = y0 if offset is None else y0 - offset
            eps = sched.eps_from_x0(x, x0, tb)
        z = noise() if (config.stochastic() and noise is not None and t_prev > 0) else None
        if config.method == "ddim":
            # sigma = 0 at t_prev = 0 (abar_0 = 1): eta 0 there, exactly, so the last step needs no noise
            x = sched.ddim_step(x, x0, eps, tb, t_prev, config.eta if t_prev > 0 else 0.0, z)
        else:
            x = sched.ddpm_step(x, x0, tb, t_prev, z, config.variance)
        for name, value in pred.extras.items():
            extras.setdefault(name, []).append(value.detach().float().reshape(-1).cpu())
        if on_step is not None:
            on_step()
    return x, extras


def sample(model: DiffusionSegmenter, image: Tensor, num_samples: int = 16,
           config: SamplerConfig | None = None, *, seed: int = 0, sample_ids: list[int] | None = None,
           batch_size: int | None = None, progress: ProgressFn | None = None,
           cancel: CancelFn | None = None, precision: str = "fp32",
           channels_last: bool = False) -> SampleResult:
    """Draw ``num_samples`` hypotheses for each image of a batch.

    image: (B, Cin, *spatial) on any device; the model's device is used.
    sample_ids: the hypothesis numbers to draw (default 0..num_samples-1); pass the same ids for every
        slice or patch of a volume so hypothesis k is one coherent object.
    batch_size: most (image, sample) pairs run together; None = ``default_batch_size`` (CPU: a voxel
        budget per chunk, ``CPU_CHUNK_VOXELS``; GPU: all of them).
    progress(done, total) is called after every step; cancel() is polled between steps.
    precision: "fp32" (default, no autocast) or "bf16" (networks under torch.autocast, CPU or CUDA;
        results close to fp32, not equal).
    channels_last: run the networks in the channels-last memory format (the model is switched for
        the call and restored; not safe while another thread uses the same model).
    """
    config = config or SamplerConfig()
    model.eval()
    device = next(model.parameters()).device
    check_precision(precision, device)
    check_image(image, spatial_dims=model.spatial_dims, in_channels=model.in_channels)
    sample_ids = list(range(num_samples)) if sample_ids is None else list(sample_ids)
    if not sample_ids:
        raise ValueError("num_samples must be at least 1")
    timesteps = model.schedule.timesteps(config.steps, config.spacing)
    B, M = image.shape[0], len(sample_ids)
    items = [(b, k) for b in range(B) for k in sample_ids]
    chunk = (default_batch_size(device, image.shape[2:], len(items)) if batch_size is None
             else max(1, int(batch_size)))
    chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
    total, done = len(chunks) * len(timesteps), 0

    def on_step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)
        if cancel is not None and cancel():
            raise SamplingCancelled("sampling cancelled")

    shape = (model.num_classes, *image.shape[2:])
    outputs, extras_out = [], {}
    with _memory_format(model, channels_last) as fmt, torch.inference_mode():
        x_img = image.to(device=device, dtype=torch.float32)
        if fmt is not None:
            x_img = x_img.contiguous(memory_format=fmt)
        with autocast(precision, device):
            cond = model.encode(x_img)
        if precision != "fp32":
            cond = _float32(cond)
        for part in chunks:
            img_idx = torch.tensor([b for b, _ in part], device=device)
            cond_c = select_condition(cond, img_idx)
            noise = NoiseSource(seed, [k for _, k in part], shape, device)
            x_T = noise()  # PGRD: r_T ~ N(0, I), i.e. s_T = p + noise (methods.md)
            if fmt is not None:
                x_T = x_T.contiguous(memory_format=fmt)
            x, extras = run_chain(model, cond_c, x_T, timesteps, config, noise, on_step, precision=precision)
            offset = model.offset(cond_c)
            outputs.append((x if offset is None else offset + x).float().cpu())
            for name, values in extras.items():
                extras_out.setdefault(name, []).append(values)  # per chunk: one (n,) tensor per step
    # outside inference mode: cat/stack make ordinary tensors that callers may modify in place
    y0 = torch.cat(outputs).contiguous().reshape(B, M, *shape)
    extras = {k: torch.cat([torch.stack(steps, dim=1) for steps in v]).reshape(B, M, -1)
              for k, v in extras_out.items()}
    return SampleResult(y0=y0, timesteps=timesteps, extras=extras, batch_size=chunk)
