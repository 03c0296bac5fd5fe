"""Metrics against hand-computed small arrays, the oracle anchors, invariances and bad input."""

import itertools
import math

import numpy as np
import pytest

from DiffSegUncertaintyLib.engine.analysis import metrics as M
from DiffSegUncertaintyLib.engine.networks.checks import InputError

# 1-D "images" of 4 voxels, binary (C = 2)
A = np.array([1, 1, 0, 0])
B = np.array([0, 1, 1, 0])  # A & B = 1 voxel, A | B = 3: IoU 1/3, d 2/3, Dice 2*1/(2+2) = 1/2
E = np.zeros(4, dtype=int)  # empty


def _rand_masks(rng, n, shape=(8, 8), p=0.4, classes=2):
    return rng.choice(classes, size=(n, *shape), p=[1 - p] + [p / (classes - 1)] * (classes - 1))


# -- single pairs and empty conventions --------------------------------------------------------------

def test_iou_dice_by_hand():
    assert M.iou(A, B) == pytest.approx(1 / 3)
    assert M.distance(A, B) == pytest.approx(2 / 3)
    assert M.dice(A, B) == pytest.approx(0.5)
    assert M.iou(A, A) == 1.0
    assert M.iou(A, E) == 0.0 and M.dice(E, A) == 0.0  # one empty, one not: 0 under every convention
    assert M.iou(A, E, empty="nan") == 0.0 and M.iou(A, E, empty="zero") == 0.0


@pytest.mark.parametrize("empty, iou_ee", [("one", 1.0), ("zero", 0.0), ("nan", math.nan)])
def test_both_empty_conventions(empty, iou_ee):
    for f in (M.iou, M.dice):
        got = f(E, E, empty=empty)
        assert (math.isnan(got) and math.isnan(iou_ee)) or got == iou_ee
    got = M.distance(E, E, empty=empty)
    assert (math.isnan(got) and math.isnan(iou_ee)) or got == 1 - iou_ee


def test_multiclass_mean_over_foreground_classes():
    a = np.array([1, 1, 2, 0])
    b = np.array([1, 2, 2, 2])
    # class 1: I=1, U=2 -> 1/2; class 2: I=1, U=3 -> 1/3; mean 5/12 (background ignored)
    assert M.iou(a, b, num_classes=3) == pytest.approx(5 / 12)
    # class 2 absent from both: "one" counts it as 1, "nan" drops it, "zero" as 0
    c, d = np.array([1, 1, 0, 0]), np.array([0, 1, 0, 0])  # class 1: IoU 1/2
    assert M.iou(c, d, num_classes=3, empty="one") == pytest.approx((0.5 + 1) / 2)
    assert M.iou(c, d, num_classes=3, empty="nan") == pytest.approx(0.5)
    assert M.iou(c, d, num_classes=3, empty="zero") == pytest.approx(0.25)


def test_pairwise_matches_single_pairs():
    rng = np.random.default_rng(1)
    s, y = _rand_masks(rng, 5, classes=3), _rand_masks(rng, 3, classes=3)
    s[0] = 0
    y[1] = 0
    for empty in M.EMPTY_CONVENTIONS:
        mat = M.pairwise_iou(s, y, 3, empty)
        ref = np.array([[M.iou(a, b, 3, empty) for b in y] for a in s])
        np.testing.assert_allclose(mat, ref, equal_nan=True)


# -- GED / diversity --------------------------------------------------------------------------------

@pytest.mark.parametrize("empty, expected", [("one", 1 / 2), ("zero", 1 / 4), ("nan", 1 / 3)])
def test_ged_by_hand(empty, expected):
    # samples {A, B}, annotations {A, E}; d(A,A)=0, d(A,B)=2/3, d(A,E)=d(B,E)=1, d(E,E)=0 / 1 / excluded
    # cross: (0 + 1 + 2/3 + 1)/4 = 2/3; samples: (0 + 2/3 + 2/3 + 0)/4 = 1/3
    # annotations: one (0+1+1+0)/4 = 1/2; zero (0+1+1+1)/4 = 3/4; nan (0+1+1)/3 = 2/3
    # GED: one 4/3-1/3-1/2 = 1/2; zero 4/3-1/3-3/4 = 1/4; nan 4/3-1/3-2/3 = 1/3
    assert M.ged(np.stack([A, B]), np.stack([A, E]), empty=empty) == pytest.approx(expected)


def test_ged_all_empty():
    s, y = np.stack([E, E]), np.stack([E])
    assert M.ged(s, y, empty="one") == 0.0
    assert math.isnan(M.ged(s, y, empty="nan"))
    assert M.ged(s, y, empty="zero") == 0.0  # 2*1 - 1 - 1


def test_ged_oracle_exact_and_drawn():
    rng = np.random.default_rng(2)
    y = _rand_masks(rng, 4)
    y[3] = 0  # an empty reading, as in LIDC
    # samples = every annotation equally often: GED is exactly 0
    assert M.ged(np.tile(y, (3, 1, 1)), y) == pytest.approx(0.0, abs=1e-12)
    # samples drawn from the annotations: GED -> 0 as S grows
    few = [M.ged(y[rng.integers(0, 4, 3)], y) for _ in range(20)]
    many = M.ged(y[rng.integers(0, 4, 2000)], y)
    assert abs(many) < 0.01 < np.mean(np.abs(few))


@pytest.mark.parametrize("empty", M.EMPTY_CONVENTIONS)
def test_diversity_of_a_single_annotation_sampler(empty):
    y = np.stack([A, B, E])
    assert M.diversity(np.stack([y[1]] * 6), empty=empty) == 0.0
    # always returning the empty annotation: d(E,E) = 0 / excluded / 1
    d = M.diversity(np.stack([E] * 6), empty=empty)
    assert {"one": d == 0.0, "nan": math.isnan(d), "zero": d == 1.0}[empty]


def test_diversity_by_hand():
    # {A, B, B}: d(A,B) = 2/3 on 4 of the 9 ordered pairs -> 8/27
    assert M.diversity(np.stack([A, B, B])) == pytest.approx(8 / 27)


# -- HM-IoU ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("empty, expected", [("one", 5 / 6), ("zero", 1 / 2), ("nan", 3 / 4)])
def test_hm_iou_by_hand_with_lcm(empty, expected):
    # S = {A, A, E}, annotations {A, E}: lcm 6 -> samples 4xA + 2xE, annotations 3xA + 3xE.
    # best matching: 3 A-A (IoU 1), 1 A-E (0), 2 E-E (1 / 0 / excluded)
    # one: 5/6; zero: 3/6; nan: (3 + 0)/4
    assert M.hm_iou(np.stack([A, A, E]), np.stack([A, E]), empty=empty) == pytest.approx(expected)


def test_hm_iou_matches_brute_force_and_is_permutation_invariant():
    rng = np.random.default_rng(3)
    for _ in range(5):
        s, y = _rand_masks(rng, 2), _rand_masks(rng, 3)  # lcm 6 -> 720 permutations
        iou = M.pairwise_iou(s, y)
        best = max(np.mean([iou[i % 2, j % 3] for i, j in enumerate(perm)])
                   for perm in itertools.permutations(range(6)))
        assert M.hm_iou(s, y) == pytest.approx(best)
    s, y = _rand_masks(rng, 4), _rand_masks(rng, 4)
    ref = M.hm_iou(s, y)
    assert M.hm_iou(s[rng.permutation(4)], y) == pytest.approx(ref)
    assert M.hm_iou(s, y[rng.permutation(4)]) == pytest.approx(ref)


def test_hm_iou_oracle():
    rng = np.random.default_rng(4)
    y = _rand_masks(rng, 4)
    assert M.hm_iou(np.tile(y, (2, 1, 1)), y) == pytest.approx(1.0)
    drawn = M.hm_iou(y[rng.integers(0, 4, 400)], y)
    few = M.hm_iou(y[rng.integers(0, 4, 3)], y)
    assert drawn > 0.9 and drawn > few


# -- MDM ---------------------------------------------------------------------------------------------

def test_mdm_by_hand():
    # samples {A, B}, annotations {A, E}: best Dice for A is 1, for E is 0 -> 1/2
    assert M.mdm(np.stack([A, B]), np.stack([A, E])) == pytest.approx(0.5)
    # samples {B, E}: for A max(1/2, 0) = 1/2; for E max(0, Dice(E,E)) = 1 / 0 / 0 (E-E skipped)
    s, y = np.stack([B, E]), np.stack([A, E])
    assert M.mdm(s, y, empty="one") == pytest.approx(0.75)
    assert M.mdm(s, y, empty="zero") == pytest.approx(0.25)
    assert M.mdm(s, y, empty="nan") == pytest.approx(0.25)
    assert math.isnan(M.mdm(np.stack([E]), np.stack([E]), empty="nan"))


# -- calibration -------------------------------------------------------------------------------------

P4 = np.array([[0.9, 0.9, 0.31, 0.35],
               [0.1, 0.1, 0.69, 0.65]])  # (C=2, 4 voxels)
L4 = np.array([0, 1, 1, 0])


def test_nll_by_hand_and_clip():
    # -(ln .9 + ln .1 + ln .69 + ln .35)/4
    expected = -(math.log(0.9) + math.log(0.1) + math.log(0.69) + math.log(0.35)) / 4
    assert M.nll(P4, L4) == pytest.approx(expected)
    # p = 0 on the true class is clipped to 1e-8
    assert M.nll(np.array([[1.0], [0.0]]), np.array([1])) == pytest.approx(-math.log(1e-8))
    # soft label q = (.5, .5) at one voxel: -(.5 ln .9 + .5 ln .1)
    q = np.array([[0.5], [0.5]])
    assert M.nll(np.array([[0.9], [0.1]]), q) == pytest.approx(-(0.5 * math.log(0.9) + 0.5 * math.log(0.1)))


def test_ece_by_hand():
    # confidences .9 (right), .9 (wrong), .69 (right), .65 (wrong); 15 bins of width 1/15:
    # .9 -> bin (13/15, 14/15], .69 -> (10/15, 11/15], .65 -> (9/15, 10/15]
    # 2/4*|.5-.9| + 1/4*|1-.69| + 1/4*|0-.65| = .2 + .0775 + .1625 = .44
    assert M.ece(P4, L4) == pytest.approx(0.44)
    # 10 bins would merge .69 and .65: .2 + 2/4*|.5-.67| = .285
    assert M.ece(P4, L4, n_bins=10) == pytest.approx(0.285)
    # without background: voxel 0 (predicted 0, label 0) dropped -> (.9 + .31 + .65)/3 = .62
    assert M.ece(P4, L4, include_background=False) == pytest.approx(0.62)
    # soft reference: accuracy is q[prediction]; q = (.5,.5) at conf .9 -> |.5 - .9| = .4
    assert M.ece(np.array([[0.9], [0.1]]), np.array([[0.5], [0.5]])) == pytest.approx(0.4)
    assert math.isnan(M.ece(np.array([[0.9], [0.1]]), np.array([0]), include_background=False))


def test_miou_fused_by_hand():
    p = np.stack([1 - A * 0.8, A * 0.8])  # argmax = A
    # non-empty annotations A (IoU 1) and B (1/3); E is skipped -> 2/3
    assert M.miou_fused(p, np.stack([A, E, B])) == pytest.approx(2 / 3)
    assert math.isnan(M.miou_fused(p, np.stack([E, E])))


def test_confusion_matrix_miou():
    # pred [0,1,1,2] vs ref [0,1,2,2]: class 0 1/1, class 1 1/2, class 2 1/2 -> all 2/3, fg 1/2
    cm = M.ConfusionMatrix(3, ignore_index=255)
    cm.update(np.array([0, 1]), np.array([0, 1]))
    cm.update(np.array([1, 2, 0]), np.array([2, 2, 255]))  # the ignored voxel changes nothing
    np.testing.assert_allclose(cm.iou(), [1, 0.5, 0.5])
    assert cm.miou() == pytest.approx(2 / 3)
    assert cm.miou(include_background=False) == pytest.approx(0.5)
    cm4 = M.ConfusionMatrix(4)
    cm4.update(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]))
    assert math.isnan(cm4.iou()[3]) and cm4.miou() == pytest.approx(2 / 3)  # absent class skipped


# -- one image, the reference switch, aggregation ----------------------------------------------------

def test_score_image_reference_switch():
    y = np.stack([A, E])
    p = np.array([[0.1, 0.4, 0.8, 0.9], [0.9, 0.6, 0.2, 0.1]])  # argmax = A
    s = np.stack([A, B])
    each, maj, soft = (M.score_image(s, y, p, reference=r) for r in M.REFERENCES)
    # each: Dice(A,A)=1, Dice(A,E)=0 -> 1/2
    # majority: 1 of 2 readers is a tie -> background -> reference E -> 0
    # soft: q = (.5,.5,0,0): 2*(.5+.5)/(2+1) = 2/3
    assert each["dice"] == pytest.approx(0.5)
    assert maj["dice"] == pytest.approx(0.0)
    assert soft["dice"] == pytest.approx(2 / 3)
    # cross-entropy is linear in the label: the average over annotations equals the soft-label NLL
    assert each["nll"] == pytest.approx(soft["nll"])
    assert maj["nll"] == pytest.approx(M.nll(p, E))
    # sample-set metrics do not depend on the reference switch
    for k in ("ged", "diversity", "hm_iou", "mdm", "miou"):
        assert each[k] == maj[k] == soft[k]
    assert each["ged"] == pytest.approx(M.ged(s, y))
    assert set(each) == {"ged", "diversity", "hm_iou", "mdm", "dice", "nll", "ece", "miou"}


def test_score_image_probability_forms():
    rng = np.random.default_rng(5)
    s, y = _rand_masks(rng, 4), _rand_masks(rng, 2)
    per_sample = rng.dirichlet([1, 1], size=(4, 8, 8)).transpose(0, 3, 1, 2)  # (S, C, 8, 8)
    a = M.score_image(s, y, per_sample)
    b = M.score_image(s, y, per_sample.mean(0))
    assert a == pytest.approx(b)
    freq = M.score_image(s, y, None)  # mean one-hot of the samples
    assert freq["nll"] == pytest.approx(M.score_image(s, y, np.stack([1 - s.mean(0), s.mean(0)]))["nll"])


def test_aggregate_nan_aware():
    out = M.aggregate([{"ged": 1.0, "mdm": math.nan}, {"ged": 3.0, "mdm": 0.5},
                       {"ged": 2.0, "mdm": 0.7}])
    assert out["ged"] == pytest.approx((2.0, math.sqrt(2 / 3)))  # population std of 1, 2, 3
    assert out["mdm"] == pytest.approx((0.6, 0.1))
    m, sd = M.aggregate([{"x": math.nan}])["x"]
    assert math.isnan(m) and math.isnan(sd)


# -- bad input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda: M.ged(np.zeros((2, 4), int), np.zeros((2, 5), int)),       # grids differ
    lambda: M.ged(np.zeros((0, 4), int), np.zeros((2, 4), int)),       # no samples
    lambda: M.hm_iou(np.full((2, 4), 2), np.zeros((2, 4), int)),       # label 2 with C = 2
    lambda: M.mdm(np.full((2, 4), -1), np.zeros((2, 4), int)),         # negative label
    lambda: M.diversity(np.full((2, 4), 0.5)),                         # not integer
    lambda: M.ged(np.zeros((2, 4), int), np.zeros((2, 4), int), empty="skip"),
    lambda: M.score_image(np.zeros((2, 4), int), np.zeros((1, 4), int), reference="union"),
    lambda: M.nll(np.full((2, 4), 0.5), np.zeros(5, int)),             # reference grid differs
    lambda: M.ece(np.full((2, 4), 0.5), np.full((2, 4), 0.7)),         # soft label not summing to 1
    lambda: M.iou(A, B, num_classes=1),
])
def test_bad_input_raises(call):
    with pytest.raises(InputError):
        call()
