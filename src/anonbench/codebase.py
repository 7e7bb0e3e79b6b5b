"""The code a stage runs: its module and every anonbench module it imports, transitively.

dvc.yaml lists exactly these files as each stage's code deps (``tests/pipeline/test_dvc.py``
checks it), and a workspace keys each stage's stamp on their contents
(:func:`stage_code_digest`), so a change reruns the stages whose code changed and no other,
under DVC and on the cluster alike. The closure is read from the source, not from what is
imported at run time: an import inside a function counts too, one under ``if TYPE_CHECKING:`` does
not (it never runs). A module that runs the anonymizers (:data:`RUNS_ANONYMIZERS`) also imports what
anonbench's own entry points in :data:`anonbench.anonymizers.plugins.GROUP` name (the classic methods);
a plugin package's code is not anonbench's and is not counted (docs/plugins.md).
"""

from __future__ import annotations

import ast
import functools
import hashlib
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the folder holding the anonbench package
# Modules that call the installed anonymizers, and the entry point group those are loaded from.
RUNS_ANONYMIZERS = {"anonbench.stages.anonymize": "anonbench.anonymizers"}


def registered_modules(group: str) -> list[str]:
    """Modules anonbench's own distribution registers in entry point ``group`` (pyproject.toml)."""
    return sorted({p.module for p in entry_points(group=group) if p.dist is not None and p.dist.name == "anonbench"})


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` blocks."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))


def module_file(module: str, root: Path = SOURCE_ROOT) -> Path | None:
    """The source file of a dotted ``module`` under ``root`` (a package's ``__init__.py``), if it is there."""
    path = root / Path(*module.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def import_closure(module: str, root: Path = SOURCE_ROOT) -> set[Path]:
    """Source files of ``module`` and of every anonbench module it imports, transitively.

    Args:
        module: A dotted module name (``anonbench.stages.report``).
        root: The folder holding the ``anonbench`` package.

    Returns:
        The files; empty if ``module`` is not an anonbench module under ``root``.
    """
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = module_file(name, root)
        if path is None or path in seen:
            continue
        seen.add(path)
        if name in RUNS_ANONYMIZERS:
            todo += registered_modules(RUNS_ANONYMIZERS[name])
        for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("anonbench"):
                todo += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names if alias.name.startswith("anonbench")]
    return seen


@functools.cache
def stage_code_digest(stage: str, root: Path = SOURCE_ROOT) -> str:
    """SHA-256 of the code of ``anonbench <stage>``: the paths and contents of its import closure.

    Read once per process (a task asks for every cell of a fan-out); the code does not change under it.

    Args:
        stage: A stage (its module under ``anonbench.stages``).
        root: The folder holding the ``anonbench`` package.

    Raises:
        ValueError: For a stage without a module.
    """
    files = import_closure(f"anonbench.stages.{stage}", root)
    if not files:
        raise ValueError(f"no module anonbench.stages.{stage} under {root}")
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
