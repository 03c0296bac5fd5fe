"""The README's main job (training/demo.py) on the real LIDC val data with a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from DiffSegUncertaintyLib.engine import testing
from training import demo
from training.data.lidc import CT_WINDOW_HU


def test_pick_nodule_prefers_slices_all_four_readers_marked():
    masks = np.zeros((7, 4, 4, 4), np.uint8)
    masks[0:2, :, 1, 1] = 1          # nodule a: 2 slices, all readers
    masks[2:5, :3, 1, 1] = 1         # nodule b: 3 slices, only 3 readers
    masks[5:7, :, 2, 2] = 1          # nodule c: 2 slices, all readers, later key wins the tie
    patient = np.array(["p1", "p1", "p2", "p2", "p2", "p3", "p3"])
    nodule = np.array([0, 0, 1, 1, 1, 0, 0])
    assert demo.pick_nodule(patient, nodule, masks) == ("p3", 0)
    assert demo.pick_nodule(patient, nodule, masks, max_slices=2) == ("p3", 0)  # b is too long
    masks[5:7, 3] = 0                # c loses a reader: a is now the best
    assert demo.pick_nodule(patient, nodule, masks) == ("p1", 0)


def test_compare_is_zero_for_the_readings_themselves():
    rng = np.random.default_rng(0)
    readings = (rng.random((4, 3, 8, 8)) > 0.6).astype(np.uint8)
    hyps = np.concatenate([readings] * 4)  # 16 hypotheses = each reading four times
    scores = demo.compare(hyps, readings)
    assert scores["ged"][0] == pytest.approx(0.0, abs=1e-12)
    assert scores["hm_iou"][0] == pytest.approx(1.0)


def test_demo_end_to_end_on_a_real_nodule(lidc_root, tmp_path, capsys):
    model = testing.make_tiny_model_folder(tmp_path / "tiny-lidc", size=[16, 16],
                                           preprocessing={"kind": "minmax", "lower": CT_WINDOW_HU[0],
                                                          "upper": CT_WINDOW_HU[1]})
    rc = demo.main(["--data", str(lidc_root), "--model", str(model), "--output", str(tmp_path / "demo"),
                    "--samples", "3", "--steps", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "demo" / "case" / "ct.nrrd")))
    assert ct.dtype == np.int16 and (ct.min(), ct.max()) == CT_WINDOW_HU  # a CT in HU, as a user's
    assert len(list((tmp_path / "demo" / "case").glob("reading_*.nrrd"))) == 4
    hyps = demo.read_hypotheses(tmp_path / "demo" / "result" / "hypotheses.seg.nrrd")
    assert hyps.shape[0] == 3 and hyps.shape[2:] == (128, 128)
    assert "GED" in out and "HM-IoU" in out and "the four readings" in out


def test_demo_says_what_data_to_provide(tmp_path, capsys):
    assert demo.main(["--data", str(tmp_path / "nowhere")]) == 2
    assert "DIFFSEG_LIDC" in capsys.readouterr().err
