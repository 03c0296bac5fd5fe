"""Every model shipped in the module's Resources/Models loads with its checks and samples a real case."""

from __future__ import annotations

import pytest
import torch

from DiffSegUncertaintyLib.engine.analysis.evaluation import data_for_model, load_multireader_npz
from DiffSegUncertaintyLib.engine.files.modelfile import SHIPPED_MODELS, find_models, load_model, roi_required
from DiffSegUncertaintyLib.engine.sampling.sampler import SamplerConfig, sample

SHIPPED = sorted(p.parent for p in SHIPPED_MODELS.glob("*/model.json"))


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_model_loads_and_is_documented(folder):
    model, card = load_model(folder)  # sha256 and every tensor's name and shape checked
    assert find_models()[card["name"]] == folder
    assert card["weights"]["dtype"] == "float16"  # the repository stays lean
    for key in ("command", "time_s", "hardware", "step", "data"):
        assert card["training"][key], key
    assert "diffseg evaluate" in card["metrics"]["source"] and card["metrics"]["samples"] == 16
    assert {"ged", "hm_iou", "mdm", "dice", "nll", "ece"} <= set(card["metrics"]["values"])
    # tau_out was fitted on val, and the card's metrics were scored at the tau_out the model runs with
    assert card["calibration"]["fitted_on"] == "val" and card["calibration"]["data"].endswith("val.npz")
    assert card["metrics"]["tau_out"] == card["architecture"]["tau_out"] == model.tau_out
    # ... and with the sampler the card runs by default: a changed sampling block needs new metrics
    assert card["metrics"]["sampler"] == card["calibration"]["sampler"] == card["sampling"]


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_lidc_model_samples_a_real_nodule(folder, lidc_root):
    model, card = load_model(folder)
    size = card["input"]["size"]
    assert roi_required(card)
    data = data_for_model(load_multireader_npz(lidc_root / "val.npz"), card, 1)  # as diffseg evaluate
    from DiffSegUncertaintyLib.engine.files.volumes import preprocess
    x = torch.from_numpy(preprocess(data.images, card["input"]["preprocessing"])[(slice(None), *data.box)])[:, None]
    assert tuple(x.shape[2:]) == tuple(size) and 0 <= float(x.min()) and float(x.max()) <= 1
    a = sample(model, x, 2, SamplerConfig(method="ddim", steps=2), seed=0).y0
    b = sample(model, x, 2, SamplerConfig(method="ddim", steps=2), seed=0).y0
    assert a.shape == (1, 2, 2, *size) and torch.isfinite(a).all() and torch.equal(a, b)
