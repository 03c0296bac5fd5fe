"""The Inferno colour table for uncertainty maps.

Why our own table: Slicer's built-in tables have no perceptually uniform dark-to-bright map, and a
uniform one makes equal steps of uncertainty look equally different. It is built from five anchor
colours of matplotlib's Inferno (interpolated to 256 entries), created once per scene and reused by
every run, so it is also saved with the scene (.mrb) like any node.
"""

from __future__ import annotations

import numpy as np
from slicer import vtkMRMLColorTableNode, vtkMRMLScene

INFERNO_NAME = "Inferno"
INFERNO_ATTRIBUTE = "DiffSeg.ColorTable"
INFERNO_ANCHORS = ((0.001, 0.000, 0.014), (0.341, 0.062, 0.429), (0.736, 0.216, 0.330),
                   (0.978, 0.558, 0.035), (0.988, 0.998, 0.645))


def inferno_rgb(n: int = 256) -> np.ndarray:
    anchors = np.asarray(INFERNO_ANCHORS, dtype=float)
    t, xs = np.linspace(0.0, 1.0, n), np.linspace(0.0, 1.0, len(anchors))
    return np.stack([np.interp(t, xs, anchors[:, c]) for c in range(3)], axis=1)


def make_inferno(n: int = 256) -> vtkMRMLColorTableNode:
    """A new (not yet added) Inferno colour table node."""
    table = vtkMRMLColorTableNode()
    table.SetName(INFERNO_NAME)
    table.SetTypeToUser()
    table.SetNumberOfColors(n)
    table.SetAttribute(INFERNO_ATTRIBUTE, INFERNO_NAME)
    table.SetAttribute("Category", "DiffSegUncertainty")
    for i, (r, g, b) in enumerate(inferno_rgb(n)):
        table.SetColor(i, "", float(r), float(g), float(b), 1.0)
    return table


def find_inferno(scene: vtkMRMLScene) -> vtkMRMLColorTableNode | None:
    """The scene's Inferno table from an earlier run (or a loaded .mrb), if any."""
    nodes = scene.GetNodesByClass("vtkMRMLColorTableNode")
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if node.GetAttribute(INFERNO_ATTRIBUTE) == INFERNO_NAME:
            return node
    return None
