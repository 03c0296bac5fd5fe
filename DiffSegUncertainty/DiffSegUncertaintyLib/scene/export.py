"""Writes one run to a folder: the segmentation (consensus + hypotheses) as .seg.nrrd, the consensus as a
NIfTI labelmap (for tools that do not read Slicer segmentations), the uncertainty maps as NRRD and the
volume table as TSV.

Why without the scene: temporary storage and labelmap nodes are never added, so exporting cannot leave
nodes behind or mark the scene modified; each file is written under a temporary name and renamed, so a
failed export never leaves a truncated file that looks complete.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import vtk
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLSegmentationStorageNode,
    vtkMRMLTableStorageNode,
    vtkMRMLVolumeArchetypeStorageNode,
    vtkOrientedImageData,
    vtkOrientedImageDataResample,
    vtkSlicerSegmentationsModuleLogic,
)
from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

from .results import RunNodes


TMP = ".tmp-"


class ExportError(RuntimeError):
    """A file could not be written."""


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


def _write(storage, node, path: Path) -> Path:
    tmp = path.with_name(f"{TMP}{path.name}")
    storage.SetFileName(str(tmp))
    if hasattr(storage, "SetUseCompression"):
        storage.SetUseCompression(True)
    ok = storage.WriteData(node) and tmp.is_file()
    stem = path.name.split(".")[0]
    for part in path.parent.glob(f"{TMP}{stem}.*"):  # the file and its companions (a table's schema)
        if ok:
            os.replace(part, path.parent / part.name[len(TMP):])
        else:
            part.unlink(missing_ok=True)
    if not ok:
        raise ExportError(f"cannot write {path}")
    return path


def consensus_labelmap(run: RunNodes, reference) -> vtkMRMLLabelMapVolumeNode:
    """The consensus segment(s) as a labelmap (1..C-1) on the reference volume's grid, not in any scene.

    Built here rather than with the segmentations logic's export, which adds a colour table to the
    user's scene as a side effect.
    """
    geometry = vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(reference)
    dims = geometry.GetDimensions()
    labels = np.zeros(tuple(reversed(dims)), np.uint8)
    for value, segment_id in enumerate(run.consensus_segment_ids, start=1):
        mask, on_grid = vtkOrientedImageData(), vtkOrientedImageData()
        if not run.segmentation.GetBinaryLabelmapRepresentation(segment_id, mask):
            raise ExportError(f"the segment {segment_id!r} has no labelmap")
        vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            mask, geometry, on_grid, False)  # nearest neighbour; a copy when the grids agree
        label = run.segmentation.GetSegmentation().GetSegment(segment_id).GetLabelValue()
        values = vtk_to_numpy(on_grid.GetPointData().GetScalars()).reshape(labels.shape)
        labels[values == label] = value
    image = vtk.vtkImageData()
    image.SetDimensions(dims)
    image.GetPointData().SetScalars(numpy_to_vtk(labels.ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
    labelmap = vtkMRMLLabelMapVolumeNode()
    labelmap.SetAndObserveImageData(image)
    labelmap.CopyOrientation(reference)
    return labelmap


def export_run(run: RunNodes, folder: str | Path, reference=None) -> list[Path]:
    """Write the run's files into ``folder`` (created if needed); returns the paths written.

    reference: the volume whose grid the labelmap uses (default: the segmentation's reference volume).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    reference = reference or run.segmentation.GetNodeReference(
        run.segmentation.GetReferenceImageGeometryReferenceRole())
    if reference is None:
        raise ExportError("the segmentation has no reference volume to export a labelmap on")
    base = _safe(run.name)
    written = [_write(vtkMRMLSegmentationStorageNode(), run.segmentation, folder / f"{base}.seg.nrrd"),
               _write(vtkMRMLVolumeArchetypeStorageNode(), consensus_labelmap(run, reference),
                      folder / f"{base}_consensus.nii.gz")]
    for role, node in run.maps.items():
        written.append(_write(vtkMRMLVolumeArchetypeStorageNode(), node, folder / f"{base}_{role}.nrrd"))
    written.append(_write(vtkMRMLTableStorageNode(), run.table, folder / f"{base}_volumes.tsv"))
    return written
