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
    assert "same class: 100.0000 %" in out and "|GED difference|: 0.0000" in out
    c = testing.make_tiny_model_folder(tmp_path / "c", seed=1, **CARD)  # other weights
    assert "same class: 100.0000 %" not in _run(a, c, lidc_root, capsys)


def test_mismatched_models_are_refused(tmp_path, lidc_root, capsys):
    a = testing.make_tiny_model_folder(tmp_path / "a", **CARD)
    b = testing.make_tiny_model_folder(tmp_path / "b", spatial_dims=3, size=[2, 16, 16],  # scored on stacks
                                       sampling=CARD["sampling"])
    assert compare_models.main(["--a", str(a), "--b", str(b), "--data", str(lidc_root / "val.npz"),
                                "--images", "1", "--samples", "1"]) == 2
    assert "differ in shape" in capsys.readouterr().err
