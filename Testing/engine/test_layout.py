"""The engine's import graph has no cycles (a module may be read top-down, docs/architecture.md), and the
benchmark's quality study never imports the speed benchmark (issue 13, item 6)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "DiffSegUncertainty" / "DiffSegUncertaintyLib" / "engine"


def module_name(path: Path) -> str:
    """engine/sampling/sampler.py -> "sampling.sampler"."""
    return ".".join(path.relative_to(ENGINE).with_suffix("").parts)


def engine_imports(path: Path, modules: set[str]) -> set[str]:
    """The engine modules a file imports, at module level or inside functions (relative imports at any
    depth, ``from . import x``, ``DiffSegUncertaintyLib.engine.x.y``), as dotted names below engine."""
    package = list(path.relative_to(ENGINE).parent.parts)
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package[:len(package) - (node.level - 1)] + ([node.module] if node.module else [])
            base = ".".join(p for p in base if p)
        elif (node.module or "").startswith("DiffSegUncertaintyLib.engine"):
            base = node.module.removeprefix("DiffSegUncertaintyLib.engine").lstrip(".")
        else:
            continue
        for alias in node.names:  # "from .files import volumes" names a module; "from .x import f" does not
            full = f"{base}.{alias.name}" if base else alias.name
            out.add(full if full in modules else base)
    return out & modules


def test_the_engine_imports_form_no_cycle():
    files = [p for p in ENGINE.rglob("*.py") if p.name != "__init__.py"]
    modules = {module_name(p) for p in files}
    graph = {module_name(p): engine_imports(p, modules) for p in files}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(path + [node, nxt])
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert "pipeline" in graph["cli"] and "pipeline" in graph["analysis.evaluation"]  # the use case
    # the layers inside the engine: networks know nothing of files, analysis or the use case
    for name, deps in graph.items():
        if name.startswith("networks."):
            assert all(d.startswith(("networks.", "sampling.diffusion", "errors")) for d in deps), (name, deps)


def test_quality_study_does_not_import_the_speed_benchmark():
    text = (ROOT / "training" / "bench" / "quality.py").read_text()
    assert "benchmark_sampling" not in text
