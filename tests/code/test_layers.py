"""The import graph of anonbench: no module imports from a layer above its own, and no import cycle.

The layers, lowest first (docs/orchestration.md, "Code layers"):

0. core: everything not named below (config, io, coco, images, figures, tracking, anonymizers, data, ...);
1. analysis: ``anonbench.analysis`` (scoring, resampling, similarity, stale labels, SSIM summaries);
2. results: ``anonbench.study`` and ``anonbench.predict``, which read or make stage outputs with the analyses;
3. report: ``anonbench.report``, the study report's sections and their helpers;
4. stages: ``anonbench.stages``, one module per pipeline stage;
5. orchestration: ``anonbench.workspace``, ``anonbench.preflight``, ``anonbench.cli``, ``anonbench.__main__``.

Every import counts, also one inside a function (read from the source, as :mod:`anonbench.codebase` reads it).
"""

from __future__ import annotations

import ast
from pathlib import Path

from anonbench.codebase import SOURCE_ROOT, module_file

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("analysis", ("anonbench.analysis",)),
    ("results", ("anonbench.study", "anonbench.predict")),
    ("report", ("anonbench.report",)),
    ("stages", ("anonbench.stages",)),
    ("orchestration", ("anonbench.workspace", "anonbench.preflight", "anonbench.cli", "anonbench.__main__")),
)


def layer(module: str) -> int:
    """The layer of a dotted module name: 0 for core, else 1 + its index in LAYERS."""
    for level, (_, prefixes) in enumerate(LAYERS, start=1):
        if any(module == p or module.startswith(f"{p}.") for p in prefixes):
            return level
    return 0


def import_graph(root: Path = SOURCE_ROOT) -> dict[str, set[str]]:
    """Every anonbench module under ``root`` -> the modules it imports (``from m import f``: m.f if a module)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((root / "anonbench").rglob("*.py")):
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        targets = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("anonbench"):
                for alias in node.names:
                    named = f"{node.module}.{alias.name}"
                    targets.add(named if module_file(named, root) else node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("anonbench")}
        targets.discard(module)
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as the modules along it (first repeated at the end), or [] when the graph has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str]:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        state[module] = 2
        path.pop()
        return []

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return []


def test_no_module_imports_from_a_higher_layer() -> None:
    graph = import_graph()
    assert {"anonbench.analysis.cocoeval", "anonbench.report.sections", "anonbench.stages.report"} <= set(graph)
    upward = sorted(
        f"{m} ({layer(m)}) -> {t} ({layer(t)})" for m, targets in graph.items() for t in targets if layer(t) > layer(m)
    )
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_the_import_graph_has_no_cycle() -> None:
    assert cycle(import_graph()) == []


def test_the_checks_see_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    """Neither check is one that cannot fail: a core module importing a stage, and two modules importing each other."""
    package = tmp_path / "anonbench"
    (package / "stages").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "stages" / "__init__.py").write_text("")
    (package / "stages" / "report.py").write_text("from anonbench import io\n")
    (package / "io.py").write_text("def f():\n    from anonbench.stages.report import run\n")
    graph = import_graph(tmp_path)
    assert graph["anonbench.io"] == {"anonbench.stages.report"} and layer("anonbench.stages.report") > layer(
        "anonbench.io"
    )
    assert cycle(graph) == ["anonbench.io", "anonbench.stages.report", "anonbench.io"]
