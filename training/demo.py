"""The main job, end to end on a real chest CT: hypotheses of a lung nodule from a point inside it,
and how they compare with the four radiologists who read it.

    bash training/run_demo.sh                 # sets up .venv, then runs this module
    python -m training.demo --help

Default (``--ct``): the whole CT of LIDC-IDRI-0001 in Hounsfield units (../shared/data/lidc-ct, or
DIFFSEG_LIDC_CT / --ct), 512x512x133 at 0.70x0.70x2.5 mm, as a user's DICOM import gives it.
1. Runs the real command line, ``diffseg sample ct.nrrd --point I,J,K``, with the shipped model: the
   model's 64x64 box is centred on a point inside the nodule (default the centre of its readers' box)
   and the slice range grows while the hypotheses still find the lesion (engine/prompt.py).
2. Compares the hypotheses with the four readers' interior masks (the masks the published crops use):
   per slice on the readers' slices (GED, HM-IoU, as the papers score LIDC; docs/metrics.md), and in
   3D (GED, HM-IoU, Dice of the hypotheses' consensus against the readers' majority, volumes with their
   spread against the readers'), the grown slice range against the readers'.
3. Writes ``panel.png`` (CT, readers, consensus, hypotheses, entropy on a few slices) and
   ``scores.json`` beside the command's outputs, and prints where they are.

``--crops``: the crop-based case instead: one nodule of the LIDC val split (../shared/data/lidc128, or
DIFFSEG_LIDC / --data) stacked into a 128x128xN volume written in HU (the 8-bit crops mapped back
through ``CT_WINDOW_HU``, docs/cli.md "CT intensities (HU)"; a nominal 1 mm grid, so its "mm^3" are
voxels), sampled with --roi on the centre box of the card's input size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from DiffSegUncertaintyLib.engine.analysis import metrics
from DiffSegUncertaintyLib.engine.files.modelfile import read_card, resolve_model
from DiffSegUncertaintyLib.engine.files.segfile import read_layers
from DiffSegUncertaintyLib.engine.files.volumes import read_inputs, uint8_window_to_hu

from .data.common import DataMissing, data_root
from .data.lidc import CT_WINDOW_HU, DEFAULT, ENV

DEFAULT_MODEL = "lidc-hsrdiff-small-cpu"
CT_ENV = "DIFFSEG_LIDC_CT"
CT_DEFAULT = "shared/data/lidc-ct/LIDC-IDRI-0001"
# A point inside the nodule of LIDC-IDRI-0001 (index i, j, k): the centre of the box around the four
# readers' masks (i 298..338, j 341..390, k 86..94); the published crops of this nodule are centred
# 2 voxels away (i 316, j 366).
CT_POINT = "318,365,90"


def pick_nodule(patient: np.ndarray, nodule: np.ndarray, masks: np.ndarray, max_slices: int = 12
                ) -> tuple[str, int]:
    """A nodule all four readers marked on as many slices as possible (at most ``max_slices`` long, so
    the demo stays quick on a CPU): a clear case whose outlines still differ."""
    groups: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, key in enumerate(zip(patient.tolist(), nodule.tolist())):
        groups[key].append(i)
    agreed = {k: sum(bool(masks[i].reshape(4, -1).any(1).all()) for i in rows)
              for k, rows in groups.items() if len(rows) <= max_slices}
    return max(agreed, key=lambda k: (agreed[k], k))


def nodule_stack(npz: Path, which: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(image (N,128,128) uint8, readings (4,N,128,128) uint8, label) of one nodule, slices in order."""
    with np.load(npz) as z:
        images, masks, patient, nodule, slc = z["images"], z["masks"], z["patient"], z["nodule"], z["slice"]
    if which:
        pid, _, num = which.partition(":")
        key = (pid, int(num or 0))
    else:
        key = pick_nodule(patient, nodule, masks)
    rows = np.nonzero((patient == key[0]) & (nodule == key[1]))[0]
    if rows.size == 0:
        raise SystemExit(f"no nodule {key[0]}:{key[1]} in {npz}")
    rows = rows[np.argsort(slc[rows])]
    return images[rows], masks[rows].transpose(1, 0, 2, 3), f"{key[0]} nodule {key[1]}"


def write_case(folder: Path, image: np.ndarray, readings: np.ndarray) -> Path:
    """The stack as a CT in HU (int16, nominal 1 mm grid) plus one labelmap per reading, for Slicer."""
    folder.mkdir(parents=True, exist_ok=True)
    ct = folder / "ct.nrrd"
    hu = np.rint(uint8_window_to_hu(image, *CT_WINDOW_HU)).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(hu), str(ct), True)
    for r, mask in enumerate(readings):
        sitk.WriteImage(sitk.GetImageFromArray(mask.astype(np.uint8)), str(folder / f"reading_{r + 1}.nrrd"), True)
    return ct


def read_hypotheses(seg_nrrd: Path, reference: Path | None = None) -> np.ndarray:
    """(M, N, H, W) binary hypotheses from the command's hypotheses.seg.nrrd (one layer per hypothesis),
    on the full grid of ``reference`` (the input image; default: the run's consensus.nrrd beside it)."""
    ref = read_inputs([reference or Path(seg_nrrd).with_name("consensus.nrrd")]).geometry
    return read_layers(seg_nrrd, ref)[0]


def compare(hypotheses: np.ndarray, readings: np.ndarray) -> dict[str, tuple[float, float]]:
    """GED and HM-IoU per slice (M hypotheses vs the readings), then mean and std over slices."""
    rows = [{"ged": metrics.ged(hypotheses[:, k], readings[:, k], num_classes=2),
             "hm_iou": metrics.hm_iou(hypotheses[:, k], readings[:, k], num_classes=2),
             "diversity": metrics.diversity(hypotheses[:, k], num_classes=2)}
            for k in range(readings.shape[1])]
    return metrics.aggregate(rows)


def majority(readings: np.ndarray) -> np.ndarray:
    """The readers' consensus: voxels at least half of them marked (LIDC's 50 % consensus)."""
    return (2 * readings.astype(np.int32).sum(0) >= readings.shape[0]).astype(np.uint8)


def slice_range(masks: np.ndarray) -> tuple[int, int] | None:
    """First and last slice (axis 1 of (R, N, H, W)) where any mask holds foreground."""
    k = np.nonzero(masks.reshape(masks.shape[0], masks.shape[1], -1).any((0, 2)))[0]
    return (int(k[0]), int(k[-1])) if k.size else None


def compare_3d(hypotheses: np.ndarray, readings: np.ndarray, consensus: np.ndarray,
               voxel_mm3: float) -> dict:
    """The hypotheses against the readers in 3D: GED and HM-IoU of the volumes, Dice of the model's
    consensus against the readers' majority, volumes (mm^3) with their spread, slice ranges."""
    d = lambda a, b: float(metrics.pairwise_dice(a[None], b[None])[0, 0])  # noqa: E731
    hv = hypotheses.reshape(len(hypotheses), -1).sum(1) * voxel_mm3
    rv = readings.reshape(len(readings), -1).sum(1) * voxel_mm3
    maj = majority(readings)
    return {
        "ged": float(metrics.ged(hypotheses, readings, num_classes=2)),
        "hm_iou": float(metrics.hm_iou(hypotheses, readings, num_classes=2)),
        "consensus_dice": d(consensus, maj),
        "consensus_dice_per_reader": [d(consensus, r) for r in readings],
        "reader_dice_to_majority": [d(r, maj) for r in readings],
        "hypothesis_mm3": {"mean": float(hv.mean()), "std": float(hv.std()), "min": float(hv.min()),
                           "max": float(hv.max()), "each": [float(v) for v in hv]},
        "reader_mm3": {"mean": float(rv.mean()), "std": float(rv.std()), "min": float(rv.min()),
                       "max": float(rv.max()), "each": [float(v) for v in rv]},
        "hypothesis_slices": slice_range(hypotheses), "reader_slices": slice_range(readings),
        "consensus_slices": slice_range(consensus[None]),
    }


def run_sampler(ct: Path, model: str, out: Path, samples: int, steps: int | None, seed: int,
                where: list[str], precision: str = "auto", eta: float | None = None) -> tuple[int, float]:
    """The real command line (``where``: --roi/--point arguments), its progress folded to one line
    per 10 % (per slice for a point prompt); its own estimate and slice lines pass through on
    stderr. Returns the command's peak resident memory in MiB and its wall-clock seconds, start to exit
    (what a user waits for: Python and torch start-up, reading the CT, sampling, writing)."""
    cmd = [sys.executable, "-m", "DiffSegUncertaintyLib.engine.cli", "sample", str(ct), "--model", model,
           "--output", str(out), "--samples", str(samples), "--seed", str(seed), *where, "--overwrite"]
    if steps:
        cmd += ["--steps", str(steps)]
    if eta is not None:
        cmd += ["--eta", str(eta)]
    if precision != "auto":
        cmd += ["--precision", precision]
    print("$", " ".join(cmd), flush=True)
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    shown, last, restarted = -1, 0, False
    for line in proc.stdout:  # "progress k/N"
        if line.startswith("progress "):
            k, n = (int(v) for v in line.split()[1].split("/"))
            restarted = restarted or k < last  # a point prompt's next slice: its lines say enough
            last = k
            if 10 * k // n > shown and not restarted:
                shown = 10 * k // n
                print(f"  sampling {100 * k // n}%", flush=True)
    if proc.wait() != 0:
        raise SystemExit(proc.returncode)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux; max over children
    return int(max(peak, before) // 1024), seconds


def crop_box(*stacks: np.ndarray, margin: int = 12) -> tuple[slice, slice]:
    """In-plane (rows, cols) box around every mask of the stacks ((..., H, W) each, the same H and W),
    ``margin`` voxels wider. Each stack is reduced where it lies: joining 16 full-grid hypotheses of a
    512 x 512 CT into one array would copy 0.5 GB first."""
    any2d = np.zeros(stacks[0].shape[-2:], bool)
    for masks in stacks:
        any2d |= masks.reshape(-1, *masks.shape[-2:]).any(0)
    r, c = np.nonzero(any2d)
    h, w = any2d.shape
    return (slice(max(0, r.min() - margin), min(h, r.max() + margin + 1)),
            slice(max(0, c.min() - margin), min(w, c.max() + margin + 1)))


def masks_box(hypotheses: np.ndarray, readings: np.ndarray, consensus: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three mask stacks cut to the in-plane box that holds every mask's foreground, all slices kept
    (slice numbers stay the CT's). Every score of ``compare`` / ``compare_3d`` counts foreground voxels
    only, so the numbers are those of the full grid, on 50x less data for a 512x512 CT (77 -> 32 s and
    6.5 -> 1.8 GB for the main job's scoring)."""
    rows, cols = crop_box(readings, hypotheses, consensus, margin=1)
    return hypotheses[..., rows, cols], readings[..., rows, cols], consensus[..., rows, cols]


def panel(path: Path, ct: np.ndarray, readings: np.ndarray, hypotheses: np.ndarray, consensus: np.ndarray,
          entropy: np.ndarray, slices: list[int], title: str, shown: int = 4) -> None:
    """One row per slice: CT (lung window), the four readers' outlines, the model's consensus (filled)
    with the readers' majority outline, ``shown`` hypotheses from the smallest to the largest (by
    volume), the predictive entropy. All in a box
    around the lesion; arrays (N, H, W) on the CT's grid, readings (4, ...), hypotheses (M, ...)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = min(shown, len(hypotheses))
    vols = hypotheses.reshape(len(hypotheses), -1).sum(1)
    order = np.argsort(vols, kind="stable")  # the smallest, the largest and evenly between: the spread
    picks = [int(order[round(q * (len(order) - 1))]) for q in np.linspace(0, 1, shown)]
    rows, cols = crop_box(readings, hypotheses[picks], consensus)
    colors = ["#e41a1c", "#377eb8", "#4daf4a", "#ff7f00"]
    heads = ["CT", "4 readers", "consensus\n(readers' majority: line)"] + \
        [f"hypothesis {m + 1}\n({'smallest' if n == 0 else 'largest' if n == shown - 1 else 'volume rank ' + str(int(np.nonzero(order == m)[0][0]) + 1)})"
         for n, m in enumerate(picks)] + ["entropy (nats)"]
    fig, axes = plt.subplots(len(slices), len(heads), figsize=(1.9 * len(heads), 2.0 * len(slices) + 0.5),
                             squeeze=False)
    ent_max = float(max(entropy.max(), 1e-6))
    for r, k in enumerate(slices):
        img = np.clip((ct[k, rows, cols] + 1350.0) / 1500.0, 0, 1)  # lung window W 1500 L -600
        for c, ax in enumerate(axes[r]):
            ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(heads[c], fontsize=8)
        axes[r, 0].set_ylabel(f"slice {k}", fontsize=8)
        for n, reading in enumerate(readings):
            if reading[k, rows, cols].any():
                axes[r, 1].contour(reading[k, rows, cols], levels=[0.5], colors=colors[n % 4], linewidths=0.8)
        axes[r, 2].imshow(np.ma.masked_equal(consensus[k, rows, cols], 0), cmap="autumn", alpha=0.5,
                          vmin=0, vmax=1, interpolation="nearest")
        maj = majority(readings[:, k, rows, cols])
        if maj.any():
            axes[r, 2].contour(maj, levels=[0.5], colors="cyan", linewidths=0.8)
        for n, m in enumerate(picks):
            axes[r, 3 + n].imshow(np.ma.masked_equal(hypotheses[m, k, rows, cols], 0), cmap="autumn",
                                  alpha=0.5, vmin=0, vmax=1, interpolation="nearest")
        im = axes[r, -1].imshow(entropy[k, rows, cols], cmap="magma", vmin=0, vmax=ent_max,
                                interpolation="nearest")
    fig.colorbar(im, ax=axes[:, -1].tolist(), fraction=0.05, shrink=0.8)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _print_hypotheses(summary: dict, readers_vox: list[int], voxel_mm3: float, unit: str) -> None:
    vols = [h["foreground_voxels"] for h in summary["hypotheses"]]
    print(f"sampling: {summary['sampler']['method']} {summary['steps']} steps, "
          f"{summary['timings']['sampling_s']:.1f} s on {summary['device']}")
    print(f"foreground volume per hypothesis ({unit}):", " ".join(f"{v * voxel_mm3:.0f}" for v in vols))
    v = np.asarray(vols) * voxel_mm3
    print(f"  spread: mean {v.mean():.0f}, std {v.std():.0f}, min {v.min():.0f}, max {v.max():.0f}")
    print(f"the four readings ({unit}):", " ".join(f"{r * voxel_mm3:.0f}" for r in readers_vox))


def run_crops(args: argparse.Namespace, folder: Path, card: dict) -> int:
    """The crop-based case (``--crops``): a val nodule's published crops as a small CT."""
    try:
        root = data_root(ENV, DEFAULT, args.data, "LIDC (lidc128: val.npz)")
    except DataMissing as err:
        print(f"demo: {err}", file=sys.stderr)
        return 2
    box = int(card["input"]["size"][-1])
    image, readings, label = nodule_stack(Path(root) / "val.npz", args.nodule)
    out = Path(args.output).resolve()
    ct = write_case(out / "case", image, readings)
    print(f"case: {label}, {image.shape[0]} slices of 128x128 -> {ct}")
    print(f"model: {card['name']} ({card['method']}, preset {card['preset']})")
    size = sitk.ReadImage(str(ct)).GetSize()  # (x, y, z)
    lo = [(size[0] - box) // 2, (size[1] - box) // 2, 0]
    roi = ",".join(str(v) for v in (*lo, lo[0] + box, lo[1] + box, size[2]))
    run_sampler(ct, str(folder), out / "result", args.samples, args.steps, args.seed, [f"--roi={roi}"],
                args.precision, args.eta)
    summary = json.loads((out / "result" / "summary.json").read_text())
    print(f"\noutputs: {out / 'result'}  (open ct.nrrd and hypotheses.seg.nrrd in 3D Slicer)")
    _print_hypotheses(summary, [int(r.sum()) for r in readings], 1.0, "voxels = nominal mm^3")
    hyps = read_hypotheses(out / "result" / "hypotheses.seg.nrrd", ct)
    scores = compare(hyps, readings)
    print(f"hypotheses vs readings, per slice: GED {scores['ged'][0]:.3f} +- {scores['ged'][1]:.3f}, "
          f"HM-IoU {scores['hm_iou'][0]:.3f} +- {scores['hm_iou'][1]:.3f}, "
          f"diversity {scores['diversity'][0]:.3f}")
    print(f"  ({metrics.describe_conventions()})")
    return 0


def run_ct(args: argparse.Namespace, folder: Path, card: dict) -> int:
    """The whole-CT case (default): sample from a point, score against the four readers, draw the panel."""
    try:
        root = Path(data_root(CT_ENV, CT_DEFAULT, args.ct, "a whole LIDC CT (ct.nrrd, reader-N-interior.nrrd)"))
    except DataMissing as err:
        print(f"demo: {str(err).replace('--data', '--ct')} (or run the crop case with --crops)", file=sys.stderr)
        return 2
    ct_path = root / "ct.nrrd"
    reader_paths = [root / f"reader-{n}-interior.nrrd" for n in range(1, 5)]
    missing = [p.name for p in [ct_path, *reader_paths] if not p.is_file()]
    if missing:
        print(f"demo: {root} lacks {', '.join(missing)} (see its README; set {CT_ENV} or --ct)", file=sys.stderr)
        return 2
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    where = [f"--roi={args.roi}"] if args.roi else [f"--point={args.point}"]
    print(f"case: {ct_path} (whole CT), readers {', '.join(p.name for p in reader_paths)}")
    print(f"model: {card['name']} ({card['method']}, preset {card['preset']}), "
          f"preprocessing {json.dumps(card['input'].get('preprocessing'))}")
    if args.result:  # score a finished run of this CT instead of sampling
        result, peak_mib, wall_s = Path(args.result).resolve(), None, None
    else:
        result = out / "result"
        peak_mib, wall_s = run_sampler(ct_path, str(folder), result, args.samples, args.steps, args.seed, where,
                                       args.precision, args.eta)
    summary = json.loads((result / "summary.json").read_text())
    where = where if not args.result else [f"--roi={','.join(map(str, summary['roi']['start'] + summary['roi']['stop']))}"]
    vols = read_inputs([ct_path])
    geo, ct = vols.geometry, vols.channels[0]
    readings = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(p))) > 0 for p in reader_paths]).astype(np.uint8)
    hyps = read_hypotheses(result / "hypotheses.seg.nrrd", ct_path)
    consensus = sitk.GetArrayFromImage(sitk.ReadImage(str(result / "consensus.nrrd")))
    entropy = sitk.GetArrayFromImage(sitk.ReadImage(str(result / "entropy.nrrd")))
    voxel = float(np.prod(geo.spacing))
    ks = slice_range(readings)
    hyps_box, readings_box, consensus_box = masks_box(hyps, readings, consensus)
    per_slice = compare(hyps_box[:, ks[0]:ks[1] + 1], readings_box[:, ks[0]:ks[1] + 1])
    three = compare_3d(hyps_box, readings_box, consensus_box, voxel)
    files = {p.name: p.stat().st_size for p in sorted(result.iterdir())}
    roi = summary["roi"]
    scores = {"case": str(ct_path), "where": where, "model": summary["model"]["name"],
              "model_folder": summary["model"]["folder"],
              "preprocessing": read_card(summary["model"]["folder"])["input"].get("preprocessing"),
              "samples": summary["samples"], "steps": summary["steps"], "seed": summary["seed"], "roi": roi,
              "per_slice": {k: {"mean": v[0], "std": v[1]} for k, v in per_slice.items()},
              "per_slice_slices": list(ks), "three_d": three, "sampling_s": summary["timings"]["sampling_s"],
              "precision": summary.get("precision"), "command_s": wall_s, "peak_rss_mib": peak_mib,
              "file_bytes": files}
    (out / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    picks = sorted({ks[0] + 1, (ks[0] + ks[1]) // 2, ks[1] - 1})
    panel(out / "panel.png", ct, readings, hyps, consensus, entropy, picks,
          f"{summary['model']['name']} on {root.name}: {summary['samples']} hypotheses vs 4 readers "
          f"(per-slice GED {per_slice['ged'][0]:.3f}, HM-IoU {per_slice['hm_iou'][0]:.3f})")

    print(f"\noutputs: {result}  (open {ct_path.name} and hypotheses.seg.nrrd in 3D Slicer)")
    print(f"panel: {out / 'panel.png'}\nscores: {out / 'scores.json'}")
    _print_hypotheses(summary, [int(r.sum()) for r in readings], voxel, "mm^3")
    h, r = three["hypothesis_mm3"], three["reader_mm3"]
    inside = r["min"] <= h["mean"] <= r["max"]
    print(f"  hypotheses' mean {h['mean']:.0f} mm^3 {'inside' if inside else 'outside'} the readers' range "
          f"{r['min']:.0f}-{r['max']:.0f} mm^3")
    print(f"slices sampled {roi['start'][2]}-{roi['stop'][2] - 1}; the lesion in the hypotheses "
          f"{three['hypothesis_slices']}, the consensus {three['consensus_slices']}, the readers {three['reader_slices']}")
    print(f"per slice ({ks[0]}-{ks[1]}, the readers' slices): GED {per_slice['ged'][0]:.3f} +- "
          f"{per_slice['ged'][1]:.3f}, HM-IoU {per_slice['hm_iou'][0]:.3f} +- {per_slice['hm_iou'][1]:.3f}, "
          f"diversity {per_slice['diversity'][0]:.3f}")
    print(f"3D: GED {three['ged']:.3f}, HM-IoU {three['hm_iou']:.3f}, Dice of the consensus vs the readers' "
          f"majority {three['consensus_dice']:.3f} (each reader vs the majority: "
          + " ".join(f"{v:.3f}" for v in three["reader_dice_to_majority"]) + ")")
    print("files: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in files.items())
          + (f"; peak memory of diffseg sample {peak_mib} MiB" if peak_mib else ""))
    if wall_s is not None:
        print(f"diffseg sample took {wall_s:.1f} s from start to exit ({summary.get('precision')}, "
              f"{summary['steps']} steps)")
    print(f"  ({metrics.describe_conventions()})")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--ct", help=f"folder with ct.nrrd and reader-N-interior.nrrd (default ${CT_ENV} or "
                   "../shared/data/lidc-ct/LIDC-IDRI-0001)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--point", default=CT_POINT, help=f"index i,j,k inside the nodule (default {CT_POINT})")
    where.add_argument("--roi", help="index box i0,j0,k0,i1,j1,k1 instead of the point")
    p.add_argument("--crops", action="store_true", help="the crop-based case: a val nodule's published crops")
    p.add_argument("--data", help=f"--crops: LIDC folder with val.npz (default ${ENV} or ../shared/data/lidc128)")
    p.add_argument("--nodule", help="--crops: PATIENT:NODULE from val.npz (default: chosen as in pick_nodule)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model name or folder (default: the shipped one)")
    p.add_argument("--output", default="outputs/demo", help="folder for the results")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--steps", type=int, help="sampler steps (default: the model card's)")
    p.add_argument("--eta", type=float, help="DDIM eta (default: the model card's; 1 = fresh noise every step)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="as diffseg sample's (default auto: bf16 where the hardware runs it natively)")
    p.add_argument("--result", help="score this finished `diffseg sample` run of the CT instead of sampling")
    args = p.parse_args(argv)
    folder = resolve_model(args.model)
    card = read_card(folder)
    return run_crops(args, folder, card) if args.crops else run_ct(args, folder, card)


if __name__ == "__main__":
    raise SystemExit(main())
