"""engine/allocator.py: diffseg keeps freed memory in the process, so the sampler's per-step tensors stop
page-faulting (the whole-CT demo: 4.4 million minor faults -> 128 thousand). Measured in fresh processes,
since the setting is process-wide."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = r"""
import resource, sys
import numpy as np
from DiffSegUncertaintyLib.engine.allocator import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "tuned" else None
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # what every sampling step does: large activations allocated, written, freed
    a = np.empty(16 << 20, np.uint8)
    a.fill(1)
    b = np.empty(16 << 20, np.uint8)
    b.fill(2)
    del a, b
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    tuned, n = out.stdout.split()
    return tuned, int(n)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt: Linux only")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    _, plain = faults("plain")
    tuned, kept = faults("tuned")
    assert tuned == "True"
    assert plain > 1000          # glibc maps and unmaps the blocks: faulted in again every round (~20k here)
    assert kept < plain / 5      # tuned: the first round's pages, then reuse (~1k here)


def test_the_command_line_tunes_its_own_process(monkeypatch):
    from DiffSegUncertaintyLib.engine import cli
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1) or True)
    assert cli.main(["models"]) == 0
    assert calls == [1]
