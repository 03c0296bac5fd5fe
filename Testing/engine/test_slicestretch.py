"""The card's slice_minmax preprocessing: the LIDC publisher's per-crop stretch, on a whole CT in HU.

Pinned against the real data: the nine published val crops of LIDC-IDRI-0001 nodule 0 are recovered
from the whole CT (issue 14), and the published crops themselves still give exactly what training gave.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from DiffSegUncertaintyLib.engine.networks.checks import InputError
from DiffSegUncertaintyLib.engine.files.modelfile import SHIPPED_MODELS, read_card
from DiffSegUncertaintyLib.engine.files.slicestretch import context_window, slice_minmax
from DiffSegUncertaintyLib.engine.files.volumes import preprocess, read_inputs, uint8_window_to_hu

CARDS = ["lidc-hsrdiff-small-cpu", "lidc-pgrd-2d-small-cpu", "lidc-pgrd-3d-small-cpu"]


def test_context_window_is_centred_and_stays_inside():
    assert context_window(512, 286, 350, 128) == slice(254, 382)     # centre 318
    assert context_window(512, 0, 64, 128) == slice(0, 128)          # moved inside at the start
    assert context_window(512, 480, 512, 128) == slice(384, 512)     # and at the end
    assert context_window(100, 10, 20, 128) == slice(0, 100)         # shorter axis: all of it
    assert context_window(512, 100, 300, 128) == slice(100, 300)     # at least the ROI


def test_hand_computed_slices():
    x = np.zeros((2, 6, 6), np.float32)
    x[0] = np.arange(36).reshape(6, 6)
    x[0, 0, 0] = -3000                                  # padding outside the scan circle, clipped
    x[1] = 7                                            # a constant slice gives 0
    box = (slice(0, 2), slice(2, 4), slice(2, 4))       # ROI 2x2 at the centre; context 4x4: rows/cols 1..4
    out = slice_minmax(x, -1024, None, 4, box, 0)
    lo, hi = 7.0, 28.0                                  # min/max of x[0, 1:5, 1:5]
    np.testing.assert_allclose(out[0], (np.maximum(x[0], -1024) - lo) / (hi - lo), rtol=1e-6)
    assert out[0, 1:5, 1:5].min() == 0 and out[0, 1:5, 1:5].max() == 1
    assert (out[1] == 0).all()
    # the slice axis is honoured: the same volume with slices along the last axis
    moved = slice_minmax(np.moveaxis(x, 0, 2), -1024, None, 4, (slice(2, 4), slice(2, 4), slice(0, 2)), 2)
    np.testing.assert_array_equal(np.moveaxis(moved, 2, 0), out)
    # 2D image: one slice; the context follows the ROI's centre
    np.testing.assert_allclose(slice_minmax(x[0], None, None, 2, (slice(4, 6), slice(4, 6)), None),
                               (x[0] - 28) / (35 - 28), rtol=1e-6)


def test_through_preprocess_and_its_checks():
    hu = np.linspace(-1000, 1000, 2 * 8 * 8, dtype=np.float32).reshape(1, 2, 8, 8)
    spec = {"kind": "slice_minmax", "lower": -1024, "context": 8}
    out = preprocess(hu, spec, box=(slice(0, 2), slice(2, 6), slice(2, 6)), slice_axis=0)
    for k in range(2):
        np.testing.assert_allclose(out[0, k], (hu[0, k] - hu[0, k].min()) / np.ptp(hu[0, k]), rtol=1e-6)
    with pytest.raises(InputError, match="context"):
        preprocess(hu, {"kind": "slice_minmax", "lower": -1024})
    with pytest.raises(InputError, match="unknown field"):
        preprocess(hu, {**spec, "window": 3})
    with pytest.raises(InputError, match="not in HU"):
        preprocess(hu + 3000, spec)                     # stored scanner values, no rescale applied


def test_the_published_crops_are_recovered_from_the_whole_ct(lidc_ct_root, lidc_root):
    """The nine val crops of LIDC-IDRI-0001 nodule 0 are the 128x128 boxes at rows 302..429, columns
    252..379 of CT slices 86..94, each stretched to its own range: the card's spec with a ROI centred
    there gives 255 x the published 8-bit crop up to its rounding."""
    with np.load(lidc_root / "val.npz") as z:
        rows = np.nonzero((z["patient"] == "LIDC-IDRI-0001") & (z["nodule"] == 0))[0]
        rows = rows[np.argsort(z["slice"][rows])]
        crops = z["images"][rows].astype(np.float32)
    vols = read_inputs([lidc_ct_root / "ct.nrrd"])
    spec = read_card(SHIPPED_MODELS / CARDS[0])["input"]["preprocessing"]
    roi = (slice(80, 100), slice(366 - 32, 366 + 32), slice(316 - 32, 316 + 32))   # centre (j 366, i 316)
    x = preprocess(vols.channels[:, 80:100], spec, box=(slice(0, 20), *roi[1:]), slice_axis=0)[0]
    got = 255 * x[6:15, 302:430, 252:380]                                          # slices 86..94
    assert got.shape == crops.shape == (9, 128, 128)
    assert np.abs(got - crops).max() <= 0.5 + 1e-3
    assert (np.rint(got) == crops).mean() > 0.99
    # the card's former fixed window [-1000, 1400] HU does not give the training input
    old = preprocess(vols.channels[:, 86:95], {"kind": "minmax", "lower": -1000, "upper": 1400})[0]
    assert np.abs(255 * old[:, 302:430, 252:380] - crops).max() > 20


@pytest.mark.parametrize("name", CARDS)
def test_shipped_cards_give_the_published_crops_exactly_what_training_gave(name, lidc_root):
    """A published crop in HU (through the card's former window, as the crop demo writes it) maps to
    x / 255 on every slice, whatever its range: the val scores of the crops are unchanged."""
    from training.data.lidc import CT_WINDOW_HU
    card = read_card(SHIPPED_MODELS / name)
    spec = card["input"]["preprocessing"]
    assert spec["kind"] == "slice_minmax" and spec["context"] == 128
    with np.load(lidc_root / "val.npz") as z:
        images = z["images"][::97][:16]
    hu = uint8_window_to_hu(images, *CT_WINDOW_HU)[None]                          # (1, 16, 128, 128)
    size = card["input"]["size"][-1]
    c = slice(64 - size // 2, 64 + size // 2)
    x = preprocess(hu, spec, box=(slice(0, 16), c, c), slice_axis=0)[0]
    np.testing.assert_allclose(x, images / 255.0, rtol=0, atol=1e-6)
    # without a ROI (diffseg evaluate on the crops): the whole 128x128 crop is the context
    np.testing.assert_allclose(preprocess(hu[:, 0], spec)[0], images[0] / 255.0, rtol=0, atol=1e-6)


def test_a_real_nrrd_in_any_slice_order(tmp_path, lidc_ct_root):
    """Through a real file whose slices run along i: the stretch follows the axial axis."""
    ct = sitk.ReadImage(str(lidc_ct_root / "ct.nrrd"))[252:380, 302:430, 88:91]   # (i, j, k) 128x128x3
    a = sitk.GetArrayFromImage(ct).astype(np.float32)                            # (k, j, i)
    perm = sitk.PermuteAxes(ct, [2, 1, 0])                                       # k becomes index axis 0
    sitk.WriteImage(perm, str(tmp_path / "perm.nrrd"))
    vols = read_inputs([tmp_path / "perm.nrrd"])
    from DiffSegUncertaintyLib.engine.files.volumes import canonical_orientation
    axis = canonical_orientation(vols.geometry.direction).perm[0]
    assert axis == 2                                                             # array (i, j, k): k last
    x = preprocess(vols.channels, {"kind": "slice_minmax", "lower": -1024, "context": 128}, slice_axis=axis)[0]
    want = (a - a.min((1, 2), keepdims=True)) / np.ptp(a, (1, 2), keepdims=True)
    np.testing.assert_allclose(np.transpose(x, (2, 1, 0)), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("spec", [
    {"kind": "slice_minmax", "lower": -1024, "context": 8},
    {"kind": "slice_minmax", "lower": -1024, "upper": 400, "context": 3},
    {"kind": "window", "lower": -1000, "upper": 400},
    {"kind": "minmax", "lower": -1000, "upper": 1400},
    {"kind": "zscore", "nonzero": True},
    {"kind": "scale", "scale": 0.5, "offset": 3},
    {"kind": "none"}])
@pytest.mark.parametrize("axis", [0, 2])
def test_preprocessing_a_region_equals_the_whole_image_there(spec, axis):
    """A run preprocesses its ROI only (a whole CT costs the ROI): inside the region the values are
    exactly those of the whole image's preprocessing (same statistics), outside they are 0; an int16 CT
    as read gives what its float32 copy gives."""
    rng = np.random.default_rng(3)
    ct = rng.integers(-2048, 1500, size=(9, 20, 16)).astype(np.int16)
    ct[ct < -1500] = 0                                   # zeros for zscore's nonzero mask
    box = (slice(2, 7), slice(5, 11), slice(4, 9))
    region = tuple(slice(0, n) if a == axis else b for a, (b, n) in enumerate(zip(box, ct.shape)))
    whole = preprocess(ct.astype(np.float32)[None], spec, box=box, slice_axis=axis)
    part = preprocess(ct[None], spec, box=box, slice_axis=axis, region=region)
    inside = (slice(None),) + region
    assert np.array_equal(part[inside], whole[inside])
    outside = np.ones(part.shape, bool)
    outside[inside] = False
    assert outside.any() and (part[outside] == 0).all()
