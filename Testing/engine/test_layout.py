"""The engine's import graph has no cycles (a module may be read top-down, docs/architecture.md), and the
benchmark's quality study never imports the speed benchmark (issue 13, item 6)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "DiffSegUncertainty" / "DiffSegUncertaintyLib" / "engine"


def engine_imports(path: Path) -> set[str]:
    """The engine modules a file imports, at module level or inside functions (``from .x import``,
    ``from . import x``, ``DiffSegUncertaintyLib.engine.x``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 1 and mod:
                out.add(mod.split(".")[0])
            elif node.level == 1:
                out.update(a.name for a in node.names)
            elif mod.startswith("DiffSegUncertaintyLib.engine."):
                out.add(mod.split(".")[2])
    return out


def test_the_engine_imports_form_no_cycle():
    graph = {p.stem: engine_imports(p) & {q.stem for q in ENGINE.glob("*.py")} for p in ENGINE.glob("*.py")}
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
    assert "pipeline" in graph["cli"] and "pipeline" in graph["evaluation"]  # the use case is the pipeline's


def test_quality_study_does_not_import_the_speed_benchmark():
    text = (ROOT / "training" / "bench" / "quality.py").read_text()
    assert "benchmark_sampling" not in text
