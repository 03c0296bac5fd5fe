"""Methods by name: build a network from a model card's ``architecture`` entry, list presets.

Each method module (pgrd, hsrdiff) exposes ``PRESETS: dict[str, dict]`` and
``from_config(config: dict) -> DiffusionSegmenter``; ``model.config_dict()`` round-trips through it.
"""

from __future__ import annotations

import copy
import importlib
from typing import Any

from ..sampling.diffusion import DiffusionSegmenter

METHODS = ("pgrd", "hsrdiff")


def _module(method: str):
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: expected one of {', '.join(METHODS)}")
    return importlib.import_module(f"{__package__}.{method}")


def presets(method: str) -> dict[str, dict[str, Any]]:
    """The named presets of a method (deep copies, safe to modify)."""
    return copy.deepcopy(_module(method).PRESETS)


def preset_config(method: str, preset: str, **overrides: Any) -> dict[str, Any]:
    """A preset's configuration with some fields replaced (e.g. spatial_dims=3, num_classes=4)."""
    table = presets(method)
    if preset not in table:
        raise ValueError(f"{method} has no preset {preset!r}: choose one of {', '.join(table)}")
    cfg = table[preset]
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ValueError(f"{method} preset {preset!r} has no field(s) {', '.join(sorted(unknown))}")
    cfg.update(overrides)
    return cfg


def build_model(method: str, config: dict[str, Any]) -> DiffusionSegmenter:
    """A fresh (untrained) network of a method from its configuration dict."""
    return _module(method).from_config(dict(config))
