"""Turn a training run into a model folder the engine, ``diffseg sample`` and Slicer load.

    python -m training.export --run runs/<exp> --output <models folder>/<name> [--name NAME] [--half]
        [--sampler ddpm|ddim] [--steps N] [--eta E] [--metrics metrics.json]

Takes the best checkpoint by the run's validation metric (EMA weights; the last EMA weights when the
run never validated, said on stderr), rebuilds the network from the run's architecture and writes it
with ``engine.files.modelfile.save_model``. The card records what a reader needs to trust the numbers: the
measured validation metrics with their settings (images, samples, sampler), the training command, the
data and split, the step, the training time and the hardware.

Only diffusion models (PGRD, HSRDiff, the vanilla DDPM) are exported: the engine's registry builds
those; the prior stage and the baselines are evaluated from their runs (training/baselines.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from DiffSegUncertaintyLib.engine.networks import registry
from DiffSegUncertaintyLib.engine.files.modelfile import save_model

from . import checkpoint as ck


def export_run(run: str | Path, output: str | Path, name: str | None = None, half: bool = False,
               sampling: dict[str, Any] | None = None, evaluation: str | Path | None = None) -> Path:
    """Write the model folder of ``run`` to ``output``; returns its path.

    sampling: SamplerConfig fields replacing the config's [sampling] (the sampler chosen on val).
    evaluation: a ``diffseg evaluate`` metrics.json whose numbers go into the card instead of the
    training-time validation (which uses few images and samples).
    """
    run, output = Path(run), Path(output)
    info = ck.read_config(run)
    cfg, arch = info["config"], info["architecture"]
    method = cfg["model"]["method"]
    if method == "baseline" or (method == "pgrd" and cfg["model"].get("stage") == "prior"):
        raise ValueError(f"{run} trained a {'baseline' if method == 'baseline' else 'PGRD prior'}: only "
                         "diffusion models are exported as model folders")
    state, which = ck.best_or_last(run)
    if which != ck.BEST:
        print(f"warning: {run} has no {ck.BEST} (never validated): exporting the last EMA weights",
              file=sys.stderr)
    model = registry.build_model(method, arch)
    model.load_state_dict(state["weights"])
    sampling = _sampling(method, {**(cfg.get("sampling") or {}), **(sampling or {})})
    metrics: dict[str, Any] | None = None
    if evaluation is not None:
        metrics = card_metrics(json.loads(Path(evaluation).read_text()), cfg["data"]["val_split"],
                               state["step"])
    elif state.get("metrics"):
        metrics = {"split": cfg["data"]["val_split"], "step": state["step"], "source": "training validation",
                   **state.get("settings", {}), "values": state["metrics"]}
    last = ck.load(run / ck.LAST) if (run / ck.LAST).exists() else {}
    training = {"data": info["data"], "command": info["command"], "config": cfg.get("name"),
                "checkpoint": which, "step": state["step"], "total_steps": info["total_steps"],
                "time_s": round(float(last.get("elapsed", 0.0)), 1), "hardware": info["hardware"],
                "world_size": info["world_size"], "seed": cfg["seed"], "train": cfg["train"]}
    if cfg.get("note"):  # what a reader of the card must know, e.g. that the preset is CPU-sized
        training["note"] = cfg["note"]
    folder = save_model(model, output, name=name or output.name, method=method,
                        preset=str(cfg["model"].get("preset")), sampling=sampling, inputs=card_inputs(info),
                        classes=info["classes"], training=training, metrics=metrics, half=half)
    if str((info.get("data") or {}).get("dataset", "")).lower() == "lidc":
        from .data.lidc import TERMINOLOGY  # standard terms per class for the .seg.nrrd (engine/files/segfile.py)
        card_path = Path(folder) / "model.json"
        card = json.loads(card_path.read_text())
        card["terminology"] = TERMINOLOGY
        card_path.write_text(json.dumps(card, indent=2) + "\n")
    return folder


def card_metrics(doc: dict[str, Any], split: str, step: int | None, source: str = "diffseg evaluate",
                 **extra: Any) -> dict[str, Any]:
    """The card's ``metrics`` block from a ``diffseg evaluate`` report (its metrics.json): one format
    for every writer (export, ``training.calibrate``)."""
    return {"split": split, "step": step, "source": source, "data": doc.get("data"),
            "images": doc["num_images"], "samples": doc["num_samples"], "sampler": doc.get("sampler_config"),
            **({"precision": doc["precision"]} if doc.get("precision") else {}), **extra, "conventions": doc.get("conventions_text"),
            "values": {k: v["mean"] for k, v in doc["summary"].items()},
            "std": {k: v["std"] for k, v in doc["summary"].items()}}


def card_inputs(info: dict[str, Any]) -> dict[str, Any]:
    """The run's ``input`` block for the card. A LIDC run trained on the 8-bit crops times 1/255; its
    card instead says how to get there from a CT in HU: ``lidc.CT_PREPROCESSING``, the publisher's
    per-slice stretch over a 128x128 box around the ROI (engine/files/slicestretch.py), which is also exactly
    x / 255 on the 8-bit crops, whose every crop holds a 0 and a 255 (docs/cli.md, "CT intensities (HU)")."""
    inputs = dict(info["input"])
    pre = inputs.get("preprocessing") or {}
    if (str((info.get("data") or {}).get("dataset", "")).lower() == "lidc" and pre.get("kind") == "scale"
            and abs(float(pre.get("scale", 0)) - 1 / 255) < 1e-12 and float(pre.get("offset", 0)) == 0):
        from .data.lidc import CT_PREPROCESSING
        inputs["preprocessing"] = dict(CT_PREPROCESSING)
    return inputs


def _sampling(method: str, given: dict[str, Any]) -> dict[str, Any]:
    """The method's default sampler fields (its module's DEFAULT_SAMPLING) with the config's on top."""
    import importlib
    module = importlib.import_module(f"DiffSegUncertaintyLib.engine.networks.{method}")
    return {**getattr(module, "DEFAULT_SAMPLING", {}), **given}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="training run folder (runs/<exp>)")
    ap.add_argument("--output", required=True, help="model folder to write (<models folder>/<name>)")
    ap.add_argument("--name", help="model name in the card (default: the output folder's name)")
    ap.add_argument("--half", action="store_true", help="store weights as float16")
    ap.add_argument("--sampler", choices=("ddpm", "ddim"), help="the card's default sampler (chosen on val)")
    ap.add_argument("--steps", type=int, help="the card's default number of sampler steps")
    ap.add_argument("--eta", type=float, help="the card's default DDIM eta (0 deterministic, 1 = the DDPM "
                    "posterior's variance; chosen on val)")
    ap.add_argument("--metrics", help="a `diffseg evaluate` metrics.json to record in the card")
    args = ap.parse_args(argv)
    chosen = {k: v for k, v in (("method", args.sampler), ("steps", args.steps),
                                                    ("eta", args.eta)) if v is not None}
    try:
        path = export_run(args.run, args.output, args.name, args.half, chosen, args.metrics)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
