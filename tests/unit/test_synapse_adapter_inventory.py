"""The Synapse adapter is complete: outside synapse_modules/adapter no code imports Synapse
beyond its module API, reads a private attribute of a Synapse object or queries a Synapse
table; the adapter's docstring lists every place with a guard test that exists, and
docs/architecture.md gives the same count."""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from pathlib import Path

import synapse

import synapse_modules.adapter

ROOT = Path(__file__).resolve().parents[2]
ADAPTER = ROOT / "synapse_modules" / "adapter"
# Every folder of code that runs in a CareMatrix process (tests are not product code).
PRODUCT = ("carematrix", "carematrix_ops", "synapse_modules", "appservice", "bridges", "bench")
MODULE_API = {"synapse.module_api", "synapse.module_api.errors"}


@functools.cache
def _parsed() -> list[tuple[Path, ast.Module]]:
    return [
        (path, ast.parse(path.read_text(), str(path)))
        for folder in PRODUCT
        for path in sorted((ROOT / folder).rglob("*.py"))
    ]


def product_files() -> Iterator[tuple[Path, ast.Module]]:
    """Every product module outside the adapter, parsed."""
    for path, tree in _parsed():
        if ADAPTER not in path.parents:
            yield path, tree


def places() -> list[tuple[int, str]]:
    doc = synapse_modules.adapter.__doc__ or ""
    items = re.split(r"\n\s*(\d+)\. ", doc.split("places:", 1)[1])
    return [(int(number), text) for number, text in zip(items[1::2], items[2::2], strict=True)]


def test_nothing_outside_the_adapter_imports_synapse_beyond_the_module_api():
    found = []
    for path, tree in product_files():
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            found += [
                f"{path.relative_to(ROOT)}:{node.lineno} {name}"
                for name in names
                if (name == "synapse" or name.startswith("synapse.")) and name not in MODULE_API
            ]
    assert found == []


def test_no_synapse_module_outside_the_adapter_reads_a_private_attribute_of_another_object():
    """``api._hs``, ``store._cache`` and the like: in the code that runs inside Synapse, a
    private attribute is read only off ``self`` (or ``cls``) outside the adapter."""
    found = []
    for path, tree in product_files():
        if path.parts[len(ROOT.parts)] != "synapse_modules":
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert found == []


def synapse_tables() -> set[str]:
    """Every table and view Synapse's own schema files create."""
    schema = Path(synapse.__file__).parent / "storage" / "schema"
    names: set[str] = set()
    pattern = re.compile(r"CREATE\s+(?:VIRTUAL\s+)?(?:TABLE|VIEW)\s+(?:IF\s+NOT\s+EXISTS\s+)?(?!IF\b)(\w+)", re.I)
    for path in schema.rglob("*"):
        if path.suffix in (".sql", ".py", ".postgres", ".sqlite"):
            names |= {name.lower() for name in pattern.findall(path.read_text(errors="replace"))}
    return names


def test_synapse_tables_are_queried_only_in_the_adapter():
    tables = synapse_tables()
    assert {"events", "event_json", "room_memberships", "current_state_events", "receipts_linearized"} <= tables
    sql_table = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE(?: IF NOT EXISTS)?)\s+(?!IF\b)(\w+)")
    found = []
    for path, tree in product_files():
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found += [
                    f"{path.relative_to(ROOT)}:{node.lineno} {name}"
                    for name in sql_table.findall(node.value)
                    if name.lower() in tables
                ]
    assert found == []


def test_the_adapter_docstring_lists_every_place_with_a_guard_test_that_exists():
    listed = places()
    assert [number for number, _ in listed] == list(range(1, len(listed) + 1))
    assert f"The {len(listed)} places:" in (synapse_modules.adapter.__doc__ or "")
    tests = ROOT / "tests"
    for number, text in listed:
        guards = re.search(r"\[(.+?)\]", text, re.S)
        assert guards, f"place {number} names no guard test"
        named = 0
        for group in guards.group(1).split(";"):
            file_and_names = group.strip().split(":", 1)
            where, names = (file_and_names if len(file_and_names) == 2 else ("test_synapse_adapter_live.py", group))
            path = ROOT / where.strip() if "/" in where else tests / "unit" / where.strip()
            source = path.read_text()
            for name in re.split(r"[,\s]+", names.strip()):
                assert f"def {name}(" in source, f"place {number}: no test {name} in {path.relative_to(ROOT)}"
                named += 1
        assert named, f"place {number} names no guard test"


def test_the_architecture_document_gives_the_same_count():
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert f"{len(places())} places" in text


def test_every_adapter_module_is_in_the_list():
    doc = synapse_modules.adapter.__doc__ or ""
    helpers = {"__init__.py", "wrapping.py"}
    for path in ADAPTER.glob("*.py"):
        if path.name not in helpers:
            assert re.search(rf"^{re.escape(path.name)}", doc, re.M), f"{path.name} is not in the adapter's list"
