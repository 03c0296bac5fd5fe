"""Every model shipped in the module's Resources/Models loads with its checks and samples a real case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from DiffSegUncertaintyLib.engine.modelfile import SHIPPED_MODELS, find_models, load_model, roi_required
from DiffSegUncertaintyLib.engine.sampler import SamplerConfig, sample
from DiffSegUncertaintyLib.engine.volumes import preprocess

SHIPPED = sorted(p.parent for p in SHIPPED_MODELS.glob("*/model.json"))
LIDC = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "lidc128"


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_model_loads_and_is_documented(folder):
    model, card = load_model(folder)  # sha256 and every tensor's name and shape checked
    assert find_models()[card["name"]] == folder
    assert card["weights"]["dtype"] == "float16"  # the repository stays lean
    for key in ("command", "time_s", "hardware", "step", "data"):
        assert card["training"][key], key
    assert card["metrics"]["source"] == "diffseg evaluate" and card["metrics"]["samples"] == 16
    assert {"ged", "hm_iou", "mdm", "dice"} <= set(card["metrics"]["values"])


@pytest.mark.skipif(not (LIDC / "val.npz").exists(), reason="needs ../shared/data/lidc128/val.npz")
@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_lidc_model_samples_a_real_nodule(folder):
    model, card = load_model(folder)
    size = card["input"]["size"]
    assert roi_required(card)
    with np.load(LIDC / "val.npz") as z:
        image = z["images"][:1].astype(np.float32)
    lo = [(s - z) // 2 for s, z in zip(image.shape[1:], size)]
    crop = image[:, lo[0]:lo[0] + size[0], lo[1]:lo[1] + size[1]]
    x = torch.from_numpy(preprocess(crop, card["input"]["preprocessing"]))[None]
    a = sample(model, x, 2, SamplerConfig(method="ddim", steps=2), seed=0).y0
    b = sample(model, x, 2, SamplerConfig(method="ddim", steps=2), seed=0).y0
    assert a.shape == (1, 2, 2, *size) and torch.isfinite(a).all() and torch.equal(a, b)
