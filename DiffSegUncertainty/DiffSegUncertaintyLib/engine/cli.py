"""The ``diffseg`` command: ``sample``, ``models``, ``evaluate``: flags in, ``pipeline`` calls, exit codes out.

Why it is built this way: the Slicer module runs ``diffseg sample`` as a background process and loads
its output folder, so the command (1) checks everything before it starts the long work
(``pipeline.Segmenter.plan``) and fails with a one-line message naming the flag (``FLAGS`` maps the
request's fields to flags) and exit code 2, (2) prints ``progress k/N`` lines a parent can parse (on
stdout when it is not a terminal; a terminal gets one bar on stderr), (3) writes through
``pipeline.Result.write`` (a hidden folder renamed into place), so a reader never sees half an output and
a cancelled run (SIGINT/SIGTERM, exit 130) leaves nothing behind. ``evaluate`` follows the same contract.
Exit codes: 0 done, 2 bad input, 1 a failed run (one line, e.g. non-finite hypotheses), 130 interrupted.
torch is imported only by the commands that need it, so ``diffseg models`` and ``--help`` stay fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import asdict
from typing import Any, Iterator, Sequence

from .allocator import keep_freed_memory
from .errors import InputError
from .files.modelfile import DEFAULT_SAMPLES, PRECISION_CHOICES, broken_models, find_models, read_card

EXIT_OK, EXIT_ERROR, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
#: request field -> the flag that sets it (pipeline.RequestError.field)
FLAGS = {"samples": "--samples", "steps": "--steps", "sampler": "--sampler", "eta": "--eta", "seed": "--seed",
         "roi": "--roi", "roi_mm": "--roi-mm", "point": "--point", "point_mm": "--point-mm",
         "max_slices": "--max-slices", "device": "--device", "precision": "--precision",
         "batch_size": "--batch-size", "overlap": "--overlap", "channels_last": "--channels-last",
         "output": "--output", "inputs": "the input files", "model": "--model"}


def _err(msg: str) -> None:
    print(f"diffseg: error: {msg}", file=sys.stderr, flush=True)


def _message(err: InputError) -> str:
    """An engine error in the command's words: a request field becomes its flag."""
    field, detail = getattr(err, "field", None), getattr(err, "detail", None)
    if field in FLAGS and detail is not None:
        return f"{FLAGS[field]} {detail}"
    return str(err)


# -- parser ----------------------------------------------------------------------------------------

def _numbers(text: str, kind: type, what: str) -> list:
    try:
        return [kind(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise InputError(f"{what} must be comma-separated numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
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
    s.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                   help=f"number of hypotheses M (default {DEFAULT_SAMPLES})")
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
    s.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                   help="auto (default: bf16 on a CPU with AMX/AVX512-BF16 or a CUDA GPU of compute capability "
                   "8.0+, else fp32; the choice is printed and recorded in summary.json), fp32 or bf16. bf16: "
                   "the networks run under bfloat16 autocast, 1.2-1.9x faster measured on CPUs with native "
                   "bfloat16, GED equal to fp32's within 0.001 on 256 val slices (docs/benchmarks.md); "
                   "cpu and cuda only")
    s.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="run the networks in the channels-last memory format (default: auto, on for bf16 on a "
                   "CPU, where it measured 1.05-1.6x faster; off for fp32 and on GPUs); recorded in summary.json")
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

    e = sub.add_parser("evaluate", help="score a model on a multi-reader set (metrics.json, table.md)",
                       description="Score a model on a multi-reader npz (LIDC format): GED, HM-IoU, MDM, "
                       "diversity, mIoU, Dice, NLL, ECE of exactly what `diffseg sample` would write for "
                       "each image; writes metrics.json and table.md into --output (same output contract "
                       "as sample). A whole validation file takes hours on a CPU (docs/cli.md; an estimate is "
                       "printed after the first image): start with --max-images.")
    e.add_argument("--model", required=True, help="model name or model folder")
    e.add_argument("--models-dir", action="append", default=[], help="extra folder to search for models")
    e.add_argument("--data", required=True, help="npz with images (S,H,W) and masks (S,A,H,W)")
    e.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                   help=f"hypotheses per image (the N of GED_N; default {DEFAULT_SAMPLES})")
    e.add_argument("--steps", type=int, default=None, help="sampler steps (default: the card's)")
    e.add_argument("--sampler", choices=("ddpm", "ddim"), default=None, help="default: the card's")
    e.add_argument("--eta", type=float, default=None, help="DDIM eta (default: the card's)")
    e.add_argument("--seed", type=int, default=0, help="random seed (default 0), as sample's")
    e.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                   help="auto: cuda, else mps, else cpu (default auto)")
    e.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                   help="as sample's (default auto)")
    e.add_argument("--batch-size", type=int, default=None, help="(image, hypothesis) pairs per network call "
                   "(default: the device's, as sample's)")
    e.add_argument("--max-images", type=int, default=None, help="score N images evenly spaced over the file")
    e.add_argument("--reference", choices=("each", "majority", "soft"), default="each",
                   help="reference for Dice/NLL/ECE with several annotations (default each)")
    e.add_argument("--empty", choices=("one", "nan", "zero"), default="one",
                   help="IoU of two empty masks: one (=1), nan (excluded), zero (=0); default one")
    e.add_argument("--ece-foreground", action="store_true", help="ECE without pure-background voxels")
    e.add_argument("--output", required=True, help="folder for metrics.json and table.md (created; must not "
                   "exist unless --overwrite)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    e.add_argument("--resume", action="store_true", help="keep each image's scores in OUTPUT.resume as it "
                   "is scored, and skip the images already there: an interrupted run continues where it "
                   "stopped (same settings; any process count); the folder is removed once the report is "
                   "written")
    e.add_argument("--quiet", action="store_true", help="print nothing but errors and the table")
    e.set_defaults(func=cmd_evaluate)
    return parser


class _Interrupted(KeyboardInterrupt):
    """SIGTERM turned into an exception so temporary folders are removed on the way out."""


_DEFERRED: dict[str, Any] = {"on": False, "signal": None}


def _on_signal(signum: int, frame: Any) -> None:
    if _DEFERRED["on"]:
        _DEFERRED["signal"] = signum
        return
    raise _Interrupted(f"signal {signum}")


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends, then raise as usual. Why: importing torch runs Python
    code under C++ (pybind11) frames, and an exception the handler raises there cannot unwind through
    them: the process aborts ("terminate called ... error_already_set", exit -6) instead of exiting 130.
    A signal during the import therefore takes effect the moment the import is done (a few seconds)."""
    _DEFERRED.update(on=True, signal=None)
    try:
        yield
    finally:
        _DEFERRED["on"] = False
    if _DEFERRED["signal"] is not None:
        raise _Interrupted(f"signal {_DEFERRED['signal']}")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run, map errors to exit codes; SIGINT/SIGTERM at any point (imports included) exit 130."""
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
        if args.command in ("sample", "evaluate"):
            with _signals_deferred():
                from . import pipeline  # noqa: F401  (torch, MONAI, SimpleITK: see _signals_deferred)
        keep_freed_memory()  # diffseg is its own process: reuse freed pages (engine/allocator.py)
        return int(args.func(args) or 0)
    except KeyboardInterrupt as e:
        _err(f"interrupted; {getattr(e, 'kept', None) or 'nothing written'}")
        return EXIT_INTERRUPTED
    except InputError as e:
        _err(_message(e))
        return EXIT_INPUT
    except Exception as e:  # noqa: BLE001 - a failed run: one line (type and message), exit 1
        from .pipeline import SamplingFailed
        if not isinstance(e, SamplingFailed) and os.environ.get("DIFFSEG_TRACEBACK"):
            import traceback
            traceback.print_exc(file=sys.stderr)
        _err(str(e) if isinstance(e, SamplingFailed) else f"{type(e).__name__}: {e} (set DIFFSEG_TRACEBACK=1 "
             "for the traceback)")
        return EXIT_ERROR
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# -- diffseg models --------------------------------------------------------------------------------

def _metrics_text(metrics: Any, width: int | None = None) -> str:
    """The card's held-out numbers, ``{"split": ..., "values": {name: number}}`` (training.export); with
    ``width``, whole ``name=value`` items only, up to that many characters, then "…"."""
    if not isinstance(metrics, dict) or not isinstance(metrics.get("values"), dict):
        return "-"
    parts = [f"{k}={v:.3g}" for k, v in metrics["values"].items()
             if isinstance(v, (int, float)) and k != "step"]
    if not parts:
        return "-"
    text = f"{metrics.get('split', '?')}:"
    for i, part in enumerate(parts):
        if width is not None and len(text) + 1 + len(part) > width - (2 if i < len(parts) - 1 else 0):
            return text + " …"
        text += " " + part
    return text


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
                     "metrics": _metrics_text(card.get("metrics")), "metric_values": card.get("metrics"),
                     "folder": str(folder)})
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
    rows = [{**r, "metrics": _metrics_text(r["metric_values"], 60)} for r in rows]
    width = {k: max(len(h), *(len(str(r[k])) for r in rows)) for k, h in cols}
    print("  ".join(h.ljust(width[k]) for k, h in cols).rstrip())
    for r in rows:
        print("  ".join(str(r[k]).ljust(width[k]) for k, _ in cols).rstrip())
    return EXIT_OK




# -- diffseg sample --------------------------------------------------------------------------------

def _numbers(text: str | None, kind: type, flag: str) -> list | None:
    if text is None:
        return None
    try:
        return [kind(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise InputError(f"{flag} must be comma-separated {'whole ' if kind is int else ''}numbers, got {text!r}"
                         ) from None


def request_from(args: argparse.Namespace) -> Any:
    """The pipeline request the flags describe, checked (pipeline.Request.check)."""
    from .pipeline import Request

    return Request(samples=args.samples, steps=args.steps, sampler=args.sampler, eta=args.eta, seed=args.seed,
                   roi=_numbers(getattr(args, "roi", None), int, "--roi"),
                   roi_mm=_numbers(getattr(args, "roi_mm", None), float, "--roi-mm"),
                   point=_numbers(getattr(args, "point", None), int, "--point"),
                   point_mm=_numbers(getattr(args, "point_mm", None), float, "--point-mm"),
                   max_slices=getattr(args, "max_slices", 64),
                   device=args.device, precision=args.precision, batch_size=args.batch_size,
                   overlap=getattr(args, "overlap", 0.25),
                   channels_last=getattr(args, "channels_last", None)).check()


class _Progress:
    """progress(k, n): a bar on stderr when that is a terminal, ``progress k/N`` lines on stdout otherwise
    or when stdout is not a terminal (a parent parses them); never both on one terminal."""

    def __init__(self, quiet: bool, unit: str = "step"):
        self.quiet, self.unit, self.bar = quiet, unit, None
        self.show_bar = not quiet and sys.stderr.isatty()
        self.lines = not quiet and not (sys.stdout.isatty() and self.show_bar)

    def __call__(self, done: int, total: int) -> None:
        if self.lines:
            print(f"progress {done}/{total}", flush=True)
        if self.show_bar:
            if self.bar is None:
                from tqdm import tqdm
                self.bar = tqdm(total=total, file=sys.stderr, unit=self.unit, dynamic_ncols=True)
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _numerics(plan: Any) -> str:
    """How the networks run, as printed: the precision and the memory format (both resolved from auto)."""
    return plan.precision + (", channels-last" if plan.channels_last else "")


def _say(args: argparse.Namespace, msg: str) -> None:
    if not args.quiet:
        print(f"diffseg: {msg}", file=sys.stderr, flush=True)


def _with_estimate(plan: Any, card: dict[str, Any], args: argparse.Namespace, progress: Any) -> Any:
    """The progress printer with the work announced up front (network evaluations) and the expected
    time from the first step, updated every 10 % (engine/estimate.py), on stderr. A point prompt
    announces the work per slice: how many slices it grows to is not known up front."""
    from .estimate import Eta, network_evaluations, work_units
    from .files.volumes import canonical_orientation

    if args.quiet:
        return progress
    geo, roi = plan.volumes.geometry, plan.roi
    steps, samples = len(plan.timesteps), plan.request.samples
    shape = [b - a for a, b in zip(reversed(roi.start), reversed(roi.stop))]  # array order
    if geo.dimension == 3:
        perm = canonical_orientation(geo.direction, list(reversed(shape))).perm
        shape = [shape[a] for a in perm]
    else:
        shape = [1, *shape]
    two_d = int(card["architecture"]["spatial_dims"]) == 2
    growing = plan.point is not None and two_d
    units = 1 if growing else work_units(card, shape, plan.request.overlap)
    what = "slice" if two_d else "patch"
    plural = ("es" if what == "patch" else "s") if units > 1 else ""
    _say(args, f"work: {units} {what}{plural}{' at a time (growing from the point)' if growing else ''} x "
         f"{samples} hypotheses x {steps} steps = {network_evaluations(units, samples, steps)} network "
         f"evaluations{' per slice' if growing else ''}; timing the first step")
    eta = Eta(every=1.0 if growing else 0.1)  # a growing run: one line per slice
    eta.start()
    state = {"last": 0, "slices": 1}

    def wrapped(done: int, total: int) -> None:
        if done < state["last"]:  # a point prompt's next slice: its own progress restarts
            state["slices"] += 1
        state["last"] = done
        line = eta.update(done, total) if state["slices"] == 1 else None
        if line:
            _say(args, f"{'first slice: ' if growing else ''}{line}")
        progress(done, total)

    return wrapped


def cmd_sample(args: argparse.Namespace) -> int:
    from .pipeline import Model, Segmenter, check_output

    t_start = time.perf_counter()
    request = request_from(args)
    output = check_output(args.output, args.overwrite)
    model = Model.load(args.model, args.models_dir)
    segmenter = Segmenter(model)
    plan = segmenter.plan(args.inputs, request)
    read_s = time.perf_counter() - t_start
    _say(args, f"{model.name} ({model.card['method']}), {request.samples} samples, {plan.config.method} "
         f"{len(plan.timesteps)} steps on {plan.device} ({_numerics(plan)})")
    progress = _Progress(args.quiet)
    try:
        result = segmenter.run(plan, _with_estimate(plan, model.card, args, progress),
                               log=None if args.quiet else lambda line: _say(args, line))
    finally:
        progress.close()
    result.timings = {"read_s": read_s, **result.timings}
    result.write(output, args.overwrite)
    _say(args, f"wrote {output} in {time.perf_counter() - t_start:.1f} s")
    return EXIT_OK


# -- diffseg evaluate ------------------------------------------------------------------------------

def _join_torchrun(device: str) -> int:
    """Under ``torchrun`` (WORLD_SIZE > 1): join the process group (nccl on GPUs, gloo on CPUs; each rank
    on its own GPU) so ``evaluation.evaluate_predictor`` shares the images out; returns the world size."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 1
    import torch
    import torch.distributed as dist

    gpu = device in ("auto", "cuda") and torch.cuda.is_available()
    if gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if gpu else "gloo")
    import atexit
    atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    return world


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score exactly what ``sample`` would write for each image (evaluation.predictor_from_model)."""
    from .analysis import evaluation
    from .analysis.journal import Journal, journal_folder
    from .pipeline import Model, check_output

    request = request_from(args)
    if args.max_images is not None and args.max_images < 1:
        raise InputError(f"--max-images must be at least 1 (got {args.max_images})")
    output = check_output(args.output, args.overwrite)
    world = _join_torchrun(request.device)
    if world > 1:
        rank = evaluation.shard()[0]
        args.quiet = args.quiet or rank > 0  # one voice: rank 0 speaks and writes
    model = Model.load(args.model, args.models_dir)
    data = evaluation.data_for_model(evaluation.load_multireader_npz(args.data), model.card, args.max_images)
    hi = int(data.masks.max())
    if hi >= len(model.classes):
        raise InputError(f"{args.data} has labels up to {hi} but the model has {len(model.classes)} classes")
    predict = evaluation.predictor_from_model(model, request, data.box)
    plan = predict.plan(data.images[0], request.samples)  # every check, before any image is scored
    _say(args, f"{model.name}: {len(data)} images x {request.samples} samples, {plan.config.method} "
         f"{len(plan.timesteps)} steps on {plan.device} ({_numerics(plan)})")
    ids = [data.item_id(i) for i in range(len(data))]
    journal = None
    if args.resume:  # what the kept rows were scored with: a resume with anything else is refused here
        journal = Journal.open(journal_folder(output), {
            "model": model.name, "sha256": model.card["weights"]["sha256"], "data": str(data.path),
            "num_images": len(data), "samples": request.samples, "sampler_config": asdict(plan.config),
            "seed": request.seed, "device": plan.device.split(":")[0], "precision": plan.precision,
            "channels_last": plan.channels_last, "batch_size": args.batch_size, "reference": args.reference,
            "empty": args.empty, "ece_background": not args.ece_foreground})
        kept = len(journal.rows(ids)) if evaluation.shard()[0] == 0 else 0  # rows of other data: refused here
        if kept:
            _say(args, f"resuming: {kept} of {len(data)} images already scored in {journal.folder}")
    progress = _Progress(args.quiet, unit="image")
    started = time.perf_counter()

    def tick(done: int, total: int) -> None:
        progress(done, total)
        if done == 1 and total > 1:  # say how long the whole file will take, from the first image
            left = (time.perf_counter() - started) * (total - 1)
            when = f"{left:.0f} s" if left < 90 else f"{left / 60:.0f} min" if left < 5400 else f"{left / 3600:.1f} h"
            _say(args, f"first image took {time.perf_counter() - started:.1f} s: about {when} for the other "
                 f"{total - 1} (fewer with --max-images)")

    try:
        result = evaluation.evaluate_predictor(predict, data.images, data.masks, request.samples, 1, tick,
                                               reference=args.reference, empty=args.empty,
                                               ece_background=not args.ece_foreground,
                                               ids=ids, journal=journal)
    except KeyboardInterrupt as e:
        if journal is not None:
            e.kept = f"the images scored so far are kept in {journal.folder} (run again with --resume)"
        raise
    finally:
        progress.close()
    extra = {"model": model.name, "model_folder": str(model.folder), "data": str(data.path),
             "sampler": plan.config.method, "steps": len(plan.timesteps), "sampler_config": asdict(plan.config),
             "seed": request.seed, "device": plan.device, "precision": plan.precision,
             "channels_last": plan.channels_last, "processes": world}
    if journal is not None:
        extra["resumed"] = result["resumed"]  # rows scored by earlier runs; `seconds` is this run's
    if evaluation.shard()[0] > 0:
        return EXIT_OK  # rank 0 holds the same gathered rows and writes them
    jpath, tpath = evaluation.write_report(result, output, model.name, extra, overwrite=args.overwrite)
    if journal is not None:
        journal.remove()  # the report holds every row now
    print(tpath.read_text())
    _say(args, f"wrote {jpath} and {tpath}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
