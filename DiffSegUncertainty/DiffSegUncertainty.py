"""DiffSegUncertainty: many plausible segmentations of a lesion and a map of where they disagree.

The module file only wires the .ui to the scene layer (DiffSegUncertaintyLib.scene), which holds all the
behaviour and is tested headless; the sampling itself runs in a background process (the ``diffseg``
command), so the GUI stays responsive and Cancel stops it at once.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
import tempfile

import qt
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from DiffSegUncertaintyLib.scene.inputs import InputProblem, SampleRequest
from DiffSegUncertaintyLib.scene.logic import DiffSegUncertaintyLogic as SceneLogic
from DiffSegUncertaintyLib.scene.logic import RunOutcome
from DiffSegUncertaintyLib.scene.progress import Progress
from DiffSegUncertaintyLib.scene.results import show_in_slice_views

SETTINGS = "DiffSegUncertainty/"
DEVICE_CHOICES = ("auto", "cuda", "cpu")  # deviceComboBox order: Auto, GPU, CPU
BUNDLED_WITH_SLICER = {"numpy", "simpleitk"}  # never reinstalled: replacing them can break Slicer


class DiffSegUncertainty(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "DiffSeg Uncertainty"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["DiffSegUncertainty contributors"]
        self.parent.helpText = """
Draws many plausible segmentations ("hypotheses") of a structure with a diffusion model and shows where
they disagree: a consensus segment, one segment per hypothesis (hidden at first), entropy, mutual
information, variance and mean-probability maps, and a table of each hypothesis' volume.
Two methods are implemented: PGRD (Prior-Guided Residual Diffusion) and HSRDiff (Hierarchical
Self-Regulation Diffusion). Sampling runs in the background; press the button again to cancel.
<b>Research software: the outputs are not meant for diagnosis or treatment decisions on their own.</b>
The extension's documentation (docs/slicer.md) describes the outputs and the settings.
"""
        self.parent.acknowledgementText = """
Implements PGRD: F. Mao, B. Wu, Y. Jiang, H. Xue, Y. Tang, H. Zhang, "Prior-Guided Residual Diffusion:
Calibrated and Efficient Medical Image Segmentation", and HSRDiff: H. Yang, C. Yang, Z. An, L. Huang,
Y. Xu, "HSRDiff: A Hierarchical Self-Regulation Diffusion Model for Stochastic Semantic Segmentation",
AAAI. The module's design follows Kitware's SlicerNNUnet and SlicerMONAIAuto3DSeg.
"""


class DiffSegUncertaintyLogic(ScriptedLoadableModuleLogic, SceneLogic):
    """The scene layer's logic on Slicer's scene, run with Slicer's own Python (PythonSlicer)."""

    def __init__(self, models_dirs=None):
        ScriptedLoadableModuleLogic.__init__(self)
        SceneLogic.__init__(self, slicer.mrmlScene,
                            python_executable=shutil.which("PythonSlicer") or sys.executable,
                            models_dirs=models_dirs)

    @staticmethod
    def ensureDependencies(ask: bool = True) -> bool:
        """torch through PyTorchUtils (it picks the CUDA build), the rest from requirements.txt; each only
        after the user agreed, never at import time. False when the user declined or install failed."""
        if importlib.util.find_spec("torch") is None:
            if ask and not slicer.util.confirmOkCancelDisplay(
                    "DiffSeg Uncertainty needs PyTorch, which is not installed yet. Install it now? "
                    "This can take several minutes."):
                return False
            import PyTorchUtils
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                slicer.util.errorDisplay("PyTorch could not be installed; see the Python console.")
                return False
        requirements = os.path.join(os.path.dirname(__file__), "Resources", "requirements.txt")
        if hasattr(slicer, "pydeps"):  # Slicer >= 5.11
            reqs = [r for r in slicer.pydeps.load_requirements(requirements)
                    if r.name.lower() not in BUNDLED_WITH_SLICER]
            if slicer.pydeps.pip_check(reqs):
                return True
            if ask and not slicer.util.confirmOkCancelDisplay(
                    "DiffSeg Uncertainty needs a few Python packages (MONAI, safetensors, einops, ...). Install them?"):
                return False
            slicer.pydeps.pip_ensure(reqs, skip_packages=["torch", "SimpleITK", "numpy"],
                                     requester="DiffSegUncertainty")
            return True
        if all(importlib.util.find_spec(m) for m in ("monai", "safetensors", "tqdm", "scipy", "einops")):
            return True
        if ask and not slicer.util.confirmOkCancelDisplay(
                "DiffSeg Uncertainty needs a few Python packages (MONAI, safetensors, einops, ...). Install them?"):
            return False
        slicer.util.pip_install(f'-r "{requirements}"')
        return True


class DiffSegUncertaintyWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.lastRun = None
        self.timer = qt.QTimer()
        self.timer.setInterval(200)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DiffSegUncertainty.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        settings = qt.QSettings()
        folder = settings.value(SETTINGS + "ModelsFolder", "")
        self.logic = DiffSegUncertaintyLogic(models_dirs=[folder] if folder else [])
        self.logic.progressChanged.connect(self.onProgress)
        self.logic.finished.connect(self.onFinished)
        if folder:
            self.ui.modelsFolderButton.directory = folder
        self.ui.deviceComboBox.currentIndex = int(settings.value(SETTINGS + "Device", 0))
        self.ui.fastCheckBox.checked = str(settings.value(SETTINGS + "Fast", "false")).lower() == "true"
        self.ui.exportDirectoryButton.directory = settings.value(SETTINGS + "ExportFolder", qt.QDir.homePath())

        self.timer.timeout.connect(self.logic.poll)
        self.ui.sampleButton.connect("clicked(bool)", self.onSampleButton)
        self.ui.samplesSpinBox.connect("valueChanged(int)", self.updateButton)
        self.ui.modelSelector.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.modelsFolderButton.connect("directoryChanged(QString)", self.onModelsFolderChanged)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.refreshModels()
        self.updateButton()

    def cleanup(self):
        self.timer.stop()
        if self.logic is not None:
            self.logic.cancel()
        self.removeObservers()

    def onSceneStartClose(self, caller, event):
        self.logic.cancel()  # its input is about to go away
        self.lastRun = None
        self.ui.exportButton.enabled = False

    # -- models ----------------------------------------------------------------------------------
    def refreshModels(self):
        self.ui.modelSelector.clear()
        for name, folder in sorted(self.logic.models().items()):
            self.ui.modelSelector.addItem(name, str(folder))
        self.onModelChanged()

    def onModelsFolderChanged(self, folder):
        qt.QSettings().setValue(SETTINGS + "ModelsFolder", folder)
        self.logic.models_dirs = [folder]
        self.refreshModels()

    def onModelChanged(self, index=None):
        folder = self.ui.modelSelector.currentData
        if not folder:
            self.ui.cardLabel.text = "No model found: choose a models folder."
            return
        try:
            self.ui.cardLabel.text = self.logic.card_facts(self.logic.card(folder))
        except InputProblem as e:
            self.ui.cardLabel.text = str(e)

    # -- a run -----------------------------------------------------------------------------------
    def updateButton(self, *args):
        busy = self.logic is not None and self.logic.busy
        self.ui.sampleButton.text = "Cancel" if busy else f"Sample {self.ui.samplesSpinBox.value} hypotheses"

    def request(self) -> SampleRequest:
        return SampleRequest(
            input_volume=self.ui.inputVolumeSelector.currentNode(),
            extra_volumes=list(self.ui.extraVolumesSelector.checkedNodes()),
            roi=self.ui.roiSelector.currentNode(),
            model_folder=self.ui.modelSelector.currentData,
            samples=self.ui.samplesSpinBox.value,
            steps=self.ui.stepsSpinBox.value or None,
            seed=self.ui.seedSpinBox.value,
            device=DEVICE_CHOICES[self.ui.deviceComboBox.currentIndex],
            precision="bf16" if self.ui.fastCheckBox.checked else "fp32")

    def onSampleButton(self):
        if self.logic.busy:
            self.logic.cancel()
            return
        qt.QSettings().setValue(SETTINGS + "Device", self.ui.deviceComboBox.currentIndex)
        qt.QSettings().setValue(SETTINGS + "Fast", "true" if self.ui.fastCheckBox.checked else "false")
        request = self.request()
        try:
            self.logic.validate(request)  # tell about bad inputs before offering installs
        except InputProblem as e:
            slicer.util.errorDisplay(str(e), windowTitle="DiffSeg Uncertainty")
            return
        if not self.logic.ensureDependencies():
            return
        try:
            self.logic.start(request)
        except InputProblem as e:
            slicer.util.errorDisplay(str(e), windowTitle="DiffSeg Uncertainty")
            return
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = "Starting the sampler..."
        self.timer.start()
        self.updateButton()

    def onProgress(self, progress: Progress):
        self.ui.progressBar.value = int(100 * progress.fraction)
        self.ui.statusLabel.text = progress.text()

    def onFinished(self, outcome: RunOutcome):
        self.timer.stop()
        self.updateButton()
        self.ui.statusLabel.text = outcome.message
        if outcome.status == "done":
            self.ui.progressBar.value = 100
            self.lastRun = outcome.run
            self.ui.exportButton.enabled = True
            volume = self.ui.inputVolumeSelector.currentNode()
            show_in_slice_views(slicer.mrmlScene, volume, outcome.run.maps["entropy"], 0.5)
        elif outcome.status == "failed":
            self.ui.progressBar.value = 0
            logging.error(outcome.log)
            slicer.util.errorDisplay(outcome.message, windowTitle="DiffSeg Uncertainty",
                                     detailedText=outcome.log)
        else:
            self.ui.progressBar.value = 0

    def onExport(self):
        folder = self.ui.exportDirectoryButton.directory
        qt.QSettings().setValue(SETTINGS + "ExportFolder", folder)
        try:
            written = self.logic.export(self.lastRun, folder)
        except Exception as e:  # noqa: BLE001 - a message, not a traceback dialog
            slicer.util.errorDisplay(f"Export failed: {e}", windowTitle="DiffSeg Uncertainty")
            return
        self.ui.statusLabel.text = f"Exported {len(written)} files to {folder}."


class DiffSegUncertaintyTest(ScriptedLoadableModuleTest):
    """The headless suite's flow inside real Slicer: a tiny untrained model, a small volume, one run."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SampleAndExport()

    def test_SampleAndExport(self):
        self.delayDisplay("Installing dependencies if needed")
        self.assertTrue(DiffSegUncertaintyLogic.ensureDependencies(ask=False))
        from DiffSegUncertaintyLib.engine import testing

        work = tempfile.mkdtemp(prefix="DiffSegTest-")
        model = testing.make_tiny_model_folder(os.path.join(work, "tiny"), spatial_dims=3)
        path = testing.write_volume(os.path.join(work, "input.nrrd"), testing.blob_array((12, 16, 16))[0],
                                    **testing.ORIENTATIONS["oblique"])
        volume = slicer.util.loadVolume(str(path))

        self.delayDisplay("Sampling 2 hypotheses")
        logic = DiffSegUncertaintyLogic()
        nodes_before = slicer.mrmlScene.GetNumberOfNodes()
        logic.start(SampleRequest(volume, model, samples=2, steps=2, device="cpu"))
        outcome = logic.wait(timeout=300)
        self.assertEqual(outcome.status, "done", outcome.log)
        self.assertGreater(slicer.mrmlScene.GetNumberOfNodes(), nodes_before)
        run = outcome.run
        self.assertEqual(len(run.hypothesis_segment_ids), 2)
        for node in run.maps.values():
            self.assertEqual(node.GetImageData().GetDimensions(), volume.GetImageData().GetDimensions())
        entropy_display = run.maps["entropy"].GetDisplayNode()
        self.assertEqual(entropy_display.GetColorNode().GetName(), "Inferno")

        self.delayDisplay("Exporting")
        written = logic.export(run, os.path.join(work, "export"))
        self.assertTrue(all(os.path.isfile(p) for p in written))
        shutil.rmtree(work, ignore_errors=True)
        self.delayDisplay("Test passed")
