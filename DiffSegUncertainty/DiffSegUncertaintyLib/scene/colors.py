"""The Inferno colour table for uncertainty maps.

Why Inferno: a perceptually uniform dark-to-bright map makes equal steps of uncertainty look equally
different. Slicer has shipped one since 2016 (Base/Logic/Resources/ColorFiles/Inferno.txt, node ID
``vtkMRMLColorTableNodeFileInferno.txt``, checked in 5.8.0 and main): ``inferno_node`` uses that node, so
pickers do not show two "Inferno" entries. Only where the application's colour files are absent (a
slicer-core script without the app) is a stand-in table made from five anchor colours of matplotlib's
Inferno; ``write_color_file`` writes the same table in Slicer's colour-file format so the headless app
(app.py) registers it under Slicer's own ID, as the application does at start-up.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from slicer import vtkMRMLColorTableNode, vtkMRMLScene

SLICER_INFERNO_ID = "vtkMRMLColorTableNodeFileInferno.txt"
INFERNO_NAME = "DiffSeg Inferno"
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


def inferno_node(scene: vtkMRMLScene) -> tuple[vtkMRMLColorTableNode, bool]:
    """Slicer's Inferno node, else an earlier stand-in, else a new stand-in added to the scene.
    Returns (node, added) so a caller that undoes its changes knows whether to remove it."""
    node = scene.GetNodeByID(SLICER_INFERNO_ID) or find_inferno(scene)
    if node is not None:
        return node, False
    node = make_inferno()
    scene.AddNode(node)
    return node, True


def write_color_file(path, n: int = 256) -> None:
    """The Inferno table in Slicer's colour-file format ("index name r g b a", 0-255)."""
    rows = [f"# {n} values"] + [f"{i} {i} {round(255 * r)} {round(255 * g)} {round(255 * b)} 255"
                                 for i, (r, g, b) in enumerate(inferno_rgb(n))]
    with open(path, "w") as f:
        f.write("\n".join(rows) + "\n")


def distinct_colors(n: int) -> list[tuple[float, float, float]]:
    """n hypothesis colours that stay apart for n up to 64 (Slicer's label table repeats sooner): hues
    by the golden angle, so each new hue lands in the largest gap left, cycling through four
    saturation/value rings, so hues that come close still differ in brightness or saturation (the
    closest two of 64 differ by 20/255 in some channel; Testing/scene/test_scene_reading.py)."""
    golden = (math.sqrt(5) - 1) / 2
    rings = ((1.0, 1.0), (0.6, 0.75), (0.8, 0.5), (0.4, 0.95))
    return [colorsys.hsv_to_rgb((0.02 + i * golden) % 1.0, *rings[i % 4]) for i in range(n)]
