"""First use through the panel: every refusal and failure reaches the user in a dialog (with the log
where there is one), nothing starts, and Slicer's own packages are never handed to pip.

What cannot run here is replaced at its edge only: the PyTorch extension (absent, or a stand-in with
PyTorchUtils' installTorch signature), pip's process (subprocess.run), and Slicer >= 5.12's
slicer.packaging module (a stand-in with pip_ensure's signature and its declined error)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import types

import pytest
from module_helpers import prop

MISSING = "diffseg-test-not-installed>=1.0"


@pytest.fixture
def missing_package(panel, monkeypatch):
    module = panel["loaded"].module
    monkeypatch.setattr(module.DiffSegUncertaintyLogic, "requirements", staticmethod(lambda path=None: [MISSING]))
    calls = []

    def no_pip(command, **kwargs):  # any call means pip would have run
        calls.append(command)
        return subprocess.CompletedProcess(command, 1, "", "ERROR: ProxyError('Cannot connect to proxy.')")

    monkeypatch.setattr(module.subprocess, "run", no_pip)
    return calls


def test_declining_the_install_starts_nothing_and_says_why(panel, missing_package):
    import ctk
    import qt
    w = panel["widget"]
    ctk.ctkMessageBox.answers.append(qt.QMessageBox.Cancel)
    w.ui.sampleButton.click()
    asked, told = ctk.ctkMessageBox.shown
    assert MISSING in asked["text"] and "numpy" in asked["text"]  # says what is kept as it is
    assert "were not installed" in told["text"] and MISSING in told["text"]
    assert missing_package == [] and not panel["widget"].logic.scene.busy


def test_a_pip_failure_is_shown_with_its_log_and_never_touches_slicers_packages(panel, missing_package):
    import ctk
    w = panel["widget"]
    w.ui.sampleButton.click()  # confirmation answered Ok (the default answer)
    (command,) = missing_package
    assert command[1:4] == ["-m", "pip", "install"] and command[-1] == MISSING
    constraints = command[command.index("-c") + 1]
    assert constraints.endswith("slicer-constraints.txt")
    told = ctk.ctkMessageBox.shown[-1]
    assert "pip exit code 1" in told["text"] and "ProxyError" in told["detailedText"]
    assert "pip exit code 1" in prop(w.ui.statusLabel, "text") and not w.logic.scene.busy


def test_constraints_pin_slicers_own_packages(panel, tmp_path):
    module = panel["loaded"].module
    path = module.DiffSegUncertaintyLogic.constraintsFile(str(tmp_path))
    pins = dict(line.split("==") for line in open(path).read().split())
    for name in ("numpy", "scipy", "SimpleITK", "torch"):
        assert pins[name] == importlib.metadata.version(name)


def test_missing_pytorch_extension_is_explained(panel, monkeypatch):
    import ctk
    module = panel["loaded"].module
    real = importlib.metadata.version
    monkeypatch.setattr(module.importlib.metadata, "version",
                        lambda name: (_ for _ in ()).throw(importlib.metadata.PackageNotFoundError(name))
                        if name == "torch" else real(name))
    monkeypatch.delitem(sys.modules, "PyTorchUtils", raising=False)
    panel["widget"].ui.sampleButton.click()
    told = ctk.ctkMessageBox.shown[-1]
    assert "needs the PyTorch extension" in told["text"] and "Extensions Manager" in told["text"]
    assert not panel["widget"].logic.scene.busy


@pytest.mark.parametrize("outcome", ["declined", "error"])
def test_torch_install_through_pytorchutils_with_the_minimum_version(panel, monkeypatch, outcome):
    import ctk
    module = panel["loaded"].module
    real = importlib.metadata.version
    monkeypatch.setattr(module.importlib.metadata, "version",
                        lambda name: (_ for _ in ()).throw(importlib.metadata.PackageNotFoundError(name))
                        if name == "torch" else real(name))
    calls = []

    class PyTorchUtilsLogic:  # SlicerPyTorch's PyTorchUtils.py: installTorch(askConfirmation, ..., torchVersionRequirement)
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
            calls.append((askConfirmation, torchVersionRequirement))
            if outcome == "error":
                raise subprocess.CalledProcessError(1, ["light_the_torch", "install"], "SSL: CERTIFICATE_VERIFY_FAILED")
            return None  # what it returns when the user declines its confirmation

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    panel["widget"].ui.sampleButton.click()
    assert calls == [(True, f">={module.MIN_TORCH}")]
    told = ctk.ctkMessageBox.shown[-1]
    if outcome == "declined":
        assert "PyTorch was not installed" in told["text"]
    else:
        assert "PyTorch could not be installed" in told["text"] and "CalledProcessError" in told["detailedText"]
    assert not panel["widget"].logic.scene.busy


def test_slicer_5_12_uses_slicer_packaging(panel, missing_package, monkeypatch):
    """With slicer.packaging (Slicer >= 5.12) the module hands it the missing lines and the constraints
    file, and reports its 'declined' error (Base/Python/slicer/packaging.py, pip_ensure)."""
    import ctk
    import slicer
    calls = []

    def pip_ensure(requirements, constraints=None, skip_packages=None, prompt_install=True,
                   prompt_restart=True, requester=None, skip_in_testing=True, show_progress=True):
        calls.append((list(requirements), open(constraints).read(), requester))
        raise RuntimeError("User declined package installation")

    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_ensure = pip_ensure
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.setattr(slicer, "packaging", packaging, raising=False)
    panel["widget"].ui.sampleButton.click()
    ((requirements, constraints, requester),) = calls
    assert requirements == [MISSING] and "numpy==" in constraints and requester == "DiffSegUncertainty"
    assert "were not installed" in ctk.ctkMessageBox.shown[-1]["text"]
    assert missing_package == []  # no pip of our own


def test_minimum_torch_is_monais_floor():
    """MIN_TORCH is the floor the installed MONAI declares (a newer MONAI may need a newer torch)."""
    from packaging.requirements import Requirement
    src = open(__import__("module_helpers").MODULE_FILE).read()
    floor = src.split('MIN_TORCH = "', 1)[1].split('"', 1)[0]
    torch_req = next(Requirement(r) for r in importlib.metadata.requires("monai") if r.startswith("torch"))
    assert any(s.operator == ">=" and s.version.startswith(floor) for s in torch_req.specifier), torch_req


def test_slicer_5_8_python_is_told_before_anything_is_installed(panel, missing_package, monkeypatch):
    """Slicer 5.8 has Python 3.9; torch >= 2.8 and MONAI 1.6 need 3.10: say so, install nothing."""
    import ctk
    module = panel["loaded"].module
    monkeypatch.setattr(module, "pythonVersion", lambda: (3, 9))
    panel["widget"].ui.sampleButton.click()
    told = ctk.ctkMessageBox.shown[-1]["text"]
    assert "needs Slicer 5.10 or later" in told and "Python 3.9" in told
    assert len(ctk.ctkMessageBox.shown) == 1 and missing_package == []  # no install offered
    assert not panel["widget"].logic.scene.busy
