"""A travelling pack of the LIDC train and val splits (issue 15): the device machine takes at most 64 MiB
of files with a command, the lidc128 folder is 147 MiB, so the pack keeps the centre crops the shipped
crop models use and bit-packs the masks.

    python -m training.gpu.pack --data ../shared/data/lidc128 --out .gl/lidc64.npz [--size 64]
    python -m training.gpu.pack --data ../shared/data/lidc128 --out .gl/lidc64-val.npz --splits val
    python -m training.gpu.pack --unpack .gl/lidc64.npz --out /tmp/lidc64     # -> train.npz, val.npz

The pack is one compressed npz: per split ``<split>_images`` uint8 (S, h, w), ``<split>_masks`` uint8
``np.packbits`` of the 0/1 masks (S, 4, h, w) along the last axis, and ``patient``/``nodule``/``slice``.
Unpacking writes the lidc128 layout (uncompressed npz, training/data/lidc.py reads it as it is), so
training reads the pack through the one LIDC loader. The crop is the loader's own (``data.fit = "crop"``):
an item of the unpacked folder equals the item of the original at ``size = h`` bit for bit (tested).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..data.common import center_crop

SPLITS = ("train", "val")
FIELDS = ("patient", "nodule", "slice")


def crop(arr: np.ndarray, size: int) -> np.ndarray:
    """The centre ``size`` x ``size`` of (..., H, W) by the loader's own crop (data.common.center_crop)."""
    lead = arr.shape[:-2]
    flat = torch.from_numpy(np.ascontiguousarray(arr.reshape(-1, *arr.shape[-2:])))
    return center_crop(flat, (size, size)).numpy().reshape(*lead, size, size)


def pack(data: str | Path, out: str | Path, size: int = 64, splits: tuple[str, ...] = SPLITS) -> Path:
    """Write the pack of ``splits`` of the lidc128 folder ``data`` to ``out`` (atomically)."""
    data, out = Path(data), Path(out)
    missing = [s for s in splits if not (data / f"{s}.npz").is_file()]
    if missing:
        raise FileNotFoundError(f"{data} has no {', '.join(m + '.npz' for m in missing)} (the lidc128 layout)")
    if size % 8:
        raise ValueError(f"--size {size}: must be a multiple of 8 (masks are bit-packed along the width)")
    arrays: dict[str, np.ndarray] = {"size": np.array(size)}
    for s in splits:
        with np.load(data / f"{s}.npz") as z:
            masks = z["masks"]
            if masks.max(initial=0) > 1:
                raise ValueError(f"{data / s}.npz: masks hold values above 1; the pack keeps 0/1 masks")
            arrays[f"{s}_images"] = crop(z["images"], size)
            arrays[f"{s}_masks"] = np.packbits(crop(masks, size).astype(bool), axis=-1)
            for f in FIELDS:
                arrays[f"{s}_{f}"] = z[f]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".npz", delete=False) as tmp:
        np.savez_compressed(tmp, **arrays)
    os.chmod(tmp.name, 0o644)
    Path(tmp.name).replace(out)
    return out


def read(path: str | Path, split: str) -> dict[str, np.ndarray]:
    """One split of a pack in the lidc128 layout (images, masks 0/1 uint8, patient, nodule, slice)."""
    with np.load(path) as z:
        if f"{split}_images" not in z:
            raise KeyError(f"{path} holds no {split} split")
        size = int(z["size"])
        masks = np.unpackbits(z[f"{split}_masks"], axis=-1, count=size)
        return {"images": z[f"{split}_images"], "masks": masks,
                **{f: z[f"{split}_{f}"] for f in FIELDS}}


def unpack(path: str | Path, out: str | Path) -> Path:
    """Write ``<out>/<split>.npz`` for every split of the pack (uncompressed: fast to read)."""
    path, out = Path(path), Path(out)
    if not path.is_file():
        raise FileNotFoundError(f"no pack at {path} (python -m training.gpu.pack --data ... --out {path})")
    out.mkdir(parents=True, exist_ok=True)
    with np.load(path) as z:
        splits = [k[: -len("_images")] for k in z.files if k.endswith("_images")]
    for s in splits:
        target = out / f"{s}.npz"
        with tempfile.NamedTemporaryFile(dir=out, suffix=".npz", delete=False) as tmp:
            np.savez(tmp, **read(path, s))
        Path(tmp.name).replace(target)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.gpu.pack", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="the lidc128 folder (train.npz, val.npz)")
    ap.add_argument("--unpack", metavar="PACK", help="unpack PACK into the folder --out instead")
    ap.add_argument("--out", required=True, help="the pack file to write (or the folder, with --unpack)")
    ap.add_argument("--size", type=int, default=64, help="centre-crop size (default 64, as the crop models)")
    ap.add_argument("--splits", default="train,val", help="which splits (val alone: 5 MiB, for the benchmark)")
    args = ap.parse_args(argv)
    try:
        if args.unpack:
            unpack(args.unpack, args.out)
            print(f"unpacked {args.unpack} into {args.out}")
            return 0
        if not args.data:
            raise ValueError("--data is required to make a pack")
        out = pack(args.data, args.out, args.size, tuple(s.strip() for s in args.splits.split(",") if s.strip()))
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{out}: {out.stat().st_size / 2 ** 20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
