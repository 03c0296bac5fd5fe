"""Helpers shared by the scene tests (a module, not the conftest: conftest files of several test folders
would share one module name)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import vtk
from slicer import vtkMRMLSubjectHierarchyNode

from DiffSegUncertaintyLib.engine import testing
from DiffSegUncertaintyLib.scene.runner import ProcessRunner

SHAPE = (10, 14, 12)  # (k, j, i): small, not cubic, so swapped axes would show
# axis-aligned but permuted, flipped and anisotropic: IJK->RAS is far from the identity and an ROI box
# maps to an exact index box (which the ROI test relies on)
GEOMETRY = testing.ORIENTATIONS["permuted-flipped-anisotropic"]


def scene_counts(scene) -> tuple[int, int]:
    """(nodes, subject-hierarchy items): what must not change when a run does not complete."""
    sh = vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    return scene.GetNumberOfNodes(), sh.GetNumberOfItems()


def load_volume(app, path: Path, name: str = "input"):
    node = app.volumes.AddArchetypeVolume(str(path), name, 0, vtk.vtkStringArray())
    assert node is not None, f"could not load {path}"
    sh = vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(app.scene)
    if sh.GetItemByDataNode(node) == sh.GetInvalidItemID():  # Slicer's SH plugins would do this
        sh.CreateItem(sh.GetSceneItemID(), node)
    return node


def put_under_study(scene, node) -> int:
    """Patient -> Study -> volume, as DICOM loading makes it; returns the study item."""
    sh = vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient A")
    study = sh.CreateStudyItem(patient, "CT 2024-01-01")
    sh.SetItemParent(sh.GetItemByDataNode(node), study)
    return study


class RecordingRunner(ProcessRunner):
    """The real runner, keeping a copy of the command's output folder for later replay."""

    keep: Path | None = None

    def __init__(self, keep: Path) -> None:
        super().__init__()
        self.keep_to = keep
        self.command: list[str] = []

    def start(self, command, env=None, cwd=None):
        self.command = list(command)
        super().start(command, env, cwd)

    @property
    def returncode(self):
        code = super().returncode
        if code == 0 and not self.keep_to.exists():
            out = Path(self.command[self.command.index("--output") + 1])
            shutil.copytree(out, self.keep_to)
        return code


class ReplayRunner:
    """A stand-in runner that 'succeeds' by copying recorded outputs (optionally damaged) into place:
    tests the loader's all-or-nothing behaviour without another minute of sampling."""

    def __init__(self, recorded: Path, damage=None) -> None:
        self.recorded, self.damage = recorded, damage
        self.returncode = None
        self.log = "replayed\n"

    def start(self, command, env=None, cwd=None):
        out = Path(command[command.index("--output") + 1])
        shutil.copytree(self.recorded, out)
        if self.damage:
            self.damage(out)
        self.returncode = 0

    def poll(self):
        return ["progress 1/1"]

    def cancel(self):
        pass


def array(node) -> np.ndarray:
    from vtk.util.numpy_support import vtk_to_numpy
    image = node.GetImageData()
    i, j, k = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(k, j, i)
