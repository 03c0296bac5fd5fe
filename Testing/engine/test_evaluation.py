"""``diffseg evaluate``: data checks, the oracle anchors through the whole path, reports, the command."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from DiffSegUncertaintyLib.engine import cli
from DiffSegUncertaintyLib.engine.analysis import evaluation
from DiffSegUncertaintyLib.engine import testing
from DiffSegUncertaintyLib.engine.networks.checks import InputError
from DiffSegUncertaintyLib.engine.pipeline import Model, Request

REPO = Path(__file__).resolve().parents[2]
LIDC = Path(os.environ.get("DIFFSEG_LIDC", REPO.parent / "shared" / "data" / "lidc128"))
SCALE = {"kind": "scale", "scale": 1 / 255, "offset": 0.0}


def _set(n=4, size=16, readers=4, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    masks = np.zeros((n, readers, size, size), np.uint8)
    for i in range(n):
        for a in range(readers):
            if (i + a) % 3:  # some empty readings, as in LIDC
                r0, c0 = rng.integers(2, size // 2, 2)
                masks[i, a, r0:r0 + size // 3 + a, c0:c0 + size // 3] = 1
    return images, masks


def _npz(path, images, masks, **extra):
    np.savez(path, images=images, masks=masks, **extra)
    return path


def _onehot(labels, c=2):
    return np.moveaxis(np.eye(c, dtype=np.float32)[labels], -1, -3)  # (..., M, *S) -> (..., M, C, *S)


# -- data ------------------------------------------------------------------------------------------

def test_load_multireader_npz_round_trip(tmp_path):
    images, masks = _set()
    path = _npz(tmp_path / "d.npz", images, masks, patient=np.array(["a", "a", "b", "b"]),
                nodule=np.array([0, 0, 1, 1], np.int16), slice=np.array([3, 4, 0, 1], np.int16))
    data = evaluation.load_multireader_npz(path)
    assert np.array_equal(data.images, images) and np.array_equal(data.masks, masks)
    assert data.item_id(3) == "b-n1-s1" and len(data.subset(2)) == 2


@pytest.mark.parametrize("arrays, message", [
    ({"images": np.zeros((2, 8, 8), np.uint8)}, "lacks the array"),
    ({"images": np.zeros((2, 8), np.uint8), "masks": np.zeros((2, 4, 8, 8), np.uint8)}, "images have shape"),
    ({"images": np.zeros((2, 8, 8), np.uint8), "masks": np.zeros((2, 8, 8), np.uint8)}, "masks have shape"),
    ({"images": np.zeros((2, 8, 8), np.uint8), "masks": np.zeros((3, 4, 8, 8), np.uint8)}, "do not match"),
    ({"images": np.zeros((2, 8, 8), np.uint8), "masks": np.zeros((2, 4, 8, 8), np.float32)}, "dtype"),
    ({"images": np.zeros((2, 8, 8), np.uint8), "masks": np.zeros((2, 4, 8, 8), np.uint8),
      "slice": np.zeros(3)}, "slice has shape"),
])
def test_load_multireader_npz_names_the_problem(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputError, match=message):
        evaluation.load_multireader_npz(tmp_path / "bad.npz")


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        evaluation.load_multireader_npz(tmp_path / "none.npz")
    (tmp_path / "x.npz").write_text("not a zip")
    with pytest.raises(InputError, match="cannot read"):
        evaluation.load_multireader_npz(tmp_path / "x.npz")


@pytest.mark.skipif(not (LIDC / "val.npz").exists(), reason=f"LIDC not found at {LIDC} (set DIFFSEG_LIDC)")
def test_lidc_val_loads():
    data = evaluation.load_multireader_npz(LIDC / "val.npz")
    assert data.images.dtype == np.uint8 and data.images.shape[1:] == (128, 128)
    assert data.masks.shape == (len(data), 4, 128, 128) and data.patient is not None


# -- scoring: oracle anchors -----------------------------------------------------------------------

class Oracle:
    """Returns the annotations themselves as the hypotheses (one-hot probabilities), in order."""

    def __init__(self, masks, single=False):
        self.masks, self.single, self.next = masks, single, 0

    def __call__(self, images, m):
        ann = self.masks[self.next:self.next + len(images)]
        self.next += len(images)
        idx = np.zeros(m, int) if self.single else np.arange(m) % ann.shape[1]
        return torch.from_numpy(_onehot(ann[:, idx]))


def test_oracle_gives_ged_zero_and_hm_iou_one_through_the_report(tmp_path):
    images, masks = _set(n=5)
    res = evaluation.evaluate_predictor(Oracle(masks), images, masks, num_samples=4, batch_size=2)
    s = res["summary"]
    assert s["ged"][0] == pytest.approx(0.0, abs=1e-12) and s["hm_iou"][0] == pytest.approx(1.0)
    assert s["mdm"][0] == pytest.approx(1.0) and len(res["per_image"]) == 5
    jpath, tpath = evaluation.write_report(res, tmp_path / "out", "oracle", {"data": "synthetic"})
    doc = json.loads(jpath.read_text())
    assert doc["summary"]["hm_iou"]["mean"] == pytest.approx(1.0) and len(doc["per_image"]) == 5
    assert doc["conventions"]["empty"] == "one" and doc["conventions"]["reference"] == "each"
    table = tpath.read_text()
    assert "| oracle | 0.000 ± 0.000 | 1.000 ± 0.000 | 1.000 ± 0.000 |" in table
    assert "GED_4" in table and "Empty masks" in table and "ECE background: included" in table


def test_single_annotation_sampler_has_no_diversity_and_worse_ged():
    images, masks = _set(n=3)
    res = evaluation.evaluate_predictor(Oracle(masks, single=True), images, masks, 4, batch_size=3)
    assert res["summary"]["diversity"][0] == 0.0
    assert res["summary"]["ged"][0] > 0.05


def test_predictor_shape_is_checked_and_progress_called():
    images, masks = _set(n=2)
    calls = []
    with pytest.raises(InputError, match="expected"):
        evaluation.evaluate_predictor(lambda x, m: torch.zeros(len(x), m + 1, 2, 16, 16), images, masks, 2)
    evaluation.evaluate_predictor(Oracle(masks), images, masks, 4, 1, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 2), (2, 2)]


def test_conventions_switches_reach_the_metrics():
    images, masks = _set(n=3)
    masks[:, :, :, :] = 0  # every reading empty: IoU(empty, empty) decides everything
    pred = lambda x, m: torch.from_numpy(_onehot(np.zeros((len(x), m, 16, 16), int)))  # noqa: E731
    one = evaluation.evaluate_predictor(pred, images, masks, 2, 3, empty="one")["summary"]
    zero = evaluation.evaluate_predictor(pred, images, masks, 2, 3, empty="zero")["summary"]
    assert one["hm_iou"][0] == 1.0 and zero["hm_iou"][0] == 0.0


def test_format_table_several_methods_and_nan():
    s = {"ged": (0.25, 0.01), "hm_iou": (0.6, 0.02), "dice": (0.8, 0.1), "nll": (0.042, 0.01),
         "ece": (0.002, 0.001), "miou": (float("nan"), float("nan"))}
    t = evaluation.format_table({"A": s, "B": s}, {"num_samples": 16, "reference": "soft"})
    assert "| A | 0.250 ± 0.010 | 0.600 ± 0.020 | - | - | n/a |" in t
    assert "| B | 80.00 ± 10.00 | 4.20 ± 1.00 | 0.20 ± 0.10 |" in t
    assert "soft label" in t and "GED_16" in t


# -- diffusion models --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return testing.make_tiny_model_folder(
        tmp_path_factory.mktemp("models") / "tiny", name="hsrdiff-tiny-test", size=[16, 16],
        preprocessing=SCALE, sampling={"method": "ddim", "steps": 2}, config={"schedule": {"kind": "linear", "T": 20, "scale_to_T": True}})


def test_predictor_from_model_seeds_batches_and_resizes(tiny_model):
    model = Model.load(tiny_model)
    images, _ = _set(n=3, size=32)
    pred = evaluation.predictor_from_model(model, Request(seed=1, device="cpu", precision="fp32"))
    p = pred(images, 3)
    assert p.shape == (3, 3, 2, 32, 32)  # resized to 16 for the model and back to the data's grid
    assert torch.allclose(p.sum(2), torch.ones(3, 3, 32, 32), atol=1e-5)
    assert len(pred.timesteps) == 2  # the card's sampler: DDIM, 2 steps
    again = evaluation.predictor_from_model(model, Request(seed=1, device="cpu", batch_size=2, precision="fp32"))
    assert torch.allclose(again(images[1:2], 3)[0], p[1], atol=1e-5)  # per-hypothesis seeds: batching is invisible
    other = evaluation.predictor_from_model(model, Request(seed=2, device="cpu", precision="fp32"))(images, 3)
    assert not torch.allclose(other, p)
    small, _ = _set(n=2, size=16)  # on the card's grid: no resize; p = softmax(y0 / tau_out) over classes
    from DiffSegUncertaintyLib.engine.sampling.sampler import sample
    x = torch.from_numpy(small[:, None].astype(np.float32) / 255)  # card preprocessing: x / 255
    y0 = sample(model.network, x, 3, pred.config, seed=1).y0
    assert torch.allclose(pred(small, 3), torch.softmax(y0 / model.tau_out, dim=2), atol=1e-6)


def test_predictor_splits_into_sample_y0_and_probabilities(tiny_model):
    """predict = probabilities(sample_y0): one y0 can be rescored at any tau (training.calibrate);
    another tau changes the probabilities but not the masks. y0 is on the data's grid (resized before the
    softmax, as diffseg sample resizes it)."""
    model = Model.load(tiny_model)
    pred = evaluation.predictor_from_model(model, Request(seed=4, device="cpu"))
    images, _ = _set(n=2, size=32)
    y0 = pred.sample_y0(images, 3)
    assert y0.shape == (2, 3, 2, 32, 32) and len(pred.timesteps) == 2
    assert torch.allclose(pred(images, 3), pred.probabilities(y0), atol=1e-6)
    hot = pred.probabilities(y0, tau=2.0)
    assert not torch.allclose(hot, pred.probabilities(y0))
    assert torch.equal(hot.argmax(2), pred.probabilities(y0).argmax(2))


def _evaluate(*argv: str) -> int:
    return cli.main(["evaluate", *map(str, argv), "--device", "cpu", "--quiet"])


def test_evaluate_command_writes_json_and_table(tiny_model, tmp_path, capsys):
    images, masks = _set(n=5)
    data = _npz(tmp_path / "held_out.npz", images, masks)
    assert _evaluate("--model", tiny_model, "--data", data, "--samples", "2", "--steps", "1", "--sampler", "ddpm",
                     "--max-images", "3", "--batch-size", "4", "--output", tmp_path / "out") == 0
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert doc["num_images"] == 3 and doc["num_samples"] == 2 and len(doc["per_image"]) == 3
    assert doc["sampler"] == "ddpm" and doc["steps"] == 1 and doc["model"] == "hsrdiff-tiny-test"
    assert set(doc["summary"]) >= {"ged", "hm_iou", "mdm", "diversity", "dice", "nll", "ece", "miou"}
    assert "GED_2" in (tmp_path / "out" / "table.md").read_text()
    assert "GED_2" in capsys.readouterr().out  # the table is printed


def test_evaluate_command_bad_input_exit_2(tiny_model, tmp_path, capsys):
    images, masks = _set(n=2)
    masks[0, 0, 0, 0] = 3  # a label the 2-class model cannot have
    data = _npz(tmp_path / "d.npz", images, masks)
    assert _evaluate("--model", tiny_model, "--data", data, "--output", tmp_path / "o") == 2
    assert "classes" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert _evaluate("--model", tmp_path / "nope", "--data", data, "--output", tmp_path / "o") == 2


def test_subset_is_evenly_spaced_and_centre_box_matches_the_training_crop():
    images, masks = _set(n=10, size=32)
    data = evaluation.MultiReaderSet(images, masks, patient=np.arange(10).astype(str))
    sub = data.subset(4)
    assert [str(p) for p in sub.patient] == ["0", "3", "6", "9"]  # not the first four
    assert data.subset(None) is data and data.subset(50) is data
    crop = data.centre_box([16, 16])
    assert crop.box == (slice(8, 24), slice(8, 24)) and np.array_equal(crop.images, images)
    assert np.array_equal(crop.shown_images(), images[:, 8:24, 8:24])
    assert np.array_equal(crop.masks, masks[:, :, 8:24, 8:24])
    from training.data.common import center_crop  # the box training used (fit = "crop")
    assert np.array_equal(center_crop(torch.from_numpy(images), (16, 16)).numpy(), crop.shown_images())
    assert crop.subset(2).box == crop.box
    with pytest.raises(InputError, match="does not fit"):
        data.centre_box([64, 64])


def test_a_crop_model_is_scored_on_the_centre_box(tiny_model, tmp_path):
    """A crop model (card input.roi_required) on 32x32 data samples the centre 16x16 box as its ROI, not a
    resize: with a pointwise preprocessing (x / 255) the result equals scoring the pre-cropped data."""
    crop_model = Path(shutil.copytree(tiny_model, tmp_path / "crop"))
    card = json.loads((crop_model / "model.json").read_text())
    card["input"]["roi_required"] = True
    (crop_model / "model.json").write_text(json.dumps(card))
    images, masks = _set(n=3, size=32)
    big = _npz(tmp_path / "big.npz", images, masks)
    small = _npz(tmp_path / "small.npz", images[:, 8:24, 8:24], masks[:, :, 8:24, 8:24])
    for data, model, out in ((big, crop_model, "a"), (small, tiny_model, "b")):
        assert _evaluate("--model", model, "--data", data, "--samples", "2", "--output", tmp_path / out) == 0
    a, b = (json.loads((tmp_path / o / "metrics.json").read_text())["summary"] for o in "ab")
    assert a == b


def test_a_crop_model_is_preprocessed_on_the_whole_image_before_the_box(lidc_root, tiny_model, tmp_path):
    """A "minmax" card (the LIDC CT cards) must see exactly the training input x / 255 of the centre box:
    the range is the whole 128 x 128 crop's, not the box's (which rarely holds a 0 and a 255)."""
    folder = Path(shutil.copytree(tiny_model, tmp_path / "ct"))
    card = json.loads((folder / "model.json").read_text())
    card["input"].update(size=[64, 64], roi_required=True,
                         preprocessing={"kind": "minmax", "lower": -1000.0, "upper": 1400.0})
    (folder / "model.json").write_text(json.dumps(card))
    model = Model.load(folder)
    data = evaluation.data_for_model(evaluation.load_multireader_npz(lidc_root / "val.npz"), model.card, 6)
    pred = evaluation.predictor_from_model(model, Request(device="cpu"), data.box)
    for i in range(len(data)):
        plan = pred.plan(data.images[i], 2)
        assert plan.roi.start == [32, 32] and plan.roi.stop == [96, 96]
        want = data.images[i, 32:96, 32:96].astype(np.float32) / 255
        np.testing.assert_allclose(plan.image[0][plan.roi.slices()], want, rtol=0, atol=1e-6)


def test_a_3d_crop_model_is_scored_on_nodule_stacks(lidc_root, tmp_path):
    """diffseg evaluate on a 3D model: stacks of the card's depth, the centre box, one row per stack."""
    folder = testing.make_tiny_model_folder(tmp_path / "tiny3d", spatial_dims=3, size=[4, 16, 16],
                                            preprocessing={"kind": "minmax", "lower": -1000.0, "upper": 1400.0},
                                            sampling={"method": "ddim", "steps": 2})
    card = json.loads((folder / "model.json").read_text())
    card["input"]["roi_required"] = True
    (folder / "model.json").write_text(json.dumps(card))
    assert _evaluate("--model", folder, "--data", lidc_root / "val.npz", "--samples", "2", "--max-images", "3",
                     "--output", tmp_path / "eval") == 0
    doc = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert doc["num_images"] == 3 and len(doc["per_image"]) == 3
    stacks = evaluation.load_multireader_npz(lidc_root / "val.npz").stacks(4).subset(3)
    assert [r["id"] for r in doc["per_image"]] == [stacks.item_id(i) for i in range(3)]
    assert 0 <= doc["summary"]["ged"]["mean"] <= 2


def test_stacks_need_the_nodule_arrays():
    data = evaluation.MultiReaderSet(np.zeros((2, 8, 8), np.uint8), np.zeros((2, 4, 8, 8), np.uint8))
    with pytest.raises(InputError, match="patient / nodule / slice"):
        data.stacks(2)


def test_evaluate_under_torchrun_gathers_what_one_process_writes(tiny_model, lidc_root, tmp_path):
    """Issue 15: `torchrun --nproc-per-node 2 ... evaluate` shares 5 real val images out (3 + 2) and rank 0
    writes the metrics.json a single process writes: the same per-image rows in the same order, the same
    summary (only the timing and the process count differ)."""
    import subprocess
    import sys
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["evaluate", "--model", str(tiny_model), "--data", str(lidc_root / "val.npz"), "--samples", "3",
              "--max-images", "5", "--device", "cpu", "--quiet"]
    one = subprocess.run([sys.executable, "-m", "DiffSegUncertaintyLib.engine.cli", *common,
                          "--output", str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "DiffSegUncertaintyLib.engine.cli", *common, "--output", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("one", "two"))
    assert (a["processes"], b["processes"]) == (1, 2)
    assert [r["index"] for r in b["per_image"]] == list(range(5))
    assert b["per_image"] == a["per_image"] and b["summary"] == a["summary"]
    assert {k: v for k, v in a.items() if k not in ("seconds", "processes")} == \
        {k: v for k, v in b.items() if k not in ("seconds", "processes")}


# -- --resume: the journal of an interrupted run ---------------------------------------------------

class Noisy:
    """Random hypotheses drawn from the image's own bytes, so an image gets the same ones whenever and in
    whichever call it is scored (as the diffusion models' do under a seed); counts the images it sees."""

    def __init__(self):
        self.seen = 0

    def __call__(self, images, m):
        import zlib
        self.seen += len(images)
        out = [np.random.default_rng(zlib.crc32(x.tobytes())).random((m, 2, *x.shape), dtype=np.float32)
               for x in images]
        return torch.from_numpy(np.stack(out))


def _stop_after(k):
    def progress(done, total):
        if done == k:
            raise KeyboardInterrupt
    return progress


def _interrupt_scoring(monkeypatch, at):
    """Ctrl-C while image number ``at`` (1-based, of this run) is scored; returns the list of calls."""
    score, calls = evaluation.metrics.score_image, []

    def scoring(*a, **k):
        calls.append(1)
        if len(calls) == at:
            raise KeyboardInterrupt
        return score(*a, **k)

    monkeypatch.setattr(evaluation.metrics, "score_image", scoring)
    return calls


def test_resume_gives_the_uninterrupted_report_and_scores_only_what_is_missing(tmp_path):
    from DiffSegUncertaintyLib.engine.analysis.journal import Journal
    images, masks = _set(n=5)
    ids = [f"img{i}" for i in range(5)]
    whole = evaluation.evaluate_predictor(Noisy(), images, masks, 4, ids=ids)
    run = {"seed": 0, "samples": 4}
    with pytest.raises(KeyboardInterrupt):
        evaluation.evaluate_predictor(Noisy(), images, masks, 4, progress=_stop_after(2), ids=ids,
                                      journal=Journal.open(tmp_path / "j", run))
    kept = Journal.open(tmp_path / "j", run).rows(ids)
    assert sorted(kept) == [0, 1] and kept[1] == whole["per_image"][1]
    rows_file = next((tmp_path / "j").glob("rows-*.jsonl"))
    with open(rows_file, "a") as f:  # a kill while the third row was written
        f.write('{"index": 2, "id": "img2", "ged": 0.')
    again = Noisy()
    resumed = evaluation.evaluate_predictor(again, images, masks, 4, ids=ids, journal=Journal.open(tmp_path / "j", run))
    assert again.seen == 3 and resumed["resumed"] == 2 and whole["resumed"] == 0
    assert resumed["per_image"] == whole["per_image"] and resumed["summary"] == whole["summary"]


def test_the_journal_refuses_other_settings_and_other_data(tmp_path):
    from DiffSegUncertaintyLib.engine.analysis.journal import Journal
    j = Journal.open(tmp_path / "j", {"seed": 0, "sampler_config": {"steps": 25, "eta": 1.0}})
    j.append({"index": 0, "id": "a", "ged": 0.5})
    j.close()
    with pytest.raises(InputError, match="seed: 0 there, 1 now"):
        Journal.open(tmp_path / "j", {"seed": 1, "sampler_config": {"steps": 25, "eta": 1.0}})
    with pytest.raises(InputError, match="sampler_config"):
        Journal.open(tmp_path / "j", {"seed": 0, "sampler_config": {"steps": 10, "eta": 1.0}})
    same = Journal.open(tmp_path / "j", {"seed": 0, "sampler_config": {"steps": 25, "eta": 1.0}})
    assert same.rows(["a", "b"]) == {0: {"index": 0, "id": "a", "ged": 0.5}}
    with pytest.raises(InputError, match="not this data's"):
        same.rows(["b", "a"])
    same.remove()
    assert not (tmp_path / "j").exists()


def test_evaluate_resume_continues_an_interrupted_run(tiny_model, tmp_path, capsys, monkeypatch):
    """`diffseg evaluate --resume`: a run stopped after two of four images (Ctrl-C) writes no report and keeps
    those two in OUTPUT.resume; run again, it scores the other two and writes the report a run that was
    never stopped writes (same rows, same summary); other settings are refused before any scoring."""
    images, masks = _set(n=4)
    data = _npz(tmp_path / "d.npz", images, masks)
    common = ["--model", tiny_model, "--data", data, "--samples", "2", "--steps", "2"]
    assert _evaluate(*common, "--output", tmp_path / "whole") == 0
    assert not (tmp_path / "whole.resume").exists()  # without --resume nothing is kept on the way
    _interrupt_scoring(monkeypatch, at=3)
    capsys.readouterr()
    assert _evaluate(*common, "--output", tmp_path / "out", "--resume") == cli.EXIT_INTERRUPTED
    assert "--resume" in capsys.readouterr().err and not (tmp_path / "out").exists()
    kept = [line for f in (tmp_path / "out.resume").glob("rows-*.jsonl") for line in f.read_text().splitlines()]
    assert len(kept) == 2
    monkeypatch.undo()
    assert _evaluate(*common, "--seed", "1", "--output", tmp_path / "out", "--resume") == 2
    assert "seed: 0 there, 1 now" in capsys.readouterr().err and not (tmp_path / "out").exists()
    calls = _interrupt_scoring(monkeypatch, at=3)  # not reached: 2 images are left
    assert _evaluate(*common, "--output", tmp_path / "out", "--resume") == 0
    assert len(calls) == 2 and not (tmp_path / "out.resume").exists()
    a, b = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("whole", "out"))
    assert b["resumed"] == 2 and "resumed" not in a
    assert {k: v for k, v in a.items() if k != "seconds"} == \
        {k: v for k, v in b.items() if k not in ("seconds", "resumed")}


def test_evaluate_resume_under_torchrun_takes_the_rows_one_process_kept(tiny_model, lidc_root, tmp_path,
                                                                         monkeypatch):
    """A run of one process stopped after 2 of 5 real val images, resumed by `torchrun --nproc-per-node 2
    ... --resume`: rank 0 shares the kept rows out, the ranks score the other 3 between them, and the report
    is the one an uninterrupted single process writes."""
    import subprocess
    import sys
    common = ["--model", tiny_model, "--data", lidc_root / "val.npz", "--samples", "3", "--max-images", "5"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the torchrun ranks below (OMP_NUM_THREADS=1): the same arithmetic
    try:
        assert _evaluate(*common, "--output", tmp_path / "whole") == 0
        _interrupt_scoring(monkeypatch, at=3)
        assert _evaluate(*common, "--output", tmp_path / "first", "--resume") == cli.EXIT_INTERRUPTED
    finally:
        torch.set_num_threads(threads)
    (tmp_path / "first.resume").rename(tmp_path / "out.resume")  # the journal names no output: move it
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "DiffSegUncertaintyLib.engine.cli", "evaluate", *map(str, common), "--device", "cpu",
                          "--quiet", "--resume", "--output", str(tmp_path / "out")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("whole", "out"))
    assert (b["processes"], b["resumed"]) == (2, 2) and not (tmp_path / "out.resume").exists()
    assert b["per_image"] == a["per_image"] and b["summary"] == a["summary"]
