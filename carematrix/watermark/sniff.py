"""Identify images by their magic bytes, never by file name or declared MIME type, because
both come from the uploader and decide which parser gets to see untrusted bytes."""

from __future__ import annotations

_PNG = b"\x89PNG\r\n\x1a\n"


def sniff_image(data: bytes) -> str | None:
    """``'jpeg'``, ``'png'``, ``'webp'`` or ``'gif'`` from the leading bytes, else ``None``."""
    head = bytes(data[:16])
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(_PNG):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def webp_is_lossless(data: bytes) -> bool:
    """Whether the first image chunk is VP8L, so a lossless source (a screenshot, a scan) is
    not degraded into lossy WebP by being marked."""
    pos = 12
    end = min(len(data), 1 << 20)
    while pos + 8 <= end:
        fourcc = data[pos : pos + 4]
        if fourcc == b"VP8L":
            return True
        if fourcc in (b"VP8 ", b"ANMF", b"ALPH"):
            return False
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        pos += 8 + size + (size & 1)
    return False
