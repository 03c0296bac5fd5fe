"""Stand-in for Slicer's ``qt`` module on PySide6 (offscreen).

Mirrors PythonQt as Slicer 5.8 .. main wraps Qt (Base/Python/qt/__init__.py gathers PythonQt.QtCore,
QtGui, QtWidgets, QtUiTools into one ``qt`` module), where it matters to a scripted module:

- every Qt class in one module;
- signals as attributes (``button.clicked.connect(slot)``, as Slicer's own parameterNodeWrapper
  connectors use them; the module uses only this form);
- ``objectName`` also readable as ``name`` (PythonQt's alias, which slicer.util.childWidgetVariables
  relies on);
- ``QUiLoader`` that knows the designer plugins Slicer registers (ctk*, qMRML* from the stand-in) and
  makes the .ui file's <connections> between them (e.g. mrmlSceneChanged -> setMRMLScene), which Qt's
  own loader cannot match for Python-defined signals.

Properties as attributes (``spinBox.value = 3``) come from PySide6's ``true_property`` feature, which
the stand-in's module loader switches on for the module file only (see standin/__init__.py).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6 import QtCore as _QtCore  # noqa: E402
from PySide6 import QtUiTools as _QtUiTools  # noqa: E402
from PySide6.QtCore import *  # noqa: E402,F401,F403
from PySide6.QtGui import *  # noqa: E402,F401,F403
from PySide6.QtWidgets import *  # noqa: E402,F401,F403

_qobject_connect = _QtCore.QObject.connect


def _pythonqt_connect(self, *args, **kwargs):
    """Connect a C++ signature string (from a .ui file) to a slot, by the signal's name."""
    if len(args) == 2 and isinstance(args[0], str) and callable(args[1]) and not args[0][:1].isdigit():
        signature, slot = args
        mapping = getattr(self, "_pythonqt_signals", {})
        name = mapping.get(signature, signature.split("(", 1)[0])
        signal = getattr(self, name, None)
        if signal is None or not hasattr(signal, "connect"):
            raise AttributeError(f"{type(self).__name__} has no signal {signature!r}")
        return signal.connect(slot)
    return _qobject_connect(self, *args, **kwargs)


# PythonQt's ``name``; QObject.property() is a method under every PySide6 feature set, so the same
# property object works in both views of the class (the loader installs it in the true_property view too)
_name = property(lambda self: self.property("objectName"))
_QtCore.QObject.name = _name

CUSTOM_WIDGETS: dict[str, type] = {}  # filled by the stand-in's ctk and slicer pieces


class QUiLoader(_QtUiTools.QUiLoader):
    def __init__(self, parent=None):
        super().__init__(parent)
        for cls in CUSTOM_WIDGETS.values():
            self.registerCustomWidget(cls)

    def load(self, device, parent=None):
        path = device.fileName() if hasattr(device, "fileName") else None
        widget = super().load(device, parent) if parent is not None else super().load(device)
        if widget is not None and path:
            _connect_designer_connections(widget, path)
        return widget


def _connect_designer_connections(top, path: str) -> None:
    """Make the .ui's <connections> whose ends are stand-in widgets with Python signals/slots."""
    root = ET.parse(path).getroot()
    objects = {top.objectName(): top}
    for child in top.findChildren(_QtCore.QObject):
        objects.setdefault(child.objectName(), child)
    for c in root.iter("connection"):
        sender, receiver = objects.get(c.findtext("sender")), objects.get(c.findtext("receiver"))
        if sender is None or receiver is None:
            raise RuntimeError(f"{path}: connection between unknown widgets {c.findtext('sender')!r} and "
                               f"{c.findtext('receiver')!r}")
        slot = getattr(receiver, c.findtext("slot").split("(", 1)[0])
        _pythonqt_connect(sender, c.findtext("signal"), slot)
