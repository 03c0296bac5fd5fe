"""A small pure-Python signal: the scene layer cannot use Qt signals (it runs headless and in CI), and
plain callbacks do not allow several listeners (the widget, a test, a batch script) at once."""

from __future__ import annotations

from typing import Any, Callable


class Signal:
    """``connect`` callables, ``emit`` calls them in order; ``disconnect`` removes one."""

    def __init__(self, *type_names: str) -> None:
        self._types = type_names  # documentation only: what emit passes
        self._slots: list[Callable[..., Any]] = []

    def connect(self, slot: Callable[..., Any]) -> None:
        if slot not in self._slots:
            self._slots.append(slot)

    def disconnect(self, slot: Callable[..., Any]) -> None:
        if slot in self._slots:
            self._slots.remove(slot)

    def emit(self, *args: Any) -> None:
        for slot in list(self._slots):
            slot(*args)
