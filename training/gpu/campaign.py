"""One device call that trains, exports and scores the papers' 2D presets (issue 15; docs/training.md,
"GPU campaign").

    python -m training.gpu.campaign --pack .gl/lidc64.npz --out $OUT --minutes 6 [--work runs/gpu-campaign]
        [--models pgrd,hsrdiff] [--score-images 512] [--compile default] [--init-from DIR]
    python -m training.gpu.campaign --join <folder that came back> --into runs/gpu-models

What one call does, in an order that keeps what is done when the call is cut short:
1. unpacks the data pack (training/gpu/pack.py) into ``<work>/data`` (the lidc128 layout);
2. trains PGRD 2D's prior and denoiser (configs/pgrd-2d-gpu.toml), then HSRDiff-light
   (configs/hsrdiff-light-gpu.toml; ``--models`` sets the order), each through training/train.py until its deadline (``Plan``: cumulative
   shares of ``--minutes``; ``train(..., deadline=)``), resuming from ``<work>/<name>/last.pt`` when an
   earlier call left one (the device machine keeps ignored folders while it stays warm); PGRD's prior is
   not trained further once its denoiser has started;
3. exports each as a float16 model folder and puts it into ``--out`` as a tar cut into parts of at most
   15 MiB (the device returns at most 8 files of 16 MiB; HSRDiff-light is 24.6 MiB and PGRD 2D 33.3 MiB
   in float16), so ``--join`` here puts the folders back;
4. scores each exported model on val with 16 hypotheses through ``diffseg evaluate`` (the same code and
   metrics.json), re-exports it with those numbers in its card and writes ``scores.json``;
5. scores the shipped model each would replace (``REPLACES``, at its own card's sampler) on the same val
   slices with the same seed and pairs the two per image (``training.compare_models.paired_reports``), so
   the shipping rule (beat the shipped model on val, paired, with its standard error) is decided from
   ``scores.json`` alone: scoring HSRDiff-light here on a CPU would take hours.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import shutil
import sys
import tarfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from .. import checkpoint as ck
from ..export import export_run
from ..train import hardware, load_config, stage_config, train
from . import pack as packmod
from .device import allow_missing_simpleitk

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
#: the campaign's models: key -> (config, share of the training minutes per stage)
MODELS: dict[str, tuple[str, dict[str, float]]] = {
    "hsrdiff": ("hsrdiff-light-gpu", {"train": 0.45}),
    "pgrd": ("pgrd-2d-gpu", {"prior": 0.10, "diffusion": 0.45}),
}
#: the shipped model (DiffSegUncertainty/Resources/Models) that each campaign model would replace
REPLACES = {"hsrdiff-light-gpu": "lidc-hsrdiff-small-cpu", "pgrd-2d-gpu": "lidc-pgrd-2d-small-cpu"}
PART_BYTES = 15 * 2 ** 20
SCORES = "scores.json"


# -- the folders that come back -------------------------------------------------------------------

def send(folder: Path, out: Path) -> list[Path]:
    """``folder`` as ``<out>/<name>.tar.NN`` parts of at most PART_BYTES (old parts of it removed)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(folder, arcname=folder.name)
    data = buf.getvalue()
    for old in out.glob(f"{folder.name}.tar.*"):
        old.unlink()
    parts = []
    for i in range(0, len(data), PART_BYTES):
        p = out / f"{folder.name}.tar.{i // PART_BYTES:02d}"
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_bytes(data[i:i + PART_BYTES])
        tmp.replace(p)
        parts.append(p)
    return parts


def join(folder: Path, into: Path) -> list[Path]:
    """Put the model folders of ``<folder>/*.tar.NN`` back under ``into`` (tar's "data" filter: no
    absolute paths, links or devices)."""
    names = sorted({p.name.rsplit(".tar.", 1)[0] for p in folder.glob("*.tar.[0-9][0-9]")})
    if not names:
        raise FileNotFoundError(f"{folder} holds no <model>.tar.NN parts")
    into.mkdir(parents=True, exist_ok=True)
    done = []
    for name in names:
        data = b"".join(p.read_bytes() for p in sorted(folder.glob(f"{name}.tar.[0-9][0-9]")))
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            if any(m.name.split("/")[0] != name for m in tar.getmembers()):
                raise ValueError(f"{name}.tar holds paths outside {name}/")
            if (into / name).exists():
                shutil.rmtree(into / name)
            tar.extractall(into, filter="data")
        done.append(into / name)
    return done


# -- training ------------------------------------------------------------------------------------

class Plan:
    """Cumulative deadlines: stage i of the chosen models ends at start + minutes x (its share and the
    shares before it) / (all chosen shares), so a stage that stops early (its ceiling) leaves its time to
    the next ones, and ``--models pgrd`` alone gets all the minutes."""

    def __init__(self, models: list[str], minutes: float, start: float):
        self.order = [(k, st) for k in models for st in MODELS[k][1]]
        total = sum(MODELS[k][1][st] for k, st in self.order)
        self.ends, acc = {}, 0.0
        for k, st in self.order:
            acc += MODELS[k][1][st]
            self.ends[(k, st)] = start + 60 * minutes * acc / total

    def deadline(self, key: str, stage: str) -> float:
        return self.ends[(key, stage)]


def configs(key: str, tiny: bool) -> list[tuple[str, dict[str, Any]]]:
    """The (stage, config) pairs of one model; ``tiny``: the tests' preset (seconds on a CPU)."""
    name, _ = MODELS[key]
    ov: dict[str, Any] = {}
    if tiny:
        ov = {"model.preset": "tiny", "train.batch_size": 4, "train.epochs": 1, "train.log_every": 2,
              "train.warmup_steps": 2, "data.size": 16, "data.train_limit": 16, "sampling.steps": 2}
        if key == "pgrd":
            ov |= {"model.config.attention_levels": [False, False], "prior_stage.train.epochs": 1,
                   "prior_stage.train.warmup_steps": 2}
    cfg = load_config(CONFIGS / f"{name}.toml", ov)
    if cfg["model"]["method"] == "pgrd" and cfg["model"]["stage"] == "both":
        return [("prior", stage_config(cfg, "prior")), ("diffusion", stage_config(cfg, "diffusion"))]
    return [("train", cfg)]


def run_model(key: str, work: Path, data: Path, plan: "Plan", device: str, *, tiny: bool = False,
              compile_mode: str = "", init_from: Path | None = None, sync_debug: bool = False, log=print
              ) -> dict[str, Any]:
    """Train one model's stages, each until its deadline in ``plan`` (or its ceiling)."""
    name, _ = MODELS[key]
    run = work / name
    report: dict[str, Any] = {"config": name, "stages": {}}
    for stage, cfg in configs(key, tiny):
        out = run / "prior" if stage == "prior" else run
        if stage == "diffusion":
            cfg["model"]["prior_run"] = str(run / "prior")
        if compile_mode:
            cfg["train"]["compile"] = compile_mode
        if stage == "prior" and (run / ck.LAST).exists():
            # the denoiser has started on this prior: training the prior further would change, under a
            # half-trained denoiser, the prediction its residual is taken from (PGRD: the prior is frozen)
            report["stages"][stage] = {"skipped": "the denoiser has started on this prior"}
            continue
        warm = init_from / name if init_from else None
        if warm and not (out / ck.LAST).exists():
            if stage == "prior":  # the exported PGRD holds its prior: make it this stage's result
                prior_from_model(warm, out, cfg)
                report["stages"][stage] = {"from": str(warm)}
                continue
            cfg["model"]["init_from"] = str(warm)
        deadline = plan.deadline(key, stage)
        t0 = time.monotonic()
        if sync_debug:  # each place that makes the host wait for the GPU, reported once (stderr)
            torch.cuda.set_sync_debug_mode("warn")
        try:
            result = train(cfg, out, data_root=str(data), resume=True, device=device, quiet=True,
                           deadline=deadline, command=f"python -m training.gpu.campaign ({stage})")
        finally:
            if sync_debug:
                torch.cuda.set_sync_debug_mode("default")
        seconds = time.monotonic() - t0
        tail = result["losses"][-50:]
        flops = flops_per_sample(cfg)
        rate = len(result["losses"]) / max(seconds, 1e-9)
        report["stages"][stage] = {"step": result["step"], "total_steps": result["total"],
                                   "stopped": result["stopped"], "seconds": round(seconds, 1),
                                   "steps_this_call": len(result["losses"]),
                                   "steps_per_s": float(f"{rate:.4g}"), "batch": int(cfg["train"]["batch_size"]),
                                   "gflop_per_sample": float(f"{flops / 1e9:.4g}"),
                                   "tflop_per_s": float(f"{rate * int(cfg['train']['batch_size']) * flops / 1e12:.4g}"),
                                   "deadline_s": round(deadline - t0, 1),
                                   "loss_last50": float(sum(tail) / len(tail)) if tail else None}
        log(f"{name} {stage}: step {result['step']}/{result['total']} ({result['stopped']}) in {seconds:.0f} s")
    return report


def flops_per_sample(cfg: dict[str, Any]) -> float:
    """FLOPs of one training sample (loss forward + backward, ``FlopCounterMode``: convolutions, matmuls,
    attention) of a stage's network at the config's input size, counted on the CPU with batch 2, so that
    steps per second give the achieved FLOP/s on the device."""
    from torch.utils.flop_counter import FlopCounterMode

    from DiffSegUncertaintyLib.engine.networks import registry

    from ..train import model_config

    size = int(cfg["data"]["size"])
    dims = type("Dims", (), {"spatial_dims": 2, "in_channels": 1, "num_classes": 2})  # LIDC slices
    arch = model_config(cfg, dims)
    model = registry.build_model(cfg["model"]["method"], arch)
    net = model.prior if cfg["model"].get("stage") == "prior" else model
    if net is not model:
        loss = net.loss
    else:
        if getattr(model, "prior", None) is not None:
            model.freeze_prior()   # the denoiser stage: the prior runs forward only
        loss = model.loss
    x = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    y = (x > 0.7).long()[:, 0]
    with FlopCounterMode(display=False) as counter:
        loss(x, y)["loss"].backward()
    return counter.get_total_flops() / 2


def prior_from_model(folder: Path, out: Path, cfg: dict[str, Any]) -> None:
    """A prior run folder whose best.pt holds the prior of an exported PGRD model (warm start on a
    fresh machine, where the prior run is gone but the model folder came back)."""
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    weights = {k[len("prior."):]: v.float() for k, v in state.items() if k.startswith("prior.")}
    if not weights:
        raise ValueError(f"{folder} holds no prior weights (not a PGRD model with a prior)")
    out.mkdir(parents=True, exist_ok=True)
    ck.atomic_save({"step": 0, "weights": weights, "metrics": None, "settings": {}}, out / ck.BEST)


# -- scoring --------------------------------------------------------------------------------------

def score(model: Path | str, val: Path, out: Path, device: str, images: int, samples: int, batch: int) -> dict:
    """``diffseg evaluate`` of one model (a folder, or a shipped model's name) on the val npz (its
    metrics.json)."""
    from DiffSegUncertaintyLib.engine.cli import main as diffseg

    args = ["evaluate", "--model", str(model), "--data", str(val), "--samples", str(samples),
            "--device", device, "--batch-size", str(batch), "--output", str(out), "--overwrite"]  # a later call re-scores
    if images:
        args += ["--max-images", str(images)]
    if diffseg(args) != 0:
        raise RuntimeError(f"diffseg evaluate {model} failed")
    return json.loads((out / "metrics.json").read_text())


def campaign(pack: Path, out: Path, minutes: float, *, work: Path, device: str, models: list[str],
             score_images: int = 512, samples: int = 16, score_batch: int = 1024, tiny: bool = False,
             compile_mode: str = "", init_from: Path | None = None, sync_debug: bool = False,
             against_shipped: bool = True, log=print) -> dict[str, Any]:
    """The whole call; returns (and writes to ``<out>/scores.json``) what was trained and scored.
    ``against_shipped``: also score each model's ``REPLACES`` and pair them (step 5 above)."""
    start = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # scoring runs fp32: tf32 tensor cores for it
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    data = packmod.unpack(pack, work / "data")
    log(f"unpacked {pack} in {time.monotonic() - start:.0f} s")
    doc: dict[str, Any] = {"pack": str(pack), "minutes": minutes, "device": device,
                           "hardware": hardware(torch.device(device), 1), "torch": torch.__version__,
                           "score": {"split": "val", "images": score_images or "all", "samples": samples},
                           "models": {}}

    def write() -> None:
        doc["elapsed_s"] = round(time.monotonic() - start, 1)
        tmp = out / (SCORES + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(out / SCORES)

    def failed(name: str, what: str) -> None:
        """One model's failure (a GPU error, say) is recorded and the call goes on with the others."""
        doc["models"].setdefault(name, {})["error"] = f"{what}: {traceback.format_exc(limit=-3)}"
        doc["failed"] = True
        log(f"{name}: {what} failed:\n{traceback.format_exc()}")
        write()

    folders: dict[str, Path] = {}
    plan = Plan(models, minutes, time.monotonic())
    for key in models:
        name = MODELS[key][0]
        warm = init_from if init_from and (init_from / name).is_dir() else None
        if init_from and not warm:
            log(f"{name}: no {init_from / name}: trained from scratch")
        try:
            doc["models"][name] = run_model(key, work, data, plan, device, tiny=tiny, compile_mode=compile_mode,
                                            init_from=warm, sync_debug=sync_debug, log=log)
            folders[name] = export_run(work / name, work / "models" / name, half=True)
        except Exception:  # noqa: BLE001 - recorded in scores.json; the next model still gets its minutes
            failed(name, "training")
            continue
        doc["models"][name]["parts"] = [p.name for p in send(folders[name], out)]
        doc["models"][name]["mib"] = round(sum(f.stat().st_size for f in folders[name].iterdir()) / 2 ** 20, 2)
        write()
    for name, folder in folders.items():
        t0 = time.monotonic()
        try:
            metrics = score(folder, data / "val.npz", work / "scores" / name, device, score_images, samples,
                            score_batch)
        except Exception:  # noqa: BLE001
            failed(name, "scoring")
            continue
        doc["models"][name]["val"] = {k: v for k, v in metrics["summary"].items()}
        doc["models"][name]["val_images"] = metrics["num_images"]
        doc["models"][name]["score_s"] = round(time.monotonic() - t0, 1)
        doc["models"][name]["sampler"] = metrics.get("sampler_config")
        export_run(work / name, folder, half=True, evaluation=work / "scores" / name / "metrics.json")
        doc["models"][name]["parts"] = [p.name for p in send(folder, out)]
        write()
        log(f"{name}: val GED_{samples} {metrics['summary']['ged']['mean']:.4f}, "
            f"HM-IoU {metrics['summary']['hm_iou']['mean']:.4f} in {time.monotonic() - t0:.0f} s")
        if against_shipped:
            try:
                doc["models"][name]["against_shipped"] = pair_with_shipped(
                    name, work / "scores", data / "val.npz", device, score_images, samples, score_batch, log)
            except Exception:  # noqa: BLE001 - recorded (failed writes scores.json); the next model goes on
                failed(name, "scoring the shipped model")
            else:
                write()
    write()
    return doc


def pair_with_shipped(name: str, scores: Path, val: Path, device: str, images: int, samples: int, batch: int,
                      log=print) -> dict[str, Any]:
    """Score the shipped model ``name`` would replace on the same val slices and seed as ``name``'s report
    (``<scores>/<name>/metrics.json``) and pair them per image: difference = campaign model - shipped."""
    from ..compare_models import paired_reports

    shipped = REPLACES[name]
    t0 = time.monotonic()
    metrics = score(shipped, val, scores / shipped, device, images, samples, batch)
    table = paired_reports(scores / shipped / "metrics.json", scores / name / "metrics.json")
    for key, row in table.items():
        log(f"{name} - {shipped}: {key} {row['mean_difference']:+.4f} (SE {row['se']:.4f}, n {row['n']})")
    return {"model": shipped, "sampler": metrics.get("sampler_config"), "val": dict(metrics["summary"]),
            "score_s": round(time.monotonic() - t0, 1), "paired": table}


def main(argv: list[str] | None = None) -> int:
    if allow_missing_simpleitk():  # the device machine: diffseg evaluate imports it, never uses it here
        print("note: SimpleITK is missing here: a placeholder takes its name (training/gpu/device.py)",
              file=sys.stderr)
    ap = argparse.ArgumentParser(prog="python -m training.gpu.campaign", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pack", help="the data pack (python -m training.gpu.pack)")
    ap.add_argument("--out", help="the folder that comes back ($OUT on the device machine)")
    ap.add_argument("--minutes", type=float, default=8.0, help="wall-clock minutes of training, all models")
    ap.add_argument("--work", default="runs/gpu-campaign", help="checkpoints and data (kept while warm)")
    ap.add_argument("--models", default="pgrd,hsrdiff",
                    help="which, in order (default pgrd,hsrdiff: PGRD may reach its ceiling early and leave "
                         "its time to HSRDiff)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--score-images", type=int, default=512, help="val slices scored, evenly spaced (0: all)")
    ap.add_argument("--samples", type=int, default=16, help="hypotheses per val slice (the N of GED_N)")
    ap.add_argument("--score-batch", type=int, default=1024, help="(image, sample) pairs per network call")
    ap.add_argument("--no-shipped", action="store_true",
                    help="do not score the shipped models the campaign's would replace (default: scored on "
                         "the same val slices and paired per image)")
    ap.add_argument("--compile", default="", help="torch.compile mode for training (default: eager)")
    ap.add_argument("--init-from", help="a folder of model folders from an earlier call (warm start)")
    ap.add_argument("--sync-debug", action="store_true",
                    help="CUDA: report each place in training where the host waits for the GPU (once each)")
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny presets (seconds on a CPU)")
    ap.add_argument("--join", metavar="FOLDER", help="put the model folders of FOLDER's .tar.NN parts back")
    ap.add_argument("--into", default="runs/gpu-models", help="where --join writes the model folders")
    args = ap.parse_args(argv)
    try:
        if args.join:
            for f in join(Path(args.join), Path(args.into)):
                print(f)
            return 0
        if not args.pack or not args.out:
            raise ValueError("--pack and --out are required (or --join)")
        if not Path(args.pack).is_file():
            raise FileNotFoundError(f"no pack at {args.pack} (python -m training.gpu.pack --data ... --out ...)")
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in models if m not in MODELS]
        if unknown or not models:
            raise ValueError(f"--models {args.models}: choose from {', '.join(MODELS)}")
        if not (args.minutes > 0 and math.isfinite(args.minutes)):
            raise ValueError("--minutes must be a positive number")
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
        init = Path(args.init_from) if args.init_from else None
        if init and not init.is_dir():
            raise FileNotFoundError(f"--init-from {init} is not a folder")
        doc = campaign(Path(args.pack), Path(args.out), args.minutes, work=Path(args.work), device=args.device,
                 models=models, score_images=args.score_images, samples=args.samples,
                 score_batch=args.score_batch, tiny=args.tiny, compile_mode=args.compile, init_from=init,
                 sync_debug=args.sync_debug and args.device.startswith("cuda"),
                 against_shipped=not args.no_shipped, log=lambda m: print(m, flush=True))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if doc.get("failed"):
        print(f"error: a model failed; see {Path(args.out) / SCORES} and the log", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
