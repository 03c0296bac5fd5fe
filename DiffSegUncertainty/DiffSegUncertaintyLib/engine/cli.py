"""The ``diffseg`` command: ``sample``, ``models``, ``evaluate``.

Why it is built this way: the Slicer module runs ``diffseg sample`` as a background process and loads
its output folder, so the command (1) checks everything before it starts the long work and fails with a
one-line message and exit code 2, (2) prints ``progress k/N`` lines a parent can parse, (3) writes into a
hidden temporary folder renamed into place at the end, so a reader never sees half an output and a
cancelled run (SIGINT/SIGTERM, exit 130) leaves nothing behind. torch is imported only by the commands
that need it, so ``diffseg models`` and ``--help`` stay fast.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

from .checks import InputError
from .modelfile import (PRECISIONS, ModelFileError, broken_models, find_models, read_card, resolve_model,
                        roi_required)

EXIT_OK, EXIT_ERROR, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
OUTPUT_FILES = ("hypotheses.seg.nrrd", "consensus.nrrd", "mean_probability.nrrd", "entropy.nrrd",
                "mutual_information.nrrd", "variance.nrrd", "summary.json")


def _err(msg: str) -> None:
    print(f"diffseg: error: {msg}", file=sys.stderr, flush=True)


# -- parser ----------------------------------------------------------------------------------------

def _numbers(text: str, kind: type, what: str) -> list:
    try:
        return [kind(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise InputError(f"{what} must be comma-separated numbers, got {text!r}") from None


def build_parser(with_evaluate: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffseg", description="Probabilistic segmentation with diffusion models (PGRD, HSRDiff): "
        "draw several plausible segmentations of an image and per-voxel uncertainty maps.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("sample", help="draw hypotheses of one image and write them with uncertainty maps",
                       description="Draw hypotheses of one image (one file per input channel, all on "
                       "one grid) and write the outputs listed in docs/cli.md into --output.")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="image file(s) (NRRD, NIfTI, ...), one per "
                   "model input channel, in the card's channel order")
    s.add_argument("--model", required=True, help="model name (see `diffseg models`) or model folder")
    s.add_argument("--output", required=True, help="output folder (created; must not exist unless "
                   "--overwrite)")
    s.add_argument("--samples", type=int, default=16, help="number of hypotheses M (default 16)")
    s.add_argument("--steps", type=int, default=None, help="sampler steps (default: the card's)")
    s.add_argument("--sampler", choices=("ddpm", "ddim"), default=None,
                   help="ddpm (ancestral) or ddim (default: the card's)")
    s.add_argument("--eta", type=float, default=None, help="DDIM eta (default: the card's)")
    s.add_argument("--seed", type=int, default=0, help="random seed; same seed, same device, same "
                   "batch size: identical outputs (default 0)")
    s.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                   help="auto: cuda, else mps, else cpu (default auto)")
    s.add_argument("--batch-size", type=int, default=None, help="(slice or patch, hypothesis) pairs per "
                   "network call; halved automatically on out-of-memory (default: GPU 64 in 2D, 2 patches "
                   "in 3D; CPU a voxel budget, 4 pairs of 128 x 128, measured fastest)")
    s.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default) or bf16: the networks run under bfloat16 autocast, 1.2-1.9x "
                   "faster measured on a CPU with AVX-512-BF16; hypotheses close to fp32's, "
                   "not equal (docs/benchmarks.md); cpu and cuda only")
    s.add_argument("--channels-last", action="store_true", help="run the networks in the channels-last "
                   "memory format (may help on GPUs; no gain measured on CPU)")
    s.add_argument("--overlap", type=float, default=0.25, help="3D models: sliding-window overlap in "
                   "[0, 1) (default 0.25)")
    roi = s.add_mutually_exclusive_group()
    roi.add_argument("--roi", help="index box i0,j0,k0,i1,j1,k1 (start inclusive, stop exclusive; 2D: "
                     "i0,j0,i1,j1); only voxels inside are segmented")
    roi.add_argument("--roi-mm", help="physical box x0,y0,z0,x1,y1,z1 in mm, LPS coordinates as in the "
                     "file (Slicer shows RAS: negate x and y); voxels whose centres are inside")
    roi.add_argument("--point", help="index i,j,k of a voxel inside the lesion: the model's input box is "
                     "centred on it and a 2D model grows the slice range while its hypotheses find the "
                     "lesion (engine/prompt.py)")
    roi.add_argument("--point-mm", help="the same point in mm, LPS coordinates x,y,z as in the file")
    s.add_argument("--max-slices", type=int, default=64, help="--point with a 2D model: at most this many "
                   "slices are sampled (default 64)")
    s.add_argument("--models-dir", action="append", default=[], help="extra folder to search for models "
                   "(repeatable; searched before $DIFFSEG_MODELS and the shipped models)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    s.add_argument("--quiet", action="store_true", help="print nothing but errors (no progress lines)")
    s.set_defaults(func=cmd_sample)

    m = sub.add_parser("models", help="list the models found", description="List the models found in "
                       "--models-dir, $DIFFSEG_MODELS and the shipped models folder.")
    m.add_argument("--models-dir", action="append", default=[], help="extra folder to search")
    m.add_argument("--json", action="store_true", help="print the list as JSON")
    m.set_defaults(func=cmd_models)

    if with_evaluate:
        from . import evaluation
        e = sub.add_parser("evaluate", help="score hypotheses against reference segmentations")
        evaluation.configure_parser(e)
        e.set_defaults(func=evaluation.run)
    else:  # configured only when used, so other commands do not import the metrics code
        e = sub.add_parser("evaluate", help="score hypotheses against reference segmentations "
                           "(`diffseg evaluate --help`)", add_help=False)
        e.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(with_evaluate=bool(argv) and argv[0] == "evaluate")
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
    except InputError as e:
        _err(str(e))
        return EXIT_INPUT


# -- diffseg models --------------------------------------------------------------------------------

def _metrics_text(metrics: Any) -> str:
    """The card's held-out numbers, ``{"split": ..., "values": {name: number}}`` (training.export)."""
    if not isinstance(metrics, dict) or not isinstance(metrics.get("values"), dict):
        return "-"
    parts = [f"{k}={v:.3g}" for k, v in metrics["values"].items()
             if isinstance(v, (int, float)) and k != "step"]
    return (f"{metrics.get('split', '?')}: " + " ".join(parts))[:60] if parts else "-"


def model_rows(models_dirs: Sequence[str] = ()) -> list[dict[str, Any]]:
    rows = []
    for name, folder in sorted(find_models(models_dirs).items()):
        card = read_card(folder)
        arch, samp = card["architecture"], card.get("sampling") or {}
        steps = samp.get("steps") or (arch.get("schedule") or {}).get("T", "?")
        rows.append({"name": name, "method": card["method"], "preset": card["preset"],
                     "dims": f"{arch['spatial_dims']}D", "channels": arch["in_channels"],
                     "classes": len(card["classes"]), "class_names": card["classes"],
                     "steps": f"{samp.get('method', '?')} {steps}",
                     "metrics": _metrics_text(card.get("metrics")), "folder": str(folder)})
    return rows


def cmd_models(args: argparse.Namespace) -> int:
    rows = model_rows(args.models_dir)
    for folder, why in broken_models(args.models_dir).items():
        print(f"diffseg: warning: skipping {folder}: {why}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no models found (use --models-dir or $DIFFSEG_MODELS)", file=sys.stderr)
        return EXIT_OK
    cols = [("name", "NAME"), ("method", "METHOD"), ("preset", "PRESET"), ("dims", "DIMS"),
            ("channels", "CHANNELS"), ("classes", "CLASSES"), ("steps", "DEFAULT STEPS"),
            ("metrics", "VAL METRICS"), ("folder", "FOLDER")]
    width = {k: max(len(h), *(len(str(r[k])) for r in rows)) for k, h in cols}
    print("  ".join(h.ljust(width[k]) for k, h in cols).rstrip())
    for r in rows:
        print("  ".join(str(r[k]).ljust(width[k]) for k, _ in cols).rstrip())
    return EXIT_OK


# -- diffseg sample --------------------------------------------------------------------------------

@dataclass
class Plan:
    """Everything checked and loaded before sampling starts."""

    output: Path
    folder: Path
    card: dict[str, Any]
    volumes: Any
    image: Any
    roi: Any
    config: Any
    device: str
    precision: str = "fp32"
    model: Any = None
    point: Any = None  # voxel index (i, j, k) of --point / --point-mm, else None


def _pick_device(choice: str) -> str:
    import torch

    cuda, mps = torch.cuda.is_available(), bool(getattr(torch.backends, "mps", None)
                                                and torch.backends.mps.is_available())
    if choice == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if choice == "cuda" and not cuda:
        raise InputError("--device cuda: no CUDA GPU is available to this torch build (use --device auto "
                         "or cpu)")
    if choice == "mps" and not mps:
        raise InputError("--device mps: Apple MPS is not available (use --device auto or cpu)")
    return choice


def _sampler_config(card: dict[str, Any], args: argparse.Namespace):
    from .sampler import SamplerConfig

    names = {f.name for f in fields(SamplerConfig)}
    cfg = {k: v for k, v in (card.get("sampling") or {}).items() if k in names}
    if args.sampler is not None:
        cfg["method"] = args.sampler
    if args.steps is not None:
        cfg["steps"] = args.steps
    if args.eta is not None:
        cfg["eta"] = args.eta
    return SamplerConfig(**cfg)


def prepare(args: argparse.Namespace) -> Plan:
    """Every check, in the order a user fixes them; raises InputError, writes nothing."""
    from .inference import Roi, check_roi
    from .volumes import physical_box_to_index, preprocess, read_inputs

    output = Path(args.output).expanduser().resolve()
    if output.exists() and not args.overwrite:
        raise InputError(f"output {output} exists (pass --overwrite to replace it)")
    if output.exists() and not output.is_dir():
        raise InputError(f"output {output} exists and is not a folder")
    if args.samples < 1:
        raise InputError(f"--samples must be at least 1 (got {args.samples})")
    if args.batch_size is not None and args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1 (got {args.batch_size})")
    if not 0 <= args.overlap < 1:
        raise InputError(f"--overlap must be in [0, 1) (got {args.overlap})")
    folder = resolve_model(args.model, args.models_dir)
    card = read_card(folder)
    arch = card["architecture"]
    vols = read_inputs(args.inputs)
    geo = vols.geometry
    want = int(arch["in_channels"])
    if vols.channels.shape[0] != want:
        names = ", ".join(str(c.get("name", "?")) for c in card["input"].get("channels", []))
        raise InputError(f"the model {card['name']!r} expects {want} input channel(s) ({names}) but "
                         f"got {vols.channels.shape[0]} from {len(args.inputs)} file(s)")
    if int(arch["spatial_dims"]) == 3 and (geo.dimension != 3 or 1 in geo.size):
        raise InputError(f"the model {card['name']!r} is 3D but {args.inputs[0]} is a 2D image"
                         + (f" (a single slice, size {list(geo.size)})" if geo.dimension == 3 else ""))
    point_arg = getattr(args, "point", None) or getattr(args, "point_mm", None)
    if roi_required(card) and not (args.roi or args.roi_mm or point_arg):
        raise InputError(f"the model {card['name']!r} was trained on boxes around the target: give the "
                         f"box with --roi or --roi-mm, or a point inside it with --point or --point-mm")
    roi = None
    point = None
    if point_arg:
        from .prompt import box_around_point, point_index, slice_index_axis
        if getattr(args, "max_slices", 64) < 1:
            raise InputError(f"--max-slices must be at least 1 (got {args.max_slices})")
        mm = bool(getattr(args, "point_mm", None))
        point = point_index(geo, _numbers(point_arg, float if mm else int, "--point-mm" if mm else "--point"), mm)
        lo, hi = box_around_point(geo, point, card["input"]["size"], int(arch["spatial_dims"]))
        axis = slice_index_axis(geo)
        if int(arch["spatial_dims"]) == 2 and axis is not None:  # the slices it may grow into
            lo[axis], hi[axis] = 0, geo.size[axis]
        roi = Roi(lo, hi)
    if args.roi or args.roi_mm:
        nums = _numbers(args.roi or args.roi_mm, int if args.roi else float,
                        "--roi" if args.roi else "--roi-mm")
        if len(nums) != 2 * geo.dimension:
            raise InputError(f"{'--roi' if args.roi else '--roi-mm'} needs {2 * geo.dimension} numbers "
                             f"for a {geo.dimension}D image, got {len(nums)}")
        lo, hi = nums[:geo.dimension], nums[geo.dimension:]
        roi = Roi(lo, hi) if args.roi else Roi(*physical_box_to_index(geo, lo, hi))
        if args.roi_mm and any(b <= a for a, b in zip(roi.start, roi.stop)):
            raise InputError(f"--roi-mm {args.roi_mm} (LPS mm) contains no voxel centre of the image")
    roi = check_roi(roi, geo)
    from .volumes import canonical_orientation  # slice_minmax stretches per axial slice around the ROI
    axis = (canonical_orientation(geo.direction, [b - a for a, b in zip(roi.start, roi.stop)]).perm[0]
            if geo.dimension == 3 else None)
    image = preprocess(vols.channels, card["input"].get("preprocessing"), box=roi.slices(), slice_axis=axis)
    crop = image[(slice(None),) + roi.slices()]
    if all(float(c.max()) == float(c.min()) for c in crop):
        raise InputError("the image is constant inside the region to segment: nothing to segment")
    config = _sampler_config(card, args)
    device = _pick_device(args.device)
    if args.precision != "fp32" and device not in ("cpu", "cuda"):
        raise InputError(f"--precision {args.precision} runs on cpu and cuda only (the device is {device}; "
                         f"use --precision fp32 or --device cpu)")
    return Plan(output, folder, card, vols, image, roi, config, device, args.precision, point=point)


class _Interrupted(KeyboardInterrupt):
    """SIGTERM turned into an exception so the temporary folder is removed on the way out."""


def _on_signal(signum: int, frame: Any) -> None:
    raise _Interrupted(f"signal {signum}")


def _progress_printer(quiet: bool):
    """progress(k, n): a flushed ``progress k/N`` line on stdout, and a bar on stderr if it is a TTY."""
    from tqdm import tqdm

    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if quiet:
            return
        print(f"progress {done}/{total}", flush=True)
        if sys.stderr.isatty():
            if bar is None:
                bar = tqdm(total=total, file=sys.stderr, unit="step", dynamic_ncols=True)
            bar.update(done - bar.n)

    def close() -> None:
        if bar is not None:
            bar.close()

    return progress, close


def _load(plan: Plan) -> str:
    """Load the model on the planned device; auto falls back to the CPU if the device fails."""
    from .modelfile import load_model

    try:
        plan.model, _ = load_model(plan.folder, plan.device)
    except ModelFileError:
        raise
    except (RuntimeError, AssertionError) as e:
        if plan.device == "cpu":
            raise
        print(f"diffseg: warning: {plan.device} failed ({e}); using the CPU", file=sys.stderr)
        plan.device = "cpu"
        plan.model, _ = load_model(plan.folder, "cpu")
    try:
        plan.model.schedule.timesteps(plan.config.steps, plan.config.spacing)
    except ValueError as e:
        raise InputError(f"--steps: {e}") from None
    if plan.config.method not in ("ddpm", "ddim"):
        raise InputError(f"the card's sampler {plan.config.method!r} is not ddpm or ddim")
    return plan.device


def _segments(labels, card: dict[str, Any]) -> list:
    from .volumes import PALETTE, Segment

    classes = card["classes"]
    segs = []
    for k in range(labels.shape[0]):
        for c in range(1, len(classes)):
            multi = len(classes) > 2
            segs.append(Segment(
                id=f"hypothesis_{k + 1:02d}" + (f"_{c}" if multi else ""),
                name=f"Hypothesis {k + 1:02d}" + (f" {classes[c]}" if multi else ""),
                mask=labels[k] == c,
                color=PALETTE[(k if not multi else (c - 1)) % len(PALETTE)],
                tags={"DiffSeg.Hypothesis": str(k + 1), "DiffSeg.Class": str(classes[c]),
                      "DiffSeg.ClassIndex": str(c)}))
    return segs


def _write_outputs(plan: Plan, result: Any, folder: Path, args: argparse.Namespace, device: str,
                   timings: dict[str, float]) -> None:
    import numpy as np
    import torch

    from .uncertainty import summarize
    from .volumes import write_volume

    geo, roi = plan.volumes.geometry, result.roi
    t0 = time.perf_counter()
    maps = summarize(result.y0, plan.model.tau_out, geo.array_spacing)
    timings["uncertainty_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sl = roi.slices()

    def full(arr: "torch.Tensor", dtype: Any, lead: tuple[int, ...] = ()) -> "np.ndarray":
        out = np.zeros(lead + geo.array_shape, dtype=dtype)
        out[(slice(None),) * len(lead) + sl] = arr.cpu().numpy().astype(dtype)
        return out

    from .segfile import write_seg  # the ROI's box only, on the CT's grid (engine/segfile.py)
    labels = maps.labels.cpu().numpy().astype(np.uint8)
    write_seg(_segments(labels, plan.card), geo, roi.start, folder / "hypotheses.seg.nrrd",
              plan.card.get("terminology"))
    write_volume(full(maps.consensus, np.uint8), geo, folder / "consensus.nrrd")
    write_volume(full(1 - maps.mean_probability[0], np.float32), geo, folder / "mean_probability.nrrd")
    write_volume(full(maps.predictive_entropy, np.float32), geo, folder / "entropy.nrrd")
    write_volume(full(maps.mutual_information, np.float32), geo, folder / "mutual_information.nrrd")
    write_volume(full(maps.foreground_variance, np.float32), geo, folder / "variance.nrrd")

    classes = plan.card["classes"]
    vol_mm3 = float(np.prod(geo.spacing))
    hyps = []
    for k in range(labels.shape[0]):
        counts = torch.bincount(maps.labels[k].reshape(-1).long(), minlength=len(classes)).tolist()
        hyps.append({
            "index": k + 1, "name": f"Hypothesis {k + 1:02d}",
            "foreground_voxels": int(maps.volumes_voxels[k]),
            "foreground_mm3": float(maps.volumes_voxels[k] * vol_mm3),
            "class_voxels": {classes[c]: int(counts[c]) for c in range(1, len(classes))},
            "class_mm3": {classes[c]: float(counts[c] * vol_mm3) for c in range(1, len(classes))}})
    timings["write_s"] = time.perf_counter() - t0
    summary = {
        "format_version": 1,
        "model": {"name": plan.card["name"], "method": plan.card["method"], "preset": plan.card["preset"],
                  "folder": str(plan.folder), "sha256": plan.card["weights"]["sha256"]},
        "inputs": [str(Path(p).resolve()) for p in plan.volumes.paths],
        "seed": args.seed, "samples": args.samples, "steps": len(result.timesteps),
        "sampler": asdict(plan.config), "device": device, "batch_size": result.batch_size,
        "precision": plan.precision, "channels_last": bool(args.channels_last),
        "roi": {"start": roi.start, "stop": roi.stop},
        "point": plan.point, "growth": result.extras.get("growth"),  # --point: the slices it grew to
        "grid": geo.as_dict(), "classes": classes, "tau_out": plan.model.tau_out,
        "skipped_constant": result.skipped,
        "hypotheses": hyps,
        "spread": {"voxels": maps.spread_voxels, "mm3": maps.spread_mm3},
        "timings": timings, "files": list(OUTPUT_FILES),
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def _with_estimate(plan: Plan, args: argparse.Namespace, progress: Any) -> Any:
    """The progress printer with the work announced up front (network evaluations) and the expected
    time from the first step, updated every 10 % (engine/estimate.py), on stderr. A point prompt
    announces the work per slice: how many slices it grows to is not known up front."""
    from .estimate import Eta, network_evaluations, work_units
    from .volumes import canonical_orientation

    if args.quiet:
        return progress
    steps = len(plan.model.schedule.timesteps(plan.config.steps, plan.config.spacing))
    roi = plan.roi
    shape = [b - a for a, b in zip(reversed(roi.start), reversed(roi.stop))]  # array order
    if plan.volumes.geometry.dimension == 3:
        perm = canonical_orientation(plan.volumes.geometry.direction, list(reversed(shape))).perm
        shape = [shape[a] for a in perm]
    else:
        shape = [1, *shape]
    growing = plan.point is not None and int(plan.card["architecture"]["spatial_dims"]) == 2
    units = 1 if growing else work_units(plan.card, shape, args.overlap)
    what = "slice" if int(plan.card["architecture"]["spatial_dims"]) == 2 else "patch"
    print(f"diffseg: work: {units} {what}{'es' if what == 'patch' and units > 1 else 's' if units > 1 else ''}"
          f"{' at a time (growing from the point)' if growing else ''} x {args.samples} hypotheses x "
          f"{steps} steps = {network_evaluations(units, args.samples, steps)} network evaluations"
          f"{' per slice' if growing else ''}; timing the first step", file=sys.stderr, flush=True)
    eta = Eta(every=1.0 if growing else 0.1)  # a growing run: one line per slice
    eta.start()

    state = {"last": 0, "slices": 1}

    def wrapped(done: int, total: int) -> None:
        if done < state["last"]:  # a point prompt's next slice: its own progress restarts
            state["slices"] += 1
        state["last"] = done
        line = eta.update(done, total) if state["slices"] == 1 else None
        if line:
            print(f"diffseg: {'first slice: ' if growing else ''}{line}", file=sys.stderr, flush=True)
        progress(done, total)

    return wrapped


def _first_missing_parent(path: Path) -> Path | None:
    missing = None
    for p in [path.parent, *path.parent.parents]:
        if p.exists():
            break
        missing = p
    return missing


def cmd_sample(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    tmp: Path | None = None
    created: Path | None = None
    close_bar = None
    try:
        timings: dict[str, float] = {}
        try:
            plan = prepare(args)
            timings["read_s"] = time.perf_counter() - t_start
            t0 = time.perf_counter()
            device = _load(plan)
            timings["load_model_s"] = time.perf_counter() - t0
        except InputError as e:
            _err(str(e))
            return EXIT_INPUT
        from .inference import run_model

        if not args.quiet:
            print(f"diffseg: {plan.card['name']} ({plan.card['method']}), {args.samples} samples, "
                  f"{plan.config.method} {plan.config.steps or plan.model.schedule.T} steps on {device}"
                  + (f" ({plan.precision})" if plan.precision != "fp32" else ""),
                  file=sys.stderr, flush=True)
        created = _first_missing_parent(plan.output)
        plan.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{plan.output.name}.partial-", dir=plan.output.parent))
        progress, close_bar = _progress_printer(args.quiet)
        progress = _with_estimate(plan, args, progress)
        t0 = time.perf_counter()
        options = dict(batch_size=args.batch_size, progress=progress, overlap=args.overlap,
                       precision=plan.precision, channels_last=args.channels_last)
        if plan.point is not None:
            from .prompt import sample_from_point
            result, _ = sample_from_point(
                plan.model, plan.card, plan.image, plan.volumes.geometry, plan.point, args.samples,
                plan.config, args.seed, max_slices=args.max_slices,
                on_slice=None if args.quiet else lambda line: print(f"diffseg: {line}", file=sys.stderr,
                                                                    flush=True), **options)
        else:
            result = run_model(plan.model, plan.card, plan.image, plan.volumes.geometry, args.samples,
                               plan.config, args.seed, roi=plan.roi, **options)
        timings["sampling_s"] = time.perf_counter() - t0
        close_bar()
        _write_outputs(plan, result, tmp, args, device, timings)
        timings["total_s"] = time.perf_counter() - t_start
        summary = json.loads((tmp / "summary.json").read_text())
        summary["timings"] = timings
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        # commit: no signal may split the swap of the old and the new folder
        for s in old:
            signal.signal(s, signal.SIG_IGN)
        trash = None
        if plan.output.exists():
            trash = plan.output.with_name(f".{plan.output.name}.old-{os.getpid()}")
            os.replace(plan.output, trash)
        os.replace(tmp, plan.output)
        tmp = None
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        if not args.quiet:
            print(f"diffseg: wrote {plan.output} in {timings['total_s']:.1f} s", file=sys.stderr)
        return EXIT_OK
    except KeyboardInterrupt:
        _err("interrupted; nothing written")
        return EXIT_INTERRUPTED
    except InputError as e:  # a check that needs the model (e.g. constant slices) failed late
        _err(str(e))
        return EXIT_INPUT
    except Exception as e:  # noqa: BLE001 - last resort: message + traceback, exit 1
        traceback.print_exc(file=sys.stderr)
        _err(f"{type(e).__name__}: {e}")
        return EXIT_ERROR
    finally:
        for s in old:
            signal.signal(s, signal.SIG_IGN)
        if close_bar is not None:
            close_bar()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if created is not None and not plan_output_exists(args):
            _remove_empty(created, Path(args.output).expanduser().resolve().parent)
        for s, h in old.items():
            signal.signal(s, h)


def plan_output_exists(args: argparse.Namespace) -> bool:
    return Path(args.output).expanduser().resolve().exists()


def _remove_empty(top: Path, deepest: Path) -> None:
    """Remove the parent folders this run created (deepest first) if they are empty."""
    p = deepest
    while True:
        try:
            p.rmdir()
        except OSError:
            return
        if p == top:
            return
        p = p.parent


if __name__ == "__main__":
    sys.exit(main())
