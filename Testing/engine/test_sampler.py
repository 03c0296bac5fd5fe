"""The sampler's efficiency switches (issue 7): device-aware default chunk, inference mode, opt-in bf16
autocast and channels-last. The fp32 default must stay reproducible bit for bit under a seed, the
hypotheses must not depend on the chunk size, and bf16 must stay close to fp32."""

from __future__ import annotations

import pytest
import torch

from DiffSegUncertaintyLib.engine.sampling import sampler
from DiffSegUncertaintyLib.engine import testing
from DiffSegUncertaintyLib.engine.sampling.diffusion import DiffusionSegmenter, NoiseSchedule, Prediction, embed_labels
from DiffSegUncertaintyLib.engine.sampling.sampler import SamplerConfig, default_batch_size, sample


def _model(method: str, seed: int = 0):
    return testing.perturbed_tiny_model(method, seed)


def _image(shape=(2, 1, 16, 16), seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


class _Elementwise(DiffusionSegmenter):
    """A 'network' of elementwise ops only: its arithmetic cannot depend on the batch size, so any
    difference between chunk sizes would come from the sampler (noise, ordering)."""

    def __init__(self):
        super().__init__()
        self.schedule = NoiseSchedule.from_config({"kind": "linear", "T": 100, "scale_to_T": True})
        self.num_classes, self.in_channels, self.spatial_dims, self.tau_out = 2, 1, 2, 1.0
        self.w = torch.nn.Parameter(torch.tensor(0.7))

    def encode(self, image):
        return {"image": image}

    def denoise(self, x_t, t, cond):
        x0 = torch.tanh(self.w * x_t + cond["image"].mean(dim=(1, 2, 3), keepdim=True))
        return Prediction(x0=x0, eps=self.schedule.eps_from_x0(x_t, x0, t))

    def loss(self, image, labels):
        raise NotImplementedError


# -- chunking ----------------------------------------------------------------------------------------

def test_default_chunk_is_device_aware(monkeypatch):
    monkeypatch.setattr(sampler, "CPU_CHUNK_VOXELS", 2 * 128 * 128)
    assert default_batch_size("cpu", (128, 128), 16) == 2
    assert default_batch_size("cpu", (64, 64), 16) == 8
    assert default_batch_size("cpu", (16, 16), 16) == 16          # never more than the items
    assert default_batch_size("cpu", (32, 128, 128), 16) == 1     # never less than 1
    assert default_batch_size("cuda", (128, 128), 16) == 16       # GPU: all at once
    # sample() uses it when batch_size is None, reports it, and counts progress over the chunks
    calls = []
    res = sample(_Elementwise(), torch.randn(1, 1, 128, 128), 6, SamplerConfig(method="ddim", steps=4),
                 progress=lambda k, n: calls.append((k, n)))
    assert res.batch_size == 2 and calls[-1] == (12, 12)
    assert sample(_Elementwise(), torch.randn(1, 1, 128, 128), 6, SamplerConfig(method="ddim", steps=4),
                  batch_size=5).batch_size == 5


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_chunk_size_does_not_change_the_noise(method):
    """Per-hypothesis generators: chunk size 1 and all-at-once give bit-identical y0 when the network's
    arithmetic does not depend on the batch size."""
    model, image = _Elementwise(), _image((2, 1, 8, 8))
    cfg = SamplerConfig(method=method, steps=20, eta=0.5)
    ref = sample(model, image, 5, cfg, seed=3, batch_size=10).y0
    for bs in (1, 2, 3, None):
        assert torch.equal(sample(model, image, 5, cfg, seed=3, batch_size=bs).y0, ref), bs
    assert not torch.equal(ref[:, 0], ref[:, 1])


def test_eta_moves_ddim_only():
    """The module's *Sampling noise* is passed for any card (docs/slicer.md): ancestral DDPM ignores it,
    DDIM does not."""
    model, image = _Elementwise(), _image((1, 1, 8, 8))
    ddpm = [sample(model, image, 2, SamplerConfig(method="ddpm", steps=6, eta=e), seed=1).y0 for e in (0.0, 1.0)]
    assert torch.equal(*ddpm)
    ddim = [sample(model, image, 2, SamplerConfig(method="ddim", steps=6, eta=e), seed=1).y0 for e in (0.0, 1.0)]
    assert not torch.equal(*ddim)


@pytest.mark.parametrize("method", ["hsrdiff", "pgrd"])
def test_chunk_size_real_networks_agree_to_rounding_and_default_is_reproducible(method):
    """Real convolutions: oneDNN chooses kernels by batch size, so chunk 1 and chunk 'all' agree to
    float rounding (measured <= 2e-6), not bit for bit; a repeated run is bit for bit."""
    model, image = _model(method), _image()
    cfg = SamplerConfig(method="ddpm", steps=8)
    whole = sample(model, image, 3, cfg, seed=5, batch_size=6)
    ones = sample(model, image, 3, cfg, seed=5, batch_size=1)
    torch.testing.assert_close(ones.y0, whole.y0, rtol=0, atol=1e-5)
    for k in whole.extras:
        torch.testing.assert_close(ones.extras[k], whole.extras[k], rtol=0, atol=1e-5)
    assert (whole.y0[:, 0] - whole.y0[:, 1]).abs().max() > 1e-2  # not vacuous: hypotheses differ
    a = sample(model, image, 3, cfg, seed=5)
    b = sample(model, image, 3, cfg, seed=5)
    assert torch.equal(a.y0, b.y0)
    assert torch.equal(sample(model, image, 3, cfg, seed=5, precision="fp32").y0, a.y0)


# -- inference mode ----------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["hsrdiff", "pgrd"])
def test_outputs_are_ordinary_tensors_and_training_works_after_sampling(method):
    model, image = _model(method), _image()
    res = sample(model, image, 2, SamplerConfig(method="ddim", steps=2), seed=0)
    assert not res.y0.is_inference()
    assert all(not v.is_inference() for v in res.extras.values())
    res.y0.add_(1.0)  # callers may modify the result in place
    # nothing cached during sampling (e.g. the schedule's coefficient tables) breaks autograd later
    model.train()
    labels = torch.randint(0, 2, (2, 16, 16), generator=torch.Generator().manual_seed(1))
    loss = model.loss(image, labels)["loss"]
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_sampling_runs_under_inference_mode():
    seen = []

    class Spy(_Elementwise):
        def denoise(self, x_t, t, cond):
            seen.append(torch.is_inference_mode_enabled())
            return super().denoise(x_t, t, cond)

    sample(Spy(), _image((1, 1, 8, 8)), 2, SamplerConfig(method="ddim", steps=3))
    assert seen == [True] * 3


# -- precision and memory format ---------------------------------------------------------------------

@pytest.mark.parametrize("method,config", [("hsrdiff", SamplerConfig(method="ddim", steps=5)),
                                           ("hsrdiff", SamplerConfig(method="ddpm", steps=10)),
                                           ("pgrd", SamplerConfig(method="ddim", steps=5))])
def test_bf16_is_close_to_fp32(method, config):
    """Measured on these models: mean |diff| ~0.005, max ~0.05, masks agree on > 99.4 % of pixels."""
    model, image = _model(method), _image()
    fp32 = sample(model, image, 3, config, seed=1)
    bf16 = sample(model, image, 3, config, seed=1, precision="bf16")
    assert bf16.y0.dtype == torch.float32
    diff = (bf16.y0 - fp32.y0).abs()
    assert diff.max() > 0                      # autocast really ran
    assert diff.mean() < 0.02 and diff.max() < 0.15
    agree = (bf16.y0.argmax(2) == fp32.y0.argmax(2)).float().mean()
    assert agree > 0.98
    for k in fp32.extras:
        torch.testing.assert_close(bf16.extras[k], fp32.extras[k], rtol=0, atol=0.02)
    # bf16 is reproducible too
    assert torch.equal(sample(model, image, 3, config, seed=1, precision="bf16").y0, bf16.y0)


@pytest.mark.parametrize("method", ["hsrdiff", "pgrd"])
def test_channels_last_matches_and_is_restored(method):
    model, image = _model(method), _image()
    cfg = SamplerConfig(method="ddim", steps=3)
    base = sample(model, image, 2, cfg, seed=2)
    cl = sample(model, image, 2, cfg, seed=2, channels_last=True)
    torch.testing.assert_close(cl.y0, base.y0, rtol=0, atol=1e-4)
    assert cl.y0.is_contiguous()
    assert all(p.is_contiguous() for p in model.parameters())  # the model is given back as it came


def test_bad_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        sample(_Elementwise(), _image((1, 1, 8, 8)), 1, SamplerConfig(steps=2), precision="fp8")


def test_oracle_labels_survive_bf16():
    """The chain's arithmetic stays float32 under bf16: an exact network still recovers the target."""
    y = embed_labels(torch.randint(0, 2, (1, 8, 8), generator=torch.Generator().manual_seed(0)), 2)

    class Oracle(_Elementwise):
        def denoise(self, x_t, t, cond):
            x0 = y.expand_as(x_t)
            return Prediction(x0=x0, eps=self.schedule.eps_from_x0(x_t, x0, t))

    out = sample(Oracle(), _image((1, 1, 8, 8)), 2, SamplerConfig(method="ddim", steps=5), precision="bf16")
    torch.testing.assert_close(out.y0[0], y.expand(2, -1, -1, -1), rtol=0, atol=1e-5)
