"""DDP training under torchrun (gloo on CPU, issue 15): 2 processes with the same global batch reproduce
a 1-process run.

What differs between the two, and why the match holds: the items of a global step are the same
(DistributedSampler's share r, r + 2, ... of the epoch's permutation, cut into half batches, is the
1-process batch split in two), the readings are drawn for the global batch from a generator of the step
(train.reading_choice), the loss is a mean over equal halves and DDP averages the halves' gradients: the
update is the 1-process update up to float summation order. So a deterministic loss (the U-Net
baseline: no dropout, instance norm) matches to float rounding: after 4 Adam steps at lr 1e-3 the weights
agree within 2e-5 (measured at most 9e-8 on 2 cores), except the parameters whose gradient is zero up to
rounding (the conv biases that feed an instance norm, gradient RMS ~1e-9 against ~1e-3): Adam's
g / sqrt(v) turns their rounding noise into steps of +-lr, different in every summation order, so the test
names them from Adam's own second moment and leaves them out (they do not change the network's output). The diffusion losses draw their timesteps and
noise per rank (``torch.manual_seed(step_seed(seed, step, rank))``: the engine's losses draw from the
global generator), so a DDP diffusion run is the same estimator with other draws, not the same numbers:
that test checks it trains and stays within the update's own size of the 1-process run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from training import checkpoint as ck
from training.train import load_config, train

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "training" / "configs"
COMMON = {"model.preset": "tiny", "data": {"dataset": "lidc", "split": "val", "val_split": "val", "dims": 2,
                                           "size": 16, "train_limit": 16, "foreground_only": True},
          "train.batch_size": 4, "train.steps": 4, "train.lr": 1e-3, "train.warmup_steps": 0,
          "train.log_every": 1, "train.checkpoint_every": 100, "train.num_workers": 0, "validation.every": 0}


def _override_args(ov: dict) -> list[str]:
    def toml(v):
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {toml(x)}" for k, x in v.items()) + "}"
        if isinstance(v, bool):
            return "true" if v else "false"
        return f'"{v}"' if isinstance(v, str) else repr(v)
    return [a for k, v in ov.items() for a in ("--override", f"{k}={toml(v)}")]


def _runs(config: str, lidc_root: Path, tmp_path: Path, **extra) -> tuple[dict, dict, dict]:
    """(1-process last.pt, 2-process last.pt, the initial weights) of the same config."""
    ov = {**COMMON, **extra}
    one = tmp_path / "one"
    train(load_config(CONFIGS / config, ov), one, data_root=str(lidc_root), device="cpu", quiet=True)
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training.train", "--config", str(CONFIGS / config), "--data", str(lidc_root), "--out", str(two),
           "--device", "cpu", "--quiet", *_override_args(ov)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ck.read_config(two)["world_size"] == 2
    zero = tmp_path / "zero"
    train(load_config(CONFIGS / config, {**ov, "train.steps": 4, "train.lr": 0.0}), zero,
          data_root=str(lidc_root), device="cpu", quiet=True)
    return ck.load(one / ck.LAST), ck.load(two / ck.LAST), ck.load(zero / ck.LAST)


def test_ddp_two_processes_match_one_with_the_same_global_batch(lidc_root, tmp_path):
    a, b, start = _runs("baseline-unet.toml", lidc_root, tmp_path)
    assert a["step"] == b["step"] == 4
    names = [k for k in a["model"] if a["model"][k].is_floating_point()]
    state = a["optimizer"]["state"]
    assert len(state) == len(names)          # no floating buffers: optimizer index i is names[i]
    # Parameters whose gradient is zero up to rounding (conv biases feeding an instance norm, which
    # subtracts them): Adam's g / sqrt(v) turns that rounding into +-lr steps, in 1 process as in 2.
    rms = {k: float(state[i]["exp_avg_sq"].sqrt().max()) for i, k in enumerate(names)}
    noise = {k for k in names if rms[k] < 1e-6 * max(rms.values())}
    assert all(k.endswith(".bias") for k in noise) and len(noise) < len(names) // 3, noise
    moved = max(float((a["model"][k] - start["model"][k]).abs().max()) for k in names)
    diff = {k: float((a["model"][k] - b["model"][k]).abs().max()) for k in names if k not in noise}
    print(f"unet 2 vs 1 process: max |diff| {max(diff.values()):.3g}, moved {moved:.3g}, noise {sorted(noise)}")
    assert moved > 1e-3                      # the weights did move: the comparison means something
    assert max(diff.values()) < 2e-5, f"2 processes differ from 1 by {diff} (the weights moved by {moved})"
    for k in diff:
        assert torch.allclose(a["ema"]["module." + k], b["ema"]["module." + k], atol=2e-5), k


def test_ddp_diffusion_trains_within_the_updates_size(lidc_root, tmp_path):
    a, b, start = _runs("hsrdiff-small-cpu.toml", lidc_root, tmp_path)
    assert a["step"] == b["step"] == 4
    keys = [k for k in a["model"] if a["model"][k].is_floating_point()]
    moved = torch.cat([(a["model"][k] - start["model"][k]).flatten() for k in keys]).norm()
    diff = torch.cat([(a["model"][k] - b["model"][k]).flatten() for k in keys]).norm()
    print(f"hsrdiff 2 vs 1 process: |diff| {float(diff):.4g}, |update| {float(moved):.4g}")
    assert torch.isfinite(diff) and moved > 0
    # other timesteps and noise per rank: the same kind of step, not the same numbers
    assert diff < moved, f"|2-proc - 1-proc| = {diff:.3g} vs the update {moved:.3g}"
