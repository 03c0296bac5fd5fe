"""Sample-set and calibration metrics (numpy), with every number-changing convention as a switch.

Definitions follow ``shared/notes/metrics.md``; ``docs/metrics.md`` lists the switches and defaults.

Inputs are integer label maps: samples ``(S, *spatial)``, annotations ``(A, *spatial)``, classes
``0..C-1`` with 0 = background. Overlap metrics use the foreground classes 1..C-1; for C > 2 a pair's
score is the mean over foreground classes.

Empty-mask conventions (``empty=``), applied per class when both masks of a pair are empty:

- ``"one"`` (default; CCDM / MoSE): IoU = Dice = 1, so d = 0;
- ``"nan"``: the pair (class) is excluded; averages skip NaN, an average over nothing is NaN;
- ``"zero"``: IoU = Dice = 0, so d = 1.

One empty and one non-empty mask always give IoU = Dice = 0.

Reference for Dice / NLL / ECE with several annotations (``reference=``):

- ``"each"`` (default): score against each annotation in turn, then average over annotations;
- ``"majority"``: the per-voxel majority label (argmax of the annotation counts; a tie goes to the
  lower class index, so foreground needs a strict majority);
- ``"soft"``: the per-voxel mean of the annotations' one-hot labels as a soft label.

Per image first, then over images (``aggregate``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..networks.checks import InputError

Empty = Literal["one", "nan", "zero"]
Reference = Literal["each", "majority", "soft"]

EMPTY_CONVENTIONS: tuple[str, ...] = ("one", "nan", "zero")
REFERENCES: tuple[str, ...] = ("each", "majority", "soft")
DEFAULT_EMPTY: Empty = "one"
DEFAULT_REFERENCE: Reference = "each"
ECE_BINS = 15
NLL_CLIP = 1e-8
_EMPTY_FILL = {"one": 1.0, "nan": math.nan, "zero": 0.0}


# -- input checks ------------------------------------------------------------------------------------

def _check_switches(num_classes: int, empty: str = DEFAULT_EMPTY,
                    reference: str = DEFAULT_REFERENCE) -> None:
    if int(num_classes) != num_classes or num_classes < 2:
        raise InputError(f"num_classes must be an integer >= 2 (got {num_classes})")
    if empty not in EMPTY_CONVENTIONS:
        raise InputError(f"empty must be one of {EMPTY_CONVENTIONS} (got {empty!r})")
    if reference not in REFERENCES:
        raise InputError(f"reference must be one of {REFERENCES} (got {reference!r})")


def _labels(x: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    """Integer class indices in 0..num_classes-1 (bool and integral floats accepted)."""
    a = np.asarray(x)
    if a.dtype == bool:
        return a.astype(np.int64)
    if a.dtype.kind == "f":
        if not (np.all(np.isfinite(a)) and np.array_equal(a, np.round(a))):
            raise InputError(f"{name} must hold integer class indices")
        a = a.astype(np.int64)
    elif a.dtype.kind not in "iu":
        raise InputError(f"{name} must be an integer label map (dtype {a.dtype})")
    if a.size == 0:
        raise InputError(f"{name} is empty (shape {a.shape})")
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi >= num_classes:
        raise InputError(f"{name} hold values {lo}..{hi} but there are {num_classes} classes "
                         f"(0..{num_classes - 1})")
    return a


def _label_set(x: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    """A non-empty set of label maps (N, *spatial), N >= 1."""
    a = np.asarray(x)
    if a.ndim < 2 or a.shape[0] == 0:
        raise InputError(f"{name} must be a non-empty set (N, *spatial) of label maps (shape {a.shape})")
    return _labels(a, num_classes, name)


def _same_grid(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape[1:] != b.shape[1:]:
        raise InputError(f"{what}: spatial shapes differ ({a.shape[1:]} vs {b.shape[1:]})")


def _probabilities(p: np.ndarray, num_classes: int, spatial: tuple[int, ...]) -> np.ndarray:
    """Class probabilities (C, *spatial), finite and in [0, 1]."""
    p = np.asarray(p, dtype=np.float64)
    if p.shape != (num_classes, *spatial):
        raise InputError(f"probabilities have shape {p.shape}, expected {(num_classes, *spatial)}")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1 + 1e-6:
        raise InputError("probabilities must be finite and in [0, 1]")
    return p


def _nanmean(x: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """Mean ignoring NaN; NaN (no warning) where nothing is left."""
    x = np.asarray(x, dtype=np.float64)
    valid = ~np.isnan(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(valid, x, 0.0).sum(axis) / valid.sum(axis)
    return float(out) if np.ndim(out) == 0 else out


# -- pairwise overlaps (one matrix product per foreground class) ------------------------------------

def _overlaps(a: np.ndarray, b: np.ndarray, num_classes: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersections (Na, Nb, K) and sizes (Na, K), (Nb, K) of the K = C-1 foreground classes."""
    same = b is a
    a = a.reshape(len(a), -1)
    b = a if same else b.reshape(len(b), -1)
    dtype = np.float32 if a.shape[1] < 2 ** 24 else np.float64  # counts stay exact
    k = num_classes - 1
    inter = np.empty((len(a), len(b), k))
    sa, sb = np.empty((len(a), k)), np.empty((len(b), k))
    for i, c in enumerate(range(1, num_classes)):
        ma = (a == c).astype(dtype)
        mb = ma if same else (b == c).astype(dtype)
        inter[:, :, i] = ma @ mb.T
        sa[:, i], sb[:, i] = ma.sum(1), mb.sum(1)
    return inter, sa, sb


def _ratio(num: np.ndarray, den: np.ndarray, empty: str) -> np.ndarray:
    """num / den, with den == 0 (both masks empty) set by the empty convention."""
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num / den
    return np.where(den == 0, _EMPTY_FILL[empty], r)


def _pairwise(a: np.ndarray, b: np.ndarray, num_classes: int, empty: str, kind: str) -> np.ndarray:
    inter, sa, sb = _overlaps(a, b, num_classes)
    sa, sb = sa[:, None, :], sb[None, :, :]
    per_class = (_ratio(inter, sa + sb - inter, empty) if kind == "iou"
                 else _ratio(2 * inter, sa + sb, empty))
    return _nanmean(per_class, axis=-1) if num_classes > 2 else per_class[..., 0]


def pairwise_iou(a: np.ndarray, b: np.ndarray, num_classes: int = 2,
                 empty: Empty = DEFAULT_EMPTY) -> np.ndarray:
    """IoU of every pair (Na, Nb) of label maps a (Na, *S), b (Nb, *S); mean over foreground classes.

    Both masks empty (per class): 1 (``"one"``), NaN/excluded (``"nan"``), 0 (``"zero"``).
    """
    _check_switches(num_classes, empty)
    a, b = _label_set(a, num_classes, "a"), _label_set(b, num_classes, "b")
    _same_grid(a, b, "pairwise_iou")
    return _pairwise(a, b, num_classes, empty, "iou")


def pairwise_dice(a: np.ndarray, b: np.ndarray, num_classes: int = 2,
                  empty: Empty = DEFAULT_EMPTY) -> np.ndarray:
    """Dice 2|a&b|/(|a|+|b|) of every pair (Na, Nb); conventions as ``pairwise_iou``."""
    _check_switches(num_classes, empty)
    a, b = _label_set(a, num_classes, "a"), _label_set(b, num_classes, "b")
    _same_grid(a, b, "pairwise_dice")
    return _pairwise(a, b, num_classes, empty, "dice")


def iou(a: np.ndarray, b: np.ndarray, num_classes: int = 2, empty: Empty = DEFAULT_EMPTY) -> float:
    """IoU of two label maps (mean over foreground classes); IoU(empty, empty) per ``empty``."""
    return float(pairwise_iou(np.asarray(a)[None], np.asarray(b)[None], num_classes, empty)[0, 0])


def distance(a: np.ndarray, b: np.ndarray, num_classes: int = 2,
             empty: Empty = DEFAULT_EMPTY) -> float:
    """d = 1 - IoU (so d(empty, empty) is 0 / NaN / 1 under ``"one"`` / ``"nan"`` / ``"zero"``)."""
    return 1.0 - iou(a, b, num_classes, empty)


# -- sample-set metrics -----------------------------------------------------------------------------

def _sets(samples, annotations, num_classes, empty) -> tuple[np.ndarray, np.ndarray]:
    _check_switches(num_classes, empty)
    s = _label_set(samples, num_classes, "samples")
    y = _label_set(annotations, num_classes, "annotations")
    _same_grid(s, y, "samples vs annotations")
    return s, y


def _ged_from(d_sy: np.ndarray, d_ss: np.ndarray, d_yy: np.ndarray) -> float:
    return 2 * _nanmean(d_sy) - _nanmean(d_ss) - _nanmean(d_yy)


def ged(samples: np.ndarray, annotations: np.ndarray, num_classes: int = 2,
        empty: Empty = DEFAULT_EMPTY) -> float:
    """Generalised energy distance D^2 (no square root), d = 1 - IoU:

    2 mean d(s_i, y_j) - mean d(s_i, s_i') - mean d(y_j, y_j'), every mean over the full grid of
    pairs, diagonal included. Under ``empty="nan"`` each mean skips excluded pairs (NaN if a term has
    none left).
    """
    s, y = _sets(samples, annotations, num_classes, empty)
    return _ged_from(1 - _pairwise(s, y, num_classes, empty, "iou"),
                     1 - _pairwise(s, s, num_classes, empty, "iou"),
                     1 - _pairwise(y, y, num_classes, empty, "iou"))


def diversity(samples: np.ndarray, num_classes: int = 2, empty: Empty = DEFAULT_EMPTY) -> float:
    """Sample diversity mean d(s_i, s_i') over all S x S pairs, diagonal included (GED's middle term)."""
    _check_switches(num_classes, empty)
    s = _label_set(samples, num_classes, "samples")
    return _nanmean(1 - _pairwise(s, s, num_classes, empty, "iou"))


def _hm_from(iou_sy: np.ndarray) -> float:
    n_s, n_a = iou_sy.shape
    n = math.lcm(n_s, n_a)
    tiled = np.tile(iou_sy, (n // n_s, n // n_a))  # row i = sample i % S, column j = annotation j % A
    cost = np.where(np.isnan(tiled), 0.0, 1.0 - tiled)  # excluded empty-empty pairs match freely
    rows, cols = linear_sum_assignment(cost)
    return _nanmean(tiled[rows, cols])


def hm_iou(samples: np.ndarray, annotations: np.ndarray, num_classes: int = 2,
           empty: Empty = DEFAULT_EMPTY) -> float:
    """Hungarian-matched IoU: repeat samples and annotations up to lcm(S, A), solve the assignment on
    cost 1 - IoU (scipy ``linear_sum_assignment``), score = mean matched IoU.

    Under ``empty="nan"`` an empty-empty pair costs 0 in the assignment and is left out of the mean.
    """
    s, y = _sets(samples, annotations, num_classes, empty)
    return _hm_from(_pairwise(s, y, num_classes, empty, "iou"))


def _mdm_from(dice_sy: np.ndarray) -> float:
    valid = ~np.isnan(dice_sy)
    best = np.where(valid, dice_sy, -np.inf).max(axis=0)  # best sample per annotation
    return _nanmean(np.where(valid.any(axis=0), best, np.nan))


def mdm(samples: np.ndarray, annotations: np.ndarray, num_classes: int = 2,
        empty: Empty = DEFAULT_EMPTY) -> float:
    """Maximum Dice matching: for each annotation the best Dice over the samples, mean over annotations.

    No public code defines it; this is the definition used here. Dice(empty, empty) = 1 under the
    default ``"one"``; under ``"nan"`` such pairs are skipped in the max.
    """
    s, y = _sets(samples, annotations, num_classes, empty)
    return _mdm_from(_pairwise(s, y, num_classes, empty, "dice"))


# -- calibration metrics against a hard or soft reference -------------------------------------------

def _onehot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, *S) float64 one-hot of a label map (*S)."""
    return (labels[None] == np.arange(num_classes).reshape(-1, *([1] * labels.ndim))).astype(np.float64)


def _reference(reference: np.ndarray, num_classes: int, spatial: tuple[int, ...]) -> np.ndarray:
    """A reference as (C, *S) class weights: labels (*S) -> one-hot, soft (C, *S) -> as given."""
    r = np.asarray(reference)
    if r.shape == tuple(spatial):
        return _onehot(_labels(r, num_classes, "reference"), num_classes)
    if r.shape == (num_classes, *spatial):
        r = r.astype(np.float64)
        if not np.all(np.isfinite(r)) or r.min() < 0 or np.abs(r.sum(0) - 1).max() > 1e-6:
            raise InputError("a soft reference must hold per-voxel class weights summing to 1")
        return r
    raise InputError(f"reference has shape {r.shape}: expected labels {tuple(spatial)} or soft "
                     f"labels {(num_classes, *spatial)}")


def dice(prediction: np.ndarray, reference: np.ndarray, num_classes: int = 2,
         empty: Empty = DEFAULT_EMPTY) -> float:
    """Dice of a label map (*S) against labels (*S) or a soft reference q (C, *S), mean over foreground
    classes: 2 sum(P_c q_c) / (sum P_c + sum q_c). Both empty: per ``empty`` (default 1)."""
    _check_switches(num_classes, empty)
    pred = _labels(prediction, num_classes, "prediction")
    q = _reference(reference, num_classes, pred.shape)
    p = _onehot(pred, num_classes)
    axes = tuple(range(1, p.ndim))
    per_class = _ratio(2 * (p * q).sum(axes), p.sum(axes) + q.sum(axes), empty)[1:]
    return _nanmean(per_class)


def nll(probabilities: np.ndarray, reference: np.ndarray) -> float:
    """Mean per-voxel cross-entropy -sum_c q_c log p_c (nats) of probabilities p (C, *S) against labels
    (*S) or a soft reference q (C, *S); p is clipped to [1e-8, 1]."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim < 2:
        raise InputError(f"probabilities must be (C, *spatial) (shape {p.shape})")
    p = _probabilities(p, p.shape[0], p.shape[1:])
    q = _reference(reference, p.shape[0], p.shape[1:])
    return float(-(q * np.log(np.clip(p, NLL_CLIP, 1.0))).sum(0).mean())


def calibration_bins(probabilities: np.ndarray, reference: np.ndarray, n_bins: int = ECE_BINS,
                     include_background: bool = True) -> dict[str, np.ndarray]:
    """The bins ECE sums over: per equal-width bin (lo, hi] of confidence = max class probability, the
    voxel count and the sums of confidence and accuracy (1[prediction == label]; soft reference:
    q[prediction]). ``include_background=False`` keeps the voxels predicted foreground or with any
    foreground in the reference (q_0 < 1). Also what a reliability diagram plots."""
    if int(n_bins) != n_bins or n_bins < 1:
        raise InputError(f"n_bins must be a positive integer (got {n_bins})")
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim < 2:
        raise InputError(f"probabilities must be (C, *spatial) (shape {p.shape})")
    p = _probabilities(p, p.shape[0], p.shape[1:])
    q = _reference(reference, p.shape[0], p.shape[1:])
    c = p.shape[0]
    p, q = p.reshape(c, -1), q.reshape(c, -1)
    pred = p.argmax(0)
    conf = np.take_along_axis(p, pred[None], 0)[0]
    acc = np.take_along_axis(q, pred[None], 0)[0]
    if not include_background:
        keep = (pred != 0) | (q[0] < 1)
        conf, acc = conf[keep], acc[keep]
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    return {"edges": np.linspace(0, 1, n_bins + 1),
            "count": np.bincount(bins, minlength=n_bins).astype(np.float64),
            "confidence_sum": np.bincount(bins, weights=conf, minlength=n_bins),
            "accuracy_sum": np.bincount(bins, weights=acc, minlength=n_bins)}


def ece(probabilities: np.ndarray, reference: np.ndarray, n_bins: int = ECE_BINS,
        include_background: bool = True) -> float:
    """Expected calibration error: sum over the ``calibration_bins`` of
    fraction * |accuracy - confidence| = |sum accuracy - sum confidence| / all voxels.
    All voxels by default (NaN if ``include_background=False`` leaves none).
    """
    b = calibration_bins(probabilities, reference, n_bins, include_background)
    total = b["count"].sum()
    if total == 0:
        return math.nan
    return float(np.abs(b["accuracy_sum"] - b["confidence_sum"]).sum() / total)


def miou_fused(probabilities: np.ndarray, annotations: np.ndarray, num_classes: int | None = None,
               empty: Empty = DEFAULT_EMPTY) -> float:
    """IoU of the fused prediction argmax(p_bar) (p_bar: (C, *S) mean probability) against each
    non-empty annotation, mean over them (NaN if every annotation is empty). For C > 2 the IoU is the
    mean over foreground classes, classes empty in both per ``empty``."""
    p = np.asarray(probabilities, dtype=np.float64)
    c = p.shape[0] if num_classes is None else num_classes
    _check_switches(c, empty)
    y = _label_set(annotations, c, "annotations")
    p = _probabilities(p, c, y.shape[1:])
    return _miou_from(p.argmax(0), y, c, empty)


def _miou_from(pred: np.ndarray, y: np.ndarray, num_classes: int, empty: str) -> float:
    nonempty = (y.reshape(len(y), -1) != 0).any(1)
    if not nonempty.any():
        return math.nan
    return _nanmean(_pairwise(pred[None], y[nonempty], num_classes, empty, "iou"))


class ConfusionMatrix:
    """Accumulates a C x C confusion matrix (rows: reference, columns: prediction) over a split.

    ``iou()`` is per class over the whole split, NaN for a class absent from both prediction and
    reference; ``miou()`` is their NaN-skipping mean, over all classes by default (the Cityscapes
    convention) or the foreground classes 1..C-1. Reference voxels equal to ``ignore_index`` are skipped.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None):
        _check_switches(num_classes)
        self.num_classes, self.ignore_index = int(num_classes), ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, prediction: np.ndarray, reference: np.ndarray) -> None:
        ref = np.asarray(reference).ravel()
        pred = np.asarray(prediction).ravel()
        if np.shape(prediction) != np.shape(reference):
            raise InputError(f"prediction {np.shape(prediction)} and reference "
                             f"{np.shape(reference)} differ in shape")
        if self.ignore_index is not None:
            keep = ref != self.ignore_index
            ref, pred = ref[keep], pred[keep]
        if ref.size == 0:
            return
        ref = _labels(ref, self.num_classes, "reference").astype(np.int64)
        pred = _labels(pred, self.num_classes, "prediction").astype(np.int64)
        self.matrix += np.bincount(ref * self.num_classes + pred,
                                   minlength=self.num_classes ** 2).reshape(self.matrix.shape)

    def iou(self) -> np.ndarray:
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        return _ratio(tp, union, "nan")

    def miou(self, include_background: bool = True) -> float:
        per_class = self.iou()
        return _nanmean(per_class if include_background else per_class[1:])


# -- one image, many images -------------------------------------------------------------------------

def _reference_maps(y: np.ndarray, num_classes: int, reference: str) -> list[np.ndarray]:
    """The reference(s) for Dice/NLL/ECE under a ``reference`` switch."""
    if reference == "each":
        return list(y)
    counts = np.stack([(y == c).sum(0) for c in range(num_classes)])
    if reference == "majority":
        return [counts.argmax(0)]  # ties -> lower class index
    return [counts / len(y)]


def score_image(samples: np.ndarray, annotations: np.ndarray, probabilities: np.ndarray | None = None,
                num_classes: int = 2, reference: Reference = DEFAULT_REFERENCE,
                empty: Empty = DEFAULT_EMPTY, ece_background: bool = True,
                n_bins: int = ECE_BINS) -> dict[str, float]:
    """Every metric for one image: ged, diversity, hm_iou, mdm, dice, nll, ece, miou.

    ``probabilities``: the fused p_bar (C, *S), or per-sample (S, C, *S) averaged here; None uses the
    samples' label frequencies (mean one-hot). Dice / NLL / ECE use ``reference`` (see module doc);
    Dice is of argmax(p_bar). The pairwise IoU matrices are computed once and shared.
    """
    s, y = _sets(samples, annotations, num_classes, empty)
    _check_switches(num_classes, empty, reference)
    spatial = s.shape[1:]
    if probabilities is None:
        p = np.stack([(s == c).mean(0) for c in range(num_classes)])
    else:
        p = np.asarray(probabilities, dtype=np.float64)
        if p.ndim == len(spatial) + 2:
            p = p.mean(0)
        p = _probabilities(p, num_classes, spatial)
    iou_sy = _pairwise(s, y, num_classes, empty, "iou")
    d_ss = 1 - _pairwise(s, s, num_classes, empty, "iou")
    d_yy = 1 - _pairwise(y, y, num_classes, empty, "iou")
    fused = p.argmax(0)
    refs = _reference_maps(y, num_classes, reference)
    return {
        "ged": _ged_from(1 - iou_sy, d_ss, d_yy),
        "diversity": _nanmean(d_ss),
        "hm_iou": _hm_from(iou_sy),
        "mdm": _mdm_from(_pairwise(s, y, num_classes, empty, "dice")),
        "dice": _nanmean([dice(fused, r, num_classes, empty) for r in refs]),
        "nll": _nanmean([nll(p, r) for r in refs]),
        "ece": _nanmean([ece(p, r, n_bins, ece_background) for r in refs]),
        "miou": _miou_from(fused, y, num_classes, empty),
    }


def aggregate(scores: Iterable[Mapping[str, float]], ddof: int = 0) -> dict[str, tuple[float, float]]:
    """Per-image scores -> {metric: (mean, std)} over images, skipping NaN (an image where a metric is
    undefined under the ``"nan"`` convention); (nan, nan) when no image has a value. std uses ``ddof``
    (default 0, the population std)."""
    scores = list(scores)
    keys = list(dict.fromkeys(k for row in scores for k in row))
    out = {}
    for k in keys:
        v = np.array([row.get(k, math.nan) for row in scores], dtype=np.float64)
        v = v[~np.isnan(v)]
        if v.size <= ddof:
            out[k] = (float(v.mean()) if v.size else math.nan, math.nan)
        else:
            out[k] = (float(v.mean()), float(v.std(ddof=ddof)))
    return out


def describe_conventions(empty: Empty = DEFAULT_EMPTY, reference: Reference = DEFAULT_REFERENCE,
                         ece_background: bool = True, n_bins: int = ECE_BINS) -> str:
    """One line stating the conventions, to print next to every reported table."""
    _check_switches(2, empty, reference)
    ee = {"one": "IoU(empty,empty)=1", "nan": "empty pairs excluded", "zero": "IoU(empty,empty)=0"}
    return (f"d = 1 - IoU over foreground classes, {ee[empty]}; GED as D^2 over full pair grids; "
            f"Dice/NLL/ECE reference: {reference}; ECE {n_bins} bins on max prob, "
            f"{'all voxels' if ece_background else 'foreground voxels'}; NLL p clipped at {NLL_CLIP:g}")
