"""Where an event's content carries media and text, read from whatever a client sent.

Event content arrives as Synapse's frozen mapping (``immutabledict``, lists as tuples) or as
anything else a client managed to send, so nothing assumes ``dict``/``list`` types and nothing
raises on malformed content: content that can't be read yields fewer sources, never an
exception in the send path.

Media: every ``mxc://`` URI in the content: the known media fields (``url``,
``info.thumbnail_url``, ``file.url``, ``info.thumbnail_file.url``, the same inside
``m.new_content``) and any other string that is or contains one (inline images in
``formatted_body``, a URI pasted as text), because whoever gets the URI can fetch the file.

Text: ``body``, ``filename`` and ``formatted_body`` of the content and of its
``m.new_content``, each split into segments: the whole text, each quoted block (reply header
removed) and the text outside the quotes, so "> protected text" plus a comment, and reply
fallbacks that carry the protected message, can match exactly.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from html.parser import HTMLParser
from typing import Any

# Synapse refuses events over 64 KiB, so no honest source is longer; this only stops a
# caller outside Synapse from feeding megabytes into the hashing loop.
_MAX_SOURCE_CHARS = 65_536
_MAX_WALK_NODES = 10_000  # values visited when looking for mxc URIs anywhere in the content
_MAX_WALK_DEPTH = 32

# In free text: server-name and media-ID characters only, so "mxc://hs/abc." or "(mxc://…)"
# yield the URI, and "mxc://hs/a/b" (no media ID has a slash) yields nothing.
_MXC_IN_TEXT = re.compile(
    r"mxc://[A-Za-z0-9.\-:\[\]]+/[A-Za-z0-9_\-]+(?![A-Za-z0-9_\-/])", re.IGNORECASE
)
# "> <@alice:example.org> text" / "> * <@alice:example.org> waves": the reply fallback header
_REPLY_HEADER = re.compile(r"^\s*(?:\*\s*)?<@[^<>\s]*>\s?")


def _get(mapping: Any, key: str) -> Any:
    """``mapping[key]`` if ``mapping`` is a mapping that has it; None for anything odd."""
    if not isinstance(mapping, Mapping):
        return None
    try:
        return mapping.get(key)
    except Exception:  # a hostile Mapping implementation must not break the send path
        return None


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray)


def _parse_mxc(value: str) -> str | None:
    """``mxc://server/id`` in canonical spelling, or None when it is not one."""
    value = value.strip()
    if value[:6].lower() != "mxc://":
        return None
    rest = value[6:].split("?", 1)[0].split("#", 1)[0]
    server, sep, media_id = rest.partition("/")
    if not server or not sep or not media_id or "/" in media_id:
        return None
    if not (rest.isascii() and rest.isprintable()) or " " in rest:
        return None  # server names and media IDs are printable ASCII; nothing else is fetchable
    return f"mxc://{server}/{media_id}"


def _known_media_fields(content: Any) -> Iterator[Any]:
    yield _get(content, "url")
    info = _get(content, "info")
    yield _get(info, "thumbnail_url")
    yield _get(_get(content, "file"), "url")
    yield _get(_get(info, "thumbnail_file"), "url")


def _walk_strings(content: Any) -> Iterator[str]:
    """Every string value in nested mappings/sequences, breadth-first, with bounded work."""
    queue: deque[tuple[Any, int]] = deque([(content, 0)])
    visited = 0
    while queue and visited < _MAX_WALK_NODES:
        value, depth = queue.popleft()
        visited += 1
        if isinstance(value, str):
            yield value
        elif depth >= _MAX_WALK_DEPTH:
            continue
        elif isinstance(value, Mapping):
            try:
                children = list(value.values())
            except Exception:
                continue
            queue.extend((child, depth + 1) for child in children)
        elif _is_sequence(value):
            try:
                children = list(value)
            except Exception:
                continue
            queue.extend((child, depth + 1) for child in children)


def media_uris(content: Mapping[str, Any]) -> list[str]:
    """Every ``mxc://`` URI in the content, known media fields first, without duplicates.

    The caller looks these up to find the uploads' SHA-256 hashes (for ``h:`` fingerprints);
    the walk over all other values catches inline images, avatars and pasted URIs too.
    """
    found: dict[str, None] = {}
    new_content = _get(content, "m.new_content")
    for candidate in (*_known_media_fields(content), *_known_media_fields(new_content)):
        if isinstance(candidate, str):
            uri = _parse_mxc(candidate)
            if uri:
                found.setdefault(uri, None)
    for value in _walk_strings(content):
        if "mxc://" not in value.lower():
            continue
        uri = _parse_mxc(value)
        if uri:
            found.setdefault(uri, None)
            continue
        for match in _MXC_IN_TEXT.findall(value[:_MAX_SOURCE_CHARS]):
            uri = _parse_mxc(match)
            if uri:
                found.setdefault(uri, None)
    return list(found)


class _HtmlText(HTMLParser):
    """Text of an HTML ``formatted_body``: all of it, each blockquote, and what is outside.

    Reply fallbacks (``<mx-reply>``) are kept, not dropped: a reply in another room that
    carries protected text in its fallback leaks it like any copy. Their header ("In reply
    to @alice") counts as text of the whole body but not of the quoted block, so the block
    equals the message it quotes.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.outside: list[str] = []
        self.quotes: list[list[str]] = []
        self._quote_depth = 0
        self._reply_depth = 0
        self._reply_header = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "mx-reply":
            self._reply_depth += 1
            self._reply_header = True
        elif tag == "blockquote":
            if self._quote_depth == 0:
                self.quotes.append([])
            self._quote_depth += 1
        elif tag == "br" and self._reply_header:
            self._reply_header = False

    def handle_endtag(self, tag: str) -> None:
        if tag == "mx-reply" and self._reply_depth:
            self._reply_depth -= 1
            self._reply_header = False
        elif tag == "blockquote" and self._quote_depth:
            self._quote_depth -= 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._quote_depth and self.quotes:
            if not (self._reply_depth and self._reply_header):
                self.quotes[-1].append(data)
        elif not self._reply_depth:
            self.outside.append(data)


def _html_segments(html: str) -> list[str]:
    parser = _HtmlText()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # HTMLParser is lenient, but the send path must never fail on HTML
        pass
    return [
        "".join(parser.text),
        "".join(parser.outside),
        *("".join(q) for q in parser.quotes),
    ]


def _plain_segments(body: str) -> list[str]:
    """The body, each "> " quoted block (reply header removed) and the text outside them."""
    outside: list[str] = []
    quotes: list[list[str]] = []
    in_quote = False
    for line in body.splitlines():
        stripped = line.lstrip()
        if stripped.startswith(">"):
            inner = stripped.lstrip("> \t")
            if not in_quote:
                quotes.append([])
                inner = _REPLY_HEADER.sub("", inner, count=1)
            quotes[-1].append(inner)
            in_quote = True
        else:
            outside.append(line)
            in_quote = False
    if not quotes:
        return [body]
    return [body, "\n".join(outside), *("\n".join(q) for q in quotes)]


# A voice message's body is the client's fixed label ("Voice message" in Element), never what
# was said: as text it would be one fingerprint shared by every voice message, and the first
# one in a ward room would make all others elsewhere look like forwards. The recording itself
# is protected by its file (URI and bytes), its words by the transcript (carematrix.voice).
_VOICE_FLAG = "org.matrix.msc3245.voice"


def text_sources(content: Any) -> Iterator[tuple[str, bool]]:
    """(text, is_html) for each text source of the content and of its ``m.new_content``
    (none from a voice message's label)."""
    for part in (content, _get(content, "m.new_content")):
        if _get(part, "msgtype") == "m.audio" and _get(part, _VOICE_FLAG) is not None:
            continue
        for key in ("body", "filename"):
            value = _get(part, key)
            if isinstance(value, str) and value:
                yield value[:_MAX_SOURCE_CHARS], False
        value = _get(part, "formatted_body")
        if isinstance(value, str) and value:
            yield value[:_MAX_SOURCE_CHARS], True


def text_segments(source: str, is_html: bool) -> list[str]:
    """The whole text of a source first, then the text outside its quotes and each quoted block
    (a plain text without quotes is just itself)."""
    return _html_segments(source) if is_html else _plain_segments(source)
