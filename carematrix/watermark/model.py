"""The value types shared by rendering and tracing, kept free of imaging code so that callers
(the Synapse media module, the audit tooling) can import them cheaply."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Viewer:
    """Who a copy is rendered for. Everything here ends up printed on the image, so a photo of
    the screen still names the person who opened it."""

    name: str
    staff_number: str
    user_id: str
    minute: datetime


@dataclass(frozen=True)
class Rendered:
    data: bytes
    content_type: str


class MediaRejected(Exception):
    """Raised for anything that must not be served: corrupt data, not an image we handle,
    decompression bomb / too many pixels, absurd dimensions.

    ``reason`` is a short sentence a client can show; ``code`` a stable short id
    (``corrupt``, ``unsupported``, ``too_large``, ``bad_dimensions``) for callers to branch on.
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class TraceResult:
    """``scores`` are z-scores: under "this candidate did not mark the leak" each is roughly
    standard normal, so anything far above ~4 is not chance."""

    best: str | None
    scores: dict[str, float] = field(default_factory=dict)
    confident: bool = False
    aligned: bool = False
