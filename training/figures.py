"""The papers' figures, remade from our models: ``python -m training.figures {steps,kappa,case,reliability,curves}``.

- ``steps``: DSC and GED against the number of sampling steps, one line per model (PGRD Fig. 3 plots
  DSC against S for PGRD, its ablations and DDPM; GED is added since HSRDiff is judged on it).
- ``kappa``: HSRDiff's self-regulating kappa against the diffusion step t (HSRDiff Fig. 6), read from
  the sampler's extras (``SampleResult.extras["kappa"]``, (B, M, steps)).
- ``case``: the image, the readings, N hypotheses, mean probability and predictive entropy
  (HSRDiff Figs. 3-4 and its entropy maps, Appendix D.1).
- ``reliability``: a reliability diagram of the fused probability p_bar (the bins of ECE).
- ``curves``: learning curves of training runs that continue one another (issue 15): the training loss
  (TensorBoard ``train/loss``, averaged per window) and the validation GED / HM-IoU of ``val.jsonl``,
  against the step counted from the first run's start.

Every number comes from the engine: ``evaluation.evaluate_predictor`` (hence ``metrics.score_image``),
``uncertainty.summarize`` for the maps, ``metrics.ece`` for the ECE in the diagram's title. Each
figure is also written as JSON beside the PNG so a plot can be redrawn or checked without a model.
Matplotlib runs with the Agg backend (no display needed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from DiffSegUncertaintyLib.engine.analysis import metrics  # noqa: E402
from DiffSegUncertaintyLib.engine.networks.checks import InputError  # noqa: E402
from DiffSegUncertaintyLib.engine.analysis.evaluation import (  # noqa: E402
    MultiReaderSet, data_for_model, evaluate_predictor, load_multireader_npz, predictor_from_model)
from DiffSegUncertaintyLib.engine.pipeline import Model, Request  # noqa: E402
from DiffSegUncertaintyLib.engine.sampling.sampler import sample  # noqa: E402
from DiffSegUncertaintyLib.engine.analysis.uncertainty import summarize  # noqa: E402

Predict = Callable[[np.ndarray, int], Any]


def _save(fig: plt.Figure, path: str | Path, data: Mapping[str, Any] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    if data is not None:
        path.with_suffix(".json").write_text(json.dumps(data, indent=2, default=float) + "\n")
    return path


# -- DSC / GED against sampling steps (PGRD Fig. 3) ------------------------------------------------

def steps_sweep(models: Mapping[str, Model], data: MultiReaderSet,
                steps: Sequence[int], num_samples: int = 4, seed: int = 0, sampler: str | None = None,
                batch_size: int | None = None, max_items: int | None = None) -> dict[str, dict[str, Any]]:
    """For each model (name -> ``pipeline.Model``) and step count: DSC and GED (mean, std over images),
    through ``evaluate_predictor``; a step count above a model's T is skipped. Each model sees ``data``
    as ``diffseg evaluate`` shows it to that model (``data_for_model``: ``max_items`` evenly spaced items,
    a crop model its centre box, a 3D model stacks of slices) and samples it as ``diffseg sample``."""
    out: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        seen = data_for_model(data, model.card, max_items)
        row: dict[str, Any] = {"steps": [], "dice": [], "ged": [], "hm_iou": [], "num_images": len(seen)}
        for s in steps:
            if int(s) > model.network.schedule.T:
                continue
            request = Request(steps=int(s), sampler=sampler, seed=seed, batch_size=batch_size, device="cpu")
            pred = predictor_from_model(model, request, seen.box)
            res = evaluate_predictor(pred, seen.images, seen.masks, num_samples, batch_size=len(seen))
            row["steps"].append(int(s))
            for k in ("dice", "ged", "hm_iou"):
                row[k].append(list(res["summary"][k]))
        out[name] = row
    return out


def plot_steps(sweep: Mapping[str, Mapping[str, list]], path: str | Path, num_samples: int | None = None) -> Path:
    """Two panels, DSC (%) and GED against steps; mean over images, band = standard error."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for name, row in sweep.items():
        s = np.asarray(row["steps"])
        for ax, key, scale in ((axes[0], "dice", 100.0), (axes[1], "ged", 1.0)):
            v = np.asarray(row[key], dtype=float).reshape(-1, 2)
            n = max(1, int(row.get("num_images", 1)))
            ax.plot(s, v[:, 0] * scale, marker="o", label=name)
            ax.fill_between(s, (v[:, 0] - v[:, 1] / np.sqrt(n)) * scale, (v[:, 0] + v[:, 1] / np.sqrt(n)) * scale,
                            alpha=0.15)
    sub = f"$_{{{num_samples}}}$" if num_samples else ""
    axes[0].set(xlabel="sampling steps S", ylabel="DSC (%)", title="DSC vs steps (PGRD Fig. 3)")
    axes[1].set(xlabel="sampling steps S", ylabel=f"GED{sub}", title="GED vs steps")
    for ax in axes:
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, path, {"num_samples": num_samples, "curves": sweep})


# -- kappa against t (HSRDiff Fig. 6) -------------------------------------------------------------

def kappa_trace(model: Model, images: np.ndarray, num_samples: int = 4, seed: int = 0,
                steps: int | None = None, sampler: str | None = None, box: Any = None,
                device: str = "cpu") -> tuple[list[int], np.ndarray]:
    """Timesteps (descending, as walked) and kappa (B, M, steps) from the sampler's extras, each image
    sampled through the pipeline as ``diffseg sample`` samples it (the sampler is wrapped to keep them)."""
    kept: list[Any] = []

    def keep(*args: Any, **kwargs: Any) -> Any:
        res = sample(*args, **kwargs)
        kept.append(res)
        return res

    request = Request(steps=steps, sampler=sampler, seed=seed, device=device)
    pred = predictor_from_model(model, request, box, sample_fn=keep)
    rows = []
    for image in np.asarray(images):
        kept.clear()
        pred.run(image[None], num_samples)
        if not kept or "kappa" not in kept[0].extras:
            raise InputError(f"model {model.name} reports no kappa (only HSRDiff with a learned "
                             "or fixed kappa does)")
        rows.append(torch.cat([r.extras["kappa"] for r in kept]).mean(0))  # over the image's slices
    return list(kept[0].timesteps), torch.stack(rows).numpy()


def plot_kappa(timesteps: Sequence[int], kappa: np.ndarray, path: str | Path,
               labels: Sequence[str] | None = None, T: int | None = None) -> Path:
    """kappa against t (0..T left to right, 0..1 bottom to top, as Fig. 6): per image the mean over
    hypotheses, band = min..max over hypotheses."""
    kappa = np.asarray(kappa, dtype=float)
    if kappa.ndim != 3 or kappa.shape[2] != len(timesteps):
        raise ValueError(f"kappa must be (B, M, steps={len(timesteps)}), got {kappa.shape}")
    t = np.asarray(timesteps)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for b in range(kappa.shape[0]):
        name = labels[b] if labels is not None else f"image {b}"
        ax.plot(t, kappa[b].mean(0), label=name)
        ax.fill_between(t, kappa[b].min(0), kappa[b].max(0), alpha=0.15)
    ax.set(xlim=(0, T or int(t.max())), ylim=(0, 1), xlabel="diffusion step t",
           ylabel=r"$\kappa_\phi$ (weight of the $x_0$ path)", title=r"$\kappa_\phi$ vs t (HSRDiff Fig. 6)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path, {"timesteps": list(map(int, t)), "kappa_mean": kappa.mean(1).tolist(),
                             "kappa_min": kappa.min(1).tolist(), "kappa_max": kappa.max(1).tolist()})


# -- a case: image, readings, hypotheses, entropy (HSRDiff Figs. 3-4) ------------------------------

def case_maps(probabilities: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
    """Hypothesis labels, mean probability and entropies of one image's (M, C, *S) probabilities via
    ``uncertainty.summarize`` (fed log p with tau_out = 1, whose softmax is p again)."""
    p = torch.as_tensor(np.asarray(probabilities), dtype=torch.float32)
    maps = summarize(torch.log(p.clamp_min(1e-12)), tau_out=1.0)
    return {"labels": maps.labels.numpy(), "mean_probability": maps.mean_probability.numpy(),
            "entropy": maps.predictive_entropy.numpy(), "mutual_information": maps.mutual_information.numpy()}


def plot_case(image: np.ndarray, readings: np.ndarray, probabilities: np.ndarray | torch.Tensor, path: str | Path,
              title: str = "", max_hypotheses: int = 8) -> Path:
    """Row 1: image and the readings; row 2: hypotheses (contours on the image); row 3: mean
    foreground probability and predictive entropy (nats)."""
    maps = case_maps(probabilities)
    hyp = maps["labels"][:max_hypotheses]
    ncol = max(1 + len(readings), len(hyp), 2)
    fig, axes = plt.subplots(3, ncol, figsize=(1.7 * ncol, 5.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")

    def show(ax: plt.Axes, mask: np.ndarray | None, name: str, color: str) -> None:
        ax.imshow(image, cmap="gray")
        if mask is not None and np.any(mask):
            ax.contour(mask != 0, levels=[0.5], colors=color, linewidths=0.9)
        ax.set_title(name, fontsize=8)

    show(axes[0, 0], None, "image", "r")
    for a, r in enumerate(readings):
        show(axes[0, 1 + a], r, f"reading {a + 1}", "lime")
    for m, h in enumerate(hyp):
        show(axes[1, m], h, f"hypothesis {m + 1}", "red")
    im = axes[2, 0].imshow(1 - maps["mean_probability"][0], cmap="viridis", vmin=0, vmax=1)
    axes[2, 0].set_title("mean p(foreground)", fontsize=8)
    fig.colorbar(im, ax=axes[2, 0], fraction=0.046)
    c = maps["mean_probability"].shape[0]
    im = axes[2, 1].imshow(maps["entropy"], cmap="magma", vmin=0, vmax=float(np.log(c)))
    axes[2, 1].set_title("entropy (nats)", fontsize=8)
    fig.colorbar(im, ax=axes[2, 1], fraction=0.046)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path, {"title": title, "num_hypotheses": int(len(maps["labels"])),
                             "foreground_voxels": [int((h != 0).sum()) for h in maps["labels"]],
                             "reading_voxels": [int((r != 0).sum()) for r in readings],
                             "max_entropy": float(maps["entropy"].max())})


# -- reliability diagram ---------------------------------------------------------------------------

def reliability_bins(p_bar: np.ndarray, labels: np.ndarray, n_bins: int = metrics.ECE_BINS
                     ) -> dict[str, list[float]]:
    """Per confidence bin the mean confidence, accuracy and voxel count of fused probabilities
    p_bar (N, C, *S) against labels (N, *S), all images pooled: ``metrics.calibration_bins``, the
    bins ``metrics.ece`` sums over."""
    pooled = np.moveaxis(np.asarray(p_bar, dtype=np.float64), 1, 0).reshape(np.shape(p_bar)[1], -1)
    b = metrics.calibration_bins(pooled, np.asarray(labels).reshape(-1), n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc, conf = b["accuracy_sum"] / b["count"], b["confidence_sum"] / b["count"]
    return {"edges": b["edges"].tolist(), "confidence": conf.tolist(), "accuracy": acc.tolist(),
            "count": b["count"].tolist()}


def plot_reliability(p_bar: np.ndarray, labels: np.ndarray, path: str | Path, name: str = "") -> Path:
    """Accuracy against confidence per bin, the diagonal, and the ECE (``metrics.ece`` over all voxels
    of all images pooled, background included) in the title."""
    bins = reliability_bins(p_bar, labels)
    pooled_p = np.moveaxis(np.asarray(p_bar, dtype=np.float64), 1, 0).reshape(np.shape(p_bar)[1], -1)
    ece = metrics.ece(pooled_p, np.asarray(labels).reshape(-1))
    edges = np.asarray(bins["edges"])
    centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    acc = np.nan_to_num(np.asarray(bins["accuracy"], dtype=float))
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.bar(centers, acc, width=width, edgecolor="k", alpha=0.7, label="accuracy")
    conf = np.asarray(bins["confidence"], dtype=float)
    ax.bar(centers, np.nan_to_num(conf) - acc, bottom=acc, width=width, color="r", alpha=0.25, label="gap")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max class probability)", ylabel="accuracy",
           title=f"{name} ECE = {100 * ece:.2f}%".strip())
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path, {**bins, "ece": ece, "name": name})


# -- command line ----------------------------------------------------------------------------------

# -- learning curves (issue 15) --------------------------------------------------------------------

def run_curves(folder: str | Path, offset: int = 0, window: int = 200) -> dict[str, Any]:
    """One run folder's curves, steps shifted by ``offset`` (the steps of the runs it continues):
    ``loss`` as (step, mean of the logged train/loss over each ``window`` steps) and ``val`` as the
    rows of val.jsonl (every metric the validation wrote)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = Path(folder)
    loss: list[tuple[int, float]] = []
    for events in sorted((folder / "tb").glob("events.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if "train/loss" in acc.Tags()["scalars"]:
            loss += [(e.step, e.value) for e in acc.Scalars("train/loss")]
    loss.sort()
    binned: dict[int, list[float]] = {}
    for step, value in loss:
        binned.setdefault((step - 1) // window, []).append(value)
    val_path = folder / "val.jsonl"
    val = [json.loads(line) for line in val_path.read_text().splitlines() if line.strip()] if val_path.exists() else []
    return {"folder": str(folder), "offset": offset,
            "loss": [[offset + (b + 1) * window, float(np.mean(v))] for b, v in sorted(binned.items())],
            "val": [{**row, "step": offset + int(row["step"])} for row in val]}


def plot_curves(runs: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """Training loss and validation GED / HM-IoU of ``runs`` ({label: run_curves(...)}) on one step axis,
    one colour per run; grey lines where a run continues another."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for n, (label, run) in enumerate(runs.items()):
        colour = f"C{n}"
        if run["loss"]:
            s, v = zip(*run["loss"])
            axes[0].plot(s, v, color=colour, label=label)
        for ax, key in ((axes[1], "ged"), (axes[2], "hm_iou")):
            rows = [r for r in run["val"] if key in r]
            if rows:
                ax.plot([r["step"] for r in rows], [r[key] for r in rows], "o-", color=colour, label=label)
        if run["offset"]:
            for ax in axes:
                ax.axvline(run["offset"], color="0.8", lw=0.8)
    for ax, what in zip(axes, ("train loss (window mean)", "val GED (EMA weights)", "val HM-IoU (EMA weights)")):
        ax.set(xlabel="step (from the first run's start)", title=what)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=len(runs), fontsize=8,
               bbox_to_anchor=(0.5, -0.13))
    return _save(fig, path, {"runs": runs})


def _load(model: str) -> Model:
    return Model.load(model)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.figures", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="figure", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", required=True, help="multi-reader npz (LIDC format)")
    common.add_argument("--samples", type=int, default=Request.samples)
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    common.add_argument("--sampler", choices=("ddpm", "ddim"), default=None)
    common.add_argument("--out", required=True, help="output PNG (a .json with the numbers is written beside it)")
    p = sub.add_parser("steps", parents=[common], help="DSC and GED vs sampling steps (PGRD Fig. 3)")
    p.add_argument("--model", action="append", required=True, help="model name or folder (repeat)")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 100, 250, 500, 1000])
    p.add_argument("--max-images", type=int, default=50)
    p = sub.add_parser("kappa", parents=[common], help="HSRDiff kappa vs t (Fig. 6)")
    p.add_argument("--model", required=True)
    p.add_argument("--index", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=None)
    p = sub.add_parser("case", parents=[common], help="image, readings, hypotheses, entropy")
    p.add_argument("--model", required=True)
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--steps", type=int, default=None)
    p = sub.add_parser("reliability", parents=[common], help="reliability diagram of p_bar")
    p.add_argument("--model", required=True)
    p.add_argument("--max-images", type=int, default=50)
    p.add_argument("--steps", type=int, default=None)
    p = sub.add_parser("curves", help="learning curves of runs that continue one another")
    p.add_argument("--run", action="append", required=True, metavar="LABEL=FOLDER[:OFFSET]",
                   help="a run folder (runs/<exp>) and the steps before its start (repeat)")
    p.add_argument("--window", type=int, default=500, help="steps per point of the loss curve")
    p.add_argument("--out", required=True, help="output PNG (a .json with the numbers is written beside it)")
    args = ap.parse_args(argv)
    if args.figure == "curves":
        runs = {}
        for spec in args.run:
            label, _, folder = spec.partition("=")
            offset = "0"
            if folder.rpartition(":")[2].isdigit():
                folder, _, offset = folder.rpartition(":")
            if not label or not Path(folder).is_dir():
                print(f"error: --run {spec}: expected LABEL=FOLDER[:OFFSET] with an existing folder", file=sys.stderr)
                return 2
            runs[label] = run_curves(folder, int(offset), args.window)
        print(f"wrote {plot_curves(runs, args.out)}")
        return 0
    try:
        data = load_multireader_npz(args.data)
        if args.figure == "steps":
            models = {}
            for m in args.model:
                model = _load(m)
                models[model.name] = model
            sweep = steps_sweep(models, data, args.steps, args.samples, args.seed, args.sampler,
                                max_items=args.max_images)
            out = plot_steps(sweep, args.out, args.samples)
        elif args.figure == "kappa":
            model = _load(args.model)
            data = data_for_model(data, model.card)  # as diffseg evaluate: crop models on their box
            ts, kappa = kappa_trace(model, data.images[args.index], args.samples, args.seed, args.steps,
                                    args.sampler, data.box, args.device)
            out = plot_kappa(ts, kappa, args.out, [data.item_id(i) for i in args.index], model.network.schedule.T)
        else:
            model = _load(args.model)
            data = data_for_model(data, model.card)
            request = Request(steps=args.steps, sampler=args.sampler, seed=args.seed, device=args.device)
            pred = predictor_from_model(model, request, data.box)
            if args.figure == "case":
                i = args.index
                probs = pred(data.images[i:i + 1], args.samples)[0]
                out = plot_case(data.shown_images()[i], data.masks[i], probs, args.out,
                                f"{model.name}: {data.item_id(i)}")
            else:
                data = data.subset(args.max_images)
                p_bar = np.concatenate([np.asarray(pred(data.images[i:i + 1], args.samples).mean(1))
                                        for i in range(len(data))])
                # reference: each reading in turn, as the default of metrics.score_image
                A = data.masks.shape[1]
                out = plot_reliability(np.repeat(p_bar, A, axis=0), data.masks.reshape(-1, *data.masks.shape[2:]),
                                       args.out, model.name)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
