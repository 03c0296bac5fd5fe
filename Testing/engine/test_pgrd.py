"""PGRD against methods.md: residual chain centred on the prior, v-loss + DDS, frozen prior, ablations."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from DiffSegUncertaintyLib.engine.networks import pgrd
from DiffSegUncertaintyLib.engine import testing
from DiffSegUncertaintyLib.engine.networks.checks import InputError
from DiffSegUncertaintyLib.engine.sampling.diffusion import embed_labels
from DiffSegUncertaintyLib.engine.networks.registry import build_model, preset_config
from DiffSegUncertaintyLib.engine.sampling.sampler import SamplerConfig, sample, sample_seed

DDIM5 = SamplerConfig(method="ddim", steps=5)


def _model(seed=0, **overrides):
    """A tiny PGRD whose zero-initialised output conv (MONAI) is made random, so v_hat depends on the
    input and sampling is not trivially v_hat = 0."""
    torch.manual_seed(seed)
    model = build_model("pgrd", preset_config("pgrd", "tiny", **overrides))
    with torch.no_grad():
        for p in model.denoiser.out[2].parameters():
            p.normal_(0, 0.1)
    return model


_batch = testing.random_batch


def test_config_round_trip_through_the_registry():
    model = _model(num_classes=3, in_channels=2)
    cfg = json.loads(json.dumps(model.config_dict()))
    again = build_model("pgrd", cfg)
    assert again.config_dict() == model.config_dict()
    again.load_state_dict(model.state_dict())  # strict
    model.eval(), again.eval()
    image, _ = _batch(cin=2)
    cond = model.encode(image)
    r_t, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    assert torch.equal(model.denoise(r_t, t, cond).x0, again.denoise(r_t, t, again.encode(image)).x0)


def test_every_preset_is_a_full_config():
    for name, cfg in pgrd.PRESETS.items():
        assert set(cfg) == set(pgrd.PRESETS["tiny"]), name
        json.dumps(cfg)
        model = build_model("pgrd", cfg)  # widths consistent (norm groups, heads, strides)
        assert model.config_dict() == {**cfg, "prior": model.prior.config_dict()}
    with pytest.raises(ValueError, match="prior spatial_dims"):
        cfg = _model().config_dict()
        cfg["spatial_dims"] = 3
        build_model("pgrd", cfg)
    assert pgrd.DEFAULT_SAMPLING == {**SamplerConfig(method="ddim", steps=300).__dict__}


def test_prior_gets_no_gradient_from_the_diffusion_loss():
    model = _model()
    image, labels = _batch()
    model.loss(image, labels)["loss"].backward()
    assert all(p.grad is None for p in model.prior.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.denoiser.parameters())
    assert all(p.grad.abs().sum() > 0 for p in model.dds_heads.parameters())


def test_stage_one_trains_the_prior_only_and_freezing_keeps_it_in_eval():
    model = _model()
    image, labels = _batch()
    model.prior_loss(image, labels)["loss"].backward()
    assert all(p.grad is not None for p in model.prior.parameters())
    assert all(p.grad is None for p in model.denoiser.parameters())
    model.freeze_prior().train()
    assert model.denoiser.training and not model.prior.training
    assert not any(p.requires_grad for p in model.prior.parameters())
    ids = {id(p) for p in model.denoiser_parameters()}
    assert ids.isdisjoint(id(p) for p in model.prior.parameters())
    assert len(ids) == len(list(model.denoiser.parameters())) + len(list(model.dds_heads.parameters()))


def _replay_loss_inputs(model, image, labels, seed):
    """The draws loss() makes under ``seed`` (t then eps), recomputed by hand: eqs. (2), (3)."""
    torch.manual_seed(seed)
    cond = model.encode(image)
    p = cond["prior"]
    r0 = embed_labels(labels, model.num_classes) - p
    t = torch.randint(1, model.schedule.T + 1, (image.shape[0],))
    eps = torch.randn_like(r0)
    a = model.schedule.abar_at(t, r0)
    r_t = a.sqrt() * r0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * r0
    return cond, p, t, r_t, v


@pytest.mark.parametrize("mode", ["heads", "y0"])
def test_loss_parts_match_the_equations(mode):
    model = _model(dds_mode=mode).eval()
    image, labels = _batch()
    torch.manual_seed(7)
    out = model.loss(image, labels)
    cond, p, t, r_t, v = _replay_loss_inputs(model, image, labels, 7)
    pred = model.denoise(r_t, t, cond)
    a = model.schedule.abar_at(t, r_t)
    v_hat = (a.sqrt() * r_t - pred.x0) / (1 - a).sqrt()  # eq. (4) inverted
    torch.testing.assert_close(out["loss_v"], F.mse_loss(v_hat, v), rtol=1e-4, atol=1e-6)  # eq. (8)
    if mode == "y0":
        ce = F.cross_entropy((p + pred.x0) / model.dds_tau, labels)
        torch.testing.assert_close(out["loss_dds"], ce, rtol=1e-4, atol=1e-6)  # eq. (6)
    assert out["loss_dds"] > 0
    torch.testing.assert_close(out["loss"], out["loss_v"] + 0.1 * out["loss_dds"])  # eq. (9)


def test_without_dds_the_loss_is_the_v_loss():
    model = _model(dds_weight=0.0)
    assert model.dds_heads is None
    out = model.loss(*_batch())
    assert out["loss"].item() == out["loss_v"].item() and out["loss_dds"].item() == 0


def test_dds_intervals_cover_one_to_T():
    model = _model(dds_intervals=4)
    T = model.schedule.T
    k = model.dds_interval(torch.arange(1, T + 1))
    assert k.min() == 0 and k.max() == 3
    assert torch.equal(torch.bincount(k), torch.full((4,), T // 4))
    assert (k[1:] >= k[:-1]).all()


def test_denoise_is_consistent_with_the_state():
    model = _model().eval()
    image, _ = _batch()
    cond = model.encode(image)
    r_t, t = torch.randn(2, 2, 16, 16), torch.tensor([1, 1000])
    pred = model.denoise(r_t, t, cond)
    a = model.schedule.abar_at(t, r_t)
    torch.testing.assert_close(a.sqrt() * pred.x0 + (1 - a).sqrt() * pred.eps, r_t, rtol=0, atol=1e-5)


def test_chain_starts_at_prior_plus_noise():
    """First network input: [s_T = p + r_T, X, p] with r_T the sampler's noise of hypothesis k."""
    model = _model()
    image, _ = _batch()
    seen = []
    model.denoiser.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    sample(model, image[:1], num_samples=2, config=DDIM5, seed=11)
    first = seen[0]
    p = model.encode(image[:1])["prior"]
    noise = torch.stack([torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(sample_seed(11, k)))
                         for k in range(2)])
    torch.testing.assert_close(first[:, :2], p + noise)
    torch.testing.assert_close(first[:, 2:3], image[:1].expand(2, -1, -1, -1))
    torch.testing.assert_close(first[:, 3:], p.expand(2, -1, -1, -1))
    assert p.min() >= -1 and p.max() <= 1


class _Oracle(nn.Module):
    """A denoiser that knows the answer y: returns the exact v of the residual (or of y without prior)."""

    def __init__(self, model, y):
        super().__init__()
        self.__dict__["model"] = model  # not a submodule: the model will own this oracle
        self.y = y

    def forward(self, x, t):
        C, cin = self.model.num_classes, self.model.in_channels
        p = x[:, C + cin:] if self.model.use_prior else torch.zeros_like(x[:, :C])
        r_t, r0 = x[:, :C] - p, self.y - p
        a = self.model.schedule.abar_at(t, r_t)
        return (a.sqrt() * r_t - r0) / (1 - a).sqrt()


@pytest.mark.parametrize("use_prior", [True, False])
def test_oracle_chain_returns_the_target(use_prior):
    """final hypothesis = offset + x0 (sampler contract) lands on y when v_hat is exact."""
    model = _model(use_prior=use_prior)
    image, labels = _batch(seed=3)
    y = embed_labels(labels[:1], 2)
    model.denoiser = _Oracle(model, y)
    out = sample(model, image[:1], num_samples=2, config=DDIM5, seed=0).y0
    torch.testing.assert_close(out[0], y.expand(2, -1, -1, -1), rtol=0, atol=1e-3)


@pytest.mark.parametrize("spatial_dims, spatial, cin, classes",
                         [(2, (16, 12), 2, 3), (3, (8, 8, 4), 1, 2)])
def test_sampling_is_reproducible_with_the_documented_shape(spatial_dims, spatial, cin, classes):
    model = _model(spatial_dims=spatial_dims, in_channels=cin, num_classes=classes)
    image, _ = _batch(spatial, cin=cin, classes=classes)
    a = sample(model, image, num_samples=3, config=DDIM5, seed=5).y0
    b = sample(model, image, num_samples=3, config=DDIM5, seed=5, batch_size=2).y0
    c = sample(model, image, num_samples=3, config=DDIM5, seed=6).y0
    assert a.shape == (2, 3, classes, *spatial) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[:, 0], a[:, 1])  # hypotheses differ


def test_without_prior_nothing_of_the_prior_is_used():
    model = _model(use_prior=False)
    assert model.prior is None
    assert model.denoiser.conv_in.conv.in_channels == 2 + 1
    image, labels = _batch()
    cond = model.encode(image)
    assert "prior" not in cond and model.offset(cond) is None
    assert torch.isfinite(model.loss(image, labels)["loss"])
    with pytest.raises(ValueError, match="no prior"):
        model.prior_loss(image, labels)
    with_prior = _model()
    assert with_prior.offset(with_prior.encode(image)) is not None
    assert with_prior.denoiser.conv_in.conv.in_channels == 2 + 1 + 2


def test_a_few_steps_on_a_fixed_batch_reduce_the_loss():
    model = _model(dds_weight=0.1).freeze_prior()
    image, _ = _batch()
    labels = (image[:, 0] > 0.3).long()

    def fixed_loss():  # same t and eps draws every time
        torch.manual_seed(123)
        return sum(model.loss(image.repeat(4, 1, 1, 1), labels.repeat(4, 1, 1))["loss"] for _ in range(2))

    opt = torch.optim.Adam(model.denoiser_parameters(), lr=3e-3)
    with torch.no_grad():
        before = fixed_loss().item()
    torch.manual_seed(0)
    for _ in range(20):
        opt.zero_grad()
        model.loss(image, labels)["loss"].backward()
        opt.step()
    with torch.no_grad():
        assert fixed_loss().item() < 0.8 * before


def test_bad_input_raises_input_error():
    model = _model()
    image, labels = _batch()
    with pytest.raises(InputError, match="channel"):
        model.loss(torch.randn(2, 2, 16, 16), labels)
    nan = image.clone()
    nan[1, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        model.loss(nan, labels)
    with pytest.raises(InputError, match="classes"):
        model.loss(image, labels + 2)
    with pytest.raises(InputError, match="shape"):
        model.loss(image, labels[0])
    with pytest.raises(InputError, match="multiple of 4"):
        sample(model, torch.randn(1, 1, 18, 16), num_samples=1, config=DDIM5)
    with pytest.raises(InputError, match="channel"):
        sample(model, torch.randn(1, 3, 16, 16), num_samples=1, config=DDIM5)
