"""HSRDiff against its equations (8, 11, 12, 9), the sampler contract and its Table 6 switches."""

import json
import math

import pytest
import torch

from DiffSegUncertaintyLib.engine.networks import registry
from DiffSegUncertaintyLib.engine import testing
from DiffSegUncertaintyLib.engine.networks.checks import InputError
from DiffSegUncertaintyLib.engine.sampling.diffusion import NoiseSchedule
from DiffSegUncertaintyLib.engine.networks.hsrdiff import (
    ABLATIONS, DEFAULT_SAMPLING, PRESETS, from_config, paper_mean, paper_means)
from DiffSegUncertaintyLib.engine.sampling.sampler import SamplerConfig, sample



def _model(seed=0, **overrides):
    return testing.perturbed_tiny_model("hsrdiff", seed, **overrides)


def _image(shape=(2, 1, 16, 16), seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _x_t(model, image, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((image.shape[0], model.num_classes, *image.shape[2:]), generator=g, dtype=image.dtype)


# -- eq. 8 / 11 / 12 -----------------------------------------------------------------------------------

@pytest.mark.parametrize("t", [1, 2, 60, 249, 250])
def test_paper_mean_is_posterior_mean_of_mixed_estimate(t):
    """Eq. 8 with eqs. 11-12 equals q(x_{t-1} | x_t, x0_mix) with x0_mix = k x_theta + (1-k) x0(eps)."""
    s = NoiseSchedule.linear(250)
    g = torch.Generator().manual_seed(t)
    x_t, eps, x_th = (torch.randn(3, 2, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
    kappa = torch.rand(3, generator=g, dtype=torch.float64)
    k = kappa.reshape(-1, 1, 1, 1)
    x0_mix = k * x_th + (1 - k) * s.x0_from_eps(x_t, eps, t)
    expected, _ = s.posterior(x_t, x0_mix, t, t - 1)
    torch.testing.assert_close(paper_mean(s, x_t, eps, x_th, kappa, t), expected, rtol=1e-10, atol=1e-10)
    # and eq. 8's weights are not symmetric: the Algorithm 2 / eq. 13 swap is a different mean
    mu_eps, mu_x = paper_means(s, x_t, eps, x_th, t)
    assert not torch.allclose(k * mu_eps + (1 - k) * mu_x, expected)


def test_denoise_is_eq8_and_consistent_with_x_t():
    model = _model().double()
    image = _image().double()
    x_t = _x_t(model, image)
    t = torch.tensor([3, 200])
    cond = model.encode(image)
    pred = model.denoise(x_t, t, cond)
    eps_theta, x_theta, kappa = model.heads(x_t, t, cond)
    s = model.schedule
    torch.testing.assert_close(s.q_sample(pred.x0, t, pred.eps), x_t, rtol=1e-10, atol=1e-10)
    mean, _ = s.posterior(x_t, pred.x0, t, t - 1)  # what the sampler's DDPM step uses
    torch.testing.assert_close(mean, paper_mean(s, x_t, eps_theta, x_theta, kappa, t), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(pred.extras["kappa"], kappa)


# -- kappa -------------------------------------------------------------------------------------------

def test_kappa_one_per_image_in_open_unit_interval():
    model = _model()
    image = _image((3, 1, 16, 16))
    with torch.no_grad():
        pred = model.denoise(_x_t(model, image), torch.tensor([5, 100, 250]), model.encode(image))
    kappa = pred.extras["kappa"]
    assert kappa.shape == (3,)
    assert bool(((kappa > 0) & (kappa < 1)).all())
    assert len(set(kappa.tolist())) == 3  # depends on the image and step, not a constant


def test_fixed_kappa_is_exactly_half_and_has_no_regulator():
    model = _model(kappa_mode="fixed")
    assert model.regulator is None
    image = _image()
    with torch.no_grad():
        pred = model.denoise(_x_t(model, image), torch.tensor([1, 250]), model.encode(image))
        losses = model.loss(image, (image[:, 0] > 0).long())
    assert torch.equal(pred.extras["kappa"], torch.full((2,), 0.5))
    assert torch.equal(losses["kappa"], torch.full((2,), 0.5))


# -- sampler contract --------------------------------------------------------------------------------

def test_encode_once_and_chunking_is_bit_identical():
    model = _model()
    calls = []
    encode = model.encode
    model.encode = lambda image: (calls.append(image.shape[0]), encode(image))[1]
    image = _image()
    cfg = SamplerConfig(method="ddpm", steps=10)
    whole = sample(model, image, 3, cfg, seed=7)
    chunked = sample(model, image, 3, cfg, seed=7, batch_size=2)
    assert calls == [2, 2]  # once per sample() call, for the whole batch of images
    assert torch.equal(whole.y0, chunked.y0)
    assert torch.equal(whole.extras["kappa"], chunked.extras["kappa"])
    assert whole.extras["kappa"].shape == (2, 3, 10)
    assert not torch.equal(whole.y0[:, 0], whole.y0[:, 1])  # samples differ


@pytest.mark.parametrize("dims,in_ch,classes", [(2, 1, 2), (2, 4, 3), (3, 4, 2), (3, 1, 3)])
def test_shapes_and_gradient_flow(dims, in_ch, classes):
    model = _model(spatial_dims=dims, in_channels=in_ch, num_classes=classes).train()
    size = (16, 16) if dims == 2 else (8, 8, 8)
    image = _image((2, in_ch, *size))
    labels = torch.randint(0, classes, (2, *size), generator=torch.Generator().manual_seed(0))
    cond = model.encode(image)
    assert [f.shape[-1] for f in cond["F_h"]] == [size[-1]]  # tiny: one scale before the bottleneck
    pred = model.denoise(_x_t(model, image), torch.tensor([10, 20]), cond)
    assert pred.x0.shape == pred.eps.shape == (2, classes, *size)
    losses = model.loss(image, labels)
    assert set(losses) == {"loss", "loss_d", "loss_u", "kappa"}
    losses["loss"].backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert dead == []  # every part, C1/C2/Phi included (they learn only through L_u)


def test_config_round_trip_through_registry():
    model = _model(in_channels=2, num_classes=3)
    cfg = json.loads(json.dumps(model.config_dict()))
    twin = registry.build_model("hsrdiff", cfg).eval()
    twin.load_state_dict(model.state_dict())
    image = _image((2, 2, 16, 16))
    x_t, t = _x_t(model, image), torch.tensor([4, 90])
    with torch.no_grad():
        a, b = model.denoise(x_t, t, model.encode(image)), twin.denoise(x_t, t, twin.encode(image))
    assert twin.config_dict() == model.config_dict()
    assert torch.equal(a.x0, b.x0) and torch.equal(a.eps, b.eps)
    assert torch.equal(a.extras["kappa"], b.extras["kappa"])


# -- Table 6 switches --------------------------------------------------------------------------------

def _pred(model, image, cond):
    with torch.no_grad():
        return model.denoise(_x_t(model, image), torch.tensor([30, 30]), cond)


def test_without_x0_head_prediction_comes_from_eps_only():
    model = _model(**ABLATIONS["eps+fg+Fh"])
    assert model.dec_x is None and model.out_x is None and model.regulator is None
    image = _image()
    x_t, t = _x_t(model, image), torch.tensor([30, 30])
    with torch.no_grad():
        pred = model.denoise(x_t, t, model.encode(image))
        eps_theta, x_theta, _ = model.heads(x_t, t, model.encode(image))
        losses = model.loss(image, (image[:, 0] > 0).long())
    assert x_theta is None and pred.extras == {}
    assert torch.equal(pred.eps, eps_theta)
    torch.testing.assert_close(pred.x0, model.schedule.x0_from_eps(x_t, eps_theta, t))
    assert float(losses["loss_u"]) == 0 and torch.equal(losses["loss"], losses["loss_d"])


@pytest.mark.parametrize("key,switch", [("F_h", "hierarchical_condition"), ("f_g", "global_condition")])
def test_condition_switch_cuts_the_path(key, switch):
    image = _image()
    on = _model()
    cond = on.encode(image)

    def perturbed(c):
        v = c[key]
        noisy = [u + torch.randn_like(u) for u in v] if isinstance(v, list) else v + torch.randn_like(v)
        return {**c, key: noisy}

    assert not torch.equal(_pred(on, image, cond).x0, _pred(on, image, perturbed(cond)).x0)
    off = _model(**{switch: False})
    cond_off = off.encode(image)
    assert cond_off[key] in ([], None)
    full = on.encode(image)  # features of the right shapes handed to a model that must ignore them
    injected = {**cond_off, key: full[key]}
    assert torch.equal(_pred(off, image, cond_off).x0, _pred(off, image, injected).x0)
    assert sum(p.numel() for p in off.parameters()) < sum(p.numel() for p in on.parameters())


def test_row1_sees_the_image_only_by_concatenation():
    model = _model(**ABLATIONS["eps"])
    assert model.cond_encoder is None
    a, b = _image(seed=0), _image(seed=5)
    x_t = _x_t(model, a)
    with torch.no_grad():
        pa = model.denoise(x_t, torch.tensor([30, 30]), model.encode(a))
        pb = model.denoise(x_t, torch.tensor([30, 30]), model.encode(b))
        unconditioned = _model(**{**ABLATIONS["eps"], "concat_image": False})
        qa = unconditioned.denoise(x_t, torch.tensor([30, 30]), unconditioned.encode(a))
        qb = unconditioned.denoise(x_t, torch.tensor([30, 30]), unconditioned.encode(b))
    assert not torch.equal(pa.x0, pb.x0)
    assert torch.equal(qa.x0, qb.x0)


@pytest.mark.parametrize("row", list(ABLATIONS))
def test_every_table6_row_builds_trains_and_samples(row):
    model = _model(**ABLATIONS[row])
    image = _image()
    losses = model.train().loss(image, (image[:, 0] > 0).long())
    losses["loss"].backward()
    expected_total = (losses["loss_d"] + model.config_dict()["lambda2"] * losses["loss_u"])
    torch.testing.assert_close(losses["loss"], expected_total)
    out = sample(model, image, 2, SamplerConfig(method="ddim", steps=3), seed=0)
    assert bool(torch.isfinite(out.y0).all())


# -- training ----------------------------------------------------------------------------------------

def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = from_config(registry.preset_config("hsrdiff", "tiny")).train()
    g = torch.Generator().manual_seed(3)
    image = torch.randn(4, 1, 16, 16, generator=g)
    labels = (image[:, 0] > 0.3).long()
    t = torch.tensor([5, 50, 120, 240])
    noise = torch.randn(4, 2, 16, 16, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(30):
        opt.zero_grad()
        loss = model.loss(image, labels, t=t, noise=noise)["loss"]
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    assert history[-1] < 0.5 * history[0]


# -- presets and inputs ------------------------------------------------------------------------------

def test_preset_sizes_schedule_and_default_sampling():
    counts = {k: sum(p.numel() for p in from_config(v).parameters()) for k, v in PRESETS.items()}
    assert math.isclose(counts["hsrdiff"], 96.14e6, rel_tol=0.10)
    assert math.isclose(counts["hsrdiff-light"], 12.89e6, rel_tol=0.10)
    assert counts["tiny"] < 100_000
    sched = NoiseSchedule.from_config(PRESETS["hsrdiff"]["schedule"])
    assert sched.T == 250 and sched.abar[-1] < 1e-4  # x_T is noise (methods.md)
    cfg = SamplerConfig(**DEFAULT_SAMPLING)
    assert cfg.method == "ddpm" and sched.timesteps(cfg.steps, cfg.spacing) == list(range(250, 0, -1))


def test_bad_input_raises_input_error():
    model = _model()
    image, labels = _image(), torch.zeros(2, 16, 16, dtype=torch.long)
    with pytest.raises(InputError, match="channel"):
        model.loss(_image((2, 3, 16, 16)), labels)
    nan = image.clone()
    nan[0, 0, 3, 3] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        model.loss(nan, labels)
    with pytest.raises(InputError, match="classes"):
        model.loss(image, labels + 2)
    with pytest.raises(InputError, match="labels have shape"):
        model.loss(image, labels[:, :8])
    with pytest.raises(InputError, match="multiple of 2"):
        sample(model, _image((1, 1, 15, 16)), 1, SamplerConfig(steps=2))
    with pytest.raises(ValueError, match="unknown HSRDiff config"):
        from_config({**PRESETS["tiny"], "widths": [4, 8]})
