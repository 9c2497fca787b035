"""Bytes to text, with a decoding failure reported where an admin can find it."""

from __future__ import annotations

import codecs

from carematrix.oncall.model import FeedError, FeedInvalid


def decode(data: bytes, encoding: str, source: str) -> str:
    """A UTF-8 byte-order mark is dropped because spreadsheet tools add one and it would
    otherwise become part of the first header or content line."""
    if codecs.lookup(encoding).name == "utf-8":
        encoding = "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        name = codecs.lookup(encoding).name.removesuffix("-sig").upper()
        raise FeedInvalid(
            [FeedError(f"{source}:{line}", f"not valid {name} text (byte {column} of the line)")]
        ) from exc
