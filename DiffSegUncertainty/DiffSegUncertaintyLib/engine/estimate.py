"""How much work a run is, and how long it will take on this device, before and while it runs.

Why: sampling 11 CT slices with 16 hypotheses took 17 minutes on a loaded 2-core CPU with no word
beforehand (issue 14). The work is known before the first step: every (slice or patch, hypothesis)
pair goes through the network once per sampler step. The time per step is not (device, load, batch
size), so it is timed on the first progress tick and the remainder extrapolated, updated as ticks come.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence


def network_evaluations(units: int, num_samples: int, steps: int) -> int:
    """Denoiser evaluations of a run: ``units`` slices (2D model) or patches (3D), each with
    ``num_samples`` hypotheses, each through ``steps`` sampler steps."""
    return int(units) * int(num_samples) * int(steps)


def work_units(card: dict, roi_size_canonical: Sequence[int], overlap: float = 0.25) -> int:
    """Slices (2D model) or sliding-window patches (3D model, ``inference.count_windows``) of a ROI
    of canonical size (slices, rows, cols)."""
    if int(card["architecture"]["spatial_dims"]) == 2:
        return int(roi_size_canonical[0])
    from .sampling.inference import count_windows
    return count_windows(list(roi_size_canonical), [int(s) for s in card["input"]["size"]], overlap)


def duration(seconds: float) -> str:
    """'42 s', '3.5 min', '1.2 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class Eta:
    """Time left from progress ticks (done, total): the first tick times the first step (model warm-up
    included, so the first estimate errs long), later ones the mean rate so far. ``update`` returns a
    line to print on the first tick and then every ``every`` of the run, else None."""

    every: float = 0.1
    clock: Callable[[], float] = time.perf_counter
    t0: float = field(default=0.0, init=False)
    shown: int = field(default=-1, init=False)

    def start(self) -> None:
        self.t0, self.shown = self.clock(), -1

    def left(self, done: int, total: int) -> float:
        """Seconds left at ``done`` of ``total`` ticks, from the rate so far."""
        elapsed = self.clock() - self.t0
        return elapsed / max(done, 1) * max(total - done, 0)

    def update(self, done: int, total: int) -> str | None:
        if done <= 0 or total <= 0:
            return None
        bucket = int(done / total / self.every)
        if self.shown >= 0 and bucket <= self.shown:
            return None
        first = self.shown < 0
        self.shown = bucket
        elapsed = self.clock() - self.t0
        left = self.left(done, total)
        if first:
            return (f"first step took {duration(elapsed)}: about {duration(elapsed + left)} in all "
                    f"({total} steps)")
        return f"{100 * done // total}% done in {duration(elapsed)}, about {duration(left)} left"
