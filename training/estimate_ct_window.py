"""How the 8-bit LIDC crops relate to Hounsfield units, estimated from the crops themselves.

    python -m training.estimate_ct_window [DATA] [--split train]

DATA: the lidc128 folder (else $DIFFSEG_LIDC, else ../shared/data/lidc128). Numpy only, a few seconds.

Why from the data: the publisher of the 'LIDC-IDRI-slices' PNGs (redistributed by periclesanfe/Pulmoseg)
documents no intensity window and no preparation script for that layout was found. The numbers this
prints are the evidence for the card's preprocessing (docs/cli.md, "CT intensities (HU)"):

1. Saturation per crop. A fixed HU window clips every crop that holds bone or air at 255 or 0 by
   the hundreds of pixels, and leaves crops without them unsaturated. Here *every* crop holds a 0 and
   a 255, and most hold exactly one 255: each crop was stretched to its own minimum and maximum (an
   image writer that rescales each image to 0..255) -- there is no single publisher window.
2. Landmarks in the pooled histogram: the lung-parenchyma mode (about -850 HU) and the
   soft-tissue / solid-nodule mode (about +40 HU) give a linear fit HU -> 8-bit for the typical crop.
3. The crop maximum each crop implies: with the minimum at air (-1000 HU, where the pile-up at 0
   says the intensities were floored) and its own lung mode at -850 HU,
   max_c = -1000 + 150 * 255 / lung_mode_c. Its median is the upper end of the typical window.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

AIR_HU, LUNG_HU, SOFT_TISSUE_HU = -1000.0, -850.0, 40.0
ENV = "DIFFSEG_LIDC"
DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lidc128"


def _smooth(h: np.ndarray, k: int = 5) -> np.ndarray:
    return np.apply_along_axis(lambda r: np.convolve(r, np.ones(k) / k, "same"), -1, h)


def estimate(images: np.ndarray) -> dict:
    """The statistics above for uint8 crops (S, H, W)."""
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 crops, got {images.dtype}")
    S = len(images)
    flat = images.reshape(S, -1)
    per = np.bincount((flat.astype(np.int64) + 256 * np.arange(S)[:, None]).ravel(),
                      minlength=256 * S).reshape(S, 256)
    pooled = per.sum(0) / flat.size
    n0, n255 = per[:, 0], per[:, 255]
    hs = _smooth(pooled)
    lung = int(np.argmax(hs[3:90])) + 3          # lung parenchyma: the dark mode (0 itself is the floor)
    soft = int(np.argmax(hs[90:170])) + 90       # soft tissue / solid nodule: the bright mode
    slope = (soft - lung) / (SOFT_TISSUE_HU - LUNG_HU)           # 8-bit levels per HU
    fit_lower = LUNG_HU - lung / slope
    fit_upper = fit_lower + 255 / slope
    crop_lung = np.argmax(_smooth(per.astype(float))[:, 3:90], axis=1) + 3
    ok = (crop_lung > 3) & (crop_lung < 80)
    crop_max = AIR_HU + (LUNG_HU - AIR_HU) * 255 / crop_lung[ok]
    return {
        "crops": S,
        "crops_with_a_0": float((n0 > 0).mean()), "crops_with_a_255": float((n255 > 0).mean()),
        "pixels_at_255_per_crop_pct": np.percentile(n255, [50, 90, 99, 100]).tolist(),
        "pixels_at_0_per_crop_pct": np.percentile(n0, [50, 75, 90, 100]).tolist(),
        "pooled_fraction_at_0": float(pooled[0]), "pooled_fraction_at_1": float(pooled[1]),
        "pooled_fraction_at_255": float(pooled[255]),
        "lung_mode": lung, "soft_tissue_mode": soft,
        "landmark_fit": (float(fit_lower), float(fit_upper)),
        "crops_with_a_lung_mode": float(ok.mean()),
        "implied_crop_max_hu_pct": np.percentile(crop_max, [10, 25, 50, 75, 90]).tolist(),
        "window": (AIR_HU, float(50 * round(np.median(crop_max) / 50))),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.estimate_ct_window",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="?", help=f"lidc128 folder (default ${ENV} or ../shared/data/lidc128)")
    ap.add_argument("--split", default="train", help="npz to read (default train)")
    args = ap.parse_args(argv)
    root = Path(args.data or os.environ.get(ENV) or DEFAULT)
    path = root / f"{args.split}.npz"
    if not path.exists():
        print(f"error: {path} not found: pass the lidc128 folder or set {ENV}", file=sys.stderr)
        return 2
    with np.load(path) as z:
        r = estimate(z["images"])
    pct = lambda v: " / ".join(f"{x:g}" for x in v)  # noqa: E731
    print(f"{path}: {r['crops']} crops")
    print(f"crops holding a 0: {r['crops_with_a_0']:.1%}; holding a 255: {r['crops_with_a_255']:.1%}")
    print(f"pixels at 255 per crop (median / p90 / p99 / max): {pct(r['pixels_at_255_per_crop_pct'])}")
    print(f"pixels at 0 per crop (median / p75 / p90 / max): {pct(r['pixels_at_0_per_crop_pct'])}")
    print(f"pooled fraction at 0 / 1 / 255: {r['pooled_fraction_at_0']:.4f} / {r['pooled_fraction_at_1']:.4f}"
          f" / {r['pooled_fraction_at_255']:.5f}")
    print(f"pooled modes: lung {r['lung_mode']} (= {LUNG_HU:g} HU), soft tissue {r['soft_tissue_mode']} "
          f"(= {SOFT_TISSUE_HU:+g} HU)")
    lo, hi = r["landmark_fit"]
    print(f"two-landmark linear fit of the pooled crops: 0 = {lo:.0f} HU, 255 = {hi:.0f} HU")
    implied = pct(round(v) for v in r["implied_crop_max_hu_pct"])
    print(f"crop maximum implied by each crop's lung mode, HU (p10 / p25 / median / p75 / p90, "
          f"{r['crops_with_a_lung_mode']:.0%} of crops): {implied}")
    print("verdict: each crop was min-max stretched on its own (no fixed publisher window); "
          f"typical window [{r['window'][0]:g}, {r['window'][1]:g}] HU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
