"""The non-diffusion baselines of PGRD Table I and HSRDiff Table 1, on the engine's U-Net.

Every baseline is an ``nn.Module`` with

- ``loss(image, labels) -> {"loss": total, ...parts}`` on one reading per image (integer labels (B, *S));
- ``sample_probabilities(image, num_samples, seed) -> (B, M, C, *S)`` float32 class probabilities on
  the CPU, i.e. the same thing ``softmax(y0 / tau_out)`` is for the diffusion models, so one evaluation
  path (``engine.analysis.evaluation.evaluate_predictor``) scores all methods;
- ``predict_proba(image) -> (B, C, *S)``, the one deterministic prediction of the method;
- ``config_dict()``, which round-trips through ``build_baseline(model.baseline, config)``.

Stochastic baselines (MC Dropout, Prob. U-Net) seed hypothesis k with ``sampler.sample_seed(seed, k)``,
as the diffusion sampler does: one seed repeats a run, another seed draws other hypotheses. Ensemble
members and heads are fixed functions, so their hypotheses ignore the seed (hypothesis k is member or
head k mod N).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.networks.blocks import Convolution
from torch import Tensor, nn

from DiffSegUncertaintyLib.engine.networks.checks import check_batch
from DiffSegUncertaintyLib.engine.sampling.sampler import sample_seed
from DiffSegUncertaintyLib.engine.networks.unet import UNet

_BACKBONE_TINY = {"spatial_dims": 2, "in_channels": 1, "num_classes": 2, "channels": [4, 8],
                  "strides": [2], "num_res_units": 1}
# LIDC 128x128: the PGRD prior's width (engine/networks/unet.py defaults), 16 px at the bottleneck.
_BACKBONE_LIDC = {"spatial_dims": 2, "in_channels": 1, "num_classes": 2, "channels": [32, 64, 128, 256],
                  "strides": [2, 2, 2], "num_res_units": 2}

# Default configurations: BASELINES[name][size], size "tiny" (tests) or "lidc" (128x128 LIDC crops).
BASELINES: dict[str, dict[str, dict[str, Any]]] = {
    "unet": {"tiny": dict(_BACKBONE_TINY), "lidc": dict(_BACKBONE_LIDC)},
    # PGRD Table I [15]: Gal & Ghahramani (2016); p = 0.2 on the decoder (engine/networks/unet.py).
    "mc-dropout": {"tiny": {**_BACKBONE_TINY, "dropout": 0.3}, "lidc": {**_BACKBONE_LIDC, "dropout": 0.2}},
    # [16]: Lakshminarayanan et al. (2017); 5 members as in their experiments.
    "ensemble": {"tiny": {**_BACKBONE_TINY, "members": 3}, "lidc": {**_BACKBONE_LIDC, "members": 5}},
    # [17]: Rupprecht et al. (2017); K = 4 heads (LIDC has four readers), epsilon = 0.05.
    "multi-head": {"tiny": {**_BACKBONE_TINY, "heads": 3, "features": 4, "epsilon": 0.05},
                   "lidc": {**_BACKBONE_LIDC, "heads": 4, "features": 32, "epsilon": 0.05}},
    # [18]: Kohl et al. (2018): latent dim 6 on LIDC, three 1x1 fcomb convs, beta = 1.
    "prob-unet": {"tiny": {**_BACKBONE_TINY, "features": 4, "latent_dim": 2, "encoder_channels": [4, 8],
                           "fcomb_layers": 3, "beta": 1.0},
                  "lidc": {**_BACKBONE_LIDC, "features": 32, "latent_dim": 6,
                           "encoder_channels": [32, 64, 128, 256], "fcomb_layers": 3, "beta": 1.0}},
}


def baseline_config(name: str, size: str = "lidc", **overrides: Any) -> dict[str, Any]:
    """A default configuration with some fields replaced (unknown fields are an error)."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}: expected one of {', '.join(BASELINES)}")
    if size not in BASELINES[name]:
        raise ValueError(f"baseline {name!r} has no size {size!r}: choose one of {', '.join(BASELINES[name])}")
    cfg = dict(BASELINES[name][size])
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ValueError(f"baseline {name!r} has no field(s) {', '.join(sorted(unknown))}")
    cfg.update(overrides)
    return cfg


def build_baseline(name: str, config: dict[str, Any]) -> "Baseline":
    """A fresh (untrained) baseline from its configuration (``BASELINES[name][size]`` or ``config_dict()``)."""
    classes = {"unet": DeterministicUNet, "mc-dropout": MCDropoutUNet, "ensemble": DeepEnsemble,
               "multi-head": MultiHeadUNet, "prob-unet": ProbabilisticUNet}
    if name not in classes:
        raise ValueError(f"unknown baseline {name!r}: expected one of {', '.join(classes)}")
    return classes[name](**dict(config))


# -- shared pieces ---------------------------------------------------------------------------------

class Baseline(nn.Module):
    """What every baseline shares: the backbone fields, input checks, the sample layout."""

    baseline = "?"

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, channels: Sequence[int],
                 strides: Sequence[int], num_res_units: int):
        super().__init__()
        self.spatial_dims, self.in_channels, self.num_classes = int(spatial_dims), int(in_channels), int(num_classes)
        self.channels, self.strides = [int(c) for c in channels], [int(s) for s in strides]
        self.num_res_units = int(num_res_units)

    def _backbone(self, out_channels: int, dropout: float = 0.0) -> UNet:
        # out_channels < 2 is refused by UNet (it counts the background); trunks ask for >= 2 features.
        return UNet(self.spatial_dims, self.in_channels, out_channels, self.channels, self.strides,
                    self.num_res_units, dropout)

    def config_dict(self) -> dict[str, Any]:
        return {"spatial_dims": self.spatial_dims, "in_channels": self.in_channels,
                "num_classes": self.num_classes, "channels": list(self.channels),
                "strides": list(self.strides), "num_res_units": self.num_res_units}

    def check_input(self, image: Tensor, labels: Tensor | None = None) -> None:
        """InputError before any work for an image (and labels) this network cannot take."""
        check_batch(image, labels, spatial_dims=self.spatial_dims, in_channels=self.in_channels,
                    num_classes=self.num_classes, size_multiple=math.prod(self.strides))

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def predict_proba(self, image: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def sample_probabilities(self, image: Tensor, num_samples: int, seed: int = 0) -> Tensor:
        raise NotImplementedError


def _stack_samples(probs: list[Tensor]) -> Tensor:
    """M tensors (B, C, *S) -> (B, M, C, *S) float32 on the CPU."""
    return torch.stack([p.float().cpu() for p in probs], dim=1)


def _check_samples(num_samples: int) -> None:
    if int(num_samples) < 1:
        raise ValueError("num_samples must be at least 1")


# -- deterministic U-Net and MC Dropout -------------------------------------------------------------

class DeterministicUNet(Baseline):
    """PGRD Table I "Baseline": one U-Net, DiceCE loss; its M "samples" are M copies of one prediction
    (diversity 0, GED = 2 E d(s, y) - E d(y, y'))."""

    baseline = "unet"

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, channels: Sequence[int],
                 strides: Sequence[int], num_res_units: int, dropout: float = 0.0):
        super().__init__(spatial_dims, in_channels, num_classes, channels, strides, num_res_units)
        self.dropout = float(dropout)
        self.net = self._backbone(num_classes, self.dropout)

    def config_dict(self) -> dict[str, Any]:
        cfg = super().config_dict()
        if self.dropout or self.baseline == "mc-dropout":
            cfg["dropout"] = self.dropout
        return cfg

    def loss(self, image: Tensor, labels: Tensor) -> dict[str, Tensor]:
        return self.net.loss(image, labels)

    @torch.no_grad()
    def predict_proba(self, image: Tensor) -> Tensor:
        """Dropout off (eval mode): the deterministic pass."""
        self.eval()
        return self.net.predict_proba(image.to(self._device()))

    @torch.no_grad()
    def sample_probabilities(self, image: Tensor, num_samples: int, seed: int = 0) -> Tensor:
        _check_samples(num_samples)
        self.check_input(image)
        p = self.predict_proba(image)
        return _stack_samples([p] * int(num_samples))


class MCDropoutUNet(DeterministicUNet):
    """Gal & Ghahramani (2016): keep dropout on at test time; each stochastic pass is one sample from the
    approximate posterior over weights, q(w) = Bernoulli-masked weights. Dropout sits on the decoder
    (engine/networks/unet.py)."""

    baseline = "mc-dropout"

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, channels: Sequence[int],
                 strides: Sequence[int], num_res_units: int, dropout: float = 0.2):
        if not 0.0 < float(dropout) < 1.0:
            raise ValueError(f"MC Dropout needs 0 < dropout < 1, got {dropout}")
        super().__init__(spatial_dims, in_channels, num_classes, channels, strides, num_res_units, dropout)

    @torch.no_grad()
    def sample_probabilities(self, image: Tensor, num_samples: int, seed: int = 0) -> Tensor:
        """M stochastic passes, pass k under torch seed ``sample_seed(seed, k)`` (global RNG forked, so
        the caller's random state is untouched). Masks differ across the images of one batch."""
        _check_samples(num_samples)
        self.check_input(image)
        device = self._device()
        image = image.to(device)
        self.net.enable_mc_dropout()  # Gal & Ghahramani (2016): p(y|x) ~ 1/M sum_k p(y|x, w_k), w_k ~ q(w)
        devices = [device] if device.type == "cuda" else []
        out = []
        try:
            for k in range(int(num_samples)):
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(sample_seed(seed, k))
                    out.append(self.net.predict_proba(image))
        finally:
            self.eval()
        return _stack_samples(out)


# -- Deep Ensemble ---------------------------------------------------------------------------------

class DeepEnsemble(Baseline):
    """Lakshminarayanan et al. (2017): N independently initialised U-Nets trained together, each on its
    own loss (the total is the plain sum, so no member's gradient depends on another member). They see
    the same batches: random initialisation alone decorrelates them (their Sec. 2.4 reports it suffices);
    adversarial training is left out."""

    baseline = "ensemble"

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, channels: Sequence[int],
                 strides: Sequence[int], num_res_units: int, members: int = 5):
        super().__init__(spatial_dims, in_channels, num_classes, channels, strides, num_res_units)
        if int(members) < 2:
            raise ValueError("an ensemble needs at least 2 members")
        self.members = nn.ModuleList(self._backbone(num_classes) for _ in range(int(members)))

    def config_dict(self) -> dict[str, Any]:
        return {**super().config_dict(), "members": len(self.members)}

    def loss(self, image: Tensor, labels: Tensor) -> dict[str, Tensor]:
        parts = [m.loss(image, labels)["loss"] for m in self.members]
        out = {"loss": torch.stack(parts).sum()}
        out.update({f"member_{i}": p.detach() for i, p in enumerate(parts)})
        return out

    @torch.no_grad()
    def predict_proba(self, image: Tensor) -> Tensor:
        """The ensemble's prediction: the mean of the members' probabilities (their eq. in Sec. 2.4)."""
        return self.sample_probabilities(image, len(self.members)).mean(dim=1)

    @torch.no_grad()
    def sample_probabilities(self, image: Tensor, num_samples: int, seed: int = 0) -> Tensor:
        """Hypothesis k is member k mod N (the seed plays no part: members are deterministic)."""
        _check_samples(num_samples)
        self.check_input(image)
        self.eval()
        image = image.to(self._device())
        n = len(self.members)
        probs = [self.members[i].predict_proba(image) for i in range(min(n, int(num_samples)))]
        return _stack_samples([probs[k % n] for k in range(int(num_samples))])


# -- Multiple hypotheses (multi-head) --------------------------------------------------------------

def _per_image_dice_ce(logits: Tensor, labels: Tensor, dice: DiceLoss) -> Tensor:
    """Dice + CE per image (B,), the engine U-Net's DiceCE loss without the batch mean, so the oracle can
    pick a head per image."""
    ce = F.cross_entropy(logits, labels.long(), reduction="none").flatten(1).mean(1)
    d = dice(logits, labels.long().unsqueeze(1)).flatten(1).mean(1)
    return ce + d


class MultiHeadUNet(Baseline):
    """Rupprecht et al. (2017), "Learning in an uncertain world": a shared U-Net trunk and K 1x1 heads,
    trained with the relaxed oracle (winner-takes-all) loss, so heads specialise on different readings."""

    baseline = "multi-head"

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, channels: Sequence[int],
                 strides: Sequence[int], num_res_units: int, heads: int = 4, features: int = 32,
                 epsilon: float = 0.05):
        super().__init__(spatial_dims, in_channels, num_classes, channels, strides, num_res_units)
        if int(heads) < 2:
            raise ValueError("multi-head needs at least 2 heads")
        if not 0.0 <= float(epsilon) < 1.0:
            raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
        self.features, self.epsilon = int(features), float(epsilon)
        self.trunk = self._backbone(self.features)
        conv = nn.Conv2d if self.spatial_dims == 2 else nn.Conv3d
        self.heads = nn.ModuleList(conv(self.features, num_classes, 1) for _ in range(int(heads)))
        self._dice = DiceLoss(softmax=True, to_onehot_y=True, reduction="none")

    def config_dict(self) -> dict[str, Any]:
        return {**super().config_dict(), "heads": len(self.heads), "features": self.features,
                "epsilon": self.epsilon}

    def head_logits(self, image: Tensor) -> list[Tensor]:
        f = F.relu(self.trunk(image))  # the trunk's last conv is linear (MONAI): a nonlinearity first
        return [h(f) for h in self.heads]

    def loss(self, image: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Relaxed oracle loss (Rupprecht et al. 2017, Sec. 3): per image, weight 1 - epsilon on the best
        head and epsilon / (K - 1) on each other head; epsilon = 0 is hard winner-takes-all."""
        self.check_input(image, labels)
        per_head = torch.stack([_per_image_dice_ce(lg, labels, self._dice) for lg in self.head_logits(image)], 1)
        K = per_head.shape[1]
        winner = per_head.detach().argmin(dim=1)  # (B,)
        w = torch.full_like(per_head, self.epsilon / (K - 1))
        w.scatter_(1, winner[:, None], 1.0 - self.epsilon)
        total = (w * per_head).sum(1).mean()
        self.last_winner = winner  # per image, for inspection (loss dicts hold scalars only)
        return {"loss": total, "oracle": per_head.detach().min(1).values.mean()}

    @torch.no_grad()
    def predict_proba(self, image: Tensor) -> Tensor:
        """Mean of the heads' probabilities."""
        return self.sample_probabilities(image, len(self.heads)).mean(dim=1)

    @torch.no_grad()
    def sample_probabilities(self, image: Tensor, num_samples: int, seed: int = 0) -> Tensor:
        """Hypothesis k is head k mod K (deterministic; the seed plays no part)."""
        _check_samples(num_samples)
        self.check_input(image)
        self.eval()
        probs = [torch.softmax(lg, 1) for lg in self.head_logits(image.to(self._device()))]
        return _stack_samples([probs[k % len(probs)] for k in range(int(num_samples))])


# -- Probabilistic U-Net ---------------------------------------------------------------------------

class _GaussianEncoder(nn.Module):
    """Kohl et al. (2018) prior / posterior net: a conv encoder, global average pooling, a 1x1 conv to
    mu and log sigma of an axis-aligned Gaussian over the latent."""

    def __init__(self, spatial_dims: int, in_channels: int, channels: Sequence[int], latent_dim: int):
        super().__init__()
        layers, cin = [], in_channels
        for i, c in enumerate(channels):
            layers.append(Convolution(spatial_dims, cin, c, strides=1 if i == 0 else 2, act="RELU", norm=None))
            layers.append(Convolution(spatial_dims, c, c, act="RELU", norm=None))
            cin = c
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cin, 2 * latent_dim)
        self.latent_dim = latent_dim

    def forward(self, x: Tensor) -> torch.distributions.Distribution:
        h = self.body(x).flatten(2).mean(2)
        mu, log_sigma = self.head(h).split(self.latent_dim, dim=1)
        return torch.distributions.Independent(torch.distributions.Normal(mu, log_sigma.exp()), 1)


class ProbabilisticUNet(Baseline):
    """Kohl et al. (2018): a U-Net whose last features are combined with a latent z ~ N(mu(X), sigma(X))
    broadcast over the image; trained as a conditional VAE with a posterior net that also sees the label.
    The loss is the ELBO of their eq. 4: CE summed over voxels (as in their code) + beta KL(Q || P)."""

    baseline = "prob-unet"

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, channels: Sequence[int],
                 strides: Sequence[int], num_res_units: int, features: int = 32, latent_dim: int = 6,
                 encoder_channels: Sequence[int] = (32, 64, 128, 256), fcomb_layers: int = 3,
                 beta: float = 1.0):
        super().__init__(spatial_dims, in_channels, num_classes, channels, strides, num_res_units)
        self.features, self.latent_dim = int(features), int(latent_dim)
        self.encoder_channels = [int(c) for c in encoder_channels]
        self.fcomb_layers, self.beta = int(fcomb_layers), float(beta)
        if self.fcomb_layers < 1:
            raise ValueError("fcomb_layers must be at least 1")
        self.unet = self._backbone(self.features)
        self.prior = _GaussianEncoder(spatial_dims, in_channels, self.encoder_channels, self.latent_dim)
        self.posterior = _GaussianEncoder(spatial_dims, in_channels + num_classes, self.encoder_channels,
                                          self.latent_dim)
        conv = nn.Conv2d if self.spatial_dims == 2 else nn.Conv3d
        layers: list[nn.Module] = []
        cin = self.features + self.latent_dim
        for _ in range(self.fcomb_layers - 1):
            layers += [conv(cin, self.features, 1), nn.ReLU()]
            cin = self.features
        layers.append(conv(cin, num_classes, 1))
        self.fcomb = nn.Sequential(*layers)

    def config_dict(self) -> dict[str, Any]:
        return {**super().config_dict(), "features": self.features, "latent_dim": self.latent_dim,
                "encoder_channels": list(self.encoder_channels), "fcomb_layers": self.fcomb_layers,
                "beta": self.beta}

    def combine(self, feats: Tensor, z: Tensor) -> Tensor:
        """fcomb: tile z (B, L) over the image, concatenate with the U-Net features, 1x1 convs -> logits."""
        tiled = z.reshape(*z.shape, *([1] * self.spatial_dims)).expand(-1, -1, *feats.shape[2:])
        return self.fcomb(torch.cat([F.relu(feats), tiled.to(feats.dtype)], dim=1))

    def loss(self, image: Tensor, labels: Tensor) -> dict[str, Tensor]:
        self.check_input(image, labels)
        onehot = F.one_hot(labels.long(), self.num_classes).movedim(-1, 1).to(image.dtype)
        prior, post = self.prior(image), self.posterior(torch.cat([image, onehot], dim=1))
        z = post.rsample()  # reparameterised z ~ Q(z | X, Y)
        logits = self.combine(self.unet(image), z)
        ce = F.cross_entropy(logits, labels.long(), reduction="none").flatten(1)
        # Kohl et al. (2018) eq. 4: L = E_Q[-log P(Y | S(X, z))] + beta * KL(Q(z|X,Y) || P(z|X))
        kl = torch.distributions.kl_divergence(post, prior)
        total = ce.sum(1).mean() + self.beta * kl.mean()
        return {"loss": total, "ce": ce.mean().detach(), "kl": kl.mean().detach()}

    @torch.no_grad()
    def predict_proba(self, image: Tensor) -> Tensor:
        """The prior mean z = mu(X): the Prob. U-Net's single "most likely" prediction."""
        self.eval()
        image = image.to(self._device())
        return torch.softmax(self.combine(self.unet(image), self.prior(image).mean), 1)

    @torch.no_grad()
    def sample_probabilities(self, image: Tensor, num_samples: int, seed: int = 0) -> Tensor:
        """U-Net and prior once per image; hypothesis k draws z = mu + sigma * e_k, e_k ~ N(0, I) from the
        generator ``sample_seed(seed, k)`` (shared by the images of a batch, like the diffusion sampler,
        so batch composition does not change a sample)."""
        _check_samples(num_samples)
        self.check_input(image)
        self.eval()
        image = image.to(self._device())
        feats, prior = self.unet(image), self.prior(image)
        mu, sigma = prior.base_dist.loc, prior.base_dist.scale
        out = []
        for k in range(int(num_samples)):
            e = torch.randn(self.latent_dim, generator=torch.Generator().manual_seed(sample_seed(seed, k)))
            out.append(torch.softmax(self.combine(feats, mu + sigma * e.to(mu)), 1))
        return _stack_samples(out)


# -- scoring with the engine's evaluation path ------------------------------------------------------

def baseline_predictor(model: Baseline, preprocessing: Any = None, seed: int = 0,
                       device: str | torch.device = "cpu"):
    """``predict(images (B, *S) raw, num_samples) -> (B, M, C, *S)`` for
    ``engine.analysis.evaluation.evaluate_predictor``: the same preprocessing as a model card
    (``volumes.preprocess``; LIDC: {"kind": "scale", "scale": 1/255, "offset": 0}), then
    ``sample_probabilities``. So baselines and diffusion models are scored by one code path."""
    import numpy as np

    from DiffSegUncertaintyLib.engine.files.volumes import preprocess

    spec = preprocessing
    model = model.to(torch.device(device))

    def predict(images: Any, num_samples: int) -> Tensor:
        x = np.asarray(images)
        if x.ndim == model.spatial_dims + 1:
            x = x[:, None]
        x = np.stack([preprocess(img, spec) for img in x])
        return model.sample_probabilities(torch.from_numpy(x).float(), num_samples, seed)

    return predict
