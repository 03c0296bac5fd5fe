"""DiffSegUncertainty: many plausible segmentations of a lesion and a map of where they disagree.

The module file only wires the .ui to the scene layer (DiffSegUncertaintyLib.scene), which holds all the
behaviour and is tested headless on real MRML; the sampling itself runs in a background process (the
``diffseg sample`` command), so the GUI stays responsive and Cancel stops it at once.

Written against Slicer 5.8 .. main (docs/slicer.md lists every framework call and where it was checked):
the logic *holds* the scene layer's logic (ScriptedLoadableModuleLogic.__init__ calls super().__init__(),
so a second base class whose constructor needs a scene would break it), the parameters live in a
parameterNodeWrapper node (saved with the scene), and Qt is used in the way PythonQt and the template do
(properties as attributes, ``connect("signal(args)", slot)``).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import traceback

import qt
import slicer
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode

from DiffSegUncertaintyLib.scene import reading
from DiffSegUncertaintyLib.scene.inputs import InputProblem, SampleRequest
from DiffSegUncertaintyLib.scene.logic import DiffSegUncertaintyLogic as SceneLogic
from DiffSegUncertaintyLib.scene.logic import RunOutcome
from DiffSegUncertaintyLib.scene.progress import Progress

TITLE = "DiffSeg Uncertainty"
SETTINGS = "DiffSegUncertainty/"
DEVICE_CHOICES = ("auto", "cuda", "cpu")  # deviceComboBox order: Auto, GPU, CPU
ETA_CHOICES = (None, 0.0, 0.5, 1.0)  # noiseComboBox order: model default, none, half, full
MIN_TORCH = "2.8"  # MONAI 1.6.1 declares torch>=2.8.0 (its METADATA); the engine uses nothing newer
# torch >= 2.8, MONAI 1.6 and the engine need Python >= 3.10: Slicer 5.10 and later (Python 3.12);
# Slicer 5.8 has Python 3.9 (SuperBuild: Slicer_REQUIRED_PYTHON_VERSION "3.9.10") and is told so
MIN_PYTHON = (3, 10)
# Slicer's own packages: never installed or upgraded by this module (pinned to what Slicer has while
# pip runs, so no dependency can pull another version either); torch is PyTorchUtils' business.
SLICER_OWNED = ("numpy", "scipy", "SimpleITK", "torch")
MAP_ROLES = ("entropy", "mutual_information", "variance", "mean_probability")


class DiffSegUncertainty(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = TITLE
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["DiffSegUncertainty contributors"]
        self.parent.helpText = """
Draws many plausible segmentations ("hypotheses") of a structure with a diffusion model and shows where
they disagree: a consensus segment ("at least k of N agree"), one segment per hypothesis, entropy,
mutual information, variance and mean-probability maps, and each hypothesis' volume.
Two methods: PGRD (Prior-Guided Residual Diffusion) and HSRDiff (Hierarchical Self-Regulation
Diffusion). Sampling runs in the background; press the button again to cancel.
<b>Research software: the outputs are not meant for diagnosis or treatment decisions on their own.</b>
The extension's documentation (docs/slicer.md) describes installing, running, reading and exporting.
"""
        self.parent.acknowledgementText = """
Implements PGRD: F. Mao, B. Wu, Y. Jiang, H. Xue, Y. Tang, H. Zhang, "Prior-Guided Residual Diffusion:
Calibrated and Efficient Medical Image Segmentation", and HSRDiff: H. Yang, C. Yang, Z. An, L. Huang,
Y. Xu, "HSRDiff: A Hierarchical Self-Regulation Diffusion Model for Stochastic Semantic Segmentation",
AAAI. The module's design follows Kitware's SlicerNNUnet and SlicerMONAIAuto3DSeg.
"""


@parameterNodeWrapper
class DiffSegUncertaintyParameterNode:
    """The choices saved with the scene (the model by name: folders differ between computers)."""

    inputVolume: vtkMRMLScalarVolumeNode
    roi: vtkMRMLMarkupsROINode
    modelName: str = ""
    samples: int = 16
    steps: int = 0
    noise: int = 0  # index into ETA_CHOICES (0: the card's eta)
    seed: int = 0


def pythonVersion() -> tuple:
    return tuple(sys.version_info[:2])


def pythonProblem() -> str | None:
    """Why this Slicer cannot run the sampler, before anything is installed; None when it can."""
    if pythonVersion() >= MIN_PYTHON:
        return None
    have = ".".join(map(str, pythonVersion()))
    return (f"{TITLE} needs Slicer 5.10 or later: its sampler needs Python 3.10 or newer (PyTorch 2.8 and "
            f"MONAI 1.6 do), and this Slicer has Python {have}. Nothing was installed.")


def pythonSlicer() -> str:
    """Slicer's Python for the background process (PythonSlicer is on PATH inside Slicer)."""
    return shutil.which("PythonSlicer") or sys.executable


class DiffSegUncertaintyLogic(ScriptedLoadableModuleLogic):
    """Slicer-side logic: holds the scene layer's logic (``self.scene``) and installs dependencies."""

    def __init__(self, models_dirs=None, runner_factory=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        kwargs = {"runner_factory": runner_factory} if runner_factory else {}
        self.scene = SceneLogic(slicer.mrmlScene, python_executable=pythonSlicer(),
                                models_dirs=models_dirs, **kwargs)

    def getParameterNode(self):
        return DiffSegUncertaintyParameterNode(super().getParameterNode())

    # -- first use -------------------------------------------------------------------------------
    @staticmethod
    def requirementsPath() -> str:
        return os.path.join(os.path.dirname(__file__), "Resources", "requirements.txt")

    @staticmethod
    def requirements(path: str | None = None) -> list[str]:
        """The lines of Resources/requirements.txt (lower bounds only; no Slicer-owned package)."""
        with open(path or DiffSegUncertaintyLogic.requirementsPath()) as f:
            lines = [ln.split("#", 1)[0].strip() for ln in f]
        return [ln for ln in lines if ln and not ln.startswith("-")]

    @staticmethod
    def missingRequirements(requirements: list[str]) -> list[str]:
        from packaging.requirements import Requirement
        missing = []
        for line in requirements:
            req = Requirement(line)
            try:
                installed = importlib.metadata.version(req.name)
            except importlib.metadata.PackageNotFoundError:
                missing.append(line)
                continue
            if req.specifier and not req.specifier.contains(installed, prereleases=True):
                missing.append(line)
        return missing

    @staticmethod
    def constraintsFile(folder: str) -> str:
        """A pip constraints file pinning Slicer's own packages to the versions installed now."""
        pins = []
        for name in SLICER_OWNED:
            try:
                pins.append(f"{name}=={importlib.metadata.version(name)}")
            except importlib.metadata.PackageNotFoundError:
                pass
        path = os.path.join(folder, "slicer-constraints.txt")
        with open(path, "w") as f:
            f.write("\n".join(pins) + "\n")
        return path


class DependencyProblem(RuntimeError):
    """First use could not complete; ``log`` is what the user needs to see (pip's output, a traceback)."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


def ensureTorch(ask: bool = True) -> None:
    """torch >= MIN_TORCH through the PyTorch extension (it picks the CUDA build for the GPU)."""
    from packaging.version import Version
    try:
        installed = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed is not None:
        if Version(installed.split("+")[0]) < Version(MIN_TORCH):
            raise DependencyProblem(
                f"PyTorch {installed} is installed, but {TITLE} needs {MIN_TORCH} or newer. Open the "
                "'PyTorch Utils' module, uninstall PyTorch, restart Slicer and run again.")
        return
    try:
        import PyTorchUtils
    except ImportError:
        raise DependencyProblem(
            f"{TITLE} needs the PyTorch extension. Open View > Extensions Manager, install 'PyTorch', "
            "restart Slicer, and press Sample again.") from None
    try:
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=ask, torchVersionRequirement=f">={MIN_TORCH}")
    except Exception as e:  # noqa: BLE001 - network, proxy/SSL, pip: all go to the user with the log
        raise DependencyProblem(f"PyTorch could not be installed: {e}", traceback.format_exc()) from None
    if torch is None:
        raise DependencyProblem(f"PyTorch was not installed, so {TITLE} cannot run. Press Sample again "
                                "to be asked once more.")


def ensurePackages(requirements: list[str], ask: bool = True) -> None:
    """The other packages: ``slicer.packaging.pip_ensure`` where Slicer has it (5.12+), else pip of only
    what is missing; Slicer's numpy, scipy, SimpleITK and torch are pinned by a constraints file."""
    missing = DiffSegUncertaintyLogic.missingRequirements(requirements)
    if not missing:
        return
    folder = tempfile.mkdtemp(prefix="DiffSeg-pip-")
    try:
        constraints = DiffSegUncertaintyLogic.constraintsFile(folder)
        try:
            import slicer.packaging as packaging  # Slicer >= 5.12 (Base/Python/slicer/packaging.py)
        except ImportError:
            packaging = None
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            try:
                packaging.pip_ensure(missing, constraints=constraints, prompt_install=ask,
                                     requester="DiffSegUncertainty")
            except RuntimeError as e:
                if "declined" in str(e).lower():
                    raise DependencyProblem(f"The packages were not installed, so {TITLE} cannot run: "
                                            + ", ".join(missing)) from None
                raise DependencyProblem(f"Installing {', '.join(missing)} failed: {e}",
                                        traceback.format_exc()) from None
            except Exception as e:  # noqa: BLE001 - CalledProcessError and network errors
                log = getattr(e, "output", None) or traceback.format_exc()
                raise DependencyProblem(f"Installing {', '.join(missing)} failed: {e}", str(log)) from None
            return
        if ask and not slicer.util.confirmOkCancelDisplay(
                f"{TITLE} needs these Python packages, which are not installed yet:\n\n" + "\n".join(missing)
                + "\n\nInstall them now? This changes Slicer's Python environment; Slicer's own numpy, "
                "scipy, SimpleITK and PyTorch are kept as they are.", windowTitle=TITLE):
            raise DependencyProblem(f"The packages were not installed, so {TITLE} cannot run: "
                                    + ", ".join(missing))
        command = [pythonSlicer(), "-m", "pip", "install", "--upgrade-strategy", "only-if-needed",
                   "-c", constraints, *missing]
        slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            done = subprocess.run(command, capture_output=True, text=True, check=False)
        except OSError as e:
            raise DependencyProblem(f"pip could not be started ({command[0]}): {e}") from None
        finally:
            slicer.app.restoreOverrideCursor()
        if done.returncode != 0:
            raise DependencyProblem(
                f"Installing {', '.join(missing)} failed (pip exit code {done.returncode}). A proxy or "
                "certificate problem shows in the log below; see docs/slicer.md for offline install.",
                f"$ {' '.join(command)}\n{done.stdout}\n{done.stderr}")
        still = DiffSegUncertaintyLogic.missingRequirements(requirements)
        if still:
            raise DependencyProblem(f"pip finished but {', '.join(still)} is still missing; restart Slicer.",
                                    done.stdout + done.stderr)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class DiffSegUncertaintyWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._updatingGui = False
        self.channelSelectors = []    # one per input channel after the first, in the card's order
        self.lastRun = None           # RunNodes of the last finished run (its own volume inside)
        self.lastOutcome = None
        self.hypothesisCount = None   # votes per voxel of lastRun, for the consensus threshold
        self.samplerConsensus = None  # lastRun's consensus as the sampler made it (threshold 0 restores it)
        self.doubtful = []            # most-disagreeing slices of lastRun
        self.doubtIndex = 0
        self.placingPoint = None      # the temporary point list while "Place ROI" waits for a click
        self.timer = qt.QTimer()
        self.timer.interval = 200  # ms; a Qt property, set as PythonQt does

    # -- set-up ----------------------------------------------------------------------------------
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DiffSegUncertainty.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        settings = qt.QSettings()
        folder = settings.value(SETTINGS + "ModelsFolder", "") or ""
        self.logic = DiffSegUncertaintyLogic(models_dirs=[folder] if folder else [])
        self.logic.scene.progressChanged.connect(self.onProgress)
        self.logic.scene.finished.connect(self.onFinished)
        if folder:
            self.ui.modelsFolderButton.directory = folder
        self.ui.deviceComboBox.currentIndex = int(settings.value(SETTINGS + "Device", 0) or 0)
        self.ui.fullPrecisionCheckBox.checked = str(settings.value(SETTINGS + "FullPrecision", "false")).lower() == "true"
        self.ui.exportDirectoryButton.directory = settings.value(SETTINGS + "ExportFolder", qt.QDir.homePath())
        for role in MAP_ROLES:
            self.ui.mapComboBox.addItem(reading.MAP_LABELS[role], role)
        self.ui.mapComboBox.addItem("None", "")

        self.timer.timeout.connect(self.logic.scene.poll)
        self.ui.sampleButton.clicked.connect(self.onSampleButton)
        self.ui.samplesSpinBox.valueChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.stepsSpinBox.valueChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.noiseComboBox.currentIndexChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.seedSpinBox.valueChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.inputVolumeSelector.currentNodeChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.roiSelector.currentNodeChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.modelSelector.currentIndexChanged.connect(self.onModelChanged)
        self.ui.modelsFolderButton.directoryChanged.connect(self.onModelsFolderChanged)
        self.ui.placeRoiButton.clicked.connect(self.onPlaceRoi)
        self.ui.exportButton.clicked.connect(self.onExport)
        self.ui.hypothesisSlider.valueChanged.connect(self.onHypothesis)
        self.ui.hypothesisSpinBox.valueChanged.connect(self.onHypothesis)
        self.ui.consensusSpinBox.valueChanged.connect(self.onConsensusThreshold)
        self.ui.mapComboBox.currentIndexChanged.connect(self.onMapChosen)
        self.ui.opacitySlider.valueChanged.connect(self.onMapChanged)
        self.ui.thresholdSpinBox.valueChanged.connect(self.onMapChanged)
        self.ui.show3DCheckBox.toggled.connect(self.onShow3D)
        self.ui.nextDoubtButton.clicked.connect(self.onNextDoubt)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.refreshModels()
        self.initializeParameterNode()
        self.updateButton()
        self.ui.statusLabel.text = pythonProblem() or ""

    def cleanup(self) -> None:
        self.timer.stop()
        if self.logic is not None:
            self.logic.scene.cancel()
        self.stopPlacing()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.stopPlacing()

    def onSceneStartClose(self, caller=None, event=None) -> None:
        """The scene is about to go: the run's input with it. Cancel (the scene stays as the user left
        it), and forget the last run's nodes."""
        self.logic.scene.cancel()
        self.stopPlacing()
        self.setParameterNode(None)
        self.forgetRun()

    def onSceneEndClose(self, caller=None, event=None) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node --------------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first
        self.updateGUIFromParameterNode()

    def setParameterNode(self, parameterNode) -> None:
        self._parameterNode = parameterNode

    def updateGUIFromParameterNode(self) -> None:
        p = self._parameterNode
        if p is None:
            return
        self._updatingGui = True
        try:
            self.ui.inputVolumeSelector.setCurrentNode(p.inputVolume)
            self.ui.roiSelector.setCurrentNode(p.roi)
            self.ui.samplesSpinBox.value = p.samples
            self.ui.stepsSpinBox.value = p.steps
            self.ui.noiseComboBox.currentIndex = p.noise if 0 <= p.noise < len(ETA_CHOICES) else 0
            self.ui.seedSpinBox.value = p.seed
            index = self.ui.modelSelector.findText(p.modelName) if p.modelName else -1
            if index >= 0:
                self.ui.modelSelector.currentIndex = index
        finally:
            self._updatingGui = False
        self.updateButton()

    def updateParameterNodeFromGUI(self, *args) -> None:
        self.updateButton()
        p = self._parameterNode
        if p is None or self._updatingGui:
            return
        p.inputVolume = self.ui.inputVolumeSelector.currentNode()
        p.roi = self.ui.roiSelector.currentNode()
        p.samples = self.ui.samplesSpinBox.value
        p.steps = self.ui.stepsSpinBox.value
        p.noise = self.ui.noiseComboBox.currentIndex
        p.seed = self.ui.seedSpinBox.value
        p.modelName = self.ui.modelSelector.currentText

    # -- models ----------------------------------------------------------------------------------
    def refreshModels(self) -> None:
        self.ui.modelSelector.clear()
        for name, folder in sorted(self.logic.scene.models().items()):
            self.ui.modelSelector.addItem(name, str(folder))
        self.onModelChanged()

    def onModelsFolderChanged(self, folder) -> None:
        qt.QSettings().setValue(SETTINGS + "ModelsFolder", folder)
        self.logic.scene.models_dirs = [folder]
        self.refreshModels()

    def currentModelFolder(self) -> str | None:
        index = self.ui.modelSelector.currentIndex
        return self.ui.modelSelector.itemData(index) if index >= 0 else None

    def currentCard(self):
        folder = self.currentModelFolder()
        return self.logic.scene.card(folder) if folder else None

    def onModelChanged(self, index=None) -> None:
        try:
            card = self.currentCard()
        except InputProblem as e:
            self.ui.cardLabel.text = str(e)
            self.buildChannelSelectors(["input"])
            return
        if card is None:
            self.ui.cardLabel.text = "No model found: choose a models folder."
            self.buildChannelSelectors(["input"])
            return
        self.ui.cardLabel.text = reading.describe_model(card)
        self.buildChannelSelectors(self.logic.scene.channel_names(card))
        self.updateParameterNodeFromGUI()

    def buildChannelSelectors(self, names: list[str]) -> None:
        """The first channel is the input volume selector (labelled with the card's name for it); one
        more labelled selector per further channel, in the card's order."""
        self.ui.inputVolumeLabel.text = f"{names[0]}:" if names else "Input volume:"
        layout = self.ui.channelsWidget.layout()
        for label, selector in self.channelSelectors:
            layout.removeWidget(label)
            layout.removeWidget(selector)
            label.deleteLater()
            selector.deleteLater()
        self.channelSelectors = []
        for name in names[1:]:
            label = qt.QLabel(f"{name}:")
            selector = slicer.qMRMLNodeComboBox()
            selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
            selector.showChildNodeTypes = False
            selector.noneEnabled = True
            selector.addEnabled = False
            selector.removeEnabled = False
            selector.toolTip = f"The '{name}' volume (channel {len(self.channelSelectors) + 2} of the model)."
            selector.setMRMLScene(slicer.mrmlScene)
            selector.setCurrentNode(None)
            layout.addRow(label, selector)
            self.channelSelectors.append((label, selector))
        self.ui.channelsWidget.visible = bool(self.channelSelectors)

    # -- ROI helper ------------------------------------------------------------------------------
    def onPlaceRoi(self, checked=False) -> None:
        """Wait for one click in a slice view (Slicer's place mode on a temporary point list)."""
        self.stopPlacing()
        point = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "DiffSeg ROI centre")
        point.CreateDefaultDisplayNodes()
        selection = slicer.mrmlScene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
        selection.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsFiducialNode")
        selection.SetReferenceActivePlaceNodeID(point.GetID())  # also tells the mouse-mode toolbar
        interaction = slicer.mrmlScene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
        interaction.SetCurrentInteractionMode(interaction.Place)
        self.placingPoint = point
        self.addObserver(point, point.PointPositionDefinedEvent, self.onRoiCentrePlaced)
        self.ui.statusLabel.text = "Click the centre of the structure in a slice view."

    def onRoiCentrePlaced(self, caller=None, event=None) -> None:
        point = self.placingPoint
        if point is None or point.GetNumberOfControlPoints() == 0:
            return
        centre = [0.0, 0.0, 0.0]
        point.GetNthControlPointPositionWorld(0, centre)
        self.stopPlacing()
        volume = self.ui.inputVolumeSelector.currentNode()
        try:
            card = self.currentCard()
            if card is None or volume is None:
                raise InputProblem("Select a model and an input volume first.")
            roi = reading.place_model_roi(slicer.mrmlScene, card, volume, centre)
        except InputProblem as e:
            slicer.util.errorDisplay(str(e), windowTitle=TITLE)
            return
        self.ui.roiSelector.setCurrentNode(roi)
        size = roi.GetSize()
        self.ui.statusLabel.text = f"ROI placed: {size[0]:.0f} x {size[1]:.0f} x {size[2]:.0f} mm."

    def stopPlacing(self) -> None:
        point, self.placingPoint = self.placingPoint, None
        if point is None:
            return
        self.removeObserver(point, point.PointPositionDefinedEvent, self.onRoiCentrePlaced)
        interaction = slicer.mrmlScene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
        if interaction is not None:
            interaction.SetCurrentInteractionMode(interaction.ViewTransform)
        if point.GetScene() is not None:
            slicer.mrmlScene.RemoveNode(point)

    # -- a run -----------------------------------------------------------------------------------
    def updateButton(self, *args) -> None:
        busy = self.logic is not None and self.logic.scene.busy
        self.ui.sampleButton.text = "Cancel" if busy else f"Sample {self.ui.samplesSpinBox.value} hypotheses"

    def request(self) -> SampleRequest:
        """What the panel says now; the logic keeps this object with the run."""
        return SampleRequest(
            input_volume=self.ui.inputVolumeSelector.currentNode(),
            extra_volumes=[selector.currentNode() for _, selector in self.channelSelectors],
            roi=self.ui.roiSelector.currentNode(),
            point=reading.placed_point(self.ui.roiSelector.currentNode()),
            model_folder=self.currentModelFolder(),
            samples=self.ui.samplesSpinBox.value,
            steps=self.ui.stepsSpinBox.value or None,
            eta=ETA_CHOICES[self.ui.noiseComboBox.currentIndex],
            seed=self.ui.seedSpinBox.value,
            device=DEVICE_CHOICES[self.ui.deviceComboBox.currentIndex],
            precision="fp32" if self.ui.fullPrecisionCheckBox.checked else "auto")

    def showProblem(self, message: str, log: str = "") -> None:
        self.ui.statusLabel.text = message
        if log:
            slicer.util.errorDisplay(message, windowTitle=TITLE, detailedText=log)
        else:
            slicer.util.errorDisplay(message, windowTitle=TITLE)

    def onSampleButton(self, checked=False) -> None:
        if self.logic.scene.busy:
            self.logic.scene.cancel()
            return
        settings = qt.QSettings()
        settings.setValue(SETTINGS + "Device", self.ui.deviceComboBox.currentIndex)
        settings.setValue(SETTINGS + "FullPrecision", "true" if self.ui.fullPrecisionCheckBox.checked else "false")
        request = self.request()
        if any(v is None for v in request.extra_volumes):
            self.showProblem("Select a volume for every input channel of the model.")
            return
        problem = pythonProblem()
        if problem:
            self.showProblem(problem)
            return
        try:
            self.logic.scene.validate(request)  # bad inputs are told before any install is offered
        except InputProblem as e:
            self.showProblem(str(e))
            return
        try:
            ensureTorch()
            ensurePackages(DiffSegUncertaintyLogic.requirements())
        except DependencyProblem as e:
            self.showProblem(str(e), e.log)
            return
        try:
            self.logic.scene.start(request)
        except InputProblem as e:
            self.showProblem(str(e))
            return
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = "Starting the sampler..."
        self.timer.start()
        self.updateButton()

    def onProgress(self, progress: Progress) -> None:
        self.ui.progressBar.value = int(100 * progress.fraction)
        self.ui.statusLabel.text = progress.text()

    def onFinished(self, outcome: RunOutcome) -> None:
        self.timer.stop()
        self.updateButton()
        self.ui.statusLabel.text = outcome.message
        self.lastOutcome = outcome
        if outcome.status == "done":
            self.ui.progressBar.value = 100
            try:
                self.showRun(outcome.run, outcome.seconds)
            except Exception as e:  # noqa: BLE001 - the nodes are in the scene; say what the panel could not do
                self.showProblem(f"The run finished, but its results could not be shown in the panel: {e}",
                                 traceback.format_exc())
        elif outcome.status == "failed":
            self.ui.progressBar.value = 0
            logging.error(outcome.log)
            self.showProblem(outcome.message, outcome.log)
        else:
            self.ui.progressBar.value = 0

    # -- reading the result ----------------------------------------------------------------------
    def forgetRun(self) -> None:
        self.lastRun, self.hypothesisCount, self.doubtful, self.doubtIndex = None, None, [], 0
        self.samplerConsensus = None
        self.ui.exportButton.enabled = False
        self.ui.resultsCollapsibleButton.enabled = False
        self.ui.summaryLabel.text = "No run yet."

    def showRun(self, run, seconds=None) -> None:
        """Fill the Results box for a run; its own input volume is the background, whatever is
        selected in the panel now."""
        self.lastRun = run
        n = len(run.hypothesis_segment_ids)
        self.hypothesisCount = reading.hypothesis_count(run)
        one_class = len(run.consensus_segment_ids) == 1
        self.samplerConsensus = reading.consensus_mask(run) if one_class else None
        self.doubtful = reading.doubtful_slices(run)
        self.doubtIndex = 0
        self._updatingGui = True
        try:
            for widget in (self.ui.hypothesisSlider, self.ui.hypothesisSpinBox):
                widget.maximum = n
                widget.value = 0
            self.ui.consensusSpinBox.maximum = n
            self.ui.consensusSpinBox.suffix = f" of {n} hypotheses agree"
            self.ui.consensusSpinBox.value = 0  # the sampler's own consensus until the reader asks
            self.ui.consensusSpinBox.enabled = one_class
            self.ui.mapComboBox.currentIndex = 0
            self.ui.opacitySlider.value = int(100 * reading.DEFAULT_OPACITY)
            self.ui.thresholdSpinBox.value = reading.DEFAULT_LOWER_FRACTION * reading.map_range(
                "entropy", len(run.classes))
            self.ui.show3DCheckBox.checked = False
        finally:
            self._updatingGui = False
        self.ui.summaryLabel.text = reading.summary_text(run, seconds)
        self.ui.resultsCollapsibleButton.enabled = True
        self.ui.resultsCollapsibleButton.collapsed = False
        self.ui.exportButton.enabled = True
        self.ui.nextDoubtButton.enabled = bool(self.doubtful)
        self.onMapChanged()

    def onHypothesis(self, value) -> None:
        if self.lastRun is None or self._updatingGui:
            return
        self._updatingGui = True
        try:
            self.ui.hypothesisSlider.value = value
            self.ui.hypothesisSpinBox.value = value
        finally:
            self._updatingGui = False
        reading.show_hypothesis(self.lastRun, value)

    def onConsensusThreshold(self, value) -> None:
        if self.lastRun is None or self._updatingGui:
            return
        if value == 0:
            voxels = reading.write_consensus(self.lastRun, self.samplerConsensus, "sampler")
            self.ui.statusLabel.text = f"Consensus: the sampler's ({voxels} voxels, mean probability above 0.5)."
            return
        voxels = reading.set_consensus_threshold(self.lastRun, value, self.hypothesisCount)
        self.ui.statusLabel.text = f"Consensus: {voxels} voxels where at least {value} hypotheses agree."

    def onMapChosen(self, index=None) -> None:
        """A new map: its own default lower threshold (a tenth of its fixed scale), then show it."""
        if self.lastRun is None or self._updatingGui:
            return
        role = self.currentMapRole()
        self._updatingGui = True
        try:
            self.ui.thresholdSpinBox.value = (reading.DEFAULT_LOWER_FRACTION
                                              * reading.map_range(role, len(self.lastRun.classes))
                                              if role else 0.0)
        finally:
            self._updatingGui = False
        self.onMapChanged()

    def currentMapRole(self) -> str | None:
        return self.ui.mapComboBox.itemData(self.ui.mapComboBox.currentIndex) or None

    def onMapChanged(self, *args) -> None:
        """Overlay the chosen map on the run's own volume (not the panel's current selection)."""
        if self.lastRun is None or self._updatingGui:
            return
        reading.show_map(slicer.mrmlScene, self.lastRun, self.lastRun.input_volume, self.currentMapRole(),
                         opacity=self.ui.opacitySlider.value / 100.0, lower=self.ui.thresholdSpinBox.value,
                         classes=len(self.lastRun.classes))

    def onShow3D(self, on) -> None:
        if self.lastRun is not None and not self._updatingGui:
            reading.set_show_3d(self.lastRun, bool(on))

    def onNextDoubt(self, checked=False) -> None:
        if not self.doubtful:
            return
        target = self.doubtful[self.doubtIndex % len(self.doubtful)]
        self.doubtIndex += 1
        reading.jump_to(slicer.mrmlScene, target.ras)
        self.ui.statusLabel.text = (f"Slice {target.index} ({self.doubtIndex} of {len(self.doubtful)} with any "
                                    f"disagreement): summed entropy {target.score:.2f}.")

    def onExport(self, checked=False) -> None:
        folder = self.ui.exportDirectoryButton.directory
        qt.QSettings().setValue(SETTINGS + "ExportFolder", folder)
        try:
            written = self.logic.scene.export(self.lastRun, folder)
        except Exception as e:  # noqa: BLE001 - a message with the traceback, not only the console
            self.showProblem(f"Export failed: {e}", traceback.format_exc())
            return
        self.ui.statusLabel.text = f"Exported {len(written)} files to {folder}."


class DiffSegUncertaintyTest(ScriptedLoadableModuleTest):
    """The headless suite's flow inside real Slicer: a tiny untrained model, a small volume, one run."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SampleAndRead()

    def test_SampleAndRead(self):
        self.delayDisplay("Checking dependencies")
        ensureTorch(ask=False)
        ensurePackages(DiffSegUncertaintyLogic.requirements(), ask=False)
        from DiffSegUncertaintyLib.engine import testing

        work = tempfile.mkdtemp(prefix="DiffSegTest-")
        model = testing.make_tiny_model_folder(os.path.join(work, "tiny"), spatial_dims=3)
        path = testing.write_volume(os.path.join(work, "input.nrrd"), testing.blob_array((12, 16, 16))[0],
                                    **testing.ORIENTATIONS["oblique"])
        volume = slicer.util.loadVolume(str(path))

        self.delayDisplay("Sampling 2 hypotheses")
        logic = DiffSegUncertaintyLogic()
        nodes_before = slicer.mrmlScene.GetNumberOfNodes()
        logic.scene.start(SampleRequest(volume, model, samples=2, steps=2, device="cpu"))
        outcome = logic.scene.wait(timeout=300)
        self.assertEqual(outcome.status, "done", outcome.log)
        self.assertGreater(slicer.mrmlScene.GetNumberOfNodes(), nodes_before)
        run = outcome.run
        self.assertIs(run.input_volume, volume)
        self.assertEqual(len(run.hypothesis_segment_ids), 2)
        for node in run.maps.values():
            self.assertEqual(node.GetImageData().GetDimensions(), volume.GetImageData().GetDimensions())
        entropy_display = run.maps["entropy"].GetDisplayNode()
        self.assertEqual(entropy_display.GetColorNodeID(), "vtkMRMLColorTableNodeFileInferno.txt")
        reading.show_map(slicer.mrmlScene, run, volume, "entropy")
        reading.set_consensus_threshold(run, 2)

        self.delayDisplay("Exporting")
        written = logic.scene.export(run, os.path.join(work, "export"))
        self.assertTrue(all(os.path.isfile(p) for p in written))
        shutil.rmtree(work, ignore_errors=True)
        self.delayDisplay("Test passed")
