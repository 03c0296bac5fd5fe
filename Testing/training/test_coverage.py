"""``python -m training.coverage``: hypothesis area against the readers' by reader agreement (issue 14),
checked on hand-computed masks, and end to end on real val slices with the shipped model, where its
eta-0 row must score what ``diffseg evaluate`` scores on the same slices and seed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from DiffSegUncertaintyLib.engine import cli
from training import coverage


def test_groups_and_area_ratios_by_hand():
    """Slice 0: both readers mark 4 pixels, the hypotheses 2 and 0 -> area ratio 1/4, half empty.
    Slice 1: one reader marks 2 pixels, the other nothing; the hypotheses mark 2 and 2 -> ratio 2/1."""
    masks = np.zeros((2, 2, 4, 4), np.uint8)
    masks[0, :, :2, :2] = 1
    masks[1, 0, 0, :2] = 1
    hyps = np.zeros((2, 2, 4, 4), np.uint8)
    hyps[0, 0, 0, :2] = 1
    hyps[1, :, 3, :2] = 1
    g = coverage.groups(masks, large=4)
    assert g["all readers"].tolist() == [True, False] and g["some readers"].tolist() == [False, True]
    assert g["all readers, large"].tolist() == [True, False]
    assert not coverage.groups(masks, large=5)["all readers, large"].any()
    res = coverage.coverage(hyps, masks, large=4)
    every, some = res["groups"]["all readers"], res["groups"]["some readers"]
    assert every["area_ratio"] == pytest.approx(0.25) and every["empty_hypotheses"] == 0.5
    assert some["area_ratio"] == pytest.approx(2.0) and some["empty_readings"] == 0.5
    assert res["groups"]["any reader"]["area_ratio"] == pytest.approx((1 + 2) / (4 + 1))
    # slice 0: GED by hand. d(h0, r) = 1 - 2/4 = 0.5, d(h1, r) = 1; d(h0, h1) = 1; d(r, r) = 0
    # GED = 2 * mean(d_hr) - mean(d_hh) - mean(d_rr) = 2 * 0.75 - 0.5 - 0 = 1.0
    assert res["ged"][0] == pytest.approx(1.0)
    # its parts: hypothesis diversity mean d(h, h') = 0.5, readers' 0, hypothesis-reading distance 0.75
    assert res["diversity"][0] == pytest.approx(0.5) and res["readers_diversity"][0] == 0.0
    assert res["cross"][0] == pytest.approx(0.75)
    assert every["ged"] == pytest.approx(1.0)  # the group's mean over its one slice


def test_cli_matches_diffseg_evaluate_and_refuses_bad_eta(lidc_root, tmp_path, capsys):
    with np.load(lidc_root / "val.npz") as z:
        keep = np.flatnonzero((z["masks"] > 0).any((1, 2, 3)))[:3]  # three slices with a lesion
        np.savez(tmp_path / "few.npz", images=z["images"][keep], masks=z["masks"][keep])
    few = str(tmp_path / "few.npz")
    out = tmp_path / "coverage.json"
    assert coverage.main(["--model", "lidc-hsrdiff-small-cpu", "--data", few, "--images", "0", "--samples", "3",
                          "--steps", "2", "--eta", "0,1", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [r["eta"] for r in doc["rows"]] == [0.0, 1.0] and doc["images"] == 3
    assert doc["rows"][0]["paired_vs_first"]["ged"][0] == 0.0
    # the same settings run apart pair as in one run: row 1 against a separate run of row 0's setting
    ref = tmp_path / "ref.json"
    assert coverage.main(["--model", "lidc-hsrdiff-small-cpu", "--data", few, "--images", "0", "--samples", "3",
                          "--steps", "2", "--eta", "0", "--json", str(ref)]) == 0
    apart = coverage.compare(json.loads(ref.read_text()), doc)
    assert apart[1]["ged"] == pytest.approx(doc["rows"][1]["paired_vs_first"]["ged"])
    assert apart[0]["hm_iou"][0] == 0.0  # bit-for-bit: the same seed draws the same hypotheses
    capsys.readouterr()
    assert coverage.main(["--compare", str(ref), str(out)]) == 0
    assert "eta 1 vs 2 steps eta 0" in capsys.readouterr().out
    other = json.loads(ref.read_text()) | {"seed": 1}
    (tmp_path / "seed1.json").write_text(json.dumps(other))
    assert coverage.main(["--compare", str(ref), str(tmp_path / "seed1.json")]) == 2
    assert "seed" in capsys.readouterr().err
    assert cli.main(["evaluate", "--model", "lidc-hsrdiff-small-cpu", "--data", few, "--samples", "3",
                     "--steps", "2", "--eta", "0", "--device", "cpu", "--output", str(tmp_path / "eval"),
                     "--quiet"]) == 0
    ev = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert doc["rows"][0]["ged"] == pytest.approx(ev["summary"]["ged"]["mean"], abs=1e-9)
    assert doc["rows"][0]["hm_iou"] == pytest.approx(ev["summary"]["hm_iou"]["mean"], abs=1e-9)
    capsys.readouterr()
    assert coverage.main(["--model", "lidc-hsrdiff-small-cpu", "--data", few, "--eta", "0,2"]) == 2
    assert "eta" in capsys.readouterr().err
