"""YAML parsing that remembers where every mapping key and list item came from.

Plain ``yaml.safe_load`` drops line numbers, but every policy error must name its line,
so containers are built as ``dict``/``list`` subclasses that carry them.

A plain file (no anchors, aliases, tags or merge keys — policies have none) is read
straight from libyaml's C parser events into those containers when PyYAML has libyaml:
several times faster than PyYAML's own parser, and without building the intermediate node
tree, whose hundred thousand objects for 5,000 staff would keep the garbage collector busy
in a process that reloads the policy beside its event loop. Any other file — and any file
libyaml rejects — is read by PyYAML's parser as before, so unusual YAML means the same and
every syntax error reads and points at the same line as it always has.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import (
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

# PyYAML built with libyaml has its C parser (CSafeLoader: that parser with PyYAML's safe
# resolver and scalar constructors).
LIBYAML = hasattr(yaml, "CSafeLoader")


class LineDict(dict[str, Any]):
    """A mapping with the 1-based line of itself (``line``) and of each key (``key_lines``)."""

    line: int = 0
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class LineList(list[Any]):
    """A list with the 1-based line of itself and of each item."""

    line: int = 0
    item_lines: list[int]

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _LineLoader, node: MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | float | bool) and key is not None:
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be plain text", key_node.start_mark
            )
        key = str(key)
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}'", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _LineLoader, node: SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


class _NotPlain(Exception):
    """The file uses YAML the fast reader leaves to PyYAML's loader."""


_LEFT_TO_PYYAML = {"tag:yaml.org,2002:merge", "tag:yaml.org,2002:value"}


def _line(event: Event) -> int:
    """The 1-based line an event starts on (libyaml's events always carry their marks)."""
    mark = event.start_mark
    return mark.line + 1 if mark is not None else 0


def _read_plain(text: str) -> Any:
    """The document as ``_LineLoader`` builds it, from parser events; raises ``_NotPlain``
    or a ``yaml.YAMLError`` for anything it does not read exactly alike."""
    reader = yaml.CSafeLoader(text)
    try:
        reader.get_event()  # stream start
        if reader.check_event(StreamEndEvent):
            return None
        reader.get_event()  # document start
        value = _read_value(reader, reader.get_event())
        reader.get_event()  # document end
        if not reader.check_event(StreamEndEvent):
            raise _NotPlain("more than one document")
        return value
    finally:
        reader.dispose()


def _read_value(reader: Any, event: Any) -> Any:
    if getattr(event, "anchor", None) is not None:
        raise _NotPlain("anchor or alias")
    if isinstance(event, ScalarEvent):
        if event.tag not in (None, "!"):
            raise _NotPlain("explicit tag")
        tag = reader.resolve(ScalarNode, event.value, event.implicit)
        construct = reader.yaml_constructors.get(tag)
        if construct is None or tag in _LEFT_TO_PYYAML:
            raise _NotPlain(tag)
        # The node's marks are libyaml's (yaml._yaml.Mark), which PyYAML's nodes take too.
        start: Any = event.start_mark
        end: Any = event.end_mark
        return construct(reader, ScalarNode(tag, event.value, start, end, event.style))
    if getattr(event, "tag", None) not in (None, "!"):
        raise _NotPlain("explicit tag")
    if isinstance(event, SequenceStartEvent):
        items = LineList()
        items.line = _line(event)
        items.item_lines = []
        while not reader.check_event(SequenceEndEvent):
            item = reader.get_event()
            items.item_lines.append(_line(item))
            items.append(_read_value(reader, item))
        reader.get_event()
        return items
    if isinstance(event, MappingStartEvent):
        mapping = LineDict()
        mapping.line = _line(event)
        mapping.key_lines = {}
        while not reader.check_event(MappingEndEvent):
            key_event = reader.get_event()
            if not isinstance(key_event, ScalarEvent):
                raise _NotPlain("a key that is not plain text")
            key = _read_value(reader, key_event)
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise _NotPlain("a key that is not plain text")
            key = str(key)
            if key in mapping:
                raise _NotPlain("duplicate key")
            mapping.key_lines[key] = _line(key_event)
            mapping[key] = _read_value(reader, reader.get_event())
        reader.get_event()
        return mapping
    raise _NotPlain(type(event).__name__)


class YamlSyntaxError(Exception):
    def __init__(self, line: int, message: str) -> None:
        self.line = line
        self.message = message
        super().__init__(f"line {line}: {message}")


def parse_yaml(text: str) -> Any:
    """Parse one YAML document; syntax errors become ``YamlSyntaxError`` with a line."""
    if LIBYAML:
        try:
            return _read_plain(text)
        except (_NotPlain, yaml.YAMLError):
            pass  # read, or reported, as PyYAML's own parser does it, below
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        problem = exc.problem or str(exc)
        if exc.context:
            problem = f"{problem} ({exc.context})"
        raise YamlSyntaxError(line, f"invalid YAML: {problem}") from exc
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(1, f"invalid YAML: {exc}") from exc
