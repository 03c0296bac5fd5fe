"""Input checks against the model card, the ROI in the command's LPS box, and the temporary NRRDs.

Why checks here although the command checks too: the user should learn what is wrong before a process
starts (and before minutes of model loading), in words that name the node, not a traceback. Nothing in
this module adds to or changes the scene.

Coordinates: MRML works in RAS (x to the Right, y Anterior, z Superior); the NRRD files and the command
work in LPS (DICOM/ITK: x Left, y Posterior, z Superior). A point flips as (x, y, z) -> (-x, -y, z), so
an RAS box [x0, x1] x [y0, y1] x [z0, z1] is the LPS box [-x1, -x0] x [-y1, -y0] x [z0, z1].
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import vtk
from slicer import vtkMRMLTransformNode, vtkMRMLVolumeArchetypeStorageNode

from ..engine.files.modelfile import roi_required


class InputProblem(ValueError):
    """Something the user must change before sampling can start; the message says what."""


@dataclass
class SampleRequest:
    """What one run needs: the nodes and model chosen in the module, and the sampler settings."""

    input_volume: Any = None                 # vtkMRMLScalarVolumeNode
    model_folder: str | os.PathLike | None = None
    extra_volumes: list = field(default_factory=list)
    roi: Any = None                          # vtkMRMLMarkupsROINode
    point: tuple[float, float, float] | None = None  # RAS world point the ROI helper was placed on (see below)
    samples: int = 16
    steps: int | None = None                 # None: the card's default
    eta: float | None = None                 # DDIM sampling noise in [0, 1]; None: the card's default
    seed: int = 0
    device: str = "auto"                     # auto | cuda | cpu
    precision: str = "auto"                  # auto | fp32 | bf16 (fp32: the module's "Full precision" box)

    @property
    def volumes(self) -> list:
        return [self.input_volume, *[v for v in self.extra_volumes if v is not None]]


def _components(volume) -> int:
    return volume.GetImageData().GetNumberOfScalarComponents()


def check_request(request: SampleRequest, card: dict[str, Any]) -> None:
    """Raise InputProblem with a message for the first thing that stops this request from running."""
    if request.input_volume is None:
        raise InputProblem("Select an input volume.")
    arch = card["architecture"]
    spatial_dims, in_channels = int(arch["spatial_dims"]), int(arch["in_channels"])
    for volume in request.volumes:
        image = volume.GetImageData() if hasattr(volume, "GetImageData") else None
        if image is None or 0 in image.GetDimensions():
            raise InputProblem(f"The volume '{volume.GetName()}' holds no image data.")
        dims = image.GetDimensions()
        if spatial_dims == 3 and min(dims) < 2:
            raise InputProblem(
                f"'{volume.GetName()}' is a 2D image ({dims[0]} x {dims[1]} x {dims[2]} voxels) but the model "
                f"'{card['name']}' segments 3D volumes; select a 3D volume or a 2D model.")
    channels = sum(_components(v) for v in request.volumes)
    if channels != in_channels:
        described = ", ".join(f"{c.get('name', '?')} ({c.get('modality', '?')})"
                              for c in card["input"].get("channels", []))
        four_d = [v for v in request.volumes if _components(v) > 1]
        hint = (f" '{four_d[0].GetName()}' is a 4D (multi-component) volume with "
                f"{_components(four_d[0])} components." if four_d else "")
        raise InputProblem(
            f"The model '{card['name']}' needs {in_channels} input channel(s): {described}; "
            f"{channels} selected.{hint} Choose the extra volumes so there is one per channel.")
    if request.samples < 1 or (request.steps is not None and request.steps < 1):
        raise InputProblem("Hypotheses and steps must be at least 1.")
    if request.eta is not None and not 0.0 <= request.eta <= 1.0:
        raise InputProblem(f"The sampling noise (eta) must lie between 0 and 1 (got {request.eta}).")
    if request.roi is None:
        if roi_required(card):
            raise InputProblem(f"The model '{card['name']}' segments a box around the target: place a "
                               "region of interest (ROI) over it first.")
        return
    check_roi_placed(request.roi)
    volume_bounds, roi_bounds = [0.0] * 6, [0.0] * 6
    request.input_volume.GetRASBounds(volume_bounds)
    request.roi.GetRASBounds(roi_bounds)
    if any(roi_bounds[2 * a] > volume_bounds[2 * a + 1] or roi_bounds[2 * a + 1] < volume_bounds[2 * a]
           for a in range(3)):
        raise InputProblem(f"The ROI '{request.roi.GetName()}' lies outside the volume "
                           f"'{request.input_volume.GetName()}'; move it over the region to segment.")


def check_roi_placed(roi) -> None:
    """Refuse an ROI that was created but never placed, or has no extent along an axis."""
    if roi is None:
        return
    if roi.GetNumberOfControlPoints() == 0:
        raise InputProblem(f"The ROI '{roi.GetName()}' has not been placed: click 'Place ROI' and then "
                           "the structure, or drag its corners in a slice view.")
    size = roi.GetSize()
    if min(size) <= 0:
        raise InputProblem(f"The ROI '{roi.GetName()}' has zero size ({size[0]:.1f} x {size[1]:.1f} x "
                           f"{size[2]:.1f} mm): give it an extent around the structure.")


def roi_box_lps(roi, volume) -> tuple[list[float], list[float]]:
    """The ROI as an axis-aligned box in the volume's own (untransformed) physical space, in LPS mm.

    The ROI's world box (its 8 corners, rotation and parent transforms included) is brought into the
    coordinates the volume's file is written in (the inverse of the volume's parent transform), then
    flipped RAS -> LPS (see module doc).
    """
    bounds = [0.0] * 6
    roi.GetRASBounds(bounds)
    corners = [list(c) for c in itertools.product(bounds[0:2], bounds[2:4], bounds[4:6])]
    ras = np.array(_world_to_volume(corners, volume))
    lo, hi = ras.min(0), ras.max(0)
    return [-hi[0], -hi[1], lo[2]], [-lo[0], -lo[1], hi[2]]


def _world_to_volume(points: list[list[float]], volume) -> list[list[float]]:
    """World RAS points in the coordinates the volume's file is written in (its parent transform undone)."""
    parent = volume.GetParentTransformNode()
    if parent is None:
        return [list(p) for p in points]
    world_to_volume = vtk.vtkGeneralTransform()
    vtkMRMLTransformNode.GetTransformBetweenNodes(None, parent, world_to_volume)
    return [list(world_to_volume.TransformPoint(p)) for p in points]


def point_lps(point_ras: Sequence[float], volume) -> list[float]:
    """A world RAS point in the volume's own physical space, in LPS mm (``--point-mm``)."""
    x, y, z = _world_to_volume([list(point_ras)], volume)[0]
    return [-x, -y, z]


def write_input(volume, path: str | Path) -> Path:
    """Write a volume (with its geometry, not its parent transform) to NRRD without touching the scene."""
    storage = vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)  # the file lives seconds; compression would only cost time
    if not storage.WriteData(volume):
        raise InputProblem(f"Cannot write the volume '{volume.GetName()}' to {path}.")
    return Path(path)
