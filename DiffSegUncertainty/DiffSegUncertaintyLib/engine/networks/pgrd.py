"""PGRD: Prior-Guided Residual Diffusion (Mao et al.; ../shared/notes/methods.md, PGRD section).

An ordinary v-parameterised DDPM on the residual r = y - p, where p = 2 pi_phi(X) - 1 is the frozen
prior's class probabilities embedded like the labels. The sampler only sees r; ``offset`` gives p
back, so a hypothesis is p + r_0 and every state is s_t = p + r_t (the prior is injected at every
step, paper Sec. II-E). At t = T, s_T = p + N(0, I): sampling starts at the prior plus noise.

Decisions (details and parameter counts in docs/methods-pgrd.md):
- denoiser f_theta(s_t, X, p, t) = MONAI DiffusionModelUNet on channels [s_t, X, p], output v;
- DDS heads: K 1x1 convolutions on the denoiser's last decoder features (the input of its output
  block, read with a forward hook), head k serving timesteps in the k-th of K equal intervals of [1, T];
  training-only (never evaluated when sampling);
- ablation "w/o PGR" (use_prior=False): no prior is built, p := 0, the denoiser sees [y_t, X] and
  offset() returns None (plain v-DDPM on y);
- ablation "w/o DDS" (dds_weight=0): no heads are built and loss_dds is reported as 0.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets import DiffusionModelUNet
from torch import Tensor, nn

from .checks import check_batch, check_size
from ..sampling.diffusion import (Condition, DiffusionSegmenter, NoiseSchedule, Prediction, embed_labels,
                        embed_probabilities)
from .unet import UNet

# Sampler defaults written to the model card (paper Sec. III-B: DDIM, eta = 0, S = 300 of T = 1000).
DEFAULT_SAMPLING: dict[str, Any] = {"method": "ddim", "steps": 300, "eta": 0.0, "spacing": "leading",
                                    "variance": "posterior", "clip": False}

_SCHEDULE = {"kind": "cosine", "T": 1000, "zero_terminal_snr": False}

_COMMON: dict[str, Any] = {
    "use_prior": True,
    "dds_weight": 0.1,     # lambda of eq. (9), paper Sec. III-B
    "dds_intervals": 4,
    "dds_tau": 0.5,
    "dds_mode": "heads",
    "tau_out": 0.5,
    "label_embedding": "2*onehot-1",
}


def _preset(**fields: Any) -> dict[str, Any]:
    """A full configuration: every preset owns its nested dicts (callers may edit a copy freely)."""
    return copy.deepcopy({**fields, "schedule": _SCHEDULE, **_COMMON})


PRESETS: dict[str, dict[str, Any]] = {
    # for tests: 2D (spatial_dims=3 works too), any size that is a multiple of 4
    "tiny": _preset(
        spatial_dims=2, in_channels=1, num_classes=2,
        channels=[8, 16], attention_levels=[False, True], num_res_blocks=1, norm_num_groups=4,
        num_head_channels=8,
        prior={"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0, "dropout": 0.0}),
    # 2D CT crops of 128 x 128 (paper: 2D U-Net for INSTANCE 2022); sizes: multiples of 16
    "pgrd-2d": _preset(
        spatial_dims=2, in_channels=1, num_classes=2,
        channels=[32, 64, 128, 256], attention_levels=[False, False, True, True], num_res_blocks=2,
        norm_num_groups=32, num_head_channels=32,
        prior={"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2,
               "dropout": 0.0}),
    # 3D MRI patches / nodule stacks, e.g. 96^3 or 64^3 (paper: 3D U-Net for BraTS 2024); multiples of 16
    "pgrd-3d": _preset(
        spatial_dims=3, in_channels=1, num_classes=2,
        channels=[32, 64, 128, 128], attention_levels=[False, False, False, True], num_res_blocks=1,
        norm_num_groups=16, num_head_channels=32,
        prior={"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2,
               "dropout": 0.0}),
    # CPU-trainable sizes for the shipped LIDC models (64 x 64 crops / 8 x 64 x 64 nodule stacks, a
    # training step of batch 16 / 4 takes ~1.4 s on one core): same architecture, fewer widths and levels
    "pgrd-small": _preset(
        spatial_dims=2, in_channels=1, num_classes=2,
        channels=[32, 64, 64, 128], attention_levels=[False, False, False, True], num_res_blocks=1,
        norm_num_groups=8, num_head_channels=32,
        prior={"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1, "dropout": 0.0}),
    "pgrd-small-3d": _preset(
        spatial_dims=3, in_channels=1, num_classes=2,
        channels=[16, 32, 64], attention_levels=[False, False, False], num_res_blocks=1,
        norm_num_groups=8, num_head_channels=32,
        prior={"channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 1, "dropout": 0.0}),
}

_PRIOR_SHARED = ("spatial_dims", "in_channels", "num_classes")


class PGRD(DiffusionSegmenter):
    """Prior pi_phi (a UNet, trained first, then frozen) + residual denoiser f_theta + DDS heads."""

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, *,
                 schedule: dict[str, Any] | None = None, channels: Sequence[int] = (32, 64, 64, 64),
                 attention_levels: Sequence[bool] = (False, False, True, True), num_res_blocks: int = 2,
                 norm_num_groups: int = 32, num_head_channels: int = 32, prior: dict[str, Any] | None = None,
                 use_prior: bool = True, dds_weight: float = 0.1, dds_intervals: int = 4,
                 dds_tau: float = 0.5, dds_mode: str = "heads", tau_out: float = 0.5,
                 label_embedding: str = "2*onehot-1"):
        super().__init__()
        if label_embedding != "2*onehot-1":
            raise ValueError("PGRD supports the label embedding '2*onehot-1' only")
        if dds_mode not in ("heads", "y0"):
            raise ValueError(f"dds_mode must be 'heads' or 'y0', got {dds_mode!r}")
        if dds_weight < 0 or dds_intervals < 1 or dds_tau <= 0 or tau_out <= 0:
            raise ValueError("need dds_weight >= 0, dds_intervals >= 1, dds_tau > 0, tau_out > 0")
        self.spatial_dims, self.in_channels = int(spatial_dims), int(in_channels)
        self.num_classes = int(num_classes)
        self.schedule_cfg = dict(schedule or _SCHEDULE)
        self.schedule = NoiseSchedule.from_config(self.schedule_cfg)
        self.channels, self.attention_levels = [int(c) for c in channels], [bool(a) for a in attention_levels]
        self.num_res_blocks, self.norm_num_groups = int(num_res_blocks), int(norm_num_groups)
        self.num_head_channels = int(num_head_channels)
        self.use_prior, self.dds_mode = bool(use_prior), dds_mode
        self.dds_weight, self.dds_intervals = float(dds_weight), int(dds_intervals)
        self.dds_tau, self.tau_out = float(dds_tau), float(tau_out)
        self.label_embedding = label_embedding

        # The prior shares the model's dimensions; its own dict holds only its widths.
        prior_cfg = dict(prior or {})
        for key in _PRIOR_SHARED:
            if key in prior_cfg and int(prior_cfg[key]) != getattr(self, key):
                raise ValueError(f"prior {key}={prior_cfg[key]} differs from the model's {getattr(self, key)}")
            prior_cfg[key] = getattr(self, key)
        self.prior_cfg = prior_cfg
        # w/o PGR: the prior is not built at all, so it cannot leak into the chain.
        self.prior: UNet | None = UNet.from_config(prior_cfg) if self.use_prior else None
        self._prior_frozen = False

        C, n_prior = self.num_classes, (self.num_classes if self.use_prior else 0)
        self.denoiser = DiffusionModelUNet(
            spatial_dims=self.spatial_dims, in_channels=C + self.in_channels + n_prior, out_channels=C,
            channels=self.channels, attention_levels=self.attention_levels,
            num_res_blocks=self.num_res_blocks, norm_num_groups=self.norm_num_groups,
            num_head_channels=self.num_head_channels)
        # DDS heads psi_k (eq. 6): one 1x1 conv per timestep interval, stored as one conv with K*C outputs
        # (output channels [k*C, (k+1)*C) are head k). Not built for "y0" mode or the w/o DDS ablation.
        self.dds_heads: nn.Module | None = None
        if self.dds_weight > 0 and self.dds_mode == "heads":
            self.dds_heads = Convolution(self.spatial_dims, self.channels[0], self.dds_intervals * C,
                                         kernel_size=1, conv_only=True)

    # -- configuration -----------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {"spatial_dims": self.spatial_dims, "in_channels": self.in_channels,
                "num_classes": self.num_classes, "schedule": dict(self.schedule_cfg),
                "channels": list(self.channels), "attention_levels": list(self.attention_levels),
                "num_res_blocks": self.num_res_blocks, "norm_num_groups": self.norm_num_groups,
                "num_head_channels": self.num_head_channels, "prior": dict(self.prior_cfg),
                "use_prior": self.use_prior, "dds_weight": self.dds_weight,
                "dds_intervals": self.dds_intervals, "dds_tau": self.dds_tau, "dds_mode": self.dds_mode,
                "tau_out": self.tau_out, "label_embedding": self.label_embedding}

    @property
    def size_multiple(self) -> int:
        """Every spatial size must be a multiple of this (denoiser and prior downsampling)."""
        m = 2 ** (len(self.channels) - 1)
        return m if self.prior is None else math.lcm(m, self.prior.size_multiple)

    # -- the two training stages ------------------------------------------------------------------
    def freeze_prior(self, frozen: bool = True) -> "PGRD":
        """Stage 2: the prior keeps its weights (no grad) and stays in eval mode through train()."""
        self._prior_frozen = frozen
        if self.prior is not None:
            self.prior.requires_grad_(not frozen)
            self.prior.train(self.training and not frozen)
        return self

    def train(self, mode: bool = True) -> "PGRD":
        super().train(mode)
        if self.prior is not None and self._prior_frozen:
            self.prior.eval()
        return self

    def prior_loss(self, image: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Stage 1: the prior's own segmentation loss (Dice + CE); touches nothing else."""
        if self.prior is None:
            raise ValueError("this PGRD has use_prior=False: there is no prior to train")
        return self.prior.loss(image, labels)

    def denoiser_parameters(self) -> Iterator[nn.Parameter]:
        """What stage 2 optimises: the denoiser and the DDS heads, never the prior."""
        yield from self.denoiser.parameters()
        if self.dds_heads is not None:
            yield from self.dds_heads.parameters()

    # -- DiffusionSegmenter ------------------------------------------------------------------------
    def check_input(self, image: Tensor, labels: Tensor | None = None) -> None:
        """Raise InputError before any work for an image (and labels) the model cannot take."""
        check_batch(image, labels, spatial_dims=self.spatial_dims, in_channels=self.in_channels,
                    num_classes=self.num_classes, size_multiple=self.size_multiple)

    def encode(self, image: Tensor) -> Condition:
        """The embedded prior p = 2 softmax(pi_phi(X)) - 1, computed once per image without gradient.

        With use_prior=False the condition holds the image only.
        """
        check_size(image, self.size_multiple)
        cond: Condition = {"image": image}
        if self.prior is not None:
            with torch.no_grad():
                cond["prior"] = embed_probabilities(self.prior.predict_proba(image)).detach()
        return cond

    def offset(self, cond: Condition) -> Tensor | None:
        """The chain's centre p (final hypothesis = p + r_0); None for the w/o PGR ablation."""
        return cond.get("prior")

    def _v(self, r_t: Tensor, t: Tensor, cond: Condition, features: list[Tensor] | None = None) -> Tensor:
        """v_hat = f_theta(s_t, X, p, t) with s_t = p + r_t (eq. 7 as a state; p := 0 without prior)."""
        p = cond.get("prior")
        s_t = r_t if p is None else p + r_t
        parts = [s_t, cond["image"]] + ([] if p is None else [p])
        if features is None:
            return self.denoiser(torch.cat(parts, dim=1), t)
        with self._capture_decoder_features(features):
            return self.denoiser(torch.cat(parts, dim=1), t)

    @contextmanager
    def _capture_decoder_features(self, store: list[Tensor]) -> Iterator[None]:
        """Record the last decoder features (the input of MONAI's output block) for the DDS heads."""
        handle = self.denoiser.out.register_forward_pre_hook(lambda _m, args: store.append(args[0]))
        try:
            yield
        finally:
            handle.remove()

    def denoise(self, x_t: Tensor, t: Tensor, cond: Condition) -> Prediction:
        """Clean residual and noise from r_t (PGRD eq. 4); both consistent with r_t by construction."""
        v_hat = self._v(x_t, t, cond)
        r0_hat, eps_hat = self.schedule.x0_eps_from_v(x_t, v_hat, t)  # PGRD eq. (4)
        return Prediction(x0=r0_hat, eps=eps_hat)

    def dds_interval(self, t: Tensor) -> Tensor:
        """Index k of the DDS head serving timestep t: K equal intervals covering [1, T]."""
        return ((t.long() - 1) * self.dds_intervals) // self.schedule.T

    def loss(self, image: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """L = ||v - v_hat||^2 + lambda L_DDS (eq. 9); the prior gets no gradient."""
        self.check_input(image, labels)
        B, C = image.shape[0], self.num_classes
        cond = self.encode(image)
        p = cond.get("prior")
        y = embed_labels(labels, C).to(image.dtype)
        r0 = y if p is None else y - p                                     # r_0 = y - p (eq. 2)
        t = torch.randint(1, self.schedule.T + 1, (B,), device=image.device)
        eps = torch.randn_like(r0)
        r_t = self.schedule.q_sample(r0, t, eps)                           # eq. (2); s_t = p + r_t is eq. (7)
        v = self.schedule.v_from(r0, eps, t)                               # eq. (3)
        features: list[Tensor] = []
        v_hat = self._v(r_t, t, cond, features if self.dds_heads is not None else None)
        loss_v = F.mse_loss(v_hat, v)                                      # eq. (8)
        loss_dds = torch.zeros((), device=image.device, dtype=loss_v.dtype)
        if self.dds_weight > 0:
            target = labels.long()
            if self.dds_mode == "heads":
                heads = self.dds_heads(features[-1])                       # (B, K*C, *S)
                heads = heads.reshape(B, self.dds_intervals, C, *heads.shape[2:])
                logits = heads[torch.arange(B, device=image.device), self.dds_interval(t)]
            else:  # "y0": CE on softmax(y0_hat / tau) with y0_hat = p + r0_hat (eq. 4)
                r0_hat, _ = self.schedule.x0_eps_from_v(r_t, v_hat, t)
                logits = r0_hat if p is None else p + r0_hat
            loss_dds = F.cross_entropy(logits / self.dds_tau, target)      # eq. (6)
        total = loss_v + self.dds_weight * loss_dds                        # eq. (9)
        return {"loss": total, "loss_v": loss_v.detach(), "loss_dds": loss_dds.detach()}


def from_config(cfg: dict[str, Any]) -> PGRD:
    """Rebuild a PGRD from its config_dict() (a model card's ``architecture``)."""
    cfg = copy.deepcopy(dict(cfg))
    try:
        return PGRD(**cfg)
    except TypeError as exc:  # unknown or missing field: name it
        raise ValueError(f"bad PGRD configuration: {exc}") from exc
