"""Stand-ins for the two qMRML widgets the module uses, over a real slicer-core scene.

- ``qMRMLWidget`` (Libs/MRML/Widgets/qMRMLWidget.h, Slicer 5.8 .. main): ``setMRMLScene(scene)``,
  ``mrmlScene()``, signal ``mrmlSceneChanged(vtkMRMLScene*)``.
- ``qMRMLNodeComboBox`` (Libs/MRML/Widgets/qMRMLNodeComboBox.h/.cxx, Slicer 5.8 .. main): properties
  ``nodeTypes``, ``showChildNodeTypes``, ``showHidden``, ``noneEnabled``, ``addEnabled``,
  ``removeEnabled``, ``renameEnabled``, ``selectNodeUponCreation``; ``currentNode()``,
  ``setCurrentNode(node)``, ``currentNodeID``; signal ``currentNodeChanged(vtkMRMLNode*)``. It follows
  the scene (node added/removed, scene closed) as the real one does through its scene model: without
  ``noneEnabled`` the first matching node becomes current, a removed current node is replaced (by the
  next node or None), and after a scene close nothing is current. Left out: the add/rename/remove
  menu entries, sorting, attribute filters.
"""

from __future__ import annotations

from PySide6 import QtCore, QtWidgets

import qt


class qMRMLWidget(QtWidgets.QWidget):
    mrmlSceneChanged = QtCore.Signal(object)
    _pythonqt_signals = {"mrmlSceneChanged(vtkMRMLScene*)": "mrmlSceneChanged"}

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene):
        if scene is not self._scene:
            self._scene = scene
            self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._scene


def _bool_property(attr):
    def get(self):
        return getattr(self, attr)

    def set_(self, value):
        setattr(self, attr, bool(value))
        if attr == "_noneEnabled":
            self._refresh()

    return QtCore.Property(bool, get, set_)


class qMRMLNodeComboBox(QtWidgets.QComboBox):
    currentNodeChanged = QtCore.Signal(object)
    currentNodeIDChanged = QtCore.Signal(str)
    nodeAdded = QtCore.Signal(object)
    _pythonqt_signals = {"currentNodeChanged(vtkMRMLNode*)": "currentNodeChanged",
                         "currentNodeIDChanged(QString)": "currentNodeIDChanged"}

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene, self._tags, self._types = None, [], []
        self._showChildNodeTypes, self._showHidden = True, False
        self._noneEnabled, self._addEnabled, self._removeEnabled = False, True, True
        self._renameEnabled, self._selectNodeUponCreation = False, True
        self._current = None
        self.currentIndexChanged.connect(self._on_index)

    # properties (as in qMRMLNodeComboBox.h)
    def _get_types(self):
        return list(self._types)

    def _set_types(self, types):
        self._types = [str(t) for t in types]
        self._refresh()

    nodeTypes = QtCore.Property(list, _get_types, _set_types)
    showChildNodeTypes = _bool_property("_showChildNodeTypes")
    showHidden = _bool_property("_showHidden")
    noneEnabled = _bool_property("_noneEnabled")
    addEnabled = _bool_property("_addEnabled")
    removeEnabled = _bool_property("_removeEnabled")
    renameEnabled = _bool_property("_renameEnabled")
    selectNodeUponCreation = _bool_property("_selectNodeUponCreation")

    def _get_current_id(self):
        return self._current.GetID() if self._current is not None else ""

    currentNodeID = QtCore.Property(str, _get_current_id)

    # scene
    def setMRMLScene(self, scene):
        if self._scene is not None:
            for tag in self._tags:
                self._scene.RemoveObserver(tag)
        self._scene, self._tags = scene, []
        if scene is not None:
            for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent, scene.EndCloseEvent):
                self._tags.append(scene.AddObserver(event, self._on_scene_event))
        self._current = None
        self._refresh()

    def mrmlScene(self):
        return self._scene

    def _matches(self, node) -> bool:
        if node is None or (node.GetHideFromEditors() and not self._showHidden):
            return False
        if self._showChildNodeTypes:
            return any(node.IsA(t) for t in self._types)
        return node.GetClassName() in self._types

    def nodes(self) -> list:
        if self._scene is None:
            return []
        return [n for n in (self._scene.GetNthNode(i) for i in range(self._scene.GetNumberOfNodes()))
                if self._matches(n)]

    def _refresh(self):
        nodes = self.nodes()
        if self._current is not None and self._current not in nodes:
            self._current = None
        if self._current is None and not self._noneEnabled and nodes:
            self._current = nodes[0]
        self.blockSignals(True)
        try:
            self.clear()
            if self._noneEnabled:
                self.addItem("None", "")
            for n in nodes:
                self.addItem(n.GetName() or n.GetID(), n.GetID())
            index = self.findData(self._current.GetID()) if self._current is not None else (0 if self._noneEnabled else -1)
            self.setCurrentIndex(index)
        finally:
            self.blockSignals(False)

    def _on_scene_event(self, caller, event):
        before = self._current
        if event == "EndCloseEvent":
            self._current = None
        self._refresh()
        if self._current is not before:
            self._emit()

    def _on_index(self, index):
        node_id = self.itemData(index) if index >= 0 else ""
        node = self._scene.GetNodeByID(node_id) if (self._scene is not None and node_id) else None
        if node is not self._current:
            self._current = node
            self._emit()

    def _emit(self):
        self.currentNodeChanged.emit(self._current)
        self.currentNodeIDChanged.emit(self._get_current_id())

    # the API a module calls
    def currentNode(self):
        return self._current

    def setCurrentNode(self, node):
        if node is not None and not self._matches(node):
            return
        if node is self._current:
            return
        self._current = node
        self._refresh()
        self._emit()

    def setCurrentNodeID(self, node_id):
        self.setCurrentNode(self._scene.GetNodeByID(node_id) if node_id else None)


qt.CUSTOM_WIDGETS.update({c.__name__: c for c in (qMRMLWidget, qMRMLNodeComboBox)})
