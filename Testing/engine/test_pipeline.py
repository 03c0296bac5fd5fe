"""The pipeline's contract in Python: requests checked once, the card's defaults carried by the model,
precision "auto", the memory estimate, and all-or-nothing output folders."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from DiffSegUncertaintyLib.engine import pipeline
from DiffSegUncertaintyLib.engine import testing
from DiffSegUncertaintyLib.engine.pipeline import Model, Request, RequestError, Segmenter, volumes_from_array


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Model:
    folder = testing.make_tiny_model_folder(tmp_path_factory.mktemp("m") / "tiny", size=[16, 16],
                                            sampling={"method": "ddim", "steps": 3, "eta": 0.0})
    return Model.load(folder)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return testing.blob_array((20, 24), seed=2)[0]


@pytest.mark.parametrize("fields, field", [
    ({"samples": 0}, "samples"), ({"samples": 2.5}, "samples"), ({"samples": True}, "samples"),
    ({"steps": 0}, "steps"), ({"eta": float("nan")}, "eta"), ({"eta": 1.5}, "eta"), ({"eta": -0.1}, "eta"),
    ({"overlap": 1.0}, "overlap"), ({"overlap": float("inf")}, "overlap"), ({"batch_size": 0}, "batch_size"),
    ({"device": "tpu"}, "device"), ({"precision": "fp16"}, "precision"), ({"sampler": "euler"}, "sampler"),
    ({"spacing": "random"}, "spacing"), ({"roi": [0, 0, 4]}, "roi"), ({"roi": [0.5, 0, 4, 4]}, "roi"),
    ({"roi_mm": [0, 0, float("nan"), 4]}, "roi_mm"), ({"roi": [0, 0, 4, 4], "roi_mm": [0, 0, 4, 4]}, "roi"),
    ({"seed": 1.0}, "seed")])
def test_every_bad_field_is_named(fields, field):
    with pytest.raises(RequestError) as err:
        Request(**fields).check()
    assert err.value.field == field and str(err.value).startswith(field)


def test_the_model_carries_its_cards_sampler(model):
    """No argument: the card's sampler (DDIM, 3 steps), not all T steps; a request field overrides one field."""
    cfg = model.sampler_config()
    assert (cfg.method, cfg.steps, cfg.eta) == ("ddim", 3, 0.0)
    cfg = model.sampler_config(steps=2, eta=None)
    assert (cfg.method, cfg.steps) == ("ddim", 2)
    plan = Segmenter(model).plan(volumes_from_array(testing.blob_array((20, 24), seed=2)[0]),
                                 Request(device="cpu"))
    assert len(plan.timesteps) == 3 and plan.config.method == "ddim"


def test_a_card_with_an_unusable_sampler_is_refused(model):
    card = json.loads(json.dumps(model.card))
    card["sampling"]["steps"] = 10 ** 6
    with pytest.raises(pipeline.ModelFileError, match="sampling"):
        Model(model.network, card)


@pytest.mark.parametrize("has_bf16", [False, True])
def test_precision_auto_follows_the_cpu_and_is_recorded(model, image, monkeypatch, has_bf16, tmp_path):
    monkeypatch.setattr(pipeline, "cpu_has_bf16", lambda: has_bf16)
    want = "bf16" if has_bf16 else "fp32"
    assert pipeline.resolve_precision("auto", "cpu") == want
    assert pipeline.resolve_precision("auto", "mps") == "fp32" and pipeline.resolve_precision("fp32", "cpu") == "fp32"
    result = Segmenter(model)(volumes_from_array(image), Request(samples=2, steps=1, device="cpu"))
    summary = result.summary()  # auto is the default (issue 16)
    assert summary["precision"] == want and summary["precision_requested"] == "auto"
    explicit = Segmenter(model)(volumes_from_array(image), Request(samples=2, steps=1, device="cpu", precision=want))
    assert (result.y0 == explicit.y0).all()  # auto is exactly the precision it resolves to


@pytest.mark.parametrize("has_bf16", [False, True])
def test_channels_last_auto_follows_the_precision_and_is_recorded(model, image, monkeypatch, has_bf16):
    """Issue 16: channels-last by default where it measured faster (bf16 on a CPU), contiguous in fp32;
    True / False override auto, and auto gives exactly the run it resolves to."""
    monkeypatch.setattr(pipeline, "cpu_has_bf16", lambda: has_bf16)
    assert pipeline.resolve_channels_last(None, "cpu", "bf16") is True
    assert pipeline.resolve_channels_last(None, "cpu", "fp32") is False
    assert pipeline.resolve_channels_last(None, "cuda", "bf16") is False  # unmeasured on GPUs
    assert pipeline.resolve_channels_last(False, "cpu", "bf16") is False
    assert pipeline.resolve_channels_last(True, "cuda", "fp32") is True
    seg, vols = Segmenter(model), volumes_from_array(image)
    auto = seg(vols, Request(samples=2, steps=1, device="cpu"))
    s = auto.summary()
    assert (s["channels_last_requested"], s["channels_last"]) == ("auto", has_bf16)
    same = seg(vols, Request(samples=2, steps=1, device="cpu", channels_last=has_bf16))
    assert torch.equal(auto.y0, same.y0) and same.summary()["channels_last_requested"] is has_bf16
    with pytest.raises(RequestError, match="True, False or None") as err:
        Request(channels_last="yes").check()
    assert err.value.field == "channels_last"


@pytest.mark.parametrize("major, want", [(7, "fp32"), (8, "bf16"), (9, "bf16")])
def test_precision_auto_on_cuda_wants_native_bf16(monkeypatch, major, want):
    """A Volta/Turing GPU emulates bf16 (slower than fp32): auto keeps fp32 there, bf16 from Ampere on."""
    monkeypatch.setattr(pipeline.torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    assert pipeline.resolve_precision("auto", "cuda") == want


def test_memory_estimate_by_hand_and_refusal(model, image, monkeypatch):
    # y0 twice (4 bytes x M x C x ROI), layers (M x (C-1) x 2 + M bytes per voxel), maps (4 x (C + 8) per voxel)
    assert pipeline.estimate_memory(3, 2, 100, 1000) == 2 * 4 * 3 * 2 * 100 + (3 * 1 * 1000 * 2 + 3 * 1000) + 4 * 10 * 1000
    need = pipeline.estimate_memory(64, 2, image.size, image.size)
    assert pipeline.estimate_memory(1, 2, image.size, image.size) < need // 2
    monkeypatch.setattr(pipeline, "available_memory", lambda: pipeline.MEMORY_MARGIN + need // 2)
    with pytest.raises(RequestError, match="GiB") as err:
        Segmenter(model).plan(volumes_from_array(image), Request(samples=64, device="cpu"))
    assert err.value.field == "samples"
    Segmenter(model).plan(volumes_from_array(image), Request(samples=1, device="cpu"))  # 1 fits


def test_a_failed_write_leaves_the_old_folder_and_no_temporary(model, image, tmp_path, monkeypatch):
    result = Segmenter(model)(volumes_from_array(image), Request(samples=2, steps=1, device="cpu"))
    out = tmp_path / "deep" / "out"
    result.write(out)
    first = (out / "summary.json").read_text()
    with pytest.raises(RequestError, match="exists"):
        result.write(out)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pipeline, "write_volume", broken)
    with pytest.raises(OSError, match="disk full"):
        result.write(out, overwrite=True)
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"] and (out / "summary.json").read_text() == first
    with pytest.raises(OSError):
        result.write(tmp_path / "new" / "sub" / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]  # parents made by the failed run removed


def test_result_probabilities_and_grid(model, image):
    result = pipeline.segment(model, volumes_from_array(image), samples=3, steps=1, device="cpu", roi=[2, 3, 20, 15])
    p = result.probabilities()
    assert p.shape == (3, 2, 12, 18) and np.allclose(p.sum(1).numpy(), 1, atol=1e-6)
    assert np.allclose(result.maps.mean_probability.numpy(), p.mean(0).numpy(), atol=1e-6)
    full = result.on_grid(result.maps.consensus, np.uint8)
    assert full.shape == image.shape and not full[:3].any() and not full[:, :2].any()
    assert math.isclose(result.summary()["spread"]["voxels"]["mean"], float(np.mean(result.maps.volumes_voxels)))
