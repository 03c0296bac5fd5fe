"""A small stand-in for the 3D Slicer application, so CI can run the module file itself.

What is real: the MRML scene and logics (slicer-core's compiled MRML, through scene/app.py), Slicer's own
``slicer/util.py`` (shipped in slicer-core: loadUI, childWidgetVariables, errorDisplay, confirmOkCancel-
Display, VTKObservationMixin, settingsValue run unchanged), Qt widgets (PySide6, offscreen), the .ui file,
and the background ``diffseg sample`` process. What is stood in, each file naming the Slicer source it
mirrors: ``qt`` (PythonQt conventions), ``ctk`` (three classes), ``slicer.ScriptedLoadableModule``,
``slicer.parameterNodeWrapper``, ``slicer.qMRMLWidget``/``qMRMLNodeComboBox``, and here ``slicer.app``
(qSlicerApplication: settings, testing flag, module manager, main window), ``slicer.modules`` and the
module loader (qSlicerScriptedLoadableModule: puts the module's folder on sys.path, executes the file,
makes the module, then the widget with a qSlicerScriptedLoadableModuleWidget-like parent, ``setup()``,
``enter()``). docs/slicer.md lists what this cannot prove.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _prepare_path() -> None:
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))  # ``import qt`` / ``import ctk`` resolve to the stand-ins


class _ModuleManager:
    """qSlicerModuleManager: only the signal the widget connects to (moduleAboutToBeUnloaded)."""

    def __init__(self):
        self.slots = []

    def connect(self, signature, slot):
        assert signature == "moduleAboutToBeUnloaded(QString)", signature
        self.slots.append(slot)

    def disconnect(self, signature, slot):
        if slot in self.slots:
            self.slots.remove(slot)

    def unload(self, name):
        for slot in list(self.slots):
            slot(name)


class App:
    """qSlicerApplication, the part modules and slicer.util touch."""

    applicationName = "Slicer"

    def __init__(self, headless, settings_path: str):
        import qt
        from PySide6 import QtCore, QtWidgets
        self.qapp = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["Slicer"])
        self.headless = headless
        self.testing = False  # dialogs go through ctkMessageBox (recorded), not the testing shortcut
        self._settings = settings_path
        QtCore.QSettings.setDefaultFormat(QtCore.QSettings.IniFormat)
        QtCore.QSettings.setPath(QtCore.QSettings.IniFormat, QtCore.QSettings.UserScope, settings_path)
        self._manager = _ModuleManager()

        class qSlicerMainWindow(qt.QMainWindow):
            objectName = "qSlicerMainWindow"  # PythonQt reads objectName as a property

        self.mainWindow = qSlicerMainWindow()

    def testingEnabled(self):
        return self.testing

    def moduleManager(self):
        return self._manager

    def topLevelWidgets(self):
        return [self.mainWindow]

    def processEvents(self):
        self.qapp.processEvents()

    def setOverrideCursor(self, cursor):
        self.qapp.setOverrideCursor(cursor)

    def restoreOverrideCursor(self):
        self.qapp.restoreOverrideCursor()

    def applicationLogic(self):
        return self.headless.app_logic

    def settings(self):
        import qt
        return qt.QSettings()


class ModuleParent:
    """qSlicerScriptedLoadableModule's Python-visible fields."""

    def __init__(self, path: str):
        self.path = path
        self.title = self.helpText = self.acknowledgementText = ""
        self.categories, self.dependencies, self.contributors = [], [], []


def install(headless, settings_path: str):
    """Make ``import slicer/qt/ctk`` in a module file see the stand-in over ``headless``'s real scene."""
    _prepare_path()
    import slicer
    import slicer.util  # Slicer's real util.py, from slicer-core

    import ctk  # noqa: F401 - registers the ctk designer classes
    import qt  # noqa: F401
    from . import mrmlwidgets, parameterNodeWrapper
    from . import ScriptedLoadableModule as slm
    sys.modules["slicer.ScriptedLoadableModule"] = slm
    sys.modules["slicer.parameterNodeWrapper"] = parameterNodeWrapper
    slicer.ScriptedLoadableModule = slm
    slicer.parameterNodeWrapper = parameterNodeWrapper
    slicer.qMRMLWidget = mrmlwidgets.qMRMLWidget
    slicer.qMRMLNodeComboBox = mrmlwidgets.qMRMLNodeComboBox
    slicer.mrmlScene = headless.scene
    slicer.app = App(headless, settings_path)
    slicer.modules = types.SimpleNamespace()
    slicer.selfTests = {}
    return slicer


def uninstall():
    import slicer
    for name in ("slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper"):
        sys.modules.pop(name, None)
    for attr in ("ScriptedLoadableModule", "parameterNodeWrapper", "qMRMLWidget", "qMRMLNodeComboBox",
                 "mrmlScene", "app", "modules", "selfTests"):
        if hasattr(slicer, attr):
            delattr(slicer, attr)


class LoadedModule:
    def __init__(self, module, instance, widget, parent_widget):
        self.module, self.instance, self.widget, self.parentWidget = module, instance, widget, parent_widget


def load_module(path: str | os.PathLike) -> LoadedModule:
    """Load a scripted module as Slicer does and open its panel (setup, then enter)."""
    import slicer
    from PySide6 import QtWidgets
    path = str(Path(path).resolve())
    name = Path(path).stem
    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # Slicer adds each scripted module's folder to sys.path
    module = types.ModuleType(name)
    module.__file__ = path
    sys.modules[name] = module
    # PythonQt exposes Qt properties as attributes; PySide6 does so for code that selects true_property
    # (PySide's feature import inspects every loaded module; torch.classes raises on any attribute
    # lookup, so modules like it are hidden from sys.modules for that one statement)
    import inspect
    hidden = {}
    for key, mod in list(sys.modules.items()):
        try:
            inspect.unwrap(mod)
        except Exception:  # noqa: BLE001
            hidden[key] = sys.modules.pop(key)
    try:
        exec("from __feature__ import true_property", module.__dict__)  # noqa: S102
        # the feature gives classes a second attribute table: PythonQt's ``name`` must be in it too
        exec("import qt as _qt\nfrom PySide6 import QtCore as _QtCore\n_QtCore.QObject.name = _qt._name\n"
             "del _qt, _QtCore", module.__dict__)  # noqa: S102
    finally:
        sys.modules.update(hidden)
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), module.__dict__)  # noqa: S102
    parent = ModuleParent(path)
    instance = getattr(module, name)(parent)
    setattr(slicer.modules, name.lower(), parent)

    class ModuleWidgetParent(slicer.qMRMLWidget):  # qSlicerScriptedLoadableModuleWidget
        isEntered = False

    panel = ModuleWidgetParent()
    panel.setLayout(QtWidgets.QVBoxLayout())
    panel.setMRMLScene(slicer.mrmlScene)
    widget = getattr(module, name + "Widget")(panel)
    widget.setup()
    panel.isEntered = True
    if hasattr(widget, "enter"):
        widget.enter()
    return LoadedModule(module, instance, widget, panel)
