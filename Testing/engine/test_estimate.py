"""The work and time estimate (engine/estimate.py): counts by hand, and the time left from a fake clock."""

from __future__ import annotations

from DiffSegUncertaintyLib.engine.estimate import Eta, duration, network_evaluations, work_units
from DiffSegUncertaintyLib.engine.sampling.inference import count_windows


def test_network_evaluations_and_units():
    assert network_evaluations(11, 16, 25) == 4400              # the CT run: 11 slices
    card2d = {"architecture": {"spatial_dims": 2}, "input": {"size": [64, 64]}}
    assert work_units(card2d, [11, 64, 64]) == 11
    card3d = {"architecture": {"spatial_dims": 3}, "input": {"size": [8, 64, 64]}}
    assert work_units(card3d, [11, 64, 64], 0.25) == count_windows([11, 64, 64], [8, 64, 64], 0.25) == 2
    assert work_units(card3d, [8, 100, 64], 0.5) == count_windows([8, 100, 64], [8, 64, 64], 0.5) == 3  # rows 0, 32, 36


def test_eta_times_the_first_step_then_every_tenth():
    now = [100.0]
    eta = Eta(clock=lambda: now[0])
    eta.start()
    assert eta.update(0, 50) is None
    now[0] += 4.0                                                # the first step: 4 s
    assert eta.update(1, 50) == "first step took 4 s: about 3.3 min in all (50 steps)"
    now[0] += 4.0
    assert eta.update(2, 50) is None                             # still within the first tenth
    now[0] += 3 * 2.0                                            # faster now: 14 s for 5 steps
    line = eta.update(5, 50)
    assert line == "10% done in 14 s, about 2.1 min left"        # 14 / 5 * 45 = 126 s
    assert eta.left(5, 50) == 14 / 5 * 45
    now[0] += 200
    assert eta.update(50, 50) == "100% done in 3.6 min, about 0 s left"
    assert duration(30) == "30 s" and duration(600) == "10.0 min" and duration(7200) == "2.0 h"
