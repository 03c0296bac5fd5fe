"""``diffseg evaluate``: score a model on a multi-reader set with the sample-set and calibration metrics.

Why one path for every method: the published numbers (HSRDiff Table 1, PGRD Table I) are only
comparable when the same metric code, the same conventions and the same sample count score every
method. So a method enters as a *predictor* ``predict(images (B, *S) raw, num_samples) -> (B, M, C, *S)``
class probabilities; diffusion models through ``predictor_from_model`` (card preprocessing, resize to
the card's input size and back, ``sampler.sample``, ``softmax(y0 / tau_out)``), the baselines of
``training/baselines.py`` through their ``sample_probabilities``. Hypothesis m's mask is the argmax of
its probabilities; every number comes from ``metrics.score_image`` and ``metrics.aggregate``
(per image first, then mean and population std over images), never re-implemented here.

Data: the multi-reader npz format of ``shared/data/lidc128`` (``images`` (S, H, W), ``masks``
(S, A, H, W), optional ``patient``, ``nodule``, ``slice``), so any held-out file in that format can be
scored.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import metrics
from .checks import InputError

Predictor = Callable[[np.ndarray, int], "torch.Tensor | np.ndarray"]
ProgressArg = "bool | Callable[[int, int], None]"

#: Metric keys in table order: HSRDiff Table 1 / 3, then PGRD Table I.
SAMPLE_SET = (("ged", "GED", "↓"), ("hm_iou", "HM-IoU", "↑"), ("mdm", "MDM", "↑"),
              ("diversity", "Diversity", ""), ("miou", "mIoU", "↑"))
CALIBRATION = (("dice", "DSC (%)", "↑"), ("nll", "NLL (%)", "↓"), ("ece", "ECE (%)", "↓"))


# -- data ------------------------------------------------------------------------------------------

def windows(n: int, depth: int, stride: int) -> list[list[int]]:
    """Index windows of ``depth`` consecutive positions in 0..n-1 (n >= depth), covering the end."""
    starts = list(range(0, n - depth + 1, stride))
    if starts[-1] != n - depth:
        starts.append(n - depth)
    return [list(range(s, s + depth)) for s in starts]


def edge_pad(n: int, depth: int) -> list[int]:
    """Positions 0..n-1 padded to ``depth`` by repeating the ends (as evenly as possible)."""
    before = (depth - n) // 2
    return [0] * before + list(range(n)) + [n - 1] * (depth - n - before)


def nodule_stacks(patient: Sequence, nodule: Sequence, slice_: Sequence, depth: int, stride: int | None = None,
                  pad: str = "edge") -> list[list[int]]:
    """Row indices of 3D stacks: the slices of one (patient, nodule) in slice order, cut into windows
    of ``depth`` every ``stride`` (default ``depth``; the last window ends on the last slice); a shorter
    nodule is padded by repeating its end slices (``pad="edge"``) or dropped (``"skip"``). The training
    loader's 3D items and the 3D evaluation are the same stacks."""
    groups: dict[tuple[str, int], list[int]] = {}
    for i, key in enumerate(zip(np.asarray(patient).tolist(), np.asarray(nodule).tolist())):
        groups.setdefault(key, []).append(i)
    out = []
    for rows in groups.values():
        rows = sorted(rows, key=lambda r: int(slice_[r]))
        if len(rows) >= depth:
            out += [[rows[j] for j in w] for w in windows(len(rows), depth, stride or depth)]
        elif pad == "edge":
            out.append([rows[j] for j in edge_pad(len(rows), depth)])
    return out


@dataclass
class MultiReaderSet:
    """Images (N, *S) as stored (uint8 for LIDC), masks (N, A, *S) integer, per-image identifiers."""

    images: np.ndarray
    masks: np.ndarray
    patient: np.ndarray | None = None
    nodule: np.ndarray | None = None
    slice: np.ndarray | None = None
    path: str = ""

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, n: int | None) -> "MultiReaderSet":
        """n images evenly spaced over the file (all of them for None): consecutive slices come from
        one nodule, so the first n would score a handful of patients."""
        if n is None or int(n) >= len(self):
            return self
        idx = np.linspace(0, len(self) - 1, int(n)).round().astype(int)
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return MultiReaderSet(self.images[idx], self.masks[idx], pick(self.patient), pick(self.nodule),
                              pick(self.slice), self.path)

    def stacks(self, depth: int) -> "MultiReaderSet":
        """2D slices -> 3D stacks (N', depth, H, W) with readings (N', A, depth, H, W), for a 3D model:
        ``nodule_stacks`` (windows of ``depth`` slices of one nodule, short nodules edge-padded, as the
        3D training loader builds them); an item's id and slice are its last slice's."""
        if self.patient is None or self.nodule is None or self.slice is None:
            raise InputError(f"{self.path or 'the data'} has no patient / nodule / slice arrays: a 3D model "
                             "needs them to stack consecutive slices of one nodule")
        rows = nodule_stacks(self.patient, self.nodule, self.slice, int(depth))
        if not rows:
            raise InputError(f"no nodule in {self.path or 'the data'} has slices to stack")
        last = np.array([r[-1] for r in rows])
        return MultiReaderSet(np.stack([self.images[r] for r in rows]),
                              np.stack([self.masks[r].transpose(1, 0, 2, 3) for r in rows]),
                              self.patient[last], self.nodule[last], self.slice[last], self.path)

    def centre_crop(self, size: Sequence[int]) -> "MultiReaderSet":
        """The centre box of ``size`` of every image and mask. A crop model is scored on the box it
        was trained on: the LIDC crops are centred on the nodule, and a crop model must not see a
        resized (rescaled) image."""
        spatial = self.images.shape[1:]
        if len(size) != len(spatial) or any(int(z) > s for z, s in zip(size, spatial)):
            raise InputError(f"the model's input size {list(size)} does not fit in the data's {list(spatial)}")
        box = tuple(slice((s - int(z)) // 2, (s - int(z)) // 2 + int(z)) for z, s in zip(size, spatial))
        return MultiReaderSet(self.images[(slice(None), *box)], self.masks[(slice(None), slice(None), *box)],
                              self.patient, self.nodule, self.slice, self.path)

    def item_id(self, i: int) -> str:
        if self.patient is None:
            return str(i)
        tag = str(self.patient[i])
        if self.nodule is not None:
            tag += f"-n{int(self.nodule[i])}"
        if self.slice is not None:
            tag += f"-s{int(self.slice[i])}"
        return tag


def data_for_model(data: MultiReaderSet, card: Mapping[str, Any], max_items: int | None = None
                   ) -> tuple[MultiReaderSet, dict[str, Any]]:
    """The items a model is scored on, and the card to build its predictor from: stacks of the card's
    depth for a 3D model on 2D slices (``MultiReaderSet.stacks``), ``max_items`` evenly spaced
    (``subset``), then ``crop_for_model``. Every scoring command goes through here."""
    if int(card["architecture"]["spatial_dims"]) == 3 and data.images.ndim == 3:
        size = (card.get("input") or {}).get("size")
        if not size:
            raise InputError("a 3D model needs the card's input size to stack 2D slices")
        data = data.stacks(int(size[0]))
    return crop_for_model(data.subset(max_items), card)


def crop_for_model(data: MultiReaderSet, card: Mapping[str, Any]) -> tuple[MultiReaderSet, dict[str, Any]]:
    """The set as a model's predictor must see it, and the card to build that predictor from.

    A crop model (card ``input.roi_required``) is scored on the centre box of its input size, the box
    it was trained on. Its card preprocessing runs on the whole image *before* the box is cut, as
    ``diffseg sample`` preprocesses the whole volume before it cuts the ROI: a range statistic
    ("minmax") is the whole image's, so an LIDC crop maps to exactly x / 255 as in training. The images
    come back preprocessed (float32) and the returned card says ``{"kind": "none"}``, so they are not
    preprocessed twice. Any other model: the set and the card unchanged.
    """
    from .modelfile import roi_required
    from .volumes import preprocess
    if not roi_required(card):
        return data, dict(card)
    spec = (card.get("input") or {}).get("preprocessing")
    pre = np.stack([preprocess(img[None], spec)[0] for img in data.images]) if len(data) else data.images
    full = MultiReaderSet(pre, data.masks, data.patient, data.nodule, data.slice, data.path)
    inputs = {**card["input"], "preprocessing": {"kind": "none"}}
    return full.centre_crop(card["input"]["size"]), {**card, "input": inputs}


def load_multireader_npz(path: str | os.PathLike) -> MultiReaderSet:
    """Read and check a multi-reader npz (keys ``images`` (S, H, W), ``masks`` (S, A, H, W); optional
    ``patient``, ``nodule``, ``slice`` of length S). Raises InputError naming what is wrong."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"data file {path} does not exist (expected an npz with 'images' and 'masks')")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            missing = [k for k in ("images", "masks") if k not in keys]
            if missing:
                raise InputError(f"{path} lacks the array(s) {', '.join(missing)} (found: "
                                 f"{', '.join(sorted(keys)) or 'none'}); expected images (S, H, W) and "
                                 "masks (S, A, H, W)")
            arrays = {k: z[k] for k in ("images", "masks", "patient", "nodule", "slice") if k in keys}
    except InputError:
        raise
    except Exception as e:  # zip/pickle/format errors of np.load
        raise InputError(f"cannot read {path} as an npz file: {e}") from None
    images, masks = arrays["images"], arrays["masks"]
    if images.ndim != 3:
        raise InputError(f"{path}: images have shape {images.shape}; expected (slices, H, W)")
    if images.dtype.kind not in "uif":
        raise InputError(f"{path}: images have dtype {images.dtype}; expected numbers (uint8 in LIDC)")
    if images.shape[0] == 0:
        raise InputError(f"{path} holds no images")
    if masks.ndim != 4:
        raise InputError(f"{path}: masks have shape {masks.shape}; expected (slices, readers, H, W)")
    if masks.dtype.kind not in "uib":
        raise InputError(f"{path}: masks have dtype {masks.dtype}; expected integer labels (uint8)")
    if masks.shape[0] != images.shape[0] or masks.shape[2:] != images.shape[1:]:
        raise InputError(f"{path}: masks {masks.shape} do not match images {images.shape} "
                         "(need the same slices and H, W)")
    if masks.shape[1] == 0:
        raise InputError(f"{path}: masks hold no readers (shape {masks.shape})")
    if images.dtype.kind == "f" and not np.all(np.isfinite(images)):
        raise InputError(f"{path}: images hold NaN or infinite values")
    if masks.dtype.kind == "i" and masks.min() < 0:
        raise InputError(f"{path}: masks hold negative labels")
    for k in ("patient", "nodule", "slice"):
        if k in arrays and arrays[k].shape != (images.shape[0],):
            raise InputError(f"{path}: {k} has shape {arrays[k].shape}; expected ({images.shape[0]},)")
    return MultiReaderSet(images, masks.astype(np.int64) if masks.dtype.kind == "b" else masks,
                          arrays.get("patient"), arrays.get("nodule"), arrays.get("slice"), str(path))


# -- scoring ---------------------------------------------------------------------------------------

def _as_numpy(x: Any) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float32)


def evaluate_predictor(predict: Predictor, images: np.ndarray, annotations: np.ndarray,
                       num_samples: int = 16, batch_size: int = 1, progress: Any = False, *,
                       reference: str = metrics.DEFAULT_REFERENCE, empty: str = metrics.DEFAULT_EMPTY,
                       ece_background: bool = True, ids: Sequence[str] | None = None) -> dict[str, Any]:
    """Score ``predict`` on every image: ``{"per_image": [...], "summary": {metric: (mean, std)}}``.

    images (N, *S) as stored; annotations (N, A, *S). ``batch_size`` images go to ``predict`` at a time.
    ``progress``: True for a tqdm bar (stderr), or a callback ``progress(done, total)``.
    """
    images, annotations = np.asarray(images), np.asarray(annotations)
    n = len(images)
    if n == 0 or len(annotations) != n:
        raise InputError(f"need as many annotation sets as images (got {n} images, {len(annotations)} sets)")
    if int(num_samples) < 1:
        raise InputError("num_samples must be at least 1")
    bar = None
    if progress is True:
        from tqdm import tqdm
        bar = tqdm(total=n, unit="image", desc="evaluate", file=sys.stderr, dynamic_ncols=True)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        for start in range(0, n, max(1, int(batch_size))):
            batch = images[start:start + max(1, int(batch_size))]
            probs = _as_numpy(predict(batch, int(num_samples)))
            want = (len(batch), int(num_samples))
            if probs.ndim != annotations.ndim + 1 or probs.shape[:2] != want or \
                    probs.shape[3:] != annotations.shape[2:]:
                raise InputError(f"the predictor returned shape {probs.shape}; expected (B, M, C, *S) = "
                                 f"{want + ('C',) + annotations.shape[2:]}")
            num_classes = probs.shape[2]
            samples = probs.argmax(axis=2)
            for b in range(len(batch)):
                i = start + b
                scores = metrics.score_image(samples[b], annotations[i], probs[b], num_classes,
                                             reference=reference, empty=empty, ece_background=ece_background)
                rows.append({"index": i, "id": ids[i] if ids is not None else str(i), **scores})
            if bar is not None:
                bar.update(len(batch))
                bar.set_postfix(ged=f"{np.nanmean([r['ged'] for r in rows]):.3f}")
            elif callable(progress):
                progress(len(rows), n)
    finally:
        if bar is not None:
            bar.close()
    metric_rows = [{k: v for k, v in r.items() if k not in ("index", "id")} for r in rows]
    return {"per_image": rows, "summary": metrics.aggregate(metric_rows), "num_images": n,
            "num_samples": int(num_samples), "seconds": time.perf_counter() - started,
            "conventions": {"reference": reference, "empty": empty, "ece_background": ece_background,
                            "ece_bins": metrics.ECE_BINS, "num_samples": int(num_samples)}}


# -- diffusion models as predictors ----------------------------------------------------------------

class ModelPredictor:
    """``predict(images, M)`` for a DiffusionSegmenter and its card (see ``predictor_from_model``).
    Keeps the sampler's extras (e.g. HSRDiff kappa, (B, M, steps) per call) and timesteps of the last
    calls, for the figures."""

    def __init__(self, model: Any, card: Mapping[str, Any], sampler_config: Any = None, seed: int = 0,
                 device: str | torch.device = "cpu", batch_size: int | None = None,
                 keep_extras: bool = False):
        from .sampler import SamplerConfig
        self.model = model.to(torch.device(device))
        self.card, self.seed, self.batch_size, self.keep_extras = card, int(seed), batch_size, keep_extras
        self.config = sampler_config if sampler_config is not None else sampler_config_from_card(card)
        if not isinstance(self.config, SamplerConfig):
            raise TypeError("sampler_config must be a SamplerConfig")
        inputs = card.get("input", {}) or {}
        self.preprocessing = inputs.get("preprocessing")
        self.size = tuple(int(s) for s in inputs["size"]) if inputs.get("size") else None
        self.extras: list[dict[str, torch.Tensor]] = []
        self.timesteps: list[int] = []

    def prepare(self, images: np.ndarray) -> torch.Tensor:
        """Raw images (B, *S) or (B, Cin, *S) -> preprocessed float32 (B, Cin, *size)."""
        from .volumes import preprocess
        x = np.asarray(images)
        sd = int(self.model.spatial_dims)
        if x.ndim == sd + 1:
            x = x[:, None]
        if x.ndim != sd + 2:
            raise InputError(f"images of shape {np.shape(images)} do not fit a {sd}D model")
        x = np.stack([preprocess(img, self.preprocessing) for img in x])
        t = torch.from_numpy(x).float()
        if self.size is not None and tuple(t.shape[2:]) != self.size:
            t = F.interpolate(t, size=self.size, mode="bilinear" if sd == 2 else "trilinear",
                              align_corners=False)
        return t

    def sample_y0(self, images: np.ndarray, num_samples: int) -> torch.Tensor:
        """Hypotheses y0 (B, M, C, *size) of raw images on the model's grid. Sampling never reads
        ``tau_out``, so one y0 serves every tau (``training.calibrate``)."""
        from .sampler import sample
        res = sample(self.model, self.prepare(images), num_samples, self.config, seed=self.seed,
                     batch_size=self.batch_size)
        self.timesteps = list(res.timesteps)
        if self.keep_extras:
            self.extras.append(dict(res.extras))
        return res.y0

    def probabilities(self, y0: torch.Tensor, spatial: Sequence[int], tau: float | None = None) -> torch.Tensor:
        """softmax(y0 / tau) over the class channel (PGRD Sec. II-E; tau defaults to the model's
        tau_out), resized back to the annotations' grid ``spatial`` if it differs (a convex blend
        keeps sum 1)."""
        from .diffusion import to_probabilities
        tau = float(self.model.tau_out if tau is None else tau)
        p = to_probabilities(y0.flatten(0, 1), tau).reshape(y0.shape)
        spatial = tuple(int(s) for s in spatial)
        if tuple(p.shape[3:]) != spatial:
            B, M = p.shape[:2]
            mode = "bilinear" if len(spatial) == 2 else "trilinear"
            p = F.interpolate(p.flatten(0, 1), size=spatial, mode=mode, align_corners=False)
            p = p.reshape(B, M, *p.shape[1:])
        return p

    def __call__(self, images: np.ndarray, num_samples: int) -> torch.Tensor:
        spatial = tuple(np.shape(images)[-int(self.model.spatial_dims):])
        return self.probabilities(self.sample_y0(images, num_samples), spatial)


def sampler_config_from_card(card: Mapping[str, Any], **overrides: Any) -> Any:
    """The card's default SamplerConfig, with fields replaced by the non-None ``overrides``."""
    from .sampler import SamplerConfig
    names = {f.name for f in fields(SamplerConfig)}
    given = dict(card.get("sampling") or {})
    cfg = {k: v for k, v in given.items() if k in names}
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return SamplerConfig(**cfg)


def predictor_from_model(model: Any, card: Mapping[str, Any], sampler_config: Any = None, seed: int = 0,
                         device: str | torch.device = "cpu", batch_size: int | None = None,
                         keep_extras: bool = False) -> ModelPredictor:
    """A predictor for a diffusion model: card preprocessing (``volumes.preprocess``) of the raw
    images, bilinear resize to the card's ``input.size`` if the data differ (probabilities resized
    back), ``sampler.sample`` with ``seed`` (hypothesis k gets noise seed (seed, k) on every image),
    ``softmax(y0 / tau_out)``. ``batch_size`` = (image, sample) pairs per network call."""
    return ModelPredictor(model, card, sampler_config, seed, device, batch_size, keep_extras)


# -- reporting -------------------------------------------------------------------------------------

def _is_summary(x: Mapping[str, Any]) -> bool:
    return all(isinstance(v, (tuple, list)) and len(v) == 2 for v in x.values())


def _cell(summary: Mapping[str, Any], key: str, scale: float, digits: int) -> str:
    if key not in summary:
        return "-"
    mean, std = summary[key]
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    std_s = "" if std is None or (isinstance(std, float) and math.isnan(std)) else f" ± {std * scale:.{digits}f}"
    m = mean * scale
    m = 0.0 if abs(m) < 0.5 * 10 ** -digits else m  # no "-0.000" for a GED that rounds to zero
    return f"{m:.{digits}f}{std_s}"


def describe(conventions: Mapping[str, Any]) -> list[str]:
    """The conventions as report lines (the metric conventions via ``metrics.describe_conventions``)."""
    c = dict(conventions)
    lines = [metrics.describe_conventions(c.get("empty", metrics.DEFAULT_EMPTY),
                                          c.get("reference", metrics.DEFAULT_REFERENCE),
                                          bool(c.get("ece_background", True)),
                                          int(c.get("ece_bins", metrics.ECE_BINS)))]
    ref = {"each": "each annotation in turn, averaged", "majority": "the per-voxel majority of the annotations",
           "soft": "the per-voxel mean of the annotations as a soft label"}
    lines.append(f"Empty masks: {c.get('empty', metrics.DEFAULT_EMPTY)!r} (IoU and Dice of two empty masks "
                 f"{ {'one': '= 1', 'nan': 'excluded', 'zero': '= 0'}.get(c.get('empty', 'one'), '?') }).")
    lines.append(f"Reference for DSC / NLL / ECE: {ref.get(c.get('reference', 'each'), c.get('reference'))}; "
                 "DSC of the fused mask argmax(p_bar).")
    lines.append(f"ECE background: {'included (all voxels)' if c.get('ece_background', True) else 'excluded'}.")
    lines.append("Per image first, then mean ± population std over images. NLL in nats and ECE as a fraction, "
                 "both x100 as PGRD Table I prints them.")
    for k in ("num_images", "num_samples", "sampler", "steps", "seed", "data", "model"):
        if k in c and c[k] is not None:
            lines.append(f"{k}: {c[k]}")
    return lines


def format_table(summary: Mapping[str, Any], conventions: Mapping[str, Any], method: str = "model") -> str:
    """Markdown tables shaped like HSRDiff Table 1 (+ mIoU of Table 3) and PGRD Table I, with the
    conventions listed under them. ``summary``: one {metric: (mean, std)} or {method: summary}."""
    rows = {method: summary} if _is_summary(summary) else dict(summary)
    m = conventions.get("num_samples", "")
    sub = f"_{m}" if m else ""
    head1 = ["Method"] + [f"{label}{sub if key != 'miou' else ''} ({arrow})".replace(" ()", "")
                          for key, label, arrow in SAMPLE_SET]
    head2 = ["Method"] + [f"{label} ({arrow})" for _, label, arrow in CALIBRATION]
    out = [f"Sample-set metrics (HSRDiff Table 1 / 3), {m} samples per image", "",
           "| " + " | ".join(head1) + " |", "|" + " --- |" * len(head1)]
    for name, s in rows.items():
        out.append("| " + " | ".join([name] + [_cell(s, k, 1.0, 3) for k, _, _ in SAMPLE_SET]) + " |")
    out += ["", "Segmentation and calibration (PGRD Table I), fused p_bar = mean of the samples' probabilities",
            "", "| " + " | ".join(head2) + " |", "|" + " --- |" * len(head2)]
    for name, s in rows.items():
        out.append("| " + " | ".join([name] + [_cell(s, k, 100.0, 2) for k, _, _ in CALIBRATION]) + " |")
    out += ["", "Conventions:", ""] + [f"- {line}" for line in describe(conventions)]
    return "\n".join(out) + "\n"


def _jsonable(x: Any) -> Any:
    """NaN -> null so the file is strict JSON; tuples -> lists."""
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, (np.floating, np.integer)):
        return _jsonable(x.item())
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def write_report(result: Mapping[str, Any], output: str | os.PathLike, method: str = "model",
                 extra: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """metrics.json (everything, per image included) and table.md into ``output``."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    conventions = {**result.get("conventions", {}), "num_images": result.get("num_images")}
    shown = {**conventions, **(extra or {})}  # the table also names the run (model, data, sampler, seed)
    doc = {"method": method, **(extra or {}), "conventions": conventions,
           "conventions_text": describe(shown),
           "summary": {k: {"mean": v[0], "std": v[1]} for k, v in result["summary"].items()},
           "num_images": result.get("num_images"), "num_samples": result.get("num_samples"),
           "seconds": result.get("seconds"), "per_image": result["per_image"]}
    jpath, tpath = out / "metrics.json", out / "table.md"
    jpath.write_text(json.dumps(_jsonable(doc), indent=2) + "\n")
    tpath.write_text(format_table(result["summary"], shown, method))
    return jpath, tpath


# -- the command -----------------------------------------------------------------------------------

def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``diffseg evaluate``."""
    parser.description = ("Score a model on a multi-reader npz (LIDC format): GED, HM-IoU, MDM, diversity, "
                           "mIoU, Dice, NLL, ECE; writes metrics.json and table.md.")
    parser.add_argument("--model", required=True, help="model name or model folder")
    parser.add_argument("--models-dir", action="append", default=[], help="extra folder to search for models")
    parser.add_argument("--data", required=True, help="npz with images (S,H,W) and masks (S,A,H,W)")
    parser.add_argument("--samples", type=int, default=16, help="hypotheses per image (the N of GED_N)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the card's)")
    parser.add_argument("--sampler", choices=("ddpm", "ddim"), default=None, help="default: the card's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="(image, sample) pairs per network call; images per call = max(1, this // samples)")
    parser.add_argument("--max-images", type=int, default=None, help="score N images evenly spaced over the file")
    parser.add_argument("--reference", choices=metrics.REFERENCES, default=metrics.DEFAULT_REFERENCE,
                        help="reference for Dice/NLL/ECE with several annotations")
    parser.add_argument("--empty", choices=metrics.EMPTY_CONVENTIONS, default=metrics.DEFAULT_EMPTY,
                        help="IoU of two empty masks: one (=1), nan (excluded), zero (=0)")
    parser.add_argument("--ece-foreground", action="store_true", help="ECE without pure-background voxels")
    parser.add_argument("--output", required=True, help="folder for metrics.json and table.md")
    return parser


def run(args: argparse.Namespace) -> int:
    """Exit codes as ``diffseg sample``: 0 done, 2 bad input (message on stderr), 130 interrupted."""
    from .modelfile import load_model, resolve_model
    try:
        if args.samples < 1:
            raise InputError("--samples must be at least 1")
        if args.max_images is not None and args.max_images < 1:
            raise InputError("--max-images must be at least 1")
        folder = resolve_model(args.model, args.models_dir)
        model, card = load_model(folder, args.device)
        data, view = data_for_model(load_multireader_npz(args.data), card, args.max_images)
        hi = int(data.masks.max())
        if hi >= int(model.num_classes):
            raise InputError(f"{args.data} has labels up to {hi} but the model has {model.num_classes} classes")
        config = sampler_config_from_card(card, method=args.sampler, steps=args.steps)
        predict = predictor_from_model(model, view, config, args.seed, args.device, args.batch_size)
        images_per_call = max(1, args.batch_size // args.samples)
        result = evaluate_predictor(predict, data.images, data.masks, args.samples, images_per_call, True,
                                    reference=args.reference, empty=args.empty,
                                    ece_background=not args.ece_foreground,
                                    ids=[data.item_id(i) for i in range(len(data))])
        extra = {"model": card.get("name", str(folder)), "model_folder": str(folder),
                 "data": str(data.path), "sampler": config.method, "steps": len(predict.timesteps),
                 "sampler_config": asdict(config), "seed": args.seed, "device": str(args.device)}
        jpath, tpath = write_report(result, args.output, str(card.get("name", "model")), extra)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(Path(tpath).read_text())
    print(f"wrote {jpath} and {tpath}")
    return 0
