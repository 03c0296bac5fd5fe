"""Run folders: resumable checkpoints, the best (EMA) weights, the resolved config.

A run folder ``runs/<exp>/`` holds
  config.json   the resolved configuration (file + overrides), the command and the data description
  last.pt       everything to resume: step, network, EMA, optimiser, best-so-far, elapsed time
  best.pt       the EMA weights at the best validation score, with that score
  val.jsonl     one line per validation
  tb/           TensorBoard logs
Checkpoints are our own files, written with torch.save to a temporary name and renamed (a kill during
the write leaves the previous checkpoint intact), read back with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

LAST, BEST, CONFIG, VAL_LOG = "last.pt", "best.pt", "config.json", "val.jsonl"


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to ``path`` via a temporary file in the same folder, then rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any]:
    """A checkpoint of ours (tensors, numbers, strings, dicts only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def ema_weights(ema_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The averaged network's own state dict out of an AveragedModel state dict ("module." prefix)."""
    return {k[len("module."):]: v for k, v in ema_state.items() if k.startswith("module.")}


def write_config(run: Path, config: dict[str, Any]) -> None:
    (run / CONFIG).write_text(json.dumps(config, indent=2, default=str) + "\n")


def read_config(run: Path) -> dict[str, Any]:
    path = Path(run) / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run} a training run folder (python -m training.train)?")
    return json.loads(path.read_text())


def best_or_last(run: Path) -> tuple[dict[str, Any], str]:
    """The best checkpoint's content, else the last one's EMA (no validation ran), and which it was."""
    run = Path(run)
    if (run / BEST).exists():
        return load(run / BEST), BEST
    if (run / LAST).exists():
        ck = load(run / LAST)
        return {"step": ck["step"], "weights": ema_weights(ck["ema"]), "metrics": None}, LAST
    raise FileNotFoundError(f"{run} has no {BEST} or {LAST}: train it first")
