"""The module file driving real background runs through its own buttons: Sample -> nodes -> Results
panel and overlay; the sliders and threshold; cancel; scene close and a volume switch during a run."""

from __future__ import annotations

import numpy as np
import pytest
from module_helpers import SAMPLES, prop, wait_idle
from scene_helpers import scene_counts

from DiffSegUncertaintyLib.scene import colors, reading
from DiffSegUncertaintyLib.scene.runner import group_alive


def sample(w) -> None:
    w.ui.sampleButton.click()
    assert w.logic.scene.busy, prop(w.ui.statusLabel, "text")
    assert prop(w.ui.sampleButton, "text") == "Cancel"


def test_sample_fills_the_scene_and_the_results_panel(panel):
    import ctk
    import slicer
    w, (a, b) = panel["widget"], panel["volumes"]
    sample(w)
    wait_idle(w)
    assert ctk.ctkMessageBox.shown == [], ctk.ctkMessageBox.shown  # no dialog on a good run
    run = w.lastRun
    assert run is not None, prop(w.ui.statusLabel, "text")
    assert run.input_volume is a and len(run.hypothesis_segment_ids) == SAMPLES
    assert all(slicer.mrmlScene.GetNodeByID(n.GetID()) for n in run.nodes())
    assert prop(w.ui.sampleButton, "text") == f"Sample {SAMPLES} hypotheses"
    assert prop(w.ui.progressBar, "value") == 100
    assert w.ui.resultsCollapsibleButton.isEnabled() and w.ui.exportButton.isEnabled()
    summary = prop(w.ui.summaryLabel, "text")
    mm3 = np.array([h["foreground_mm3"] for h in run.summary["hypotheses"]])
    assert f"{mm3.mean():.1f} \u00b1 {mm3.std():.1f} mm\u00b3" in summary and "device cpu" in summary
    # overlay: the run's volume under the entropy map in every slice view, low doubt transparent
    for _, composite in panel["views"].values():
        assert composite.GetBackgroundVolumeID() == a.GetID()
        assert composite.GetForegroundVolumeID() == run.maps["entropy"].GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(reading.DEFAULT_OPACITY)
    display = run.maps["entropy"].GetDisplayNode()
    assert display.GetColorNodeID() == colors.SLICER_INFERNO_ID and display.GetApplyThreshold()
    # the consensus starts as the sampler made it (the spin box's special value 0)
    assert prop(w.ui.consensusSpinBox, "value") == 0


def test_browser_threshold_map_and_jump(panel):
    w = panel["widget"]
    sample(w)
    wait_idle(w)
    run = w.lastRun
    display = run.segmentation.GetDisplayNode()
    w.ui.hypothesisSlider.setProperty("value", 2)
    assert prop(w.ui.hypothesisSpinBox, "value") == 2
    assert [display.GetSegmentVisibility(s) for s in run.hypothesis_segment_ids] == [False, True, False]
    w.ui.hypothesisSpinBox.setProperty("value", 0)
    assert prop(w.ui.hypothesisSlider, "value") == 0
    assert all(display.GetSegmentVisibility(s) for s in run.hypothesis_segment_ids)

    votes = reading.hypothesis_count(run)
    sampler = reading.consensus_mask(run)
    w.ui.consensusSpinBox.setProperty("value", SAMPLES)  # all agree: the intersection
    assert f"{int((votes >= SAMPLES).sum())} voxels" in prop(w.ui.statusLabel, "text")
    assert np.array_equal(reading.consensus_mask(run), votes >= SAMPLES)
    assert np.array_equal(reading.hypothesis_count(run), votes)  # hypotheses untouched
    w.ui.consensusSpinBox.setProperty("value", 0)  # back to the sampler's own
    assert np.array_equal(reading.consensus_mask(run), sampler)

    w.ui.mapComboBox.setProperty("currentIndex", 2)  # variance: its own default threshold (0.1 of 0.25)
    assert prop(w.ui.thresholdSpinBox, "value") == pytest.approx(0.025)
    red, composite = panel["views"]["Red"]
    assert composite.GetForegroundVolumeID() == run.maps["variance"].GetID()
    w.ui.opacitySlider.setProperty("value", 30)
    assert composite.GetForegroundOpacity() == pytest.approx(0.3)
    w.ui.thresholdSpinBox.setProperty("value", 0.1)
    assert run.maps["variance"].GetDisplayNode().GetLowerThreshold() == pytest.approx(0.1)

    w.ui.show3DCheckBox.setProperty("checked", True)
    assert display.GetVisibility3D() and run.segmentation.GetSegmentation().ContainsRepresentation(
        "Closed surface")

    first = w.doubtful[0]
    w.ui.nextDoubtButton.click()
    m = red.GetSliceToRAS()
    assert [m.GetElement(r, 3) for r in range(3)] == pytest.approx(list(first.ras), abs=1e-5)


def test_switching_the_volume_during_a_run_keeps_the_sampled_one(panel):
    w, (a, b) = panel["widget"], panel["volumes"]
    sample(w)
    w.ui.inputVolumeSelector.setCurrentNode(b)  # the reader moves on to the next case
    wait_idle(w)
    run = w.lastRun
    assert run is not None and run.input_volume is a
    assert run.segmentation.GetNodeReference(run.segmentation.GetReferenceImageGeometryReferenceRole()) is a
    for _, composite in panel["views"].values():
        assert composite.GetBackgroundVolumeID() == a.GetID()


def test_cancel_leaves_the_scene_as_it_was(panel):
    import slicer
    w = panel["widget"]
    before = scene_counts(slicer.mrmlScene)
    sample(w)
    runner = w.logic.scene._runner
    w.ui.sampleButton.click()  # Cancel
    assert not w.logic.scene.busy and w.lastRun is None
    assert w.lastOutcome.status == "cancelled"
    assert scene_counts(slicer.mrmlScene) == before
    assert not group_alive(runner.process.pid)
    assert prop(w.ui.sampleButton, "text") == f"Sample {SAMPLES} hypotheses"


def test_closing_the_scene_during_a_run_cancels_it(panel):
    import slicer
    w = panel["widget"]
    sample(w)
    runner = w.logic.scene._runner
    slicer.mrmlScene.Clear(0)  # File > Close Scene: StartCloseEvent, EndCloseEvent
    assert not w.logic.scene.busy and w.lastOutcome.status == "cancelled"
    assert not group_alive(runner.process.pid)
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0
    # the panel is usable on the new scene: a fresh parameter node, nothing selected
    node = slicer.mrmlScene.GetSingletonNode("DiffSegUncertainty", "vtkMRMLScriptedModuleNode")
    assert node is not None and w.ui.inputVolumeSelector.currentNode() is None
    w.ui.sampleButton.click()  # no volume: refused with a message, nothing starts
    assert not w.logic.scene.busy and "Select an input volume" in prop(w.ui.statusLabel, "text")
