"""Per-voxel uncertainty maps and per-hypothesis volumes from the M hypotheses of one image.

Input: ``y0`` (M, C, *spatial) of ONE image, i.e. ``SampleResult.y0[b]``, in label-embedding space
(y = 2*onehot - 1), and the model's ``tau_out``. Conventions:

- hypothesis probabilities p_m = softmax(y0_m / tau_out) over the class channel (``to_probabilities``);
- a hypothesis' labels are argmax_c y0_m (the same as argmax_c p_m, softmax being monotone);
- mean_probability p_bar = mean_m p_m; consensus = argmax_c p_bar (ties: lower class index);
- entropies in nats, H(p) = -sum_c p_c log p_c with 0 log 0 = 0, so in [0, ln C];
  predictive_entropy = H(p_bar), expected_entropy = mean_m H(p_m),
  mutual_information = predictive - expected, clamped at 0 (it is >= 0 up to rounding);
- foreground_variance = population variance (ddof 0) over hypotheses of 1[label != 0] = f(1 - f),
  f the fraction of hypotheses calling the voxel foreground (any class 1..C-1);
- volumes: foreground voxels per hypothesis; mm^3 when ``spacing`` (mm per axis) is given;
  spread = mean, population std, min, max over hypotheses.

Everything is computed in float32 on y0's device, M hypotheses at a time in chunks, so a 16 x 4 x
155 x 240 x 240 input needs only a few hundred MB beyond y0 itself. Label maps are uint8 (C <= 256).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..networks.checks import InputError
from ..sampling.diffusion import to_probabilities

CHUNK_BYTES = 256 * 2 ** 20  # float32 working set per chunk of hypotheses


def _label_dtype(num_classes: int) -> torch.dtype:
    return torch.uint8 if num_classes <= 256 else torch.int64


def _check_y0(y0: Tensor) -> None:
    if not isinstance(y0, Tensor) or y0.ndim < 3:
        raise InputError(f"y0 must be a tensor (M, C, *spatial) for one image "
                         f"(shape {tuple(getattr(y0, 'shape', ()))})")
    if y0.shape[0] == 0 or y0.shape[1] < 2 or y0.numel() == 0:
        raise InputError(f"y0 of shape {tuple(y0.shape)}: need M >= 1 hypotheses, C >= 2 classes "
                         f"and a non-empty grid")


def hypothesis_labels(y0: Tensor) -> Tensor:
    """(M, C, *S) -> (M, *S) class index per hypothesis and voxel (argmax over classes; uint8)."""
    _check_y0(y0)
    return y0.argmax(dim=1).to(_label_dtype(y0.shape[1]))


def _entropy(p: Tensor, dim: int) -> Tensor:
    """-sum p log p along ``dim`` (nats), 0 log 0 = 0."""
    return -torch.special.xlogy(p, p).sum(dim)


@dataclass
class UncertaintyMaps:
    """Maps on the image grid (float32 unless stated) and per-hypothesis volumes; see module doc."""

    labels: Tensor                 # (M, *S) uint8 hypothesis labels
    mean_probability: Tensor       # (C, *S)
    consensus: Tensor              # (*S) uint8, argmax of mean_probability
    predictive_entropy: Tensor     # (*S) nats
    expected_entropy: Tensor       # (*S) nats
    mutual_information: Tensor     # (*S) nats, >= 0
    foreground_variance: Tensor    # (*S) in [0, 0.25]
    volumes_voxels: list[int]      # per hypothesis
    volumes_mm3: list[float] | None
    spread_voxels: dict[str, float]
    spread_mm3: dict[str, float] | None
    probabilities: Tensor | None = None  # (M, C, *S) when asked for (keep_probabilities=True)

    def summary(self) -> dict:
        """The JSON-ready volume part of ``summary.json``."""
        out = {"hypotheses": [{"index": i + 1, "foreground_voxels": v} for i, v in
                              enumerate(self.volumes_voxels)],
               "spread_voxels": dict(self.spread_voxels)}
        if self.volumes_mm3 is not None:
            for row, mm3 in zip(out["hypotheses"], self.volumes_mm3):
                row["foreground_mm3"] = mm3
            out["spread_mm3"] = dict(self.spread_mm3)
        return out


def _spread(values: list[float]) -> dict[str, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return {"mean": float(t.mean()), "std": float(t.std(correction=0)),
            "min": float(t.min()), "max": float(t.max())}


def _chunk_size(y0: Tensor, chunk: int | None) -> int:
    if chunk is not None:
        if chunk < 1:
            raise InputError(f"chunk must be >= 1 (got {chunk})")
        return int(chunk)
    per_hypothesis = 4 * y0[0].numel() * 3  # probabilities + two temporaries, float32
    return max(1, min(y0.shape[0], CHUNK_BYTES // max(per_hypothesis, 1)))


def summarize(y0: Tensor, tau_out: float, spacing: tuple[float, ...] | list[float] | None = None,
              keep_probabilities: bool = False, chunk: int | None = None) -> UncertaintyMaps:
    """Uncertainty maps and volumes of one image's hypotheses y0 (M, C, *S) (see module doc).

    ``spacing``: mm per spatial axis in the order of y0's axes (only the product, the voxel volume,
    is used). ``keep_probabilities`` also returns the per-hypothesis probabilities (M, C, *S) float32
    (large for 3D volumes). ``chunk``: hypotheses per chunk (default: sized to ~256 MB).
    """
    _check_y0(y0)
    try:
        tau_out = float(tau_out)
    except (TypeError, ValueError):
        raise InputError(f"tau_out must be a positive number (got {tau_out!r})") from None
    if not (math.isfinite(tau_out) and tau_out > 0):
        raise InputError(f"tau_out must be a positive number (got {tau_out})")
    m, c, spatial = y0.shape[0], y0.shape[1], tuple(y0.shape[2:])
    voxel_mm3 = None
    if spacing is not None:
        spacing = [float(s) for s in spacing]
        if len(spacing) != len(spatial) or not all(math.isfinite(s) and s > 0 for s in spacing):
            raise InputError(f"spacing must give {len(spatial)} positive values in mm (got {spacing})")
        voxel_mm3 = math.prod(spacing)
    step = _chunk_size(y0, chunk)

    dev = y0.device
    labels = torch.empty((m, *spatial), dtype=_label_dtype(c), device=dev)
    prob_sum = torch.zeros((c, *spatial), dtype=torch.float32, device=dev)
    ent_sum = torch.zeros(spatial, dtype=torch.float32, device=dev)
    fg_count = torch.zeros(spatial, dtype=torch.float32, device=dev)
    probs = torch.empty((m, c, *spatial), dtype=torch.float32, device=dev) if keep_probabilities else None
    volumes: list[int] = []
    for start in range(0, m, step):
        part = y0[start:start + step].to(torch.float32)
        p = to_probabilities(part, tau_out)
        prob_sum += p.sum(0)
        ent_sum += _entropy(p, 1).sum(0)
        if probs is not None:
            probs[start:start + step] = p
        del p
        lab = part.argmax(1)
        labels[start:start + step] = lab.to(labels.dtype)
        fg = lab != 0
        fg_count += fg.sum(0, dtype=torch.float32)
        volumes += [int(v) for v in fg.reshape(len(fg), -1).sum(1)]
        del part, lab, fg

    mean_p = prob_sum.div_(m)
    predictive = _entropy(mean_p, 0).clamp_(0.0, math.log(c))
    expected = ent_sum.div_(m).clamp_(0.0, math.log(c))
    mi = (predictive - expected).clamp_(min=0.0)
    f = fg_count.div_(m)
    mm3 = None if voxel_mm3 is None else [v * voxel_mm3 for v in volumes]
    return UncertaintyMaps(
        labels=labels, mean_probability=mean_p, consensus=mean_p.argmax(0).to(labels.dtype),
        predictive_entropy=predictive, expected_entropy=expected, mutual_information=mi,
        foreground_variance=f * (1 - f), volumes_voxels=volumes, volumes_mm3=mm3,
        spread_voxels=_spread(volumes), spread_mm3=None if mm3 is None else _spread(mm3),
        probabilities=probs)
