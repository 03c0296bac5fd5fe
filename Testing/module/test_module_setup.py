"""The module file under the stand-in's copies of Slicer's base-class constructors: it loads, its logic
and widget construct, the panel wires up, and the parameter node lives in the scene."""

from __future__ import annotations

import pytest
from module_helpers import prop



def test_module_logic_and_widget_construct(panel):
    import slicer
    w, loaded = panel["widget"], panel["loaded"]
    from standin.ScriptedLoadableModule import ScriptedLoadableModuleLogic
    from DiffSegUncertaintyLib.scene.logic import DiffSegUncertaintyLogic as SceneLogic
    assert isinstance(w.logic, ScriptedLoadableModuleLogic) and isinstance(w.logic.scene, SceneLogic)
    assert w.logic.scene.scene is slicer.mrmlScene
    assert loaded.module.DiffSegUncertainty  # the module class
    assert slicer.modules.diffseguncertainty.title == "DiffSeg Uncertainty"
    assert "DiffSegUncertainty" in slicer.selfTests
    node = slicer.mrmlScene.GetSingletonNode("DiffSegUncertainty", "vtkMRMLScriptedModuleNode")
    assert node is not None and node.GetAttribute("ModuleName") == "DiffSegUncertainty"
    assert node.GetNodeReference("inputVolume") is panel["volumes"][0]
    assert node.GetParameter("samples") == "3" and node.GetParameter("modelName") == "tiny3d"
    assert prop(w.ui.sampleButton, "text") == "Sample 3 hypotheses"
    assert "HSRDIFF" in prop(w.ui.cardLabel, "text").upper() and "{" not in prop(w.ui.cardLabel, "text")


def test_the_stand_in_catches_a_logic_that_inherits_the_scene_logic(slicer_app):
    """The defect this issue began with: under Slicer's constructor chain (super().__init__() first),
    a Logic inheriting both bases cannot be built. The stand-in must fail the same way."""
    from standin.ScriptedLoadableModule import ScriptedLoadableModuleLogic

    from DiffSegUncertaintyLib.scene.logic import DiffSegUncertaintyLogic as SceneLogic

    class InheritingLogic(ScriptedLoadableModuleLogic, SceneLogic):
        def __init__(self):
            ScriptedLoadableModuleLogic.__init__(self)
            SceneLogic.__init__(self, None)

    with pytest.raises(TypeError):
        InheritingLogic()


def test_channel_selectors_follow_the_card(panel, tmp_path):
    """A two-channel card gets one labelled selector per further channel, in the card's order, and the
    request lists them in that order (not scene order)."""
    from DiffSegUncertaintyLib.engine import testing
    w = panel["widget"]
    folder = testing.make_tiny_model_folder(tmp_path / "two", spatial_dims=3, in_channels=3)
    w.ui.modelSelector.addItem("two", str(folder))
    w.ui.modelSelector.setProperty("currentIndex", prop(w.ui.modelSelector, "count") - 1)
    labels = [prop(label, "text") for label, _ in w.channelSelectors]
    assert prop(w.ui.inputVolumeLabel, "text") == "channel 0:" and labels == ["channel 1:", "channel 2:"]
    a, b = panel["volumes"]
    w.channelSelectors[0][1].setCurrentNode(b)  # channel 1 = case B, channel 2 = case A
    w.channelSelectors[1][1].setCurrentNode(a)
    assert w.request().volumes == [a, b, a]


def test_place_roi_button_puts_the_models_box_on_the_clicked_point(panel):
    """'Place ROI': Slicer's place mode on a temporary point list; the click (a control point defined
    on it, as the slice view's markups widget does) becomes an ROI of the model's size there."""
    import slicer
    w, (a, _) = panel["widget"], panel["volumes"]
    w.ui.placeRoiButton.click()
    interaction = slicer.mrmlScene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    point = w.placingPoint
    selection = slicer.mrmlScene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
    assert selection.GetActivePlaceNodeID() == point.GetID()
    point.AddControlPointWorld([1.0, -2.0, 3.0])
    roi = w.ui.roiSelector.currentNode()
    assert roi is not None and roi.GetCenter() == pytest.approx([1.0, -2.0, 3.0])
    card = w.currentCard()
    k, j, i = card["input"]["size"]
    sx, sy, sz = a.GetSpacing()
    assert roi.GetSize() == pytest.approx((i * sx, j * sy, k * sz))
    assert point.GetScene() is None and interaction.GetCurrentInteractionMode() == interaction.ViewTransform
    node = slicer.mrmlScene.GetSingletonNode("DiffSegUncertainty", "vtkMRMLScriptedModuleNode")
    assert node.GetNodeReference("roi") is roi  # saved with the scene
    assert w.request().point == pytest.approx((1.0, -2.0, 3.0))  # the run grows slices from the click


def test_an_unplaced_roi_is_refused_before_anything_starts(panel):
    import ctk
    import slicer
    w = panel["widget"]
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "new ROI")  # "Create new ROI"
    w.ui.roiSelector.setCurrentNode(roi)
    w.ui.sampleButton.click()
    assert not w.logic.scene.busy
    assert "has not been placed" in ctk.ctkMessageBox.shown[-1]["text"]


def test_precision_is_automatic_unless_full_precision_is_ticked(panel):
    """Issue 16: the panel asks for the fast precision by default ("auto": bf16 where the hardware runs
    it natively) and for fp32 only when the user ticks the box; the choice reaches the command line."""
    from DiffSegUncertaintyLib.engine import cli
    w = panel["widget"]
    assert not w.ui.fullPrecisionCheckBox.property("checked")
    assert w.request().precision == "auto"
    w.ui.fullPrecisionCheckBox.setProperty("checked", True)
    request = w.request()
    assert request.precision == "fp32"
    cmd = w.logic.scene.command(request, ["in.nrrd"], "out")
    assert cli.build_parser().parse_args(cmd[3:]).precision == "fp32"


def test_sampling_noise_reaches_the_command_and_the_scene(panel):
    """Issue 14: the panel's sampling noise is the card's eta unless the user picks one; the pick reaches
    `diffseg sample --eta` and is saved with the scene's parameter node."""
    from DiffSegUncertaintyLib.engine import cli
    w = panel["widget"]
    parse = cli.build_parser().parse_args
    assert w.request().eta is None
    assert parse(w.logic.scene.command(w.request(), ["in.nrrd"], "out")[3:]).eta is None
    w.ui.noiseComboBox.setProperty("currentIndex", 3)
    request = w.request()
    assert request.eta == 1.0 and w._parameterNode.noise == 3
    assert parse(w.logic.scene.command(request, ["in.nrrd"], "out")[3:]).eta == 1.0
    w._parameterNode.noise = 2
    w.updateGUIFromParameterNode()
    assert w.ui.noiseComboBox.property("currentIndex") == 2 and w.request().eta == 0.5
