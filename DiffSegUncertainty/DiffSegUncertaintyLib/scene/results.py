"""Output files of ``diffseg sample`` -> MRML nodes in a new subject-hierarchy folder.

Why two phases: every file is first read into nodes that are not in the scene (so a missing or damaged
file, or a grid that is not the input's, raises before the scene changed); only then are the nodes added,
and if adding fails half-way, everything added is removed again. A run therefore appears whole or not at
all, and a second run gets its own folder ("... run 2") instead of replacing the first.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import vtk
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLScene,
    vtkMRMLSegmentationNode,
    vtkMRMLSegmentationStorageNode,
    vtkMRMLSubjectHierarchyConstants,
    vtkMRMLSubjectHierarchyNode,
    vtkMRMLTableNode,
    vtkMRMLVolumeArchetypeStorageNode,
    vtkOrientedImageData,
    vtkSegment,
    vtkSegmentationConverter,
    vtkSlicerSegmentationsModuleLogic,
)

from ..engine.files.outputs import CONSENSUS_FILE, MAP_FILES, SEGMENTATION_FILE, SUMMARY_FILE
from .colors import distinct_colors, inferno_node

ROLE = "DiffSeg.Role"          # node attribute: which output a node is (export and reloaded scenes use it)
RUN = "DiffSeg.Run"            # subject-hierarchy folder attribute: the run number
# role, file, node-name suffix, window max (None: ln C)
MAPS = (("entropy", MAP_FILES["entropy"], "entropy", None),
        ("mutual_information", MAP_FILES["mutual_information"], "mutual information", None),
        ("variance", MAP_FILES["variance"], "variance", 0.25),
        ("mean_probability", MAP_FILES["mean_probability"], "mean probability", 1.0))
CONSENSUS_COLOR = (0.0, 0.85, 1.0)  # cyan: no Inferno entry comes near it, so the outline stays seen
LOWER_FRACTION = 0.1  # map values below this fraction of the scale are transparent by default
GEOMETRY_TOLERANCE = 1e-3  # mm; NRRD headers round-trip the input's geometry to ~1e-6


class ResultsError(RuntimeError):
    """The command's outputs are missing, unreadable or not on the input's grid."""


@dataclass
class RunNodes:
    """The nodes of one run, all in the scene under ``folder_item``."""

    name: str
    folder_item: int
    segmentation: vtkMRMLSegmentationNode
    maps: dict[str, vtkMRMLScalarVolumeNode]
    table: vtkMRMLTableNode
    summary: dict[str, Any]
    consensus_segment_ids: list[str] = field(default_factory=list)
    hypothesis_segment_ids: list[str] = field(default_factory=list)
    input_volume: Any = None   # the volume that was sampled (kept with the run, whatever is selected later)
    classes: list[str] = field(default_factory=list)

    def nodes(self) -> list:
        return [self.segmentation, *self.maps.values(), self.table]


@contextmanager
def quiet_vtk():
    """Mute VTK's warnings for calls that complain about what we do on purpose (nodes outside a scene)."""
    previous = vtk.vtkObject.GetGlobalWarningDisplay()
    vtk.vtkObject.GlobalWarningDisplayOff()
    try:
        yield
    finally:
        vtk.vtkObject.SetGlobalWarningDisplay(previous)


def ijk_to_ras(volume) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _read_volume(path: Path, node):
    if not path.is_file():
        raise ResultsError(f"the sampler did not write {path.name}")
    storage = vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node) or node.GetImageData() is None:
        raise ResultsError(f"cannot read {path.name}")
    return node


def _check_grid(node, reference, label: str) -> None:
    """Same size and IJK->RAS as the input; then copy the input's exact geometry (no rounding drift)."""
    dims, ref_dims = node.GetImageData().GetDimensions(), reference.GetImageData().GetDimensions()
    if tuple(dims) != tuple(ref_dims):
        raise ResultsError(f"{label} has size {dims}, the input volume {ref_dims}")
    if not np.allclose(ijk_to_ras(node), ijk_to_ras(reference), atol=GEOMETRY_TOLERANCE):
        raise ResultsError(f"{label} is not on the input volume's grid (origin, spacing or directions differ)")
    node.CopyOrientation(reference)


def _segment_from_mask(label_image: vtkOrientedImageData, value: int, name: str, color) -> vtkSegment:
    threshold = vtk.vtkImageThreshold()
    threshold.SetInputData(label_image)
    threshold.ThresholdBetween(value, value)
    threshold.SetInValue(1)
    threshold.SetOutValue(0)
    threshold.SetOutputScalarTypeToUnsignedChar()
    threshold.Update()
    mask = vtkOrientedImageData()
    mask.ShallowCopy(threshold.GetOutput())
    mask.CopyDirections(label_image)
    segment = vtkSegment()
    segment.SetName(name)
    segment.SetColor(*color)
    segment.AddRepresentation(vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(), mask)
    return segment


def _volume_table(summary: dict[str, Any]) -> vtkMRMLTableNode:
    rows = summary.get("hypotheses") or []
    mm3 = [float(r.get("foreground_mm3", math.nan)) for r in rows]
    voxels = [float(r.get("foreground_voxels", math.nan)) for r in rows]
    spread = (summary.get("spread") or {}).get("mm3") or {}
    spread_vox = (summary.get("spread") or {}).get("voxels") or {}
    names = vtk.vtkStringArray()
    names.SetName("Hypothesis")
    volume = vtk.vtkDoubleArray()
    volume.SetName("Foreground volume")
    count = vtk.vtkDoubleArray()
    count.SetName("Foreground voxels")
    for i, (v, n) in enumerate(zip(mm3, voxels)):
        names.InsertNextValue(f"Hypothesis {rows[i].get('index', i + 1):02d}")
        volume.InsertNextValue(v)
        count.InsertNextValue(n)
    for key in ("mean", "std", "min", "max"):
        names.InsertNextValue(key.capitalize() if key != "std" else "Std")
        volume.InsertNextValue(float(spread.get(key, math.nan)))
        count.InsertNextValue(float(spread_vox.get(key, math.nan)))
    table = vtkMRMLTableNode()
    for array in (names, volume, count):
        table.AddColumn(array)
    table.SetUseColumnTitleAsColumnHeader(True)
    table.SetColumnUnitLabel("Foreground volume", "mm3")
    table.SetColumnDescription("Foreground volume", "foreground volume of each hypothesis, then the spread "
                               "over hypotheses (mean, population std, min, max)")
    return table


def read_outputs(output_dir: str | Path, input_volume: vtkMRMLScalarVolumeNode,
                 classes: list[str]) -> tuple[vtkMRMLSegmentationNode, dict, vtkMRMLTableNode, dict, list, list]:
    """Read every output into nodes outside the scene; raises ResultsError before anything changed."""
    output_dir = Path(output_dir)
    try:
        summary = json.loads((output_dir / SUMMARY_FILE).read_text())
    except (OSError, ValueError) as e:
        raise ResultsError(f"cannot read {SUMMARY_FILE}: {e}") from None
    maps = {}
    for role, filename, _, _ in MAPS:
        maps[role] = _read_volume(output_dir / filename, vtkMRMLScalarVolumeNode())
        _check_grid(maps[role], input_volume, filename)
    consensus = _read_volume(output_dir / CONSENSUS_FILE, vtkMRMLLabelMapVolumeNode())
    _check_grid(consensus, input_volume, CONSENSUS_FILE)

    seg_path = output_dir / SEGMENTATION_FILE
    segmentation = vtkMRMLSegmentationNode()
    storage = vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(seg_path))
    with quiet_vtk():  # it cannot make display nodes outside a scene; load_run makes them later
        ok = seg_path.is_file() and storage.ReadData(segmentation)
    if not ok:
        raise ResultsError(f"cannot read {SEGMENTATION_FILE}")
    seg = segmentation.GetSegmentation()
    hypothesis_ids = [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]
    if not hypothesis_ids:
        raise ResultsError(f"{SEGMENTATION_FILE} holds no hypotheses")

    label_image = vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(consensus)
    consensus_ids = []
    foreground = classes[1:] if len(classes) > 1 else ["foreground"]
    for value, class_name in enumerate(foreground, start=1):
        name = "Consensus" if len(foreground) == 1 else f"Consensus {class_name}"
        segment = _segment_from_mask(label_image, value, name, CONSENSUS_COLOR)
        segment_id = name.replace(" ", "_")
        seg.AddSegment(segment, segment_id, hypothesis_ids[0])  # consensus first, then hypotheses
        consensus_ids.append(segment_id)
    return segmentation, maps, _volume_table(summary), summary, consensus_ids, hypothesis_ids


def _next_run_number(sh: vtkMRMLSubjectHierarchyNode) -> int:
    items = vtk.vtkIdList()
    sh.GetItemChildren(sh.GetSceneItemID(), items, True)
    numbers = [int(sh.GetItemAttribute(items.GetId(i), RUN) or 0) for i in range(items.GetNumberOfIds())]
    return max(numbers, default=0) + 1


def _parent_item(sh: vtkMRMLSubjectHierarchyNode, volume) -> int:
    """The input volume's study if it has one (DICOM), else the scene."""
    item = sh.GetItemByDataNode(volume)
    if item != sh.GetInvalidItemID():
        study = sh.GetItemAncestorAtLevel(item, vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy())
        if study != sh.GetInvalidItemID():
            return study
    return sh.GetSceneItemID()


def _place(sh: vtkMRMLSubjectHierarchyNode, node, folder: int) -> None:
    item = sh.GetItemByDataNode(node)  # in Slicer, a plugin already made one when the node was added
    if item == sh.GetInvalidItemID():
        sh.CreateItem(folder, node)
    else:
        sh.SetItemParent(item, folder)


def load_run(scene: vtkMRMLScene, output_dir: str | Path, input_volume: vtkMRMLScalarVolumeNode,
             model_name: str, classes: list[str]) -> RunNodes:
    """Read the outputs of one run and add them to the scene in a new folder (all or nothing)."""
    segmentation, maps, table, summary, consensus_ids, hypothesis_ids = read_outputs(
        output_dir, input_volume, classes)
    sh = vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    number = _next_run_number(sh)
    name = f"DiffSeg {model_name} run {number}"
    added: list = []
    folder = sh.GetInvalidItemID()
    try:
        inferno, new = inferno_node(scene)
        if new:
            added.append(inferno)
        transform_id = input_volume.GetTransformNodeID()  # outputs share the input's grid and transform

        segmentation.SetName(f"{name} segmentation")
        segmentation.SetAttribute(ROLE, "segmentation")
        scene.AddNode(segmentation)
        added.append(segmentation)
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(input_volume)
        segmentation.SetNodeReferenceID(segmentation.GetReferenceImageGeometryReferenceRole(),
                                        input_volume.GetID())
        segmentation.SetAndObserveTransformNodeID(transform_id)
        display = segmentation.GetDisplayNode()
        seg = segmentation.GetSegmentation()
        for segment_id, rgb in zip(hypothesis_ids, distinct_colors(len(hypothesis_ids))):
            seg.GetSegment(segment_id).SetColor(*rgb)
        for segment_id in hypothesis_ids:
            display.SetSegmentVisibility(segment_id, False)  # hypotheses on demand, consensus shown

        log_c = math.log(max(len(classes), 2))
        for role, _, suffix, window_max in MAPS:
            node = maps[role]
            node.SetName(f"{name} {suffix}")
            node.SetAttribute(ROLE, role)
            scene.AddNode(node)
            added.append(node)
            node.SetAndObserveTransformNodeID(transform_id)
            node.CreateDefaultDisplayNodes()
            volume_display = node.GetDisplayNode()
            volume_display.SetAndObserveColorNodeID(inferno.GetID())
            volume_display.AutoWindowLevelOff()  # a fixed scale, comparable between runs and cases
            volume_display.SetWindowLevelMinMax(0.0, log_c if window_max is None else window_max)
            top = log_c if window_max is None else window_max
            volume_display.SetApplyThreshold(True)  # low doubt transparent: the anatomy stays readable
            volume_display.SetThreshold(LOWER_FRACTION * top, 1e30)

        table.SetName(f"{name} volumes")
        table.SetAttribute(ROLE, "volumes")
        scene.AddNode(table)
        added.append(table)

        folder = sh.CreateFolderItem(_parent_item(sh, input_volume), name)
        sh.SetItemAttribute(folder, RUN, str(number))
        for node in (segmentation, *maps.values(), table):
            _place(sh, node, folder)
    except Exception:
        if folder != sh.GetInvalidItemID():
            sh.RemoveItem(folder, False, False)
        for node in reversed(added):
            _remove_node(scene, node)
        raise
    return RunNodes(name=name, folder_item=folder, segmentation=segmentation, maps=maps, table=table,
                    summary=summary, consensus_segment_ids=consensus_ids,
                    hypothesis_segment_ids=hypothesis_ids, input_volume=input_volume, classes=list(classes))


def _remove_node(scene: vtkMRMLScene, node) -> None:
    """Remove a node and the display/storage nodes it made."""
    if hasattr(node, "GetNumberOfDisplayNodes"):
        for i in reversed(range(node.GetNumberOfDisplayNodes())):
            if node.GetNthDisplayNode(i) is not None:
                scene.RemoveNode(node.GetNthDisplayNode(i))
    if hasattr(node, "GetStorageNode") and node.GetStorageNode() is not None:
        scene.RemoveNode(node.GetStorageNode())
    scene.RemoveNode(node)


def run_from_folder(scene: vtkMRMLScene, folder_item: int) -> RunNodes:
    """The nodes of a run found by their roles under its folder (e.g. after loading a saved scene)."""
    sh = vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    children = vtk.vtkIdList()
    sh.GetItemChildren(folder_item, children)
    by_role = {}
    for i in range(children.GetNumberOfIds()):
        node = sh.GetItemDataNode(children.GetId(i))
        if node is not None and node.GetAttribute(ROLE):
            by_role[node.GetAttribute(ROLE)] = node
    missing = [r for r in ("segmentation", "volumes", *(m[0] for m in MAPS)) if r not in by_role]
    if missing:
        raise ResultsError(f"the folder {sh.GetItemName(folder_item)!r} is not a complete DiffSeg run "
                           f"(missing {', '.join(missing)})")
    seg = by_role["segmentation"].GetSegmentation()
    ids = [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]
    consensus = [s for s in ids if seg.GetSegment(s).GetName().startswith("Consensus")]
    return RunNodes(name=sh.GetItemName(folder_item), folder_item=folder_item,
                    segmentation=by_role["segmentation"], maps={m[0]: by_role[m[0]] for m in MAPS},
                    table=by_role["volumes"], summary={}, consensus_segment_ids=consensus,
                    hypothesis_segment_ids=[s for s in ids if s not in consensus],
                    input_volume=by_role["segmentation"].GetNodeReference(
                        by_role["segmentation"].GetReferenceImageGeometryReferenceRole()))
