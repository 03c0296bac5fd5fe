"""The background runner (whole process tree killed on cancel, output streamed, log kept) and the
progress parser, with small plain-Python child processes (no torch: fast)."""

from __future__ import annotations

import os
import sys
import time

import pytest

from DiffSegUncertaintyLib.scene.progress import ProgressTracker, format_seconds
from DiffSegUncertaintyLib.scene.runner import ProcessRunner, group_alive
from DiffSegUncertaintyLib.scene.signal import Signal

# a parent that starts a grandchild, reports its pid, ignores SIGTERM, and runs forever
TREE = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print("child", child.pid, flush=True)
print("progress 1/10", flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (ended, not yet reaped by init) counts as dead
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.skipif(sys.platform == "win32", reason="process groups are POSIX")
def test_cancel_kills_the_whole_tree_even_if_sigterm_is_ignored():
    runner = ProcessRunner(kill_grace_s=0.5)
    runner.start([sys.executable, "-c", TREE])
    lines, deadline = [], time.monotonic() + 30
    while len(lines) < 2 and time.monotonic() < deadline:
        lines += runner.poll()
        time.sleep(0.02)
    assert lines[1] == "progress 1/10" and runner.returncode is None
    child = int(lines[0].split()[1])
    assert _alive(child) and group_alive(runner.process.pid)
    runner.cancel()
    assert runner.returncode is not None and runner.returncode < 0
    time.sleep(0.2)
    assert not _alive(child), "the grandchild survived the cancel"
    assert not group_alive(runner.process.pid)


def test_exit_code_stdout_and_stderr_in_the_log():
    runner = ProcessRunner()
    runner.start([sys.executable, "-c",
                  "import sys; print('progress 1/1'); print('boom', file=sys.stderr); sys.exit(3)"])
    assert runner.wait(timeout=30) == 3
    assert runner.poll() == ["progress 1/1"]
    assert "boom" in runner.log and "progress 1/1" in runner.log


def test_progress_gives_step_pass_and_time_left():
    now = [100.0]
    tracker = ProgressTracker(steps=5, clock=lambda: now[0])
    assert tracker.feed("diffseg: loading") is None
    first = tracker.feed("progress 1/20")
    assert (first.step, first.steps, first.pass_index, first.passes) == (1, 5, 1, 4)
    assert first.seconds_left is None  # nothing to extrapolate from yet
    now[0] += 10.0  # 5 steps in 10 s (model loading before the first line does not count)
    later = tracker.feed("progress 6/20")
    assert (later.step, later.pass_index) == (1, 2)
    assert later.seconds_left == pytest.approx(28.0)
    assert later.fraction == pytest.approx(0.3)
    assert "step 1/5 of pass 2/4" in later.text() and "28 s left" in later.text()
    assert format_seconds(3725) == "1 h 02 min"


def test_signal_calls_every_slot_once():
    signal, calls = Signal("int"), []
    slot = calls.append
    signal.connect(slot)
    signal.connect(slot)
    signal.connect(lambda v: calls.append(-v))
    signal.emit(2)
    signal.disconnect(slot)
    signal.emit(3)
    assert calls == [2, -2, -3]
