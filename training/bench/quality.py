"""Quality against step count (issue 7): does a reduced step count keep GED_16 within 0.01 of the
paper's sampler, judged with its uncertainty?

    python -m training.bench.quality --model DiffSegUncertainty/Resources/Models/lidc-hsrdiff-small-cpu \
        --data ../shared/data/lidc128/val.npz --images 16 --samples 16 --output runs/benchmarks/quality.json

For a trained model folder it scores the same ``--images`` val images (evenly spaced over the file,
``MultiReaderSet.subset``; crop models, ``input.roi_required``, get the centre box of the card's input
size, the convention of ``engine/analysis/evaluation.py`` / ``diffseg evaluate``) with the same seed at every step
spec (default: the paper's, then ddim:50, 25, 10, 5, 3): GED_M, HM-IoU_M and Dice through
``evaluation.evaluate_predictor`` (``metrics.score_image``, nothing re-implemented). The first spec is the
baseline: for every other spec the per-image paired difference (spec - baseline) is summarised by its
mean, the paired standard error (std over images, ddof 1, / sqrt(n)) and a percentile bootstrap 95 %
interval over images. Verdict for GED: "equal" when the whole 95 % interval lies within +-0.01,
"within (point)" when only the mean does, "worse" / "better" when the interval excludes 0 beyond 0.01,
otherwise "undecided".

Step specs: ``ddpm:250``, ``ddim:25``, ``ddim:25:trailing``; a suffix ``@bf16`` samples under the
sampler's ``precision="bf16"`` (default fp32), ``@cl`` adds channels-last (``ddim:10@bf16@cl``).
The paper's spec with the project's sampler draws the paper-faithful reference's hypotheses (same noise,
Testing/training/test_benchmark.py), so the baseline row *is* the paper's sampler's quality.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from DiffSegUncertaintyLib.engine.analysis.evaluation import (data_for_model, evaluate_predictor, load_multireader_npz,
                                                    predictor_from_model)
from DiffSegUncertaintyLib.engine.pipeline import Model, Request, jsonable
from DiffSegUncertaintyLib.engine.sampling.sampler import SamplerConfig

DEFAULT_SPECS = ("paper", "ddim:50", "ddim:25", "ddim:10", "ddim:5", "ddim:3")
METRICS = (("ged", "GED"), ("hm_iou", "HM-IoU"), ("dice", "Dice"))
TOLERANCE = 0.01


# -- specs -------------------------------------------------------------------------------------------

def paper_spec(model) -> str:
    """HSRDiff: ancestral over all T (Algorithm 2); PGRD: DDIM over S = 300 of T (Sec. III-B)."""
    if type(model).__name__.lower() == "hsrdiff":
        return f"ddpm:{model.schedule.T}"
    return f"ddim:{min(300, model.schedule.T)}"


def parse_spec(spec: str, T: int) -> tuple[SamplerConfig, str, bool]:
    """'ddim:25[:spacing][@bf16][@cl]' -> (SamplerConfig with eta 0, precision, channels_last)."""
    base, *flags = spec.split("@")
    unknown = [f for f in flags if f not in ("bf16", "fp32", "cl")]
    parts = base.split(":")
    if unknown or len(parts) not in (2, 3) or parts[0] not in ("ddpm", "ddim") or not parts[1].isdigit():
        raise SystemExit(f"bad step spec {spec!r}: expected ddpm:STEPS or ddim:STEPS[:spacing][@bf16][@cl]")
    steps = int(parts[1])
    cfg = SamplerConfig(method=parts[0], steps=None if steps == T else steps, eta=0.0,
                        spacing=parts[2] if len(parts) == 3 else "leading")
    return cfg, "bf16" if "bf16" in flags else "fp32", "cl" in flags


# -- the predictor -----------------------------------------------------------------------------------

def make_predictor(model: Model, config: SamplerConfig, *, seed: int, device, batch_size: int | None,
                   precision: str = "fp32", channels_last: bool = False, box=None):
    """``evaluation.predictor_from_model``: each image through the pipeline as ``diffseg sample`` draws it,
    with the spec's sampler, precision and memory format."""
    request = Request(sampler=config.method, steps=config.steps, eta=config.eta, spacing=config.spacing,
                      seed=seed, device=str(device), batch_size=batch_size, precision=precision,
                      channels_last=channels_last)
    return predictor_from_model(model, request, box)


def default_data() -> Path:
    """$DIFFSEG_LIDC (a folder: its val.npz) or ../shared/data/lidc128/val.npz beside the repository."""
    env = os.environ.get("DIFFSEG_LIDC")
    if env:
        p = Path(env)
        return p if p.suffix == ".npz" else p / "val.npz"
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "lidc128" / "val.npz"


def load_data(path, card, images: int | None):
    """The multi-reader set as ``diffseg evaluate`` scores a model (``evaluation.data_for_model``: ``images``
    evenly spaced, 3D stacks, crop models scored on the centre box of their size, sampled as the ROI of the
    whole image)."""
    return data_for_model(load_multireader_npz(path), card, images)


# -- statistics --------------------------------------------------------------------------------------

def paired(values: Sequence[float], base: Sequence[float], *, boot: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Per-image paired difference values - base: mean, paired SE, bootstrap 95 % interval over images
    (pairs where either is NaN are dropped)."""
    a, b = np.asarray(values, dtype=np.float64), np.asarray(base, dtype=np.float64)
    keep = ~(np.isnan(a) | np.isnan(b))
    d = a[keep] - b[keep]
    n = int(d.size)
    if n == 0:
        return {"n": 0, "mean": math.nan, "se": math.nan, "ci95": [math.nan, math.nan]}
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(boot, n))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"n": n, "mean": float(d.mean()), "se": se, "ci95": [float(lo), float(hi)]}


def verdict(diff: dict[str, Any], tol: float = TOLERANCE) -> str:
    """GED difference against the baseline, judged with its bootstrap 95 % interval."""
    lo, hi = diff["ci95"]
    if any(math.isnan(v) for v in (lo, hi, diff["mean"])):
        return "undecided"
    if -tol <= lo and hi <= tol:
        return "equal"
    if lo > tol:
        return "worse"
    if hi < -tol:
        return "better"
    if abs(diff["mean"]) <= tol:
        return "within (point)"
    return "undecided"


# -- the study ---------------------------------------------------------------------------------------

def study(model: Model, data, specs: Sequence[str], *, samples: int = Request.samples, seed: int = 0, device="cpu",
          batch_size: int | None = None, boot: int = 10000, progress: bool = True) -> dict[str, Any]:
    """Score ``data`` at every spec (the first is the baseline); per-spec summary, per-image values and
    the paired differences to the baseline."""
    T = model.network.schedule.T
    specs = [paper_spec(model.network) if s == "paper" else s for s in specs]
    rows: dict[str, Any] = {}
    per_image: dict[str, dict[str, list[float]]] = {}
    for spec in specs:
        cfg, precision, cl = parse_spec(spec, T)
        pred = make_predictor(model, cfg, seed=seed, device=device, batch_size=batch_size,
                              precision=precision, channels_last=cl, box=data.box)
        started = time.perf_counter()
        res = evaluate_predictor(pred, data.images, data.masks, samples,
                                 ids=[data.item_id(i) for i in range(len(data))])
        seconds = time.perf_counter() - started
        per_image[spec] = {k: [float(r[k]) for r in res["per_image"]] for k, _ in METRICS}
        s = res["summary"]
        rows[spec] = {"steps": len(pred.timesteps), "precision": precision, "channels_last": cl,
                      "sampler": {"method": cfg.method, "steps": cfg.steps, "spacing": cfg.spacing, "eta": cfg.eta},
                      "seconds": seconds, "seconds_per_image": seconds / len(data),
                      **{k: s[k][0] for k, _ in METRICS}, **{f"{k}_std": s[k][1] for k, _ in METRICS}}
        if progress:
            print(f"quality {spec}: GED_{samples} {rows[spec]['ged']:.4f}  HM-IoU_{samples} "
                  f"{rows[spec]['hm_iou']:.4f}  Dice {rows[spec]['dice']:.4f}  ({seconds:.1f} s)", flush=True)
    base = specs[0]
    for spec in specs:
        rows[spec]["vs_baseline"] = {k: paired(per_image[spec][k], per_image[base][k], boot=boot, seed=seed)
                                     for k, _ in METRICS}
        rows[spec]["ged_verdict"] = "baseline" if spec == base else verdict(rows[spec]["vs_baseline"]["ged"])
    return {"baseline": base, "specs": specs, "rows": rows, "per_image": per_image,
            "ids": [data.item_id(i) for i in range(len(data))]}


def table(result: dict[str, Any]) -> str:
    m = result.get("samples", "")
    head = (f"| steps | precision | GED_{m} | HM-IoU_{m} | Dice | dGED vs {result['baseline']} (SE) [95 % CI] "
            f"| dHM-IoU (SE) | dDice (SE) | GED verdict (+-{TOLERANCE}) | s / image |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for spec in result["specs"]:
        r = result["rows"][spec]
        d = r["vs_baseline"]
        fmt = lambda x: f"{x['mean']:+.4f} ({x['se']:.4f})"  # noqa: E731
        g = d["ged"]
        lines.append(f"| {spec.split('@')[0]} | {r['precision']}{' cl' if r['channels_last'] else ''} "
                     f"| {r['ged']:.4f} | {r['hm_iou']:.4f} | {r['dice']:.4f} "
                     f"| {fmt(g)} [{g['ci95'][0]:+.4f}, {g['ci95'][1]:+.4f}] | {fmt(d['hm_iou'])} "
                     f"| {fmt(d['dice'])} | {r['ged_verdict']} | {r['seconds_per_image']:.2f} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training.bench.quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="trained model folder")
    ap.add_argument("--data", default=None, help="multi-reader npz (default $DIFFSEG_LIDC/val.npz or "
                                                 "../shared/data/lidc128/val.npz)")
    ap.add_argument("--images", type=int, default=16, help="val images, evenly spaced (default 16)")
    ap.add_argument("--samples", type=int, default=Request.samples, help="hypotheses per image, the M of GED_M")
    ap.add_argument("--specs", nargs="+", default=list(DEFAULT_SPECS),
                    help="step specs, the first is the baseline ('paper' = the paper's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--batch-size", type=int, default=None, help="(image, sample) pairs per network call "
                                                                  "(default: the sampler's device default)")
    ap.add_argument("--bootstrap", type=int, default=10000)
    ap.add_argument("--output", default="runs/benchmarks/quality.json")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = Model.load(args.model)
    card = model.card
    data_path = Path(args.data) if args.data else default_data()
    data = load_data(data_path, card, args.images)
    started = time.perf_counter()
    res = study(model, data, args.specs, samples=args.samples, seed=args.seed, device=args.device,
                batch_size=args.batch_size, boot=args.bootstrap)
    result = {"command": "python -m training.bench.quality " + " ".join(argv),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "model": str(args.model), "name": card.get("name"),
              "method": card.get("method"), "preset": card.get("preset"), "data": str(data_path),
              "images": len(data), "image_size": list(data.masks.shape[2:]), "samples": args.samples,
              "seed": args.seed, "device": str(args.device), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "seconds": time.perf_counter() - started, **res}
    text = table(result)
    print(text)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(jsonable(result), indent=1, default=str))
    out.with_suffix(".md").write_text(text + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
