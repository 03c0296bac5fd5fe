"""Drawing M segmentation hypotheses of one or more images with any DiffusionSegmenter.

What users need beyond the papers' Algorithm 2 (methods.md, last section):
- the image-only work (``model.encode``) runs once per image, not once per step and sample;
- the M samples of an image run as one batch, split into chunks of ``batch_size`` when memory is short;
- sample k draws its noise from its own generator seeded by (seed, k), on the CPU: a run is
  reproducible bit for bit on the same device, chunking does not change which noise a sample gets, and
  hypothesis k gets the *same* noise on every slice or patch of a volume (a coherent 3D object);
- a progress callback after each step and cancellation between steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from torch import Tensor

from .checks import check_image
from .diffusion import Condition, DiffusionSegmenter, Spacing, Variance, select_condition

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]


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


@torch.no_grad()
def run_chain(model: DiffusionSegmenter, cond: Condition, x: Tensor, timesteps: list[int],
              config: SamplerConfig, noise: Callable[[], Tensor] | None = None,
              on_step: Callable[[], None] | None = None) -> tuple[Tensor, dict[str, list[Tensor]]]:
    """Walk the reverse chain from x at timesteps[0] down to t = 0; returns the final clean variable
    (diffusion space, i.e. without the offset) and the per-step extras."""
    sched = model.schedule
    offset = model.offset(cond)
    extras: dict[str, list[Tensor]] = {}
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else 0
        tb = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        pred = model.denoise(x, tb, cond)
        x0, eps = pred.x0, pred.eps
        if config.clip:
            y0 = x0 if offset is None else offset + x0
            y0 = y0.clamp(-1, 1)
            x0 = y0 if offset is None else y0 - offset
            eps = sched.eps_from_x0(x, x0, tb)
        z = noise() if (config.stochastic() and noise is not None and t_prev > 0) else None
        if config.method == "ddim":
            x = sched.ddim_step(x, x0, eps, tb, t_prev, config.eta, z)
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
           cancel: CancelFn | None = None) -> SampleResult:
    """Draw ``num_samples`` hypotheses for each image of a batch.

    image: (B, Cin, *spatial) on any device; the model's device is used.
    sample_ids: the hypothesis numbers to draw (default 0..num_samples-1); pass the same ids for every
        slice or patch of a volume so hypothesis k is one coherent object.
    batch_size: most (image, sample) pairs run together; None = all of them.
    progress(done, total) is called after every step; cancel() is polled between steps.
    """
    config = config or SamplerConfig()
    model.eval()
    device = next(model.parameters()).device
    check_image(image, spatial_dims=model.spatial_dims, in_channels=model.in_channels)
    sample_ids = list(range(num_samples)) if sample_ids is None else list(sample_ids)
    if not sample_ids:
        raise ValueError("num_samples must be at least 1")
    timesteps = model.schedule.timesteps(config.steps, config.spacing)
    B, M = image.shape[0], len(sample_ids)
    items = [(b, k) for b in range(B) for k in sample_ids]
    chunk = len(items) if batch_size is None else max(1, int(batch_size))
    chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
    total, done = len(chunks) * len(timesteps), 0

    def on_step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)
        if cancel is not None and cancel():
            raise SamplingCancelled("sampling cancelled")

    with torch.no_grad():
        cond = model.encode(image.to(device=device, dtype=torch.float32))
    shape = (model.num_classes, *image.shape[2:])
    outputs, extras_out = [], {}
    for part in chunks:
        img_idx = torch.tensor([b for b, _ in part], device=device)
        cond_c = select_condition(cond, img_idx)
        noise = NoiseSource(seed, [k for _, k in part], shape, device)
        x_T = noise()  # PGRD: r_T ~ N(0, I), i.e. s_T = p + noise (methods.md)
        x, extras = run_chain(model, cond_c, x_T, timesteps, config, noise, on_step)
        offset = model.offset(cond_c)
        outputs.append((x if offset is None else offset + x).float().cpu())
        for name, values in extras.items():
            extras_out.setdefault(name, []).append(torch.stack(values, dim=1))
    y0 = torch.cat(outputs).reshape(B, M, *shape)
    extras = {k: torch.cat(v).reshape(B, M, -1) for k, v in extras_out.items()}
    return SampleResult(y0=y0, timesteps=timesteps, extras=extras)
