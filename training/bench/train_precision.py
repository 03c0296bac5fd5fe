"""Does bf16 autocast (or channels-last) change what training learns? Score run folders' last EMA
weights by the diffusion training loss on fixed val slices, in fp32, with the same seeds for every run.

    python -m training.bench.train_precision --data ../shared/data/lidc128 --runs runs/amp/fp32 runs/amp/bf16 \
        [--images 256]

The runs must come from one config trained for the same steps (training.train --max-steps N, with and
without --override train.cpu_amp=true); docs/training.md "bf16 on a CPU" has the numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from training import checkpoint as ck
from training.data import build_dataset, pick_annotation
from training.train import build_task, collate


@torch.no_grad()
def val_loss(run: Path, data_root: str, images: int, seed: int = 0, batch: int = 32) -> dict[str, float]:
    """Mean and standard error over batches of the task's loss on the first ``images`` val items."""
    info = ck.read_config(run)
    cfg = info["config"]
    task = build_task(cfg, info["architecture"])
    state = ck.load(run / ck.LAST)
    task.net.load_state_dict(ck.ema_weights(state["ema"]))
    task.net.eval()
    ds = build_dataset(cfg["data"], cfg["data"]["val_split"], data_root)
    idx = np.linspace(0, len(ds) - 1, images).round().astype(int)
    losses = []
    for b, start in enumerate(range(0, images, batch)):
        items = collate([ds[int(i)] for i in idx[start:start + batch]])
        labels, _ = pick_annotation(items["annotations"], torch.Generator().manual_seed(seed + b))
        torch.manual_seed(seed + 1000 + b)  # the same timesteps and noise for every run
        losses.append(float(task.loss(task.net, items["image"], labels)["loss"]))
    arr = np.array(losses)
    return {"step": int(state["step"]), "train_seconds": float(state.get("elapsed", 0.0)),
            "val_loss": float(arr.mean()), "se": float(arr.std(ddof=1) / np.sqrt(len(arr)))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.bench.train_precision", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--images", type=int, default=256)
    args = ap.parse_args(argv)
    out = {run: val_loss(Path(run), args.data, args.images) for run in args.runs}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
