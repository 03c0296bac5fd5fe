"""Fit a diffusion model's output temperature ``tau_out`` on the validation split (temperature scaling):
``python -m training.calibrate --model NAME_OR_FOLDER --data ../shared/data/lidc128 [--images 64]
[--samples 16] [--seed 0] [--write]``.

Why this works without retraining: every method turns a hypothesis y0 into probabilities
``softmax(y0 / tau_out)`` (``diffusion.to_probabilities``) and the sampler never reads ``tau_out``, so
each validation image is sampled once (the card's default sampler, noise seeds (seed, k), the same
evenly spaced subset and centre crop as ``diffseg evaluate``) and its y0 kept; the validation NLL of
the fused p_bar (``metrics.nll``, each reading in turn, per image first, then the mean over images:
the ``diffseg evaluate`` NLL) is then a cheap function of tau alone. It is minimised over log tau:
a log-spaced grid, then a bounded scalar search between the best grid point's neighbours.

What it changes: NLL, ECE, the fused probability and the entropy / mutual-information maps. What it
does not: argmax(y0 / tau) = argmax(y0), so every hypothesis mask, GED, HM-IoU, MDM and diversity are
unchanged (exactly so when the model runs on the data's grid, as the crop models do; a resized model's
probabilities are interpolated back, which can move a boundary voxel). The fused mask argmax(p_bar)
(DSC, mIoU, consensus) is a probability-weighted vote and can move slightly with M > 1; DSC is listed.
Fitted on the validation split only: a file whose name does not say "val" is refused.

``--write`` replaces ``architecture.tau_out`` in the folder's ``model.json`` and records the fit under
``calibration``; the card is written to a temporary file in the same folder and renamed over the old
one (``os.replace``), every other field is kept, the weights (and so the card's sha256) are never
touched, and the folder is loaded again (``modelfile.load_model``) to check it; on failure the old card
is put back.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from DiffSegUncertaintyLib.engine.analysis import metrics
from DiffSegUncertaintyLib.engine.files import modelfile
from DiffSegUncertaintyLib.engine.files.modelfile import PRECISION_CHOICES
from DiffSegUncertaintyLib.engine.networks.checks import InputError
from DiffSegUncertaintyLib.engine.sampling.diffusion import to_probabilities
from DiffSegUncertaintyLib.engine.analysis.evaluation import (data_for_model, evaluate_predictor, load_multireader_npz,
                                                     predictor_from_model, write_report)
from DiffSegUncertaintyLib.engine.pipeline import Model, Request, check_output

from .export import card_metrics

TAU_MIN, TAU_MAX, GRID = 0.05, 4.0, 25

ToProbabilities = Callable[[torch.Tensor, float], torch.Tensor]


# -- scoring y0 at a temperature -------------------------------------------------------------------

def calibration_scores(y0: Sequence[torch.Tensor] | torch.Tensor, annotations: np.ndarray, tau: float,
                       to_probs: ToProbabilities | None = None, *,
                       reference: str = metrics.DEFAULT_REFERENCE, ece_background: bool = True
                       ) -> dict[str, float]:
    """Validation NLL, ECE and DSC of the kept hypotheses at temperature ``tau``, as ``diffseg
    evaluate`` computes them: per image p_bar = mean_m softmax(y0_m / tau), ``metrics.nll`` /
    ``metrics.ece`` / ``metrics.dice`` of argmax(p_bar) against each reading (``reference``) averaged,
    then the mean over images (NaN skipped). The hypothesis masks do not depend on tau; the fused
    argmax(p_bar) can (a probability-weighted vote), hence DSC here.

    y0: (N, M, C, *S) or a list of (B, M, C, *S) batches in image order; annotations (N, A, *S).
    ``to_probs(y0_batch, tau)`` -> (B, M, C, *S_annotations); default plain softmax (same grid).
    """
    to_probs = to_probs or (lambda y, t: to_probabilities(y.flatten(0, 1), t).reshape(y.shape))
    batches = [y0] if isinstance(y0, torch.Tensor) else list(y0)
    rows = []
    i = 0
    for y in batches:
        p_bar = to_probs(y, float(tau)).double().mean(1).cpu().numpy()  # (B, C, *S)
        for p in p_bar:
            refs = metrics._reference_maps(np.asarray(annotations[i]), p.shape[0], reference)
            fused = p.argmax(0)
            rows.append({"nll": np.mean([metrics.nll(p, r) for r in refs]),
                         "ece": np.nanmean([metrics.ece(p, r, include_background=ece_background) for r in refs]),
                         "dice": np.nanmean([metrics.dice(fused, r, p.shape[0]) for r in refs])})
            i += 1
    if i != len(annotations):
        raise InputError(f"{i} images of hypotheses but {len(annotations)} annotation sets")
    return {k: v[0] for k, v in metrics.aggregate(rows).items()}


# -- the fit ---------------------------------------------------------------------------------------

@dataclass
class TauFit:
    """The fitted tau, its scores, and every (tau, nll, ece) evaluated (sorted by tau)."""

    tau: float
    nll: float
    ece: float
    table: list[dict[str, float]] = field(default_factory=list)
    at_edge: bool = False  # the grid's best point was the first or last: widen the range
    scores: dict[str, float] = field(default_factory=dict)  # everything ``score`` returned at tau
    grid: list[float] = field(default_factory=list)  # the log-spaced points (the rest: the refinement)


def fit_tau(score: Callable[[float], Mapping[str, float]], lo: float = TAU_MIN, hi: float = TAU_MAX,
            grid: int = GRID, xatol: float = 1e-3, digits: int = 4) -> TauFit:
    """Minimise ``score(tau)["nll"]`` over log tau in [lo, hi]: ``grid`` log-spaced points, then
    ``scipy.optimize.minimize_scalar`` (bounded, ``xatol`` in log tau) between the best point's
    neighbours. The result is rounded to ``digits`` significant digits (the card's value) and scored
    there."""
    from scipy.optimize import minimize_scalar

    if not (0 < lo < hi) or grid < 3:
        raise InputError(f"need 0 < tau range low < high and a grid of at least 3 (got {lo}, {hi}, {grid})")
    seen: dict[float, dict[str, float]] = {}

    def at(tau: float) -> dict[str, float]:
        tau = float(tau)
        if tau not in seen:
            seen[tau] = {k: float(v) for k, v in score(tau).items()}
        return seen[tau]

    taus = np.geomspace(lo, hi, int(grid))
    values = [at(t)["nll"] for t in taus]
    k = int(np.nanargmin(values))
    a, b = math.log(taus[max(k - 1, 0)]), math.log(taus[min(k + 1, len(taus) - 1)])
    res = minimize_scalar(lambda u: at(math.exp(u))["nll"], bounds=(a, b), method="bounded",
                          options={"xatol": xatol})
    best = math.exp(res.x) if res.fun <= values[k] else float(taus[k])
    best = float(f"{best:.{digits}g}")
    s = at(best)
    table = [{"tau": t, **v} for t, v in sorted(seen.items())]
    return TauFit(best, s["nll"], s.get("ece", math.nan), table, k in (0, len(taus) - 1), dict(s),
                  [float(t) for t in taus])


# -- the card --------------------------------------------------------------------------------------

def write_card_atomically(folder: str | os.PathLike, card: Mapping[str, Any] | str) -> Path:
    """Replace ``folder/model.json`` by ``card`` (a dict, or the exact text): a temporary file in the same folder (same file
    system), flushed and fsynced, then ``os.replace`` over the old card, so a reader sees either the
    old card or the new one, never half of one. The old card's permission bits are kept."""
    path = Path(folder) / modelfile.CARD_FILE
    fd, tmp = tempfile.mkstemp(prefix=f".{modelfile.CARD_FILE}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(card if isinstance(card, str) else json.dumps(card, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_tau_out(folder: str | os.PathLike, tau: float, calibration: Mapping[str, Any],
                  evaluation: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Set ``architecture.tau_out`` and ``calibration`` in the folder's card (everything else kept),
    and, given the report of the scoring at the fitted tau (``--output``'s metrics.json), replace the
    card's ``metrics`` by it, so the card's numbers are the fitted model's; then load the folder again
    to check it; the old card is put back if that fails. Returns the card."""
    folder = Path(folder)
    old_text = (folder / modelfile.CARD_FILE).read_text()
    card = json.loads(old_text)
    card["architecture"]["tau_out"] = float(tau)
    card["calibration"] = dict(calibration)
    if evaluation is not None:
        card["metrics"] = card_metrics(evaluation, "val", (card.get("metrics") or {}).get("step"),
                                       "training.calibrate: diffseg evaluate scoring at the fitted tau_out",
                                       tau_out=float(tau))
        card["calibration"]["note"] = "the card's metrics were scored at the fitted tau_out"
    write_card_atomically(folder, card)
    try:
        model, loaded = modelfile.load_model(folder)
        if not math.isclose(float(model.tau_out), float(tau)):
            raise modelfile.ModelFileError(f"the rewritten card loads with tau_out {model.tau_out}, not {tau}")
    except BaseException:
        write_card_atomically(folder, old_text)
        raise
    return loaded


# -- the command -----------------------------------------------------------------------------------

def val_file(data: str | os.PathLike) -> Path:
    """``--data``: a folder (its val.npz) or an npz; only a validation file is accepted."""
    path = Path(data).expanduser()
    if path.is_dir():
        path = path / "val.npz"
    if "val" not in path.stem.lower():
        raise InputError(f"{path} is not a validation file: tau_out is fitted on the validation split only "
                         "(a file named like val.npz)")
    return path


def _format_table(fit: TauFit, before_tau: float, before: Mapping[str, float]) -> str:
    """The grid points, the card's tau and the best one (the refinement's other points: --json)."""
    out = ["| tau | NLL (x100, nats) | ECE (%) | DSC (%) | |", "| --- | --- | --- | --- | --- |"]
    shown = set(fit.grid) | {fit.tau}
    rows = {r["tau"]: r for r in fit.table if r["tau"] in shown}
    rows.setdefault(before_tau, {"tau": before_tau, **before})
    for t in sorted(rows):
        r = rows[t]
        mark = " ".join(m for m, hit in (("card", math.isclose(t, before_tau)), ("best", t == fit.tau)) if hit)
        out.append(f"| {t:.4g} | {100 * r['nll']:.3f} | {100 * r['ece']:.3f} | "
                   f"{100 * r.get('dice', math.nan):.2f} | {mark} |")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.calibrate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model folder or model name (searched as diffseg does)")
    ap.add_argument("--models-dir", action="append", default=[], help="extra folder to search for models")
    ap.add_argument("--data", required=True, help="the LIDC folder (its val.npz is used) or a validation npz")
    ap.add_argument("--images", type=int, default=64, help="N validation images evenly spaced over the file "
                    "(0: all)")
    ap.add_argument("--samples", type=int, default=Request.samples, help="hypotheses per image")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    ap.add_argument("--precision", choices=PRECISION_CHOICES, default="auto", help="as diffseg sample's")
    ap.add_argument("--batch-size", type=int, default=None, help="(image, sample) pairs per network call "
                    "(default: the device's, as diffseg sample)")
    ap.add_argument("--tau-min", type=float, default=TAU_MIN)
    ap.add_argument("--tau-max", type=float, default=TAU_MAX)
    ap.add_argument("--grid", type=int, default=GRID, help="log-spaced grid points before the refinement")
    ap.add_argument("--json", default=None, help="also write the table and the fit to this JSON file")
    ap.add_argument("--output", default=None, help="folder for metrics.json / table.md: every diffseg "
                    "evaluate metric at the fitted tau_out, from the same hypotheses (with --write they "
                    "replace the card's metrics)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")
    ap.add_argument("--write", action="store_true",
                    help="write the fitted tau_out into the model folder's card (weights untouched)")
    args = ap.parse_args(argv)
    command = "python -m training.calibrate " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    started = time.perf_counter()
    try:
        if args.samples < 1 or args.images < 0:
            raise InputError("--samples must be at least 1 and --images at least 0")
        request = Request(seed=args.seed, device=args.device, batch_size=args.batch_size,
                          precision=args.precision).check()
        if args.output:
            check_output(args.output, args.overwrite)
        path = val_file(args.data)
        loaded = Model.load(args.model, args.models_dir)
        model, card, folder = loaded.network, loaded.card, loaded.folder
        data = data_for_model(load_multireader_npz(path), card, args.images or None)  # as diffseg evaluate
        if int(data.masks.max()) >= int(model.num_classes):
            raise InputError(f"{path} has labels up to {int(data.masks.max())} but the model has "
                             f"{model.num_classes} classes")
        predict = predictor_from_model(loaded, request, data.box)  # each image as diffseg sample draws it
        plan = predict.plan(data.images[0], args.samples)  # every check before the first image is sampled
        from tqdm import tqdm
        y0: list[torch.Tensor] = []
        with torch.no_grad(), tqdm(total=len(data), unit="image", desc="sample", file=sys.stderr,
                                   dynamic_ncols=True) as bar:
            for s in range(len(data)):
                y0.append(predict.sample_y0(data.images[s:s + 1], args.samples).float().cpu())
                bar.update(1)
        sampled = time.perf_counter()

        def score(tau: float) -> dict[str, float]:
            return calibration_scores(y0, data.masks, tau, predict.probabilities)

        before_tau = float(model.tau_out)
        before = score(before_tau)
        fit = fit_tau(score, args.tau_min, args.tau_max, args.grid)
        fitted = time.perf_counter()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    info = {"tau_out": fit.tau, "fitted_on": "val", "data": str(path), "images": len(data),
            "samples": args.samples, "seed": args.seed, "sampler": card.get("sampling"),
            "precision": plan.precision,
            "tau_out_before": before_tau, "nll_before": before["nll"], "nll_after": fit.nll,
            "ece_before": before["ece"], "ece_after": fit.ece,
            "dice_before": before.get("dice"), "dice_after": fit.scores.get("dice"),
            "note": "the card's metrics were computed with tau_out_before; the hypothesis masks (GED, "
                    "HM-IoU, MDM, diversity) do not depend on tau_out, NLL/ECE do, the fused DSC can",
            "command": command}
    print(f"{card.get('name')}: {len(data)} validation images x {args.samples} samples, seed {args.seed}, "
          f"{len(predict.timesteps)} {predict.config.method} steps")
    print(_format_table(fit, before_tau, before))
    print(f"best tau_out {fit.tau:.4g}: NLL {100 * fit.nll:.3f} (x100; card tau {before_tau:g}: "
          f"{100 * before['nll']:.3f}), ECE {100 * fit.ece:.3f}% (was {100 * before['ece']:.3f}%), "
          f"DSC {100 * fit.scores['dice']:.2f}% (was {100 * before['dice']:.2f}%)")
    if fit.at_edge:
        print(f"warning: the best grid point is at the edge of [{args.tau_min}, {args.tau_max}]; "
              "widen the range", file=sys.stderr)
    print(f"time: sampling {sampled - started:.1f} s, fitting {fitted - sampled:.1f} s "
          f"({len(fit.table)} taus scored)")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": card.get("name"), "model_folder": str(folder),
                                               **info, "table": fit.table, "at_edge": fit.at_edge,
                                               "seconds": {"sampling": sampled - started,
                                                           "fitting": fitted - sampled}}, indent=2) + "\n")
    metrics_doc = None
    if args.output:  # every metric at the fitted tau, scored as diffseg evaluate scores, from the same y0
        replay = iter(y0)
        result = evaluate_predictor(lambda batch, m: predict.probabilities(next(replay), fit.tau),
                                    data.images, data.masks, args.samples, 1,
                                    ids=[data.item_id(i) for i in range(len(data))])
        jpath, tpath = write_report(result, args.output, str(card.get("name", "model")), {
            "model": card.get("name"), "model_folder": str(folder), "data": str(path), "sampler": predict.config.method,
            "steps": len(predict.timesteps), "sampler_config": card.get("sampling"), "seed": args.seed,
            "tau_out": fit.tau, "device": plan.device, "precision": plan.precision}, overwrite=args.overwrite)
        metrics_doc = json.loads(jpath.read_text())
        print(tpath.read_text())
        print(f"wrote {jpath} and {tpath}")
    if args.write:
        try:
            write_tau_out(folder, fit.tau, info, metrics_doc)
        except (InputError, OSError) as e:
            print(f"error: could not write the card of {folder}: {e} (the old card is kept)", file=sys.stderr)
            return 1
        print(f"wrote tau_out = {fit.tau:.4g} into {folder / modelfile.CARD_FILE} (loads again)")
    else:
        print("card not changed (pass --write to store the fitted tau_out)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
