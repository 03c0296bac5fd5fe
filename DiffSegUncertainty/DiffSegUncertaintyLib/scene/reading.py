"""Reading a finished run in the module's panel: summary, model description, hypothesis browser, consensus
threshold, uncertainty overlay, 3D, the most-disagreeing slices and the ROI helper. No Qt.

Why here and not in the module: every one of these changes MRML nodes (segment visibility, a segment's
labelmap, slice composite and volume display nodes, an ROI), and this layer runs on slicer-core's real
MRML in CI, so each behaviour is tested on real nodes; the module only forwards slider values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import vtk
from slicer import (
    vtkMRMLScene,
    vtkMRMLSliceNode,
    vtkMRMLTransformNode,
    vtkOrientedImageData,
    vtkOrientedImageDataResample,
    vtkSlicerSegmentationsModuleLogic,
)
from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

from .inputs import InputProblem
from .results import MAPS, RunNodes, ijk_to_ras

MAP_LABELS = {"entropy": "Entropy", "mutual_information": "Mutual information", "variance": "Variance",
              "mean_probability": "Mean probability"}
DEFAULT_OPACITY = 0.6
# below this fraction of a map's display range a voxel is transparent, so the anatomy under certain
# voxels (entropy ~ 0) is not darkened by the colour table's black end
DEFAULT_LOWER_FRACTION = 0.1


# -- text ------------------------------------------------------------------------------------------
def _stats(values: list[float]) -> tuple[float, float, float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std()), float(a.min()), float(a.max())


def summary_text(run: RunNodes, seconds: float | None = None) -> str:
    """What a reader needs first: how much the hypotheses' volumes disagree, and how they were made."""
    s = run.summary or {}
    rows = s.get("hypotheses") or []
    lines = []
    mm3 = [float(r["foreground_mm3"]) for r in rows if "foreground_mm3" in r]
    if mm3:
        mean, sd, lo, hi = _stats(mm3)
        lines.append(f"Volume over {len(mm3)} hypotheses: {mean:.1f} \u00b1 {sd:.1f} mm\u00b3 "
                     f"({mean / 1000:.3f} \u00b1 {sd / 1000:.3f} ml), range {lo:.1f}-{hi:.1f} mm\u00b3 "
                     f"({lo / 1000:.3f}-{hi / 1000:.3f} ml).")
        empty = sum(1 for v in mm3 if v == 0)
        if empty:
            lines.append(f"{empty} of {len(mm3)} hypotheses found nothing.")
    model = (s.get("model") or {}).get("name", "?")
    sampler = s.get("sampler") or {}
    how = [f"Model {model}", f"{sampler.get('method', '').upper()} {s.get('steps', '?')} steps".strip()]
    if sampler.get("method") == "ddim" and sampler.get("eta") is not None:
        how.append(f"eta {float(sampler['eta']):g}")
    how += [f"seed {s.get('seed', '?')}", f"device {s.get('device', '?')}"]
    if s.get("precision") and s.get("precision") != "fp32":
        how.append(str(s["precision"]))
    if seconds is not None:
        how.append(f"{seconds:.0f} s")
    lines.append(", ".join(how) + ".")
    return "\n".join(lines)


METRIC_WORDS = (("ged", "GED (generalised energy distance; lower is better)", "{:.3f}"),
                ("hm_iou", "HM-IoU (how well the hypotheses match the readers' masks; higher is better)",
                 "{:.3f}"),
                ("dice", "Dice of the consensus against each reader (higher is better)", "{:.3f}"))
METHODS = {"pgrd": "PGRD (Prior-Guided Residual Diffusion)",
           "hsrdiff": "HSRDiff (Hierarchical Self-Regulation Diffusion)"}


def describe_model(card: dict[str, Any]) -> str:
    """The card in sentences: method, input, training data and split, validation numbers, intended use."""
    arch, spec = card.get("architecture", {}), card.get("input", {})
    channels = ", ".join(c.get("name", "?") for c in spec.get("channels", [])) or "?"
    classes = ", ".join(card.get("classes", [])[1:]) or "foreground"
    size = " x ".join(str(v) for v in spec.get("size", [])) or "any size"
    out = [f"{METHODS.get(str(card.get('method')), str(card.get('method', '?')).upper())}, "
           f"{arch.get('spatial_dims', '?')}D, segments {classes} in {channels} "
           f"(model input {size} voxels{', inside an ROI you place' if spec.get('roi_required') else ''})."]
    sampling = card.get("sampling") or {}
    if sampling.get("steps"):
        out.append(f"Default: {str(sampling.get('method', '')).upper()} with {sampling['steps']} steps.")
    data = (card.get("training") or {}).get("data")
    if isinstance(data, dict):
        parts = [f"Trained on {str(data.get('dataset', '?')).upper()}"]
        if data.get("train_items"):
            parts.append(f"{data['train_items']} training images (split '{data.get('train_split', 'train')}')")
        if data.get("val_items"):
            parts.append(f"{data['val_items']} validation images (split '{data.get('val_split', 'val')}')")
        out.append(", ".join(parts) + ".")
    elif data:
        out.append(f"Trained on {data}.")
    metrics = card.get("metrics") or {}
    values, std = metrics.get("values") or {}, metrics.get("std") or {}
    said = []
    for key, words, fmt in METRIC_WORDS:
        if isinstance(values.get(key), (int, float)):
            text = f"{words}: {fmt.format(values[key])}"
            if isinstance(std.get(key), (int, float)):
                text += f" (SD {fmt.format(std[key])})"
            said.append(text)
    if said:
        where = f"on {metrics.get('images', '?')} {metrics.get('split', 'validation')} images, " \
                f"{metrics.get('samples', '?')} hypotheses each"
        out.append(f"Measured {where}: " + "; ".join(said) + ".")
    else:
        out.append("The card reports no validation numbers.")
    note = card.get("note") or card.get("intended_use")
    out.append(str(note) if note else "For research: outputs are not meant for diagnosis on their own.")
    return "\n".join(out)


# -- hypotheses and consensus ----------------------------------------------------------------------
def show_hypothesis(run: RunNodes, index: int | None, consensus: bool = True) -> None:
    """index 1..N: only that hypothesis; 0 or None: every hypothesis as an outline ("all outlines")."""
    display = run.segmentation.GetDisplayNode()
    n = len(run.hypothesis_segment_ids)
    if index is not None and not 0 <= index <= n:
        raise ValueError(f"hypothesis {index} of {n}")
    for k, segment_id in enumerate(run.hypothesis_segment_ids, start=1):
        visible = not index or k == index
        display.SetSegmentVisibility(segment_id, visible)
        display.SetSegmentVisibility2DFill(segment_id, bool(index))  # all at once: outlines only
        display.SetSegmentVisibility2DOutline(segment_id, True)
    for segment_id in run.consensus_segment_ids:
        display.SetSegmentVisibility(segment_id, consensus)


def _matrix(image) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _segment_mask(run: RunNodes, segment_id: str, geometry: vtkOrientedImageData) -> np.ndarray:
    """A segment's voxels (bool, k, j, i) on the input grid. Segments loaded from the run share that
    grid, so the labelmap's extent is copied into place; only another grid is resampled."""
    mask = vtkOrientedImageData()
    run.segmentation.GetBinaryLabelmapRepresentation(segment_id, mask)
    label = run.segmentation.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    dims = geometry.GetDimensions()
    out = np.zeros(tuple(reversed(dims)), bool)
    e = mask.GetExtent()
    if e[1] < e[0] or e[3] < e[2] or e[5] < e[4]:
        return out  # empty segment
    if np.allclose(_matrix(mask), _matrix(geometry), atol=1e-6) and min(e[0], e[2], e[4]) >= 0 \
            and e[1] < dims[0] and e[3] < dims[1] and e[5] < dims[2]:
        i, j, k = mask.GetDimensions()
        part = vtk_to_numpy(mask.GetPointData().GetScalars()).reshape(k, j, i)
        out[e[4]:e[5] + 1, e[2]:e[3] + 1, e[0]:e[1] + 1] = part == label
        return out
    on_grid = vtkOrientedImageData()
    vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(mask, geometry, on_grid, False)
    return vtk_to_numpy(on_grid.GetPointData().GetScalars()).reshape(out.shape) == label


def hypothesis_count(run: RunNodes) -> np.ndarray:
    """Per voxel of the input grid, how many hypotheses hold foreground (uint8 or uint16, k, j, i)."""
    geometry = vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(run.maps["entropy"])
    count = np.zeros(tuple(reversed(geometry.GetDimensions())),
                     np.uint8 if len(run.hypothesis_segment_ids) < 256 else np.uint16)
    for segment_id in run.hypothesis_segment_ids:
        count += _segment_mask(run, segment_id, geometry)
    return count


def consensus_mask(run: RunNodes) -> np.ndarray:
    """The consensus segment's voxels on the input grid (k, j, i), e.g. to restore the sampler's own."""
    if len(run.consensus_segment_ids) != 1:
        raise ValueError("the agreement threshold applies to models with one foreground class")
    geometry = vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(run.maps["entropy"])
    return _segment_mask(run, run.consensus_segment_ids[0], geometry).astype(np.uint8)


def write_consensus(run: RunNodes, mask: np.ndarray, tag: str) -> int:
    """Replace the consensus segment's voxels by ``mask`` (k, j, i on the input grid); returns its size."""
    if len(run.consensus_segment_ids) != 1:
        raise ValueError("the agreement threshold applies to models with one foreground class")
    geometry = vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(run.maps["entropy"])
    image = vtkOrientedImageData()
    image.SetDimensions(geometry.GetDimensions())
    image.CopyDirections(geometry)
    image.SetOrigin(geometry.GetOrigin())
    image.SetSpacing(geometry.GetSpacing())
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    image.GetPointData().SetScalars(numpy_to_vtk(mask.ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
    segment_id = run.consensus_segment_ids[0]
    if not vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            image, run.segmentation, segment_id, vtkSlicerSegmentationsModuleLogic.MODE_REPLACE, None, True):
        raise RuntimeError(f"cannot update the segment {segment_id!r}")
    run.segmentation.GetSegmentation().GetSegment(segment_id).SetTag(CONSENSUS_TAG, tag)
    return int(mask.sum())


CONSENSUS_TAG = "DiffSeg.Consensus"  # segment tag: "sampler" or "k/N"


def set_consensus_threshold(run: RunNodes, k: int, count: np.ndarray | None = None) -> int:
    """Make the consensus segment the voxels where at least k of the N hypotheses agree; returns its size
    in voxels. k = N is the intersection, k = 1 the union. (The sampler's own consensus is the argmax of
    the mean probability, a different rule: keep ``consensus_mask(run)`` to restore it.)"""
    n = len(run.hypothesis_segment_ids)
    if not 1 <= k <= n:
        raise ValueError(f"at least k of {n} hypotheses: k must be 1..{n}, not {k}")
    count = hypothesis_count(run) if count is None else count
    return write_consensus(run, count >= k, f"{k}/{n}")


# -- the overlay -----------------------------------------------------------------------------------
def map_range(role: str, classes: int = 2) -> float:
    """The fixed top of a map's colour scale (the same across runs and cases): ln C for entropy and
    mutual information (their maximum, paper metrics note), 0.25 for a Bernoulli variance, 1 for p."""
    for r, _, _, top in MAPS:
        if r == role:
            return math.log(max(classes, 2)) if top is None else top
    raise ValueError(f"unknown map {role!r}")


def show_map(scene: vtkMRMLScene, run: RunNodes, background, role: str | None,
             opacity: float = DEFAULT_OPACITY, lower: float | None = None, classes: int = 2) -> None:
    """Background = the sampled volume, foreground = one map (None: no overlay) in every slice view.

    The map's voxels below ``lower`` (default: a tenth of its range) are transparent (display-node
    threshold), so certain tissue shows the image unchanged and the colour marks only the doubt."""
    node = run.maps[role] if role else None
    if node is not None:
        display = node.GetDisplayNode()
        top = map_range(role, classes)
        display.SetApplyThreshold(True)
        display.SetThreshold(DEFAULT_LOWER_FRACTION * top if lower is None else lower, 1e30)
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for i in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(i)
        composite.SetBackgroundVolumeID(background.GetID() if background is not None else None)
        composite.SetForegroundVolumeID(node.GetID() if node is not None else None)
        composite.SetForegroundOpacity(opacity)


def set_show_3d(run: RunNodes, on: bool) -> None:
    """Consensus as an opaque surface and the hypotheses as faint surfaces around it (the spread)."""
    display = run.segmentation.GetDisplayNode()
    if on:
        run.segmentation.CreateClosedSurfaceRepresentation()
    display.SetVisibility3D(on)
    for segment_id in run.hypothesis_segment_ids:
        display.SetSegmentOpacity3D(segment_id, 0.15)
    for segment_id in run.consensus_segment_ids:
        display.SetSegmentOpacity3D(segment_id, 1.0)


# -- where they disagree ---------------------------------------------------------------------------
@dataclass(frozen=True)
class DoubtfulSlice:
    index: int                      # K index of the map's grid
    score: float                    # summed map value on the slice
    ras: tuple[float, float, float]  # map-weighted centre of the slice, world RAS


def _to_world(node, points: np.ndarray) -> np.ndarray:
    parent = node.GetParentTransformNode()
    if parent is None:
        return points
    to_world = vtk.vtkGeneralTransform()
    vtkMRMLTransformNode.GetTransformBetweenNodes(parent, None, to_world)
    return np.array([to_world.TransformPoint(*p) for p in points])


def doubtful_slices(run: RunNodes, role: str = "entropy") -> list[DoubtfulSlice]:
    """Slices of the map's K axis with any doubt, most doubtful first (summed map value per slice)."""
    node = run.maps[role]
    image = node.GetImageData()
    i, j, k = image.GetDimensions()
    values = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(k, j, i).astype(float)
    scores = values.sum(axis=(1, 2))
    order = [int(s) for s in np.argsort(-scores, kind="stable") if scores[s] > 0]
    matrix = ijk_to_ras(node)
    jj, ii = np.mgrid[0:j, 0:i]
    out = []
    for s in order:
        w = values[s]
        ci, cj = float((w * ii).sum() / w.sum()), float((w * jj).sum() / w.sum())
        ras = (matrix @ np.array([ci, cj, s, 1.0]))[:3]
        out.append(DoubtfulSlice(s, float(scores[s]), tuple(_to_world(node, ras[None])[0])))
    return out


def jump_to(scene: vtkMRMLScene, ras) -> None:
    """Centre every slice view on a point (Slicer's own jump, as a click in the data probe does)."""
    vtkMRMLSliceNode.JumpAllSlices(scene, float(ras[0]), float(ras[1]), float(ras[2]),
                                   vtkMRMLSliceNode.CenteredJumpSlice)


# -- the ROI helper --------------------------------------------------------------------------------
def model_box_mm(card: dict[str, Any], volume) -> tuple[float, float, float]:
    """The model's input size in mm (R, A, S extents) on this volume: the card's voxel size times the
    volume's spacing (card ``input.spacing_mm`` wins when a card has it). A 2D model's box is as deep as
    its shorter side, so it covers the structure on several slices."""
    spec = card.get("input", {})
    size = [int(v) for v in spec.get("size", [])]
    if not size:
        raise InputProblem(f"The model '{card.get('name', '?')}' does not say its input size.")
    spacing = spec.get("spacing_mm") or list(reversed(volume.GetSpacing()))  # (k, j, i) order as size
    if len(size) == 2:
        in_plane = [size[0] * float(spacing[-2]), size[1] * float(spacing[-1])]
        return in_plane[1], in_plane[0], min(in_plane)
    return size[2] * float(spacing[-1]), size[1] * float(spacing[-2]), size[0] * float(spacing[-3])


POINT_ATTRIBUTE = "DiffSeg.PointRAS"  # on an ROI the helper placed: the clicked point


def place_model_roi(scene: vtkMRMLScene, card: dict[str, Any], volume, center_ras, roi=None):
    """An ROI of the model's input size centred on a point (a new node unless ``roi`` is given)."""
    if roi is None:
        roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", f"{card.get('name', 'model')} ROI")
    roi.SetCenter(*[float(c) for c in center_ras])
    roi.SetSize(*model_box_mm(card, volume))
    roi.SetAttribute(POINT_ATTRIBUTE, ",".join(repr(float(c)) for c in center_ras))
    return roi


def placed_point(roi) -> tuple[float, float, float] | None:
    """The click the ROI helper placed ``roi`` on, while the ROI is still centred there (a user who
    moved or redrew it asked for that box instead); None otherwise. A run with the point lets the
    sampler grow the slice range from it (``diffseg sample --point-mm``)."""
    if roi is None or not roi.GetAttribute(POINT_ATTRIBUTE):
        return None
    point = tuple(float(v) for v in roi.GetAttribute(POINT_ATTRIBUTE).split(","))
    centre = [0.0, 0.0, 0.0]
    roi.GetCenter(centre)
    return point if max(abs(a - b) for a, b in zip(point, centre)) < 1e-3 else None
