"""Figures: the numbers behind each PNG are the engine's, and each command writes its files."""

import json

import numpy as np
import pytest

from DiffSegUncertaintyLib.engine.analysis import metrics
from DiffSegUncertaintyLib.engine.files import modelfile
from DiffSegUncertaintyLib.engine import testing
from DiffSegUncertaintyLib.engine.analysis.evaluation import (data_for_model, evaluate_predictor, load_multireader_npz,
                                                    predictor_from_model)
from DiffSegUncertaintyLib.engine.pipeline import Model, Request, segment
from training import figures

SCALE = {"kind": "scale", "scale": 1 / 255, "offset": 0.0}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = testing.make_tiny_model_folder(
        tmp_path_factory.mktemp("models") / "hsr", name="hsr-tiny", size=[16, 16], preprocessing=SCALE,
        sampling={"method": "ddpm", "steps": None}, config={"schedule": {"kind": "linear", "T": 20, "scale_to_T": True}})
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 16, 16), dtype=np.uint8)
    masks = np.zeros((3, 4, 16, 16), np.uint8)
    masks[:, 1:, 4:10, 5:11] = 1
    data = tmp_path_factory.mktemp("data") / "d.npz"
    np.savez(data, images=images, masks=masks)
    return folder, data, images, masks


def test_steps_sweep_and_plot(tiny, tmp_path):
    folder, data_path, images, masks = tiny
    data = load_multireader_npz(data_path)
    sweep = figures.steps_sweep({"hsr": Model.load(folder)}, data, [1, 3, 50], num_samples=2, sampler="ddim")
    row = sweep["hsr"]
    assert row["steps"] == [1, 3]  # 50 > T = 20 is skipped
    assert row["num_images"] == len(images)
    assert all(0 <= d[0] <= 1 for d in row["dice"]) and len(row["ged"]) == 2
    out = figures.plot_steps(sweep, tmp_path / "steps.png", 2)
    assert out.stat().st_size > 1000
    assert json.loads(out.with_suffix(".json").read_text())["curves"]["hsr"]["steps"] == [1, 3]


def test_steps_sweep_scores_a_crop_model_on_its_box(tiny, tmp_path):
    """A crop model (input.roi_required, 8 x 8 on 16 x 16 data) is scored on the centre box, preprocessed
    as a whole image first, exactly as diffseg evaluate scores it, not on a resized image."""
    folder, data_path, _, _ = tiny
    crop = testing.make_tiny_model_folder(tmp_path / "crop", size=[8, 8], preprocessing={"kind": "minmax"},
                                          config={"schedule": {"kind": "linear", "T": 20, "scale_to_T": True}})
    card_file = crop / "model.json"
    card_file.write_text(json.dumps({**json.loads(card_file.read_text()),
                                     "input": {**json.loads(card_file.read_text())["input"], "roi_required": True}}))
    model = Model.load(crop)
    data = load_multireader_npz(data_path)
    row = figures.steps_sweep({"crop": model}, data, [2], num_samples=2, sampler="ddim")["crop"]
    seen = data_for_model(data, model.card)
    assert seen.masks.shape[2:] == (8, 8) and seen.images.shape[1:] == (16, 16)
    assert seen.box == (slice(4, 12), slice(4, 12))
    request = Request(steps=2, sampler="ddim", seed=0, device="cpu")
    pred = predictor_from_model(model, request, seen.box)
    direct = evaluate_predictor(pred, seen.images, seen.masks, 2, batch_size=len(seen))
    assert row["ged"][0] == list(direct["summary"]["ged"]) and row["num_images"] == len(seen)
    # what is scored is what `diffseg sample --roi 4,4,12,12` draws from the whole image
    from DiffSegUncertaintyLib.engine.pipeline import volumes_from_array
    res = segment(model, volumes_from_array(seen.images[0]), request, samples=2, roi=[4, 4, 12, 12])
    np.testing.assert_array_equal(pred(seen.images[:1], 2)[0].argmax(1).numpy(), res.maps.labels.numpy())


def test_kappa_from_sampler_extras(tiny, tmp_path):
    folder, _, images, _ = tiny
    ts, kappa = figures.kappa_trace(Model.load(folder), images[:2], num_samples=3, steps=4, sampler="ddim")
    assert kappa.shape == (2, 3, 4) and len(ts) == 4 and ts == sorted(ts, reverse=True)
    assert np.all((kappa >= 0) & (kappa <= 1))
    out = figures.plot_kappa(ts, kappa, tmp_path / "kappa.png", ["a", "b"], T=20)
    doc = json.loads(out.with_suffix(".json").read_text())
    assert np.allclose(doc["kappa_mean"], kappa.mean(1))
    with pytest.raises(ValueError, match="steps"):
        figures.plot_kappa(ts[:2], kappa, tmp_path / "bad.png")


def test_case_maps_match_uncertainty_of_the_probabilities(tmp_path):
    p_fg = np.zeros((4, 8, 8))
    p_fg[:2, 2:5, 2:5] = 0.9  # two of four hypotheses see a square
    probs = np.stack([1 - p_fg, p_fg], axis=1)
    maps = figures.case_maps(probs)
    assert (maps["labels"][:2, 3, 3] == 1).all() and (maps["labels"][2:] == 0).all()
    assert maps["entropy"][3, 3] == pytest.approx(-(0.45 * np.log(0.45) + 0.55 * np.log(0.55)), abs=1e-5)
    assert maps["entropy"][0, 0] == pytest.approx(0.0, abs=1e-5)
    readings = np.zeros((4, 8, 8), np.uint8)
    readings[0, 1:4, 1:4] = 1
    out = figures.plot_case(np.random.default_rng(0).random((8, 8)), readings, probs, tmp_path / "case.png")
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["foreground_voxels"] == [9, 9, 0, 0] and doc["reading_voxels"] == [9, 0, 0, 0]


def test_reliability_bins_add_up_to_metrics_ece(tmp_path):
    rng = np.random.default_rng(1)
    fg = rng.random((3, 10, 10))
    p = np.stack([1 - fg, fg], axis=1)
    labels = (rng.random((3, 10, 10)) < fg ** 2).astype(int)  # miscalibrated on purpose
    bins = figures.reliability_bins(p, labels)
    count = np.asarray(bins["count"])
    acc, conf = np.nan_to_num(bins["accuracy"]), np.nan_to_num(bins["confidence"])
    ece_from_bins = float((count / count.sum() * np.abs(acc - conf)).sum())
    pooled = np.moveaxis(p, 1, 0).reshape(2, -1)
    assert ece_from_bins == pytest.approx(metrics.ece(pooled, labels.reshape(-1)), rel=1e-9)
    assert ece_from_bins > 0.02
    out = figures.plot_reliability(p, labels, tmp_path / "rel.png", "x")
    assert json.loads(out.with_suffix(".json").read_text())["ece"] == pytest.approx(ece_from_bins)


@pytest.mark.parametrize("argv", [["case", "--index", "1"], ["reliability", "--max-images", "2"]])
def test_command_line(tiny, tmp_path, argv, capsys):
    folder, data, _, _ = tiny
    out = tmp_path / "fig.png"
    rc = figures.main(argv + ["--model", str(folder), "--data", str(data), "--samples", "2", "--steps", "2",
                              "--sampler", "ddim", "--out", str(out)])
    assert rc == 0 and out.exists() and out.with_suffix(".json").exists()
    assert figures.main(["case", "--model", str(folder), "--data", str(tmp_path / "none.npz"),
                         "--out", str(out)]) == 2


def test_curves_join_runs_that_continue_one_another(tmp_path):
    """Two runs as train.py leaves them (TensorBoard train/loss, val.jsonl): the second continues the first
    after 10 steps, so its steps shift by 10; the loss is averaged per window (by hand: steps 1-5 -> 3,
    6-10 -> 8)."""
    from torch.utils.tensorboard import SummaryWriter
    for name, scale in (("a", 1.0), ("b", 0.5)):
        run = tmp_path / name
        with SummaryWriter(str(run / "tb")) as w:
            for step in range(1, 11):
                w.add_scalar("train/loss", scale * step, step)
                w.add_scalar("train/lr", 1e-3, step)
        (run / "val.jsonl").write_text(json.dumps({"ged": 0.3 * scale, "hm_iou": 0.5, "step": 10}) + "\n")
    assert figures.main(["curves", "--run", f"first={tmp_path / 'a'}", "--run", f"second={tmp_path / 'b'}:10",
                         "--window", "5", "--out", str(tmp_path / "curves.png")]) == 0
    runs = json.loads((tmp_path / "curves.json").read_text())["runs"]
    assert runs["first"]["loss"] == [[5, pytest.approx(3.0)], [10, pytest.approx(8.0)]]
    assert runs["second"]["loss"] == [[15, pytest.approx(1.5)], [20, pytest.approx(4.0)]]
    assert runs["second"]["val"] == [{"ged": pytest.approx(0.15), "hm_iou": 0.5, "step": 20}]
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert figures.main(["curves", "--run", f"x={tmp_path / 'none'}", "--out", str(tmp_path / "c.png")]) == 2
