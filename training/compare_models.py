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
import sys
from typing import Sequence

import numpy as np
import torch

from DiffSegUncertaintyLib.engine import metrics
from DiffSegUncertaintyLib.engine.checks import InputError
from DiffSegUncertaintyLib.engine.evaluation import data_for_model, load_multireader_npz, predictor_from_model
from DiffSegUncertaintyLib.engine.pipeline import Model, Request


def hypotheses(folder: str, data_path: str, images: int, samples: int, seed: int):
    """(masks (N, M, *S) argmax classes, readings (N, A, *S)) of one model folder, each image drawn as
    ``diffseg sample`` draws it (on the CPU, so both folders run the same kernels)."""
    model = Model.load(folder)
    data = data_for_model(load_multireader_npz(data_path), model.card, images)
    predict = predictor_from_model(model, Request(seed=seed, device="cpu"), data.box)
    with torch.no_grad():
        probs = predict(data.images, samples)  # on the readings' grid
    return probs.argmax(2).numpy(), data.masks


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.compare_models", description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="model folder or name (e.g. the float32 export)")
    ap.add_argument("--b", required=True, help="model folder or name (e.g. the float16 one)")
    ap.add_argument("--data", required=True, help="validation npz")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--samples", type=int, default=Request.samples)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        a, readings = hypotheses(args.a, args.data, args.images, args.samples, args.seed)
        b, _ = hypotheses(args.b, args.data, args.images, args.samples, args.seed)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.shape != b.shape:
        print(f"error: the models' hypotheses differ in shape ({a.shape} vs {b.shape})", file=sys.stderr)
        return 2
    num_classes = int(max(a.max(), b.max(), readings.max())) + 1
    dged, dhm = [], []
    for i in range(len(a)):
        sa = metrics.score_image(a[i], readings[i], None, num_classes)
        sb = metrics.score_image(b[i], readings[i], None, num_classes)
        dged.append(abs(sa["ged"] - sb["ged"]))
        dhm.append(abs(sa["hm_iou"] - sb["hm_iou"]))
    print(f"{len(a)} images x {args.samples} hypotheses, seed {args.seed}")
    print(f"voxels with the same class: {100 * float((a == b).mean()):.4f} %")
    print(f"largest per-image |GED difference|: {np.nanmax(dged):.4f}, |HM-IoU difference|: {np.nanmax(dhm):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
