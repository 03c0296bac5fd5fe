"""Stand-in for Slicer's ``ctk`` module: the three CTK classes the module's .ui and slicer.util use.

Mirrors CTK as bundled with Slicer 5.8 .. main (Libs/Widgets/ctkCollapsibleButton.h: properties
``text``, ``collapsed``; ctkDirectoryButton.h: property ``directory``, signal
``directoryChanged(QString)``; ctkMessageBox, which slicer.util.messageBox fills attribute by attribute
and shows with ``exec_()``). The message box does not open a window: it records what the user would
see and answers from ``ctkMessageBox.answers`` (default Ok), so a test can decline a confirmation.
"""

from __future__ import annotations

from PySide6 import QtCore, QtWidgets

import qt


class ctkCollapsibleButton(QtWidgets.QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self._text, self._collapsed = "", False

    def _get_text(self):
        return self._text

    def _set_text(self, value):
        self._text = str(value)

    def _get_collapsed(self):
        return self._collapsed

    def _set_collapsed(self, value):
        self._collapsed = bool(value)

    text = QtCore.Property(str, _get_text, _set_text)
    collapsed = QtCore.Property(bool, _get_collapsed, _set_collapsed)


class ctkDirectoryButton(QtWidgets.QWidget):
    directoryChanged = QtCore.Signal(str)
    _pythonqt_signals = {"directoryChanged(QString)": "directoryChanged"}

    def __init__(self, parent=None):
        super().__init__(parent)
        self._directory = ""

    def _get_directory(self):
        return self._directory

    def _set_directory(self, value):
        value = str(value)
        if value != self._directory:
            self._directory = value
            self.directoryChanged.emit(value)

    directory = QtCore.Property(str, _get_directory, _set_directory)


class ctkMessageBox:
    """Records each message; ``exec_()`` returns the next of ``answers`` (default QMessageBox.Ok)."""

    shown: list[dict] = []
    answers: list = []

    def __init__(self, parent=None):
        self.parent = parent
        self.text = ""
        self.windowTitle = ""
        self.detailedText = ""
        self.icon = None
        self.standardButtons = None
        self.dontShowAgainSettingsKey = ""

    def deleteLater(self):
        pass

    def exec_(self):
        answer = ctkMessageBox.answers.pop(0) if ctkMessageBox.answers else QtWidgets.QMessageBox.Ok
        ctkMessageBox.shown.append({"text": self.text, "title": self.windowTitle.strip(),
                                    "detailedText": self.detailedText, "icon": self.icon, "answer": answer})
        return answer

    exec = exec_


qt.CUSTOM_WIDGETS.update({c.__name__: c for c in (ctkCollapsibleButton, ctkDirectoryButton)})
