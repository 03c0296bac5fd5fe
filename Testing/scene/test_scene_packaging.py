"""The Slicer packaging that cannot run here but must stay in step with the code: the module's CMake
lists against the files on disk, and the widget names the module file uses against the .ui file."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

MODULE = Path(__file__).resolve().parents[2] / "DiffSegUncertainty"
ROOT = MODULE.parent


def _cmake_list(name: str) -> set[str]:
    text = (MODULE / "CMakeLists.txt").read_text()
    body = re.search(rf"set\({name}\s+(.*?)\)", text, re.S).group(1)
    entries = {line.split("#")[0].strip() for line in body.splitlines()} - {""}
    return {e.replace("${MODULE_NAME}", "DiffSegUncertainty") for e in entries}


def test_cmake_lists_every_python_file_of_the_lib():
    on_disk = {p.relative_to(MODULE).as_posix() for p in (MODULE / "DiffSegUncertaintyLib").rglob("*.py")
               if "__pycache__" not in p.parts}
    listed = _cmake_list("MODULE_PYTHON_SCRIPTS")
    assert "DiffSegUncertainty.py" in listed
    listed.discard("DiffSegUncertainty.py")
    assert sorted(on_disk - listed) == [], "add these to MODULE_PYTHON_SCRIPTS"
    assert sorted(listed - on_disk) == [], "these are listed in MODULE_PYTHON_SCRIPTS but do not exist"


def test_cmake_lists_every_resource():
    on_disk = {p.relative_to(MODULE).as_posix() for p in (MODULE / "Resources").rglob("*")
               if p.is_file() and p.name != ".gitkeep"}
    assert _cmake_list("MODULE_PYTHON_RESOURCES") == on_disk


def test_top_level_cmake_declares_the_extension():
    text = (ROOT / "CMakeLists.txt").read_text()
    for field in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS"):
        assert re.search(rf'set\(EXTENSION_{field} "[^"]+"\)', text), field
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    assert "add_subdirectory(DiffSegUncertainty)" in text
    assert (ROOT / "Resources" / "Icons" / "DiffSegUncertainty.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_widget_the_module_uses_is_in_the_ui_file():
    source = (MODULE / "DiffSegUncertainty.py").read_text()
    used = set()
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "ui" and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "self"):
            used.add(node.attr)
    assert {"sampleButton", "progressBar", "statusLabel", "exportButton"} <= used  # the parser works
    tree = ET.parse(MODULE / "Resources" / "UI" / "DiffSegUncertainty.ui")
    names = {w.get("name") for w in tree.iter("widget")}
    assert sorted(used - names) == [], "the module file uses widgets the .ui file does not have"


def test_requirements_cover_the_project_with_lower_bounds_and_leave_slicers_own_packages_out():
    """Every engine dependency Slicer lacks is installed at first use, with a lower bound the project's
    pin satisfies; numpy, scipy, SimpleITK (Slicer's own) and torch (PyTorchUtils) are never listed."""
    import tomllib

    from packaging.requirements import Requirement
    project = [Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    lines = [ln.split("#")[0].strip() for ln in (MODULE / "Resources" / "requirements.txt").read_text().splitlines()]
    listed = {Requirement(ln).name.lower(): Requirement(ln) for ln in lines if ln}
    slicer_owned = {"numpy", "scipy", "simpleitk", "torch"}
    assert not slicer_owned & set(listed)
    assert sorted(listed) == sorted(r.name.lower() for r in project if r.name.lower() not in slicer_owned)
    for req in project:
        if req.name.lower() in listed:
            spec = listed[req.name.lower()].specifier
            assert all(s.operator == ">=" for s in spec), f"{req}: lower bounds only"
            pinned = next(iter(req.specifier)).version
            assert spec.contains(pinned), f"the project's {req} is outside {spec}"


def test_the_scene_layer_imports_neither_torch_nor_qt():
    """Slicer loads the module at start-up, before torch is installed; Qt does not exist headless."""
    import subprocess
    import sys
    code = ("import sys, DiffSegUncertaintyLib.scene.logic, DiffSegUncertaintyLib.scene.app; "
            "bad = [m for m in ('torch', 'qt', 'ctk') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_module_and_what_it_imports_at_load_parse_as_python_3_9():
    """Slicer 5.8 (Python 3.9) loads every module at start-up: the module file and its load-time imports
    (the scene layer, engine.files.modelfile and engine.errors) must not break it; *Sample* then says that
    the sampler needs Slicer 5.10."""
    import ast
    files = [MODULE / "DiffSegUncertainty.py", *sorted((MODULE / "DiffSegUncertaintyLib" / "scene").glob("*.py")),
             MODULE / "DiffSegUncertaintyLib" / "engine" / "files" / "modelfile.py",
             MODULE / "DiffSegUncertaintyLib" / "engine" / "files" / "outputs.py",
             MODULE / "DiffSegUncertaintyLib" / "engine" / "files" / "__init__.py",
             MODULE / "DiffSegUncertaintyLib" / "engine" / "errors.py"]
    for path in files:
        source = path.read_text()
        ast.parse(source, filename=str(path), feature_version=(3, 9))
        if " | " in source:  # X | Y annotations are evaluated on 3.9 unless postponed
            assert "from __future__ import annotations" in source, path.name
