"""Timing, peak memory, FLOP counts and device peaks for the sampling benchmark.

Two ways to time a sampler, always labelled in the output:
- "measured": the whole run, wall clock (synchronised on a GPU);
- "per-step x steps": the run is stopped after ``k`` steps (the sampler's cancel callback / the
  reference's step callback); the time up to the end of the first step (image encoding + setup + step 1)
  is measured, the median of the later step times is the per-step time, and the full run is
  ``first + per_step * (steps - 1)`` (reference: ``per_step * steps * hypotheses``). A network's cost
  does not depend on t, so this is exact up to timing noise, but it is an extrapolation, not a run.

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention; elementwise ops
and normalisations are not counted) on one denoiser evaluation of one hypothesis and one image encoding.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from DiffSegUncertaintyLib.engine.sampling.diffusion import repeat_condition
from DiffSegUncertaintyLib.engine.sampling.sampler import SamplerConfig, SamplingCancelled, default_batch_size, sample

from . import reference

# Dense (no sparsity) peak TFLOP/s from the vendors' data sheets: fp32 (CUDA cores), tf32, bf16/fp16.
GPU_PEAKS_TFLOPS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0},
    "H100 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.0},
    "H100": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4},   # SXM
    "H200": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},
    "L40S": {"fp32": 91.6, "tf32": 183.0, "bf16": 362.0},
}


# -- devices -----------------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def nominal_peak(device: torch.device, threads: int) -> dict[str, Any]:
    """Data-sheet peak of a GPU; for a CPU the nominal fp32 FMA peak threads x GHz x FLOP/cycle, with
    32 FLOP/cycle/core assumed for AVX2/AVX-512 with two 256-bit FMA pipes (an assumption, labelled)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAKS_TFLOPS.items():
            if key in name:
                return {"name": name, "source": f"data sheet ({key}, dense)", "tflops": dict(peaks)}
        return {"name": name, "source": "unknown GPU: no data-sheet peak", "tflops": {}}
    ghz, flags, model = 0.0, "", "CPU"
    try:
        info = open("/proc/cpuinfo").read()
        mhz = [float(line.split(":")[1]) for line in info.splitlines() if line.startswith("cpu MHz")]
        ghz = (max(mhz) / 1000) if mhz else 0.0
        flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
        model = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                      if line.startswith("model name")), "CPU")
    except OSError:
        pass
    per_cycle = 32 if " fma" in flags else 8
    fp32 = threads * ghz * per_cycle / 1000
    peaks = {"fp32": round(fp32, 3)}
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        peaks["bf16"] = round(2 * fp32, 3)
    return {"name": f"{model}, {threads} thread(s) at {ghz:.2f} GHz", "tflops": peaks,
            "source": f"nominal: threads x GHz x {per_cycle} FLOP/cycle (assumed, not a data sheet)"}


def gemm_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int | None = None,
              seconds: float = 1.0) -> float:
    """Achieved TFLOP/s of a square matmul: the practical ceiling a convolution network can approach."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    reps, start = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        sync(device)
        if time.perf_counter() - start > seconds:
            break
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e12


# -- memory ------------------------------------------------------------------------------------------

def _rss_kb(key: str) -> int:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, Any]]:
    """GPU: peak allocated by torch during the block. CPU: the process's peak resident set size
    during the block (VmHWM, reset through /proc/self/clear_refs) minus the RSS at its start."""
    out: dict[str, Any] = {}
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield out
        sync(device)
        out.update(peak_mb=torch.cuda.max_memory_allocated(device) / 2 ** 20,
                   extra_mb=(torch.cuda.max_memory_allocated(device) - base) / 2 ** 20,
                   kind="torch.cuda.max_memory_allocated")
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        ok = True
    except OSError:
        ok = False
    base = _rss_kb("VmRSS:")
    yield out
    peak = _rss_kb("VmHWM:")
    out.update(peak_mb=peak / 1024, extra_mb=(peak - base) / 1024 if ok else float("nan"),
               kind="process VmHWM" + ("" if ok else " (not resettable: lifetime peak)"))


# -- FLOPs -------------------------------------------------------------------------------------------

def count_flops(model, image: Tensor) -> dict[str, int]:
    """FLOPs of one image encoding and of one denoiser evaluation for one hypothesis."""
    device = next(model.parameters()).device
    image = image.to(device)
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            cond = model.encode(image)
        enc = fc.get_total_flops()
        x = torch.randn(1, model.num_classes, *image.shape[2:], device=device)
        t = torch.full((1,), max(1, model.schedule.T // 2), dtype=torch.long, device=device)
        with FlopCounterMode(display=False) as fc:
            model.denoise(x, t, repeat_condition(cond, 1))
        den = fc.get_total_flops()
    return {"encode": int(enc), "denoise": int(den)}


# -- options -----------------------------------------------------------------------------------------

@dataclass
class Options:
    """Speed switches, each measurable on its own (``--sweep-options``).

    autocast "bf16" and channels_last are the sampler's own options (``sample(precision="bf16",
    channels_last=True)``), so the benchmark measures what users get; "fp16" autocast, tf32, compile
    and CUDA graphs are applied around the sampler here. The sampler always runs under
    ``torch.inference_mode()``; ``inference_mode`` is kept so older commands still parse (no effect)."""

    autocast: str = "none"          # none | bf16 | fp16
    tf32: bool = False
    channels_last: bool = False
    compile: str = "off"            # off | default | max-autotune-no-cudagraphs
    cuda_graphs: bool = False       # torch.compile mode "reduce-overhead" (CUDA graph trees)
    inference_mode: bool = False    # no effect: the sampler always uses torch.inference_mode()

    def precision(self) -> str:
        """The sampler's ``precision`` argument."""
        return "bf16" if self.autocast == "bf16" else "fp32"

    def label(self) -> str:
        parts = []
        if self.tf32:
            parts.append("tf32")
        if self.autocast != "none":
            parts.append(f"autocast-{self.autocast}")
        if self.channels_last:
            parts.append("channels-last")
        if self.compile != "off":
            parts.append(f"compile({self.compile})")
        if self.cuda_graphs:
            parts.append("cuda-graphs")
        return "+".join(parts) or "fp32 eager"

    def asdict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@contextlib.contextmanager
def applied(model, options: Options, device: torch.device) -> Iterator[Any]:
    """Apply ``options`` to a model for the block (restored after); yields the model."""
    saved_tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if options.tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if options.compile != "off" or options.cuda_graphs:
        mode = "reduce-overhead" if options.cuda_graphs else options.compile
        model.denoise = torch.compile(model.denoise, mode=None if mode == "default" else mode)
    ctx = contextlib.ExitStack()
    if options.autocast == "fp16":  # bf16 is the sampler's own precision="bf16"
        ctx.enter_context(torch.autocast(device.type, dtype=torch.float16))
    try:
        with ctx:
            yield model
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_tf32
        if "denoise" in model.__dict__:
            del model.denoise


# -- timing ------------------------------------------------------------------------------------------

@dataclass
class Timing:
    seconds: float                  # the whole run (measured, or first + chunk step * (steps x chunks - 1))
    timing: str                     # "measured" | "per-step x steps"
    per_step: float                 # one step of all hypotheses (project) / of one hypothesis (reference)
    first: float = float("nan")     # encode + setup + first step (of the first chunk)
    steps_measured: int = 0
    memory: dict[str, Any] = field(default_factory=dict)
    output: Tensor | None = None
    chunk: int = 0                  # (image, sample) pairs per network call (project)


def time_project(model, image: Tensor, num_samples: int, config: SamplerConfig, device: torch.device, *,
                 measure: str = "full", k: int = 2, seed: int = 0, batch_size: int | None = None,
                 options: Options | None = None, warmup_steps: int = 1) -> Timing:
    """Time ``sampler.sample`` for ``num_samples`` hypotheses of one image.

    batch_size None: the sampler's device-aware default chunk (``sampler.default_batch_size``). With
    chunks, per-step mode times ``k`` steps of the first chunk; ``per_step`` is always one step of all
    hypotheses (chunk step x items / chunk)."""
    options = options or Options()
    image = image.to(device)
    total = len(model.schedule.timesteps(config.steps, config.spacing))
    items = image.shape[0] * num_samples
    chunk = batch_size or default_batch_size(device, image.shape[2:], items)
    chains = math.ceil(items / chunk)
    stamps: list[float] = []

    def run(limit: int | None) -> Tensor | None:
        stamps.clear()
        try:
            res = sample(model, image, num_samples, config, seed=seed, batch_size=chunk,
                         progress=lambda d, n: (sync(device), stamps.append(time.perf_counter())),
                         cancel=(lambda: len(stamps) >= limit) if limit else None,
                         precision=options.precision(), channels_last=options.channels_last)
            return res.y0
        except SamplingCancelled:
            return None

    with applied(model, options, device):
        if warmup_steps > 0:
            run(min(warmup_steps, total) if total > warmup_steps else None)  # oneDNN / cuDNN / compile
        sync(device)
        with peak_memory(device) as mem:
            start = time.perf_counter()
            full = measure == "full" or k >= total * chains
            out = run(None if full else k)
            sync(device)
            end = time.perf_counter()
    if full:
        return Timing(end - start, "measured", (end - start) / total, stamps[0] - start, len(stamps), mem, out,
                      chunk=chunk)
    first = stamps[0] - start
    diffs = [b - a for a, b in zip(stamps, stamps[1:])]
    per_chunk_step = statistics.median(diffs) if diffs else first
    return Timing(first + per_chunk_step * (total * chains - 1), "per-step x steps",
                  per_chunk_step * items / chunk, first, len(stamps), mem, chunk=chunk)


def time_reference(model, image: Tensor, num_samples: int, steps: int | None, device: torch.device, *,
                   measure: str = "full", k: int = 2, seed: int = 0) -> Timing:
    """Time the paper-faithful sampler (fp32 eager, batch 1, condition recomputed every step)."""
    image = image.to(device)
    total = steps or reference.paper_steps(model)
    stamps: list[float] = []

    def on_step(limit: int | None) -> Callable[[int, int], None]:
        def f(j: int, n: int) -> None:
            sync(device)
            stamps.append(time.perf_counter())
            if limit and len(stamps) >= limit:
                raise reference.StopReference
        return f

    def run(n_samples: int, limit: int | None) -> Tensor | None:
        stamps.clear()
        try:
            return reference.paper_sample(model, image, n_samples, steps=steps, seed=seed,
                                          on_step=on_step(limit))
        except reference.StopReference:
            return None

    run(1, 1)  # warm-up
    with peak_memory(device) as mem:
        start = time.perf_counter()
        full = measure == "full"
        out = run(num_samples if full else 1, None if full else max(2, k))
        end = time.perf_counter()
    if full:
        return Timing(end - start, "measured", (end - start) / (total * num_samples), stamps[0] - start,
                      len(stamps), mem, out)
    diffs = [b - a for a, b in zip([start] + stamps, stamps)]
    per_step = statistics.median(diffs[1:]) if len(diffs) > 1 else diffs[0]
    return Timing(per_step * total * num_samples, "per-step x steps", per_step, diffs[0], len(stamps), mem)
