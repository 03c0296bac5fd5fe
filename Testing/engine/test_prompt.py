"""The point prompt (engine/prompt.py): the box around a point, the growing rule, and the grown run
against the same hypotheses drawn on the grown box at once."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DiffSegUncertaintyLib.engine import testing
from DiffSegUncertaintyLib.engine.networks.checks import InputError
from DiffSegUncertaintyLib.engine.sampling.inference import Roi, run_model
from DiffSegUncertaintyLib.engine.files.modelfile import load_model, read_card
from DiffSegUncertaintyLib.engine.prompt import (box_around_point, finds_lesion, grow, point_index,
                                                 sample_from_point, slice_index_axis)
from DiffSegUncertaintyLib.engine.sampling.sampler import SamplerConfig
from DiffSegUncertaintyLib.engine.files.volumes import read_inputs


def _geometry(tmp_path, shape=(10, 40, 50), spacing=(0.7, 0.8, 2.5), origin=(-10.0, 20.0, -300.0),
              direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
    img = sitk.GetImageFromArray(np.zeros(shape, np.int16))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    sitk.WriteImage(img, str(tmp_path / "g.nrrd"))
    return read_inputs([tmp_path / "g.nrrd"]).geometry


def test_point_index_from_index_and_mm(tmp_path):
    geo = _geometry(tmp_path)
    assert point_index(geo, [12, 30, 4], mm=False) == [12, 30, 4]
    x, y, z = sitk.ReadImage(str(tmp_path / "g.nrrd")).TransformIndexToPhysicalPoint([12, 30, 4])  # ITK's own
    assert point_index(geo, [x + 0.3, y - 0.3, z + 1.0], mm=True) == [12, 30, 4]   # nearest centre
    with pytest.raises(InputError, match="outside the image"):
        point_index(geo, [50, 0, 0], mm=False)
    with pytest.raises(InputError, match="needs 3 numbers"):
        point_index(geo, [1, 2], mm=False)


def test_box_around_point_is_centred_clamped_and_one_slice_thick(tmp_path):
    geo = _geometry(tmp_path)                                  # size (i, j, k) = (50, 40, 10)
    assert slice_index_axis(geo) == 2
    assert box_around_point(geo, [25, 20, 4], [16, 16], 2) == ([17, 12, 4], [33, 28, 5])
    assert box_around_point(geo, [2, 38, 0], [16, 16], 2) == ([0, 24, 0], [16, 40, 1])   # moved inside
    assert box_around_point(geo, [25, 20, 4], [8, 16, 16], 3) == ([17, 12, 0], [33, 28, 8])
    assert box_around_point(geo, [25, 20, 4], [64, 64], 2) == ([0, 0, 4], [50, 40, 5])  # image smaller
    # slices along i (a file stored sagittal-first): the box is thin along i, square in (j, k)
    perm = _geometry(tmp_path, shape=(50, 40, 10), spacing=(2.5, 0.8, 0.7),
                     direction=(0, 0, 1, 0, 1, 0, 1, 0, 0))
    assert slice_index_axis(perm) == 0
    assert box_around_point(perm, [3, 20, 25], [16, 16], 2) == ([3, 12, 17], [4, 28, 33])


def test_finds_lesion_rule():
    labels = np.zeros((4, 5, 5), np.uint8)
    assert not finds_lesion(labels, labels[0])
    labels[0, 2, 2] = labels[1, 1, 1] = 1                          # half the hypotheses, no consensus
    assert finds_lesion(labels, np.zeros((5, 5)))
    labels[1] = 0                                                  # one of four: not enough
    assert not finds_lesion(labels, np.zeros((5, 5)))
    assert finds_lesion(labels, labels[0])                         # unless the consensus holds it
    assert not finds_lesion(np.ones((4, 5, 5)), np.zeros((5, 5)), min_voxels=26)


def test_grow_stops_on_the_first_empty_slice_each_way():
    lesion = set(range(5, 10))
    calls = []

    def draw(k):
        calls.append(k)
        return f"slice {k}", k in lesion

    g, res = grow(draw, 7, 20)
    assert calls == [7, 8, 6, 9, 5, 10, 4]             # up and down in turn
    assert (g.first, g.last, g.found) == (4, 10, [5, 6, 7, 8, 9]) and res[4] == "slice 4"
    g, _ = grow(lambda k: (k, k in lesion), 9, 10)                 # the image ends on the lesion
    assert (g.first, g.last) == (4, 9)
    g, _ = grow(lambda k: (k, True), 3, 100, max_slices=6)         # the cap bounds the work
    assert (g.first, g.last) == (1, 6) and len(g.found) == 6
    g, res = grow(lambda k: (k, False), 3, 10)                     # nothing at the point: no growth
    assert (g.first, g.last, g.found) == (3, 3, []) and list(res) == [3]


def test_sample_from_point_matches_the_grown_box_drawn_at_once(tmp_path):
    """A tiny 2D model on a blob volume: the grown run's hypotheses are those of run_model on the grown
    box (same seed, same hypothesis ids per slice), and its box is the card's size around the point."""
    folder = testing.make_tiny_model_folder(tmp_path / "m", size=[16, 16],
                                            preprocessing={"kind": "none"})
    model, _ = load_model(folder, "cpu")
    card = read_card(folder)
    arr = testing.blob_array((6, 24, 24))
    testing.write_volume(tmp_path / "v.nrrd", arr[0], spacing=(1.0, 1.0, 2.0))
    vols = read_inputs([tmp_path / "v.nrrd"])
    cfg = SamplerConfig(method="ddim", steps=2)
    res, growth = sample_from_point(model, card, vols.channels, vols.geometry, [12, 12, 3], 3, cfg, seed=5)
    assert res.roi.start[:2] == [4, 4] and res.roi.stop[:2] == [20, 20]
    assert res.roi.start[2] == growth.first and res.roi.stop[2] == growth.last + 1
    at_once = run_model(model, card, vols.channels, vols.geometry, 3, cfg, seed=5, roi=Roi(res.roi.start,
                                                                                          res.roi.stop))
    assert res.y0.shape == at_once.y0.shape
    torch.testing.assert_close(res.y0, at_once.y0, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("args,message", [
    (["--point", "30,5,1"], "outside the image"),
    (["--point", "3,5"], "needs 3 numbers"),
    (["--point-mm=-1e4,0,0"], "outside the image"),
    (["--point", "3,5,1", "--max-slices", "0"], "--max-slices"),
])
def test_bad_points_exit_2_before_any_work(tmp_path, capsys, args, message):
    from DiffSegUncertaintyLib.engine.cli import main
    folder = testing.make_tiny_model_folder(tmp_path / "m", size=[8, 8], preprocessing={"kind": "none"})
    img = testing.write_volume(tmp_path / "v.nrrd", testing.blob_array((4, 12, 16))[0])
    out = tmp_path / "out"
    assert main(["sample", str(img), "--model", str(folder), "--output", str(out), "--quiet", *args]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_geometry_transforms_match_itk_on_an_oblique_grid(tmp_path):
    """Geometry's own index <-> LPS transforms (no SimpleITK at run time) equal ITK's on a rotated,
    anisotropic grid read back from a real file."""
    img = sitk.Image([7, 9, 5], sitk.sitkInt16)
    img.SetSpacing([0.7, 1.3, 2.5])
    img.SetOrigin([-12.0, 40.5, 7.25])
    c, s_ = np.cos(0.4), np.sin(0.4)
    img.SetDirection([c, -s_, 0.0, s_, c, 0.0, 0.0, 0.0, -1.0])
    sitk.WriteImage(img, str(tmp_path / "o.nrrd"))
    ref = sitk.ReadImage(str(tmp_path / "o.nrrd"))
    geo = read_inputs([tmp_path / "o.nrrd"]).geometry
    for idx in ([0, 0, 0], [6, 8, 4], [3.5, 1.25, 2.0]):
        p = ref.TransformContinuousIndexToPhysicalPoint(idx)
        np.testing.assert_allclose(geo.index_to_physical(idx), p, atol=1e-9)
        np.testing.assert_allclose(geo.physical_to_continuous_index(p),
                                   ref.TransformPhysicalPointToContinuousIndex(p), atol=1e-9)
