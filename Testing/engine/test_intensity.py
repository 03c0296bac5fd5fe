"""CT intensities: the card's HU preprocessing reproduces the network input the LIDC model was trained on.

The LIDC crops are 8-bit, each stretched by its publisher to its own minimum and maximum
(training/estimate_ct_window.py); the shipped card maps a CT in HU with the same per-slice stretch,
{"kind": "slice_minmax", "lower": -1024, "context": 128} (issue 14; test_slicestretch.py pins it on the
whole CT); the crop demo writes the crops in HU through [-1000, 1400]. These tests pin the mapping both ways, through a real
NRRD file, and the refusal of images that are not in HU (docs/cli.md, "CT intensities (HU)").
"""

from __future__ import annotations


import numpy as np
import pytest
import SimpleITK as sitk

from DiffSegUncertaintyLib.engine.networks.checks import InputError
from DiffSegUncertaintyLib.engine.files.modelfile import SHIPPED_MODELS, read_card
from DiffSegUncertaintyLib.engine.files.volumes import (hu_to_uint8_window, preprocess, read_inputs,
                                                  uint8_window_to_hu)

SHIPPED = SHIPPED_MODELS / "lidc-hsrdiff-small-cpu"
L, U = -1000.0, 1400.0


def _card_spec() -> dict:
    return read_card(SHIPPED)["input"]["preprocessing"]


def test_shipped_card_and_export_agree_on_the_hu_window():
    from training.data.lidc import CT_PREPROCESSING, CT_WINDOW_HU
    from training.export import card_inputs
    assert _card_spec() == CT_PREPROCESSING == {"kind": "slice_minmax", "lower": -1024.0, "context": 128}
    assert CT_WINDOW_HU == (L, U)
    run = {"data": {"dataset": "lidc"}, "input": {"channels": [{"name": "CT"}], "size": [64, 64],
           "preprocessing": {"kind": "scale", "scale": 1 / 255, "offset": 0.0}}}
    assert card_inputs(run)["preprocessing"] == _card_spec()
    other = {"data": {"dataset": "brats"}, "input": {"preprocessing": {"kind": "zscore", "nonzero": True}}}
    assert card_inputs(other)["preprocessing"] == {"kind": "zscore", "nonzero": True}


@pytest.mark.parametrize("kind", ["window", "minmax"])
def test_every_uint8_value_round_trips_through_hu(kind):
    v = np.arange(256, dtype=np.uint8)
    hu = uint8_window_to_hu(v, L, U)
    assert hu.dtype == np.float32 and hu[0] == L and hu[-1] == U
    assert np.array_equal(hu_to_uint8_window(hu, L, U), v)
    x = preprocess(hu[None].reshape(1, 16, 16), {"kind": kind, "lower": L, "upper": U}).ravel()
    np.testing.assert_allclose(x, v / 255.0, rtol=0, atol=1e-6)
    # the test can fail: another window does not give the training intensities
    y = preprocess(hu[None].reshape(1, 16, 16), {"kind": "window", "lower": -1350, "upper": 150}).ravel()
    assert np.abs(y - v / 255.0).max() > 0.1


def test_values_outside_the_window_clip():
    hu = np.array([[-3024.0, -1024.0, -1000.0, 200.0, 1400.0, 2000.0, 3071.0]], np.float32)
    want = [0, 0, 0, 1200 / 2400, 1, 1, 1]
    np.testing.assert_allclose(preprocess(hu, {"kind": "window", "lower": L, "upper": U})[0], want, atol=1e-7)
    np.testing.assert_allclose(preprocess(hu, {"kind": "minmax", "lower": L, "upper": U})[0], want, atol=1e-7)
    assert hu_to_uint8_window(hu[0], L, U).tolist() == [0, 0, 0, 128, 255, 255, 255]
    # minmax stretches what is left: a crop inside the window is stretched like a publisher crop
    crop = np.array([[-900.0, -850.0, 100.0]], np.float32)
    np.testing.assert_allclose(preprocess(crop, {"kind": "minmax", "lower": L, "upper": U})[0],
                               [0, 50 / 1000, 1], atol=1e-7)
    np.testing.assert_allclose(preprocess(crop, {"kind": "minmax", "lower": L, "upper": U},
                                          mask=np.array([True, True, False]))[0], [0, 1, 20], atol=1e-6)
    with pytest.raises(ValueError, match="upper > lower"):
        uint8_window_to_hu(np.zeros(2), 10, 10)


def test_card_gives_the_8bit_crops_exactly_what_training_gave(lidc_root):
    from training.data.lidc import LIDC
    ds = LIDC(lidc_root, "val", dims=2, size=None)
    spec = _card_spec()
    for i in np.linspace(0, len(ds) - 1, 40).astype(int):
        raw = ds.images[i][None]
        assert raw.min() == 0 and raw.max() == 255  # every publisher crop is stretched to 0..255
        assert np.array_equal(preprocess(raw, spec), ds[int(i)]["image"].numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_a_lidc_stack_written_in_hu_reads_back_as_the_training_input(tmp_path, dtype, lidc_root):
    """The demo's path: one val nodule as a CT in HU (NRRD) -> read_inputs -> card preprocessing ->
    the centre 64x64 the model sees equals the training loader's item for every slice."""
    from training.data.lidc import LIDC
    ds = LIDC(lidc_root, "val", dims=2, size=64, fit="crop")
    key = (ds.patient[0], ds.nodule[0])
    rows = sorted((r for r in range(len(ds.images)) if (ds.patient[r], ds.nodule[r]) == key),
                  key=lambda r: int(ds.slice[r]))
    hu = uint8_window_to_hu(ds.images[rows], L, U)                    # (N, 128, 128)
    if dtype == np.int16:
        hu = np.rint(hu).astype(np.int16)                              # as a scanner stores it
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing((0.7, 0.7, 2.5))
    sitk.WriteImage(img, str(tmp_path / "ct.nrrd"), True)
    vols = read_inputs([tmp_path / "ct.nrrd"])
    assert vols.channels.shape == (1, len(rows), 128, 128) and vols.channels.min() < -500
    x = preprocess(vols.channels, _card_spec())[0]
    tol = 1e-6 if dtype == np.float32 else 0.5 / (U - L) + 1e-6    # int16 rounds to whole HU
    for k, r in enumerate(rows):
        want = ds[r]["image"].numpy()[0]                               # (64, 64), the training input
        np.testing.assert_allclose(x[k, 32:96, 32:96], want, rtol=0, atol=tol)
    assert np.abs(x[:, 32:96, 32:96] - ds.images[rows][:, 32:96, 32:96] / 240.0).max() > 1e-3


def test_an_image_not_in_hu_is_refused_with_how_to_convert(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1000, 1400, (2, 32, 32)).astype(np.float32)
    stored = np.rint(hu + 1024).astype(np.uint16)                      # DICOM values, rescale not applied
    spec = _card_spec()
    with pytest.raises(InputError, match="expects CT in Hounsfield units.*RescaleIntercept"):
        preprocess(stored[None].astype(np.float32), spec)
    eight = hu_to_uint8_window(hu, L, U)[None].astype(np.float32)
    with pytest.raises(InputError, match="not in HU.*uint8_window_to_hu"):
        preprocess(eight, {"kind": "window", "lower": L, "upper": U})
    # the card accepts an 8-bit export: stretching each slice's own range is what the publisher did
    lo, hi = eight.min((2, 3), keepdims=True), eight.max((2, 3), keepdims=True)
    np.testing.assert_allclose(preprocess(eight, spec), (eight - lo) / (hi - lo), rtol=1e-6)
    # the same image in HU passes both, and a non-CT window (bounds above -500) is not checked
    preprocess(hu[None], spec)
    preprocess(hu[None], {"kind": "window", "lower": L, "upper": U})
    preprocess(stored[None].astype(np.float32), {"kind": "window", "lower": -20, "upper": 120})

    # through `diffseg sample`: exit 2, the message on stderr, nothing written
    from DiffSegUncertaintyLib.engine.cli import main
    img = sitk.GetImageFromArray(stored)
    sitk.WriteImage(img, str(tmp_path / "raw.nrrd"))
    out = tmp_path / "out"
    code = main(["sample", str(tmp_path / "raw.nrrd"), "--model", str(SHIPPED), "--output", str(out),
                 "--roi", "0,0,0,32,32,2", "--samples", "1", "--steps", "1", "--device", "cpu", "--quiet"])
    assert code == 2 and not out.exists()


def test_the_estimate_behind_the_card_holds_on_val(lidc_root):
    from training.estimate_ct_window import estimate
    from training.data.lidc import CT_WINDOW_HU
    with np.load(lidc_root / "val.npz") as z:
        r = estimate(z["images"])
    assert r["crops_with_a_0"] == 1.0 and r["crops_with_a_255"] == 1.0   # each crop stretched to 0..255
    assert r["pixels_at_255_per_crop_pct"][0] == 1                         # mostly one pixel at the top
    assert r["window"] == CT_WINDOW_HU
