"""The parts of HSRDiff's network (paper Fig. 2), 2D or 3D, built from MONAI blocks.

The wiring is the paper's own and is hand-written here; the blocks inside are MONAI's:
``UnetResBlock`` (condition encoder, no timestep), ``DiffusionUNetResnetBlock`` and the sinusoidal
``get_timestep_embedding`` (everything that sees x_t), ``DiffusionUnetDownsample`` and ``UpSample``.

Resolutions: ``channels = [c_0, ..., c_L]`` gives L scales with F_h = [f_1..f_L] at 1, 1/2, ..., 1/2^(L-1)
of the input and a bottleneck at 1/2^L holding the global condition f_g and the middle feature f_m.
Group norms use gcd(width, norm_num_groups) groups so any width (and any concatenation) is valid.
"""

from __future__ import annotations

import math

import torch
from monai.networks.blocks import Convolution, UnetResBlock, UpSample
from monai.networks.nets.diffusion_model_unet import (
    DiffusionUnetDownsample, DiffusionUNetResnetBlock, get_timestep_embedding)
from torch import Tensor, nn


def _groups(width: int, groups: int) -> int:
    return math.gcd(width, groups)


def _conv(dims: int, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> Convolution:
    return Convolution(dims, cin, cout, strides=stride, kernel_size=kernel, padding=kernel // 2,
                       conv_only=True)


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of t followed by a 2-layer MLP (Ho et al.), shared by E_d, M and both
    decoders: every res block has its own projection of it, so sharing costs no expressiveness."""

    def __init__(self, base: int, dim: int):
        super().__init__()
        self.base = base
        self.mlp = nn.Sequential(nn.Linear(base, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        emb = get_timestep_embedding(t.float().reshape(-1), self.base)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class ConditionEncoder(nn.Module):
    """E_c: ResNet blocks over the image. The feature of each scale, taken before its downsampling,
    is f_k of F_h; the bottleneck feature is the global condition f_g (paper, Hierarchical Multi-scale
    Condition Guidance). It has no timestep input, which is what lets it run once per image."""

    def __init__(self, dims: int, in_channels: int, channels: list[int], num_res_blocks: int, groups: int):
        super().__init__()
        self.stem = _conv(dims, in_channels, channels[0])
        self.levels = nn.ModuleList()
        self.downs = nn.ModuleList()
        prev = channels[0]
        for width in channels:
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(UnetResBlock(dims, prev, width, kernel_size=3, stride=1,
                                           norm_name=("group", {"num_groups": _groups(width, groups)}),
                                           act_name=("swish", {})))
                prev = width
            self.levels.append(nn.Sequential(*blocks))
        for width in channels[:-1]:
            self.downs.append(DiffusionUnetDownsample(dims, width, use_conv=True))

    def forward(self, image: Tensor) -> tuple[list[Tensor], Tensor]:
        h = self.stem(image)
        F_h = []
        for level, down in zip(self.levels[:-1], self.downs):
            h = level(h)
            F_h.append(h)  # f_k: before the downsampling
            h = down(h)
        return F_h, self.levels[-1](h)  # (F_h, f_g)


class _TimeSeq(nn.Module):
    """A chain of timestep-conditioned MONAI res blocks (nn.Sequential cannot pass the embedding)."""

    def __init__(self, dims: int, cin: int, cout: int, n: int, temb: int, groups: int):
        super().__init__()
        # MONAI's block uses one group count for both of its norms: it must divide both widths.
        self.blocks = nn.ModuleList(
            DiffusionUNetResnetBlock(dims, cin if i == 0 else cout, temb, cout,
                                     norm_num_groups=math.gcd(cin if i == 0 else cout, cout, groups))
            for i in range(n))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        for blk in self.blocks:
            h = blk(h, emb)
        return h


class XEncoder(nn.Module):
    """E_d: encoder over x_t (optionally with the image concatenated, the Table 6 "standard DDPM"
    variant). Returns the per-scale features (U-Net skips, used by the decoders when ``skips`` is on)
    and the downsampled bottleneck input of the middle block."""

    def __init__(self, dims: int, cin: int, channels: list[int], num_res_blocks: int, temb: int,
                 groups: int):
        super().__init__()
        self.stem = _conv(dims, cin, channels[0])
        self.levels = nn.ModuleList()
        self.downs = nn.ModuleList()
        prev = channels[0]
        for width in channels[:-1]:
            self.levels.append(_TimeSeq(dims, prev, width, num_res_blocks, temb, groups))
            self.downs.append(DiffusionUnetDownsample(dims, width, use_conv=True))
            prev = width

    def forward(self, x: Tensor, emb: Tensor) -> tuple[list[Tensor], Tensor]:
        h = self.stem(x)
        skips = []
        for level, down in zip(self.levels, self.downs):
            h = level(h, emb)
            skips.append(h)
            h = down(h)
        return skips, h


class MiddleBlock(nn.Module):
    """M: f_m = M(E_d(x_t), f_g), the global condition concatenated at the bottleneck."""

    def __init__(self, dims: int, cin: int, cout: int, temb: int, groups: int):
        super().__init__()
        self.body = _TimeSeq(dims, cin, cout, 2, temb, groups)

    def forward(self, h: Tensor, f_g: Tensor | None, emb: Tensor) -> Tensor:
        return self.body(h if f_g is None else torch.cat([h, f_g], dim=1), emb)


class Decoder(nn.Module):
    """D_eps or D_x: from f_m up to full resolution. At every scale the upsampled feature is
    concatenated with that scale's f_k of F_h (and E_d's skip) and processed before the next
    upsampling (paper Fig. 2 A). Returns the last feature f_eps / f_x (eqs. 5-6)."""

    def __init__(self, dims: int, channels: list[int], num_res_blocks: int, temb: int, groups: int,
                 use_F_h: bool, use_skips: bool):
        super().__init__()
        self.use_F_h, self.use_skips = use_F_h, use_skips
        self.ups = nn.ModuleList()
        self.levels = nn.ModuleList()
        for lvl in reversed(range(len(channels) - 1)):
            width = channels[lvl]
            self.ups.append(UpSample(dims, channels[lvl + 1], width, scale_factor=2, mode="nontrainable",
                                     pre_conv=_conv(dims, channels[lvl + 1], width), interp_mode="nearest",
                                     align_corners=None))
            cin = width * (1 + int(use_F_h) + int(use_skips))
            self.levels.append(_TimeSeq(dims, cin, width, num_res_blocks, temb, groups))

    def forward(self, f_m: Tensor, F_h: list[Tensor], skips: list[Tensor], emb: Tensor) -> Tensor:
        h = f_m
        for i, (up, level) in enumerate(zip(self.ups, self.levels)):
            lvl = len(self.levels) - 1 - i
            parts = [up(h)]
            if self.use_F_h:
                parts.append(F_h[lvl])
            if self.use_skips:
                parts.append(skips[lvl])
            h = level(torch.cat(parts, dim=1), emb)
        return h


class OutputConv(nn.Module):
    """C_eps / C_x: GroupNorm, SiLU, 3x3 conv to the C label channels (eqs. 5-6)."""

    def __init__(self, dims: int, cin: int, cout: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(_groups(cin, groups), cin, eps=1e-6), nn.SiLU(),
                                  _conv(dims, cin, cout))

    def forward(self, h: Tensor) -> Tensor:
        return self.body(h)


class SelfRegulation(nn.Module):
    """Eq. (7): kappa = softmax(Phi(C1(f_eps) + C2(f_x)))[0], one scalar per image.

    Phi is a few stride-2 conv blocks, then global average pooling and a linear layer to 2 logits.
    The paper flattens f_dual before Phi; pooling instead keeps the network independent of the input
    size (any slice/patch size, 2D and 3D) — see docs/methods-hsrdiff.md.
    """

    def __init__(self, dims: int, cin: int, c12: int, phi: int, phi_depth: int, groups: int):
        super().__init__()
        self.c1 = _conv(dims, cin, c12)
        self.c2 = _conv(dims, cin, c12)
        layers: list[nn.Module] = []
        prev = c12
        for _ in range(phi_depth):
            layers += [_conv(dims, prev, phi, stride=2), nn.GroupNorm(_groups(phi, groups), phi), nn.SiLU()]
            prev = phi
        self.phi = nn.Sequential(*layers)
        self.head = nn.Linear(prev, 2)

    def forward(self, f_eps: Tensor, f_x: Tensor) -> Tensor:
        f_dual = self.c1(f_eps) + self.c2(f_x)  # eq. (7), f_dual
        pooled = self.phi(f_dual).flatten(2).mean(-1)
        return torch.softmax(self.head(pooled), dim=1)[:, 0]  # eq. (7): kappa, weight of the x path
