"""Fixtures for the scene-layer tests: a real (headless) MRML scene from slicer-core, a tiny untrained
model made with the engine's own helper, and an input volume with non-trivial geometry.

The sampler is always the real ``diffseg sample`` command in a background process; what runs slowly is
shared: one tiny model per session, one finished run per module.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from scene_helpers import GEOMETRY, SHAPE, load_volume

from DiffSegUncertaintyLib.engine import testing
from DiffSegUncertaintyLib.scene.app import create_headless_app


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return testing.make_tiny_model_folder(tmp_path_factory.mktemp("models") / "tiny3d", spatial_dims=3)


@pytest.fixture(scope="session")
def input_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "input.nrrd"
    return testing.write_volume(path, testing.blob_array(SHAPE)[0], **GEOMETRY)


@pytest.fixture
def app(tmp_path):
    return create_headless_app(cache_dir=str(tmp_path / "cache"))


@pytest.fixture
def volume(app, input_file):
    return load_volume(app, input_file)


