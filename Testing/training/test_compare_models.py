"""training.compare_models: the same hypotheses from two folders, measured on real LIDC val images."""

from __future__ import annotations

from DiffSegUncertaintyLib.engine import testing
from training import compare_models

CARD = {"size": [16, 16], "sampling": {"method": "ddim", "steps": 2}}


def _run(a, b, lidc_root, capsys):
    assert compare_models.main(["--a", str(a), "--b", str(b), "--data", str(lidc_root / "val.npz"),
                                "--images", "2", "--samples", "3"]) == 0
    return capsys.readouterr().out


def test_identical_folders_agree_everywhere_and_others_do_not(tmp_path, lidc_root, capsys):
    a = testing.make_tiny_model_folder(tmp_path / "a", seed=0, **CARD)
    b = testing.make_tiny_model_folder(tmp_path / "b", seed=0, **CARD)
    out = _run(a, b, lidc_root, capsys)
    assert "same class: 100.0000 %" in out and "ged:" in out and "b - a +0.0000 (paired SE 0.0000)" in out
    c = testing.make_tiny_model_folder(tmp_path / "c", seed=1, **CARD)  # other weights
    assert "same class: 100.0000 %" not in _run(a, c, lidc_root, capsys)


def test_mismatched_models_are_refused(tmp_path, lidc_root, capsys):
    a = testing.make_tiny_model_folder(tmp_path / "a", **CARD)
    b = testing.make_tiny_model_folder(tmp_path / "b", spatial_dims=3, size=[2, 16, 16],  # scored on stacks
                                       sampling=CARD["sampling"])
    assert compare_models.main(["--a", str(a), "--b", str(b), "--data", str(lidc_root / "val.npz"),
                                "--images", "1", "--samples", "1"]) == 2
    assert "differ in shape" in capsys.readouterr().err


def test_paired_summary_is_the_mean_and_standard_error_of_per_image_differences():
    a = [{"ged": 0.5, "hm_iou": 0.4, "dice": 0.7}, {"ged": 0.3, "hm_iou": 0.6, "dice": float("nan")},
         {"ged": 0.2, "hm_iou": 0.5, "dice": 0.9}]
    b = [{"ged": 0.4, "hm_iou": 0.5, "dice": 0.8}, {"ged": 0.1, "hm_iou": 0.6, "dice": 0.5},
         {"ged": 0.2, "hm_iou": 0.8, "dice": 0.8}]
    t = compare_models.paired(a, b)
    # GED differences -0.1, -0.2, 0.0: mean -0.1, sample std 0.1, SE 0.1 / sqrt(3)
    assert abs(t["ged"]["mean_difference"] + 0.1) < 1e-12 and abs(t["ged"]["se"] - 0.1 / 3 ** 0.5) < 1e-12
    assert abs(t["ged"]["max_abs_difference"] - 0.2) < 1e-12
    # Dice: the NaN image is left out of both means and the difference
    assert t["dice"]["n"] == 2 and abs(t["dice"]["mean_difference"] - 0.0) < 1e-12
    assert abs(t["dice"]["a"] - 0.8) < 1e-12


def test_reports_are_paired_by_image_id_and_refused_when_not_comparable(tmp_path, capsys):
    import json
    rows_a = [{"id": "p1", "ged": 0.5, "hm_iou": 0.4, "dice": 0.7}, {"id": "p2", "ged": 0.3, "hm_iou": 0.6, "dice": 0.5}]
    rows_b = [{"id": "p2", "ged": 0.1, "hm_iou": 0.6, "dice": 0.5}, {"id": "p1", "ged": 0.4, "hm_iou": 0.5, "dice": 0.8}]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"seed": 0, "num_samples": 16, "data": "v", "per_image": rows_a}))
    b.write_text(json.dumps({"seed": 0, "num_samples": 16, "data": "v", "per_image": rows_b}))
    t = compare_models.paired_reports(a, b)
    assert abs(t["ged"]["mean_difference"] + 0.15) < 1e-12  # (-0.1 + -0.2) / 2, matched by id, not by order
    assert compare_models.main(["--reports", "--a", str(a), "--b", str(b)]) == 0
    assert "ged: a 0.4000, b 0.2500" in capsys.readouterr().out
    # a subset of the other's images (a 256-slice run against a full split) is paired on the subset
    b.write_text(json.dumps({"seed": 0, "num_samples": 16, "data": "v", "per_image": rows_b[:1]}))
    t = compare_models.paired_reports(a, b)
    assert t["ged"]["n"] == 1 and abs(t["ged"]["mean_difference"] + 0.2) < 1e-12 and t["ged"]["a"] == 0.3
    rows_c = [{"id": "p3", "ged": 0.1, "hm_iou": 0.6, "dice": 0.5}]
    b.write_text(json.dumps({"seed": 0, "num_samples": 16, "data": "v", "per_image": rows_b[:1] + rows_c}))
    assert compare_models.main(["--reports", "--a", str(a), "--b", str(b)]) == 2
    assert "different images" in capsys.readouterr().err
    b.write_text(json.dumps({"seed": 1, "num_samples": 16, "data": "v", "per_image": rows_b}))
    assert compare_models.main(["--reports", "--a", str(a), "--b", str(b)]) == 2
    assert "differ in seed" in capsys.readouterr().err
