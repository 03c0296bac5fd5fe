"""Turns the command's ``progress k/N`` lines into step, pass and time left.

The sampler reports one line per denoising step over all passes (a pass = one chunk of hypotheses, or
one slice/window of a volume, run through every step). With the step count known, k/N tells which step
of which pass is running; time left is extrapolated from the steps since the first progress line, so the
model-loading time before it does not distort the estimate.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable

PROGRESS_RE = re.compile(r"^\s*progress\s+(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    step: int            # step within the current pass, 1..steps
    steps: int
    pass_index: int      # 1..passes
    passes: int
    seconds_left: float | None

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    def text(self) -> str:
        left = "" if self.seconds_left is None else f", about {format_seconds(self.seconds_left)} left"
        where = f"step {self.step}/{self.steps}"
        if self.passes > 1:
            where += f" of pass {self.pass_index}/{self.passes}"
        return f"Sampling: {where} ({100 * self.fraction:.0f}%{left})"


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressTracker:
    """Feed it stdout lines; it returns a Progress for each progress line and None for others."""

    def __init__(self, steps: int | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.steps = steps
        self.clock = clock
        self._first: tuple[int, float] | None = None

    def feed(self, line: str) -> Progress | None:
        match = PROGRESS_RE.match(line)
        if not match:
            return None
        done, total = int(match.group(1)), int(match.group(2))
        now = self.clock()
        if self._first is None:
            self._first = (done, now)
        first_done, first_time = self._first
        seconds_left = None
        if done > first_done:
            seconds_left = (now - first_time) / (done - first_done) * (total - done)
        steps = self.steps if self.steps and total % self.steps == 0 else total
        passes = max(1, total // steps) if steps else 1
        index = max(done - 1, 0)
        return Progress(done=done, total=total, step=index % steps + 1 if steps else done, steps=steps,
                        pass_index=min(index // steps + 1, passes) if steps else 1, passes=passes,
                        seconds_left=seconds_left)
