"""``diffseg sample`` end to end: the real command on volumes stored in several orientations."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from cli_helpers import MAPS, arrays, grid, leftovers, seg_image, summary

from DiffSegUncertaintyLib.engine import testing

FAST = ("--samples", "3", "--steps", "2", "--device", "cpu")
_RUNS: dict[str, Path] = {}


@pytest.fixture(scope="module")
def run(tmp_path_factory, model2d, model3d, model_pgrd, volumes):
    """run(key) -> output folder of a successful run, each run done once per module."""
    base = tmp_path_factory.mktemp("runs")
    specs = {
        "2d-perm": (volumes["permuted-flipped-anisotropic"], ["--model", model2d]),
        "2d-perm-again": (volumes["permuted-flipped-anisotropic"], ["--model", model2d]),
        "2d-perm-seed1": (volumes["permuted-flipped-anisotropic"], ["--model", model2d, "--seed", "1"]),
        "2d-perm-bf16": (volumes["permuted-flipped-anisotropic"], ["--model", model2d, "--precision", "bf16"]),
        "2d-perm-fp32": (volumes["permuted-flipped-anisotropic"], ["--model", model2d, "--precision", "fp32"]),
        # by name through --models-dir
        "2d-lps": (volumes["lps"], ["--model", "tiny2d", "--models-dir", model2d.parent]),
        "3d-perm": (volumes["permuted-flipped-anisotropic"], ["--model", model3d, "--samples", "2"]),
        "3d-lps": (volumes["lps"], ["--model", model3d, "--samples", "2"]),
        "2d-oblique-roi": (volumes["oblique"], ["--model", model2d, "--roi", "3,4,2,20,15,9"]),
        "pgrd-oblique": (volumes["oblique"], ["--model", model_pgrd, "--sampler", "ddim"]),
    }

    def get(key: str) -> Path:
        if key not in _RUNS:
            image, extra = specs[key]
            out = base / key
            proc = testing.run_diffseg("sample", image, "--output", out, *FAST, *extra)
            assert proc.returncode == 0, proc.stderr
            lines = proc.stdout.splitlines()
            assert lines and all(ln.startswith("progress ") for ln in lines), proc.stdout
            k, n = map(int, lines[-1].split()[1].split("/"))
            assert k == n and [int(ln.split()[1].split("/")[0]) for ln in lines] == list(range(1, n + 1))
            assert leftovers(base, key) == [key]  # no temporary folder left next to it
            _RUNS[key] = out
        return _RUNS[key]

    return get


@pytest.mark.parametrize("key,image", [("2d-perm", "permuted-flipped-anisotropic"), ("2d-lps", "lps"),
                                       ("3d-perm", "permuted-flipped-anisotropic"),
                                       ("2d-oblique-roi", "oblique"), ("pgrd-oblique", "oblique")])
def test_every_output_is_on_the_input_grid(run, volumes, key, image):
    out = run(key)
    assert sorted(p.name for p in out.iterdir()) == sorted(MAPS + ("hypotheses.seg.nrrd", "summary.json"))
    want = grid(volumes[image])
    for name in MAPS:
        assert grid(out / name) == want, name  # size, spacing, origin, direction: exactly
    s = summary(out)
    classes = s["classes"]
    a = arrays(out)
    assert a["consensus.nrrd"].dtype == np.uint8 and a["consensus.nrrd"].max() < len(classes)
    for name, hi in (("entropy.nrrd", math.log(len(classes))), ("mutual_information.nrrd", math.log(len(classes))),
                     ("variance.nrrd", 0.25), ("mean_probability.nrrd", 1.0)):
        assert a[name].dtype == np.float32 and a[name].min() >= 0 and a[name].max() <= hi + 1e-6, name
    assert (a["mutual_information.nrrd"] <= a["entropy.nrrd"] + 1e-6).all()
    # summary: volumes per hypothesis consistent with the segmentation layers and the voxel size
    layers = a["hypotheses.seg.nrrd"]
    per_hyp = len(classes) - 1
    assert layers.shape[-1] == s["samples"] * per_hyp
    voxel = float(np.prod(want[1]))
    for h in s["hypotheses"]:
        fg = layers[..., (h["index"] - 1) * per_hyp:h["index"] * per_hyp].any(-1).sum()
        assert h["foreground_voxels"] == fg
        assert h["foreground_mm3"] == pytest.approx(fg * voxel)
    vols = [h["foreground_mm3"] for h in s["hypotheses"]]
    assert s["spread"]["mm3"]["mean"] == pytest.approx(np.mean(vols))
    assert s["spread"]["mm3"]["max"] == pytest.approx(max(vols))
    assert s["seed"] == 0 and s["steps"] == 2 and s["device"] == "cpu" and s["grid"]["size"] == list(want[0])
    assert {"sampling_s", "total_s"} <= set(s["timings"])


def test_slicing_follows_anatomy_not_storage_order(run):
    """A 2D model slices axially and a 3D model sees (S, P, L) whatever the storage order: the same
    voxels stored permuted/flipped give the same outputs, bit for bit, once reoriented."""
    for dims in ("2d", "3d"):
        perm, lps = arrays(run(f"{dims}-perm"), reorient="LPS"), arrays(run(f"{dims}-lps"))
        for name in perm:
            assert np.array_equal(perm[name], lps[name]), (dims, name)
        assert perm["hypotheses.seg.nrrd"].any(), "untrained model drew no foreground at all"


def test_same_seed_same_bits_other_seed_other_hypotheses(run):
    a, b, c = (arrays(run(k)) for k in ("2d-perm", "2d-perm-again", "2d-perm-seed1"))
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert (run("2d-perm") / "hypotheses.seg.nrrd").read_bytes() == \
        (run("2d-perm-again") / "hypotheses.seg.nrrd").read_bytes()
    assert not np.array_equal(a["hypotheses.seg.nrrd"], c["hypotheses.seg.nrrd"])
    assert summary(run("2d-perm-seed1"))["seed"] == 1


def test_bf16_is_close_to_fp32_and_recorded(run):
    a, b = arrays(run("2d-perm-fp32")), arrays(run("2d-perm-bf16"))
    s32, s16 = summary(run("2d-perm-fp32")), summary(run("2d-perm-bf16"))
    assert (s32["precision"], s16["precision"]) == ("fp32", "bf16")
    # the memory format is auto: channels-last for bf16 on a CPU only (pipeline.resolve_channels_last)
    assert (s32["channels_last_requested"], s16["channels_last_requested"]) == ("auto", "auto")
    assert s32["channels_last"] is False and s16["channels_last"] is True
    assert s32["batch_size"] == s16["batch_size"]  # only the precision differs
    p32, p16 = a["mean_probability.nrrd"], b["mean_probability.nrrd"]
    assert not np.array_equal(p32, p16)  # the networks really ran in bfloat16
    assert np.abs(p32.astype(np.float64) - p16).mean() < 0.02


def test_the_default_precision_is_auto_resolved_for_this_cpu(run):
    """Issue 16: without --precision the run asks for "auto" and records what it resolved to on this
    machine (bf16 on a CPU with AMX/AVX512-BF16, else fp32), and its outputs are exactly that run's."""
    from DiffSegUncertaintyLib.engine.pipeline import cpu_has_bf16
    want = "bf16" if cpu_has_bf16() else "fp32"
    s = summary(run("2d-perm"))
    assert (s["precision_requested"], s["precision"]) == ("auto", want)
    same = arrays(run(f"2d-perm-{want}"))
    for name, values in arrays(run("2d-perm")).items():
        assert np.array_equal(values, same[name]), name


def test_roi_limits_the_work_and_the_outputs(run, volumes):
    out = run("2d-oblique-roi")
    s = summary(out)
    assert s["roi"] == {"start": [3, 4, 2], "stop": [20, 15, 9]}
    inside = np.zeros(grid(volumes["oblique"])[0][::-1], bool)
    inside[2:9, 4:15, 3:20] = True
    a = arrays(out)
    for name in MAPS:
        assert not a[name][~inside].any(), name
    assert not a["hypotheses.seg.nrrd"][~inside].any()
    assert a["entropy.nrrd"][inside].any()


def test_2d_image_file(tmp_path, model2d):
    img = testing.write_volume(tmp_path / "slice.nrrd", testing.blob_array((20, 24))[0],
                               spacing=(0.5, 0.7), origin=(3, -4), direction=(0, 1, 1, 0))
    proc = testing.run_diffseg("sample", img, "--model", model2d, "--output", tmp_path / "o", *FAST,
                               "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""  # --quiet: nothing but errors
    assert grid(tmp_path / "o" / "entropy.nrrd") == grid(img)
    seg = seg_image(tmp_path / "o")
    assert seg.GetSize() == (24, 20) and seg.GetNumberOfComponentsPerPixel() == 3


def test_models_lists_folders_from_option_and_environment(model2d, model3d):
    card = json.loads((model3d / "model.json").read_text())
    card["metrics"] = {"split": "val", "images": 8, "values": {"ged": 0.25, "hm_iou": 0.5}}
    (model3d / "model.json").write_text(json.dumps(card))
    proc = testing.run_diffseg("models", "--models-dir", model2d.parent,
                               env={"DIFFSEG_MODELS": str(model3d.parent)})
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "METHOD", "PRESET"]
    by_name = {r.split()[0]: r.split() for r in rows}
    assert by_name["tiny2d"][1:7] == ["hsrdiff", "tiny", "2D", "1", "2", "ddpm"]
    assert by_name["tiny3d"][3:6] == ["3D", "1", "3"]
    assert "val: ged=0.25 hm_iou=0.5" in proc.stdout
    proc = testing.run_diffseg("models", "--json", "--models-dir", model2d.parent)
    rows = json.loads(proc.stdout)
    assert [r["name"] for r in rows if r["folder"] == str(model2d)] == ["tiny2d"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_run_leaves_nothing(tmp_path, model3d, volumes, sig):
    out = tmp_path / "deeper" / "out"  # the missing parent is created only when the outputs are written
    proc = subprocess.Popen(
        [*testing.diffseg_command(), "sample", str(volumes["lps"]), "--model", str(model3d),
         "--output", str(out), "--samples", "4", "--steps", "200", "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        first = proc.stdout.readline()
        assert first.startswith("progress 1/"), first + proc.stderr.read()
        assert not out.parent.exists()  # nothing is created before the outputs are written
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 130, proc.stderr.read()
    assert "interrupted" in proc.stderr.read()
    assert not out.parent.exists()
    assert list(tmp_path.iterdir()) == []


def test_hypotheses_seg_nrrd_opens_in_slicer_on_the_input_geometry(run, volumes):
    """slicer-core's own reader: one segment per hypothesis and foreground class, names and colours as
    written, and each segment, resampled by Slicer onto the input volume, equals the written layer."""
    slicer = pytest.importorskip("slicer")
    import vtk
    import slicer.util

    from DiffSegUncertaintyLib.scene.app import create_headless_app
    headless = create_headless_app()  # real MRML: Slicer's colour, volumes and segmentations logics
    scene, logics = headless.scene, {"Volumes": headless.volumes, "Segmentations": headless.segmentations}

    out = run("3d-perm")
    volume = logics["Volumes"].AddArchetypeVolume(str(volumes["permuted-flipped-anisotropic"]), "input", 0,
                                                  vtk.vtkStringArray())
    node = logics["Segmentations"].LoadSegmentationFromFile(str(out / "hypotheses.seg.nrrd"), False, "hyp")
    assert node is not None
    seg = node.GetSegmentation()
    ids = [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]
    assert ids == ["hypothesis_01_1", "hypothesis_01_2", "hypothesis_02_1", "hypothesis_02_2"]
    assert seg.GetSegment("hypothesis_02_1").GetName() == "Hypothesis 02 class 1"
    written = sitk.GetArrayFromImage(seg_image(out))
    for n, sid in enumerate(ids):
        names = vtk.vtkStringArray()
        names.InsertNextValue(sid)
        label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        assert logics["Segmentations"].ExportSegmentsToLabelmapNode(node, names, label, volume)
        mask = slicer.util.arrayFromVolume(label)
        assert mask.shape == written.shape[:3] and np.array_equal(mask > 0, written[..., n] > 0), sid
    assert written.any()
