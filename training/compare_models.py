"""Do two model folders draw the same hypotheses? The check behind shipping weights in float16.

    python -m training.compare_models --a runs/export/NAME --b DiffSegUncertainty/Resources/Models/NAME \
        --data ../shared/data/lidc128/val.npz [--images 4] [--samples 16] [--seed 0]

Both folders sample the same validation images (``evaluation.data_for_model``: the subset, stacks and
centre box of ``diffseg evaluate``) with the same noise seeds and their card's default sampler; printed:
the fraction of hypothesis voxels whose class agrees, and the largest per-image difference in GED_M and
HM-IoU_M against the readings. "Loses nothing measurable" means those differences are far below the
spread of the metric over images (docs/results.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from DiffSegUncertaintyLib.engine.analysis import metrics
from DiffSegUncertaintyLib.engine.networks.checks import InputError
from DiffSegUncertaintyLib.engine.analysis.evaluation import data_for_model, load_multireader_npz, predictor_from_model
from DiffSegUncertaintyLib.engine.pipeline import Model, Request


def hypotheses(folder: str, data_path: str, images: int, samples: int, seed: int, precision: str = "fp32"):
    """(masks (N, M, *S) argmax classes, readings (N, A, *S)) of one model folder, each image drawn as
    ``diffseg sample`` draws it (on the CPU, so both folders run the same kernels)."""
    model = Model.load(folder)
    data = data_for_model(load_multireader_npz(data_path), model.card, images)
    predict = predictor_from_model(model, Request(seed=seed, device="cpu", precision=precision), data.box)
    with torch.no_grad():
        probs = predict(data.images, samples)  # on the readings' grid
    return probs.argmax(2).numpy(), data.masks


def paired(scores_a: list[dict[str, float]], scores_b: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per metric: both means and the paired difference b - a over the images where both are defined,
    with its standard error (std over images, ddof 1, / sqrt(n)): the comparison that decides whether a
    new model beats the one it replaces on the same slices and seeds."""
    out = {}
    for key in ("ged", "hm_iou", "dice"):
        if key not in scores_a[0]:
            continue
        va = np.array([s[key] for s in scores_a], dtype=float)
        vb = np.array([s[key] for s in scores_b], dtype=float)
        ok = np.isfinite(va) & np.isfinite(vb)
        d = vb[ok] - va[ok]
        out[key] = {"a": float(va[ok].mean()), "b": float(vb[ok].mean()), "mean_difference": float(d.mean()),
                    "se": float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan"),
                    "max_abs_difference": float(np.abs(d).max()), "n": int(ok.sum())}
    return out


def paired_reports(a: str | Path, b: str | Path) -> dict[str, dict[str, float]]:
    """``paired`` over two ``diffseg evaluate`` metrics.json reports, matched by image id: the check for
    two models scored by the same command (same seed and sampler settings) at different times. The
    images of one report may be a subset of the other's (a 256-slice run against a full-split report:
    an image's hypotheses do not depend on which other images were scored); they are paired on those."""
    ra, rb = (json.loads(Path(p).read_text()) for p in (a, b))
    for key in ("seed", "num_samples", "data"):
        if ra.get(key) != rb.get(key):
            raise InputError(f"the reports differ in {key} ({ra.get(key)!r} vs {rb.get(key)!r}): not paired")
    first, second = ({r["id"]: r for r in rep["per_image"]} for rep in (ra, rb))
    small, large = (first, second) if len(first) <= len(second) else (second, first)
    if not set(small) <= set(large):
        raise InputError("the reports score different images (neither's images are all in the other): "
                         "not paired")
    ids = list(small)
    return paired([first[i] for i in ids], [second[i] for i in ids])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.compare_models", description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="model folder or name (e.g. the float32 export), or with "
                    "--reports a diffseg evaluate metrics.json")
    ap.add_argument("--b", required=True, help="model folder or name (e.g. the float16 one), or a metrics.json")
    ap.add_argument("--reports", action="store_true", help="--a and --b are diffseg evaluate reports of the "
                    "same seed (one's images all in the other's, e.g. 256 slices against a full split): pair their "
                    "per-image scores on the common images (no sampling)")
    ap.add_argument("--data", help="validation npz (not with --reports)")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--samples", type=int, default=Request.samples)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="fp32", help="fp32 (default) or bf16, for both models")
    ap.add_argument("--output", help="also write the per-image scores and the paired summary as JSON")
    args = ap.parse_args(argv)
    if args.reports:
        try:
            table = paired_reports(args.a, args.b)
        except (InputError, OSError, KeyError, json.JSONDecodeError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for key, row in table.items():
            print(f"{key}: a {row['a']:.4f}, b {row['b']:.4f}, b - a {row['mean_difference']:+.4f} "
                  f"(paired SE {row['se']:.4f}, n {row['n']})")
        return 0
    if not args.data:
        ap.error("--data is required without --reports")
    try:
        a, readings = hypotheses(args.a, args.data, args.images, args.samples, args.seed, args.precision)
        b, _ = hypotheses(args.b, args.data, args.images, args.samples, args.seed, args.precision)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.shape != b.shape:
        print(f"error: the models' hypotheses differ in shape ({a.shape} vs {b.shape})", file=sys.stderr)
        return 2
    num_classes = int(max(a.max(), b.max(), readings.max())) + 1
    scores_a = [metrics.score_image(a[i], readings[i], None, num_classes) for i in range(len(a))]
    scores_b = [metrics.score_image(b[i], readings[i], None, num_classes) for i in range(len(b))]
    table = paired(scores_a, scores_b)
    print(f"{len(a)} images x {args.samples} hypotheses, seed {args.seed}, {args.precision}")
    print(f"voxels with the same class: {100 * float((a == b).mean()):.4f} %")
    for key, row in table.items():
        print(f"{key}: a {row['a']:.4f}, b {row['b']:.4f}, b - a {row['mean_difference']:+.4f} "
              f"(paired SE {row['se']:.4f}), largest per-image |difference| {row['max_abs_difference']:.4f}")
    if args.output:
        Path(args.output).write_text(json.dumps({"a": args.a, "b": args.b, "data": args.data, "images": len(a),
                                                 "samples": args.samples, "seed": args.seed,
                                                 "precision": args.precision, "paired": table,
                                                 "per_image": {"a": scores_a, "b": scores_b}},
                                                indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
