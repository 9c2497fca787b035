"""The folder a module lives in says which process runs it; these tests keep that true.

Shared logic (``carematrix/``) is imported by Synapse, the appservice and the command line
alike, so it must not pull in one process's framework; a protocol adapter (``bridges/``) must
not know about Matrix or Synapse. Function-local imports count too: they run in whatever
process calls the function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("carematrix", "synapse_modules", "appservice", "bridges", "carematrix_ops")

#: package -> top-level names it must never import (anywhere in the module).
FORBIDDEN = {
    "carematrix": {"synapse", "mautrix", "aiohttp", "twisted", "synapse_modules", "appservice",
                   "bridges", "carematrix_ops", "tests", "bench"},
    "bridges": {"synapse", "mautrix", "twisted", "synapse_modules", "appservice",
                "carematrix_ops", "tests", "bench"},
    "synapse_modules": {"mautrix", "appservice", "bridges", "carematrix_ops", "tests", "bench"},
    "appservice": {"synapse", "twisted", "synapse_modules", "carematrix_ops", "tests", "bench"},
    "carematrix_ops": {"tests", "bench"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


MODULES = {module_name(p): p for p in source_files()}


def imported(tree: ast.AST, name: str, *, top_level_only: bool) -> set[str]:
    """Modules imported by one file; ``from pkg import sub`` counts as importing ``pkg.sub``
    when ``sub`` is a module of ours."""
    package = name if MODULES.get(name, Path()).name == "__init__.py" else name.rpartition(".")[0]
    nodes = ast.iter_child_nodes(tree) if top_level_only else ast.walk(tree)
    found: set[str] = set()
    for node in nodes:
        if top_level_only and isinstance(node, ast.If):
            # `if TYPE_CHECKING:` blocks never run
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in MODULES else base)
    return found


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_imports_only_what_its_process_has(path: Path) -> None:
    name = module_name(path)
    banned = FORBIDDEN[name.split(".")[0]]
    tree = ast.parse(path.read_text(), str(path))
    wrong = sorted(m for m in imported(tree, name, top_level_only=False) if m.split(".")[0] in banned)
    assert not wrong, f"{path.relative_to(ROOT)} runs in the {name.split('.')[0]} process but imports {wrong}"


def with_packages(importer: str, target: str) -> set[str]:
    """Importing ``a.b.c`` first runs ``a/__init__`` and ``a/b/__init__`` unless the importer is
    inside them already; a loop through a package's ``__init__`` is a loop all the same."""
    parts = target.split(".")
    chain = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    own = {".".join(importer.split(".")[:i]) for i in range(1, len(importer.split(".")) + 1)}
    return {m for m in chain - own if m in MODULES} | ({target} if target in MODULES else set())


def test_no_import_loops() -> None:
    graph = {
        name: {
            m
            for target in imported(ast.parse(p.read_text()), name, top_level_only=True)
            for m in with_packages(name, target)
        }
        for name, p in MODULES.items()
    }
    loops = strongly_connected(graph)
    assert not loops, "import loops: " + "; ".join(" -> ".join(sorted(c)) for c in loops)


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm; returns components with more than one module (or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                result.append(component)

    for v in graph:
        if v not in index:
            visit(v)
    return result


def test_the_contract_sees_a_violation() -> None:
    """The checker itself must notice a forbidden import (guards against a contract that
    silently passes because it parses nothing)."""
    tree = ast.parse("def f():\n    from synapse.module_api import ModuleApi\n")
    assert "synapse.module_api" in imported(tree, "carematrix.example", top_level_only=False)
    assert strongly_connected({"a": {"b"}, "b": {"a"}, "c": set()}) == [{"a", "b"}]
