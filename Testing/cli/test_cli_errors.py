"""Every bad input is refused before sampling: one message on stderr, exit code 2, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import SHAPE, leftovers
from safetensors.torch import load_file, save_file

from DiffSegUncertaintyLib.engine import cli
from DiffSegUncertaintyLib.engine import testing
from DiffSegUncertaintyLib.engine.files.modelfile import _sha256


def _copy_model(model: Path, tmp: Path, name: str = "broken") -> Path:
    return Path(shutil.copytree(model, tmp / name))


def _rewrite_weights(folder: Path, state: dict) -> None:
    """Write new weights and make the card's sha256 match, so only the tensor check can catch them."""
    save_file(state, str(folder / "model.safetensors"))
    card = json.loads((folder / "model.json").read_text())
    card["weights"]["sha256"] = _sha256(folder / "model.safetensors")
    (folder / "model.json").write_text(json.dumps(card))


def truncated(tmp, model2d, model3d, vol):
    folder = _copy_model(model2d, tmp)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    return [vol, "--model", folder], ["damaged", "model.safetensors"]


def wrong_preset(tmp, model2d, model3d, vol):
    folder = _copy_model(model2d, tmp)
    card = json.loads((folder / "model.json").read_text())
    card["architecture"]["channels"] = [8, 24]  # the weights are for [8, 16]
    (folder / "model.json").write_text(json.dumps(card))
    return [vol, "--model", folder], ["wrong preset", "shape"]


def missing_tensor(tmp, model2d, model3d, vol):
    folder = _copy_model(model2d, tmp)
    state = load_file(str(folder / "model.safetensors"))
    gone = sorted(state)[3]
    del state[gone]
    _rewrite_weights(folder, state)
    return [vol, "--model", folder], ["lacks 1 tensor", gone]


def unexpected_tensor(tmp, model2d, model3d, vol):
    folder = _copy_model(model2d, tmp)
    state = load_file(str(folder / "model.safetensors"))
    state["extra.weight"] = torch.zeros(2)
    _rewrite_weights(folder, state)
    return [vol, "--model", folder], ["unexpected tensor", "extra.weight"]


def missing_weights(tmp, model2d, model3d, vol):
    folder = _copy_model(model2d, tmp)
    (folder / "model.safetensors").unlink()
    return [vol, "--model", folder], ["is missing"]


def bad_card(tmp, model2d, model3d, vol):
    folder = _copy_model(model2d, tmp)
    (folder / "model.json").write_text("{ not json")
    return [vol, "--model", folder], ["cannot read the model card"]


def unknown_model(tmp, model2d, model3d, vol):
    return [vol, "--model", "no-such-model", "--models-dir", model2d.parent], ["no-such-model", "tiny2d"]


def missing_file(tmp, model2d, model3d, vol):
    return [tmp / "nothere.nrrd", "--model", model2d], ["does not exist"]


def unreadable_file(tmp, model2d, model3d, vol):
    (tmp / "junk.nrrd").write_text("this is not an image")
    return [tmp / "junk.nrrd", "--model", model2d], ["cannot read", "junk.nrrd"]


def wrong_dims(tmp, model2d, model3d, vol):
    img = testing.write_volume(tmp / "flat.nrrd", testing.blob_array((20, 24))[0])
    return [img, "--model", model3d], ["is 3D", "2D image"]


def wrong_channels(tmp, model2d, model3d, vol):
    return [vol, vol, "--model", model2d], ["expects 1 input channel", "give 2 channel"]


def other_grid(tmp, model2d, model3d, vol):
    img = testing.write_volume(tmp / "other.nrrd", testing.blob_array(SHAPE)[0], spacing=(1, 1, 2))
    return [vol, img, "--model", model2d], ["not on the grid", "spacing"]


def nan_voxels(tmp, model2d, model3d, vol):
    arr = testing.blob_array(SHAPE)[0]
    arr[3, 4, 5:8] = np.nan
    img = testing.write_volume(tmp / "nan.nrrd", arr)
    return [img, "--model", model2d], ["3 NaN or infinite voxel"]


def constant_image(tmp, model2d, model3d, vol):
    img = testing.write_volume(tmp / "flat.nrrd", np.full(SHAPE, 7, np.float32))
    return [img, "--model", model2d], ["constant"]


def empty_roi(tmp, model2d, model3d, vol):
    return [vol, "--model", model2d, "--roi", "30,0,0,40,5,5"], ["--roi", "empty or outside"]


def roi_mm_outside(tmp, model2d, model3d, vol):
    return [vol, "--model", model2d, "--roi-mm=-900,-900,-900,-800,-800,-800"], ["--roi-mm", "no voxel"]


def too_many_steps(tmp, model2d, model3d, vol):
    return [vol, "--model", model2d, "--steps", "100000"], ["--steps"]


def crop_model_without_roi(tmp, model2d, model3d, vol):
    folder = _copy_model(model2d, tmp)
    card = json.loads((folder / "model.json").read_text())
    card["input"]["roi_required"] = True
    (folder / "model.json").write_text(json.dumps(card))
    return [vol, "--model", folder], ["boxes around the target", "--roi"]


def output_exists(tmp, model2d, model3d, vol):
    (tmp / "out").mkdir()
    (tmp / "out" / "keep.txt").write_text("mine")
    return [vol, "--model", model2d], ["exists", "--overwrite"]


CASES = {f.__name__: f for f in (
    truncated, wrong_preset, missing_tensor, unexpected_tensor, missing_weights, bad_card, unknown_model,
    missing_file, unreadable_file, wrong_dims, wrong_channels, other_grid, nan_voxels, constant_image,
    empty_roi, roi_mm_outside, too_many_steps, crop_model_without_roi, output_exists)}


# These run as a real subprocess; the others call cli.main in this process (the same code from argv
# to exit code, without paying a torch import per case on the 2-core CI machine).
SUBPROCESS = {"truncated", "wrong_preset", "missing_tensor", "missing_file", "nan_voxels", "output_exists"}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exit_2_nothing_written(case, tmp_path, model2d, model3d, volumes, capsys):
    args, words = CASES[case](tmp_path, model2d, model3d, volumes["lps"])
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = ["sample", "--output", tmp_path / "out", "--samples", "2", "--steps", "2", "--device", "cpu",
            *args]
    if case in SUBPROCESS:
        proc = testing.run_diffseg(*argv)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    else:
        rc = cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
    assert rc == 2, err
    assert out == ""  # not a single progress line: refused before sampling
    err = err.strip()
    assert err.startswith("diffseg: error:") and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temp folder
    if case == "output_exists":
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_overwrite_replaces_the_folder(tmp_path, model2d, volumes):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    proc = testing.run_diffseg("sample", volumes["lps"], "--model", model2d, "--output", tmp_path / "out",
                               "--samples", "1", "--steps", "1", "--device", "cpu", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "out" / "old.txt").exists() and (tmp_path / "out" / "summary.json").exists()
    assert leftovers(tmp_path, "out") == ["out"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_cuda_without_gpu_is_a_bad_input(tmp_path, model2d, volumes):
    proc = testing.run_diffseg("sample", volumes["lps"], "--model", model2d, "--output", tmp_path / "o",
                               "--device", "cuda")
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_bf16_where_autocast_cannot_run_is_a_bad_input(tmp_path, model2d, volumes, monkeypatch, capsys):
    """Apple MPS cannot run here, so the device choice is made to answer "mps"; bf16 there is refused
    before the model is loaded."""
    from DiffSegUncertaintyLib.engine import pipeline
    monkeypatch.setattr(pipeline, "resolve_device", lambda choice: "mps")
    rc = cli.main([str(a) for a in ("sample", volumes["lps"], "--model", model2d, "--output", tmp_path / "o",
                                    "--precision", "bf16")])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and "--precision bf16 runs on cpu and cuda only" in err, err
    assert not (tmp_path / "o").exists()
