"""Reading inputs and writing outputs with SimpleITK, on the input's own grid.

Why: users hand over NRRD/NIfTI files in any orientation and spacing, and the Slicer scene layer loads
the outputs on top of the input, so every output must carry the first input's exact size, spacing,
origin and direction (CopyInformation), and nothing may be resampled on the way in except what the
model needs (done in inference.py and undone there).

Arrays follow SimpleITK's order: a 3D image of size (i, j, k) is an array (k, j, i).
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from ..networks.checks import InputError

GRID_TOLERANCE = 1e-4  # relative, for spacing/origin/direction comparisons between inputs


@dataclass
class Geometry:
    """The grid of the first input: everything needed to write outputs on it."""

    size: tuple[int, ...]          # SimpleITK order (i, j, k)
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]   # row-major, dimension x dimension

    @property
    def dimension(self) -> int:
        return len(self.size)

    @property
    def array_shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.size))

    @property
    def array_spacing(self) -> tuple[float, ...]:
        """Spacing per array axis (k, j, i)."""
        return tuple(reversed(self.spacing))

    def _matrix(self) -> np.ndarray:
        """Index (i, j, k) to physical offset: direction @ diag(spacing), as ITK defines the grid."""
        d = np.asarray(self.direction, float).reshape(self.dimension, self.dimension)
        return d @ np.diag(np.asarray(self.spacing, float))

    def physical_to_continuous_index(self, point: Sequence[float]) -> np.ndarray:
        """ITK's TransformPhysicalPointToContinuousIndex, without SimpleITK (LPS mm -> fractional index)."""
        return np.linalg.solve(self._matrix(), np.asarray(point, float) - np.asarray(self.origin, float))

    def index_to_physical(self, index: Sequence[float]) -> np.ndarray:
        """ITK's TransformContinuousIndexToPhysicalPoint (index -> LPS mm)."""
        return np.asarray(self.origin, float) + self._matrix() @ np.asarray(index, float)

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Put ``image`` (same size) on this grid: spacing, origin and direction; returns it."""
        image.SetSpacing([float(v) for v in self.spacing])
        image.SetOrigin([float(v) for v in self.origin])
        image.SetDirection([float(v) for v in self.direction])
        return image

    def as_dict(self) -> dict[str, Any]:
        return {"size": list(self.size), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": list(self.direction)}


@dataclass
class InputVolumes:
    """Channels (C, *array_shape) as read (before preprocessing; one integer file keeps its type, e.g. a CT's
    int16, several channels are float32), their grid and file names."""

    channels: np.ndarray
    geometry: Geometry
    paths: list[str]


def _read_one(path: str | os.PathLike) -> sitk.Image:
    p = Path(path)
    if not p.exists():
        raise InputError(f"input {p} does not exist")
    if not p.is_file():
        raise InputError(f"input {p} is not a file")
    try:
        return sitk.ReadImage(str(p))
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = first[-1] if first else "unknown error"
        raise InputError(f"cannot read {p} as an image (NRRD, NIfTI, MHA, ...): {detail}") from None


def _same_grid(a: sitk.Image, b: sitk.Image) -> str | None:
    """None if the two images share their grid, else what differs."""
    if a.GetDimension() != b.GetDimension():
        return f"dimension {a.GetDimension()} vs {b.GetDimension()}"
    if a.GetSize() != b.GetSize():
        return f"size {a.GetSize()} vs {b.GetSize()}"
    scale = max(1.0, max(abs(s) for s in a.GetSpacing()))
    for name in ("Spacing", "Origin", "Direction"):
        u, v = np.array(getattr(a, "Get" + name)()), np.array(getattr(b, "Get" + name)())
        tol = GRID_TOLERANCE * (scale * 10 if name == "Origin" else 1)
        if not np.allclose(u, v, rtol=GRID_TOLERANCE, atol=tol):
            return f"{name.lower()} {tuple(np.round(u, 4))} vs {tuple(np.round(v, 4))}"
    return None


def read_inputs(paths: Sequence[str | os.PathLike]) -> InputVolumes:
    """Read the input files as channels on one grid. Multi-component files (e.g. a 4-channel NRRD)
    contribute one channel per component. NaN/inf voxels and mismatched grids are InputErrors."""
    if not paths:
        raise InputError("no input file given")
    images = [_read_one(p) for p in paths]
    ref = images[0]
    if ref.GetDimension() not in (2, 3):
        raise InputError(f"{paths[0]} is a {ref.GetDimension()}D image; diffseg reads 2D and 3D images")
    channels: list[np.ndarray] = []
    for path, img in zip(paths, images):
        diff = _same_grid(ref, img)
        if diff is not None:
            raise InputError(f"{path} is not on the grid of {paths[0]} ({diff}); resample it onto the "
                             "first input first (all inputs must share size, spacing, origin, direction)")
        arr = sitk.GetArrayFromImage(img)
        if img.GetNumberOfComponentsPerPixel() > 1:
            parts = [arr[..., c] for c in range(arr.shape[-1])]
        else:
            parts = [arr]
        for part in parts:
            if not np.issubdtype(part.dtype, np.integer):  # integers (a CT's int16) are finite as read
                part = np.asarray(part, dtype=np.float32)
                bad = ~np.isfinite(part)
                if bad.any():
                    raise InputError(f"{path} has {int(bad.sum())} NaN or infinite voxel(s)")
            channels.append(part)
    geometry = Geometry(size=tuple(ref.GetSize()), spacing=tuple(ref.GetSpacing()),
                        origin=tuple(ref.GetOrigin()), direction=tuple(ref.GetDirection()))
    # one channel stays as read (no copy: a whole CT is 512 x 512 x N); several share float32
    stacked = (channels[0][None] if len(channels) == 1
               else np.stack([c.astype(np.float32, copy=False) for c in channels]))
    return InputVolumes(stacked, geometry, [str(p) for p in paths])


# -- preprocessing ---------------------------------------------------------------------------------

PREPROCESSING_FIELDS = {"none": set(), "window": {"lower", "upper"}, "zscore": {"nonzero"},
                        "scale": {"scale", "offset"}, "minmax": {"lower", "upper"},
                        "slice_minmax": {"lower", "upper", "context"}}

#: A clip bound at or below this (HU) marks a CT preprocessing: air (-1000 HU) and lung (about -850 HU)
#: lie below it, so the spec only makes sense for an image in Hounsfield units.
HU_SPEC_BELOW = -500.0


def uint8_window_to_hu(values: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """8-bit intensities of a window [lower, upper] (HU) back to HU: ``lower + v / 255 * (upper - lower)``
    (float32). The inverse of ``hu_to_uint8_window`` up to its rounding; how an 8-bit CT crop (the
    LIDC npz) is written as a CT in HU, e.g. ``uint8_window_to_hu(x8, *lidc.CT_WINDOW_HU)``."""
    lo, hi = float(lower), float(upper)
    if not hi > lo:
        raise ValueError(f"a window needs upper > lower (got {lo}, {hi})")
    v = np.asarray(values, dtype=np.float64)
    return (lo + v / 255.0 * (hi - lo)).astype(np.float32)


def hu_to_uint8_window(hu: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """HU clipped to the window [lower, upper] and mapped to 0..255, rounded (uint8): how an 8-bit CT
    export with that window is made."""
    lo, hi = float(lower), float(upper)
    if not hi > lo:
        raise ValueError(f"a window needs upper > lower (got {lo}, {hi})")
    t = (np.clip(np.asarray(hu, dtype=np.float64), lo, hi) - lo) / (hi - lo)
    return np.rint(t * 255.0).astype(np.uint8)


def _check_hu(x: np.ndarray, kind: str, lower: float) -> None:
    """A CT spec (a clip bound at or below HU_SPEC_BELOW) given an image that is not in HU: an
    InputError saying how to convert. ``window`` needs HU (an image with nothing below 0 is not one);
    ``minmax`` also takes a linearly rescaled image inside 0..255 (an 8-bit export), since it
    stretches the image's own range, but not values above 255 with nothing below 0 (stored scanner
    values without the DICOM rescale)."""
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or (kind == "minmax" and hi <= 255):
        return
    raise InputError(
        f"the model expects CT in Hounsfield units (air about -1000 HU, lung about -850 HU; its card clips "
        f"at {lower:g} HU) but the image's values run from {lo:g} to {hi:g}, none below 0: it is not in HU. "
        "Convert it first: stored scanner values to HU with the DICOM rescale (HU = RescaleSlope * value "
        "+ RescaleIntercept, the intercept usually -1024; Slicer's DICOM import does this); an 8-bit "
        "image windowed with [L, U] HU with HU = L + value / 255 * (U - L) "
        "(DiffSegUncertaintyLib.engine.files.volumes.uint8_window_to_hu)")


def preprocess(channels: np.ndarray, spec: dict[str, Any] | list[dict[str, Any]] | None,
               mask: np.ndarray | None = None, box: Sequence[slice] | None = None,
               slice_axis: int | None = 0, region: Sequence[slice] | None = None) -> np.ndarray:
    """Intensity preprocessing from the card's ``input.preprocessing``: one spec for every channel or a
    list with one per channel. Statistics are taken inside ``mask`` (e.g. the ROI) when given, so a
    crop is normalised the way the whole volume would be only if the caller passes the whole volume.
    ``region`` (array-order slices; None: everything): the voxels the caller will read. Only they are
    computed (0 outside it), with the same statistics as without it: a whole CT costs its ROI, not its
    512 x 512 x N voxels (a run's plan preprocesses its ROI only). ``channels`` may be of any real dtype.

    {"kind": "window", "lower": L, "upper": U}: clip to [L, U], map to [0, 1] (CT windows).
    {"kind": "minmax", "lower": L, "upper": U}: clip to [L, U] (each bound optional), then stretch the
        image's own minimum and maximum to [0, 1] (inside ``mask`` when given; a constant image gives 0).
        A whole CT spans [L, U], so this is the window; a crop is stretched on its own, as the LIDC
        publisher stretched each 8-bit crop (docs/cli.md, "CT intensities (HU)").
    {"kind": "slice_minmax", "lower": L, "upper": U, "context": N}: per slice (along ``slice_axis`` of
        a 3D image), clip to [L, U] (each optional) and stretch by the slice's minimum and maximum inside
        an N x N box centred on ``box`` (the ROI, array-order slices; None: the image): the LIDC
        publisher's per-crop stretch reproduced on a whole CT (engine/files/slicestretch.py).
    A bound at or below -500 marks a CT spec: an image with nothing below 0 is refused for ``window``,
    and for ``minmax`` when it also goes above 255 (``_check_hu``).
    {"kind": "zscore", "nonzero": bool}: (x - mean) / std per channel; nonzero: statistics over
        non-zero voxels only and zero voxels stay zero (skull-stripped MRI).
    {"kind": "scale", "scale": a, "offset": b}: a * x + b.
    {"kind": "none"} or None: unchanged.
    """
    specs = spec if isinstance(spec, list) else [spec] * len(channels)
    if len(specs) != len(channels):
        raise InputError(f"the card gives {len(specs)} preprocessing entries for {len(channels)} channels")
    region = tuple(slice(None) for _ in channels.shape[1:]) if region is None else tuple(region)
    out = np.zeros(channels.shape, dtype=np.float32)
    for c, (x, s) in enumerate(zip(channels, specs)):
        kind = (s or {}).get("kind", "none")
        unknown = set(s or {}) - {"kind"} - PREPROCESSING_FIELDS.get(kind, set())
        if unknown:  # a misspelt field would otherwise silently fall back to a default
            raise InputError(f"preprocessing {kind!r} in the model card has unknown field(s) "
                             f"{', '.join(sorted(unknown))}")
        xr = x[region].astype(np.float32, copy=False)  # the values computed
        if kind == "none":
            out[c][region] = xr
        elif kind == "window":
            lo, hi = float(s["lower"]), float(s["upper"])
            if not hi > lo:
                raise InputError(f"preprocessing window needs upper > lower (got {lo}, {hi})")
            if lo <= HU_SPEC_BELOW:
                _check_hu(x, kind, lo)
            out[c][region] = (np.clip(xr, lo, hi) - lo) / (hi - lo)
        elif kind == "minmax":
            lo = float(s["lower"]) if s.get("lower") is not None else -np.inf
            hi = float(s["upper"]) if s.get("upper") is not None else np.inf
            if not hi > lo:
                raise InputError(f"preprocessing minmax needs upper > lower (got {lo}, {hi})")
            if lo <= HU_SPEC_BELOW:
                _check_hu(x, kind, lo)
            vals = x[mask] if mask is not None else x
            # the clipped image's extremes are the clipped extremes (clipping is monotone)
            vmin = float(np.clip(np.float32(vals.min()), lo, hi)) if vals.size else 0.0
            vmax = float(np.clip(np.float32(vals.max()), lo, hi)) if vals.size else 0.0
            out[c][region] = (np.clip(xr, lo, hi) - vmin) / (vmax - vmin) if vmax > vmin else 0.0
        elif kind == "slice_minmax":
            from .slicestretch import slice_minmax
            lo = float(s["lower"]) if s.get("lower") is not None else None
            hi = float(s["upper"]) if s.get("upper") is not None else None
            if lo is not None and hi is not None and not hi > lo:
                raise InputError(f"preprocessing slice_minmax needs upper > lower (got {lo}, {hi})")
            if int(s.get("context", 0)) < 1:
                raise InputError("preprocessing slice_minmax needs context, the training crop's size in voxels")
            if lo is not None and lo <= HU_SPEC_BELOW:
                _check_hu(x, "minmax", lo)
            out[c][region] = slice_minmax(x, lo, hi, int(s["context"]), box, slice_axis, region)
        elif kind == "zscore":
            nonzero = bool(s.get("nonzero", False))
            sel = x != 0 if nonzero else np.ones(x.shape, bool)
            if mask is not None:
                sel = sel & mask
            vals = x[sel].astype(np.float64)
            mean = float(vals.mean()) if vals.size else 0.0
            std = float(vals.std()) if vals.size else 1.0
            std = std if std > 1e-8 else 1.0
            z = (xr - mean) / std
            out[c][region] = np.where(xr != 0, z, 0) if nonzero else z
        elif kind == "scale":
            out[c][region] = xr * float(s.get("scale", 1.0)) + float(s.get("offset", 0.0))
        else:
            raise InputError(f"unknown preprocessing kind {kind!r} in the model card "
                             "(expected window, minmax, slice_minmax, zscore, scale or none)")
    return out


# -- canonical orientation for slice-wise models ------------------------------------------------

@dataclass(frozen=True)
class Canonical:
    """How to turn an array (k, j, i) into LPS-ordered axes (S, P, L) and back: a permutation and flips
    only, so the round trip is exact (no resampling). ``perm[a]`` is the input array axis that becomes
    canonical axis a; ``flip[a]`` flips canonical axis a afterwards."""

    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]

    def forward(self, arr: np.ndarray) -> np.ndarray:
        """(..., k, j, i) -> (..., S, P, L)."""
        lead = arr.ndim - 3
        out = np.transpose(arr, tuple(range(lead)) + tuple(lead + p for p in self.perm))
        axes = tuple(lead + a for a in range(3) if self.flip[a])
        return np.flip(out, axes) if axes else out

    def backward(self, arr: np.ndarray) -> np.ndarray:
        """(..., S, P, L) -> (..., k, j, i); exact inverse of forward."""
        lead = arr.ndim - 3
        axes = tuple(lead + a for a in range(3) if self.flip[a])
        arr = np.flip(arr, axes) if axes else arr
        inv = np.argsort(self.perm)
        return np.transpose(arr, tuple(range(lead)) + tuple(lead + int(p) for p in inv))


def canonical_orientation(direction: Sequence[float], size: Sequence[int] | None = None) -> Canonical:
    """The axis permutation/flips that put a 3D array in (S, P, L) order: axial slices along axis 0,
    rows running anterior->posterior, columns right->left (radiological display, as DICOM LPS).

    Each index axis is matched to the physical axis it is closest to (best of the 6 assignments, so
    oblique volumes work too). A volume with exactly one voxel along some axis is a single slice in
    its own plane: that axis becomes axis 0 whatever its direction.
    """
    d = np.asarray(direction, dtype=float).reshape(3, 3)  # column c = physical direction of index c
    best, best_score = None, -1.0
    # physical axis p (0 = L/x, 1 = P/y, 2 = S/z) per index axis c
    for phys in itertools.permutations(range(3)):
        score = sum(abs(d[phys[c], c]) for c in range(3))
        if score > best_score + 1e-9:
            best, best_score = phys, score
    assert best is not None
    signs = [d[best[c], c] >= 0 for c in range(3)]
    # canonical axis a holds physical axis (2, 1, 0)[a]; array axis of index axis c is 2 - c
    order = [2, 1, 0]
    index_of_phys = {best[c]: c for c in range(3)}
    perm = [2 - index_of_phys[order[a]] for a in range(3)]
    flip = [not signs[index_of_phys[order[a]]] for a in range(3)]
    if size is not None:
        flat = [c for c in range(3) if size[c] == 1]
        if len(flat) == 1 and perm[0] != 2 - flat[0]:
            # single slice: its thin axis goes first, the other two keep their canonical order
            thin = 2 - flat[0]
            rest = [a for a in range(3) if perm[a] != thin]
            perm = [thin] + [perm[a] for a in rest]
            flip = [False] + [flip[a] for a in rest]
    return Canonical(tuple(perm), tuple(flip))  # type: ignore[arg-type]


# -- writing ---------------------------------------------------------------------------------------

def write_volume(array: np.ndarray, geometry: Geometry, path: str | os.PathLike,
                 compress: bool = True) -> None:
    """Write an array (array order) onto the reference grid."""
    array = np.asarray(array)
    if array.shape != geometry.array_shape:
        raise ValueError(f"array of shape {array.shape} for a grid of shape {geometry.array_shape}")
    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    geometry.apply_to(img)
    sitk.WriteImage(img, str(path), compress)


PALETTE = [(0.90, 0.10, 0.10), (0.12, 0.47, 0.71), (0.17, 0.63, 0.17), (1.00, 0.50, 0.05),
           (0.58, 0.40, 0.74), (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.50, 0.50, 0.50),
           (0.74, 0.74, 0.13), (0.09, 0.75, 0.81)]


@dataclass
class Segment:
    """One layer of a .seg.nrrd: a binary mask and how Slicer should show it."""

    id: str
    name: str
    mask: np.ndarray  # bool/uint8, array order (k, j, i)
    color: tuple[float, float, float]
    tags: dict[str, str] = field(default_factory=dict)


def physical_box_to_index(geometry: Geometry, lower: Sequence[float], upper: Sequence[float]
                          ) -> tuple[list[int], list[int]]:
    """The index box [start, stop) of the voxels whose centres lie in a physical (LPS mm) box (the
    box's 8 corners mapped to continuous indices; any orientation), clipped to the image."""
    corners = itertools.product(*[(min(lo, hi), max(lo, hi)) for lo, hi in zip(lower, upper)])
    idx = np.array([geometry.physical_to_continuous_index([float(c) for c in p]) for p in corners])
    start = [max(0, int(math.ceil(v - 1e-6))) for v in idx.min(0)]
    stop = [min(n, int(math.floor(v + 1e-6)) + 1) for v, n in zip(idx.max(0), geometry.size)]
    return start, stop
