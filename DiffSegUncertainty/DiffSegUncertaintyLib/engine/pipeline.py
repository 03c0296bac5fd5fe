"""The sampling pipeline: the one way to turn images into hypotheses, uncertainty maps and output files.

    from DiffSegUncertaintyLib.engine.pipeline import Model, Request, segment
    model = Model.load("lidc-hsrdiff-small-cpu")      # verified weights; the card's sampler and preprocessing
    result = segment(model, ["ct.nrrd"], Request(samples=4, steps=10, roi=[32, 32, 0, 96, 96, 9]))
    print(result.summary()["spread"]["mm3"])          # the hypotheses' foreground volumes: mean, std, min, max
    result.write("out")                               # the files of `diffseg sample`, written atomically

(the README's example, run as written by Testing/cli/test_readme_example.py).

Why one pipeline: ``diffseg sample``, the Slicer background run (which is ``diffseg sample``),
``diffseg evaluate``, calibration, the figures and the benchmarks must all score and show exactly what a
user gets, so they all go through ``Segmenter.plan`` (every check, before any work) and
``Segmenter.run`` (sampling, the maps), and the files are written only by ``Result.write``.

The contract:
- ``Request`` holds what a caller may choose; ``Request.check`` refuses non-finite numbers and values
  out of range; ``Segmenter.plan`` checks the rest against the model and the image (channels, 2D/3D,
  the ROI inside the image, sampler steps, device, precision, a memory estimate against what the host
  has). Every refusal is a ``RequestError`` naming the request field, so the command line can name its
  flag (``cli.FLAGS``) and Python users the argument.
- The loaded ``Model`` carries its card's defaults (sampler, steps, tau_out, preprocessing, input size);
  ``sampler_config`` is the one place a SamplerConfig is built from a card.
- A run whose hypotheses or maps are not finite raises ``SamplingFailed``: nothing is returned and
  nothing written.
- ``Result.write`` writes into a hidden sibling folder renamed into place at the end
  (``atomic_folder``), so a reader never sees half an output, a failure or a signal leaves the previous
  state, and a folder left by a killed run is removed by the next run into the same place.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from .errors import InputError
from .sampling.inference import Roi, check_roi, run_model
from .files.modelfile import DEFAULT_SAMPLES, PRECISION_CHOICES, ModelFileError, load_model, read_card, resolve_model, roi_required
from .sampling.sampler import CancelFn, ProgressFn, SamplerConfig, check_precision, sample
from .analysis.uncertainty import UncertaintyMaps, summarize
from .files.outputs import CONSENSUS_FILE, MAP_FILES, OUTPUT_FILES, SEGMENTATION_FILE, SUMMARY_FILE
from .files.segfile import write_seg
from .files.volumes import (PALETTE, Geometry, InputVolumes, Segment, canonical_orientation, physical_box_to_index,
                      preprocess, read_inputs, write_volume)

DEVICES = ("auto", "cpu", "cuda", "mps")
SAMPLERS = ("ddpm", "ddim")
SPACINGS = ("leading", "trailing", "linspace")
#: Host memory kept free beside the estimate (the interpreter, torch, MONAI, the network's activations).
MEMORY_MARGIN = 1 << 30


class RequestError(InputError):
    """A request that cannot run. ``field`` is the Request field (or "inputs", "model", "output") at
    fault; the message speaks of it, e.g. ``samples must be at least 1 (got 0)``."""

    def __init__(self, field_name: str, detail: str):
        super().__init__(f"{field_name} {detail}")
        self.field, self.detail = field_name, detail


class SamplingFailed(RuntimeError):
    """The sampler produced non-finite hypotheses or maps (broken weights or numbers): nothing is kept."""


# -- the request -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    """What a caller chooses for one run; None means the model card's default.

    samples: hypotheses M. steps, sampler, eta, spacing: the reverse chain (card defaults). seed: hypothesis k
    draws its noise from (seed, k). roi: index box (i0, j0[, k0], i1, j1[, k1]), start inclusive, stop
    exclusive; roi_mm: physical LPS box in mm (voxels whose centres lie inside); point / point_mm: a voxel
    index (i, j[, k]) or an LPS point in mm inside the lesion: the model's input box is centred on it and a
    2D model grows the slice range while its hypotheses find the lesion, at most ``max_slices`` slices
    (engine/prompt.py); at most one of roi, roi_mm, point, point_mm.
    device: auto (cuda, else mps, else cpu), cpu, cuda, mps. precision: auto (the default,
    ``resolve_precision``: bf16 where the hardware runs it natively, else fp32; issue 16), fp32, or bf16
    (networks under autocast). batch_size: (slice or patch, hypothesis) pairs per network call (None: the device's
    default). overlap: 3D sliding-window overlap in [0, 1). channels_last: the networks' memory format; None
    (the default, ``resolve_channels_last``) = channels-last where precision resolves to bf16 on a CPU.
    """

    samples: int = DEFAULT_SAMPLES
    steps: int | None = None
    sampler: str | None = None
    eta: float | None = None
    spacing: str | None = None
    seed: int = 0
    roi: Sequence[int] | None = None
    roi_mm: Sequence[float] | None = None
    point: Sequence[int] | None = None
    point_mm: Sequence[float] | None = None
    max_slices: int = 64
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None
    overlap: float = 0.25
    channels_last: bool | None = None

    def check(self) -> "Request":
        """Types, finiteness and ranges of every field (what needs no model or image); returns self."""
        def integer(name: str, value: Any, low: int, optional: bool = False) -> None:
            if value is None and optional:
                return
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise RequestError(name, f"must be a whole number (got {value!r})")
            if value < low:
                raise RequestError(name, f"must be at least {low} (got {value})")

        def number(name: str, value: Any) -> float:
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise RequestError(name, f"must be a number (got {value!r})") from None
            if not math.isfinite(v):
                raise RequestError(name, f"must be a finite number (got {value})")
            return v

        integer("samples", self.samples, 1)
        integer("steps", self.steps, 1, optional=True)
        integer("batch_size", self.batch_size, 1, optional=True)
        integer("max_slices", self.max_slices, 1)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise RequestError("seed", f"must be a whole number (got {self.seed!r})")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise RequestError("sampler", f"must be one of {', '.join(SAMPLERS)} (got {self.sampler!r})")
        if self.eta is not None and not 0 <= number("eta", self.eta) <= 1:
            raise RequestError("eta", f"must be in [0, 1] (DDIM: 0 deterministic, 1 DDPM-like; got {self.eta})")
        if self.spacing is not None and self.spacing not in SPACINGS:
            raise RequestError("spacing", f"must be one of {', '.join(SPACINGS)} (got {self.spacing!r})")
        if not 0 <= number("overlap", self.overlap) < 1:
            raise RequestError("overlap", f"must be in [0, 1) (got {self.overlap})")
        if self.device not in DEVICES:
            raise RequestError("device", f"must be one of {', '.join(DEVICES)} (got {self.device!r})")
        if self.channels_last is not None and not isinstance(self.channels_last, bool):
            raise RequestError("channels_last", f"must be True, False or None (auto), got {self.channels_last!r}")
        if self.precision not in PRECISION_CHOICES:
            raise RequestError("precision", f"must be one of {', '.join(PRECISION_CHOICES)} (got {self.precision!r})")
        given = [n for n in ("roi", "roi_mm", "point", "point_mm") if getattr(self, n) is not None]
        if len(given) > 1:
            raise RequestError(given[0], f"and {given[1]} were both given: pass one box or one point")
        for name, pt in (("point", self.point), ("point_mm", self.point_mm)):
            if pt is None:
                continue
            if len(pt) not in (2, 3):
                raise RequestError(name, f"needs 2 numbers (2D) or 3 (3D), got {len(pt)}")
            values = [number(name, v) for v in pt]
            if name == "point" and any(v != int(v) for v in values):
                raise RequestError(name, f"must hold a voxel index (whole numbers), got {list(pt)}")
        for name, box in (("roi", self.roi), ("roi_mm", self.roi_mm)):
            if box is None:
                continue
            if len(box) not in (4, 6):
                raise RequestError(name, f"needs 4 numbers (2D) or 6 (3D), got {len(box)}")
            values = [number(name, v) for v in box]
            if name == "roi" and any(v != int(v) for v in values):
                raise RequestError(name, f"must hold voxel indices (whole numbers), got {list(box)}")
        return self


# -- the model with its card's defaults ------------------------------------------------------------

def sampler_config(card: Mapping[str, Any], *, method: str | None = None, steps: int | None = None,
                   eta: float | None = None, spacing: str | None = None, **overrides: Any) -> SamplerConfig:
    """The card's default SamplerConfig with the given (non-None) fields replaced: the one place a
    sampler configuration is built from a card."""
    names = {f.name for f in fields(SamplerConfig)}
    cfg = {k: v for k, v in (card.get("sampling") or {}).items() if k in names}
    given = {"method": method, "steps": steps, "eta": eta, "spacing": spacing, **overrides}
    cfg.update({k: v for k, v in given.items() if v is not None})
    return SamplerConfig(**cfg)


class Model:
    """A loaded network with its card: the card's defaults (sampler, steps, tau_out, preprocessing, input
    size) travel with it. ``Model.load`` verifies the folder (sha256, tensor names and shapes, finite
    weights, a usable default sampler) before anything runs."""

    def __init__(self, network: Any, card: dict[str, Any], folder: Path | None = None):
        self.network, self.card, self.folder = network, card, folder
        try:
            cfg = self.sampler_config()
            self.network.schedule.timesteps(cfg.steps, cfg.spacing)
            if cfg.method not in SAMPLERS or not math.isfinite(float(cfg.eta)) or not 0 <= cfg.eta <= 1:
                raise ValueError(f"method {cfg.method!r}, eta {cfg.eta!r}")
        except (TypeError, ValueError) as e:
            raise ModelFileError(f"the model card of {folder or card.get('name')} has an unusable "
                                 f"sampling entry ({e})") from None

    @classmethod
    def load(cls, model: str | os.PathLike, models_dirs: Sequence[str | os.PathLike] = ()) -> "Model":
        """A model by name (``diffseg models``) or folder, on the CPU (``Segmenter.run`` moves it)."""
        folder = resolve_model(model, models_dirs)
        network, card = load_model(folder, "cpu")
        bad = [k for k, v in network.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise ModelFileError(f"the weights of {folder} hold NaN or infinite values ({len(bad)} tensor(s), "
                                 f"e.g. {bad[0]!r}): the model is broken; train or download it again")
        return cls(network, card, folder)

    @property
    def name(self) -> str:
        return str(self.card["name"])

    @property
    def classes(self) -> list[str]:
        return list(self.card["classes"])

    @property
    def tau_out(self) -> float:
        return float(self.network.tau_out)

    @property
    def input_size(self) -> list[int]:
        return [int(s) for s in self.card["input"]["size"]]

    @property
    def preprocessing(self) -> Any:
        return (self.card.get("input") or {}).get("preprocessing")

    @property
    def roi_required(self) -> bool:
        return roi_required(self.card)

    def sampler_config(self, **overrides: Any) -> SamplerConfig:
        """The card's sampler with ``method``, ``steps``, ``eta`` (and other fields) replaced."""
        return sampler_config(self.card, **overrides)


# -- inputs ----------------------------------------------------------------------------------------

def volumes_from_array(array: np.ndarray, spacing: Sequence[float] | None = None,
                       origin: Sequence[float] | None = None, direction: Sequence[float] | None = None,
                       channels: bool = False) -> InputVolumes:
    """An image held in memory as the pipeline's input: ``array`` (*S) or, with ``channels``, (C, *S),
    in SimpleITK array order ((k, j, i) for 3D); the grid defaults to spacing 1, origin 0, identity."""
    a = np.asarray(array, dtype=np.float32)
    a = a if channels else a[None]
    if a.ndim not in (3, 4) or 0 in a.shape:
        raise RequestError("inputs", f"must be a 2D or 3D array (one per channel); got shape {np.shape(array)}")
    if not np.isfinite(a).all():
        raise RequestError("inputs", f"hold {int((~np.isfinite(a)).sum())} NaN or infinite voxel(s)")
    dim = a.ndim - 1
    # no SimpleITK here: scoring arrays (diffseg evaluate) runs where only torch and numpy are installed
    geo = Geometry(size=tuple(reversed(a.shape[1:])),
                   spacing=tuple(float(v) for v in (spacing if spacing is not None else [1.0] * dim)),
                   origin=tuple(float(v) for v in (origin if origin is not None else [0.0] * dim)),
                   direction=tuple(float(v) for v in (direction if direction is not None
                                                      else np.eye(dim).ravel())))
    return InputVolumes(a, geo, [])


def as_volumes(inputs: Any) -> InputVolumes:
    """Paths (one per channel), an InputVolumes, or an array (``volumes_from_array``)."""
    if isinstance(inputs, InputVolumes):
        return inputs
    if isinstance(inputs, np.ndarray):
        return volumes_from_array(inputs)
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    return read_inputs(list(inputs))


# -- devices and memory ----------------------------------------------------------------------------

def resolve_device(choice: str) -> str:
    """auto: cuda, else mps, else cpu; an explicit device that is not there is a RequestError."""
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if choice == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if choice == "cuda" and not cuda:
        raise RequestError("device", "cuda: no CUDA GPU is available to this torch build (use auto or cpu)")
    if choice == "mps" and not mps:
        raise RequestError("device", "mps: Apple MPS is not available (use auto or cpu)")
    return choice


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively (AMX or AVX512-BF16 in /proc/cpuinfo's flags; False
    where unknown): where it does, bf16 autocast ran 1.2-1.9x faster (docs/benchmarks.md)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(choice: str, device: str) -> str:
    """"auto": bf16 on a CPU with AMX or AVX512-BF16 and on a CUDA GPU that supports bf16, fp32 elsewhere;
    any other choice unchanged."""
    if choice != "auto":
        return choice
    if device == "cuda":
        # native bf16 only (Ampere, compute capability 8.0, and later): older GPUs emulate it, slower than fp32
        return "bf16" if torch.cuda.get_device_capability()[0] >= 8 else "fp32"
    if device == "cpu":
        return "bf16" if cpu_has_bf16() else "fp32"
    return "fp32"


def resolve_channels_last(choice: bool | None, device: str, precision: str) -> bool:
    """None (auto): channels-last for bf16 on a CPU, where it measured 1.05-1.6x faster for every shipped
    model and HSRDiff-light (docs/benchmarks.md \"Default memory format\"); in fp32 it was mixed (-8 % to
    +22 %) and on GPUs it is unmeasured, so contiguous there. True / False unchanged."""
    if choice is not None:
        return bool(choice)
    return device == "cpu" and precision == "bf16"


def available_memory() -> int | None:
    """Bytes of host memory available now (MemAvailable of /proc/meminfo; None where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def estimate_memory(samples: int, classes: int, roi_voxels: int, image_voxels: int) -> int:
    """Host bytes a run holds at its peak, from the sizes that grow with the request: the hypotheses y0
    (M x C x ROI voxels, float32) twice (the sampled volume and its reoriented copy), the label maps and the
    segmentation layers on the whole grid (uint8, M x (C - 1) layers, written compressed from one copy),
    and the float32 maps (mean probability, entropies, variance: 8 grids)."""
    y0 = 4 * samples * classes * roi_voxels
    layers = samples * max(1, classes - 1) * image_voxels * 2 + samples * image_voxels
    maps = 4 * (classes + 8) * image_voxels
    return 2 * y0 + layers + maps


# -- the plan and the result -----------------------------------------------------------------------

@dataclass
class Plan:
    """A checked request: everything ``Segmenter.run`` needs, nothing run yet."""

    request: Request
    volumes: InputVolumes
    image: np.ndarray           # (Cin, *array_shape) float32, preprocessed (card) inside the ROI, 0 outside
    roi: Roi
    config: SamplerConfig
    timesteps: list[int]
    device: str
    memory_bytes: int
    precision: str = "fp32"     # the request's, "auto" resolved for the device
    point: list[int] | None = None  # point / point_mm as a voxel index (i, j[, k]); roi: the box it may grow in
    channels_last: bool = False  # the request's, None (auto) resolved for the device and precision


@dataclass
class Result:
    """The hypotheses of one run and their maps, restricted to the ROI; ``write`` makes the output folder.

    y0: (M, C, *roi_shape) float32 label-embedding hypotheses; maps: ``uncertainty.summarize`` of them; roi:
    the box sampled (the plan's, or the slices a point prompt grew to); growth: the point prompt's record."""

    model: Model
    plan: Plan
    roi: Roi
    y0: torch.Tensor
    maps: UncertaintyMaps
    batch_size: int
    skipped: int
    device: str
    timings: dict[str, float] = field(default_factory=dict)
    growth: dict[str, Any] | None = None

    @property
    def geometry(self) -> Geometry:
        return self.plan.volumes.geometry

    def probabilities(self, tau: float | None = None) -> torch.Tensor:
        """(M, C, *roi_shape) softmax(y0 / tau) over classes (PGRD Sec. II-E; tau: the model's tau_out)."""
        from .sampling.diffusion import to_probabilities
        return to_probabilities(self.y0, float(self.model.tau_out if tau is None else tau))

    def on_grid(self, array: torch.Tensor | np.ndarray, dtype: Any) -> np.ndarray:
        """An array (*lead, *roi_shape) placed on the whole input grid (zero outside the ROI)."""
        a = array.cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
        lead = a.shape[:a.ndim - self.geometry.dimension]
        out = np.zeros(lead + self.geometry.array_shape, dtype=dtype)
        out[(slice(None),) * len(lead) + self.roi.slices()] = a.astype(dtype)
        return out

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` holds (docs/cli.md)."""
        geo, card, maps, req = self.geometry, self.model.card, self.maps, self.plan.request
        classes = card["classes"]
        vol_mm3 = float(np.prod(geo.spacing))
        hyps = []
        for k in range(maps.labels.shape[0]):
            counts = torch.bincount(maps.labels[k].reshape(-1).long(), minlength=len(classes)).tolist()
            hyps.append({
                "index": k + 1, "name": f"Hypothesis {k + 1:02d}",
                "foreground_voxels": int(maps.volumes_voxels[k]),
                "foreground_mm3": float(maps.volumes_voxels[k] * vol_mm3),
                "class_voxels": {classes[c]: int(counts[c]) for c in range(1, len(classes))},
                "class_mm3": {classes[c]: float(counts[c] * vol_mm3) for c in range(1, len(classes))}})
        return {
            "format_version": 1,
            "model": {"name": card["name"], "method": card["method"], "preset": card["preset"],
                      "folder": str(self.model.folder or ""), "sha256": card["weights"]["sha256"]},
            "inputs": [str(Path(p).resolve()) for p in self.plan.volumes.paths],
            "seed": int(req.seed), "samples": int(req.samples), "steps": len(self.plan.timesteps),
            "sampler": asdict(self.plan.config), "device": self.device, "batch_size": self.batch_size,
            "precision": self.plan.precision, "precision_requested": req.precision,
            "channels_last": self.plan.channels_last,
            "channels_last_requested": "auto" if req.channels_last is None else bool(req.channels_last),
            "roi": {"start": list(self.roi.start), "stop": list(self.roi.stop)},
            "point": self.plan.point, "growth": self.growth,  # the slices a point prompt grew to
            "grid": geo.as_dict(), "classes": classes, "tau_out": self.model.tau_out,
            "skipped_constant": self.skipped, "hypotheses": hyps,
            "spread": {"voxels": maps.spread_voxels, "mm3": maps.spread_mm3},
            "timings": dict(self.timings), "files": list(OUTPUT_FILES),
        }

    def segments(self, labels: np.ndarray) -> list[Segment]:
        """One segment per hypothesis and foreground class of the labels (M, *S), with the card's
        terminology (``segfile.write_seg``)."""
        classes = self.model.classes
        multi = len(classes) > 2
        segs = []
        for k in range(labels.shape[0]):
            for c in range(1, len(classes)):
                segs.append(Segment(
                    id=f"hypothesis_{k + 1:02d}" + (f"_{c}" if multi else ""),
                    name=f"Hypothesis {k + 1:02d}" + (f" {classes[c]}" if multi else ""),
                    mask=labels[k] == c,
                    color=PALETTE[(k if not multi else (c - 1)) % len(PALETTE)],
                    tags={"DiffSeg.Hypothesis": str(k + 1), "DiffSeg.Class": str(classes[c]),
                          "DiffSeg.ClassIndex": str(c)}))
        return segs

    def write(self, output: str | os.PathLike, overwrite: bool = False) -> Path:
        """The standard files (``OUTPUT_FILES``) in ``output``, atomically (``atomic_folder``)."""
        out = check_output(output, overwrite)
        t0 = time.perf_counter()
        with atomic_folder(out, overwrite) as tmp:
            geo, maps = self.geometry, self.maps
            # the segmentation holds the ROI's box only, on the input's grid (engine/files/segfile.py)
            write_seg(self.segments(maps.labels.cpu().numpy().astype(np.uint8)), geo, self.roi.start,
                      tmp / SEGMENTATION_FILE, self.model.card.get("terminology"))
            write_volume(self.on_grid(maps.consensus, np.uint8), geo, tmp / CONSENSUS_FILE)
            write_volume(self.on_grid(1 - maps.mean_probability[0], np.float32), geo, tmp / MAP_FILES["mean_probability"])
            write_volume(self.on_grid(maps.predictive_entropy, np.float32), geo, tmp / MAP_FILES["entropy"])
            write_volume(self.on_grid(maps.mutual_information, np.float32), geo, tmp / MAP_FILES["mutual_information"])
            write_volume(self.on_grid(maps.foreground_variance, np.float32), geo, tmp / MAP_FILES["variance"])
            self.timings["write_s"] = time.perf_counter() - t0
            self.timings["total_s"] = sum(v for k, v in self.timings.items() if k != "total_s")
            (tmp / SUMMARY_FILE).write_text(json.dumps(jsonable(self.summary()), indent=2, allow_nan=False) + "\n")
        return out


def jsonable(x: Any) -> Any:
    """NaN and infinities -> null, numpy scalars -> Python, tuples -> lists: strict JSON."""
    if isinstance(x, float):
        return None if not math.isfinite(x) else x
    if isinstance(x, (np.floating, np.integer)):
        return jsonable(x.item())
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


# -- output folders --------------------------------------------------------------------------------

_PARTIAL = re.compile(r"^\.(?P<name>.+)\.partial-(?P<pid>\d+)-")


def check_output(output: str | os.PathLike, overwrite: bool = False) -> Path:
    """The output folder, resolved, after checking it can be written: absent (or a folder and
    ``overwrite``), and its nearest existing parent a writable folder. RequestError("output") if not."""
    out = Path(output).expanduser().absolute()
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise RequestError("output", f"{out} exists and is not a folder")
        if not overwrite:
            raise RequestError("output", f"{out} exists (pass overwrite / --overwrite to replace it)")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise RequestError("output", f"{out} cannot be created: {parent} is a file, not a folder")
    try:  # a probe, removed at once: os.access says yes to root even where nothing can be created (/proc)
        os.rmdir(tempfile.mkdtemp(prefix=".diffseg-probe-", dir=parent))
    except OSError as e:
        raise RequestError("output", f"{out} cannot be created: {parent} is not writable ({e.strerror})") from None
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(out: Path) -> list[Path]:
    """Remove the hidden temporary folders of runs into ``out`` whose process is gone (a killed run)."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for p in out.parent.iterdir():
        m = _PARTIAL.match(p.name)
        if m and m.group("name") == out.name and not _alive(int(m.group("pid"))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """SIGINT/SIGTERM held off while the old and the new folder are swapped (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def atomic_folder(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a hidden temporary sibling of ``out`` to write into; on success it replaces ``out`` in one
    rename (the old folder, if ``overwrite``, is removed after); on any exception or signal it is
    removed, with the parent folders this call created. Created with the umask's mode (not 0700)."""
    out = check_output(out, overwrite)
    remove_stale_partials(out)
    created = []
    p = out.parent
    while not p.exists():
        created.append(p)
        p = p.parent
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        yield tmp
        with _signals_ignored():
            trash = None
            if out.exists():
                trash = out.with_name(f".{out.name}.old-{os.getpid()}")
                os.replace(out, trash)
            os.replace(tmp, out)
            tmp = None
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            for d in created:  # deepest first
                try:
                    d.rmdir()
                except OSError:
                    break


# -- the segmenter ---------------------------------------------------------------------------------

SampleFn = Callable[..., Any]


class Segmenter:
    """Runs requests with one model. ``sample_fn``: the sampler (``sampler.sample``; the benchmarks pass
    the paper-faithful reference to score it through the same pipeline)."""

    def __init__(self, model: Model, sample_fn: SampleFn | None = None):
        self.model = model
        self.sample_fn = sample_fn or sample

    # every check, in the order a user fixes them; nothing heavy runs
    def plan(self, inputs: Any, request: Request | None = None) -> Plan:
        req = (request or Request()).check()
        card, model = self.model.card, self.model
        vols = as_volumes(inputs)
        geo = vols.geometry
        arch = card["architecture"]
        want = int(arch["in_channels"])
        if vols.channels.shape[0] != want:
            names = ", ".join(str(c.get("name", "?")) for c in card["input"].get("channels", []))
            raise RequestError("inputs", f"give {vols.channels.shape[0]} channel(s) but the model "
                               f"{model.name!r} expects {want} input channel(s) ({names})")
        if int(arch["spatial_dims"]) == 3 and (geo.dimension != 3 or 1 in geo.size):
            raise RequestError("inputs", f"are a 2D image (size {list(geo.size)}) but the model "
                               f"{model.name!r} is 3D")
        if model.roi_required and all(getattr(req, n) is None for n in ("roi", "roi_mm", "point", "point_mm")):
            raise RequestError("roi", f"is needed: the model {model.name!r} was trained on boxes around the "
                               "target; give the box (roi or roi_mm) or a point inside it (point or point_mm)")
        roi, point = None, None
        if req.point is not None or req.point_mm is not None:
            from .prompt import box_around_point, point_index, slice_index_axis
            name = "point" if req.point is not None else "point_mm"
            try:
                point = point_index(geo, list(getattr(req, name)), mm=name == "point_mm")
            except InputError as e:
                raise RequestError(name, str(e)) from None
            lo, hi = box_around_point(geo, point, model.input_size, int(arch["spatial_dims"]))
            axis = slice_index_axis(geo)
            if int(arch["spatial_dims"]) == 2 and axis is not None:  # the slices it may grow into
                lo[axis], hi[axis] = 0, geo.size[axis]
            roi = Roi(lo, hi)
        if req.roi is not None or req.roi_mm is not None:
            name = "roi" if req.roi is not None else "roi_mm"
            box = list(req.roi if req.roi is not None else req.roi_mm)
            if len(box) != 2 * geo.dimension:
                raise RequestError(name, f"needs {2 * geo.dimension} numbers for a {geo.dimension}D image, "
                                   f"got {len(box)}")
            lo, hi = box[:geo.dimension], box[geo.dimension:]
            if name == "roi":
                roi = Roi([int(v) for v in lo], [int(v) for v in hi])
            else:
                roi = Roi(*physical_box_to_index(geo, [float(v) for v in lo], [float(v) for v in hi]))
                if any(b <= a for a, b in zip(roi.start, roi.stop)):
                    raise RequestError(name, f"{box} (LPS mm) contains no voxel centre of the image")
        try:
            roi = check_roi(roi, geo)
        except InputError as e:
            raise RequestError("roi", str(e).removeprefix("the ROI ")) from None
        # slice_minmax stretches per axial slice around the ROI (engine/files/slicestretch.py)
        axis = (canonical_orientation(geo.direction, [b - a for a, b in zip(roi.start, roi.stop)]).perm[0]
                if geo.dimension == 3 else None)
        image = preprocess(vols.channels, model.preprocessing, box=roi.slices(), slice_axis=axis,
                           region=roi.slices())  # only the ROI is read by the run
        crop = image[(slice(None),) + roi.slices()]
        if all(float(c.max()) == float(c.min()) for c in crop):
            raise RequestError("inputs", "are constant inside the region to segment: nothing to segment")
        config = model.sampler_config(method=req.sampler, steps=req.steps, eta=req.eta, spacing=req.spacing)
        try:
            timesteps = model.network.schedule.timesteps(config.steps, config.spacing)
        except ValueError as e:
            raise RequestError("steps", str(e).removeprefix("steps ")) from None
        device = resolve_device(req.device)
        precision = resolve_precision(req.precision, device)
        try:
            check_precision(precision, device)
        except ValueError:
            raise RequestError("precision", f"{req.precision} runs on cpu and cuda only (the device is {device}; "
                               "use fp32 or the cpu)") from None
        need = estimate_memory(req.samples, len(model.classes), int(np.prod([b - a for a, b in
                                                                             zip(roi.start, roi.stop)])),
                               int(np.prod(geo.size)))
        have = available_memory()
        if have is not None and need + MEMORY_MARGIN > have:
            raise RequestError("samples", f"{req.samples} need about {need / 2 ** 30:.1f} GiB of memory for the "
                               f"hypotheses and maps but {have / 2 ** 30:.1f} GiB is available: draw fewer "
                               "samples or give a smaller ROI")
        return Plan(req, vols, image, roi, config, timesteps, device, need, precision, point,
                    resolve_channels_last(req.channels_last, device, precision))

    def run(self, plan: Plan, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
            log: Callable[[str], None] | None = None) -> Result:
        """Sample the planned request and compute the maps; SamplingFailed if anything is not finite.
        ``log`` gets a line per slice a point prompt draws."""
        req, timings = plan.request, {}
        t0 = time.perf_counter()
        device = plan.device
        try:
            network = self.model.network.to(device)
        except (RuntimeError, AssertionError) as e:
            if req.device != "auto" or device == "cpu":
                raise
            print(f"diffseg: warning: {device} failed ({e}); using the CPU", file=sys.stderr)
            device = "cpu"
            network = self.model.network.to(device)
        timings["load_model_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        options = dict(batch_size=req.batch_size, progress=progress, cancel=cancel, overlap=req.overlap,
                       precision=plan.precision, channels_last=plan.channels_last, sample_fn=self.sample_fn)
        if plan.point is not None:
            from .prompt import sample_from_point
            res, _ = sample_from_point(network, self.model.card, plan.image, plan.volumes.geometry,
                                            plan.point, req.samples, plan.config, req.seed,
                                            max_slices=req.max_slices, on_slice=log, **options)
        else:
            res = run_model(network, self.model.card, plan.image, plan.volumes.geometry, req.samples,
                            plan.config, req.seed, roi=plan.roi, **options)
        timings["sampling_s"] = time.perf_counter() - t0
        _check_finite(res.y0, "hypotheses")
        t0 = time.perf_counter()
        spacing = plan.volumes.geometry.array_spacing
        maps = summarize(res.y0, self.model.tau_out, spacing)
        timings["uncertainty_s"] = time.perf_counter() - t0
        for name in ("mean_probability", "predictive_entropy", "mutual_information", "foreground_variance"):
            _check_finite(getattr(maps, name), name.replace("_", " "))
        return Result(self.model, plan, res.roi, res.y0, maps, res.batch_size, res.skipped, device, timings,
                      res.extras.get("growth"))

    def __call__(self, inputs: Any, request: Request | None = None, progress: ProgressFn | None = None,
                 cancel: CancelFn | None = None) -> Result:
        return self.run(self.plan(inputs, request), progress, cancel)


def _check_finite(t: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        raise SamplingFailed(f"the model produced {int(bad.sum())} non-finite value(s) (NaN or infinite) in the "
                             f"{what} of {t.numel()}: nothing kept; the weights or the sampler settings are broken")


def segment(model: Model | str | os.PathLike, inputs: Any, request: Request | None = None, *,
            progress: ProgressFn | None = None, cancel: CancelFn | None = None, **fields_: Any) -> Result:
    """Draw hypotheses of ``inputs`` (paths, one per channel, or an array / ``volumes_from_array``) with
    ``model`` (a ``Model`` or a name / folder) for ``request`` (or its fields as keywords)."""
    model = model if isinstance(model, Model) else Model.load(model)
    request = replace(request or Request(), **fields_)
    return Segmenter(model)(inputs, request, progress, cancel)


__all__ = ["OUTPUT_FILES", "Model", "Plan", "Request", "RequestError", "Result", "SamplingFailed", "Segmenter",
           "atomic_folder", "check_output", "estimate_memory", "read_card", "resolve_channels_last", "resolve_device",
           "resolve_precision",
           "sampler_config",
           "segment", "volumes_from_array"]
