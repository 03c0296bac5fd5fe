"""``diffseg evaluate``: score a model on a multi-reader set with the sample-set and calibration metrics.

Why one path for every method: the published numbers (HSRDiff Table 1, PGRD Table I) are only
comparable when the same metric code, the same conventions and the same sample count score every
method. So a method enters as a *predictor* ``predict(images (B, *S) raw, num_samples) -> (B, M, C, *S)``
class probabilities; diffusion models through ``predictor_from_model``, which runs every image through
``pipeline.Segmenter`` exactly as ``diffseg sample`` runs a file (card preprocessing of the whole image,
the crop model's box as the ROI, resize to the card's input size, ``sampler.sample``, y0 resized back,
``softmax(y0 / tau_out)``), so the scores are of what users get; the baselines of
``training/baselines.py`` through their ``sample_probabilities``. Hypothesis m's mask is the argmax of
its probabilities; every number comes from ``metrics.score_image`` and ``metrics.aggregate``
(per image first, then mean and population std over images), never re-implemented here.

Data: the multi-reader npz format of ``shared/data/lidc128`` (``images`` (S, H, W), ``masks``
(S, A, H, W), optional ``patient``, ``nodule``, ``slice``), so any held-out file in that format can be
scored.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from . import metrics
from .journal import Journal
from ..networks.checks import InputError
from ..sampling.diffusion import to_probabilities
from ..files.modelfile import DEFAULT_SAMPLES
from ..pipeline import Model, Request, Segmenter, atomic_folder, check_output, jsonable, volumes_from_array

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
    #: a crop model's scoring box (array-order slices): the masks are cut to it, the images are whole
    #: (the pipeline preprocesses the whole image and samples the box, as ``diffseg sample --roi``)
    box: tuple[slice, ...] | None = None

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
                              pick(self.slice), self.path, self.box)

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

    def centre_box(self, size: Sequence[int]) -> "MultiReaderSet":
        """The set scored in the centre box of ``size`` of every image: masks cut to the box, images kept
        whole (``box``). A crop model is scored on the box it was trained on: the LIDC crops are centred
        on the nodule, and a crop model must not see a resized (rescaled) image."""
        spatial = self.images.shape[1:]
        if len(size) != len(spatial) or any(int(z) > s for z, s in zip(size, spatial)):
            raise InputError(f"the model's input size {list(size)} does not fit in the data's {list(spatial)}")
        box = tuple(slice((s - int(z)) // 2, (s - int(z)) // 2 + int(z)) for z, s in zip(size, spatial))
        return MultiReaderSet(self.images, self.masks[(slice(None), slice(None), *box)], self.patient,
                              self.nodule, self.slice, self.path, box)

    def centre_crop(self, size: Sequence[int]) -> "MultiReaderSet":
        """Images and masks cut to the centre box of ``size`` (for predictors outside the pipeline, e.g.
        the baselines of training/baselines.py, which take the box as their image)."""
        boxed = self.centre_box(size)
        return MultiReaderSet(boxed.shown_images(), boxed.masks, self.patient, self.nodule, self.slice, self.path)

    def shown_images(self) -> np.ndarray:
        """The images as scored: cut to ``box`` when there is one (figures)."""
        return self.images if self.box is None else self.images[(slice(None), *self.box)]

    def item_id(self, i: int) -> str:
        if self.patient is None:
            return str(i)
        tag = str(self.patient[i])
        if self.nodule is not None:
            tag += f"-n{int(self.nodule[i])}"
        if self.slice is not None:
            tag += f"-s{int(self.slice[i])}"
        return tag


def data_for_model(data: MultiReaderSet, card: Mapping[str, Any], max_items: int | None = None) -> MultiReaderSet:
    """The items a model is scored on: stacks of the card's depth for a 3D model on 2D slices
    (``MultiReaderSet.stacks``), ``max_items`` evenly spaced (``subset``), and for a crop model (card
    ``input.roi_required``) the centre box of its input size (``centre_box``), which the predictor
    samples as the ROI of the whole image. Every scoring command goes through here."""
    from ..files.modelfile import roi_required
    if int(card["architecture"]["spatial_dims"]) == 3 and data.images.ndim == 3:
        size = (card.get("input") or {}).get("size")
        if not size:
            raise InputError("a 3D model needs the card's input size to stack 2D slices")
        data = data.stacks(int(size[0]))
    data = data.subset(max_items)
    return data.centre_box(card["input"]["size"]) if roi_required(dict(card)) else data


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


def shard() -> tuple[int, int]:
    """(rank, world size) of a ``torch.distributed`` run (``torchrun``), (0, 1) otherwise."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def evaluate_predictor(predict: Predictor, images: np.ndarray, annotations: np.ndarray,
                       num_samples: int = DEFAULT_SAMPLES, batch_size: int = 1, progress: Any = False, *,
                       reference: str = metrics.DEFAULT_REFERENCE, empty: str = metrics.DEFAULT_EMPTY,
                       ece_background: bool = True, ids: Sequence[str] | None = None,
                       journal: Journal | None = None) -> dict[str, Any]:
    """Score ``predict`` on every image: ``{"per_image": [...], "summary": {metric: (mean, std)}}``.

    images (N, *S) as stored; annotations (N, A, *S). ``batch_size`` images go to ``predict`` at a time.
    ``progress``: True for a tqdm bar (stderr), or a callback ``progress(done, total)``.

    Under ``torch.distributed`` (``torchrun``), rank r of W scores images r, r + W, ... and every rank
    returns all N rows, gathered and put back in image order, so the summary is the one a single process
    computes: an image's hypotheses depend only on (seed, hypothesis), never on which process draws them.
    ``progress`` then counts this rank's images.

    ``journal`` (``diffseg evaluate --resume``): the images it already holds are not scored again (rank 0
    reads them and shares them out, so every rank splits the same remaining images), each new row is
    kept in it as soon as it is scored, and ``resumed`` counts the rows taken from it. ``seconds`` is
    this call's time.
    """
    images, annotations = np.asarray(images), np.asarray(annotations)
    n = len(images)
    if n == 0 or len(annotations) != n:
        raise InputError(f"need as many annotation sets as images (got {n} images, {len(annotations)} sets)")
    if int(num_samples) < 1:
        raise InputError("num_samples must be at least 1")
    rank, world = shard()
    done: dict[int, dict[str, Any]] = {}
    if journal is not None:
        done = journal.rows(ids) if rank == 0 else {}
        if world > 1:
            box = [done]
            torch.distributed.broadcast_object_list(box, src=0)
            done = box[0]
        done = {i: r for i, r in done.items() if i < n}
    mine = [i for i in range(n) if i not in done][rank::world]
    bar = None
    if progress is True:
        from tqdm import tqdm
        bar = tqdm(total=len(mine), unit="image", desc="evaluate", file=sys.stderr, dynamic_ncols=True)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    step = max(1, int(batch_size))
    try:
        for start in range(0, len(mine), step):
            index = mine[start:start + step]
            probs = _as_numpy(predict(images[index], int(num_samples)))
            want = (len(index), int(num_samples))
            if probs.ndim != annotations.ndim + 1 or probs.shape[:2] != want or \
                    probs.shape[3:] != annotations.shape[2:]:
                raise InputError(f"the predictor returned shape {probs.shape}; expected (B, M, C, *S) = "
                                 f"{want + ('C',) + annotations.shape[2:]}")
            num_classes = probs.shape[2]
            samples = probs.argmax(axis=2)
            for b, i in enumerate(index):
                scores = metrics.score_image(samples[b], annotations[i], probs[b], num_classes,
                                             reference=reference, empty=empty, ece_background=ece_background)
                rows.append({"index": i, "id": ids[i] if ids is not None else str(i), **scores})
                if journal is not None:
                    journal.append(rows[-1])
            if bar is not None:
                bar.update(len(index))
                bar.set_postfix(ged=f"{np.nanmean([r['ged'] for r in rows]):.3f}")
            elif callable(progress):
                progress(len(rows), len(mine))
    finally:
        if bar is not None:
            bar.close()
        if journal is not None:
            journal.close()
    seconds = time.perf_counter() - started
    if world > 1:
        parts: list[Any] = [None] * world
        torch.distributed.all_gather_object(parts, (rows, seconds))
        rows = sorted((r for part, _ in parts for r in part), key=lambda r: r["index"])
        seconds = max(t for _, t in parts)  # the wall clock of the slowest rank
    rows = sorted([*rows, *done.values()], key=lambda r: r["index"])
    metric_rows = [{k: v for k, v in r.items() if k not in ("index", "id")} for r in rows]
    return {"per_image": rows, "summary": metrics.aggregate(metric_rows), "num_images": n,
            "num_samples": int(num_samples), "seconds": seconds, "resumed": len(done),
            "conventions": {"reference": reference, "empty": empty, "ece_background": ece_background,
                            "ece_bins": metrics.ECE_BINS, "num_samples": int(num_samples)}}


# -- diffusion models as predictors ----------------------------------------------------------------

class ModelPredictor:
    """``predict(images, M)`` for a ``pipeline.Model`` (see ``predictor_from_model``): every image through
    ``pipeline.Segmenter`` as ``diffseg sample`` runs a file. Keeps the last call's results and timesteps."""

    def __init__(self, model: Any, request: Any = None, box: tuple[slice, ...] | None = None,
                 sample_fn: Callable[..., Any] | None = None):
        if not isinstance(model, Model):
            raise TypeError("predictor_from_model needs a pipeline.Model (Model.load)")
        self.model, self.box = model, box
        self.request = (request or Request()).check()
        self.segmenter = Segmenter(model, sample_fn)
        self.config = model.sampler_config(method=self.request.sampler, steps=self.request.steps,
                                           eta=self.request.eta, spacing=self.request.spacing)
        self.results: list[Any] = []

    @property
    def timesteps(self) -> list[int]:
        """The sampler's timesteps (``plan`` refuses a step count the schedule cannot walk)."""
        return self.model.network.schedule.timesteps(self.config.steps, self.config.spacing)

    def inputs(self, image: np.ndarray) -> Any:
        """One raw image (*S) or (Cin, *S) as the pipeline's input (spacing 1, identity direction)."""
        sd = int(self.model.card["architecture"]["spatial_dims"])
        x = np.asarray(image)
        if x.ndim not in (sd, sd + 1):
            raise InputError(f"an image of shape {x.shape} does not fit a {sd}D model")
        return volumes_from_array(x, channels=x.ndim == sd + 1)

    def request_for(self, num_samples: int) -> Any:
        """The request of one image: ``num_samples`` hypotheses, ROI = ``box`` (index order i, j[, k])."""
        roi = None
        if self.box is not None:
            roi = [s.start for s in reversed(self.box)] + [s.stop for s in reversed(self.box)]
        return replace(self.request, samples=int(num_samples), roi=roi, roi_mm=None)

    def plan(self, image: np.ndarray, num_samples: int) -> Any:
        """Every check of the request against the model and ``image``, nothing sampled."""
        return self.segmenter.plan(self.inputs(image), self.request_for(num_samples))

    def run(self, images: np.ndarray, num_samples: int) -> list[Any]:
        """One ``pipeline.Result`` per image (``num_samples`` hypotheses, the ROI = ``box``)."""
        request = self.request_for(num_samples)
        self.results = [self.segmenter(self.inputs(img), request) for img in np.asarray(images)]
        return self.results

    def sample_y0(self, images: np.ndarray, num_samples: int) -> torch.Tensor:
        """Hypotheses y0 (B, M, C, *S) on the scored grid (the box for crop models). Sampling never reads
        ``tau_out``, so one y0 serves every tau (``training.calibrate``)."""
        return torch.stack([r.y0 for r in self.run(images, num_samples)])

    def probabilities(self, y0: torch.Tensor, tau: float | None = None) -> torch.Tensor:
        """softmax(y0 / tau) over the class channel (PGRD Sec. II-E; tau defaults to the model's tau_out),
        as ``pipeline.Result.probabilities``."""
        tau = float(self.model.tau_out if tau is None else tau)
        return to_probabilities(y0.flatten(0, 1), tau).reshape(y0.shape)

    def __call__(self, images: np.ndarray, num_samples: int) -> torch.Tensor:
        return torch.stack([r.probabilities() for r in self.run(images, num_samples)])


def predictor_from_model(model: Any, request: Any = None, box: tuple[slice, ...] | None = None,
                         sample_fn: Callable[..., Any] | None = None) -> ModelPredictor:
    """A predictor for a diffusion model (``pipeline.Model``): each raw image (2D, or a 3D stack) through
    ``pipeline.Segmenter`` with ``request`` (``pipeline.Request``; its ``samples`` and ROI are set per call:
    M and ``box``, a crop model's ``MultiReaderSet.box``). Hypothesis k gets noise seed (seed, k) on
    every image. ``sample_fn``: another sampler with ``sampler.sample``'s signature (benchmarks)."""
    return ModelPredictor(model, request, box, sample_fn)


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


def write_report(result: Mapping[str, Any], output: str | os.PathLike, method: str = "model",
                 extra: Mapping[str, Any] | None = None, overwrite: bool = False) -> tuple[Path, Path]:
    """metrics.json (everything, per image included) and table.md in the folder ``output``, written as
    ``diffseg sample`` writes its folder (``pipeline.atomic_folder``: refused if it exists unless
    ``overwrite``; all or nothing)."""
    out = check_output(output, overwrite)
    conventions = {**result.get("conventions", {}), "num_images": result.get("num_images")}
    shown = {**conventions, **(extra or {})}  # the table also names the run (model, data, sampler, seed)
    doc = {"method": method, **(extra or {}), "conventions": conventions,
           "conventions_text": describe(shown),
           "summary": {k: {"mean": v[0], "std": v[1]} for k, v in result["summary"].items()},
           "num_images": result.get("num_images"), "num_samples": result.get("num_samples"),
           "seconds": result.get("seconds"), "per_image": result["per_image"]}
    with atomic_folder(out, overwrite) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(jsonable(doc), indent=2, allow_nan=False) + "\n")
        (tmp / "table.md").write_text(format_table(result["summary"], shown, method))
    return out / "metrics.json", out / "table.md"
