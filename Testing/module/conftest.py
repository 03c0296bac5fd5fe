"""Fixtures for running the module file itself on the Slicer stand-in (Testing/module/standin): one
headless MRML application per test module, Slicer's default slice views (composite and slice nodes),
a tiny model in the models folder the module remembers in its settings, and two volumes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("PySide6", reason="the module tests need PySide6 (pip install -e .[test])")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "scene"))  # scene_helpers: the same volumes as the scene tests

import standin  # noqa: E402
from module_helpers import MODULE_FILE, SAMPLES, add_slice_views  # noqa: E402
from scene_helpers import GEOMETRY, SHAPE, load_volume  # noqa: E402

from DiffSegUncertaintyLib.engine import testing  # noqa: E402
from DiffSegUncertaintyLib.scene.app import create_headless_app  # noqa: E402

@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    testing.make_tiny_model_folder(folder / "tiny3d", spatial_dims=3)
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("volumes")
    a = testing.write_volume(folder / "caseA.nrrd", testing.blob_array(SHAPE)[0], **GEOMETRY)
    b = testing.write_volume(folder / "caseB.nrrd", testing.blob_array(SHAPE, seed=5)[0] * 0.5, **GEOMETRY)
    return [a, b]


@pytest.fixture
def slicer_app(tmp_path, models):
    """A fresh stand-in application over a fresh real scene; the module's settings point at ``models``."""
    headless = create_headless_app(cache_dir=str(tmp_path / "cache"))
    slicer = standin.install(headless, str(tmp_path / "settings"))
    import ctk
    import qt
    qt.QSettings().setValue("DiffSegUncertainty/ModelsFolder", str(models))
    ctk.ctkMessageBox.shown.clear()
    ctk.ctkMessageBox.answers.clear()
    views = add_slice_views(headless.scene)
    yield {"headless": headless, "slicer": slicer, "views": views}
    standin.uninstall()


@pytest.fixture
def panel(slicer_app, inputs):
    """The module loaded and entered, with case A and case B in the scene and the tiny model chosen."""
    headless = slicer_app["headless"]
    volumes = [load_volume(headless, p, name) for p, name in zip(inputs, ("caseA", "caseB"))]
    loaded = standin.load_module(MODULE_FILE)
    w = loaded.widget
    index = w.ui.modelSelector.findText("tiny3d")
    assert index >= 0, [w.ui.modelSelector.itemText(i) for i in range(w.ui.modelSelector.count)]
    w.ui.modelSelector.setProperty("currentIndex", index)
    w.ui.inputVolumeSelector.setCurrentNode(volumes[0])
    w.ui.samplesSpinBox.setProperty("value", SAMPLES)
    w.ui.stepsSpinBox.setProperty("value", 2)
    w.ui.deviceComboBox.setProperty("currentIndex", 2)  # CPU
    yield {**slicer_app, "loaded": loaded, "widget": w, "volumes": volumes}
    w.cleanup()


