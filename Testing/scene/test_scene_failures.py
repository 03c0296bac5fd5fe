"""Runs that must not change the scene: cancel mid-run, a crashing process, and each bad input."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from scene_helpers import load_volume, scene_counts

from DiffSegUncertaintyLib.engine import cli
from DiffSegUncertaintyLib.engine import testing
from DiffSegUncertaintyLib.scene.inputs import InputProblem, SampleRequest
from DiffSegUncertaintyLib.scene.logic import DiffSegUncertaintyLogic
from DiffSegUncertaintyLib.scene.runner import group_alive


def test_cancel_mid_run_leaves_the_scene_and_no_process(app, volume, tiny_model, tmp_path):
    (tmp_path / "work").mkdir()
    logic = DiffSegUncertaintyLogic(app.scene, temp_root=str(tmp_path / "work"))
    outcomes = []
    logic.finished.connect(outcomes.append)
    before = scene_counts(app.scene)
    logic.start(SampleRequest(volume, tiny_model, samples=3, steps=250, device="cpu"))
    runner = logic._runner
    deadline = time.monotonic() + 120
    progressed = []
    logic.progressChanged.connect(progressed.append)
    while not progressed and time.monotonic() < deadline:  # mid-run: sampling has begun
        assert logic.poll(), f"ended before it could be cancelled: {runner.log}"
        time.sleep(0.05)
    assert progressed and progressed[-1].done < progressed[-1].total
    logic.cancel()
    assert not logic.busy and outcomes[-1].status == "cancelled"
    assert not group_alive(runner.process.pid), "a process of the sampler's group is still alive"
    assert scene_counts(app.scene) == before
    assert list((tmp_path / "work").iterdir()) == [], "temporary folder left behind"
    assert logic.poll() is False  # nothing more arrives after a cancel


def test_a_crashing_process_gives_a_message_and_the_log(app, volume, tiny_model, tmp_path):
    broken = shutil.copytree(tiny_model, tmp_path / "broken")
    weights = broken / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = b"\x00" * 64  # damaged in the middle, size unchanged
    weights.write_bytes(bytes(data))
    logic = DiffSegUncertaintyLogic(app.scene)
    before = scene_counts(app.scene)
    logic.start(SampleRequest(volume, broken, samples=2, steps=2, device="cpu"))  # the card still reads
    outcome = logic.wait(timeout=120)
    assert outcome.status == "failed" and outcome.run is None
    assert outcome.returncode not in (0, None)
    assert "damaged" in outcome.message and "damaged" in outcome.log
    assert logic.last_log == outcome.log
    assert scene_counts(app.scene) == before


def _vector_volume(app, tmp_path):
    path = tmp_path / "rgb.nrrd"
    arr = np.moveaxis(testing.blob_array((6, 8, 8), channels=3), 0, -1)
    import SimpleITK as sitk
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=True), str(path))
    return app.volumes.AddArchetypeVolume(str(path), "rgb", 0, None)


def _unreadable_card(tmp_path, tiny_model):
    folder = shutil.copytree(tiny_model, tmp_path / "badcard")
    (folder / "model.json").write_text("{ not json")
    return folder


def _roi_outside(app, volume):
    roi = app.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "far away")
    bounds = [0.0] * 6
    volume.GetRASBounds(bounds)
    roi.SetXYZ(bounds[1] + 100, bounds[3] + 100, bounds[5] + 100)
    roi.SetRadiusXYZ(5, 5, 5)
    return roi


CASES = {
    "no volume": (lambda app, vol, model, tmp: SampleRequest(None, model), "Select an input volume"),
    "no model": (lambda app, vol, model, tmp: SampleRequest(vol, None), "Select a model"),
    "missing model": (lambda app, vol, model, tmp: SampleRequest(vol, tmp / "nothing-here"), "does not exist"),
    "unreadable card": (lambda app, vol, model, tmp: SampleRequest(vol, _unreadable_card(tmp, model)),
                        "cannot read the model card"),
    "2D volume, 3D model": (
        lambda app, vol, model, tmp: SampleRequest(load_volume(app, testing.write_volume(
            tmp / "slice.nrrd", testing.blob_array((1, 12, 12))[0]), "slice"), model), "is a 2D image"),
    "4D volume": (lambda app, vol, model, tmp: SampleRequest(_vector_volume(app, tmp), model),
                  "4D (multi-component) volume with 3 components"),
    "channel count": (lambda app, vol, model, tmp: SampleRequest(vol, model, extra_volumes=[vol]),
                      "needs 1 input channel(s): channel 0 (MR); 2 selected"),
    "ROI outside": (lambda app, vol, model, tmp: SampleRequest(vol, model, roi=_roi_outside(app, vol)),
                    "lies outside the volume"),
    "zero samples": (lambda app, vol, model, tmp: SampleRequest(vol, model, samples=0), "at least 1"),
    "eta above 1": (lambda app, vol, model, tmp: SampleRequest(vol, model, eta=1.5),
                    "sampling noise (eta) must lie between 0 and 1"),
    "bad device": (lambda app, vol, model, tmp: SampleRequest(vol, model, device="tpu"), "Unknown device"),
    "bad precision": (lambda app, vol, model, tmp: SampleRequest(vol, model, precision="fp16"),
                      "Unknown precision 'fp16': choose auto, fp32 or bf16"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_bad_input_gets_its_message_and_changes_nothing(case, app, volume, tiny_model, tmp_path):
    make, words = CASES[case]
    request = make(app, volume, tiny_model, tmp_path)  # may add the bad node itself, before counting
    started = []
    logic = DiffSegUncertaintyLogic(app.scene, temp_root=str(tmp_path / "work"),
                                    runner_factory=lambda: started.append(1))
    (tmp_path / "work").mkdir()
    before = scene_counts(app.scene)
    with pytest.raises(InputProblem) as err:
        logic.start(request)
    assert words in str(err.value)
    assert "Traceback" not in str(err.value)
    assert started == [] and not logic.busy
    assert scene_counts(app.scene) == before
    assert list((tmp_path / "work").iterdir()) == []


def test_a_crop_model_requires_an_roi(app, volume, tiny_model, tmp_path):
    folder = shutil.copytree(tiny_model, tmp_path / "crop")
    card = json.loads((folder / "model.json").read_text())
    card["input"]["roi_required"] = True
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(InputProblem, match="region of interest"):
        DiffSegUncertaintyLogic(app.scene).validate(SampleRequest(volume, folder))


def test_the_command_carries_the_request_and_the_cli_reads_it(app, volume, tiny_model, tmp_path):
    """The module's choices reach `diffseg sample` as options its own parser accepts."""
    logic = DiffSegUncertaintyLogic(app.scene)
    inputs, out = [tmp_path / "in.nrrd"], tmp_path / "out"
    plain = logic.command(SampleRequest(volume, tiny_model), inputs, out)
    full = logic.command(SampleRequest(volume, tiny_model, steps=5, eta=0.5, device="cpu", precision="fp32"),
                         inputs, out)
    assert "--precision" not in plain and "--steps" not in plain and "--eta" not in plain
    parse = cli.build_parser().parse_args
    assert parse(plain[3:]).precision == "auto"  # after "python -m <module>": the default is the fast one
    args = parse(full[3:])
    assert (args.precision, args.steps, args.eta, args.device, args.samples) == ("fp32", 5, 0.5, "cpu", 16)
