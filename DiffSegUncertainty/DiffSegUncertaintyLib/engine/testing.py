"""Helpers for tests (this project's and others'): tiny untrained model folders and small volumes.

Why in the package rather than in a conftest: the CLI, scene and training tests all need the same
fixtures, and importing a module is simpler and clearer than sharing pytest fixtures across folders.
Everything here is small enough to run on two CPU cores in a second or two.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import SimpleITK as sitk

if TYPE_CHECKING:  # torch is imported where it is used: reading cards must not need it
    import torch

TINY_SIZE = {2: [16, 16], 3: [16, 16, 16]}


def make_tiny_model_folder(path: str | os.PathLike, method: str = "hsrdiff", spatial_dims: int = 2,
                           in_channels: int = 1, num_classes: int = 2, *, name: str | None = None,
                           size: Sequence[int] | None = None,
                           preprocessing: dict[str, Any] | list | None = None,
                           sampling: dict[str, Any] | None = None, seed: int = 0,
                           half: bool = False, config: dict[str, Any] | None = None) -> Path:
    """Build the method's "tiny" preset untrained (weights from ``seed``) and save it as a model folder
    at ``path``; returns the folder. Default sampling: the method's defaults with 3 steps. ``config``
    replaces preset fields (e.g. a short schedule)."""
    import torch

    from .networks import registry
    from .files.modelfile import save_model

    torch.manual_seed(seed)
    cfg = registry.preset_config(method, "tiny", spatial_dims=spatial_dims, in_channels=in_channels,
                                 num_classes=num_classes, **(config or {}))
    model = registry.build_model(method, cfg)
    module = registry._module(method)
    samp = dict(getattr(module, "DEFAULT_SAMPLING", {}))
    samp.update({"steps": 3} if sampling is None else sampling)
    name = name or Path(path).name
    classes = ["background"] + ([f"class {c}" for c in range(1, num_classes)] if num_classes > 2
                                else ["lesion"])
    inputs = {
        "channels": [{"name": f"channel {c}", "modality": "MR"} for c in range(in_channels)],
        "size": list(size or TINY_SIZE[spatial_dims]),
        "preprocessing": preprocessing if preprocessing is not None else {"kind": "zscore",
                                                                         "nonzero": False},
    }
    return save_model(model, path, name=name, method=method, preset="tiny", sampling=samp,
                      inputs=inputs, classes=classes,
                      training={"data": "none (untrained test model)", "command": "testing.py"},
                      metrics=None, half=half)


def perturbed_tiny_model(method: str = "hsrdiff", seed: int = 0, **overrides: Any):
    """The method's "tiny" preset (``overrides`` replace fields) with every parameter perturbed, in eval
    mode: MONAI zero-initialises some convolutions (the second of each res block), which would make the
    network nearly trivial and hide whether a feature reaches the output."""
    import torch

    from .networks import registry

    torch.manual_seed(seed)
    model = registry.build_model(method, registry.preset_config(method, "tiny", **overrides))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def random_batch(spatial: Sequence[int] = (16, 16), cin: int = 1, classes: int = 2, seed: int = 0,
                 batch: int = 2) -> tuple["torch.Tensor", "torch.Tensor"]:
    """A seeded (image (B, cin, *spatial), integer labels (B, *spatial)) pair for network tests."""
    import torch

    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, cin, *spatial, generator=g)
    labels = torch.randint(0, classes, (batch, *spatial), generator=g)
    return image, labels


def blob_array(shape: Sequence[int], seed: int = 0, channels: int = 1) -> np.ndarray:
    """A smooth bright blob plus noise, (channels, *shape) float32: something non-constant to segment."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum(g ** 2 for g in grids)
    out = [100 * np.exp(-r2 / (0.3 + 0.1 * c)) + rng.normal(0, 5, shape) for c in range(channels)]
    return np.stack(out).astype(np.float32)


def write_volume(path: str | os.PathLike, array: np.ndarray, spacing: Sequence[float] | None = None,
                 origin: Sequence[float] | None = None, direction: Sequence[float] | None = None
                 ) -> Path:
    """Write an array (SimpleITK order, e.g. (k, j, i)) with the given geometry; returns the path."""
    img = sitk.GetImageFromArray(np.asarray(array))
    if spacing is not None:
        img.SetSpacing([float(s) for s in spacing])
    if origin is not None:
        img.SetOrigin([float(o) for o in origin])
    if direction is not None:
        img.SetDirection([float(d) for d in direction])
    sitk.WriteImage(img, str(path))
    return Path(path)


#: Orientations worth testing: identity, permuted + flipped axes, and an oblique rotation.
ORIENTATIONS: dict[str, dict[str, Any]] = {
    "identity": {"spacing": (1.0, 1.0, 1.0), "origin": (0.0, 0.0, 0.0),
                 "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1)},
    "permuted-flipped-anisotropic": {"spacing": (0.8, 1.3, 2.5), "origin": (-12.5, 30.0, 7.25),
                                     "direction": (0, 0, -1, 1, 0, 0, 0, -1, 0)},
    "oblique": {"spacing": (0.7, 0.7, 3.0), "origin": (5.0, -3.0, 100.0),
                "direction": tuple(np.array([[0.8660254, -0.5, 0.0], [0.5, 0.8660254, 0.0],
                                             [0.0, 0.0, 1.0]]).ravel())},
}


def diffseg_command() -> list[str]:
    """How to start the real command: the installed ``diffseg`` script next to this Python, else
    ``python -m DiffSegUncertaintyLib.engine.cli``."""
    exe = Path(sys.executable).with_name("diffseg")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "DiffSegUncertaintyLib.engine.cli"]


def run_diffseg(*args: str | os.PathLike, timeout: float = 300, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess:
    """Run ``diffseg ARGS`` to completion, capturing text output (one torch thread: tiny models)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([*diffseg_command(), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env)
