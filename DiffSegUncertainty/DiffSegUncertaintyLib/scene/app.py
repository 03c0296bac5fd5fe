"""A headless stand-in for the parts of the Slicer application the scene layer touches.

Inside Slicer none of this is needed: the application made the scene and its logics. Tests and batch
scripts that use slicer-core without the application call ``create_headless_app()``; it wires the few
pieces that MRML expects to exist (colour logic before volumes logic, application logic before each
module logic's scene, a data-IO manager with a cache folder so ``.mrb`` files can be read) and adds the
subject-hierarchy node, as Slicer does at start-up.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import vtk
from .colors import write_color_file
from slicer import (
    vtkDataIOManagerLogic,
    vtkMRMLRemoteIOLogic,
    vtkMRMLScene,
    vtkMRMLSubjectHierarchyNode,
    vtkSlicerApplicationLogic,
    vtkSlicerColorLogic,
    vtkSlicerSegmentationsModuleLogic,
    vtkSlicerVolumesLogic,
)


@dataclass
class HeadlessApp:
    scene: vtkMRMLScene
    app_logic: vtkSlicerApplicationLogic
    colors: vtkSlicerColorLogic  # held here: the application logic keeps no reference to its module logics
    volumes: vtkSlicerVolumesLogic
    segmentations: vtkSlicerSegmentationsModuleLogic
    remote_io: vtkMRMLRemoteIOLogic
    io_logic: vtkDataIOManagerLogic


def create_headless_app(cache_dir: str | None = None) -> HeadlessApp:
    scene = vtkMRMLScene()
    app_logic = vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    home = tempfile.mkdtemp(prefix="diffseg_home_")  # colour logic looks for <home>/share/ColorFiles
    os.makedirs(os.path.join(home, "share", "ColorFiles"))
    # Slicer's own Inferno.txt, so the colour logic registers it under the application's node ID
    write_color_file(os.path.join(home, "share", "ColorFiles", "Inferno.txt"))
    app_logic.SetHomeDirectory(home)
    app_logic.SetShareDirectory("share")
    app_logic.SetSliceLogics(vtk.vtkCollection())
    app_logic.SetViewLogics(vtk.vtkCollection())

    def register(logic, name):
        logic.SetMRMLApplicationLogic(app_logic)  # before SetMRMLScene, which may already need it
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(name, logic)
        return logic

    colors = register(vtkSlicerColorLogic(), "Colors")  # the volumes logic asks for a "Colors" logic
    colors.AddDefaultColorNodes()  # Grey, Labels, ...: what Slicer's scene starts with
    volumes = register(vtkSlicerVolumesLogic(), "Volumes")
    segmentations = register(vtkSlicerSegmentationsModuleLogic(), "Segmentations")

    remote_io = vtkMRMLRemoteIOLogic()  # vtkMRMLScene::ReadFromMRB needs a cache folder
    remote_io.SetMRMLScene(scene)
    remote_io.SetMRMLApplicationLogic(app_logic)
    remote_io.GetCacheManager().SetRemoteCacheDirectory(cache_dir or tempfile.mkdtemp(prefix="diffseg_cache_"))
    io_logic = vtkDataIOManagerLogic()
    io_logic.SetMRMLScene(scene)
    io_logic.SetMRMLApplicationLogic(app_logic)
    io_logic.SetAndObserveDataIOManager(remote_io.GetDataIOManager())
    remote_io.AddDataIOToScene()

    vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)  # Slicer creates it at start-up
    return HeadlessApp(scene, app_logic, colors, volumes, segmentations, remote_io, io_logic)
