"""How much of the readers' lesion the hypotheses cover, by reader agreement, under one or more samplers.

    python -m training.coverage --model lidc-hsrdiff-small-cpu --data $LIDC/val.npz --images 256 \
        --eta 0,0.5,1 [--steps 10,25] [--samples 16] [--seed 0] [--json FILE]
    python -m training.coverage --compare REF.json OTHER.json   # pair runs made separately

Why: GED and HM-IoU average over every slice, and most LIDC slices are ones the readers disagree on (one
or more readings empty). A model can score well there and still draw hypotheses smaller than a lesion all
four readers outlined, which is what a clinician pointing at a nodule sees (issue 14). This splits the
val slices by agreement (all readers mark the lesion / some do) and reports, per sampler setting, the mean
hypothesis area against the readers' mean area, the share of empty hypotheses, GED and HM-IoU, GED's two
parts (the hypotheses' diversity against the readers', and the mean hypothesis-reading distance), and the
paired differences against the first setting (same slices, same seeds: hypothesis k's start noise is the
same for every eta and step count). Settings are every (steps, eta) pair, steps outer. Sampling is
``diffseg evaluate``'s (``predictor_from_model``), so the hypotheses are those the card draws.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from typing import Any, Sequence

import numpy as np
import torch

from DiffSegUncertaintyLib.engine.analysis import metrics
from DiffSegUncertaintyLib.engine.analysis.uncertainty import hypothesis_labels
from DiffSegUncertaintyLib.engine.analysis.evaluation import (data_for_model, load_multireader_npz,
                                                              predictor_from_model)
from DiffSegUncertaintyLib.engine.networks.checks import InputError
from DiffSegUncertaintyLib.engine.pipeline import Model, Request

LARGE = 114  # readers' mean area (pixels of the 64x64 box) above which an all-readers slice counts as large


def groups(masks: np.ndarray, large: int = LARGE) -> dict[str, np.ndarray]:
    """Boolean slice selections by reader agreement: all readers mark foreground (and, of those, a mean
    area of at least ``large`` pixels), or some but not all do."""
    area = (masks > 0).reshape(*masks.shape[:2], -1).sum(-1)
    every, some = area.min(1) > 0, area.max(1) > 0
    return {"all readers": every, "all readers, large": every & (area.mean(1) >= large),
            "some readers": some & ~every}


def coverage(hyps: np.ndarray, masks: np.ndarray, large: int = LARGE) -> dict[str, Any]:
    """Per-slice scores and, per group, the hypotheses' mean foreground area over the readers' mean
    area and the share of empty hypotheses. hyps (N, M, *S) labels, masks (N, A, *S)."""
    h = (hyps > 0).reshape(*hyps.shape[:2], -1).sum(-1).astype(float)
    r = (masks > 0).reshape(*masks.shape[:2], -1).sum(-1).astype(float)
    ged = np.array([metrics.ged(hyps[i], masks[i]) for i in range(len(hyps))])
    hm = np.array([metrics.hm_iou(hyps[i], masks[i]) for i in range(len(hyps))])
    div = np.array([metrics.diversity(hyps[i]) for i in range(len(hyps))])
    readers = np.array([metrics.diversity(masks[i]) for i in range(len(masks))])
    # GED = 2 E d(h, r) - E d(h, h') - E d(r, r') per image, so the cross term is (GED + both diversities) / 2:
    # how far a hypothesis is from a reading, apart from how spread out either set is
    cross = (ged + div + readers) / 2
    out: dict[str, Any] = {"ged": ged, "hm_iou": hm, "diversity": div, "readers_diversity": readers,
                           "cross": cross, "groups": {}}
    for name, sel in {"any reader": r.max(1) > 0, **groups(masks, large)}.items():
        if sel.any():
            out["groups"][name] = {"slices": int(sel.sum()), "area_ratio": float(h[sel].mean() / r[sel].mean()),
                                   "empty_hypotheses": float((h[sel] == 0).mean()),
                                   "empty_readings": float((r[sel] == 0).mean()),
                                   "ged": float(ged[sel].mean()), "hm_iou": float(hm[sel].mean()),
                                   "diversity": float(div[sel].mean()),
                                   "readers_diversity": float(readers[sel].mean())}
    return out


def _paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    d = b - a
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")


def compare(ref: dict[str, Any], other: dict[str, Any]) -> list[dict[str, Any]]:
    """Paired differences of every row of ``other`` against the first row of ``ref``, from their per-image
    scores: two runs of this tool made apart (e.g. in parallel processes) compare as one run would."""
    for key in ("model", "images", "samples", "seed"):
        if ref.get(key) != other.get(key):
            raise ValueError(f"the runs differ in {key} ({ref.get(key)!r} vs {other.get(key)!r}): not paired")
    if "per_image" not in ref["rows"][0] or any("per_image" not in r for r in other["rows"]):
        raise ValueError("a run has no per-image scores (written by this tool since issue 14's eta study)")
    base = {k: np.asarray(v) for k, v in ref["rows"][0]["per_image"].items()}
    return [{"steps": r["steps"], "eta": r["eta"],
             **{k: _paired(base[k], np.asarray(r["per_image"][k])) for k in ("ged", "hm_iou", "diversity")}}
            for r in other["rows"]]


def _compare_main(paths: Sequence[str]) -> int:
    try:
        docs = []
        for p in paths:
            with open(p) as f:
                docs.append(json.load(f))
        rows = compare(*docs)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ref = docs[0]["rows"][0]
    for r in rows:
        print(f"{r['steps']} steps eta {r['eta']:g} vs {ref['steps']} steps eta {ref['eta']:g}: "
              + " ".join(f"d{k} {r[k][0]:+.4f} (SE {r[k][1]:.4f})" for k in ("ged", "hm_iou", "diversity")))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.coverage", description=__doc__.split("\n\n")[0])
    ap.add_argument("--compare", nargs=2, metavar=("REF", "OTHER"),
                    help="sample nothing: pair OTHER's rows against REF's first row (two --json files)")
    ap.add_argument("--model", help="model folder or name (searched as diffseg does)")
    ap.add_argument("--data", help="multi-reader npz (LIDC format), e.g. val.npz")
    ap.add_argument("--images", type=int, default=256, help="N images evenly spaced over the file (0: all)")
    ap.add_argument("--eta", default=None, help="comma-separated DDIM etas to compare (default: the card's)")
    ap.add_argument("--steps", default=None, help="comma-separated sampler step counts (default: the card's)")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--large", type=int, default=LARGE, help="pixels: the 'large' group's readers' mean area")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.compare:
        return _compare_main(args.compare)
    if not (args.model and args.data):
        ap.error("--model and --data are required (unless --compare)")
    try:
        etas = [None] if args.eta is None else [float(x) for x in args.eta.split(",")]
        steps = [None] if args.steps is None else [int(x) for x in args.steps.split(",")]
        loaded = Model.load(args.model, [])
        data = data_for_model(load_multireader_npz(args.data), loaded.card, args.images or None)
        base = Request(seed=args.seed, device=args.device)
        # every setting checked before any sampling
        requests = [replace(base, steps=n, eta=e).check() for n in steps for e in etas]
    except (InputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    first: dict[str, Any] | None = None
    for request in requests:
        predict = predictor_from_model(loaded, request, data.box)
        with torch.no_grad():
            hyps = np.stack([hypothesis_labels(predict.sample_y0(data.images[i:i + 1], args.samples)[0]).numpy()
                             for i in range(len(data))])
        res = coverage(hyps, data.masks, args.large)
        first = first or res
        row = {"eta": predict.config.eta, "steps": predict.config.steps, "method": predict.config.method,
               "ged": float(res["ged"].mean()), "hm_iou": float(res["hm_iou"].mean()),
               "diversity": float(res["diversity"].mean()), "readers_diversity": float(res["readers_diversity"].mean()),
               "cross": float(res["cross"].mean()), "groups": res["groups"],
               "paired_vs_first": {k: _paired(first[k], res[k]) for k in ("ged", "hm_iou", "diversity")},
               "per_image": {k: res[k].tolist() for k in ("ged", "hm_iou", "diversity", "cross")}}
        rows.append(row)
        parts = ", ".join(f"{g}: area {v['area_ratio']:.3f}, empty {v['empty_hypotheses']:.3f} ({v['slices']})"
                          for g, v in row["groups"].items())
        paired = " ".join(f"d{k} {m:+.4f} (SE {se:.4f})" for k, (m, se) in row["paired_vs_first"].items())
        print(f"{row['method']} {row['steps']} eta {row['eta']:g}: GED {row['ged']:.4f} HM-IoU {row['hm_iou']:.4f} "
              f"diversity {row['diversity']:.3f} (readers {row['readers_diversity']:.3f}) "
              f"hypothesis-reading distance {row['cross']:.3f} | {parts}" + (f" | vs first: {paired}" if len(rows) > 1 else ""),
              flush=True)
    if args.json:
        doc = {"model": args.model, "images": len(data), "samples": args.samples, "seed": args.seed, "rows": rows,
               "command": "python -m training.coverage " + " ".join(sys.argv[1:] if argv is None else argv)}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
