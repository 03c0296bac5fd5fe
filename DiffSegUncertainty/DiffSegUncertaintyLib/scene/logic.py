"""DiffSegUncertaintyLogic: validate -> write inputs -> run ``diffseg sample`` -> load results. No Qt.

Why this shape (after SlicerNNUnet and SlicerMONAIAuto3DSeg): the sampler runs as a separate process of
the same command a user without Slicer runs, so the GUI never freezes and Cancel can stop it at once; the
runner is injectable; progress and the end of a run are announced through pure-Python signals. Nothing
happens on a background thread except reading the process's output: the owner calls ``poll()`` (in
Slicer from a QTimer, in scripts and tests through ``wait()``), so every scene change happens on the
caller's thread. The scene changes only when a run succeeded and all of its files loaded.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..engine.files.modelfile import PRECISION_CHOICES
from .export import export_run
from .inputs import InputProblem, SampleRequest, check_request, point_lps, roi_box_lps, write_input
from .progress import ProgressTracker
from .results import ResultsError, RunNodes, load_run
from .runner import ProcessRunner, Runner
from .signal import Signal

PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the folder holding DiffSegUncertaintyLib
CLI_MODULE = "DiffSegUncertaintyLib.engine.cli"
DEVICES = {"auto": "auto", "gpu": "cuda", "cuda": "cuda", "cpu": "cpu"}


@dataclass
class RunOutcome:
    """How a run ended: ``status`` is done, cancelled or failed; ``log`` is the process's output."""

    status: str
    message: str
    log: str = ""
    returncode: int | None = None
    run: RunNodes | None = None
    seconds: float | None = None
    request: SampleRequest | None = None   # what was sampled (volume, ROI, model), kept with the outcome


class DiffSegUncertaintyLogic:
    def __init__(self, scene, python_executable: str | None = None,
                 runner_factory: Callable[[], Runner] = ProcessRunner,
                 models_dirs: list[str | os.PathLike] | None = None, temp_root: str | None = None) -> None:
        self.scene = scene
        self.python_executable = python_executable or sys.executable
        self.runner_factory = runner_factory
        self.models_dirs = list(models_dirs or [])
        self.temp_root = temp_root
        self.progressChanged = Signal("Progress")
        self.finished = Signal("RunOutcome")
        self.last_log = ""
        self._runner: Runner | None = None
        self._job: dict[str, Any] = {}

    # -- models ----------------------------------------------------------------------------------
    def models(self) -> dict[str, Path]:
        """Model name -> folder, from the models folders, $DIFFSEG_MODELS and the shipped folder."""
        from ..engine.files.modelfile import find_models  # JSON only; imported late to keep module load cheap
        return find_models(self.models_dirs)

    def card(self, model_folder: str | os.PathLike | None) -> dict[str, Any]:
        if model_folder is None or str(model_folder) == "":
            raise InputProblem("Select a model.")
        from ..engine.files.modelfile import ModelFileError, read_card
        try:
            card = read_card(model_folder)
        except ModelFileError as e:
            raise InputProblem(f"The model cannot be used: {e}") from None
        weights = Path(model_folder) / str(card["weights"].get("file", ""))
        if not weights.is_file():
            raise InputProblem(f"The model '{card['name']}' has no weights file ({weights.name} is missing).")
        return card

    @staticmethod
    def channel_names(card: dict[str, Any]) -> list[str]:
        """The card's input channels in its order (one labelled selector each in the module)."""
        spec = card.get("input", {}).get("channels") or []
        names = [str(c.get("name") or c.get("modality") or f"channel {i + 1}") for i, c in enumerate(spec)]
        return names or [f"channel {i + 1}" for i in range(int(card["architecture"]["in_channels"]))]

    # -- a run -----------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._runner is not None

    @property
    def running_request(self) -> SampleRequest | None:
        """The request of the run in progress: its volume, ROI and model, whatever is selected meanwhile."""
        return self._job.get("request")

    def validate(self, request: SampleRequest) -> dict[str, Any]:
        """The model card when the request can run; InputProblem with the reason otherwise."""
        if request.input_volume is None:
            raise InputProblem("Select an input volume.")
        card = self.card(request.model_folder)
        check_request(request, card)
        if request.device.lower() not in DEVICES:
            raise InputProblem(f"Unknown device {request.device!r}: choose auto, GPU or CPU.")
        if request.precision not in PRECISION_CHOICES:
            raise InputProblem(f"Unknown precision {request.precision!r}: choose "
                               f"{', '.join(PRECISION_CHOICES[:-1])} or {PRECISION_CHOICES[-1]}.")
        return card

    def command(self, request: SampleRequest, inputs: list[Path], output: Path) -> list[str]:
        cmd = [self.python_executable, "-m", CLI_MODULE, "sample", *map(str, inputs),
               "--model", str(request.model_folder), "--output", str(output),
               "--samples", str(request.samples), "--seed", str(request.seed),
               "--device", DEVICES[request.device.lower()]]
        if request.steps is not None:
            cmd += ["--steps", str(request.steps)]
        if request.eta is not None:
            cmd += ["--eta", f"{request.eta:g}"]
        if request.precision != "auto":
            cmd += ["--precision", request.precision]
        if request.point is not None:
            # the ROI helper's click: the sampler centres the model's box on it and a 2D model grows
            # the slice range while its hypotheses find the lesion (engine/prompt.py)
            cmd.append("--point-mm=" + ",".join(f"{v:.6f}" for v in point_lps(request.point, request.input_volume)))
        elif request.roi is not None:
            lower, upper = roi_box_lps(request.roi, request.input_volume)
            # one "=" argument: a box starting with a negative number must not look like an option
            cmd.append("--roi-mm=" + ",".join(f"{v:.6f}" for v in (*lower, *upper)))
        return cmd

    def start(self, request: SampleRequest) -> None:
        """Validate, write the inputs and start the sampler; returns at once (raises InputProblem)."""
        if self.busy:
            raise InputProblem("A run is in progress; cancel it or wait for it to end.")
        card = self.validate(request)
        workdir = Path(tempfile.mkdtemp(prefix="DiffSeg-", dir=self.temp_root))
        try:
            inputs = [write_input(v, workdir / f"input_{i}.nrrd") for i, v in enumerate(request.volumes)]
            command = self.command(request, inputs, workdir / "output")
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_PARENT), env.get("PYTHONPATH")) if p)
            runner = self.runner_factory()
            runner.start(command, env=env, cwd=str(workdir))
        except OSError as e:
            shutil.rmtree(workdir, ignore_errors=True)
            raise InputProblem(f"Cannot start the sampler ({self.python_executable}): {e}") from None
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        steps = request.steps or (card.get("sampling") or {}).get("steps")
        self._runner = runner
        self._job = {"request": request, "card": card, "workdir": workdir, "command": command,
                     "tracker": ProgressTracker(steps), "started": time.monotonic()}

    def poll(self) -> bool:
        """Handle new output; when the process has ended, load the results. True while running."""
        if self._runner is None:
            return False
        for line in self._runner.poll():
            progress = self._job["tracker"].feed(line)
            if progress is not None:
                self.progressChanged.emit(progress)
        returncode = self._runner.returncode
        if returncode is None:
            return True
        self._finish(self._outcome(returncode))
        return False

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> RunOutcome | None:
        """Poll until the run ends (scripts, tests); None on timeout (the run goes on)."""
        result: list[RunOutcome] = []
        self.finished.connect(result.append)
        try:
            end = None if timeout is None else time.monotonic() + timeout
            while self.poll():
                if end is not None and time.monotonic() > end:
                    return None
                time.sleep(interval)
        finally:
            self.finished.disconnect(result.append)
        return result[-1] if result else None

    def cancel(self) -> None:
        """Kill the sampler and its children; the scene stays as it was."""
        if self._runner is None:
            return
        self._runner.cancel()
        self._finish(RunOutcome("cancelled", "Cancelled; nothing was added to the scene.",
                                self._runner.log, self._runner.returncode,
                                request=self._job.get("request")))

    def _outcome(self, returncode: int) -> RunOutcome:
        log = self._runner.log
        request, card = self._job["request"], self._job["card"]
        if returncode == 0:
            if request.input_volume.GetScene() is not self.scene:
                return RunOutcome("failed", "The input volume was removed from the scene during the run.",
                                  log, returncode)
            try:
                run = load_run(self.scene, self._job["workdir"] / "output", request.input_volume,
                               str(card["name"]), list(card.get("classes", [])))
            except ResultsError as e:
                return RunOutcome("failed", f"The results could not be loaded: {e}", log, returncode)
            seconds = time.monotonic() - self._job["started"]
            return RunOutcome("done", f"{run.name}: {len(run.hypothesis_segment_ids)} hypotheses in "
                              f"{seconds:.0f} s.", log, returncode, run, seconds, request)
        return RunOutcome("failed", failure_message(returncode, log, request.device), log, returncode,
                          request=request)

    def _finish(self, outcome: RunOutcome) -> None:
        shutil.rmtree(self._job.get("workdir", ""), ignore_errors=True)
        self.last_log = outcome.log
        self._runner, self._job = None, {}
        self.finished.emit(outcome)

    # -- export ----------------------------------------------------------------------------------
    @staticmethod
    def export(run: RunNodes, folder: str | os.PathLike) -> list[Path]:
        return export_run(run, folder)


def failure_message(returncode: int, log: str, device: str) -> str:
    """A sentence for the user from the exit code and the last meaningful line of the log."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip() and not ln.startswith("progress ")]
    last = lines[-1] if lines else "no output"
    if returncode == 2:
        return f"The sampler rejected the input: {last}"
    if returncode == 130:
        return "The sampler was interrupted."
    if "out of memory" in log.lower() and device.lower() != "cpu":
        return f"The GPU ran out of memory: choose CPU as device or fewer hypotheses. ({last})"
    if returncode < 0:
        return f"The sampler was stopped by signal {-returncode}. See the log for details."
    return f"The sampler failed (exit code {returncode}): {last} See the log for details."
