"""The pieces under the command: model folders, the model search, OOM retry, orientation, preprocessing."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DiffSegUncertaintyLib.engine.files import modelfile
from DiffSegUncertaintyLib.engine.sampling import sampler
from DiffSegUncertaintyLib.engine import testing
from DiffSegUncertaintyLib.engine.networks.checks import InputError
from DiffSegUncertaintyLib.engine.sampling.inference import DEFAULT_BATCH_2D, run_model, run_with_oom_retry
from DiffSegUncertaintyLib.engine.files.volumes import canonical_orientation, preprocess, read_inputs


def test_half_precision_folder_round_trips(tmp_path, model2d):
    folder = testing.make_tiny_model_folder(tmp_path / "half", half=True)
    card = modelfile.read_card(folder)
    assert set(modelfile.REQUIRED_FIELDS) <= set(card) and card["weights"]["dtype"] == "float16"
    assert (folder / "model.safetensors").stat().st_size < (model2d / "model.safetensors").stat().st_size * 0.6
    full, _ = modelfile.load_model(model2d)
    half, _ = modelfile.load_model(folder)
    for (k, a), (_, b) in zip(full.state_dict().items(), half.state_dict().items()):
        assert b.dtype == a.dtype  # loaded back in the network's own precision
        if a.is_floating_point():
            torch.testing.assert_close(b, a.half().to(a.dtype), rtol=0, atol=0, msg=k)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folder left


def test_cards_are_read_without_torch(model2d):
    """The Slicer scene layer lists models before torch is installed."""
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked")
        sys.meta_path.insert(0, Block())
        from DiffSegUncertaintyLib.engine.files import modelfile
        models = modelfile.find_models([{str(model2d.parent)!r}])
        print("tiny2d" in models, modelfile.read_card(models["tiny2d"])["method"], "torch" in sys.modules)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "hsrdiff", "False"]


def test_model_search_order_and_resolution(tmp_path, monkeypatch, model2d):
    first, second = tmp_path / "first", tmp_path / "second"
    testing.make_tiny_model_folder(first / "a", name="shared-name")
    testing.make_tiny_model_folder(second / "b", name="shared-name")
    testing.make_tiny_model_folder(second / "c", name="only-env")
    monkeypatch.setenv(modelfile.MODELS_ENV, str(second))
    found = modelfile.find_models([first])
    assert found["shared-name"] == first / "a" and found["only-env"] == second / "c"  # --models-dir wins
    assert modelfile.resolve_model("only-env") == second / "c"
    assert modelfile.resolve_model(model2d) == model2d  # a folder path works without searching
    with pytest.raises(modelfile.ModelFileError, match="only-env") as e:
        modelfile.resolve_model("nope")
    assert isinstance(e.value, InputError)


def test_out_of_memory_halves_the_batch_and_retries():
    calls = []

    def fn(bs):
        calls.append(bs)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return f"done with {bs}"

    assert run_with_oom_retry(fn, 16) == ("done with 8", 8)
    assert calls == [16, 8]

    def always(bs):
        calls.append(bs)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    calls.clear()
    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_with_oom_retry(always, 5)
    assert calls == [5, 2, 1]

    def other(bs):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):  # not memory: no retry
        run_with_oom_retry(other, 4)


def test_cpu_run_sends_a_voxel_budget_through_the_network(model2d, volumes, monkeypatch):
    """Without --batch-size a CPU run keeps its groups of 64 // M slices (progress, cancel) but the network
    takes the sampler's CPU chunk at a time; the hypotheses equal an all-at-once run to float rounding,
    channels-last equals it to 1e-4, and bf16 reaches the networks (close to fp32, not equal)."""
    model, card = modelfile.load_model(model2d, "cpu")
    vols = read_inputs([volumes["lps"]])
    image = preprocess(vols.channels, card["input"].get("preprocessing"))
    voxels = int(np.prod(card["input"]["size"]))
    monkeypatch.setattr(sampler, "CPU_CHUNK_VOXELS", 3 * voxels)
    m, cfg = 4, sampler.SamplerConfig(method="ddim", steps=2)

    def run(**kw):
        return run_model(model, card, image, vols.geometry, m, cfg, seed=0, **kw)

    default = run()
    n_slices = vols.geometry.size[2] if len(vols.geometry.size) == 3 else 1
    assert default.batch_size == 3
    assert default.units == -(-n_slices // (DEFAULT_BATCH_2D // m))  # groups unchanged by the chunk
    whole = run(batch_size=DEFAULT_BATCH_2D)
    assert whole.batch_size == DEFAULT_BATCH_2D
    assert torch.allclose(default.y0, whole.y0, atol=1e-5)
    assert torch.equal(run().y0, default.y0)  # the same chunk and seed: the same bits
    assert torch.allclose(run(channels_last=True).y0, default.y0, atol=1e-4)  # the memory format only
    bf16 = run(precision="bf16")
    assert not torch.equal(bf16.y0, default.y0)
    assert (bf16.y0 - default.y0).abs().mean() < 0.02
    from DiffSegUncertaintyLib.engine.pipeline import Request, RequestError
    with pytest.raises(RequestError, match="precision must be one of auto, fp32, bf16") as err:
        Request(precision="fp16").check()  # refused once, in the request, before run_model is reached
    assert err.value.field == "precision"


def test_canonical_orientation_matches_dicom_orient_lps():
    rng = np.random.default_rng(0)
    a = rng.random((3, 4, 5)).astype(np.float32)
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product([1, -1], repeat=3):
            d = np.zeros((3, 3))
            for c in range(3):
                d[perm[c], c] = signs[c]
            img = sitk.GetImageFromArray(a)
            img.SetDirection(d.ravel().tolist())
            want = sitk.GetArrayFromImage(sitk.DICOMOrient(img, "LPS"))
            canon = canonical_orientation(d.ravel())
            assert np.array_equal(canon.forward(a), want), (perm, signs)
            assert np.array_equal(canon.backward(canon.forward(a)), a)


def test_single_slice_volume_is_sliced_in_its_own_plane():
    sagittal = np.array([0, 0, 1, 1, 0, 0, 0, 1, 0], float)  # i -> P, j -> S, k -> L
    canon = canonical_orientation(sagittal, size=(5, 4, 1))
    x = np.arange(20, dtype=np.float32).reshape(1, 4, 5)
    assert canon.forward(x).shape[0] == 1 and np.array_equal(canon.backward(canon.forward(x)), x)


def test_preprocessing_kinds():
    x = np.array([[[0.0, 10.0, 20.0, 40.0]]], np.float32)[None]  # one channel
    np.testing.assert_allclose(preprocess(x, {"kind": "window", "lower": 10, "upper": 30})[0, 0, 0],
                               [0, 0, 0.5, 1])
    z = preprocess(x, {"kind": "zscore", "nonzero": True})[0, 0, 0]
    assert z[0] == 0 and abs(z[1:].mean()) < 1e-6 and abs(z[1:].std() - 1) < 1e-5
    np.testing.assert_allclose(preprocess(x, {"kind": "scale", "scale": 0.5, "offset": -1})[0, 0, 0],
                               [-1, 4, 9, 19])
    two = np.concatenate([x, x + 1])
    out = preprocess(two, [{"kind": "none"}, {"kind": "scale", "scale": 2}])
    np.testing.assert_allclose(out[1], 2 * (x[0] + 1))
    with pytest.raises(InputError, match="unknown preprocessing"):
        preprocess(x, {"kind": "histogram"})


def test_save_model_refuses_inconsistent_descriptions(tmp_path):
    from DiffSegUncertaintyLib.engine.networks import registry
    model = registry.build_model("hsrdiff", registry.preset_config("hsrdiff", "tiny"))
    with pytest.raises(ValueError, match="class names"):
        modelfile.save_model(model, tmp_path / "m", name="m", method="hsrdiff", preset="tiny", sampling={},
                             inputs={"channels": [{"name": "ct"}], "size": [16, 16]},
                             classes=["background", "a", "b"])
    assert list(tmp_path.iterdir()) == []
    card_path = testing.make_tiny_model_folder(tmp_path / "ok") / "model.json"
    card = json.loads(card_path.read_text())
    card["input"]["size"] = [16]
    card_path.write_text(json.dumps(card))
    with pytest.raises(modelfile.ModelFileError, match="input.size"):
        modelfile.read_card(card_path.parent)


def test_preprocessing_rejects_unknown_fields():
    """A misspelt card field must not silently fall back to the identity."""
    import numpy as np

    from DiffSegUncertaintyLib.engine.networks.checks import InputError
    from DiffSegUncertaintyLib.engine.files.volumes import preprocess

    x = np.arange(8, dtype=np.float32).reshape(1, 2, 4)
    np.testing.assert_allclose(preprocess(x, {"kind": "scale", "scale": 0.5, "offset": 1.0}), x * 0.5 + 1)
    with pytest.raises(InputError, match="input_range"):
        preprocess(x, {"kind": "scale", "input_range": [0, 255]})
