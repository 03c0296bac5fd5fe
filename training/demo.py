"""The main job, end to end on a real case: 16 hypotheses of a real LIDC nodule and how they compare
with the four radiologists who read it.

    bash training/run_demo.sh                 # sets up .venv, then runs this module
    python -m training.demo --help

1. Takes one nodule from the LIDC val split (../shared/data/lidc128, or DIFFSEG_LIDC / --data) and
   stacks its consecutive slices into a 128x128xN volume, written to NRRD in Hounsfield units (the 8-bit
   crops mapped back through the card's CT window, docs/cli.md "CT intensities (HU)"), so the command
   sees what a user's CT would give it, with the four readings beside it.
2. Runs the real command line, ``diffseg sample``, with the shipped model on that file (the box around
   the nodule is given with --roi, as for any crop model).
3. Prints where the outputs are, the foreground volume of each hypothesis, and GED / HM-IoU of the
   hypotheses against the four readings (per slice, then the mean over slices, as the papers score
   LIDC; conventions of docs/metrics.md).

The LIDC crops carry no spacing: the volume is written with a nominal 1 mm grid, so its "mm^3" are
voxels.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from DiffSegUncertaintyLib.engine import metrics
from DiffSegUncertaintyLib.engine.modelfile import read_card, resolve_model
from DiffSegUncertaintyLib.engine.volumes import uint8_window_to_hu

from .data.common import DataMissing, data_root
from .data.lidc import CT_WINDOW_HU, DEFAULT, ENV

DEFAULT_MODEL = "lidc-hsrdiff-small-cpu"


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


def read_hypotheses(seg_nrrd: Path) -> np.ndarray:
    """(M, N, H, W) binary hypotheses from the command's hypotheses.seg.nrrd (one layer per segment)."""
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(seg_nrrd)))  # (N, H, W, M) for a list-kind NRRD
    return np.moveaxis(arr, -1, 0) if arr.ndim == 4 else arr[None]


def compare(hypotheses: np.ndarray, readings: np.ndarray) -> dict[str, tuple[float, float]]:
    """GED and HM-IoU per slice (16 hypotheses vs 4 readings), then mean and std over slices."""
    rows = [{"ged": metrics.ged(hypotheses[:, k], readings[:, k], num_classes=2),
             "hm_iou": metrics.hm_iou(hypotheses[:, k], readings[:, k], num_classes=2),
             "diversity": metrics.diversity(hypotheses[:, k], num_classes=2)}
            for k in range(readings.shape[1])]
    return metrics.aggregate(rows)


def run_sampler(ct: Path, model: str, out: Path, samples: int, steps: int | None, seed: int,
                box: int) -> None:
    """The real command line, with its progress folded to one line per 10%."""
    size = sitk.ReadImage(str(ct)).GetSize()  # (x, y, z)
    lo = [(size[0] - box) // 2, (size[1] - box) // 2, 0]
    roi = ",".join(str(v) for v in (*lo, lo[0] + box, lo[1] + box, size[2]))
    cmd = [sys.executable, "-m", "DiffSegUncertaintyLib.engine.cli", "sample", str(ct), "--model", model,
           "--output", str(out), "--samples", str(samples), "--seed", str(seed), f"--roi={roi}", "--overwrite"]
    if steps:
        cmd += ["--steps", str(steps)]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    shown = -1
    for line in proc.stdout:  # "progress k/N"
        if line.startswith("progress "):
            k, n = (int(v) for v in line.split()[1].split("/"))
            if 10 * k // n > shown:
                shown = 10 * k // n
                print(f"  sampling {100 * k // n}%", flush=True)
    if proc.wait() != 0:
        raise SystemExit(proc.returncode)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help=f"LIDC folder with val.npz (default ${ENV} or ../shared/data/lidc128)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model name or folder (default: the shipped one)")
    p.add_argument("--nodule", help="PATIENT:NODULE from val.npz (default: chosen as in pick_nodule)")
    p.add_argument("--output", default="outputs/demo", help="folder for the case and the results")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--steps", type=int, help="sampler steps (default: the model card's)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    try:
        root = data_root(ENV, DEFAULT, args.data, "LIDC (lidc128: val.npz)")
    except DataMissing as err:
        print(f"demo: {err}", file=sys.stderr)
        return 2
    folder = resolve_model(args.model)
    card = read_card(folder)
    box = int(card["input"]["size"][-1])
    image, readings, label = nodule_stack(Path(root) / "val.npz", args.nodule)
    out = Path(args.output).resolve()
    ct = write_case(out / "case", image, readings)
    print(f"case: {label}, {image.shape[0]} slices of 128x128 -> {ct}")
    print(f"model: {card['name']} ({card['method']}, preset {card['preset']})")
    run_sampler(ct, str(folder), out / "result", args.samples, args.steps, args.seed, box)

    summary = json.loads((out / "result" / "summary.json").read_text())
    vols = [h["foreground_voxels"] for h in summary["hypotheses"]]
    readers = [int(r.sum()) for r in readings]
    print(f"\noutputs: {out / 'result'}  (open ct.nrrd and hypotheses.seg.nrrd in 3D Slicer)")
    print(f"sampling: {summary['sampler']['method']} {summary['steps']} steps, {summary['timings']['sampling_s']:.1f} s "
          f"on {summary['device']}")
    print("foreground volume per hypothesis (voxels = nominal mm^3):", " ".join(str(v) for v in vols))
    print(f"  spread: mean {np.mean(vols):.0f}, std {np.std(vols):.0f}, min {min(vols)}, max {max(vols)}")
    print("the four readings (voxels):", " ".join(str(v) for v in readers))
    hyps = read_hypotheses(out / "result" / "hypotheses.seg.nrrd")
    scores = compare(hyps, readings)
    print(f"hypotheses vs readings, per slice: GED {scores['ged'][0]:.3f} +- {scores['ged'][1]:.3f}, "
          f"HM-IoU {scores['hm_iou'][0]:.3f} +- {scores['hm_iou'][1]:.3f}, "
          f"diversity {scores['diversity'][0]:.3f}")
    print(f"  ({metrics.describe_conventions()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
