"""Reading a run in the panel (scene.reading) on real MRML nodes from one real background run: the
hypothesis browser, the k-of-N consensus against masks read back independently, the overlay's slice
composite and display nodes, the most-disagreeing slices and Slicer's own jump, the ROI helper, and the
texts a reader sees."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scene_helpers import array, load_volume
from slicer import vtkMRMLMarkupsROINode, vtkMRMLSliceCompositeNode, vtkMRMLSliceNode
from test_scene_run import segment_mask

from DiffSegUncertaintyLib.engine import cli
from DiffSegUncertaintyLib.engine.files.modelfile import read_card
from DiffSegUncertaintyLib.scene import colors, reading
from DiffSegUncertaintyLib.scene.app import create_headless_app
from DiffSegUncertaintyLib.scene.inputs import InputProblem, SampleRequest
from DiffSegUncertaintyLib.scene.logic import DiffSegUncertaintyLogic
from DiffSegUncertaintyLib.scene.results import CONSENSUS_COLOR

N = 4
MODELS = Path(reading.__file__).resolve().parents[2] / "Resources" / "Models"


@pytest.fixture(scope="module")
def done(tmp_path_factory, tiny_model, input_file):
    work = tmp_path_factory.mktemp("reading")
    app = create_headless_app(cache_dir=str(work / "cache"))
    volume = load_volume(app, input_file)
    logic = DiffSegUncertaintyLogic(app.scene, temp_root=str(work))
    logic.start(SampleRequest(volume, tiny_model, samples=N, steps=2, seed=3, device="cpu"))
    outcome = logic.wait(timeout=150)
    assert outcome is not None and outcome.status == "done", outcome and outcome.log
    return {"app": app, "volume": volume, "run": outcome.run, "outcome": outcome, "model": tiny_model}


def test_the_run_keeps_its_own_volume_and_request(done):
    assert done["run"].input_volume is done["volume"]
    assert done["outcome"].request.input_volume is done["volume"]
    assert done["outcome"].seconds > 0


def test_64_hypothesis_colours_are_distinct_and_away_from_the_consensus():
    rgb = np.array(colors.distinct_colors(64))
    gaps = [np.abs(a - b).max() for a, b in itertools.combinations(rgb, 2)]
    assert min(gaps) > 0.075  # no two of 64 share a colour (Slicer's Labels table would repeat after 10)
    assert len({tuple(np.round(c * 255).astype(int)) for c in rgb}) == 64
    assert np.abs(rgb - np.array(CONSENSUS_COLOR)).max(axis=1).min() > 0.1


def test_hypotheses_get_the_distinct_colours(done):
    run = done["run"]
    seg = run.segmentation.GetSegmentation()
    got = [seg.GetSegment(s).GetColor() for s in run.hypothesis_segment_ids]
    assert np.allclose(got, colors.distinct_colors(N))
    assert seg.GetSegment(run.consensus_segment_ids[0]).GetColor() == pytest.approx(CONSENSUS_COLOR)


def test_hypothesis_browser(done):
    run = done["run"]
    display = run.segmentation.GetDisplayNode()
    reading.show_hypothesis(run, 2)
    assert [display.GetSegmentVisibility(s) for s in run.hypothesis_segment_ids] == [False, True, False, False]
    assert display.GetSegmentVisibility2DFill(run.hypothesis_segment_ids[1])
    reading.show_hypothesis(run, 0)  # all outlines
    assert all(display.GetSegmentVisibility(s) for s in run.hypothesis_segment_ids)
    assert not any(display.GetSegmentVisibility2DFill(s) for s in run.hypothesis_segment_ids)
    assert all(display.GetSegmentVisibility2DOutline(s) for s in run.hypothesis_segment_ids)
    assert display.GetSegmentVisibility(run.consensus_segment_ids[0])
    with pytest.raises(ValueError):
        reading.show_hypothesis(run, N + 1)


def test_consensus_threshold_is_k_of_n_voxel_for_voxel(done):
    run, volume = done["run"], done["volume"]
    masks = np.stack([segment_mask(run.segmentation, s, volume) for s in run.hypothesis_segment_ids])
    votes = masks.sum(0)
    assert np.array_equal(reading.hypothesis_count(run), votes)
    sampler = reading.consensus_mask(run)
    assert np.array_equal(sampler, segment_mask(run.segmentation, run.consensus_segment_ids[0], volume))
    sizes = []
    for k in range(1, N + 1):
        voxels = reading.set_consensus_threshold(run, k)
        consensus = segment_mask(run.segmentation, run.consensus_segment_ids[0], volume)
        assert np.array_equal(consensus, votes >= k), k
        assert voxels == int((votes >= k).sum())
        sizes.append(voxels)
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[0] == int(masks.any(0).sum()) and sizes[-1] == int(masks.all(0).sum())  # union, intersection
    assert reading.write_consensus(run, sampler, "sampler") == int(sampler.sum())  # restored
    assert np.array_equal(segment_mask(run.segmentation, run.consensus_segment_ids[0], volume), sampler)
    with pytest.raises(ValueError):
        reading.set_consensus_threshold(run, 0)
    with pytest.raises(ValueError):
        reading.set_consensus_threshold(run, N + 1)


def test_overlay_in_every_slice_view_with_a_lower_threshold(done):
    app, run, volume = done["app"], done["run"], done["volume"]
    composites = []
    for name in ("Red", "Green"):
        c = vtkMRMLSliceCompositeNode()
        c.SetLayoutName(name)
        composites.append(app.scene.AddNode(c))
    reading.show_map(app.scene, run, volume, "variance", opacity=0.4)
    for c in composites:
        assert c.GetBackgroundVolumeID() == volume.GetID()
        assert c.GetForegroundVolumeID() == run.maps["variance"].GetID()
        assert c.GetForegroundOpacity() == pytest.approx(0.4)
    display = run.maps["variance"].GetDisplayNode()
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(0.025)
    assert display.GetColorNodeID() == colors.SLICER_INFERNO_ID
    reading.show_map(app.scene, run, volume, "entropy", lower=0.3)
    assert run.maps["entropy"].GetDisplayNode().GetLowerThreshold() == pytest.approx(0.3)
    reading.show_map(app.scene, run, volume, None)
    assert all(c.GetForegroundVolumeID() is None for c in composites)
    assert reading.map_range("entropy", 3) == pytest.approx(math.log(3))


def test_most_disagreeing_slices_and_the_jump(done):
    app, run = done["app"], done["run"]
    entropy = array(run.maps["entropy"])
    per_slice = entropy.sum(axis=(1, 2))
    found = reading.doubtful_slices(run)
    assert [d.index for d in found] == [int(k) for k in np.argsort(-per_slice, kind="stable") if per_slice[k] > 0]
    assert [d.score for d in found] == pytest.approx([per_slice[d.index] for d in found], rel=1e-5)
    assert found, "the tiny model's hypotheses disagree somewhere"
    # the target lies on the doubtful slice: back through RAS->IJK it has that K index
    from DiffSegUncertaintyLib.scene.results import ijk_to_ras
    ijk = np.linalg.inv(ijk_to_ras(run.maps["entropy"])) @ np.array([*found[0].ras, 1.0])
    assert ijk[2] == pytest.approx(found[0].index, abs=1e-6)
    red = vtkMRMLSliceNode()
    red.SetName("Red")
    red.SetLayoutName("Red")
    red.SetOrientationToAxial()
    app.scene.AddNode(red)
    reading.jump_to(app.scene, found[0].ras)
    m = red.GetSliceToRAS()
    assert [m.GetElement(r, 3) for r in range(3)] == pytest.approx(list(found[0].ras), abs=1e-6)


def test_summary_and_model_description_read_as_sentences(done):
    run = done["run"]
    mm3 = np.array([h["foreground_mm3"] for h in run.summary["hypotheses"]])
    text = reading.summary_text(run, seconds=12.0)
    assert f"{mm3.mean():.1f} \u00b1 {mm3.std():.1f} mm\u00b3" in text
    assert f"({mm3.mean() / 1000:.3f} \u00b1 {mm3.std() / 1000:.3f} ml)" in text
    assert f"range {mm3.min():.1f}-{mm3.max():.1f}" in text and "device cpu" in text and "12 s" in text
    assert run.summary["sampler"]["method"] == "ddpm" and "eta" not in text  # ancestral: eta does not apply
    ddim = dataclasses.replace(run, summary={**run.summary, "sampler": {**run.summary["sampler"], "method": "ddim",
                                                                        "eta": 0.5}})
    assert "DDIM 2 steps, eta 0.5, seed 3" in reading.summary_text(ddim)
    card = json.loads((MODELS / "lidc-hsrdiff-small-cpu" / "model.json").read_text())
    words = reading.describe_model(card)
    v = card["metrics"]["values"]
    assert "HSRDiff (Hierarchical Self-Regulation Diffusion)" in words
    assert f"GED (generalised energy distance; lower is better): {v['ged']:.3f}" in words
    assert f"{v['hm_iou']:.3f}" in words and f"{v['dice']:.3f}" in words
    assert f"{card['training']['data']['train_items']} training images" in words
    assert "{" not in words  # no dict repr
    assert "not meant for diagnosis" in words
    tiny = reading.describe_model(read_card(done["model"]))
    assert "reports no validation numbers" in tiny


def test_roi_helper_places_the_models_box_and_unplaced_or_flat_rois_are_refused(done, tmp_path):
    app, volume, model = done["app"], done["volume"], done["model"]
    card = read_card(model)
    size = card["input"]["size"]  # (k, j, i) voxels of a 3D model
    spacing = volume.GetSpacing()  # (i, j, k) mm
    roi = reading.place_model_roi(app.scene, card, volume, (1.0, 2.0, 3.0))
    assert roi.GetCenter() == pytest.approx((1.0, 2.0, 3.0))
    assert roi.GetSize() == pytest.approx((size[2] * spacing[0], size[1] * spacing[1], size[0] * spacing[2]))
    logic = DiffSegUncertaintyLogic(app.scene)
    unplaced = app.scene.AddNode(vtkMRMLMarkupsROINode())
    with pytest.raises(InputProblem, match="has not been placed"):
        logic.validate(SampleRequest(volume, model, roi=unplaced))
    flat = app.scene.AddNode(vtkMRMLMarkupsROINode())
    flat.AddControlPoint([0.0, 0.0, 0.0])  # placed by one click: a point, no extent
    with pytest.raises(InputProblem, match="zero size"):
        logic.validate(SampleRequest(volume, model, roi=flat))
    # the click travels with the run as --point-mm (LPS) while the ROI stays where the helper put it
    assert reading.placed_point(roi) == pytest.approx((1.0, 2.0, 3.0))
    cmd = logic.command(SampleRequest(volume, model, roi=roi, point=reading.placed_point(roi)), [tmp_path / "i"],
                        tmp_path / "o")
    assert "--point-mm=-1.000000,-2.000000,3.000000" in cmd and not any(c.startswith("--roi") for c in cmd)
    assert cli.build_parser().parse_args(cmd[3:]).point_mm == "-1.000000,-2.000000,3.000000"
    roi.SetCenter(4.0, 2.0, 3.0)  # moved by the user: that box is what they ask for
    assert reading.placed_point(roi) is None
    assert any(c.startswith("--roi-mm=") for c in logic.command(SampleRequest(volume, model, roi=roi),
                                                                 [tmp_path / "i"], tmp_path / "o"))
    two_d = {**card, "input": {**card["input"], "size": [6, 4]}}
    r, a, s = reading.model_box_mm(two_d, volume)
    assert (r, a) == pytest.approx((4 * spacing[0], 6 * spacing[1])) and s == pytest.approx(min(r, a))


def test_the_default_overlay_leaves_agreed_tissue_as_it_was_through_mrml_slice_logic(done):
    """Rendered by MRML's own vtkMRMLSliceLogic: where the hypotheses agree (entropy under the default
    threshold) the overlaid view equals the image alone, pixel for pixel; without the threshold the map
    covers them too (with a trained model, in Inferno's black end: the issue measured the CT's mean
    brightness dropping from 70 to 39)."""
    from slicer import vtkMRMLSliceLogic
    from vtk.util.numpy_support import vtk_to_numpy
    app, run, volume = done["app"], done["run"], done["volume"]
    vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(app.scene)
    red = app.scene.AddNewNodeByClass("vtkMRMLSliceNode", "RedView")
    red.SetLayoutName("RedView")
    red.SetOrientation("Axial")
    composite = vtkMRMLSliceCompositeNode()
    composite.SetLayoutName("RedView")
    app.scene.AddNode(composite)
    logic = vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(app.app_logic)
    logic.SetMRMLScene(app.scene)
    logic.SetSliceNode(red)
    red.SetDimensions(96, 96, 1)
    lo, hi = volume.GetImageData().GetScalarRange()
    volume.GetDisplayNode().AutoWindowLevelOff()
    volume.GetDisplayNode().SetWindowLevelMinMax(lo - (hi - lo), hi)  # the whole volume at least mid-grey
    composite.SetBackgroundVolumeID(volume.GetID())
    logic.FitSliceToAll()
    best = reading.doubtful_slices(run)[0]
    reading.jump_to(app.scene, best.ras)  # a slice with doubt and agreement side by side

    def render() -> np.ndarray:
        logic.UpdateImageData()
        producer = logic.GetImageDataConnection().GetProducer()
        producer.Update()
        image = producer.GetOutputDataObject(0)
        i, j, _ = image.GetDimensions()
        return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(j, i, -1)[..., :3].astype(float)

    composite.SetBackgroundVolumeID(volume.GetID())
    composite.SetForegroundVolumeID(None)
    alone = render()
    # the module's overlay (opacity 0.6, threshold on); the untrained model doubts nearly everywhere, so
    # the threshold is put at the median to have agreed and doubtful voxels side by side
    threshold = float(np.median(array(run.maps["entropy"])))
    reading.show_map(app.scene, run, volume, "entropy", lower=threshold)
    overlaid = render()
    reslice = logic.GetForegroundLayer().GetReslice()
    reslice.Update()
    entropy = vtk_to_numpy(reslice.GetOutput().GetPointData().GetScalars()).reshape(alone.shape[:2])
    inside = entropy > 0  # the untrained model's entropy is positive in every voxel; 0 = outside
    agreed, doubt = inside & (entropy < threshold), entropy >= threshold
    assert agreed.sum() > 50 and doubt.sum() > 5, (agreed.sum(), doubt.sum())
    assert np.array_equal(overlaid[agreed], alone[agreed])
    assert np.abs(overlaid[doubt] - alone[doubt]).max() > 0  # the doubt is coloured
    run.maps["entropy"].GetDisplayNode().SetApplyThreshold(False)  # the old overlay
    covered = render()
    assert (np.abs(covered[agreed] - alone[agreed]).max(-1) > 0).mean() > 0.9  # the old overlay hid them


def test_segment_masks_on_another_grid_are_resampled(done):
    """The fast path copies a segment by extent when it shares the input grid; any other grid goes
    through MRML's resampling. A grid shifted by one voxel along i sees the same mask shifted by one."""
    from slicer import vtkSlicerSegmentationsModuleLogic
    run = done["run"]
    geometry = vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(run.maps["entropy"])
    segment = run.hypothesis_segment_ids[0]
    same = reading._segment_mask(run, segment, geometry)
    assert same.any()
    matrix = reading._matrix(geometry)
    geometry.SetOrigin(*(matrix[:3, 3] + matrix[:3, 0]))  # origin moved by one i step
    shifted = reading._segment_mask(run, segment, geometry)
    assert np.array_equal(shifted[..., :-1], same[..., 1:])
