"""Model folders: ``model.json`` (the card) + ``model.safetensors`` (the weights).

Why this shape: the card is plain JSON so the Slicer scene layer can list and describe models before
torch is installed (this module imports torch only inside the functions that need it); the weights are
safetensors so loading a downloaded model never unpickles code; a sha256 in the card catches truncated
or swapped files, and the tensor names and shapes are checked against the rebuilt network so a card that
does not describe its weights fails with a message that names the tensor, not with a stack trace.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from ..errors import InputError  # torch-free: cards are readable before torch is installed

if TYPE_CHECKING:
    import torch

    from ..sampling.diffusion import DiffusionSegmenter

FORMAT_VERSION = 1
CARD_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
MODELS_ENV = "DIFFSEG_MODELS"
REQUIRED_FIELDS = ("format_version", "name", "method", "preset", "architecture", "sampling", "input",
                   "classes", "label_embedding", "weights")
LABEL_EMBEDDING = "2*onehot-1"
SHIPPED_MODELS = Path(__file__).resolve().parents[3] / "Resources" / "Models"
#: the sampler's precisions (sampler.sample), kept here, torch-free, for the CLI parser and the scene layer
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
#: what a caller may ask for: "auto" (the default, issue 16) resolves to one of PRECISIONS on the device
PRECISION_CHOICES: tuple[str, ...] = ("auto", *PRECISIONS)
#: hypotheses per image when a caller does not say (the M of GED_M in both papers), torch-free for the same reason
DEFAULT_SAMPLES = 16


class ModelFileError(InputError):
    """A model folder that cannot be used: missing, unreadable, or inconsistent with its weights."""


# -- writing ---------------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value


def save_model(model: "DiffusionSegmenter", folder: str | os.PathLike, *, name: str, method: str,
               preset: str, sampling: Any, inputs: dict[str, Any], classes: list[str],
               training: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
               half: bool = False) -> Path:
    """Write a model folder; returns its path.

    sampling: default SamplerConfig (or its fields as a dict). inputs: {"channels": [{"name",
    "modality"}], "size": [...], "preprocessing": {...}}. half stores floating weights as float16
    (half the download; loaded back as float32). The folder is written under a temporary name next to
    ``folder`` and renamed at the end, so a crash never leaves half a model that looks complete.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    arch = model.config_dict()
    if len(classes) != arch.get("num_classes", len(classes)):
        raise ValueError(f"{len(classes)} class names for a model with {arch['num_classes']} classes")
    channels = inputs.get("channels", [])
    if len(channels) != arch.get("in_channels", len(channels)):
        raise ValueError(f"{len(channels)} input channels described for a model with "
                         f"{arch['in_channels']} input channels")
    # clone: safetensors refuses tensors that share memory (tied weights, views)
    state = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    if half:
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    dtype = "float16" if half else str(next(iter(state.values())).dtype).replace("torch.", "")

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "name": name})
        card = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "method": method,
            "preset": preset,
            "architecture": arch,
            "sampling": _jsonable(sampling),
            "input": dict(inputs),
            "classes": list(classes),
            "label_embedding": LABEL_EMBEDDING,
            "training": training,
            "metrics": metrics,
            "weights": {"file": WEIGHTS_FILE, "sha256": _sha256(tmp / WEIGHTS_FILE), "dtype": dtype,
                        "tensors": len(state),
                        "parameters": int(sum(v.numel() for v in state.values()))},
        }
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


# -- reading ---------------------------------------------------------------------------------------

def roi_required(card: dict[str, Any]) -> bool:
    """Crop models (e.g. LIDC's 128x128 boxes around a nodule) were trained on a box around the target
    and need one to run: the card says so with ``input.roi_required``."""
    return bool(card.get("input", {}).get("roi_required", False))


def read_card(folder: str | os.PathLike) -> dict[str, Any]:
    """The card of a model folder (JSON only, no torch), with its required fields checked."""
    folder = Path(folder)
    path = folder / CARD_FILE
    if not folder.is_dir():
        raise ModelFileError(f"model folder {folder} does not exist")
    if not path.is_file():
        raise ModelFileError(f"{folder} is not a model folder: it has no {CARD_FILE}")
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"cannot read the model card {path}: {e}") from None
    if not isinstance(card, dict):
        raise ModelFileError(f"the model card {path} is not a JSON object")
    missing = [f for f in REQUIRED_FIELDS if f not in card]
    if missing:
        raise ModelFileError(f"the model card {path} lacks the field(s) {', '.join(missing)}")
    if card["format_version"] != FORMAT_VERSION:
        raise ModelFileError(f"{path} has card format {card['format_version']!r}; this version of "
                             f"diffseg reads format {FORMAT_VERSION}")
    arch = card["architecture"]
    for key in ("spatial_dims", "in_channels", "num_classes"):
        if not isinstance(arch, dict) or key not in arch:
            raise ModelFileError(f"the model card {path} has no architecture.{key}")
    if len(card["classes"]) != arch["num_classes"]:
        raise ModelFileError(f"{path}: {len(card['classes'])} class names but architecture.num_classes "
                             f"is {arch['num_classes']}")
    size = card["input"].get("size") if isinstance(card["input"], dict) else None
    if not isinstance(size, list) or len(size) != arch["spatial_dims"] or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size):
        raise ModelFileError(f"{path}: input.size must list {arch['spatial_dims']} positive whole numbers "
                             f"(voxels per axis), got {size!r}")
    channels = card["input"].get("channels", [])
    if len(channels) != arch["in_channels"]:
        raise ModelFileError(f"{path}: input.channels describes {len(channels)} channel(s) but "
                             f"architecture.in_channels is {arch['in_channels']}")
    if not isinstance(card["weights"], dict) or not {"file", "sha256"} <= set(card["weights"]):
        raise ModelFileError(f"{path}: weights must give file and sha256")
    return card


def verify_weights(folder: str | os.PathLike, card: dict[str, Any]) -> Path:
    """The weights file of a folder after checking it exists and matches the card's sha256."""
    path = Path(folder) / card["weights"]["file"]
    if not path.is_file():
        raise ModelFileError(f"the weights file {path} is missing")
    digest = _sha256(path)
    if digest != card["weights"]["sha256"]:
        raise ModelFileError(
            f"the weights file {path} is damaged or not the one the card describes (sha256 {digest[:12]}… "
            f"instead of {str(card['weights']['sha256'])[:12]}…, {path.stat().st_size} bytes): "
            "download or copy the model again")
    return path


def _check_tensors(path: Path, expected: dict[str, tuple[int, ...]], card: dict[str, Any]) -> None:
    """Tensor names and shapes of the file against the network the card builds."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise ModelFileError(f"{path} is not a readable safetensors file: {e}") from None
    hint = (f" — the weights do not fit the card's architecture ({card['method']} preset "
            f"{card['preset']!r}); wrong preset or wrong card?")
    missing = sorted(set(expected) - set(found))
    if missing:
        raise ModelFileError(f"{path} lacks {len(missing)} tensor(s), e.g. {missing[0]!r}{hint}")
    unexpected = sorted(set(found) - set(expected))
    if unexpected:
        raise ModelFileError(f"{path} has {len(unexpected)} unexpected tensor(s), e.g. "
                             f"{unexpected[0]!r}{hint}")
    for k, shape in expected.items():
        if found[k] != shape:
            raise ModelFileError(f"tensor {k!r} in {path} has shape {list(found[k])} but the network "
                                 f"needs {list(shape)}{hint}")


def load_model(folder: str | os.PathLike, device: "str | torch.device" = "cpu"
               ) -> tuple["DiffusionSegmenter", dict[str, Any]]:
    """Rebuild the network from its card, verify and load the weights (safetensors only), in eval mode."""
    import torch
    from safetensors.torch import load_file

    from ..networks import registry

    card = read_card(folder)
    path = verify_weights(folder, card)
    try:
        model = registry.build_model(card["method"], card["architecture"])
    except (ValueError, TypeError, KeyError) as e:
        raise ModelFileError(f"cannot build the {card['method']!r} network the card of {folder} "
                             f"describes: {e}") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    _check_tensors(path, expected, card)
    state = load_file(str(path), device="cpu")
    own = model.state_dict()
    state = {k: v.to(own[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    model.eval()
    return model.to(torch.device(device)), card


# -- finding ---------------------------------------------------------------------------------------

def search_dirs(extra_dirs: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Where models are looked for, first match wins: --models-dir, $DIFFSEG_MODELS, shipped folder."""
    dirs = [Path(d) for d in extra_dirs if str(d)]
    dirs += [Path(d) for d in os.environ.get(MODELS_ENV, "").split(os.pathsep) if d]
    dirs.append(SHIPPED_MODELS)
    return dirs


def find_models(extra_dirs: Iterable[str | os.PathLike] = ()) -> dict[str, Path]:
    """Model name (from its card) -> folder. A search folder may itself be a model folder or hold model
    folders one level down; unreadable cards are skipped (``diffseg models`` reports them)."""
    found: dict[str, Path] = {}
    for d in search_dirs(extra_dirs):
        if not d.is_dir():
            continue
        candidates = [d] if (d / CARD_FILE).is_file() else sorted(p for p in d.iterdir() if p.is_dir())
        for folder in candidates:
            try:
                card = read_card(folder)
            except ModelFileError:
                continue
            found.setdefault(str(card["name"]), folder)
    return found


def broken_models(extra_dirs: Iterable[str | os.PathLike] = ()) -> dict[Path, str]:
    """Folders that have a card that cannot be read, with the reason."""
    broken: dict[Path, str] = {}
    for d in search_dirs(extra_dirs):
        if not d.is_dir():
            continue
        candidates = [d] if (d / CARD_FILE).is_file() else sorted(p for p in d.iterdir() if p.is_dir())
        for folder in candidates:
            if (folder / CARD_FILE).is_file():
                try:
                    read_card(folder)
                except ModelFileError as e:
                    broken[folder] = str(e)
    return broken


def resolve_model(name_or_path: str | os.PathLike, extra_dirs: Iterable[str | os.PathLike] = ()
                  ) -> Path:
    """A model folder from a path (a folder with a card) or a model name in the search folders."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        read_card(path)
        return path
    models = find_models(extra_dirs)
    if str(name_or_path) in models:
        return models[str(name_or_path)]
    where = ", ".join(str(d) for d in search_dirs(extra_dirs))
    known = ", ".join(sorted(models)) or "none"
    raise ModelFileError(f"no model folder or model named {str(name_or_path)!r} (searched {where}; "
                         f"models found: {known})")
