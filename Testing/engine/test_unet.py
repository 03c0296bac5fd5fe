"""The deterministic U-Net (PGRD's prior, the baselines' backbone): config, shapes, loss, decoder dropout."""

import json

import pytest
import torch

from DiffSegUncertaintyLib.engine import testing
from DiffSegUncertaintyLib.engine.networks.checks import InputError
from DiffSegUncertaintyLib.engine.networks.unet import UNet, from_config

TINY = dict(channels=(4, 8, 16), strides=(2, 2), num_res_units=1)


_batch = testing.random_batch


def test_config_round_trip_rebuilds_the_same_network():
    torch.manual_seed(0)
    net = UNet(2, 2, 3, dropout=0.2, **TINY)
    cfg = json.loads(json.dumps(net.config_dict()))
    again = from_config(cfg)
    assert again.config_dict() == net.config_dict()
    again.load_state_dict(net.state_dict())  # strict: same parameter names and shapes
    image, _ = _batch(cin=2)
    net.eval(), again.eval()
    assert torch.equal(net(image), again(image))


@pytest.mark.parametrize("spatial_dims, spatial", [(2, (16, 12)), (3, (8, 8, 4))])
def test_logits_and_probabilities_shapes(spatial_dims, spatial):
    net = UNet(spatial_dims, 2, 3, **TINY).eval()
    image, _ = _batch(spatial, cin=2)
    logits = net(image)
    assert logits.shape == (2, 3, *spatial)
    proba = net.predict_proba(image)
    torch.testing.assert_close(proba.sum(1), torch.ones(2, *spatial))
    torch.testing.assert_close(proba, torch.softmax(logits, 1))


def test_loss_is_finite_and_reaches_every_parameter():
    torch.manual_seed(0)
    net = UNet(2, 1, 2, **TINY)
    image, labels = _batch()
    out = net.loss(image, labels)
    assert set(out) == {"loss"} and out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in net.parameters())


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    net = UNet(2, 1, 2, **TINY)
    image, _ = _batch()
    labels = (image[:, 0] > 0.3).long()  # learnable from the image
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = net.loss(image, labels)["loss"].item()
    for _ in range(25):
        opt.zero_grad()
        net.loss(image, labels)["loss"].backward()
        opt.step()
    assert net.loss(image, labels)["loss"].item() < 0.7 * first


def test_dropout_is_on_the_decoder_only():
    """Train-mode dropout changes the output but never the encoder's features (MC Dropout contract)."""
    torch.manual_seed(0)
    net = UNet(2, 1, 2, dropout=0.5, **TINY).train()
    encoder_out = []
    first_down = net.net.model[0]
    first_down.register_forward_hook(lambda _m, _i, out: encoder_out.append(out))
    image, _ = _batch()
    a, b = net(image), net(image)
    assert not torch.equal(a, b)
    assert torch.equal(encoder_out[0], encoder_out[1])
    assert all(m.p == 0 for name, m in net.named_modules()
               if isinstance(m, torch.nn.Dropout) and name.startswith("net.model.0."))
    net.eval()
    assert torch.equal(net(image), net(image))
    net.enable_mc_dropout()
    assert not net.training
    assert not torch.equal(net(image), net(image))


def test_bad_input_raises_input_error():
    net = UNet(2, 1, 2, **TINY)
    image, labels = _batch()
    with pytest.raises(InputError, match="channel"):
        net.loss(torch.randn(2, 2, 16, 16), labels)
    nan = image.clone()
    nan[0, 0, 3, 3] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        net.loss(nan, labels)
    with pytest.raises(InputError, match="multiple of 4"):
        net.loss(torch.randn(2, 1, 18, 16), torch.zeros(2, 18, 16, dtype=torch.long))
    with pytest.raises(InputError, match="classes"):
        net.loss(image, labels + 2)
    with pytest.raises(InputError, match="shape"):
        net.loss(image, labels[:, :8])
