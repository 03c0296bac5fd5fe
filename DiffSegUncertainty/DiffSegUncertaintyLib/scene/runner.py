"""Runs the command-line sampler in a background process.

Why a process and not a thread: sampling takes minutes, and only a process can be stopped at once and
completely (its whole tree, torch's worker threads and any child included) without leaving Slicer in a
half-done state. The runner never calls back from its reader threads: lines wait in a queue until the
owner calls ``poll()`` from its own thread (in Slicer a QTimer on the GUI thread), so all MRML work stays
on the main thread. ``ProcessRunner`` is injectable: the logic takes any object with the same methods.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Mapping, Protocol, Sequence


class Runner(Protocol):
    """What the logic needs from a runner (tests may substitute their own)."""

    def start(self, command: Sequence[str], env: Mapping[str, str] | None = None,
              cwd: str | None = None) -> None: ...
    def poll(self) -> list[str]: ...
    @property
    def returncode(self) -> int | None: ...
    @property
    def log(self) -> str: ...
    def cancel(self) -> None: ...


class ProcessRunner:
    """One background process in its own session (POSIX) or process group (Windows).

    ``poll()`` returns the new stdout lines; ``returncode`` is None until the process ended and both of
    its pipes were read to the end; ``log`` is everything it wrote (stdout and stderr, interleaved as
    read), kept for the user when something goes wrong.
    """

    def __init__(self, kill_grace_s: float = 3.0) -> None:
        self.kill_grace_s = kill_grace_s
        self.process: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str] = queue.Queue()
        self._log: list[str] = []
        self._log_lock = threading.Lock()
        self._readers: list[threading.Thread] = []
        self.cancelled = False

    def start(self, command: Sequence[str], env: Mapping[str, str] | None = None,
              cwd: str | None = None) -> None:
        if self.process is not None:
            raise RuntimeError("this runner already started a process")
        kwargs: dict = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = (subprocess.CREATE_NEW_PROCESS_GROUP
                                       | getattr(subprocess, "CREATE_NO_WINDOW", 0))
        else:
            kwargs["start_new_session"] = True  # own process group: cancel kills the whole tree
        self.process = subprocess.Popen(
            list(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, encoding="utf-8", errors="replace", bufsize=1,
            env=dict(env) if env is not None else None, cwd=cwd, **kwargs)
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, False), daemon=True)]
        for t in self._readers:
            t.start()

    def _read(self, stream: IO[str], is_stdout: bool) -> None:
        for line in stream:
            with self._log_lock:
                self._log.append(line)
            if is_stdout:
                self._lines.put(line.rstrip("\r\n"))
        stream.close()

    def poll(self) -> list[str]:
        """New stdout lines since the last call (never blocks)."""
        lines = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                return lines

    @property
    def returncode(self) -> int | None:
        if self.process is None or self.process.poll() is None:
            return None
        if any(t.is_alive() for t in self._readers):
            return None  # ended, but output still on its way
        return self.process.returncode

    @property
    def log(self) -> str:
        with self._log_lock:
            return "".join(self._log)

    @property
    def running(self) -> bool:
        return self.process is not None and self.returncode is None

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the process ended and its output was read (tests, batch scripts)."""
        end = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None and self.process is not None:
            if end is not None and time.monotonic() > end:
                return None
            time.sleep(0.02)
        return self.returncode

    def cancel(self) -> None:
        """Kill the whole process tree: SIGTERM to the group, SIGKILL after a grace period."""
        if self.process is None:
            return
        self.cancelled = True
        if sys.platform == "win32":
            if self.process.poll() is None:
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)],
                               capture_output=True, check=False)
            self.process.wait()
        else:
            pgid = self.process.pid  # start_new_session: the group id is the leader's pid
            _signal_group(pgid, signal.SIGTERM)
            try:
                self.process.wait(timeout=self.kill_grace_s)
            except subprocess.TimeoutExpired:
                pass
            # children may outlive the leader (they keep the group id): finish them too
            _signal_group(pgid, signal.SIGKILL)
            self.process.wait()
        for t in self._readers:
            t.join(timeout=self.kill_grace_s)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    """Whether a process of the group is still running (zombies, which wait to be reaped by whoever
    adopted them, do not count). Used by tests to prove that cancel left nothing behind."""
    if sys.platform == "win32":  # pragma: no cover - no process groups to probe
        return False
    if os.path.isdir("/proc"):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
