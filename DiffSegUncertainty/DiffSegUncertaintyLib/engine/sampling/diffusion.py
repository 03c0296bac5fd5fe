"""The diffusion core shared by PGRD and HSRDiff.

Timesteps are 1-indexed as in both papers: t = 1..T, and ``abar[0] = 1`` stands for the clean signal,
so a step "to t_prev = 0" lands exactly on the clean estimate. Coefficients are computed in float64
and cast to the working dtype at use.

Notation (../shared/notes/methods.md): ``alpha_t = 1 - beta_t``, ``abar_t = prod_{k<=t} alpha_k``
(the HSRDiff paper calls the product alpha_t, PGRD calls it rho_t).

Every method is an ordinary DDPM on some variable x: HSRDiff on the label embedding y, PGRD on the
residual r = y - p (the prior p is the method's *offset*). The core only sees x.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

Spacing = Literal["leading", "trailing", "linspace"]
Variance = Literal["posterior", "beta"]


class NoiseSchedule:
    """A discrete variance schedule beta_1..beta_T and everything derived from it."""

    def __init__(self, betas: np.ndarray, name: str = "custom"):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not np.all((betas > 0) & (betas <= 1)):
            raise ValueError("betas must be a 1-D array in (0, 1]")
        self.name = name
        self.T = len(betas)
        self.betas = np.concatenate([[0.0], betas])  # betas[0] unused: t = 0 is the clean signal
        self.alphas = 1.0 - self.betas
        self.abar = np.cumprod(self.alphas)  # abar[0] = 1 exactly
        self._abar_t = torch.from_numpy(self.abar)
        self._tables: dict[tuple[torch.device, torch.dtype], Tensor] = {}  # abar on each device/dtype

    # -- constructors ------------------------------------------------------------------------------
    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, zero_terminal_snr: bool = False) -> "NoiseSchedule":
        """Nichol & Dhariwal (2021) cosine schedule, betas clipped at 0.999 (PGRD Sec. III-B).

        ``zero_terminal_snr`` applies Lin et al. (2024) Algorithm 1: shift and scale sqrt(abar) so that
        sqrt(abar_T) = 0 while sqrt(abar_1) is unchanged. x_T is then pure noise; only v- or
        x0-parameterised models can be trained with it (eps cannot be recovered at t = T).
        """
        steps = np.arange(T + 1, dtype=np.float64) / T
        f = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        abar = f / f[0]
        betas = np.clip(1 - abar[1:] / abar[:-1], 0, 0.999)
        name = f"cosine-T{T}"
        if zero_terminal_snr:
            betas = _rescale_zero_terminal_snr(betas)
            name += "-ztsnr"
        return cls(betas, name)

    @classmethod
    def linear(cls, T: int = 250, beta_start: float = 1e-4, beta_end: float = 0.02,
               scale_to_T: bool = True) -> "NoiseSchedule":
        """Ho et al. linear schedule. With ``scale_to_T`` the betas are multiplied by 1000/T (improved
        DDPM), so that T = 250 still ends near pure noise (abar_T ~ 3e-5 instead of 0.08); see
        ../shared/notes/methods.md, HSRDiff schedule."""
        scale = 1000.0 / T if scale_to_T else 1.0
        betas = np.linspace(beta_start * scale, beta_end * scale, T, dtype=np.float64)
        return cls(betas, f"linear-T{T}" + ("-scaled" if scale_to_T else ""))

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "NoiseSchedule":
        """Build from a model card's ``schedule`` entry, e.g. {"kind": "cosine", "T": 1000}."""
        kind = cfg.get("kind")
        if kind == "cosine":
            return cls.cosine(int(cfg["T"]), zero_terminal_snr=bool(cfg.get("zero_terminal_snr", False)))
        if kind == "linear":
            return cls.linear(int(cfg["T"]), scale_to_T=bool(cfg.get("scale_to_T", True)))
        raise ValueError(f"unknown schedule kind {kind!r} (expected 'cosine' or 'linear')")

    # -- timesteps ---------------------------------------------------------------------------------
    def timesteps(self, steps: int | None = None, spacing: Spacing = "leading") -> list[int]:
        """Descending timesteps for a sampler with ``steps`` network evaluations (None = all T).

        leading:  1, 1+k, 1+2k, ... (k = T // steps), as in DDIM; never reaches T unless steps = T.
        trailing: T, T-k, ..., k (Lin et al. 2024, Table 2): always starts at T.
        linspace: round(linspace(1, T, steps)): both ends.
        """
        T = self.T
        steps = T if steps is None else int(steps)
        if not 1 <= steps <= T:
            raise ValueError(f"steps must be in 1..{T}, got {steps}")
        if spacing == "leading":
            ts = np.arange(steps) * (T // steps) + 1
        elif spacing == "trailing":
            ts = np.round(np.arange(T, 0, -T / steps)).astype(int)[:steps]
        elif spacing == "linspace":
            ts = np.round(np.linspace(1, T, steps)).astype(int)
        else:
            raise ValueError(f"unknown spacing {spacing!r}")
        ts = sorted({int(t) for t in ts}, reverse=True)
        if len(ts) != steps:
            raise ValueError(f"{spacing} spacing gives duplicate timesteps for steps={steps}")
        return ts

    # -- coefficients ------------------------------------------------------------------------------
    def abar_at(self, t: Tensor | int, like: Tensor) -> Tensor:
        """abar_t for a batch of timesteps, broadcast to ``like``.

        The table is indexed on ``like``'s device (a cached copy in its dtype), so a sampler step never
        waits for the GPU to hand timesteps back to the CPU.
        """
        key = (like.device, like.dtype)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = self._abar_t.to(device=like.device, dtype=like.dtype)
        t = torch.as_tensor(t, device=like.device).reshape(-1).long()
        if t.numel() == 1 and like.shape[0] != 1:
            t = t.expand(like.shape[0])
        return table[t].reshape(-1, *([1] * (like.ndim - 1)))

    # -- forward process ---------------------------------------------------------------------------
    def q_sample(self, x0: Tensor, t: Tensor | int, eps: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps  (HSRDiff eq. 2; PGRD eq. 2 on the residual)."""
        a = self.abar_at(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps

    # -- parameterisations -------------------------------------------------------------------------
    def v_from(self, x0: Tensor, eps: Tensor, t: Tensor | int) -> Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0  (PGRD eq. 3)."""
        a = self.abar_at(t, x0)
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    def x0_eps_from_v(self, x_t: Tensor, v: Tensor, t: Tensor | int) -> tuple[Tensor, Tensor]:
        """x0 = sqrt(abar) x_t - sqrt(1-abar) v ; eps = sqrt(1-abar) x_t + sqrt(abar) v  (PGRD eq. 4)."""
        a = self.abar_at(t, x_t)
        return a.sqrt() * x_t - (1 - a).sqrt() * v, (1 - a).sqrt() * x_t + a.sqrt() * v

    def x0_from_eps(self, x_t: Tensor, eps: Tensor, t: Tensor | int) -> Tensor:
        """Invert eq. 2 for x0. Undefined where abar_t = 0 (zero-terminal-SNR at t = T)."""
        a = self.abar_at(t, x_t)
        return (x_t - (1 - a).sqrt() * eps) / a.sqrt()

    def eps_from_x0(self, x_t: Tensor, x0: Tensor, t: Tensor | int) -> Tensor:
        """Invert eq. 2 for eps. Undefined at t = 0 (abar = 1)."""
        a = self.abar_at(t, x_t)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    # -- reverse process ---------------------------------------------------------------------------
    def posterior(self, x_t: Tensor, x0: Tensor, t: Tensor | int, t_prev: Tensor | int
                  ) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_{t_prev} | x_t, x0) for any 0 <= t_prev < t.

        With t_prev = t - 1 this is the DDPM posterior (HSRDiff eq. 12 and the mu~ of eq. 9; PGRD eq. 5):
            mu = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t
            var = (1 - abar_{t-1}) / (1 - abar_t) beta_t
        For a skip, alpha_t is replaced by the ratio abar_t / abar_{t_prev}.
        """
        a_t, a_s = self.abar_at(t, x_t), self.abar_at(t_prev, x_t)
        alpha = a_t / a_s
        beta = 1 - alpha
        mean = (a_s.sqrt() * beta / (1 - a_t)) * x0 + (alpha.sqrt() * (1 - a_s) / (1 - a_t)) * x_t
        var = (1 - a_s) / (1 - a_t) * beta
        return mean, var

    def ddpm_step(self, x_t: Tensor, x0: Tensor, t: Tensor | int, t_prev: Tensor | int,
                  noise: Tensor | None, variance: Variance = "posterior") -> Tensor:
        """Ancestral step x_{t_prev} = mu + sigma z (HSRDiff Algorithm 2 line 5; PGRD eq. 5).

        ``variance``: "posterior" uses beta~ (the true posterior variance), "beta" uses the step's
        beta (PGRD eq. 5 allows either). No noise is added when t_prev = 0.
        """
        mean, var = self.posterior(x_t, x0, t, t_prev)
        if variance == "beta":
            var = 1 - self.abar_at(t, x_t) / self.abar_at(t_prev, x_t)
        if noise is None:
            return mean
        var = torch.where(self.abar_at(t_prev, x_t) >= 1, torch.zeros_like(var), var)
        return mean + var.sqrt() * noise

    def ddim_step(self, x_t: Tensor, x0: Tensor, eps: Tensor, t: Tensor | int, t_prev: Tensor | int,
                  eta: float = 0.0, noise: Tensor | None = None) -> Tensor:
        """DDIM update (Song et al. 2021, eq. 12) from t to t_prev given the clean and noise estimates.

        x_{t'} = sqrt(abar_t') x0 + sqrt(1 - abar_t' - sigma^2) eps + sigma z, with
        sigma^2 = eta^2 (1 - abar_t') / (1 - abar_t) (1 - abar_t / abar_t'). eta = 1 gives the posterior
        variance; eta = 0 is deterministic (PGRD Sec. III-B samples with eta = 0).
        """
        a_t, a_s = self.abar_at(t, x_t), self.abar_at(t_prev, x_t)
        sigma2 = (eta ** 2) * (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
        out = a_s.sqrt() * x0 + (1 - a_s - sigma2).clamp_min(0).sqrt() * eps
        if eta > 0:
            if noise is None:
                raise ValueError("eta > 0 needs noise")
            out = out + sigma2.sqrt() * noise
        return out


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. (2024), Algorithm 1: rescale so that abar_T = 0, keeping abar_1."""
    sqrt_abar = np.sqrt(np.cumprod(1 - betas))
    first, last = sqrt_abar[0], sqrt_abar[-1]
    sqrt_abar = (sqrt_abar - last) * first / (first - last)
    abar = sqrt_abar ** 2
    alphas = np.concatenate([abar[:1], abar[1:] / abar[:-1]])
    return 1 - alphas


# -- label embedding -------------------------------------------------------------------------------

def embed_labels(labels: Tensor, num_classes: int) -> Tensor:
    """Integer labels (B, *spatial) -> y = 2 * onehot - 1 of shape (B, C, *spatial) (methods.md)."""
    onehot = torch.nn.functional.one_hot(labels.long(), num_classes)
    return onehot.movedim(-1, 1).float() * 2 - 1


def embed_probabilities(p: Tensor) -> Tensor:
    """Class probabilities (B, C, ...) -> the same embedding 2p - 1 (PGRD prior, methods.md)."""
    return 2 * p - 1


def to_probabilities(y0: Tensor, tau: float) -> Tensor:
    """softmax(y0 / tau) over the class channel (PGRD Sec. II-E; used for both methods)."""
    return torch.softmax(y0 / tau, dim=1)


# -- the interface every method implements ----------------------------------------------------------

@dataclass
class Prediction:
    """One denoiser evaluation, in the diffusion variable's space (residual for PGRD).

    ``x0`` and ``eps`` must be consistent with x_t (x_t = sqrt(abar) x0 + sqrt(1-abar) eps) for the
    DDIM step to be exact; ``extras`` are per-sample scalars worth recording (HSRDiff's kappa).
    """

    x0: Tensor
    eps: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)


Condition = dict[str, Any]  # tensors (or lists of tensors) with the batch on dim 0


class DiffusionSegmenter(nn.Module, ABC):
    """A conditional diffusion model over label embeddings, as the sampler sees it.

    Subclasses set ``schedule``, ``num_classes``, ``in_channels``, ``spatial_dims`` and ``tau_out``.
    """

    schedule: NoiseSchedule
    num_classes: int
    in_channels: int
    spatial_dims: int
    tau_out: float

    @abstractmethod
    def encode(self, image: Tensor) -> Condition:
        """Everything that depends on the image alone (computed once per image, reused for all steps
        and samples): HSRDiff's E_c features, PGRD's prior."""

    def offset(self, cond: Condition) -> Tensor | None:
        """The point the chain is centred on: PGRD's embedded prior 2p - 1; None (zero) otherwise."""
        return None

    @abstractmethod
    def denoise(self, x_t: Tensor, t: Tensor, cond: Condition) -> Prediction:
        """Predict the clean variable and the noise from x_t at timesteps t (shape (B,))."""

    @abstractmethod
    def loss(self, image: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Training loss for a batch: image (B, Cin, *S), integer labels (B, *S). Returns a dict with
        at least 'loss' (the total to backpropagate) and its named parts."""

    def config_dict(self) -> dict[str, Any]:
        """Every hyperparameter needed to rebuild this network (written to the model card)."""
        raise NotImplementedError


def repeat_condition(cond: Condition, repeats: int) -> Condition:
    """Repeat every tensor of a condition ``repeats`` times along the batch (sample-major within an
    image: image 0's samples first)."""

    def rep(v: Any) -> Any:
        if isinstance(v, Tensor):
            return v.repeat_interleave(repeats, dim=0)
        if isinstance(v, (list, tuple)):
            return type(v)(rep(u) for u in v)
        return v

    return {k: rep(v) for k, v in cond.items()}


def select_condition(cond: Condition, index: Tensor) -> Condition:
    """Pick batch entries ``index`` of every tensor of a condition."""

    def sel(v: Any) -> Any:
        if isinstance(v, Tensor):
            return v.index_select(0, index.to(v.device))
        if isinstance(v, (list, tuple)):
            return type(v)(sel(u) for u in v)
        return v

    return {k: sel(v) for k, v in cond.items()}
