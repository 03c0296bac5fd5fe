"""Sampling-speed benchmark (issue 7): the project's sampler against a paper-faithful one.

    python -m training.benchmark_sampling [--device cuda] [--cases hsrdiff-light,pgrd-2d] \
        [--model runs/export/hsrdiff-light --data ../shared/data/lidc128/val.npz] --output runs/bench.json

For each case (a preset on an input size) and step count it times 16 hypotheses of one image with
``sampler.sample`` (image encoded once, the hypotheses in chunks) and, at the papers' step counts,
with the paper-faithful reference of ``training/bench/reference.py`` (one hypothesis at a time, the
condition encoder / prior recomputed at every step); it reports peak memory, the FLOPs of one denoiser
evaluation (``FlopCounterMode``), the achieved FLOP/s against the device's peak, the speed-up over the
reference and, given a trained model folder and a multi-reader npz, GED_16 and Dice at every step count,
so that speed never hides a quality loss. Without a trained model the quality columns say so: untrained
networks give meaningless GED. Prints a table and writes everything to JSON (docs/benchmarks.md).

Timing modes (``--measure``): "full" times whole runs; "per-step" stops each run after
``--measured-steps`` steps and extrapolates (labelled "per-step x steps" everywhere). Default: full on a
GPU, per-step on a CPU. Speed switches (``--precision bf16`` / ``--autocast bf16``, ``--channels-last``:
the sampler's own options; ``--tf32 --autocast fp16 --compile --cuda-graphs``: applied around it) apply to
the project's sampler; ``--sweep-options`` measures each one added in turn; ``--chunk-sweep 1,2,4,8,16``
measures chunk size x precision x memory format on the first case. The sampler always runs under
torch.inference_mode and, without ``--batch-size``, with its device-aware default chunk. The reference
always runs fp32 eager, batch 1. Quality vs step count in detail: ``python -m training.bench.quality``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from DiffSegUncertaintyLib.engine.networks import registry
from DiffSegUncertaintyLib.engine.files.modelfile import PRECISIONS
from DiffSegUncertaintyLib.engine.sampling.sampler import SamplerConfig

from .bench import measure, reference
from .bench import quality as qmod
from .bench.measure import Options
from .bench.quality import default_data
from .bench.quality import parse_spec as quality_spec

REPO = Path(__file__).resolve().parents[1]

#: name -> (method, preset, config overrides, input size (spatial, torch order: D, H, W))
CASES: dict[str, tuple[str, str, dict[str, Any], tuple[int, ...]]] = {
    "hsrdiff-light": ("hsrdiff", "hsrdiff-light", {}, (128, 128)),
    "hsrdiff": ("hsrdiff", "hsrdiff", {}, (128, 128)),
    "pgrd-2d": ("pgrd", "pgrd-2d", {}, (128, 128)),
    "pgrd-3d-stack": ("pgrd", "pgrd-3d", {}, (32, 128, 128)),   # 128 x 128 x 32 nodule stack
    "pgrd-3d-96": ("pgrd", "pgrd-3d", {}, (96, 96, 96)),         # 96^3 MRI patch
    "hsrdiff-small-64": ("hsrdiff", "hsrdiff-small", {}, (64, 64)),  # the trained CPU model's size
    "pgrd-small-64": ("pgrd", "pgrd-small", {}, (64, 64)),           # the shipped PGRD 2D model's
    "pgrd-small-3d": ("pgrd", "pgrd-small-3d", {}, (8, 64, 64)),     # the shipped PGRD 3D model's
    "tiny-hsrdiff": ("hsrdiff", "tiny", {}, (64, 64)),           # tests / smoke runs
    "tiny-pgrd": ("pgrd", "tiny", {}, (64, 64)),
}
DEFAULT_CASES = ("hsrdiff-light", "hsrdiff", "pgrd-2d", "pgrd-3d-stack", "pgrd-3d-96")
#: reduced step counts measured next to the paper's (HSRDiff: ancestral over all T; PGRD: DDIM 300 of 1000)
REDUCED = {"hsrdiff": ("ddim:50", "ddim:25", "ddim:10"), "pgrd": ("ddim:100", "ddim:50", "ddim:10")}
NO_MODEL = "no trained model"


# -- step specifications -----------------------------------------------------------------------------

def paper_spec(method: str, model) -> str:
    return f"ddpm:{model.schedule.T}" if method == "hsrdiff" else f"ddim:{reference.paper_steps(model)}"


def parse_spec(spec: str, T: int) -> SamplerConfig:
    """'ddpm:250', 'ddim:25' or 'ddim:25:trailing' -> SamplerConfig (DDIM with eta = 0); the parser is
    ``bench.quality.parse_spec`` (which also reads the @bf16 / @cl suffixes)."""
    return quality_spec(spec, T)[0]


def reduced_specs(args, method: str) -> list[str]:
    """--steps (``none``: the paper's only), else the method's default reduced counts."""
    if args.steps is None:
        return list(REDUCED[method])
    return [s for s in args.steps if s != "none"]


def n_steps(spec: str) -> int:
    return int(spec.split(":")[1])


# -- quality -----------------------------------------------------------------------------------------

def reference_predictor(model, request, box=None):
    """``predict(images, M)`` through the paper-faithful sampler (``bench.reference.paper_sample``), each
    image through the pipeline as ``diffseg sample`` runs it: only the sampler differs."""
    from DiffSegUncertaintyLib.engine.analysis.evaluation import predictor_from_model
    from DiffSegUncertaintyLib.engine.sampling.sampler import SampleResult

    steps = reference.paper_steps(model.network)

    def paper(network, x, num_samples, config, *, seed=0, **_):
        y0 = torch.cat([reference.paper_sample(network, x[i:i + 1], num_samples, steps=steps, seed=seed)
                        for i in range(len(x))])
        return SampleResult(y0=y0, timesteps=network.schedule.timesteps(steps), batch_size=1)

    return predictor_from_model(model, request, box, sample_fn=paper)


def quality(args, device) -> dict[str, Any]:
    """GED_M / HM-IoU_M / Dice of the trained model at every step count, on the same evenly spaced val
    images (crop models: the centre box, ``bench.quality.load_data``), with the paired difference to the
    paper's step count (``bench.quality.study``); and the reference's at the paper's."""
    if not args.model:
        return {"status": NO_MODEL}
    from DiffSegUncertaintyLib.engine.analysis.evaluation import evaluate_predictor
    from DiffSegUncertaintyLib.engine.pipeline import Model, Request

    loaded = Model.load(args.model)
    model, card = loaded.network, loaded.card
    method = card["method"]
    data_path = Path(args.data) if args.data else default_data()
    if not data_path.is_file():
        return {"status": f"no data at {data_path}", "model": str(args.model)}
    data = qmod.load_data(data_path, card, args.quality_images)
    specs = [paper_spec(method, model)] + [s for s in reduced_specs(args, method) if s != paper_spec(method, model)]
    res = qmod.study(loaded, data, specs, samples=args.samples, seed=args.seed, device=device,
                     batch_size=args.batch_size)
    out: dict[str, Any] = {"status": "ok", "model": str(args.model), "method": method,
                           "preset": card.get("preset"), "data": str(data_path), "images": len(data),
                           "image_size": list(data.masks.shape[2:]), "samples": args.samples, "seed": args.seed,
                           "baseline": res["baseline"], "reference": None,
                           "project": {spec: {**{k: v for k, v in r.items() if k != "vs_baseline"},
                                              "ged_vs_paper": r["vs_baseline"]["ged"]}
                                       for spec, r in res["rows"].items()}}

    def summary(r: dict[str, Any]) -> dict[str, Any]:
        s = r["summary"]
        return {"ged": s["ged"][0], "ged_std": s["ged"][1], "hm_iou": s["hm_iou"][0], "dice": s["dice"][0],
                "seconds": r["seconds"], "images": r["num_images"]}

    if args.reference != "off":
        ref_data = data.subset(args.quality_reference_images)
        request = Request(seed=args.seed, device=str(device), batch_size=args.batch_size)
        r = evaluate_predictor(reference_predictor(loaded, request, data.box), ref_data.images, ref_data.masks,
                               args.samples)
        out["reference"] = {"spec": specs[0], **summary(r)}
        if len(ref_data) != len(data):  # compare on the same images
            cfg = parse_spec(specs[0], model.schedule.T)
            pred = qmod.make_predictor(loaded, cfg, seed=args.seed, device=device, batch_size=args.batch_size,
                                       box=data.box)
            out["reference"]["project_same_images"] = summary(
                evaluate_predictor(pred, ref_data.images, ref_data.masks, args.samples))
    return out


# -- the benchmark -----------------------------------------------------------------------------------

def options_from(args) -> Options:
    autocast = "bf16" if args.precision == "bf16" else args.autocast
    return Options(autocast=autocast, tf32=args.tf32, channels_last=args.channels_last,
                   compile=args.compile, cuda_graphs=args.cuda_graphs, inference_mode=args.inference_mode)


def precision(opts: Options) -> str:
    return opts.autocast if opts.autocast != "none" else ("tf32" if opts.tf32 else "fp32")


def build_case(name: str, device, seed: int = 0):
    method, preset, overrides, size = CASES[name]
    if len(size) == 3 and registry.preset_config(method, preset).get("spatial_dims") != 3:
        overrides = {**overrides, "spatial_dims": 3}
    torch.manual_seed(seed)
    model = registry.build_model(method, registry.preset_config(method, preset, **overrides)).to(device).eval()
    image = torch.randn(1, model.in_channels, *size, generator=torch.Generator().manual_seed(seed))
    return method, preset, model, image


def row_for(case: str, method: str, preset: str, sampler: str, spec: str, M: int, opts_label: str,
            timing: measure.Timing, flops: dict[str, int], steps: int, peak: dict[str, Any], prec: str,
            gemm: float | None) -> dict[str, Any]:
    if sampler == "project":
        total = flops["encode"] + M * steps * flops["denoise"]
        step_flops = M * flops["denoise"]
    else:
        total = M * steps * (flops["encode"] + flops["denoise"])
        step_flops = flops["encode"] + flops["denoise"]
    achieved = step_flops / timing.per_step / 1e12
    nominal = peak.get("tflops", {}).get(prec)
    return {"case": case, "method": method, "preset": preset, "sampler": sampler, "steps": spec,
            "num_steps": steps, "samples": M, "options": opts_label, "timing": timing.timing,
            "seconds": timing.seconds, "per_step_s": timing.per_step, "first_step_s": timing.first,
            "steps_measured": timing.steps_measured, "peak_mb": timing.memory.get("peak_mb"),
            "extra_mb": timing.memory.get("extra_mb"), "memory_kind": timing.memory.get("kind"),
            "flops_per_eval": flops["denoise"], "flops_encode": flops["encode"], "flops_total": total,
            "achieved_tflops": achieved, "precision": prec, "peak_tflops": nominal,
            "fraction_of_peak": achieved / nominal if nominal else None,
            "fraction_of_gemm": achieved / gemm if gemm else None, "quality": NO_MODEL,
            "chunk": timing.chunk if sampler == "project" else 1}


def run(args) -> dict[str, Any]:
    device = torch.device(args.device)
    if args.keep_freed_memory:  # what `diffseg` does in its own process (engine/allocator.py)
        from DiffSegUncertaintyLib.engine.allocator import keep_freed_memory
        print(f"keep freed memory (glibc mallopt): {keep_freed_memory()}", flush=True)
    threads = args.threads or (2 if device.type == "cpu" else torch.get_num_threads())
    torch.set_num_threads(threads)
    measure_mode = args.measure if args.measure != "auto" else ("full" if device.type == "cuda" else "per-step")
    ref_mode = args.reference if args.reference != "auto" else measure_mode
    opts = options_from(args)
    peak = measure.nominal_peak(device, threads)
    gemm = {}
    if not args.no_gemm_peak:
        gemm["fp32"] = measure.gemm_peak(device, torch.float32)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            gemm["tf32"] = measure.gemm_peak(device, torch.float32)
            torch.backends.cuda.matmul.allow_tf32 = False
        gemm["bf16"] = measure.gemm_peak(device, torch.bfloat16)
    result: dict[str, Any] = {
        "command": "python -m training.benchmark_sampling " + " ".join(args.argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": peak["name"], "device_type": device.type,
        "threads": threads, "torch": torch.__version__, "python": platform.python_version(),
        "peak": peak, "gemm_tflops": gemm, "measure": measure_mode, "reference_measure": ref_mode,
        "rows": [], "sweep": [], "chunk_sweep": []}
    samples_for = dict(kv.split("=") for kv in (args.case_samples or "").split(",") if kv)
    for case in args.cases.split(","):
        if case not in CASES:
            raise SystemExit(f"unknown case {case!r}: choose from {', '.join(CASES)}")
        method, preset, model, image = build_case(case, device, args.seed)
        M = int(samples_for.get(case, args.samples))
        flops = measure.count_flops(model, image)
        pspec = paper_spec(method, model)
        specs = ([] if args.skip_paper_steps else [pspec]) + [s for s in reduced_specs(args, method) if s != pspec]
        print(f"== {case}: {method}/{preset} {tuple(image.shape[2:])}, {M} hypotheses, "
              f"{flops['denoise'] / 1e9:.2f} GFLOP per denoiser evaluation, "
              f"{flops['encode'] / 1e9:.2f} GFLOP per encoding", flush=True)
        ref_row = None
        if args.reference != "off" and not args.skip_paper_steps:
            t = measure.time_reference(model, image, M, n_steps(pspec) if method == "pgrd" else None, device,
                                       measure=ref_mode, k=args.measured_steps, seed=args.seed)
            ref_row = row_for(case, method, preset, "reference", pspec, M, "fp32 eager, batch 1", t, flops,
                              n_steps(pspec), peak, "fp32", gemm.get("fp32"))
            ref_row["speedup"] = 1.0
            result["rows"].append(ref_row)
            print(_line(ref_row), flush=True)
        for spec in specs:
            cfg = parse_spec(spec, model.schedule.T)
            t = measure.time_project(model, image, M, cfg, device, measure=measure_mode, k=args.measured_steps,
                                     seed=args.seed, batch_size=args.batch_size, options=opts,
                                     warmup_steps=3 if (opts.compile != "off" or opts.cuda_graphs) else 1)
            row = row_for(case, method, preset, "project", spec, M, opts.label(), t, flops, n_steps(spec), peak,
                          precision(opts), gemm.get(precision(opts)))
            if ref_row is not None:
                row["speedup"] = ref_row["seconds"] / row["seconds"]
                row["speedup_basis"] = ("measured" if row["timing"] == ref_row["timing"] == "measured"
                                        else "per-step x steps")
            result["rows"].append(row)
            print(_line(row), flush=True)
        if args.chunk_sweep and case == args.cases.split(",")[0]:
            result["chunk_sweep"] = chunk_sweep(args, case, method, preset, model, image, M, flops, pspec, device,
                                                peak, gemm)
        if args.sweep_options and case == args.cases.split(",")[0]:
            result["sweep"] = sweep(args, case, method, preset, model, image, M, flops, pspec, device, peak, gemm,
                                    measure_mode)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result["quality"] = quality(args, device)
    attach_quality(result)
    return result


def sweep(args, case, method, preset, model, image, M, flops, spec, device, peak, gemm, mode) -> list[dict]:
    """Each speed switch added in turn, measured on the first case at ``--sweep-steps`` (default: paper)."""
    spec = args.sweep_steps or spec
    steps = [Options()]
    add = ([("tf32", True)] if device.type == "cuda" else []) + [("autocast", "bf16"), ("channels_last", True)]
    if device.type == "cuda" or args.sweep_compile:
        add += [("compile", "default")]
    if device.type == "cuda":
        add += [("cuda_graphs", True)]
    for key, value in add:
        o = Options(**steps[-1].asdict())
        setattr(o, key, value)
        if key == "cuda_graphs":
            o.compile = "off"  # reduce-overhead replaces the default mode
        steps.append(o)
    rows = []
    for o in steps:
        t = measure.time_project(model, image, M, parse_spec(spec, model.schedule.T), device, measure=mode,
                                 k=args.measured_steps, seed=args.seed, batch_size=args.batch_size, options=o,
                                 warmup_steps=3 if (o.compile != "off" or o.cuda_graphs) else 1)
        row = row_for(case, method, preset, "project", spec, M, o.label(), t, flops, n_steps(spec), peak,
                      precision(o), gemm.get(precision(o)))
        row["speedup_vs_first"] = rows[0]["per_step_s"] / row["per_step_s"] if rows else 1.0
        rows.append(row)
        print("sweep " + _line(row), flush=True)
    return rows


def chunk_sweep(args, case, method, preset, model, image, M, flops, spec, device, peak, gemm) -> list[dict]:
    """Chunk size x precision x memory format, per-step x steps at ``--sweep-steps`` (default: the
    paper's): each configuration times at least ``--chunk-sweep-work`` hypothesis-steps (k = that / chunk
    steps of the first chunk, at least --measured-steps + 1); ``--chunk-sweep-repeats`` rounds, in turn,
    and the median per-step time over the rounds is reported (each round's in ``per_step_rounds``)."""
    spec = args.sweep_steps or spec
    cfg = parse_spec(spec, model.schedule.T)
    chunks = [int(c) for c in args.chunk_sweep.split(",")]
    precisions = args.chunk_sweep_precisions.split(",")
    layouts = [v == "on" for v in args.chunk_sweep_channels_last.split(",")]
    configs = [(c, p, cl) for p in precisions for cl in layouts for c in chunks]
    times: dict[tuple, list[measure.Timing]] = {c: [] for c in configs}
    for rnd in range(args.chunk_sweep_repeats):
        for conf in (configs if rnd % 2 == 0 else configs[::-1]):  # alternate the order against drift
            c, p, cl = conf
            k = max(args.measured_steps + 1, math.ceil(args.chunk_sweep_work / c))
            o = Options(autocast="bf16" if p == "bf16" else "none", channels_last=cl)
            t = measure.time_project(model, image, M, cfg, device, measure="per-step", k=k, seed=args.seed,
                                     batch_size=c, options=o)
            times[conf].append(t)
            print(f"chunk sweep round {rnd + 1}: chunk {c} {p}{' channels-last' if cl else ''}: "
                  f"{t.per_step:.3f} s per step of {M} ({t.steps_measured} chunk steps timed)", flush=True)
    rows = []
    for conf in configs:
        c, p, cl = conf
        ts = times[conf]
        per_step = statistics.median(t.per_step for t in ts)
        mid = min(ts, key=lambda t: abs(t.per_step - per_step))
        mid = measure.Timing(mid.first + per_step * c / M * (n_steps(spec) * math.ceil(M / c) - 1),
                             mid.timing, per_step, mid.first, mid.steps_measured, mid.memory, chunk=c)
        o = Options(autocast="bf16" if p == "bf16" else "none", channels_last=cl)
        row = row_for(case, method, preset, "project", spec, M, o.label(), mid, flops, n_steps(spec), peak,
                      precision(o), gemm.get(precision(o)))
        row["per_step_rounds"] = [t.per_step for t in ts]
        row["chunk_sweep_work"] = args.chunk_sweep_work
        rows.append(row)
    best = min(rows, key=lambda r: r["per_step_s"])
    for r in rows:
        r["relative_to_best"] = r["per_step_s"] / best["per_step_s"]
    return rows


def attach_quality(result: dict[str, Any]) -> None:
    q = result["quality"]
    for row in result["rows"]:
        if q.get("status") != "ok" or (row["method"], row["preset"]) != (q["method"], q["preset"]):
            row["quality"] = q.get("status") if q.get("status") != "ok" else f"{NO_MODEL} for this preset"
            continue
        if row["sampler"] == "reference":
            row["quality"] = q["reference"] or "reference quality not run"
        else:
            # equal quality: GED within 0.01 of the paper-step sampler (which draws the reference's
            # hypotheses, same noise), judged by the paired bootstrap interval over images (bench.quality);
            # the reference's own GED is in the reference row
            row["quality"] = q["project"].get(row["steps"], "step count not scored")


# -- output --------------------------------------------------------------------------------------------

def _fmt(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


HEADER = ("| case | sampler | steps | M | options | timing | time (s) | per step (s) | peak MB (+run) | GFLOP/eval "
          "| TFLOP/s | % peak | % GEMM | speed-up | GED | Dice |")


def _line(r: dict[str, Any]) -> str:
    q = r["quality"]
    ged = _fmt(q.get("ged"), 4) if isinstance(q, dict) else q
    dice = _fmt(q.get("dice"), 4) if isinstance(q, dict) else "-"
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    opts = r["options"] + (f", chunk {r['chunk']}" if r["sampler"] == "project" and r.get("chunk") else "")
    return (f"| {r['case']} | {r['sampler']} | {r['steps']} | {r['samples']} | {opts} | {r['timing']} "
            f"| {_fmt(r['seconds'], 2)} | {_fmt(r['per_step_s'], 3)} | {_fmt(r['peak_mb'], 0)} (+{_fmt(r['extra_mb'], 0)}) "
            f"| {r['flops_per_eval'] / 1e9:.2f} | {_fmt(r['achieved_tflops'], 3)} | {pct(r['fraction_of_peak'])} "
            f"| {pct(r['fraction_of_gemm'])} | {_fmt(r.get('speedup'), 1)} | {ged} | {dice} |")


def table(result: dict[str, Any]) -> str:
    sep = "|" + "---|" * (HEADER.count("|") - 1)
    lines = [f"device: {result['device']} ({result['threads']} threads), torch {result['torch']}; "
             f"peak {result['peak']['tflops']} TFLOP/s [{result['peak']['source']}]; measured GEMM "
             f"{ {k: round(v, 3) for k, v in result['gemm_tflops'].items()} } TFLOP/s",
             HEADER, sep] + [_line(r) for r in result["rows"]]
    if result["sweep"]:
        lines += ["", "option sweep (each switch added to the previous row):", HEADER, sep]
        lines += [_line(r) for r in result["sweep"]]
    if result.get("chunk_sweep"):
        lines += ["", "chunk sweep (per step of all hypotheses, median over rounds):",
                  "| chunk | options | per step (s) | rounds (s) | TFLOP/s | % peak | x best |",
                  "|---|---|---|---|---|---|---|"]
        for r in result["chunk_sweep"]:
            pct = "-" if r["fraction_of_peak"] is None else f"{100 * r['fraction_of_peak']:.1f}"
            rounds = ", ".join(f"{v:.3f}" for v in r["per_step_rounds"])
            lines.append(f"| {r['chunk']} | {r['options']} | {r['per_step_s']:.3f} | {rounds} "
                         f"| {_fmt(r['achieved_tflops'], 3)} | {pct} | {r['relative_to_best']:.2f} |")
    q = result.get("quality", {})
    if q.get("status") == "ok":
        lines += ["", f"quality ({q['preset']}, {q['images']} val images {q['image_size']}, {q['samples']} samples, "
                  f"seed {q['seed']}; paired difference to {q['baseline']}, bootstrap 95 % CI over images):",
                  "| steps | GED | HM-IoU | Dice | dGED (SE) [95 % CI] | verdict (+-0.01) |",
                  "|---|---|---|---|---|---|"]
        for spec, r in q["project"].items():
            d = r["ged_vs_paper"]
            lines.append(f"| {spec} | {r['ged']:.4f} | {r['hm_iou']:.4f} | {r['dice']:.4f} | {d['mean']:+.4f} "
                         f"({_fmt(d['se'], 4)}) [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] | {r['ged_verdict']} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training.benchmark_sampling", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(DEFAULT_CASES), help=f"comma list of {', '.join(CASES)}")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--samples", type=int, default=16, help="hypotheses per image (default 16)")
    ap.add_argument("--case-samples", default="", help="per-case override, e.g. hsrdiff=2,pgrd-3d-96=1")
    ap.add_argument("--steps", nargs="*", default=None,
                    help="reduced step counts, e.g. ddim:50 ddim:10 ddpm:50 (the paper's are always added)")
    ap.add_argument("--skip-paper-steps", action="store_true", help="time only --steps (no reference)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="(image, sample) pairs per network call (default: the sampler's device-aware chunk)")
    ap.add_argument("--measure", choices=("auto", "full", "per-step"), default="auto")
    ap.add_argument("--measured-steps", type=int, default=2, help="steps timed in per-step mode (>= 2)")
    ap.add_argument("--reference", choices=("auto", "full", "per-step", "off"), default="auto",
                    help="how to time the paper-faithful sampler (auto: as --measure)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (CPU default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", choices=PRECISIONS, default="fp32",
                    help="the sampler's precision (bf16: networks under torch.autocast)")
    ap.add_argument("--autocast", choices=("none", "bf16", "fp16"), default="none",
                    help="bf16 = --precision bf16; fp16 autocast is applied around the sampler")
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="raise glibc's mmap/trim thresholds first, as diffseg does (engine/allocator.py)")
    ap.add_argument("--compile", choices=("off", "default", "max-autotune-no-cudagraphs"), default="off")
    ap.add_argument("--cuda-graphs", action="store_true", help="torch.compile mode reduce-overhead")
    ap.add_argument("--inference-mode", action="store_true", help="no effect: the sampler always uses it")
    ap.add_argument("--sweep-options", action="store_true", help="measure each switch in turn (first case)")
    ap.add_argument("--sweep-steps", default=None, help="step spec of the sweep (default: the paper's)")
    ap.add_argument("--sweep-compile", action="store_true", help="include torch.compile in a CPU sweep")
    ap.add_argument("--chunk-sweep", default=None, help="chunk sizes to time on the first case, e.g. 1,2,4,8,16")
    ap.add_argument("--chunk-sweep-precisions", default="fp32,bf16")
    ap.add_argument("--chunk-sweep-channels-last", default="off,on")
    ap.add_argument("--chunk-sweep-work", type=int, default=32,
                    help="hypothesis-steps timed per configuration (k = this / chunk)")
    ap.add_argument("--chunk-sweep-repeats", type=int, default=1)
    ap.add_argument("--no-gemm-peak", action="store_true", help="skip the matmul peak measurement")
    ap.add_argument("--model", default=None, help="trained model folder: GED/Dice at every step count")
    ap.add_argument("--data", default=None, help="multi-reader npz (default $DIFFSEG_LIDC/val.npz or "
                                                 "../shared/data/lidc128/val.npz)")
    ap.add_argument("--quality-images", type=int, default=16, help="val images, evenly spaced (default 16)")
    ap.add_argument("--quality-reference-images", type=int, default=16)
    ap.add_argument("--output", default="runs/benchmarks/sampling.json")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    result = run(args)
    text = table(result)
    print(text)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    out.with_suffix(".md").write_text(text + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
