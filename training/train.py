"""The one training entry point for every experiment (docs/training.md).

    python -m training.train --config training/configs/<exp>.toml [--data PATH] [--out runs/<exp>]
        [--max-steps N] [--max-minutes M] [--resume] [--seed S] [--device cpu|cuda|cuda:1] [--override key=value ...]
    torchrun --nproc_per_node 4 -m training.train --config ...        (DDP when WORLD_SIZE is set)

Why it is built this way:
- every random choice of step s (batch order, reading, timestep, noise, dropout) comes from seeds
  derived from (seed, step, rank), not from a generator carried along, so a run resumed from its
  last checkpoint makes exactly the choices an uninterrupted run makes (tested);
- one reading per image per step, chosen by the loop (HSRDiff Algorithm 1);
- validation samples a few images with a few hypotheses using the EMA network and keeps the best;
- PGRD is two stages: ``model.stage = "prior"`` trains the prior U-Net alone, ``"diffusion"`` loads a
  prior run's best weights, freezes them and trains the denoiser, ``"both"`` runs one after the other
  (the prior into <out>/prior).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shlex
import sys
import time
import tomllib
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from DiffSegUncertaintyLib.engine.networks import registry
from DiffSegUncertaintyLib.engine.sampling.diffusion import to_probabilities
from DiffSegUncertaintyLib.engine.sampling.sampler import SamplerConfig, sample

from . import checkpoint as ck
from .data import build_dataset, pick_annotation

METHODS = ("pgrd", "hsrdiff", "baseline")
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "model": {"config": {}, "stage": "diffusion", "init_from": ""},
    "data": {"split": "train", "val_split": "val"},
    "train": {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.0, "batch_size": 8, "steps": 0,
              "epochs": 1, "warmup_steps": 0, "grad_clip": 1.0, "ema_decay": 0.999, "amp": True,
              "cpu_amp": False, "channels_last": False, "lr_schedule": "constant", "num_workers": 0,
              "log_every": 50, "checkpoint_every": 500, "resident": False, "compile": ""},
    "validation": {"every": 1000, "images": 32, "samples": 4, "metric": "ged", "batch_size": 8,
                   "sampler": {"method": "ddim", "steps": 25}},
    "sampling": {},
}
MAXIMISE = {"hm_iou", "mdm", "dice", "miou"}


def ema_with_warmup(decay: float) -> Callable[[list[Tensor], list[Tensor], Tensor], None]:
    """EMA for AveragedModel with the usual warm-up: decay_n = min(decay, (1 + n) / (10 + n)) after n
    updates. A fixed decay of 0.999 keeps 0.999^n of the random initial weights: 55% after 600 steps,
    9% after 2400, so short runs and early validations would score a half-random network."""

    @torch.no_grad()
    def update(ema_params: list[Tensor], params: list[Tensor], n_averaged: Tensor) -> None:
        n = float(n_averaged)
        d = min(decay, (1 + n) / (10 + n))
        if torch.is_floating_point(ema_params[0]):
            torch._foreach_lerp_(ema_params, params, 1 - d)
        else:  # integer buffers (e.g. counters) follow the model
            for e, p in zip(ema_params, params):
                e.copy_(p)

    return update


class EMA(AveragedModel):
    """AveragedModel whose update never waits for the device: the count ``n_averaged`` stays a CPU
    buffer and is read there (torch's own update compares it on the device, a host sync per step,
    and ema_with_warmup's ``float(n)`` another). Same arithmetic as AveragedModel with
    ``use_buffers=True`` and a ``multi_avg_fn`` (tested bit for bit)."""

    def __init__(self, net: nn.Module, decay: float):
        super().__init__(net, multi_avg_fn=ema_with_warmup(decay), use_buffers=True)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        ema = [p.detach() for p in (*self.module.parameters(), *self.module.buffers())]
        cur = [p.detach() for p in (*model.parameters(), *model.buffers())]
        if int(self.n_averaged) == 0:  # CPU tensor: no device sync
            torch._foreach_copy_(ema, cur)
        else:
            groups: dict[tuple[Any, Any], tuple[list[Tensor], list[Tensor]]] = {}
            for e, c in zip(ema, cur, strict=True):
                g = groups.setdefault((e.device, e.dtype), ([], []))
                g[0].append(e)
                g[1].append(c)
            for e_list, c_list in groups.values():
                self.multi_avg_fn(e_list, c_list, self.n_averaged)
        self.n_averaged += 1


# -- configuration -----------------------------------------------------------------------------------

def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _parse_value(text: str) -> Any:
    """A TOML value ("3", "true", "[32, 32]", '"lidc"', "{kind = 'cosine'}"), else the bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(cfg: dict[str, Any], key: str, value: Any) -> None:
    """Set cfg[a][b][c] = value for key "a.b.c" (tables created as needed; a table value replaces
    the whole table, e.g. a test swapping the data section)."""
    parts = key.strip().split(".")
    node = cfg
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = copy.deepcopy(value)


def load_config(path: str | os.PathLike, overrides: list[str] | dict[str, Any] | None = None
                ) -> dict[str, Any]:
    """A config file merged over the defaults, with overrides applied last: ``key.path=value``
    strings (TOML values, as --override gives them) or a dict {dotted key: value}. Validated enough
    to fail before any data is read."""
    with open(path, "rb") as f:
        cfg = _merge(DEFAULTS, tomllib.load(f))
    if isinstance(overrides, dict):
        pairs = list(overrides.items())
    else:
        pairs = []
        for item in overrides or []:
            if "=" not in item:
                raise ValueError(f"override {item!r} must look like key.path=value")
            key, text = item.split("=", 1)
            pairs.append((key, _parse_value(text.strip())))
    for key, value in pairs:
        apply_override(cfg, key, value)
    cfg.setdefault("name", Path(path).stem)
    m = cfg["model"]
    if m.get("method") not in METHODS:
        raise ValueError(f"{path}: model.method must be one of {', '.join(METHODS)}")
    if m["method"] == "pgrd" and m["stage"] not in ("prior", "diffusion", "both"):
        raise ValueError(f"{path}: model.stage must be prior, diffusion or both")
    if "dataset" not in cfg["data"]:
        raise ValueError(f"{path}: data.dataset is required")
    return cfg


def stage_config(cfg: dict[str, Any], stage: str) -> dict[str, Any]:
    """The config of one PGRD stage of a "both" config: ``[prior_stage]`` merged over it for the prior."""
    out = copy.deepcopy(cfg)
    if stage == "prior":
        out = _merge(out, cfg.get("prior_stage", {}))
    out["model"]["stage"] = stage
    out.pop("prior_stage", None)
    return out


# -- what is trained -------------------------------------------------------------------------------

@dataclass
class Task:
    """The network that is optimised and how to use it (the same loop serves every method)."""

    net: nn.Module                     # saved, averaged (EMA) and validated
    loss: Callable[[nn.Module, Tensor, Tensor], dict[str, Tensor]]
    params: list[nn.Parameter]
    predict: Callable[[nn.Module, Tensor, int, int], Tensor]   # (net, image, M, seed) -> (B, M, C, *S)
    full: nn.Module                    # what export writes (PGRD: prior + denoiser)


def _diffusion_predict(sampler: dict[str, Any]) -> Callable:
    def predict(net: nn.Module, image: Tensor, m: int, seed: int) -> Tensor:
        y0 = sample(net, image, m, SamplerConfig(**sampler), seed=seed).y0       # (B, M, C, *S)
        return to_probabilities(y0.flatten(0, 1), net.tau_out).reshape(y0.shape)
    return predict


def _baseline_predict(net: nn.Module, image: Tensor, m: int, seed: int) -> Tensor:
    return net.sample_probabilities(image, m, seed=seed)


def _prior_predict(net: nn.Module, image: Tensor, m: int, seed: int) -> Tensor:
    with torch.no_grad():
        p = net.predict_proba(image)[:, None].float().cpu()
    return p.expand(-1, m, *p.shape[2:])  # deterministic: M identical hypotheses


def model_config(cfg: dict[str, Any], dataset: Any) -> dict[str, Any]:
    """The architecture: the preset, the config's ``model.config`` and the data's dimensions."""
    m = cfg["model"]
    dims = {"spatial_dims": dataset.spatial_dims, "in_channels": dataset.in_channels,
            "num_classes": dataset.num_classes}
    if m["method"] == "baseline":
        from .baselines import baseline_config
        size = "tiny" if m.get("preset") == "tiny" else "lidc"
        return baseline_config(m["name"], size, **{**m["config"], **dims})
    return registry.preset_config(m["method"], m["preset"], **{**m["config"], **dims})


def build_task(cfg: dict[str, Any], arch: dict[str, Any]) -> Task:
    """Build the network of a config (fresh weights, PGRD's prior loaded for the diffusion stage)."""
    m = cfg["model"]
    if m["method"] == "baseline":
        from .baselines import build_baseline
        net = build_baseline(m["name"], arch)
        return Task(net, lambda n, x, y: n.loss(x, y), list(net.parameters()), _baseline_predict, net)
    model = registry.build_model(m["method"], arch)
    if m["method"] == "pgrd" and m["stage"] == "prior":
        if model.prior is None:
            raise ValueError("model.stage = 'prior' with use_prior = false: nothing to train")
        return Task(model.prior, lambda n, x, y: n.loss(x, y), list(model.prior.parameters()),
                    _prior_predict, model)
    params = list(model.parameters())
    if m["method"] == "pgrd" and model.prior is not None:
        prior_run = m.get("prior_run")
        if prior_run:
            state, which = ck.best_or_last(Path(prior_run))
            model.prior.load_state_dict(state["weights"])
        elif not m.get("init_from"):  # a model folder holds the prior too: train() copies it in
            raise ValueError("PGRD diffusion stage needs model.prior_run (the prior stage's run folder) or "
                             "model.init_from (a model folder, whose prior is kept)")
        model.freeze_prior()
        params = list(model.denoiser_parameters())
    return Task(model, lambda n, x, y: n.loss(x, y), params, _diffusion_predict(cfg["validation"]["sampler"]),
                model)


class _LossModule(nn.Module):
    """Routes DDP's forward to the task's loss so gradients are synchronised."""

    def __init__(self, net: nn.Module, loss: Callable):
        super().__init__()
        self.net, self._loss = net, loss

    def forward(self, image: Tensor, labels: Tensor) -> dict[str, Tensor]:
        return self._loss(self.net, image, labels)


# -- data order ----------------------------------------------------------------------------------

def step_seed(seed: int, step: int, rank: int = 0, salt: int = 0) -> int:
    return (int(seed) * 1_000_003 + int(step) * 8_191 + int(rank) * 131 + salt) % (2 ** 63)


def epoch_batches(n: int, batch: int, seed: int, epoch: int, world: int, rank: int) -> list[list[int]]:
    """This rank's batches of one epoch: DistributedSampler's shuffled share, cut into full batches."""
    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                 drop_last=True)
    sampler.set_epoch(epoch)
    idx = list(sampler)
    return [idx[i:i + batch] for i in range(0, len(idx) - batch + 1, batch)]


def reading_choice(items: int, readings: int, seed: int, step: int, world: int, rank: int,
                   weights: Tensor | None = None) -> Tensor:
    """Which reading each of this rank's ``items`` trains on at ``step`` (HSRDiff Algorithm 1, line 1),
    (items,) on the CPU. Drawn from a generator of the step alone for the whole global batch and split as
    the items are (rank r holds global positions r, r + world, ..., epoch_batches), so a DDP run reads what
    a 1-process run with the same global batch reads. Weighted choices (Cityscapes) are drawn per rank:
    their weights live on the rank's own items."""
    if world == 1 or weights is not None:
        gen = torch.Generator().manual_seed(step_seed(seed, step, rank, salt=1))
        return pick_annotation(torch.zeros(items, readings), gen, weights)[1]
    gen = torch.Generator().manual_seed(step_seed(seed, step, 0, salt=1))
    return pick_annotation(torch.zeros(items * world, readings), gen)[1][rank::world]


def collate(items: list[dict]) -> dict[str, Any]:
    out = {"image": torch.stack([it["image"] for it in items]),
           "annotations": torch.stack([it["annotations"] for it in items]),
           "id": [it["id"] for it in items]}
    if "weights" in items[0]:
        out["weights"] = torch.stack([it["weights"] for it in items])
    return out


# -- validation --------------------------------------------------------------------------------------

@torch.no_grad()
def validate(task: Task, net: nn.Module, dataset: Any, cfg: dict[str, Any], device: torch.device,
             seed: int) -> dict[str, float]:
    """Mean metrics over the first ``validation.images`` items with ``validation.samples`` hypotheses,
    through engine.analysis.evaluation.evaluate_predictor (the same scoring as ``diffseg evaluate``)."""
    from DiffSegUncertaintyLib.engine.analysis.evaluation import evaluate_predictor
    v = cfg["validation"]
    n = min(int(v["images"]), len(dataset))
    # evenly spaced over the split (as diffseg evaluate --max-images), not its first patients
    items = [dataset[int(i)] for i in np.linspace(0, len(dataset) - 1, n).round().astype(int)]
    images = np.stack([it["image"].numpy() for it in items])             # (N, Cin, *S), preprocessed
    annotations = np.stack([it["annotations"].numpy() for it in items])  # (N, A, *S)
    was = net.training
    net.eval()
    try:
        result = evaluate_predictor(lambda x, m: task.predict(net, torch.from_numpy(x).to(device), m, seed),
                                    images, annotations, int(v["samples"]), int(v["batch_size"]),
                                    ids=[it["id"] for it in items])
    finally:
        net.train(was)
    return {k: mean for k, (mean, _) in result["summary"].items()}


def better(metric: str, new: float, old: float | None) -> bool:
    if old is None or (isinstance(old, float) and math.isnan(old)):
        return not math.isnan(new)
    return new > old if metric in MAXIMISE else new < old


# -- the loop ------------------------------------------------------------------------------------

def _device(name: str | None, local_rank: int) -> torch.device:
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device(f"cuda:{local_rank}")
    return torch.device("cpu")


def hardware(device: torch.device, world: int) -> str:
    """What the card says a run trained on: the GPU's name, or the CPU's model and core count."""
    if device.type == "cuda":
        return f"{world} x {torch.cuda.get_device_name(device)} (cuda), torch {torch.__version__}"
    return f"{world} x {cpu_name()} with {os.cpu_count()} cores (cpu), torch {torch.__version__}"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def learning_rate(t_cfg: dict[str, Any], step: int, total: int) -> float:
    """Linear warm-up, then constant (``train.lr_schedule = "constant"``) or a cosine decay to 0 at the
    configured total (``"cosine"``), a function of the step alone so a resumed run keeps the schedule."""
    lr = float(t_cfg["lr"]) * min(1.0, (step + 1) / max(1, int(t_cfg["warmup_steps"])))
    if t_cfg["lr_schedule"] == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(1, total)))
    if t_cfg["lr_schedule"] != "constant":
        raise ValueError(f"train.lr_schedule must be constant or cosine, not {t_cfg['lr_schedule']!r}")
    return lr


def cpu_has_bf16() -> bool:
    """The sampler's test for native bf16 (AMX / AVX512-BF16), imported when asked: the engine's pipeline
    imports SimpleITK, which the GPU machine lacks and the campaign only stubs after importing this module."""
    from DiffSegUncertaintyLib.engine.pipeline import cpu_has_bf16 as native

    return native()


def autocast_for(dev: torch.device, t_cfg: dict[str, Any]) -> Any:
    """bf16 autocast: on CUDA when ``train.amp`` (the default), on a CPU only when ``train.cpu_amp``
    asks for it and the CPU runs bf16 natively (AMX / AVX512-BF16, ``cpu_has_bf16``).
    Measured 3.4x faster with AMX; on a CPU without them bf16 is emulated, 19x slower than
    fp32, so such a CPU trains in fp32 and says so (docs/training.md "bf16 on a CPU")."""
    if dev.type == "cuda" and t_cfg["amp"]:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if dev.type == "cpu" and t_cfg["cpu_amp"]:
        if cpu_has_bf16():
            return torch.autocast("cpu", dtype=torch.bfloat16)
        print("train.cpu_amp: this CPU has no native bf16 (AMX / AVX512-BF16): training in fp32, "
              "bf16 would be emulated and slower", file=sys.stderr)
    return nullcontext()


def init_from_model(net: nn.Module, folder: str | os.PathLike) -> None:
    """Warm start: copy a model folder's weights (safetensors, e.g. a shipped model) into ``net``, so
    a longer run continues a shorter one whose checkpoints are gone. The architectures must match,
    except PGRD's DDS heads: they serve only the training loss (eq. 9), so a run without them (the
    "w/o DDS" ablation, dds_weight = 0) may continue a model trained with them; they are dropped."""
    from safetensors.torch import load_file

    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"model.init_from: no {path}")
    state = load_file(str(path), device="cpu")
    if getattr(net, "dds_heads", False) is None:
        state = {k: v for k, v in state.items() if not k.startswith("dds_heads.")}
    ref = net.state_dict()
    state = {k: v.to(ref[k].dtype) if k in ref else v for k, v in state.items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"model.init_from {folder}: architecture differs (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")


class Resident:
    """The whole training split as device tensors (``train.resident``): a step indexes them instead of
    collating items on the host and copying them over, which on a GPU costs more than a small
    network's step. The item and reading indices of a run of steps are copied over once (``plan``), so
    a step makes no host-device copy and no sync. The batches, readings and values are the DataLoader
    path's (tested bit for bit)."""

    def __init__(self, dataset: Any, dev: torch.device):
        items = [dataset[i] for i in range(len(dataset))]
        self.image = torch.stack([it["image"] for it in items]).to(dev)
        ann = torch.stack([it["annotations"] for it in items])
        small = ann.min() >= 0 and ann.max() <= 255        # labels travel as uint8 (8x less memory)
        self.annotations = (ann.to(torch.uint8) if small else ann).to(dev)
        self.dtype = ann.dtype
        self.weights = torch.stack([it["weights"] for it in items]) if "weights" in items[0] else None

    def plan(self, batches: list[list[int]], first_step: int, seed: int, world: int, rank: int
             ) -> Any:
        """(image, labels) of each step of ``batches`` (the steps from ``first_step`` on), lazily."""
        dev = self.image.device
        items = torch.tensor(batches, dtype=torch.long)                               # (S, b)
        a = self.annotations.shape[1]
        choice = torch.stack([reading_choice(len(b), a, seed, first_step + j, world, rank,
                                             None if self.weights is None else self.weights[b])
                              for j, b in enumerate(batches)])
        pinned = dev.type == "cuda"
        both = torch.stack([items, choice])
        both = both.pin_memory().to(dev, non_blocking=True) if pinned else both.to(dev)
        for j in range(len(batches)):
            idx, pick = both[0, j], both[1, j]
            yield self.image[idx], self.annotations[idx, pick].to(self.dtype)  # reading pick[i] of item i


def compiled(step_fn: nn.Module, mode: str) -> nn.Module:
    """``train.compile``: "" (eager), "default", "reduce-overhead", "max-autotune-no-cudagraphs".
    The loss module is compiled in place (state-dict keys unchanged). Compiled random ops draw from
    inductor's generator, seeded from torch's, so a compiled run is reproducible but not equal to eager."""
    if not mode:
        return step_fn
    if mode not in ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"):
        raise ValueError(f"train.compile = {mode!r}: use '', default, reduce-overhead, max-autotune or "
                         "max-autotune-no-cudagraphs")
    step_fn.compile(mode=mode, dynamic=False)
    return step_fn


def train(cfg: dict[str, Any], out: Path, *, data_root: str | None = None, max_steps: int | None = None,
          resume: bool = False, device: str | None = None, command: str = "", quiet: bool = False,
          deadline: float | None = None) -> dict[str, Any]:
    """Train one config into ``out``; returns a summary (steps, losses, best, and ``stopped``: "steps"
    or "time"). ``deadline``: a ``time.monotonic()`` instant after which the run saves its last
    checkpoint and returns at the next step (the GPU campaign's time budget; ``--resume`` continues)."""
    if cfg["model"]["method"] == "pgrd" and cfg["model"]["stage"] == "both":
        prior_cfg = stage_config(cfg, "prior")
        train(prior_cfg, out / "prior", data_root=data_root, max_steps=max_steps, resume=resume,
              device=device, command=command, quiet=quiet, deadline=deadline)
        diff_cfg = stage_config(cfg, "diffusion")
        diff_cfg["model"]["prior_run"] = str(out / "prior")
        return train(diff_cfg, out, data_root=data_root, max_steps=max_steps, resume=resume, device=device,
                     command=command, quiet=quiet, deadline=deadline)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = _device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    main = rank == 0
    seed, t_cfg = int(cfg["seed"]), cfg["train"]

    train_ds = build_dataset(cfg["data"], cfg["data"]["split"], data_root)
    val_ds = build_dataset(cfg["data"], cfg["data"]["val_split"], data_root) if cfg["validation"]["every"] else None
    arch = model_config(cfg, train_ds)
    torch.manual_seed(seed)
    task = build_task(cfg, arch)
    task.full.to(dev)
    net = task.net
    if cfg["model"]["init_from"] and not (resume and (out / ck.LAST).exists()):
        init_from_model(net, cfg["model"]["init_from"])
    # channels-last: (B, H, W, C) in memory for 2D networks, (B, D, H, W, C) for 3D ones
    layout = torch.channels_last_3d if arch.get("spatial_dims") == 3 else torch.channels_last
    if t_cfg["channels_last"]:
        net.to(memory_format=layout)
    net.train()
    ema = EMA(net, float(t_cfg["ema_decay"]))
    opt_cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[t_cfg["optimizer"].lower()]
    opt = opt_cls([p for p in task.params if p.requires_grad], lr=float(t_cfg["lr"]),
                  weight_decay=float(t_cfg["weight_decay"]))
    step_fn = _LossModule(net, task.loss)
    if world > 1:
        step_fn = nn.parallel.DistributedDataParallel(
            step_fn, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=True)
    step_fn = compiled(step_fn, str(t_cfg["compile"] or ""))
    resident = Resident(train_ds, dev) if t_cfg["resident"] else None

    local_bs = int(t_cfg["batch_size"]) // world
    if local_bs < 1:
        raise ValueError(f"batch_size {t_cfg['batch_size']} is smaller than the {world} processes")
    per_epoch = len(epoch_batches(len(train_ds), local_bs, seed, 0, world, rank))
    if per_epoch == 0:
        raise ValueError(f"{len(train_ds)} training items cannot fill one batch of {t_cfg['batch_size']}")
    total = int(t_cfg["steps"]) or int(t_cfg["epochs"]) * per_epoch
    stop = min(total, int(max_steps)) if max_steps else total

    out.mkdir(parents=True, exist_ok=True)
    step, best, elapsed, best_metrics = 0, None, 0.0, None
    if resume and (out / ck.LAST).exists():
        state = ck.load(out / ck.LAST)
        net.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        step, best, elapsed = int(state["step"]), state.get("best"), float(state.get("elapsed", 0.0))
        best_metrics = state.get("best_metrics")
    elif resume and main and not quiet:
        print(f"no {out / ck.LAST}: starting from step 0")
    info = {"config": cfg, "architecture": arch, "command": command, "world_size": world,
            "hardware": hardware(dev, world), "total_steps": total, "steps_per_epoch": per_epoch,
            "data": {"dataset": cfg["data"]["dataset"], "train_split": cfg["data"]["split"],
                     "val_split": cfg["data"]["val_split"], "train_items": len(train_ds),
                     "val_items": len(val_ds) if val_ds is not None else 0,
                     "root": str(data_root or "")},
            "input": {"channels": train_ds.channels, "preprocessing": train_ds.preprocessing,
                      "size": list(train_ds[0]["image"].shape[1:]),
                      "roi_required": bool(getattr(train_ds, "roi_required", False))},
            "classes": list(train_ds.class_names)}
    if main:
        ck.write_config(out, info)

    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out / "tb"), purge_step=step)
    amp = autocast_for(dev, t_cfg)
    v_cfg = cfg["validation"]
    metric = v_cfg["metric"]
    losses: list[float] = []
    pending: list[Tensor] = []   # this window's losses, still on the device: read every log_every steps
    stopped = "steps"

    def flush() -> None:
        """Bring the window's losses to the host (the only per-window sync) and refuse a non-finite one."""
        if not pending:
            return
        values = torch.stack(pending).float().cpu().tolist()
        first = step - len(values)
        pending.clear()
        losses.extend(values)
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"loss is {values[bad[0]]} at step {first + bad[0]}: lower train.lr or "
                                     "check data")
        bar.set_postfix(loss=f"{values[-1]:.4f}")

    def save_last() -> None:
        flush()  # never write a checkpoint after a non-finite loss
        if main:
            ck.atomic_save({"step": step, "model": net.state_dict(), "ema": ema.state_dict(),
                            "optimizer": opt.state_dict(), "best": best, "best_metrics": best_metrics,
                            "elapsed": elapsed}, out / ck.LAST)

    bar = tqdm(total=stop, initial=step, desc=cfg["name"], disable=not main or quiet, dynamic_ncols=True)
    t0 = time.perf_counter()
    while step < stop:
        epoch, offset = divmod(step, per_epoch)
        batches = epoch_batches(len(train_ds), local_bs, seed, epoch, world, rank)[offset:]
        if resident is not None:
            loader = resident.plan(batches[: stop - step], step, seed, world, rank)
        else:
            loader = DataLoader(train_ds, batch_sampler=batches[: stop - step], collate_fn=collate,
                                num_workers=int(t_cfg["num_workers"]))
        for batch in loader:
            if resident is not None:
                image, labels = batch
            else:
                ann = batch["annotations"]
                pick = reading_choice(ann.shape[0], ann.shape[1], seed, step, world, rank, batch.get("weights"))
                labels, image = ann[torch.arange(ann.shape[0]), pick], batch["image"]
            torch.manual_seed(step_seed(seed, step, rank))  # timesteps, noise, dropout of this step
            for g in opt.param_groups:
                g["lr"] = learning_rate(t_cfg, step, total)
            image = image.to(dev)
            if t_cfg["channels_last"]:
                image = image.contiguous(memory_format=layout)
            with amp:
                parts = step_fn(image, labels.to(dev))
            loss = parts["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t_cfg["grad_clip"]:
                nn.utils.clip_grad_norm_(task.params, float(t_cfg["grad_clip"]))
            opt.step()
            ema.update_parameters(net)
            step += 1
            pending.append(loss.detach())
            now = time.perf_counter()
            elapsed, t0 = elapsed + now - t0, now
            bar.update(1)
            if step % int(t_cfg["log_every"]) == 0 or step == stop:
                flush()
            if writer and (step % int(t_cfg["log_every"]) == 0 or step == stop):
                for k, val in parts.items():
                    writer.add_scalar(f"train/{k}", float(torch.as_tensor(val).detach().float().mean()), step)
                writer.add_scalar("train/lr", opt.param_groups[0]["lr"], step)
            if val_ds is not None and main and (step % int(v_cfg["every"]) == 0 or step == total):
                with amp:
                    scores = validate(task, ema.module, val_ds, cfg, dev, seed)
                scores["step"] = step
                with open(out / ck.VAL_LOG, "a") as f:
                    f.write(json.dumps(scores) + "\n")
                for k, val in scores.items():
                    if k != "step" and writer:
                        writer.add_scalar(f"val/{k}", val, step)
                if better(metric, scores[metric], best):
                    best, best_metrics = float(scores[metric]), scores
                    ck.atomic_save({"step": step, "weights": ck.ema_weights(ema.state_dict()),
                                    "metrics": scores, "settings": {k: v_cfg[k] for k in
                                                                    ("images", "samples", "metric", "sampler")}},
                                   out / ck.BEST)
                t0 = time.perf_counter()  # validation time is not training time
            if step % int(t_cfg["checkpoint_every"]) == 0 or step == stop:
                save_last()
                t0 = time.perf_counter()
            if deadline is not None and past(deadline, world):
                stopped = "time"
                break
        if stopped == "time":
            break
    bar.close()
    save_last()
    if writer:
        writer.close()
    return {"step": step, "total": total, "losses": losses, "best": best, "best_metrics": best_metrics,
            "out": str(out), "stopped": stopped}


def past(deadline: float, world: int) -> bool:
    """Whether the wall-clock budget is spent; under DDP rank 0's clock decides for all (one small
    broadcast per step, only when a deadline is set), so every rank stops at the same step."""
    flag = torch.tensor([time.monotonic() >= deadline], dtype=torch.int32)
    if world > 1:
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.broadcast(flag, 0)
    return bool(flag.item())


# -- command line --------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="training/configs/<exp>.toml")
    ap.add_argument("--data", help="data folder (else DIFFSEG_LIDC / DIFFSEG_BRATS / ... see docs/training.md)")
    ap.add_argument("--out", help="run folder (default runs/<config name>)")
    ap.add_argument("--max-steps", type=int, help="stop at this global step (the schedule still uses the config's total)")
    ap.add_argument("--resume", action="store_true", help="continue from <out>/last.pt at its step")
    ap.add_argument("--seed", type=int, help="replaces the config's seed")
    ap.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="set a config entry, e.g. data.size=64 or train.lr=3e-4 (TOML values)")
    ap.add_argument("--max-minutes", type=float,
                    help="stop (and save last.pt) once this much wall-clock time has passed; --resume continues")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    from .data import DataMissing
    try:
        cfg = load_config(args.config, args.override)
        if args.seed is not None:
            cfg["seed"] = args.seed
        out = Path(args.out or Path("runs") / cfg["name"])
        command = " ".join(shlex.quote(a) for a in ["python", "-m", "training.train", *(argv or sys.argv[1:])])
        if args.max_minutes is not None and not (args.max_minutes > 0 and math.isfinite(args.max_minutes)):
            raise ValueError(f"--max-minutes {args.max_minutes}: must be a positive number")
        deadline = time.monotonic() + 60 * args.max_minutes if args.max_minutes else None
        result = train(cfg, out, data_root=args.data, max_steps=args.max_steps, resume=args.resume,
                       device=args.device, command=command, quiet=args.quiet, deadline=deadline)
    except (DataMissing, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if not args.quiet:
        print(f"{'stopped by --max-minutes' if result['stopped'] == 'time' else 'done'}: "
              f"step {result['step']}/{result['total']}, best {cfg['validation']['metric']} = "
              f"{result['best']}, run folder {result['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
