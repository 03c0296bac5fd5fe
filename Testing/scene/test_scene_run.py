"""A volume node in a real scene, through the real ``diffseg sample`` process, to nodes; then export,
.seg.nrrd and .mrb round trips, a second run, and a loader that refuses damaged outputs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import vtk
from scene_helpers import RecordingRunner, ReplayRunner, array, load_volume, put_under_study, scene_counts
from slicer import (
    vtkMRMLSegmentationNode,
    vtkMRMLSubjectHierarchyNode,
    vtkOrientedImageData,
    vtkSegmentationConverter,
)

from DiffSegUncertaintyLib.scene import colors
from DiffSegUncertaintyLib.scene.app import create_headless_app
from DiffSegUncertaintyLib.scene.inputs import SampleRequest
from DiffSegUncertaintyLib.scene.logic import DiffSegUncertaintyLogic
from DiffSegUncertaintyLib.scene.results import ROLE, RUN, ijk_to_ras, run_from_folder

SAMPLES = 3


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model, input_file):
    """One real run on a volume that sits in a DICOM-like study; the outputs are kept for replay."""
    work = tmp_path_factory.mktemp("run")
    app = create_headless_app(cache_dir=str(work / "cache"))
    volume = load_volume(app, input_file)
    study = put_under_study(app.scene, volume)
    keep = work / "recorded"
    logic = DiffSegUncertaintyLogic(app.scene, runner_factory=lambda: RecordingRunner(keep),
                                    temp_root=str(work))
    seen = []
    logic.progressChanged.connect(seen.append)
    before = scene_counts(app.scene)
    logic.start(SampleRequest(volume, tiny_model, samples=SAMPLES, steps=2, seed=7, device="cpu"))
    outcome = logic.wait(timeout=150)
    assert outcome is not None and outcome.status == "done", outcome and outcome.log
    return {"app": app, "volume": volume, "study": study, "logic": logic, "outcome": outcome,
            "run": outcome.run, "progress": seen, "before": before, "recorded": keep, "work": work}


def segment_mask(segmentation: vtkMRMLSegmentationNode, segment_id: str, volume) -> np.ndarray:
    """A segment's voxels on the volume's grid (k, j, i), read back through the segmentation's own API."""
    image = vtkOrientedImageData()
    assert segmentation.GetBinaryLabelmapRepresentation(segment_id, image)
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    world = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    assert np.allclose(world, ijk_to_ras(volume), atol=1e-6), "segment not on the input's grid"
    from vtk.util.numpy_support import vtk_to_numpy
    label = segmentation.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    full = np.zeros(tuple(reversed(volume.GetImageData().GetDimensions())), np.uint8)
    extent = image.GetExtent()
    if extent[1] >= extent[0]:
        i, j, k = image.GetDimensions()
        part = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(k, j, i)
        full[extent[4]:extent[5] + 1, extent[2]:extent[3] + 1, extent[0]:extent[1] + 1] = part == label
    return full


def test_progress_and_temp_folder(finished):
    assert finished["progress"], "no progress reported"
    last = finished["progress"][-1]
    assert last.done == last.total and last.steps == 2
    leftovers = [p.name for p in finished["work"].iterdir() if p.name.startswith("DiffSeg-")]
    assert leftovers == [], "temporary input/output folder left behind"


def test_every_output_is_on_the_input_grid(finished):
    run, volume = finished["run"], finished["volume"]
    reference = ijk_to_ras(volume)
    assert not np.allclose(reference[:3, :3], np.diag(np.diag(reference[:3, :3])))  # a real test grid
    for role, node in run.maps.items():
        assert node.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions(), role
        assert np.allclose(ijk_to_ras(node), reference, atol=1e-9), role
    seg = run.segmentation
    assert seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) is volume
    geometry = seg.GetSegmentation().GetConversionParameter(
        vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    assert geometry == vtkSegmentationConverter.SerializeImageGeometry(
        _oriented(volume)), "reference geometry is not the input volume's"
    for segment_id in run.consensus_segment_ids + run.hypothesis_segment_ids:
        segment_mask(seg, segment_id, volume)  # asserts the grid


def _oriented(volume):
    from slicer import vtkSlicerSegmentationsModuleLogic
    return vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(volume)


def test_segments_consensus_and_hidden_hypotheses(finished, tmp_path):
    run, volume = finished["run"], finished["volume"]
    seg = run.segmentation.GetSegmentation()
    names = [seg.GetSegment(s).GetName() for s in run.consensus_segment_ids + run.hypothesis_segment_ids]
    assert names == ["Consensus"] + [f"Hypothesis {k:02d}" for k in range(1, SAMPLES + 1)]
    display = run.segmentation.GetDisplayNode()
    assert display.GetSegmentVisibility(run.consensus_segment_ids[0])
    assert not any(display.GetSegmentVisibility(s) for s in run.hypothesis_segment_ids)
    # the consensus segment is the command's consensus.nrrd, voxel for voxel
    consensus = segment_mask(run.segmentation, run.consensus_segment_ids[0], volume)
    recorded = load_volume(create_headless_app(str(tmp_path)), finished["recorded"] / "consensus.nrrd")
    assert np.array_equal(consensus, array(recorded) == 1)


def test_entropy_colour_table_and_windows(finished):
    run = finished["run"]
    ln_c = math.log(2)
    expected = {"entropy": ln_c, "mutual_information": ln_c, "variance": 0.25, "mean_probability": 1.0}
    for role, top in expected.items():
        display = run.maps[role].GetDisplayNode()
        table = display.GetColorNode()
        # Slicer's own Inferno node (the app registered ColorFiles/Inferno.txt), not a second "Inferno"
        assert table.GetID() == colors.SLICER_INFERNO_ID and table.GetNumberOfColors() == 256
        assert not display.GetAutoWindowLevel()
        # low doubt is transparent by default: a tenth of the scale
        assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(0.1 * top)
        assert display.GetWindowLevelMin() == pytest.approx(0.0)
        assert display.GetWindowLevelMax() == pytest.approx(top), role
    rgba = [0.0] * 4
    table.GetColor(0, rgba)
    assert rgba[:3] == pytest.approx(colors.INFERNO_ANCHORS[0], abs=0.5 / 255)
    table.GetColor(255, rgba)
    assert rgba[:3] == pytest.approx(colors.INFERNO_ANCHORS[-1], abs=0.5 / 255)
    entropy = array(run.maps["entropy"])
    assert entropy.min() >= 0 and entropy.max() <= ln_c + 1e-5


def test_subject_hierarchy_under_the_study(finished):
    app, run = finished["app"], finished["run"]
    sh = vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(app.scene)
    assert sh.GetItemParent(run.folder_item) == finished["study"]
    assert sh.GetItemName(run.folder_item) == "DiffSeg tiny3d run 1"
    assert sh.GetItemAttribute(run.folder_item, RUN) == "1"
    for node in run.nodes():
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == run.folder_item, node.GetName()
    assert {n.GetAttribute(ROLE) for n in run.nodes()} == {
        "segmentation", "entropy", "mutual_information", "variance", "mean_probability", "volumes"}


def test_volume_table_equals_summary_and_segments(finished):
    run, volume = finished["run"], finished["volume"]
    summary = json.loads((finished["recorded"] / "summary.json").read_text())
    table = run.table.GetTable()
    assert table.GetNumberOfRows() == SAMPLES + 4
    voxel_mm3 = float(np.prod(volume.GetSpacing()))
    for k, hypothesis in enumerate(summary["hypotheses"]):
        assert table.GetValue(k, 0).ToString() == f"Hypothesis {k + 1:02d}"
        assert table.GetValue(k, 1).ToDouble() == pytest.approx(hypothesis["foreground_mm3"])
        voxels = int(segment_mask(run.segmentation, run.hypothesis_segment_ids[k], volume).sum())
        assert table.GetValue(k, 1).ToDouble() == pytest.approx(voxels * voxel_mm3)  # independent count
    for row, key in enumerate(("mean", "std", "min", "max"), start=SAMPLES):
        assert table.GetValue(row, 1).ToDouble() == pytest.approx(summary["spread"]["mm3"][key])
    assert run.table.GetColumnProperty("Foreground volume", "unitLabel") == "mm3"


def test_export_files_round_trip_and_leave_the_scene_alone(finished, tmp_path):
    app, run, volume = finished["app"], finished["run"], finished["volume"]
    before = scene_counts(app.scene)
    written = finished["logic"].export(run, tmp_path / "export")
    assert scene_counts(app.scene) == before
    names = sorted(p.name for p in written)
    assert names == sorted(["DiffSeg_tiny3d_run_1.seg.nrrd", "DiffSeg_tiny3d_run_1_consensus.nii.gz",
                            "DiffSeg_tiny3d_run_1_entropy.nrrd", "DiffSeg_tiny3d_run_1_mean_probability.nrrd",
                            "DiffSeg_tiny3d_run_1_mutual_information.nrrd", "DiffSeg_tiny3d_run_1_variance.nrrd",
                            "DiffSeg_tiny3d_run_1_volumes.tsv"])
    assert not [p for p in (tmp_path / "export").iterdir() if p.name.startswith(".tmp-")]
    other = create_headless_app(str(tmp_path / "cache"))
    reloaded = other.segmentations.LoadSegmentationFromFile(str(tmp_path / "export" / names[0]), False, "r")
    seg = reloaded.GetSegmentation()
    assert [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())] == \
        ["Consensus"] + [f"Hypothesis {k:02d}" for k in range(1, SAMPLES + 1)]
    ref = load_volume(other, finished["recorded"] / "consensus.nrrd", "ref")
    for i, segment_id in enumerate(run.consensus_segment_ids + run.hypothesis_segment_ids):
        assert np.array_equal(segment_mask(reloaded, seg.GetNthSegmentID(i), ref),
                              segment_mask(run.segmentation, segment_id, volume))
    nifti = load_volume(other, tmp_path / "export" / "DiffSeg_tiny3d_run_1_consensus.nii.gz", "nii")
    assert np.allclose(ijk_to_ras(nifti), ijk_to_ras(volume), atol=1e-4)
    assert np.array_equal(array(nifti), array(ref))
    entropy = load_volume(other, tmp_path / "export" / "DiffSeg_tiny3d_run_1_entropy.nrrd", "e")
    assert np.array_equal(array(entropy), array(run.maps["entropy"]))


def test_mrb_round_trip(finished, tmp_path):
    app, run = finished["app"], finished["run"]
    mrb = (tmp_path / "scene.mrb").resolve()
    assert app.scene.WriteToMRB(str(mrb))
    other = create_headless_app(str(tmp_path / "cache"))
    assert other.scene.ReadFromMRB(str(mrb))
    sh = vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(other.scene)
    folder = sh.GetItemByName("DiffSeg tiny3d run 1")
    assert folder != sh.GetInvalidItemID() and sh.GetItemAttribute(folder, RUN) == "1"
    back = run_from_folder(other.scene, folder)
    assert np.array_equal(array(back.maps["entropy"]), array(run.maps["entropy"]))
    assert back.maps["entropy"].GetDisplayNode().GetColorNode().GetID() == colors.SLICER_INFERNO_ID
    assert back.maps["entropy"].GetDisplayNode().GetWindowLevelMax() == pytest.approx(math.log(2))
    assert back.consensus_segment_ids and len(back.hypothesis_segment_ids) == SAMPLES
    assert back.table.GetTable().GetValue(0, 1).ToDouble() == pytest.approx(
        run.table.GetTable().GetValue(0, 1).ToDouble())


def test_a_damaged_output_adds_nothing(finished, tmp_path):
    """The loader reads everything before it adds anything: a missing or off-grid file changes nothing."""
    app, volume = finished["app"], finished["volume"]

    def drop_variance(out: Path):
        os.remove(out / "variance.nrrd")

    def shift_entropy(out: Path):
        text = (out / "summary.json").read_text()  # keep the file valid, move its grid
        import SimpleITK as sitk
        image = sitk.ReadImage(str(out / "entropy.nrrd"))
        image.SetOrigin([o + 5 for o in image.GetOrigin()])
        sitk.WriteImage(image, str(out / "entropy.nrrd"))
        (out / "summary.json").write_text(text)

    for damage, words in ((drop_variance, "variance.nrrd"), (shift_entropy, "not on the input volume's grid")):
        logic = DiffSegUncertaintyLogic(app.scene, temp_root=str(tmp_path),
                                        runner_factory=lambda d=damage: ReplayRunner(finished["recorded"], d))
        before = scene_counts(app.scene)
        logic.start(SampleRequest(volume, finished["run"].summary["model"]["folder"], samples=SAMPLES,
                                  steps=2, device="cpu"))
        outcome = logic.wait(timeout=30)
        assert outcome.status == "failed" and words in outcome.message
        assert outcome.log == "replayed\n"
        assert scene_counts(app.scene) == before


def test_second_run_adds_a_second_folder(finished, tiny_model):
    """Runs last in this module (pytest keeps file order): also checks the ROI reaches the command."""
    app, volume, first = finished["app"], finished["volume"], finished["run"]
    first_ids = [n.GetID() for n in first.nodes()]
    first_entropy = array(first.maps["entropy"]).copy()
    roi = app.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    bounds = [0.0] * 6
    volume.GetRASBounds(bounds)
    centre = [(bounds[2 * a] + bounds[2 * a + 1]) / 2 for a in range(3)]
    size = [(bounds[2 * a + 1] - bounds[2 * a]) / 2 for a in range(3)]
    roi.SetXYZ(*centre)
    roi.SetRadiusXYZ(*(s / 2 for s in size))
    logic = DiffSegUncertaintyLogic(app.scene)
    logic.start(SampleRequest(volume, tiny_model, samples=2, steps=2, seed=1, device="cpu", roi=roi))
    outcome = logic.wait(timeout=150)
    assert outcome.status == "done", outcome.log
    second = outcome.run
    sh = vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(app.scene)
    assert sh.GetItemName(second.folder_item) == "DiffSeg tiny3d run 2"
    assert sh.GetItemParent(second.folder_item) == finished["study"]
    assert [n.GetID() for n in first.nodes()] == first_ids and all(app.scene.GetNodeByID(i) for i in first_ids)
    assert np.array_equal(array(first.maps["entropy"]), first_entropy)
    assert not set(first_ids) & {n.GetID() for n in second.nodes()}
    assert colors.inferno_node(app.scene)[0] is first.maps["entropy"].GetDisplayNode().GetColorNode()
    assert colors.find_inferno(app.scene) is None  # the app's table was used; no stand-in was made
    # the ROI (RAS, in the scene) became the command's LPS box: the index box it used is the voxels
    # whose centres lie inside the ROI, computed here from MRML's own RAS->IJK
    ras_to_ijk = np.linalg.inv(ijk_to_ras(volume))
    roi_bounds = [0.0] * 6
    roi.GetRASBounds(roi_bounds)
    corners = np.array([[x, y, z, 1] for x in roi_bounds[0:2] for y in roi_bounds[2:4] for z in roi_bounds[4:6]])
    ijk = (ras_to_ijk @ corners.T).T[:, :3]
    start = np.ceil(ijk.min(0) - 1e-6).astype(int).tolist()
    stop = (np.floor(ijk.max(0) + 1e-6).astype(int) + 1).tolist()
    assert second.summary["roi"] == {"start": start, "stop": stop}
    outside = np.ones(tuple(reversed(volume.GetImageData().GetDimensions())), bool)
    outside[start[2]:stop[2], start[1]:stop[1], start[0]:stop[0]] = False
    assert outside.any() and not array(second.maps["entropy"])[outside].any()
