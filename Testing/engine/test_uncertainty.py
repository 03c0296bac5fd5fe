"""Uncertainty maps: hand-computed cases, entropy identities, chunking, volumes, bad input."""

import math

import pytest
import torch

from DiffSegUncertaintyLib.engine.networks.checks import InputError
from DiffSegUncertaintyLib.engine.sampling.diffusion import embed_labels
from DiffSegUncertaintyLib.engine.analysis.uncertainty import hypothesis_labels, summarize


def _onehot_y0(labels: torch.Tensor, num_classes: int, scale: float = 1.0) -> torch.Tensor:
    """(M, *S) labels -> (M, C, *S) label embeddings 2*onehot - 1, times ``scale``."""
    return scale * embed_labels(labels, num_classes)


def _random_y0(m=5, c=3, shape=(6, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.randn((m, c, *shape), generator=g)


def test_hypothesis_labels_is_argmax():
    y0 = _random_y0()
    lab = hypothesis_labels(y0)
    assert lab.shape == (5, 6, 7) and not torch.is_floating_point(lab)
    assert torch.equal(lab.long(), y0.argmax(1))


def test_two_disagreeing_hypotheses_by_hand():
    # voxel 0: both background; voxel 1: one foreground, one background; voxel 2: both foreground
    labels = torch.tensor([[0, 1, 1], [0, 0, 1]])
    y0 = _onehot_y0(labels, 2, scale=50.0)  # tau 1: p is one-hot up to e^-100
    u = summarize(y0, 1.0, spacing=(2.0,))  # 1D grid: one spacing value, 2 mm^3 per voxel
    # mean probability of foreground: 0, 1/2, 1; variance f(1-f): 0, 1/4, 0
    torch.testing.assert_close(u.mean_probability[1], torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(u.foreground_variance, torch.tensor([0.0, 0.25, 0.0]))
    # H(p_bar) = ln 2 at the split voxel; each hypothesis is certain, so E H = 0 and MI = ln 2
    torch.testing.assert_close(u.predictive_entropy, torch.tensor([0.0, math.log(2), 0.0]))
    torch.testing.assert_close(u.expected_entropy, torch.zeros(3))
    torch.testing.assert_close(u.mutual_information, torch.tensor([0.0, math.log(2), 0.0]))
    assert u.consensus.tolist() == [0, 0, 1]  # a tie goes to the lower class index
    assert u.volumes_voxels == [2, 1] and u.volumes_mm3 == pytest.approx([4.0, 2.0])


def test_spacing_must_match_grid():
    with pytest.raises(InputError):
        summarize(torch.zeros(2, 2, 3), 1.0, spacing=(1.0, 1.0))


def test_volumes_and_spread_by_hand():
    labels = torch.zeros(3, 4, 5, dtype=torch.long)
    labels[0, :2, :2] = 1          # 4 voxels
    labels[1, :, :] = 2            # 20 voxels (class 2 is foreground too)
    # hypothesis 2 empty: 0 voxels
    u = summarize(_onehot_y0(labels, 3), 0.5, spacing=(0.5, 2.0))  # 0.5 * 2 = 1 mm^3 per voxel
    assert u.volumes_voxels == [4, 20, 0]
    assert u.volumes_mm3 == pytest.approx([4.0, 20.0, 0.0])
    # mean 8, population std sqrt(((4-8)^2 + 12^2 + 8^2)/3) = sqrt(224/3), min 0, max 20
    assert u.spread_voxels == pytest.approx({"mean": 8.0, "std": math.sqrt(224 / 3), "min": 0.0, "max": 20.0})
    u3 = summarize(_onehot_y0(labels, 3), 0.5, spacing=(1.5, 2.0))  # 3 mm^3 per voxel
    assert u3.volumes_mm3 == pytest.approx([12.0, 60.0, 0.0])
    assert u3.spread_mm3["max"] == pytest.approx(60.0)
    assert summarize(_onehot_y0(labels, 3), 0.5).volumes_mm3 is None
    rows = u3.summary()["hypotheses"]
    assert [r["foreground_voxels"] for r in rows] == [4, 20, 0] and rows[1]["foreground_mm3"] == 60.0


def test_uniform_hypotheses():
    # y0 = 0 everywhere: every hypothesis is uniform, so both entropies are ln C and MI = 0
    u = summarize(torch.zeros(4, 4, 3, 3), 1.0)
    torch.testing.assert_close(u.predictive_entropy, torch.full((3, 3), math.log(4)))
    torch.testing.assert_close(u.expected_entropy, torch.full((3, 3), math.log(4)))
    torch.testing.assert_close(u.mutual_information, torch.zeros(3, 3))


@pytest.mark.parametrize("tau", [0.3, 1.0, 3.0])
def test_entropy_identity_and_bounds(tau):
    y0 = _random_y0(m=6, c=4, shape=(5, 4, 3), seed=1)
    u = summarize(y0, tau, keep_probabilities=True)
    p = torch.softmax(y0.double() / tau, dim=1)
    torch.testing.assert_close(u.probabilities.double(), p, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(u.mean_probability.double(), p.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(u.mean_probability.sum(0), torch.ones(5, 4, 3))
    assert torch.equal(u.consensus.long(), u.mean_probability.argmax(0))
    # predictive = expected + MI (the clamp never bites on this input), MI >= 0, entropies in [0, ln C]
    torch.testing.assert_close(u.predictive_entropy, u.expected_entropy + u.mutual_information)
    assert (u.mutual_information >= 0).all()
    for h in (u.predictive_entropy, u.expected_entropy):
        assert (h >= 0).all() and (h <= math.log(4) + 1e-6).all()
    # independent float64 evaluation of the entropies
    ent = lambda q, d: -(q * q.log()).sum(d)  # noqa: E731
    torch.testing.assert_close(u.expected_entropy.double(), ent(p, 1).mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(u.predictive_entropy.double(), ent(p.mean(0), 0), rtol=1e-5, atol=1e-5)


def test_identical_hypotheses_have_no_epistemic_uncertainty():
    one = _random_y0(m=1, c=3, seed=2)
    u = summarize(one.repeat(7, 1, 1, 1), 1.0)
    torch.testing.assert_close(u.mutual_information, torch.zeros(6, 7), atol=2e-6, rtol=0)
    assert (u.foreground_variance == 0).all()
    assert len(set(u.volumes_voxels)) == 1 and u.spread_voxels["std"] == 0.0


def test_chunking_does_not_change_results():
    y0 = _random_y0(m=7, c=3, shape=(9, 8), seed=3)
    whole, pieces = summarize(y0, 0.7, chunk=7), summarize(y0, 0.7, chunk=2)
    for name in ("mean_probability", "predictive_entropy", "expected_entropy", "mutual_information",
                 "foreground_variance"):
        torch.testing.assert_close(getattr(whole, name), getattr(pieces, name))
    assert torch.equal(whole.labels, pieces.labels) and whole.volumes_voxels == pieces.volumes_voxels
    assert whole.labels.dtype == torch.uint8 and whole.mean_probability.dtype == torch.float32


def test_float64_input_is_processed_in_float32():
    y0 = _random_y0(seed=4).double()
    u = summarize(y0, 1.0)
    assert u.mean_probability.dtype == torch.float32 and u.predictive_entropy.dtype == torch.float32


def test_labels_from_embedding_round_trip():
    labels = torch.tensor([[[0, 1], [2, 1]], [[2, 2], [0, 0]]])  # (M=2, 2, 2)
    y0 = embed_labels(labels, 3)
    assert torch.equal(hypothesis_labels(y0).long(), labels)


@pytest.mark.parametrize("call", [
    lambda: summarize(torch.zeros(0, 2, 4, 4), 1.0),           # no hypotheses
    lambda: summarize(torch.zeros(2, 1, 4), 1.0),              # one class
    lambda: summarize(torch.zeros(2, 2, 4, 4), 0.0),           # tau must be > 0
    lambda: summarize(torch.zeros(2, 2, 4, 4), 1.0, spacing=(1.0,)),
    lambda: summarize(torch.zeros(2, 2, 4, 4), 1.0, spacing=(1.0, -1.0)),
    lambda: summarize(torch.zeros(2, 2, 4, 4), 1.0, chunk=0),
    lambda: hypothesis_labels(torch.zeros(4, 4)),
])
def test_bad_input_raises(call):
    with pytest.raises(InputError):
        call()
