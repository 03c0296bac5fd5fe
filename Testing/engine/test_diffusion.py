"""The diffusion core against the maths: identities, schedules, exact recovery by an oracle."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from DiffSegUncertaintyLib.engine.sampling.diffusion import (
    DiffusionSegmenter, NoiseSchedule, Prediction, embed_labels)
from DiffSegUncertaintyLib.engine.sampling.sampler import SamplerConfig, SamplingCancelled, run_chain, sample

SCHEDULES = {
    "cosine": NoiseSchedule.cosine(1000),
    "cosine-ztsnr": NoiseSchedule.cosine(1000, zero_terminal_snr=True),
    "linear": NoiseSchedule.linear(250),
}


def _pair(shape=(3, 2, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64),
            torch.randn(shape, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("name", SCHEDULES)
def test_v_round_trip(name):
    s = SCHEDULES[name]
    x0, eps = _pair()
    t = torch.tensor([1, s.T // 2, s.T - 1])
    x_t = s.q_sample(x0, t, eps)
    v = s.v_from(x0, eps, t)
    x0_back, eps_back = s.x0_eps_from_v(x_t, v, t)
    torch.testing.assert_close(x0_back, x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(eps_back, eps, rtol=0, atol=1e-12)


def test_eps_x0_conversions_invert_each_other():
    s = SCHEDULES["linear"]
    x0, eps = _pair()
    t = torch.tensor([1, 100, 250])
    x_t = s.q_sample(x0, t, eps)
    torch.testing.assert_close(s.x0_from_eps(x_t, eps, t), x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(s.eps_from_x0(x_t, x0, t), eps, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_posterior_mean_equals_closed_forms(name):
    """HSRDiff eq. 12 (mean from x0) and eq. 11 (mean from eps) are the same posterior mean."""
    s = SCHEDULES[name]
    x0, eps = _pair()
    for t in (2, s.T // 3, s.T):
        x_t = s.q_sample(x0, t, eps)
        mean, var = s.posterior(x_t, x0, t, t - 1)
        a_t, a_p, beta = s.abar[t], s.abar[t - 1], s.betas[t]
        eq12 = math.sqrt(1 - beta) * (1 - a_p) / (1 - a_t) * x_t + math.sqrt(a_p) * beta / (1 - a_t) * x0
        eq11 = x_t / math.sqrt(1 - beta) - beta / (math.sqrt(1 - a_t) * math.sqrt(1 - beta)) * eps
        torch.testing.assert_close(mean, eq12, rtol=0, atol=1e-10)
        torch.testing.assert_close(mean, eq11, rtol=0, atol=1e-8)
        assert float(var.flatten()[0]) == pytest.approx((1 - a_p) / (1 - a_t) * beta, rel=1e-12)


def test_ddim_eta_one_has_posterior_variance():
    s = SCHEDULES["cosine"]
    x0, eps = _pair()
    t, t_prev = 700, 400
    x_t = s.q_sample(x0, t, eps)
    mean, var = s.posterior(x_t, x0, t, t_prev)
    z = torch.zeros_like(x0)
    # with zero noise DDIM(eta=1) lands on the posterior mean computed from the true eps
    torch.testing.assert_close(s.ddim_step(x_t, x0, eps, t, t_prev, eta=1.0, noise=z), mean, rtol=0, atol=1e-10)
    one = torch.ones_like(x0)
    spread = s.ddim_step(x_t, x0, eps, t, t_prev, eta=1.0, noise=one) - mean
    torch.testing.assert_close(spread, var.sqrt().expand_as(spread), rtol=0, atol=1e-10)


def test_terminal_signal_is_gone():
    assert SCHEDULES["cosine"].abar[-1] < 1e-6
    assert SCHEDULES["linear"].abar[-1] < 1e-4  # betas scaled by 1000/T
    assert NoiseSchedule.linear(250, scale_to_T=False).abar[-1] > 0.05  # the unscaled trap
    z = SCHEDULES["cosine-ztsnr"]
    assert z.abar[-1] == 0.0
    assert z.abar[1] == pytest.approx(SCHEDULES["cosine"].abar[1], rel=1e-9)
    for s in SCHEDULES.values():
        assert s.abar[0] == 1.0 and np.all(np.diff(s.abar) < 0)


def test_timestep_spacings():
    s = SCHEDULES["cosine"]
    assert s.timesteps(None) == list(range(1000, 0, -1))
    lead = s.timesteps(10, "leading")
    assert lead[-1] == 1 and lead[0] == 901 and len(lead) == 10
    trail = s.timesteps(10, "trailing")
    assert trail[0] == 1000 and trail[-1] == 100
    lin = s.timesteps(300, "linspace")
    assert lin[0] == 1000 and lin[-1] == 1 and len(lin) == 300
    with pytest.raises(ValueError):
        s.timesteps(0)


class Oracle(DiffusionSegmenter):
    """A 'network' that knows the clean target: the sampler must then return it exactly."""

    def __init__(self, schedule, target, offset=None):
        super().__init__()
        self.schedule, self.target, self._offset = schedule, target, offset
        self.num_classes, self.in_channels, self.spatial_dims, self.tau_out = target.shape[1], 1, 2, 1.0
        self.dummy = nn.Parameter(torch.zeros(()))

    def encode(self, image):
        return {"image": image}

    def offset(self, cond):
        return self._offset

    def denoise(self, x_t, t, cond):
        x0 = self.target.expand_as(x_t)
        return Prediction(x0=x0, eps=self.schedule.eps_from_x0(x_t, x0, t))

    def loss(self, image, labels):
        raise NotImplementedError


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("method", ["ddim", "ddpm"])
def test_oracle_recovers_target_exactly_from_any_start(name, method):
    s = SCHEDULES[name]
    labels = torch.randint(0, 3, (1, 8, 8), generator=torch.Generator().manual_seed(1))
    y = embed_labels(labels, 3)
    model = Oracle(s, y)
    g = torch.Generator().manual_seed(2)
    for start in (1, 7, s.T // 2, s.T - 1):
        x = s.q_sample(y, start, torch.randn(y.shape, generator=g))
        ts = [t for t in s.timesteps(None) if t <= start][:: max(1, start // 9)]
        cfg = SamplerConfig(method=method)
        out, _ = run_chain(model, {}, x, ts, cfg, noise=lambda: torch.randn(y.shape, generator=g))
        assert torch.equal(out, y), f"start {start}"


def test_sampler_seed_chunking_progress_cancel():
    s = SCHEDULES["linear"]
    y = embed_labels(torch.zeros(1, 6, 6, dtype=torch.long), 2)

    class Noisy(Oracle):
        def denoise(self, x_t, t, cond):  # depends on x_t so that the noise matters
            x0 = torch.tanh(x_t + cond["image"].mean(dim=(1, 2, 3), keepdim=True))
            return Prediction(x0=x0, eps=self.schedule.eps_from_x0(x_t, x0, t))

    model = Noisy(s, y, offset=None)
    image = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    cfg = SamplerConfig(method="ddpm", steps=20)
    calls = []
    a = sample(model, image, 4, cfg, seed=5, progress=lambda k, n: calls.append((k, n)))
    b = sample(model, image, 4, cfg, seed=5, batch_size=3)
    c = sample(model, image, 4, cfg, seed=6)
    assert a.y0.shape == (2, 4, 2, 6, 6)
    assert torch.equal(a.y0, b.y0)  # chunking does not change any hypothesis
    assert not torch.equal(a.y0, c.y0)
    assert calls[-1] == (20, 20) and len(calls) == 20
    # hypothesis k gets the same noise for every image: equal images give equal hypotheses
    same = sample(model, image[:1].repeat(2, 1, 1, 1), 3, cfg, seed=5)
    assert torch.equal(same.y0[0], same.y0[1])
    assert not torch.equal(same.y0[0, 0], same.y0[0, 1])
    with pytest.raises(SamplingCancelled):
        sample(model, image, 4, cfg, cancel=lambda: len(calls) > 25,
               progress=lambda k, n: calls.append((k, n)))
