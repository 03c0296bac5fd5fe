"""A point prompt: the model's input box around a point, and the slice range grown from it.

Why: a crop model (card ``input.roi_required``) was trained on boxes of its input size around a lesion
(the LIDC 64x64 centre of each published 128x128 crop, in the CT's own pixels). A user who clicks
inside a lesion should not have to draw that box nor guess how many slices the lesion spans: the box
is the card's in-plane size centred on the point, and a 2D model samples the point's slice, then the
next slices up and down, one at a time, while its hypotheses still find the lesion. Growth in a
direction stops at the first slice whose consensus is empty and on which most hypotheses are empty
(``finds_lesion``); that slice is kept in the output (its hypotheses were drawn) but not counted as
lesion. A 3D model gets the card's whole input box (depth too) centred on the point, no growth.

Index order is SimpleITK's (i, j, k); the slice axis is the one that is axial after
``volumes.canonical_orientation`` (k for an axial CT).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .networks.checks import InputError
from .files.volumes import Geometry, canonical_orientation


def point_index(geometry: Geometry, point: Sequence[float], mm: bool) -> list[int]:
    """The voxel index (i, j, k) of a point given as an index or in LPS mm (nearest voxel centre);
    a point outside the image is an InputError."""
    if len(point) != geometry.dimension:
        raise InputError(f"needs {geometry.dimension} numbers for a {geometry.dimension}D image, got {len(point)}")
    if mm:
        cont = geometry.physical_to_continuous_index([float(v) for v in point])
        idx = [int(math.floor(v + 0.5)) for v in cont]
    else:
        idx = [int(v) for v in point]
    if any(not 0 <= v < n for v, n in zip(idx, geometry.size)):
        what = f"{tuple(point)} mm (index {tuple(idx)})" if mm else str(tuple(idx))
        raise InputError(f"{what} is outside the image of size {list(geometry.size)}")
    return idx


def slice_index_axis(geometry: Geometry) -> int | None:
    """The index axis (0 = i, 1 = j, 2 = k) along which a 2D model's slices run; None for a 2D image."""
    if geometry.dimension == 2:
        return None
    return 2 - canonical_orientation(geometry.direction).perm[0]


def box_around_point(geometry: Geometry, index: Sequence[int], size: Sequence[int],
                     spatial_dims: int) -> tuple[list[int], list[int]]:
    """[start, stop) in index order of the model's input box centred on ``index``: ``size`` is the
    card's ``input.size`` in canonical order ((rows, cols) of a 2D model, (depth, rows, cols) of a 3D
    one). A 2D model's box is one slice thick. Moved inside the image where it sticks out; an image
    smaller than the box gives all of it along that axis."""
    n = list(geometry.size)
    if geometry.dimension == 2:
        lengths = [int(size[-1]), int(size[-2])]  # (i, j) = (cols, rows)
    else:
        perm = canonical_orientation(geometry.direction).perm
        canon = [int(size[0]) if spatial_dims == 3 else 1, int(size[-2]), int(size[-1])]
        lengths = [0, 0, 0]
        for a in range(3):
            lengths[2 - perm[a]] = canon[a]
    start, stop = [], []
    for c, (v, length, total) in enumerate(zip(index, lengths, n)):
        length = min(length, total)
        s = min(max(0, int(v) - length // 2), total - length)
        start.append(s)
        stop.append(s + length)
    return start, stop


def finds_lesion(labels: np.ndarray | torch.Tensor, consensus: np.ndarray | torch.Tensor,
                 min_voxels: int = 1) -> bool:
    """Whether one slice still shows the lesion: its consensus holds foreground, or at least half its
    hypotheses (labels (M, ...), 0 = background) hold ``min_voxels`` foreground voxels."""
    labels = torch.as_tensor(np.asarray(labels))
    found = (labels.reshape(labels.shape[0], -1) > 0).sum(1) >= min_voxels
    return bool((torch.as_tensor(np.asarray(consensus)) > 0).any()) or 2 * int(found.sum()) >= labels.shape[0]


@dataclass
class Growth:
    """The slices a point prompt sampled: ``first``..``last`` (inclusive, along the slice index axis),
    those of them where the lesion was found, and a line per slice for the log."""

    first: int
    last: int
    found: list[int]
    log: list[str] = field(default_factory=list)


def grow(draw: Callable[[int], tuple[Any, bool]], start: int, length: int,
         max_slices: int = 64) -> tuple[Growth, dict[int, Any]]:
    """Sample slice ``start`` with ``draw(k) -> (result, found)``, then one slice up and one down in
    turn; a direction stops at its first slice that is not ``found`` (kept) or at the image's end, and
    both at ``max_slices`` slices. The point's own slice is always kept; if it shows no lesion nothing
    grows (the caller says so)."""
    results: dict[int, Any] = {}
    found: list[int] = []
    log: list[str] = []

    def visit(k: int) -> bool:
        res, ok = draw(k)
        results[k] = res
        log.append(f"slice {k}: {'lesion' if ok else 'no lesion'}")
        if ok:
            found.append(k)
        return ok

    if visit(start):
        nxt = {1: start + 1, -1: start - 1}          # up and down in turn, so a cap is shared evenly
        while nxt and len(results) < max_slices:
            for direction in list(nxt):
                k = nxt[direction]
                if not 0 <= k < length or len(results) >= max_slices:
                    nxt.pop(direction)
                elif visit(k):
                    nxt[direction] = k + direction
                else:
                    nxt.pop(direction)
    return Growth(min(results), max(results), sorted(found), log), results


def sample_from_point(model: Any, card: dict[str, Any], image: np.ndarray, geometry: Geometry,
                      index: Sequence[int], num_samples: int, sampler_config: Any, seed: int,
                      max_slices: int = 64, on_slice: Callable[[str], None] | None = None,
                      **run_options: Any) -> tuple[Any, Growth | None]:
    """``inference.run_model`` from a point: a 2D model slice by slice as ``grow`` decides (each slice
    drawn with the same seed and hypothesis ids, so hypothesis k is one object across slices), a 3D
    model on the box around the point. Returns (an InferenceResult over the grown box, the Growth or
    None for a 3D model). ``run_options``: run_model's keyword options (batch_size, progress, ...);
    ``on_slice`` gets one line per slice drawn."""
    from .sampling.inference import InferenceResult, Roi, run_model
    from .analysis.uncertainty import summarize

    dims = int(card["architecture"]["spatial_dims"])
    start, stop = box_around_point(geometry, index, card["input"]["size"], dims)
    axis = slice_index_axis(geometry)
    if dims == 3 or axis is None:
        res = run_model(model, card, image, geometry, num_samples, sampler_config, seed,
                        roi=Roi(start, stop), **run_options)
        return res, None

    def draw(k: int) -> tuple[Any, bool]:
        lo, hi = list(start), list(stop)
        lo[axis], hi[axis] = k, k + 1
        res = run_model(model, card, image, geometry, num_samples, sampler_config, seed,
                        roi=Roi(lo, hi), **run_options)
        maps = summarize(res.y0, model.tau_out)
        ok = finds_lesion(maps.labels, maps.consensus)
        if on_slice is not None:
            n = int((maps.labels.reshape(num_samples, -1) > 0).any(1).sum())
            on_slice(f"slice {k}: {n}/{num_samples} hypotheses and the consensus "
                     f"{'find' if bool((maps.consensus > 0).any()) else 'do not find'} the lesion"
                     + ("" if ok else " -> stop"))
        return res, ok

    growth, results = grow(draw, int(index[axis]), int(geometry.size[axis]), max_slices)
    if not growth.found:
        raise InputError(f"no hypothesis finds a lesion on the point's slice {index[axis]}: put the point "
                         "inside the lesion (or give the box with --roi)")
    order = sorted(results)
    array_axis = 2 + (geometry.dimension - 1 - axis)  # (M, C, k, j, i): index axis a is array axis 2-a
    y0 = torch.cat([results[k].y0 for k in order], dim=array_axis)
    lo, hi = list(start), list(stop)
    lo[axis], hi[axis] = growth.first, growth.last + 1
    last = results[order[-1]]
    res = InferenceResult(y0=y0, roi=Roi(lo, hi), timesteps=last.timesteps,
                          units=sum(results[k].units for k in order),
                          skipped=sum(results[k].skipped for k in order), batch_size=last.batch_size,
                          extras={"growth": {"first": growth.first, "last": growth.last,
                                             "found": growth.found, "axis": axis}})
    return res, growth
