"""The README's main job (training/demo.py): the whole CT of LIDC-IDRI-0001 (a few of its slices) with
the shipped model from a point, and the crop case on the real LIDC val data with a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from DiffSegUncertaintyLib.engine import testing
from training import demo
from DiffSegUncertaintyLib.engine.files.modelfile import SHIPPED_MODELS
from training.data.lidc import CT_PREPROCESSING, CT_WINDOW_HU


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
                                           preprocessing=CT_PREPROCESSING)
    rc = demo.main(["--crops", "--data", str(lidc_root), "--model", str(model), "--output",
                    str(tmp_path / "demo"), "--samples", "3", "--steps", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "demo" / "case" / "ct.nrrd")))
    assert ct.dtype == np.int16 and (ct.min(), ct.max()) == CT_WINDOW_HU  # a CT in HU, as a user's
    assert len(list((tmp_path / "demo" / "case").glob("reading_*.nrrd"))) == 4
    hyps = demo.read_hypotheses(tmp_path / "demo" / "result" / "hypotheses.seg.nrrd")
    assert hyps.shape[0] == 3 and hyps.shape[2:] == (128, 128)
    assert "GED" in out and "HM-IoU" in out and "the four readings" in out


def test_demo_says_what_data_to_provide(tmp_path, capsys):
    assert demo.main(["--crops", "--data", str(tmp_path / "nowhere")]) == 2
    assert "DIFFSEG_LIDC" in capsys.readouterr().err
    assert demo.main(["--ct", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "DIFFSEG_LIDC_CT" in err and "--ct" in err


def test_compare_3d_by_hand():
    readings = np.zeros((4, 3, 4, 4), np.uint8)
    readings[:, 1, 1:3, 1:3] = 1                     # four readers agree on 4 voxels of slice 1
    readings[0, 2, 1, 1] = 1                         # reader 1 adds one voxel on slice 2
    r = demo.compare_3d(readings.copy(), readings, demo.majority(readings), voxel_mm3=2.0)
    assert r["ged"] == pytest.approx(0.0, abs=1e-12) and r["hm_iou"] == pytest.approx(1.0)
    assert r["consensus_dice"] == 1.0                # the majority is the four shared voxels
    assert r["reader_mm3"]["each"] == [10.0, 8.0, 8.0, 8.0] and r["reader_mm3"]["mean"] == 8.5
    assert r["reader_slices"] == (1, 2) and r["consensus_slices"] == (1, 1)
    half = readings[:, :, :, :].copy()
    half[:, 1, 1:3, 2] = 0                           # hypotheses of half the majority: Dice 2*2/(2+4)
    r = demo.compare_3d(half, readings, demo.majority(half), 1.0)
    assert r["consensus_dice"] == pytest.approx(2 / 3)


def test_the_main_job_on_the_whole_ct(lidc_ct_root, tmp_path, capsys):
    """Five slices of the real CT around the nodule (its own geometry, in HU) and the four readers'
    masks: the shipped model from a point inside the nodule, 2 hypotheses of 5 DDIM steps. The box is
    the card's 64x64 around the point, the stretch the card's, the hypotheses land on the nodule."""
    case = tmp_path / "ct"
    case.mkdir()
    sub = (slice(None), slice(None), slice(88, 93))  # slices 88..92 (i, j, k)
    sitk.WriteImage(sitk.ReadImage(str(lidc_ct_root / "ct.nrrd"))[sub], str(case / "ct.nrrd"), True)
    for n in range(1, 5):
        name = f"reader-{n}-interior.nrrd"
        sitk.WriteImage(sitk.ReadImage(str(lidc_ct_root / name))[sub], str(case / name), True)
    rc = demo.main(["--ct", str(case), "--model", str(SHIPPED_MODELS / "lidc-hsrdiff-small-cpu"),
                    "--point", "318,365,2", "--samples", "2", "--steps", "5", "--precision", "fp32", "--eta", "0.5",
                    "--output", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert rc == 0, out
    import json
    s = json.loads((tmp_path / "o" / "scores.json").read_text())
    assert s["roi"]["start"][:2] == [286, 333] and s["roi"]["stop"][:2] == [350, 397]
    assert 0 <= s["roi"]["start"][2] <= 2 < s["roi"]["stop"][2] <= 5
    assert s["per_slice_slices"] == [0, 4] and s["preprocessing"] == CT_PREPROCESSING
    run = json.loads((tmp_path / "o" / "result" / "summary.json").read_text())
    assert run["point"] == [318, 365, 2] and run["growth"]["axis"] == 2
    assert run["sampler"]["eta"] == 0.5  # --eta reaches diffseg sample (the card's is 1)
    assert run["precision"] == s["precision"] == "fp32" and s["command_s"] >= run["timings"]["sampling_s"] > 0
    assert run["growth"]["first"] == s["roi"]["start"][2] and run["growth"]["last"] == s["roi"]["stop"][2] - 1
    three = s["three_d"]
    # 5 DDIM steps draw the nodule (consensus Dice 0.77 with the 6,400-step model; 2 steps only rough
    # outlines, 0.27), on the nodule: a box or a stretch in the wrong place gives none
    assert three["hypothesis_mm3"]["min"] > 0 and three["consensus_dice"] > 0.6, three
    assert 0 <= s["per_slice"]["ged"]["mean"] < 1
    assert set(s["file_bytes"]) >= {"hypotheses.seg.nrrd", "consensus.nrrd", "summary.json"}
    png = (tmp_path / "o" / "panel.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert "panel:" in out and "per slice" in out and "readers' range" in out


def test_scoring_the_masks_box_gives_the_full_grid_numbers():
    """The main job scores the in-plane box around every mask (demo.masks_box); on a grid with the masks
    away from the centre and background elsewhere, every score equals the full grid's."""
    rng = np.random.default_rng(3)
    readings = np.zeros((4, 6, 96, 80), np.uint8)
    hyps = np.zeros((5, 6, 96, 80), np.uint8)
    for r in range(4):
        readings[r, 1:5, 60 + r:75, 10:22 + r] = 1
    for m in range(5):
        hyps[m, 1 + m % 2:5, 58 + m:74, 9 + m:24] = rng.random((4 - m % 2, 16 - m, 15 - m)) > 0.2
    consensus = (hyps.mean(0) >= 0.5).astype(np.uint8)
    h, r, c = demo.masks_box(hyps, readings, consensus)
    assert h.shape[:2] == hyps.shape[:2] and h.shape[2] * h.shape[3] < 0.1 * 96 * 80
    assert demo.compare(h, r) == demo.compare(hyps, readings)
    assert demo.compare_3d(h, r, c, 1.25) == demo.compare_3d(hyps, readings, consensus, 1.25)
