"""The baselines behave as their papers say: seeds, dropout, oracle loss, KL, independent members."""

import numpy as np
import pytest
import torch

from DiffSegUncertaintyLib.engine.networks.checks import InputError
from DiffSegUncertaintyLib.engine.analysis.evaluation import evaluate_predictor
from training.baselines import BASELINES, baseline_config, baseline_predictor, build_baseline


def _batch(seed=0, b=2, size=16):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(b, 1, size, size, generator=g)
    labels = (torch.rand(b, size, size, generator=g) > 0.6).long()
    return image, labels


def _tiny(name, **kw):
    torch.manual_seed(0)
    return build_baseline(name, baseline_config(name, "tiny", **kw))


@pytest.mark.parametrize("name", list(BASELINES))
def test_shapes_loss_and_config_round_trip(name):
    model = _tiny(name)
    image, labels = _batch()
    out = model.loss(image, labels)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(v.ndim == 0 for v in out.values())
    p = model.sample_probabilities(image, 3, seed=1)
    assert p.shape == (2, 3, 2, 16, 16) and p.dtype == torch.float32
    assert torch.allclose(p.sum(2), torch.ones(2, 3, 16, 16), atol=1e-5)
    assert model.predict_proba(image).shape == (2, 2, 16, 16)
    rebuilt = build_baseline(name, model.config_dict())
    assert rebuilt.config_dict() == model.config_dict()
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_unknown_names_and_fields_and_bad_input():
    with pytest.raises(ValueError, match="unknown baseline"):
        build_baseline("bayes", {})
    with pytest.raises(ValueError, match="no field"):
        baseline_config("unet", "tiny", heads=3)
    model = _tiny("unet")
    with pytest.raises(InputError, match="multiple of"):
        model.sample_probabilities(torch.randn(1, 1, 15, 15), 2)
    with pytest.raises(InputError, match="classes"):
        model.loss(torch.randn(1, 1, 16, 16), torch.full((1, 16, 16), 2))


def test_unet_samples_are_copies_of_one_prediction():
    model = _tiny("unet")
    p = model.sample_probabilities(_batch()[0], 4, seed=3)
    assert torch.equal(p[:, 0], p[:, 3])


def test_mc_dropout_active_when_sampling_off_when_deterministic():
    model = _tiny("mc-dropout", dropout=0.5)
    image = _batch()[0]
    a = model.sample_probabilities(image, 3, seed=0)
    b = model.sample_probabilities(image, 3, seed=0)
    c = model.sample_probabilities(image, 3, seed=1)
    assert not torch.allclose(a[:, 0], a[:, 1])          # dropout on: samples differ
    assert torch.equal(a, b)                               # one seed repeats the run
    assert not torch.allclose(a, c)                        # another seed draws others
    d1, d2 = model.predict_proba(image), model.predict_proba(image)
    assert torch.equal(d1, d2)                             # dropout off: deterministic
    assert not model.training and not any(m.training for m in model.modules())  # left in eval mode
    state = torch.random.get_rng_state()
    model.sample_probabilities(image, 2, seed=5)
    assert torch.equal(state, torch.random.get_rng_state())  # caller's RNG untouched


def test_mc_dropout_needs_dropout():
    with pytest.raises(ValueError, match="dropout"):
        _tiny("mc-dropout", dropout=0.0)


def test_ensemble_members_differ_and_train_on_their_own_loss():
    model = _tiny("ensemble")
    image, labels = _batch()
    p = model.sample_probabilities(image, 4)
    assert not torch.allclose(p[:, 0], p[:, 1])           # independently initialised
    assert torch.equal(p[:, 0], p[:, 3])                   # 3 members: hypothesis 3 is member 0
    out = model.loss(image, labels)
    assert torch.isclose(out["loss"], sum(out[f"member_{i}"] for i in range(3)))
    # each member's gradient is that of its own loss alone
    model.zero_grad()
    out["loss"].backward()
    g_joint = next(model.members[1].parameters()).grad.clone()
    model.zero_grad()
    model.members[1].loss(image, labels)["loss"].backward()
    assert torch.allclose(g_joint, next(model.members[1].parameters()).grad, atol=1e-6)


def test_multi_head_oracle_loss_trains_the_best_head_only():
    model = _tiny("multi-head", epsilon=0.0, heads=3)
    image, labels = _batch(b=1)
    with torch.no_grad():  # make head 2 clearly the best: it predicts the labels from a bias trick
        model.heads[2].weight.zero_()
        model.heads[2].bias.copy_(torch.tensor([5.0, -5.0]))  # always background
    labels = torch.zeros_like(labels)
    out = model.loss(image, labels)
    assert int(model.last_winner[0]) == 2
    out["loss"].backward()
    assert model.heads[2].bias.grad.abs().sum() > 0
    assert model.heads[0].weight.grad.abs().sum() == 0 and model.heads[1].weight.grad.abs().sum() == 0
    # the relaxed oracle (epsilon > 0) lets the other heads learn a little
    model.epsilon = 0.1
    model.zero_grad()
    model.loss(image, labels)["loss"].backward()
    assert model.heads[0].weight.grad.abs().sum() > 0
    # and the total is (1 - eps) * best + eps / (K - 1) * others (Rupprecht et al. 2017)
    from training.baselines import _per_image_dice_ce
    with torch.no_grad():
        per_head = torch.stack([_per_image_dice_ce(lg, labels, model._dice)[0] for lg in model.head_logits(image)])
        total = model.loss(image, labels)["loss"]
    best = per_head.min()
    assert torch.isclose(total, 0.9 * best + 0.05 * (per_head.sum() - best), atol=1e-6)


def test_multi_head_hypotheses_are_the_heads():
    model = _tiny("multi-head", heads=2)
    p = model.sample_probabilities(_batch()[0], 3)
    assert not torch.allclose(p[:, 0], p[:, 1]) and torch.equal(p[:, 0], p[:, 2])


def test_prob_unet_kl_zero_when_prior_equals_posterior():
    model = _tiny("prob-unet")
    image, labels = _batch()
    for enc in (model.prior, model.posterior):  # both nets output the same Gaussian for any input
        with torch.no_grad():
            enc.head.weight.zero_()
            enc.head.bias.copy_(torch.tensor([0.3, -0.2, 0.1, 0.4]))
    out = model.loss(image, labels)
    assert float(out["kl"]) == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        model.posterior.head.bias[0] += 1.0  # shift one mean by 1 with sigma = e^0.1: KL = 1/(2 sigma^2)
    out = model.loss(image, labels)
    assert float(out["kl"]) == pytest.approx(0.5 * np.exp(-0.2), rel=1e-5)


def test_prob_unet_samples_follow_the_seed_and_the_latent_matters():
    model = _tiny("prob-unet")
    with torch.no_grad():
        model.prior.head.bias[model.latent_dim:] = 1.0  # sigma = e: clearly different latents
    image = _batch()[0]
    a, b = model.sample_probabilities(image, 3, seed=0), model.sample_probabilities(image, 3, seed=0)
    c = model.sample_probabilities(image, 3, seed=7)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert not torch.allclose(a[:, 0], a[:, 1])
    # a sample does not depend on the other images of the batch
    single = model.sample_probabilities(image[1:], 3, seed=0)
    assert torch.allclose(single[0], a[1], atol=1e-6)


def test_baseline_predictor_scores_through_the_evaluation_path():
    model = _tiny("mc-dropout")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 16, 16), dtype=np.uint8)
    masks = (rng.random((3, 4, 16, 16)) > 0.7).astype(np.uint8)
    spec = {"kind": "scale", "scale": 1 / 255, "offset": 0.0}
    res = evaluate_predictor(baseline_predictor(model, spec, seed=0), images, masks, 2, batch_size=2)
    assert len(res["per_image"]) == 3 and 0 <= res["summary"]["ged"][0] <= 2
    assert res["summary"]["diversity"][0] > 0  # MC dropout hypotheses differ
