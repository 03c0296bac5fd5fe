"""HSRDiff (Yang et al., AAAI 2025): hierarchical self-regulation diffusion for stochastic segmentation.

An ordinary DDPM on the label embedding y = 2*onehot - 1 (x = y, no offset). Two decoders predict the
noise (eps_theta) and the label (x_theta) from the same middle feature and the image's multi-scale
features F_h; a small network reads both decoders' last features and outputs kappa, the weight of the
x path in the reverse mean (eq. 8): mu_theta = kappa mu_x + (1 - kappa) mu_eps.

Both means are linear in a clean estimate, so mu_theta is the DDPM posterior mean of
x0_mix = kappa x_theta + (1 - kappa) x0(eps_theta). ``denoise`` returns x0_mix and the eps consistent
with it; the shared sampler's posterior step then *is* eq. 8 with eqs. 11-12 (``paper_mean`` computes
it literally and the tests prove the identity), and a DDIM step between any two timesteps works too.
Decisions where the paper is silent or contradicts itself: docs/methods-hsrdiff.md.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_batch, check_size
from ..sampling.diffusion import Condition, DiffusionSegmenter, NoiseSchedule, Prediction, embed_labels
from .hsrdiff_blocks import (
    ConditionEncoder, Decoder, MiddleBlock, OutputConv, SelfRegulation, TimeEmbedding, XEncoder)

#: Every architecture field with its default (the full "hsrdiff" preset). ``config_dict()`` writes all.
DEFAULTS: dict[str, Any] = {
    "spatial_dims": 2,
    "in_channels": 1,
    "num_classes": 2,
    "channels": [144, 288, 432, 576],  # widths per scale; the last is the bottleneck (f_g, f_m)
    "num_res_blocks": 2,               # res blocks per scale in E_c, E_d and each decoder
    "norm_num_groups": 32,
    "c12_channels": 128,               # width of C1, C2 (eq. 7); the paper's size knob
    "phi_channels": 128,               # width of Phi (eq. 7)
    "phi_depth": 3,                    # stride-2 conv blocks in Phi
    "schedule": {"kind": "linear", "T": 250, "scale_to_T": True},
    "tau_out": 0.5,                    # hypothesis probabilities softmax(y0 / tau_out), as PGRD's
    "label_embedding": "2*onehot-1",
    "lambda1": 1.0,                    # eq. (9)
    "lambda2": 1.0,                    # eq. (9)
    # Table 6 switches
    "x0_head": True,                   # False: eps only (no D_x, no kappa)
    "global_condition": True,          # f_g into the middle block
    "hierarchical_condition": True,    # F_h into the decoders
    "kappa_mode": "learned",           # "learned" (SRDiff) | "fixed" (the "dual" rows)
    "kappa_fixed": 0.5,
    # not in the paper's ablation
    "ed_skips": True,                  # E_d's per-scale features also go to the decoders (U-Net skips)
    "concat_image": False,             # image concatenated to x_t at E_d's input (Wolleb et al. 2022)
}

PRESETS: dict[str, dict[str, Any]] = {
    "hsrdiff": copy.deepcopy(DEFAULTS),
    "hsrdiff-light": {**copy.deepcopy(DEFAULTS), "channels": [48, 96, 160, 224], "c12_channels": 32,
                      "phi_channels": 64},
    # What a 2-core CPU can train in about an hour on 64x64 crops (the shipped CPU model; docs/results.md).
    "hsrdiff-small": {**copy.deepcopy(DEFAULTS), "channels": [32, 64, 96, 128], "num_res_blocks": 1,
                      "norm_num_groups": 8, "c12_channels": 16, "phi_channels": 32},
    "tiny": {**copy.deepcopy(DEFAULTS), "channels": [8, 16], "num_res_blocks": 1, "norm_num_groups": 4,
             "c12_channels": 4, "phi_channels": 8, "phi_depth": 1},
}

#: Paper Table 6, one config override per row (apply on any preset with registry.preset_config).
ABLATIONS: dict[str, dict[str, Any]] = {
    # Row 1, "standard DDPM": no E_c; the image reaches the network only by concatenation to x_t
    # (Wolleb et al. 2022). Unconditioned, it could not reach the row's MDM of 0.594 on given images.
    "eps": {"x0_head": False, "global_condition": False, "hierarchical_condition": False,
            "concat_image": True},
    "eps+fg": {"x0_head": False, "global_condition": True, "hierarchical_condition": False},
    "eps+fg+Fh": {"x0_head": False},
    "eps+x0+fg+Fh": {"kappa_mode": "fixed", "lambda2": 0.0},
    "dual": {"kappa_mode": "fixed"},
    "srdiff": {},
}

#: Paper Algorithm 2: ancestral DDPM over all T = 250 steps (SamplerConfig fields, for the model card).
DEFAULT_SAMPLING: dict[str, Any] = {"method": "ddpm", "steps": None, "eta": 0.0, "spacing": "leading",
                                    "variance": "posterior", "clip": False}


# -- the paper's reverse mean, literally ---------------------------------------------------------------

def _at(values: np.ndarray, t: Tensor | int, like: Tensor) -> Tensor:
    """values[t] (float64 table) as a (B, 1, ...) tensor in like's dtype and device."""
    t = torch.as_tensor(t).reshape(-1).long().cpu()
    if t.numel() == 1:
        t = t.expand(like.shape[0])
    return torch.from_numpy(values)[t].to(like).reshape(-1, *([1] * (like.ndim - 1)))


def paper_means(schedule: NoiseSchedule, x_t: Tensor, eps_theta: Tensor, x_theta: Tensor,
                t: Tensor | int) -> tuple[Tensor, Tensor]:
    """(mu_eps, mu_x) of eqs. (11) and (12), term by term. (The paper's alpha_t is our abar_t.)"""
    beta, a_t = _at(schedule.betas, t, x_t), _at(schedule.abar, t, x_t)
    a_prev = _at(schedule.abar, torch.as_tensor(t) - 1, x_t)
    mu_eps = x_t / (1 - beta).sqrt() - beta / ((1 - a_t).sqrt() * (1 - beta).sqrt()) * eps_theta  # eq. (11)
    mu_x = ((1 - beta).sqrt() * (1 - a_prev) / (1 - a_t) * x_t
            + a_prev.sqrt() * beta / (1 - a_t) * x_theta)  # eq. (12)
    return mu_eps, mu_x


def paper_mean(schedule: NoiseSchedule, x_t: Tensor, eps_theta: Tensor, x_theta: Tensor,
               kappa: Tensor | float, t: Tensor | int) -> Tensor:
    """mu_theta = kappa mu_x + (1 - kappa) mu_eps (eq. 8 with eqs. 11-12), for a paper-faithful
    sampler and to prove that the x0_mix form used by ``denoise`` is the same mean."""
    mu_eps, mu_x = paper_means(schedule, x_t, eps_theta, x_theta, t)
    k = torch.as_tensor(kappa, dtype=x_t.dtype, device=x_t.device).reshape(-1, *([1] * (x_t.ndim - 1)))
    return k * mu_x + (1 - k) * mu_eps  # eq. (8)


# -- the network -------------------------------------------------------------------------------------

class HSRDiff(DiffusionSegmenter):
    """E_c, E_d, M, D_eps, D_x, C_eps, C_x, C1, C2, Phi (paper Fig. 2); parts switched off by a
    Table 6 config are not built at all, so their absence is visible in the parameters."""

    def __init__(self, **config: Any):
        super().__init__()
        unknown = set(config) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown HSRDiff config field(s): {', '.join(sorted(unknown))}")
        cfg = {**copy.deepcopy(DEFAULTS), **copy.deepcopy(config)}
        _validate(cfg)
        self._config = cfg
        dims, ch = cfg["spatial_dims"], list(cfg["channels"])
        nrb, g = cfg["num_res_blocks"], cfg["norm_num_groups"]
        self.spatial_dims, self.in_channels, self.num_classes = dims, cfg["in_channels"], cfg["num_classes"]
        self.tau_out = float(cfg["tau_out"])
        self.schedule = NoiseSchedule.from_config(cfg["schedule"])
        self.size_multiple = 2 ** (len(ch) - 1)  # inputs must be a multiple of this (inference pads)
        self.use_f_g, self.use_F_h = cfg["global_condition"], cfg["hierarchical_condition"]
        self.use_x0, self.kappa_mode = cfg["x0_head"], cfg["kappa_mode"]

        temb = 4 * ch[0]
        self.time_embed = TimeEmbedding(ch[0], temb)
        self.cond_encoder = (ConditionEncoder(dims, self.in_channels, ch, nrb, g)
                             if self.use_f_g or self.use_F_h else None)
        x_in = self.num_classes + (self.in_channels if cfg["concat_image"] else 0)
        self.x_encoder = XEncoder(dims, x_in, ch, nrb, temb, g)
        self.middle = MiddleBlock(dims, ch[-2] + (ch[-1] if self.use_f_g else 0), ch[-1], temb, g)
        decoder = lambda: Decoder(dims, ch, nrb, temb, g, self.use_F_h, cfg["ed_skips"])  # noqa: E731
        self.dec_eps, self.out_eps = decoder(), OutputConv(dims, ch[0], self.num_classes, g)
        self.dec_x = self.out_x = self.regulator = None
        if self.use_x0:
            self.dec_x, self.out_x = decoder(), OutputConv(dims, ch[0], self.num_classes, g)
            if self.kappa_mode == "learned":
                self.regulator = SelfRegulation(dims, ch[0], cfg["c12_channels"], cfg["phi_channels"],
                                                cfg["phi_depth"], g)

    # -- interface ------------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self._config)

    def encode(self, image: Tensor) -> Condition:
        """E_c once per image: {"F_h": [f_1..f_L] (empty when off), "f_g": tensor or None}."""
        check_size(image, self.size_multiple)
        cond: Condition = {"F_h": [], "f_g": None}
        if self.cond_encoder is not None:
            F_h, f_g = self.cond_encoder(image)
            cond = {"F_h": F_h if self.use_F_h else [], "f_g": f_g if self.use_f_g else None}
        if self._config["concat_image"]:
            cond["image"] = image
        return cond

    def heads(self, x_t: Tensor, t: Tensor, cond: Condition) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(eps_theta, x_theta, kappa) of eqs. (5)-(7); x_theta and kappa are None without the x0
        head, kappa is kappa_fixed in "fixed" mode."""
        t = torch.as_tensor(t, device=x_t.device).reshape(-1)
        # One shared timestep (every sampler step) is embedded once and broadcast over the batch:
        # cheaper, and the result no longer depends on the batch size (bit-identical chunking).
        emb = self.time_embed(t[:1] if bool((t == t[0]).all()) else t.expand(x_t.shape[0]))
        x_in = torch.cat([x_t, cond["image"]], dim=1) if "image" in cond else x_t
        skips, h = self.x_encoder(x_in, emb)
        f_g = cond["f_g"] if self.use_f_g else None  # a switched-off condition is never read
        F_h = cond["F_h"] if self.use_F_h else []
        f_m = self.middle(h, f_g, emb)  # f_m = M(E_d(x_t), f_g)
        f_eps = self.dec_eps(f_m, F_h, skips, emb)  # eq. (5)
        eps_theta = self.out_eps(f_eps)
        if not self.use_x0:
            return eps_theta, None, None
        f_x = self.dec_x(f_m, F_h, skips, emb)  # eq. (6)
        x_theta = self.out_x(f_x)
        if self.regulator is None:
            kappa = torch.full((x_t.shape[0],), float(self._config["kappa_fixed"]), dtype=x_t.dtype,
                               device=x_t.device)
        else:
            kappa = self.regulator(f_eps, f_x)  # eq. (7)
        return eps_theta, x_theta, kappa

    def denoise(self, x_t: Tensor, t: Tensor, cond: Condition) -> Prediction:
        """x0_mix = kappa x_theta + (1 - kappa) x0(eps_theta), whose posterior mean is eq. (8)."""
        eps_theta, x_theta, kappa = self.heads(x_t, t, cond)
        x0_eps = self.schedule.x0_from_eps(x_t, eps_theta, t)
        if x_theta is None:
            return Prediction(x0=x0_eps, eps=eps_theta)
        k = kappa.reshape(-1, *([1] * (x_t.ndim - 1)))
        x0_mix = k * x_theta + (1 - k) * x0_eps
        return Prediction(x0=x0_mix, eps=self.schedule.eps_from_x0(x_t, x0_mix, t), extras={"kappa": kappa})

    def loss(self, image: Tensor, labels: Tensor, *, t: Tensor | None = None,
             noise: Tensor | None = None) -> dict[str, Tensor]:
        """Eq. (9) on one annotation per image (Algorithm 1). ``t`` (B,) in 1..T and ``noise`` may be
        given for reproducible evaluation; otherwise drawn from torch's global generator.

        ||.||^2 is the mean over voxels. Without the x0 head there is nothing to unify: loss_u = 0
        and the loss is the plain eps objective (eq. 4) of Table 6's first rows.
        """
        self._check_batch(image, labels)
        y = embed_labels(labels.to(image.device), self.num_classes).to(image.dtype)
        B = y.shape[0]
        if t is None:
            t = torch.randint(1, self.schedule.T + 1, (B,), device=y.device)
        if noise is None:
            noise = torch.randn_like(y)
        x_t = self.schedule.q_sample(y, t, noise)  # eq. (2)
        eps_theta, x_theta, kappa = self.heads(x_t, t, self.encode(image))
        loss_d = F.mse_loss(eps_theta, noise)
        if x_theta is None:
            zero = loss_d.new_zeros(())
            return {"loss": self._config["lambda1"] * loss_d, "loss_d": loss_d, "loss_u": zero,
                    "kappa": y.new_zeros((B,))}  # eq. 8 with kappa = 0: no x path exists
        loss_d = loss_d + F.mse_loss(x_theta, y)  # L_d, eq. (9)
        mu_tilde, _ = self.schedule.posterior(x_t, y, t, t - 1)  # true posterior mean
        loss_u = F.mse_loss(paper_mean(self.schedule, x_t, eps_theta, x_theta, kappa, t), mu_tilde)  # L_u
        total = self._config["lambda1"] * loss_d + self._config["lambda2"] * loss_u  # eq. (9)
        return {"loss": total, "loss_d": loss_d, "loss_u": loss_u, "kappa": kappa.detach()}

    # -- checks -------------------------------------------------------------------------------------
    def _check_batch(self, image: Tensor, labels: Tensor) -> None:
        check_batch(image, labels, spatial_dims=self.spatial_dims, in_channels=self.in_channels,
                    num_classes=self.num_classes, size_multiple=self.size_multiple)


def _validate(cfg: dict[str, Any]) -> None:
    if cfg["spatial_dims"] not in (2, 3):
        raise ValueError("spatial_dims must be 2 or 3")
    if cfg["num_classes"] < 2:
        raise ValueError("num_classes must be at least 2 (background + foreground)")
    if cfg["in_channels"] < 1 or len(cfg["channels"]) < 2 or cfg["num_res_blocks"] < 1:
        raise ValueError("need in_channels >= 1, at least 2 channel widths and 1 res block per scale")
    if cfg["label_embedding"] != "2*onehot-1" or float(cfg["tau_out"]) <= 0:
        raise ValueError("only the '2*onehot-1' label embedding is implemented; tau_out must be > 0")
    if cfg["kappa_mode"] not in ("learned", "fixed"):
        raise ValueError(f"kappa_mode must be 'learned' or 'fixed', got {cfg['kappa_mode']!r}")
    if not 0.0 <= float(cfg["kappa_fixed"]) <= 1.0:
        raise ValueError("kappa_fixed must be in [0, 1]")
    json.dumps(cfg)  # the card must be able to hold it


def from_config(config: dict[str, Any]) -> HSRDiff:
    """Build from a model card's ``architecture`` (registry.build_model('hsrdiff', ...))."""
    return HSRDiff(**config)
