"""Stand-in for ``slicer.parameterNodeWrapper`` (Base/Python/slicer/parameterNodeWrapper/, Slicer 5.8.0
and main), the part a module uses without ``connectGui``: the ``@parameterNodeWrapper`` class decorator
gives typed attributes stored in a vtkMRMLScriptedModuleNode as serializers.py writes them (int/float/str
as ``SetParameter(name, str(value))``, bool as "True"/"False", MRML nodes as a node reference named like
the attribute with an empty parameter), with the class defaults written when the node lacks them
(wrapper.py ``_processClass``). Left out: validators, GUI connectors, parameter packs, lists/unions.
"""

from __future__ import annotations

import typing

import slicer


class _Parameter:
    def __init__(self, name: str, type_, default):
        self.name, self.type, self.default = name, type_, default
        self.is_node = isinstance(type_, type) and issubclass(type_, slicer.vtkMRMLNode)

    def isIn(self, node) -> bool:
        return node.HasParameter(self.name)

    def write(self, node, value) -> None:
        if self.is_node:
            if value is not None and not isinstance(value, self.type):  # validators.IsInstance
                raise TypeError(f"Value must be of type '{self.type}', is type '{type(value)}'")
            node.SetParameter(self.name, "")
            node.SetNodeReferenceID(self.name, value.GetID() if value is not None else None)
        elif self.type is bool:
            node.SetParameter(self.name, "True" if value else "False")
        else:
            if value is not None and not isinstance(value, self.type if self.type is not float else (int, float)):
                raise TypeError(f"{self.name}: {value!r} is not {self.type.__name__}")
            node.SetParameter(self.name, str(value))

    def read(self, node):
        if self.is_node:
            return node.GetNodeReference(self.name)
        text = node.GetParameter(self.name)
        if self.type is bool:
            return text == "True"
        return self.type(text)


def parameterNodeWrapper(classtype=None):
    def wrap(cls):
        hints = typing.get_type_hints(cls, globalns=vars(__import__(cls.__module__)))
        params = {}
        for name, type_ in hints.items():
            default = cls.__dict__.get(name, None)
            if default is None and not (isinstance(type_, type) and issubclass(type_, slicer.vtkMRMLNode)):
                default = {int: 0, float: 0.0, str: "", bool: False}.get(type_)
            params[name] = _Parameter(name, type_, default)

        def __init__(self, parameterNode):
            object.__setattr__(self, "parameterNode", parameterNode)
            for p in params.values():
                if not p.isIn(parameterNode):
                    p.write(parameterNode, p.default)

        def __getattr__(self, name):
            if name in params:
                return params[name].read(self.parameterNode)
            raise AttributeError(name)

        def __setattr__(self, name, value):
            if name not in params:
                raise AttributeError(f"{cls.__name__} has no parameter {name!r}")
            params[name].write(self.parameterNode, value)

        namespace = {"__init__": __init__, "__getattr__": __getattr__, "__setattr__": __setattr__,
                     "__doc__": cls.__doc__, "allParameters": params, "__module__": cls.__module__}
        return type(cls.__name__, (), namespace)

    if classtype is None:
        return wrap
    return wrap(classtype)
