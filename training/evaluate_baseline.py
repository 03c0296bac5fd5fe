"""Score a trained baseline run (``python -m training.train`` with method "baseline") by the same code
path as ``diffseg evaluate``: ``python -m training.evaluate_baseline --run runs/<exp> --data FILE
--samples 16 --output DIR``.

Why a separate entry point: baselines are research comparisons, not shipped models, so they have no
model card; their run folder's config.json holds the architecture and the input preprocessing instead.
The scoring (``evaluate_predictor``), the report (``write_report``: metrics.json + table.md) and the
conventions are the engine's, so baseline and diffusion numbers are comparable line by line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from DiffSegUncertaintyLib.engine.analysis import metrics
from DiffSegUncertaintyLib.engine.networks.checks import InputError
from DiffSegUncertaintyLib.engine.analysis.evaluation import evaluate_predictor, load_multireader_npz, write_report

from . import checkpoint as ck
from .baselines import baseline_predictor, build_baseline


def load_run(run: str | Path, device: str = "cpu"):
    """The baseline network of a run folder with its best (else last EMA) weights, and the run info."""
    info = ck.read_config(Path(run))
    model_cfg = info["config"]["model"]
    if model_cfg.get("method") != "baseline":
        raise InputError(f"{run} trained {model_cfg.get('method')!r}, not a baseline: use diffseg evaluate")
    net = build_baseline(model_cfg["name"], info["architecture"])
    state, which = ck.best_or_last(Path(run))
    net.load_state_dict(state["weights"])
    return net.to(device).eval(), info, which


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.evaluate_baseline", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="training run folder of a baseline")
    ap.add_argument("--data", required=True, help="multi-reader npz (LIDC format)")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=8, help="images per call")
    ap.add_argument("--max-images", type=int, default=None, help="score N images evenly spaced over the file")
    ap.add_argument("--reference", choices=metrics.REFERENCES, default=metrics.DEFAULT_REFERENCE)
    ap.add_argument("--empty", choices=metrics.EMPTY_CONVENTIONS, default=metrics.DEFAULT_EMPTY)
    ap.add_argument("--output", required=True)
    args = ap.parse_args(argv)
    try:
        net, info, which = load_run(args.run, args.device)
        data = load_multireader_npz(args.data).subset(args.max_images)
        if info["config"]["data"].get("fit") == "crop" and info["input"].get("size"):
            data = data.centre_crop(info["input"]["size"])  # scored on the box it was trained on
        predict = baseline_predictor(net, info.get("input", {}).get("preprocessing"), args.seed, args.device)
        result = evaluate_predictor(predict, data.images, data.masks, args.samples, args.batch_size, True,
                                    reference=args.reference, empty=args.empty,
                                    ids=[data.item_id(i) for i in range(len(data))])
        name = info["config"]["model"]["name"]
        jpath, tpath = write_report(result, args.output, name, {
            "model": name, "run": str(args.run), "checkpoint": which, "data": str(data.path),
            "seed": args.seed, "device": args.device})
    except (InputError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(tpath.read_text())
    print(f"wrote {jpath} and {tpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
