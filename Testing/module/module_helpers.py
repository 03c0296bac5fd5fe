"""Helpers of the module tests (a module, not the conftest: conftest files of several test folders share
one module name)."""

from __future__ import annotations

import time
from pathlib import Path

MODULE_FILE = Path(__file__).resolve().parents[2] / "DiffSegUncertainty" / "DiffSegUncertainty.py"
SAMPLES = 3


def add_slice_views(scene) -> dict:
    """Red, Yellow, Green as the application's layout makes them (slice + composite node each)."""
    from slicer import vtkMRMLSliceCompositeNode, vtkMRMLSliceNode
    views = {}
    vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)  # as the application logic does
    for name, orient in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
        node = scene.AddNewNodeByClass("vtkMRMLSliceNode", name)  # copies the default node's presets
        node.SetLayoutName(name)
        node.SetOrientation(orient)
        composite = vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(name)
        scene.AddNode(composite)
        views[name] = (node, composite)
    return views


def wait_idle(widget, timeout: float = 150.0) -> None:
    """Let the Qt timer poll the background run, as Slicer's event loop would."""
    import slicer
    end = time.monotonic() + timeout
    while widget.logic.scene.busy:
        slicer.app.processEvents()
        time.sleep(0.05)
        assert time.monotonic() < end, "the run did not end"
    slicer.app.processEvents()


def prop(obj, name: str):
    """A Qt property read from test code: PySide6 switches to the module file's ``true_property`` view
    of a class lazily, so a getter may arrive as a method or as the value."""
    value = getattr(obj, name)
    return value() if callable(value) else value
