"""The bad-input battery of issue 13 against ``diffseg sample`` and ``diffseg evaluate``: every case is
refused before any work with exit 2 and one line on stderr, and nothing is written; a run whose outputs are
not finite fails with one line and writes nothing; signals and killed runs leave nothing behind. Also: what
``evaluate`` scores is exactly what ``sample`` writes (same image, same seed)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from cli_helpers import leftovers
from safetensors.torch import load_file, save_file

from DiffSegUncertaintyLib.engine import cli
from DiffSegUncertaintyLib.engine.analysis import metrics
from DiffSegUncertaintyLib.engine import pipeline
from DiffSegUncertaintyLib.engine import testing
from DiffSegUncertaintyLib.engine.files.modelfile import _sha256


def _copy(model: Path, tmp: Path, name: str = "broken") -> Path:
    return Path(shutil.copytree(model, tmp / name))


def _edit_card(folder: Path, edit) -> Path:
    card = json.loads((folder / "model.json").read_text())
    edit(card)
    (folder / "model.json").write_text(json.dumps(card))
    return folder


def nan_weights(tmp: Path, model: Path) -> Path:
    """A model whose weights hold NaN, with the card's sha256 updated so only a finiteness check finds it."""
    folder = _copy(model, tmp, "nanweights")
    state = load_file(str(folder / "model.safetensors"))
    name = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(folder / "model.safetensors"))
    return _edit_card(folder, lambda c: c["weights"].__setitem__("sha256", _sha256(folder / "model.safetensors")))


def zero_size(tmp: Path, model: Path) -> Path:
    return _edit_card(_copy(model, tmp, "zerosize"), lambda c: c["input"].__setitem__("size", [0, 0]))


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    """Four 16 x 16 images (uint8, as LIDC) with two readings each."""
    rng = np.random.default_rng(0)
    images = (testing.blob_array((4, 16, 16), seed=3)[0] * 40 + rng.normal(0, 5, (4, 16, 16))).clip(0, 255)
    yy, xx = np.mgrid[:16, :16]
    masks = np.stack([np.stack([((yy - 8) ** 2 + (xx - 8) ** 2 < r * r) for r in (3 + i % 2, 4)])
                      for i in range(4)]).astype(np.uint8)
    path = tmp_path_factory.mktemp("npz") / "val.npz"
    np.savez(path, images=images.astype(np.uint8), masks=masks)
    return path


def _main(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _refused(rc: int, out: str, err: str, *words: str) -> None:
    assert rc == 2, err
    assert out == "", out  # no progress line, no table: refused before any work
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffseg: error:") and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)


# -- diffseg sample --------------------------------------------------------------------------------

SAMPLE_CASES = {
    "eta nan": (["--eta", "nan"], ["--eta", "finite"]),
    "eta inf": (["--eta", "inf"], ["--eta", "finite"]),
    "eta negative": (["--eta", "-0.5"], ["--eta", "[0, 1]"]),
    "roi-mm nan": (["--roi-mm=nan,0,0,50,50,10"], ["--roi-mm", "finite"]),
    "roi-mm inf": (["--roi-mm=inf,0,0,50,50,10"], ["--roi-mm", "finite"]),
    "overlap nan": (["--overlap", "nan"], ["--overlap", "finite"]),
    "samples zero": (["--samples", "0"], ["--samples", "at least 1"]),
    "samples beyond memory": (["--samples", "10000000"], ["--samples", "GiB", "available"]),
    "batch zero": (["--batch-size", "0"], ["--batch-size", "at least 1"]),
    "steps zero": (["--steps", "0"], ["--steps", "at least 1"]),
}


@pytest.mark.parametrize("case", list(SAMPLE_CASES))
def test_sample_refuses_bad_numbers(case, tmp_path, model2d, volumes, capsys):
    flags, words = SAMPLE_CASES[case]
    argv = ["sample", volumes["lps"], "--model", model2d, "--output", tmp_path / "out", "--samples", "2",
            "--steps", "2", "--device", "cpu", *flags]
    _refused(*_main(argv, capsys), *words)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["nan weights", "zero input size"])
def test_sample_refuses_broken_models(case, tmp_path, model2d, volumes, capsys):
    folder = nan_weights(tmp_path, model2d) if case == "nan weights" else zero_size(tmp_path, model2d)
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, out, err = _main(["sample", volumes["lps"], "--model", folder, "--output", tmp_path / "out",
                          "--samples", "2", "--device", "cpu"], capsys)
    _refused(rc, out, err, *(["NaN or infinite", "weights"] if case == "nan weights" else ["input.size", "[0, 0]"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_sample_refuses_an_output_it_cannot_write(tmp_path, model2d, volumes, capsys):
    (tmp_path / "afile").write_text("x")
    for target, words in ((Path("/proc/diffseg-none/out"), ["--output", "cannot be created"]),
                          (tmp_path / "afile" / "out", ["--output", "is a file"]),
                          (tmp_path / "afile", ["--output", "not a folder"])):
        rc, out, err = _main(["sample", volumes["lps"], "--model", model2d, "--output", target, "--samples", "1",
                              "--steps", "1", "--device", "cpu"], capsys)
        _refused(rc, out, err, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_non_finite_hypotheses_fail_with_one_line_and_nothing_written(tmp_path, model2d, volumes, capsys,
                                                                     monkeypatch):
    """Weights that are finite can still overflow; the sampler's NaN is caught after sampling: exit 1, one
    line, no folder (in Python: SamplingFailed)."""
    real = pipeline.sample

    def broken(*a, **k):
        res = real(*a, **k)
        res.y0[..., 0, 0] = float("nan")
        return res

    monkeypatch.setattr(pipeline, "sample", broken)
    rc, out, err = _main(["sample", volumes["lps"], "--model", model2d, "--output", tmp_path / "out",
                          "--samples", "2", "--steps", "1", "--device", "cpu", "--quiet"], capsys)
    assert rc == 1 and err.strip().count("\n") == 0 and "non-finite" in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []
    model = pipeline.Model.load(model2d)
    with pytest.raises(pipeline.SamplingFailed, match="non-finite"):
        pipeline.segment(model, [volumes["lps"]], samples=2, steps=1, device="cpu")


def test_sigint_during_start_up_exits_130_with_one_line(tmp_path, model2d, volumes):
    out = tmp_path / "out"
    proc = subprocess.Popen([*testing.diffseg_command(), "sample", str(volumes["lps"]), "--model", str(model2d),
                             "--output", str(out), "--samples", "2", "--steps", "2", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    time.sleep(0.8)  # inside the imports (torch takes seconds here)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal")
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == "diffseg: error: interrupted; nothing written", stderr
    assert list(tmp_path.iterdir()) == []


def test_a_signal_during_the_heavy_imports_waits_for_them_then_interrupts():
    """torch's import runs Python under C++ frames, where an exception from the signal handler aborts the
    process (exit -6, seen in CI); cli holds the signal until the block ends, then raises it."""
    old = signal.signal(signal.SIGINT, cli._on_signal)
    reached = []
    try:
        with pytest.raises(KeyboardInterrupt, match="signal 2"):
            with cli._signals_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the handler runs here, in the block: it must not raise
                reached.append(1)
        assert reached == [1]
        with cli._signals_deferred():  # a block without a signal ends quietly, and outside it one raises
            pass
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    finally:
        signal.signal(signal.SIGINT, old)


def test_a_killed_runs_folder_is_removed_by_the_next_run(tmp_path, model2d, volumes, capsys):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".out.partial-{dead.pid}-abcd"
    stale.mkdir()
    (stale / "entropy.nrrd").write_text("half")
    other = tmp_path / f".other.partial-{dead.pid}-abcd"  # another output's: not touched
    other.mkdir()
    rc, _, err = _main(["sample", volumes["lps"], "--model", model2d, "--output", tmp_path / "out",
                        "--samples", "1", "--steps", "1", "--device", "cpu", "--quiet"], capsys)
    assert rc == 0, err
    assert leftovers(tmp_path, "out") == ["out"] and other.exists()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0700
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())  # strict JSON
    assert summary["timings"]["total_s"] >= summary["timings"]["sampling_s"] > 0


# -- diffseg evaluate ------------------------------------------------------------------------------

def _evaluate(tmp_path, model, npz, *flags):
    return ["evaluate", "--model", model, "--data", npz, "--output", tmp_path / "ev", "--samples", "2",
            "--steps", "2", "--device", "cpu", "--quiet", *flags]


@pytest.mark.parametrize("case", ["steps 0", "steps 10000", "eta nan", "cuda", "zero size", "nan weights",
                                  "unwritable", "file", "exists"])
def test_evaluate_refuses_before_scoring(case, tmp_path, model2d, npz, capsys):
    model, flags, words = model2d, [], []
    if case.startswith("steps"):
        flags, words = ["--steps", case.split()[1]], ["--steps"]
    elif case == "eta nan":
        flags, words = ["--eta", "nan"], ["--eta", "finite"]
    elif case == "cuda":
        if torch.cuda.is_available():
            pytest.skip("a CUDA GPU is present")
        flags, words = ["--device", "cuda"], ["--device", "no CUDA GPU"]
    elif case == "zero size":
        model, words = zero_size(tmp_path, model2d), ["input.size"]
    elif case == "nan weights":
        model, words = nan_weights(tmp_path, model2d), ["NaN or infinite"]
    argv = _evaluate(tmp_path, model, npz, *flags)
    if case == "unwritable":
        argv[argv.index(tmp_path / "ev")] = Path("/proc/diffseg-none/ev")
        words = ["--output", "cannot be created"]
    elif case == "file":
        (tmp_path / "ev").write_text("x")
        words = ["--output", "not a folder"]
    elif case == "exists":
        (tmp_path / "ev").mkdir()
        (tmp_path / "ev" / "metrics.json").write_text("{}")
        words = ["--output", "exists", "--overwrite"]
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    _refused(*_main(argv, capsys), *words)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_evaluate_scores_exactly_what_sample_writes(tmp_path, model2d, npz, capsys):
    """One image of the npz written as a 2D file: ``diffseg sample`` writes hypotheses and a mean
    probability; ``evaluate``'s predictor gives the same hypotheses (argmax) and the same mean probability,
    and ``diffseg evaluate``'s GED and Dice of that image are those of the written files."""
    with np.load(npz) as z:
        image, masks = z["images"][1], z["masks"][1]
    sitk.WriteImage(sitk.GetImageFromArray(image.astype(np.float32)), str(tmp_path / "img.nrrd"))
    rc, _, err = _main(["sample", tmp_path / "img.nrrd", "--model", model2d, "--output", tmp_path / "s",
                        "--samples", "3", "--steps", "2", "--seed", "5", "--device", "cpu", "--quiet"], capsys)
    assert rc == 0, err
    layers = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "s" / "hypotheses.seg.nrrd")))[0]  # (H, W, M)
    written = np.moveaxis(layers, -1, 0)
    mean_fg = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "s" / "mean_probability.nrrd")))
    consensus = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "s" / "consensus.nrrd")))

    from DiffSegUncertaintyLib.engine.analysis.evaluation import predictor_from_model
    predict = predictor_from_model(pipeline.Model.load(model2d), pipeline.Request(steps=2, seed=5, device="cpu"))
    probs = predict(image[None], 3)[0].numpy()  # (M, C, H, W): what evaluate_predictor scores
    np.testing.assert_array_equal(probs.argmax(1), written)
    np.testing.assert_allclose(1 - probs.mean(0)[0], mean_fg, atol=1e-6)

    one = tmp_path / "one.npz"
    np.savez(one, images=image[None], masks=masks[None])
    rc, _, err = _main(_evaluate(tmp_path, model2d, one, "--samples", "3", "--seed", "5"), capsys)
    assert rc == 0, err
    scored = json.loads((tmp_path / "ev" / "metrics.json").read_text())["per_image"][0]
    assert scored["ged"] == pytest.approx(metrics.ged(written, masks, 2))
    assert scored["dice"] == pytest.approx(np.mean([metrics.dice(consensus, m, 2) for m in masks]))
    # the same contract as sample: the folder exists now, so a second run is refused, --overwrite replaces
    rc, _, err = _main(_evaluate(tmp_path, model2d, one, "--samples", "3", "--seed", "5"), capsys)
    assert rc == 2 and "--overwrite" in err
    rc, _, err = _main(_evaluate(tmp_path, model2d, one, "--samples", "3", "--seed", "5", "--overwrite"), capsys)
    assert rc == 0 and leftovers(tmp_path, "ev") == ["ev"]


def test_evaluate_choices_are_the_metrics_conventions():
    """The parser names the conventions without importing the metrics code; they must stay the same."""
    sub = cli.build_parser()._subparsers._group_actions[0].choices["evaluate"]
    choices = {a.dest: tuple(a.choices) for a in sub._actions if a.choices}
    assert choices["reference"] == metrics.REFERENCES and choices["empty"] == metrics.EMPTY_CONVENTIONS
    assert sub.get_default("device") == "auto"


def test_models_never_cuts_a_number(tmp_path, model2d, capsys):
    folder = _edit_card(_copy(model2d, tmp_path, "scored"), lambda c: c.__setitem__("metrics", {
        "split": "val", "values": {"ged": 0.2345, "hm_iou": 0.6012, "dice": 0.8123, "nll": 0.0421,
                                   "ece": 0.0123, "mdm": 0.7, "diversity": 0.31}}))
    _edit_card(folder, lambda c: c.__setitem__("name", "scored"))
    assert cli.main(["models", "--models-dir", str(folder), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["scored"]["metrics"].endswith("diversity=0.31")  # whole text in --json
    assert cli.main(["models", "--models-dir", str(folder)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("scored"))
    cell = line.split("  val:")[1]
    assert " …" in cell and all(p.count("=") == 1 and p.split("=")[1][-1].isdigit()
                                 for p in cell.split("…")[0].split())


class _Stream:
    """A text stream that says whether it is a terminal."""

    def __init__(self, tty: bool):
        import io
        self.buf, self.tty = io.StringIO(), tty

    def write(self, s: str) -> int:
        return self.buf.write(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("stdout_tty, stderr_tty", [(False, False), (False, True), (True, True), (True, False)])
def test_progress_lines_and_bar_never_share_a_terminal(monkeypatch, stdout_tty, stderr_tty):
    import sys
    out, err = _Stream(stdout_tty), _Stream(stderr_tty)
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    progress = cli._Progress(quiet=False)
    for k in range(1, 4):
        progress(k, 3)
    progress.close()
    lines = out.buf.getvalue().splitlines()
    shared = stdout_tty and stderr_tty  # one terminal: the bar alone
    assert lines == ([] if shared else ["progress 1/3", "progress 2/3", "progress 3/3"])
    assert ("3/3" in err.buf.getvalue()) == stderr_tty  # the bar, only on a terminal
