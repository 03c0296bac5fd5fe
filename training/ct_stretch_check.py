"""The evidence behind the LIDC cards' ``slice_minmax`` preprocessing (issue 14, docs/decisions.md).

    python -m training.ct_stretch_check [--ct FOLDER] [--data FOLDER]

1. Finds where each published val crop of LIDC-IDRI-0001 nodule 0 lies in the whole CT (every 128x128
   box of its slice near the readers' masks, by correlation), then compares the crop with the card's
   stretch of that box (``engine.files.slicestretch``): the share of identical 8-bit pixels and the largest
   difference, and the contrast the former fixed window [-1000, 1400] HU gave instead.
2. Checks that the network input of every val crop is bit for bit what the former card gave, on the
   8-bit crops (``diffseg evaluate``) and on the crops written in HU with the centre ROI (the crop
   demo): the val scores cannot change.
Numpy and SimpleITK only; about half a minute.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from DiffSegUncertaintyLib.engine.files.slicestretch import slice_minmax
from DiffSegUncertaintyLib.engine.files.volumes import preprocess, uint8_window_to_hu

from .data.common import DataMissing, data_root
from .data.lidc import CT_PREPROCESSING, CT_WINDOW_HU, DEFAULT, ENV

FORMER = {"kind": "minmax", "lower": CT_WINDOW_HU[0], "upper": CT_WINDOW_HU[1]}


def locate(ct_slice: np.ndarray, crop: np.ndarray, near: tuple[int, int], reach: int = 24) -> tuple[float, int, int]:
    """(correlation, row, col) of the 128x128 box of ``ct_slice`` most correlated with ``crop``,
    searched within ``reach`` voxels of the box whose top-left corner is ``near``."""
    best = (-2.0, 0, 0)
    c = (crop - crop.mean()).ravel()
    for r in range(max(0, near[0] - reach), min(ct_slice.shape[0] - 128, near[0] + reach) + 1):
        for q in range(max(0, near[1] - reach), min(ct_slice.shape[1] - 128, near[1] + reach) + 1):
            b = ct_slice[r:r + 128, q:q + 128].ravel()
            b = b - b.mean()
            corr = float(b @ c / (np.linalg.norm(b) * np.linalg.norm(c) + 1e-12))
            if corr > best[0]:
                best = (corr, r, q)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.ct_stretch_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ct", help="folder with ct.nrrd and reader-N-interior.nrrd of LIDC-IDRI-0001")
    ap.add_argument("--data", help="lidc128 folder with val.npz")
    args = ap.parse_args(argv)
    try:
        ct_root = data_root("DIFFSEG_LIDC_CT", "shared/data/lidc-ct/LIDC-IDRI-0001", args.ct, "the whole CT")
        root = data_root(ENV, DEFAULT, args.data, "LIDC (lidc128: val.npz)")
    except DataMissing as err:
        print(f"ct_stretch_check: {err}", file=sys.stderr)
        return 2
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(ct_root) / "ct.nrrd"))).astype(np.float32)
    readers = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(Path(ct_root) / f"reader-{n}-interior.nrrd")))
                        for n in range(1, 5)]) > 0
    with np.load(Path(root) / "val.npz") as z:
        rows = np.nonzero((z["patient"] == "LIDC-IDRI-0001") & (z["nodule"] == 0))[0]
        rows = rows[np.argsort(z["slice"][rows])]
        crops, masks, images = z["images"][rows].astype(np.float32), z["masks"][rows], z["images"]
    ks = np.nonzero(readers.any((0, 2, 3)))[0]
    k0 = int(ks[0])
    print(f"LIDC-IDRI-0001 nodule 0: {len(crops)} published crops, readers' slices {ks[0]}-{ks[-1]}")
    for n, crop in enumerate(crops):
        k = k0 + n
        cy, cx = np.argwhere(readers[:, k].any(0)).mean(0)
        my, mx = np.argwhere(masks[n].any(0)).mean(0)
        corr, r, q = locate(ct[k], crop, (int(round(cy - my)), int(round(cx - mx))))
        box = ct[k, r:r + 128, q:q + 128]
        ours = 255 * slice_minmax(box, CT_PREPROCESSING["lower"], None, CT_PREPROCESSING["context"])
        fixed = 255 * (np.clip(box, *CT_WINDOW_HU) - CT_WINDOW_HU[0]) / (CT_WINDOW_HU[1] - CT_WINDOW_HU[0])
        same_masks = bool((masks[n] == readers[:, k, r:r + 128, q:q + 128]).all())
        print(f"  crop {n} = CT slice {k}, rows {r}-{r + 127}, cols {q}-{q + 127} (corr {corr:.6f}; readers' "
              f"masks {'identical' if same_masks else 'differ'}): HU range {box.min():.0f}..{box.max():.0f}; "
              f"card: {np.mean(np.rint(ours) == crop):.2%} pixels identical, max diff {np.abs(ours - crop).max():.2f}; "
              f"former window: contrast x{(box.max() - box.min()) / (CT_WINDOW_HU[1] - CT_WINDOW_HU[0]):.2f}, "
              f"max diff {np.abs(fixed - crop).max():.0f}")
    same8 = all(np.array_equal(preprocess(im[None], FORMER), preprocess(im[None], CT_PREPROCESSING)) for im in images)
    c = slice(32, 96)
    hu = uint8_window_to_hu(images, *CT_WINDOW_HU)
    same_hu = all(np.array_equal(preprocess(h[None, None], FORMER)[..., c, c],
                                 preprocess(h[None, None], CT_PREPROCESSING, box=(slice(0, 1), c, c))[..., c, c])
                  for h in hu)
    print(f"{len(images)} val crops, network input of the card against the former card: 8-bit "
          f"(diffseg evaluate) {'bit-identical' if same8 else 'DIFFERENT'}; in HU with the centre 64x64 ROI "
          f"(crop demo) {'bit-identical' if same_hu else 'DIFFERENT'}")
    return 0 if same8 and same_hu else 1


if __name__ == "__main__":
    sys.exit(main())
