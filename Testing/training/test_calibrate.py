"""Fitting tau_out on the validation split (issue 6): the fit recovers a known temperature and a
hand-computed optimum, never changes the masks, and ``python -m training.calibrate`` rewrites only the
card's tau_out (atomically, loadable again) with --write and nothing at all without it."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from DiffSegUncertaintyLib.engine import cli
from DiffSegUncertaintyLib.engine.analysis import evaluation
from DiffSegUncertaintyLib.engine.files import modelfile
from DiffSegUncertaintyLib.engine import testing
from training import calibrate

SCALE = {"kind": "scale", "scale": 1 / 255, "offset": 0.0}


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())}


# -- the fit ---------------------------------------------------------------------------------------

def test_hand_computed_optimum():
    """Five voxels, every y0 = (-1, +1) (d = 2), four labelled foreground: NLL(tau) is the Bernoulli
    cross-entropy of sigmoid(2 / tau) against 0.8, minimal where sigmoid(2 / tau) = 0.8, i.e.
    tau = 2 / ln 4 = 1 / ln 2, with NLL = H(0.8) = -(0.8 ln 0.8 + 0.2 ln 0.2)."""
    y0 = torch.tensor([-1.0, 1.0]).reshape(1, 1, 2, 1, 1).expand(1, 1, 2, 1, 5).contiguous()
    ann = np.array([[[[1, 1, 1, 1, 0]]]])  # (N=1, A=1, 1, 5)
    fit = calibrate.fit_tau(lambda t: calibrate.calibration_scores(y0, ann, t), digits=6)
    assert fit.tau == pytest.approx(1 / math.log(2), rel=2e-3)
    assert fit.nll == pytest.approx(-(0.8 * math.log(0.8) + 0.2 * math.log(0.2)), abs=1e-6)
    assert calibrate.calibration_scores(y0, ann, 0.5)["nll"] > fit.nll
    # ECE at the optimum: confidence 0.8 for all five voxels, accuracy 4/5: zero
    assert fit.ece == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("tau_true", [0.3, 0.8, 2.0])
def test_fit_recovers_a_known_temperature(tau_true):
    """Labels drawn from softmax(y0 / tau*) with a fixed generator (16 x 32 x 32 voxels, 3 classes):
    the fitted tau is tau* within 5 %, its NLL is at most the NLL at 0.5, and the masks do not move."""
    g = torch.Generator().manual_seed(0)
    y0 = 1.5 * torch.randn(16, 1, 3, 32, 32, generator=g)  # (N, M=1, C, H, W)
    p_true = torch.softmax(y0[:, 0] / tau_true, dim=1)
    labels = torch.multinomial(p_true.permute(0, 2, 3, 1).reshape(-1, 3), 1, generator=g).reshape(16, 1, 32, 32)
    ann = labels.numpy()
    fit = calibrate.fit_tau(lambda t: calibrate.calibration_scores(y0, ann, t))
    assert fit.tau == pytest.approx(tau_true, rel=0.05)
    assert not fit.at_edge
    assert fit.nll <= calibrate.calibration_scores(y0, ann, 0.5)["nll"] + 1e-12
    assert fit.nll == pytest.approx(min(r["nll"] for r in fit.table), rel=1e-6)  # up to the 4-digit rounding
    assert [r["tau"] for r in fit.table] == sorted(r["tau"] for r in fit.table)
    for tau in (fit.tau, 0.5):
        p = torch.softmax(y0 / tau, dim=2)
        assert torch.equal(p.argmax(2), y0.argmax(2))
    # one hypothesis per image: the fused mask is that hypothesis, so DSC does not move either
    assert fit.scores["dice"] == calibrate.calibration_scores(y0, ann, 0.5)["dice"]


def test_bad_range_and_non_validation_data_are_refused(tmp_path):
    with pytest.raises(calibrate.InputError):
        calibrate.fit_tau(lambda t: {"nll": t, "ece": 0.0}, lo=1.0, hi=0.5)
    with pytest.raises(calibrate.InputError, match="validation split only"):
        calibrate.val_file(tmp_path / "train.npz")
    assert calibrate.val_file(tmp_path) == tmp_path / "val.npz"


def test_failed_replace_leaves_the_card_and_no_temp_file(tmp_path, monkeypatch):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.json").write_text('{"a": 1}\n')

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(calibrate.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        calibrate.write_card_atomically(folder, {"a": 2})
    assert (folder / "model.json").read_text() == '{"a": 1}\n'
    assert [p.name for p in folder.iterdir()] == ["model.json"]


# -- the command, end to end on a tiny model and real LIDC val images -------------------------------

@pytest.fixture()
def tiny_crop_model(tmp_path):
    folder = testing.make_tiny_model_folder(
        tmp_path / "tiny", name="hsrdiff-tiny-calib", size=[32, 32], preprocessing=SCALE,
        sampling={"method": "ddim", "steps": 2}, config={"schedule": {"kind": "linear", "T": 20, "scale_to_T": True}})
    card = json.loads((folder / "model.json").read_text())
    card["input"]["roi_required"] = True  # scored on the centre 32 x 32 box, as the LIDC models
    (folder / "model.json").write_text(json.dumps(card, indent=2) + "\n")
    return folder


def _argv(model, lidc_root, *extra):
    return ["--model", str(model), "--data", str(lidc_root), "--images", "3", "--samples", "2",
            "--grid", "7", *extra]


def test_without_write_the_folder_is_byte_identical(tiny_crop_model, lidc_root, tmp_path, capsys):
    before = _snapshot(tiny_crop_model)
    out = tmp_path / "fit.json"
    assert calibrate.main(_argv(tiny_crop_model, lidc_root, "--json", str(out))) == 0
    assert _snapshot(tiny_crop_model) == before
    text = capsys.readouterr().out
    assert "| tau | NLL (x100, nats) | ECE (%) |" in text and "best" in text and "card not changed" in text
    doc = json.loads(out.read_text())
    assert doc["images"] == 3 and doc["samples"] == 2 and doc["fitted_on"] == "val"
    assert doc["nll_after"] <= doc["nll_before"] + 1e-12 and len(doc["table"]) >= 7
    assert {"tau", "nll", "ece", "dice"} <= set(doc["table"][0]) and doc["dice_after"] is not None
    # the numbers at the card's tau are those of diffseg evaluate on the same images, seeds and sampler
    assert cli.main(["evaluate", "--model", str(tiny_crop_model), "--data", str(lidc_root / "val.npz"),
                     "--samples", "2", "--max-images", "3", "--output", str(tmp_path / "eval"), "--quiet"]) == 0
    ev = json.loads((tmp_path / "eval" / "metrics.json").read_text())["summary"]
    assert doc["nll_before"] == pytest.approx(ev["nll"]["mean"], rel=1e-6)
    assert doc["ece_before"] == pytest.approx(ev["ece"]["mean"], rel=1e-6)
    assert doc["dice_before"] == pytest.approx(ev["dice"]["mean"], rel=1e-6)
    # the printed table: the 7 grid points, the card's 0.5 and the best (the refinement is in --json)
    shown = [line for line in text.splitlines() if line.startswith("| ") and "tau" not in line and "---" not in line]
    assert 8 <= len(shown) <= 9 and len(doc["table"]) > len(shown)
    assert sum(line.endswith("| card |") for line in shown) == 1 and sum("best" in line for line in shown) == 1


def test_write_rewrites_only_tau_out_atomically(tiny_crop_model, lidc_root, monkeypatch, capsys):
    old_card = json.loads((tiny_crop_model / "model.json").read_text())
    weights = (tiny_crop_model / "model.safetensors").read_bytes()
    replaced = []
    real_replace = os.replace

    def spy(src, dst):
        replaced.append((Path(src), Path(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(calibrate.os, "replace", spy)
    assert calibrate.main(_argv(tiny_crop_model, lidc_root, "--seed", "3", "--write")) == 0
    # one rename, of a temporary file in the same folder, onto model.json; nothing left behind
    assert len(replaced) == 1
    src, dst = replaced[0]
    assert src.parent == tiny_crop_model and src.name != "model.json" and dst == tiny_crop_model / "model.json"
    assert sorted(p.name for p in tiny_crop_model.iterdir()) == ["model.json", "model.safetensors"]
    assert (tiny_crop_model / "model.safetensors").read_bytes() == weights
    new_card = json.loads((tiny_crop_model / "model.json").read_text())
    cal = new_card.pop("calibration")
    tau = new_card["architecture"].pop("tau_out")
    old_tau = old_card["architecture"].pop("tau_out")
    assert new_card == old_card  # every other field identical
    assert old_tau == 0.5 and tau == cal["tau_out"] and tau > 0
    assert cal["fitted_on"] == "val" and cal["images"] == 3 and cal["samples"] == 2 and cal["seed"] == 3
    assert cal["tau_out_before"] == 0.5 and cal["nll_after"] <= cal["nll_before"] + 1e-12
    assert {"ece_before", "ece_after", "command"} <= set(cal) and "--write" in cal["command"]
    model, card = modelfile.load_model(tiny_crop_model)  # still a valid folder (sha256 of the weights)
    assert model.tau_out == pytest.approx(tau) and card["calibration"]["tau_out"] == tau
    assert "loads again" in capsys.readouterr().out


def test_a_card_that_does_not_load_is_put_back(tiny_crop_model, monkeypatch):
    old = (tiny_crop_model / "model.json").read_bytes()

    def broken(folder, device="cpu"):
        raise modelfile.ModelFileError("simulated")

    monkeypatch.setattr(calibrate.modelfile, "load_model", broken)
    with pytest.raises(modelfile.ModelFileError):
        calibrate.write_tau_out(tiny_crop_model, 0.7, {"tau_out": 0.7})
    assert (tiny_crop_model / "model.json").read_bytes() == old
    assert sorted(p.name for p in tiny_crop_model.iterdir()) == ["model.json", "model.safetensors"]


def test_output_scores_every_metric_at_the_fitted_tau_and_write_puts_them_in_the_card(
        tiny_crop_model, lidc_root, tmp_path):
    assert calibrate.main(_argv(tiny_crop_model, lidc_root, "--output", str(tmp_path / "fit"), "--write")) == 0
    card = json.loads((tiny_crop_model / "model.json").read_text())
    tau = card["architecture"]["tau_out"]
    assert tau != 0.5 and card["metrics"]["tau_out"] == tau and card["metrics"]["images"] == 3
    # the same numbers as diffseg evaluate of the rewritten model (same images, seeds, sampler)
    assert cli.main(["evaluate", "--model", str(tiny_crop_model), "--data", str(lidc_root / "val.npz"),
                     "--samples", "2", "--max-images", "3", "--output", str(tmp_path / "eval"), "--quiet"]) == 0
    ev = json.loads((tmp_path / "eval" / "metrics.json").read_text())["summary"]
    for key in ("ged", "hm_iou", "nll", "ece", "dice"):
        assert card["metrics"]["values"][key] == pytest.approx(ev[key]["mean"], rel=1e-6, abs=1e-12), key
    assert card["metrics"]["values"]["nll"] == pytest.approx(card["calibration"]["nll_after"], rel=1e-6)
