"""Paper-faithful samplers: the baseline the project's sampler is timed against (issue 7).

They follow the papers literally, with none of the project's sampler economies:
- one hypothesis at a time (HSRDiff Algorithm 2, line 1: ``for j = 1..N``), batch size 1;
- the image-only work recomputed at every step: HSRDiff's condition encoder E_c (Algorithm 2 line 4
  feeds x_t *and c* into the network), PGRD's prior pi_phi (Sec. II-E, "the prior is injected at every
  step");
- HSRDiff: mu_theta from eqs. (8), (11), (12) term by term (``hsrdiff.paper_mean``), then
  x_{t-1} = mu_theta + sigma_t z with z ~ N(0, I) for t > 1 and z = 0 at t = 1 (line 3), sigma_t^2 the
  posterior variance (1 - abar_{t-1}) / (1 - abar_t) beta_t, over all T steps;
- PGRD: DDIM with eta = 0 over S of T steps ("leading" spacing 1, 1+k, ..., k = T // S), written out
  from eq. (4): r0 = sqrt(abar) r - sqrt(1-abar) v, eps = sqrt(1-abar) r + sqrt(abar) v,
  r_{t'} = sqrt(abar_t') r0 + sqrt(1-abar_t') eps; hypothesis = p + r_0.

Noise: hypothesis k draws from its own CPU generator seeded by ``sampler.sample_seed(seed, k)``, x_T
first and then one draw per noisy step, which is exactly the order of the project's ``NoiseSource``:
fed the same seed, the reference and ``sampler.sample`` give the same hypotheses up to float rounding
(Testing/training/test_benchmark.py), so the speed-up compares like with like.

Both run under ``torch.no_grad()`` (as any inference code would); nothing else is optimised.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from DiffSegUncertaintyLib.engine.networks.hsrdiff import paper_mean, paper_means
from DiffSegUncertaintyLib.engine.sampling.sampler import sample_seed

StepFn = Callable[[int, int], None]  # (hypothesis index, steps done in it)


class StopReference(RuntimeError):
    """Raised by a step callback to end a truncated (per-step timing) run early."""


def _noise(gen: torch.Generator, shape: tuple[int, ...], device: torch.device) -> Tensor:
    return torch.randn(shape, generator=gen).unsqueeze(0).to(device)


def _check(image: Tensor, model) -> None:
    if image.ndim != model.spatial_dims + 2 or image.shape[0] != 1:
        raise ValueError(f"the reference samples one image at a time: need (1, Cin, *S), got {tuple(image.shape)}")


@torch.no_grad()
def hsrdiff_paper_sample(model, image: Tensor, num_samples: int = 16, *, seed: int = 0,
                         on_step: StepFn | None = None) -> Tensor:
    """HSRDiff Algorithm 2, literally. image (1, Cin, *S) on the model's device -> y0 (1, N, C, *S) CPU."""
    _check(image, model)
    device = next(model.parameters()).device
    image = image.to(device=device, dtype=torch.float32)
    sched = model.schedule
    shape = (model.num_classes, *image.shape[2:])
    out = []
    for j in range(num_samples):                                    # line 1
        gen = torch.Generator().manual_seed(sample_seed(seed, j))
        x = _noise(gen, shape, device)                              # x_T ~ N(0, I)
        for n, t in enumerate(range(sched.T, 0, -1)):               # line 2
            z = _noise(gen, shape, device) if t > 1 else None       # line 3
            tb = torch.full((1,), t, dtype=torch.long, device=device)
            cond = model.encode(image)                              # c into the network, every step
            eps_theta, x_theta, kappa = model.heads(x, tb, cond)    # line 4
            if x_theta is None:                                     # eps-only ablation: mu_eps (eq. 11)
                mu = paper_means(sched, x, eps_theta, eps_theta, tb)[0]
            else:
                mu = paper_mean(sched, x, eps_theta, x_theta, kappa, tb)  # eqs. (8), (11), (12)
            if z is not None:                                       # line 5
                var = (1 - sched.abar[t - 1]) / (1 - sched.abar[t]) * sched.betas[t]
                x = mu + math.sqrt(var) * z
            else:
                x = mu
            if on_step is not None:
                on_step(j, n + 1)
        out.append(x.float().cpu())
    return torch.cat(out).unsqueeze(0)


def pgrd_paper_timesteps(T: int, steps: int) -> list[int]:
    """DDIM's uniform ("leading") subset of S of T steps, descending: 1 + i * (T // S)."""
    k = T // steps
    return [1 + i * k for i in range(steps)][::-1]


@torch.no_grad()
def pgrd_paper_sample(model, image: Tensor, num_samples: int = 16, *, steps: int = 300, seed: int = 0,
                      on_step: StepFn | None = None) -> Tensor:
    """PGRD Sec. II / III-B: DDIM (eta = 0) over S of T steps, one hypothesis at a time, the prior
    recomputed at every step. image (1, Cin, *S) -> y0 = p + r_0, (1, N, C, *S) on the CPU."""
    _check(image, model)
    device = next(model.parameters()).device
    image = image.to(device=device, dtype=torch.float32)
    abar = model.schedule.abar
    ts = pgrd_paper_timesteps(model.schedule.T, steps)
    shape = (model.num_classes, *image.shape[2:])
    out = []
    for j in range(num_samples):
        gen = torch.Generator().manual_seed(sample_seed(seed, j))
        r = _noise(gen, shape, device)                              # r_T ~ N(0, I): s_T = p + noise
        for n, t in enumerate(ts):
            t_prev = ts[n + 1] if n + 1 < len(ts) else 0
            tb = torch.full((1,), t, dtype=torch.long, device=device)
            cond = model.encode(image)                              # the prior, every step
            v = model._v(r, tb, cond)                               # f_theta(s_t, X, p, t), s_t = p + r_t
            a, a_prev = float(abar[t]), float(abar[t_prev])
            r0 = math.sqrt(a) * r - math.sqrt(1 - a) * v            # eq. (4)
            eps = math.sqrt(1 - a) * r + math.sqrt(a) * v           # eq. (4)
            r = math.sqrt(a_prev) * r0 + math.sqrt(1 - a_prev) * eps  # DDIM, eta = 0
            if on_step is not None:
                on_step(j, n + 1)
        p = cond.get("prior")
        out.append((r if p is None else p + r).float().cpu())
    return torch.cat(out).unsqueeze(0)


def paper_sample(model, image: Tensor, num_samples: int, *, steps: int | None = None, seed: int = 0,
                 on_step: StepFn | None = None) -> Tensor:
    """The paper-faithful sampler of the model's method (HSRDiff: all T steps, ``steps`` must be None
    or T; PGRD: DDIM over ``steps``, default 300)."""
    method = type(model).__name__.lower()
    if method == "hsrdiff":
        if steps not in (None, model.schedule.T):
            raise ValueError("HSRDiff's Algorithm 2 runs all T steps (eqs. 11-12 are one-step means)")
        return hsrdiff_paper_sample(model, image, num_samples, seed=seed, on_step=on_step)
    if method == "pgrd":
        return pgrd_paper_sample(model, image, num_samples, steps=steps or 300, seed=seed, on_step=on_step)
    raise ValueError(f"no paper-faithful sampler for {type(model).__name__}")


def paper_steps(model) -> int:
    """The papers' step counts: HSRDiff all T (250), PGRD S = 300 (of T = 1000)."""
    return model.schedule.T if type(model).__name__.lower() == "hsrdiff" else min(300, model.schedule.T)
