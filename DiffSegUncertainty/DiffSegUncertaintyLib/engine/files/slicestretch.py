"""The LIDC publisher's per-crop stretch, reproduced on a whole CT in Hounsfield units.

Why: the LIDC crops a shipped crop model was trained on are 8-bit PNGs, each slice stretched to its own
minimum and maximum over a 128x128 box of the CT's own pixels around the nodule (each crop holds a 0 and
a 255). On LIDC-IDRI-0001 nodule 0 the nine val crops are exactly ``rint(255 * (HU - min) / (max - min))``
of the 128x128 box at rows 302..429, columns 252..379 of CT slices 86..94, per slice (correlation
0.99999; 99.9-100 % of the pixels equal, the rest off by one: docs/decisions.md, issue 14). A fixed
window on a whole CT gives the network another contrast (about 17 % less here, 2x for a crop without
bone), so the card's ``{"kind": "slice_minmax", "lower": L, "context": N}`` asks for this instead:
per axial slice, clip below at ``L`` (the scanner's padding outside the scan circle, -2048 here, is
not tissue), take the minimum and maximum inside an N x N box centred on the ROI's centre (at least the
ROI), and map that slice's values with them to [0, 1] (values outside the box may leave [0, 1]).
On a published crop (N = its size) this is exactly x / 255, what training gave the network.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def context_window(length: int, lo: int, hi: int, context: int) -> slice:
    """The [start, stop) of a box of ``max(context, hi - lo)`` voxels centred on [lo, hi) along an axis
    of ``length`` voxels, moved inside the axis (all of it when the axis is shorter)."""
    n = min(length, max(int(context), hi - lo))
    start = int(np.floor((lo + hi - n) / 2))
    start = min(max(0, start), length - n)
    return slice(start, start + n)


def slice_minmax(x: np.ndarray, lower: float | None, upper: float | None, context: int,
                 box: Sequence[slice] | None = None, slice_axis: int | None = 0,
                 region: Sequence[slice] | None = None) -> np.ndarray:
    """``x`` (2D, or 3D with slices along ``slice_axis``; array order; any real dtype) stretched per slice
    to [0, 1] by the minimum and maximum of its values clipped to [lower, upper] inside the context box
    (module docstring). ``box``: the ROI as array-order slices (None: the whole image), whose in-plane
    centre places the context box. ``region`` (array-order slices; None: all of ``x``): the part returned;
    only its slices' context boxes and its voxels are read, so a small ROI of a whole CT is cheap. A
    constant context gives 0 on its slice. float32, the shape of ``x[region]``."""
    x = np.asarray(x)
    full = tuple(slice(0, n) for n in x.shape)
    if x.ndim == 2:
        x3 = x[None]
    elif x.ndim == 3 and slice_axis in (0, 1, 2):
        x3 = np.moveaxis(x, slice_axis, 0)
    else:
        raise ValueError(f"slice_minmax takes a 2D image or a 3D volume with a slice axis (got {x.shape})")
    lo = -np.inf if lower is None else float(lower)
    hi = np.inf if upper is None else float(upper)
    box = [slice(*s.indices(n)[:2]) for s, n in zip(full if box is None else box, x.shape)]
    region = [slice(*s.indices(n)[:2]) for s, n in zip(full if region is None else region, x.shape)]
    if x.ndim == 2:
        plane, region3 = box, [slice(0, 1), *region]
    else:
        plane = [b for a, b in enumerate(box) if a != slice_axis]
        region3 = [region[slice_axis], *(r for a, r in enumerate(region) if a != slice_axis)]
    rows, cols = (context_window(n, b.start, b.stop, context) for n, b in zip(x3.shape[1:], plane))
    ctx = np.clip(x3[region3[0], rows, cols].astype(np.float32), lo, hi)  # the region's slices only
    vmin, vmax = ctx.min((1, 2)), ctx.max((1, 2))
    span = np.where(vmax > vmin, vmax - vmin, 1.0).astype(np.float32)
    out = (np.clip(x3[tuple(region3)].astype(np.float32), lo, hi) - vmin[:, None, None]) / span[:, None, None]
    out[vmax <= vmin] = 0.0
    out = out.astype(np.float32, copy=False)
    return out[0] if x.ndim == 2 else np.moveaxis(out, 0, slice_axis)
