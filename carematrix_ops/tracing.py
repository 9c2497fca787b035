"""Who leaked this photo? Find which protected original a leaked copy shows, then which
viewer's hidden mark it carries (``carematrix watermark trace``).

Every watermarked rendering is on record (media, viewer, minute) and the originals are in
the media store, so tracing is non-blind: the copy is aligned to its original and the
residual is correlated with each recorded viewer's pattern.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from carematrix.hsdb.media_store import Delivery, deliveries
from carematrix.watermark import TraceResult, similarity, trace

# A copy must resemble its original at least this much to be considered (0..1).
MIN_SIMILARITY = 0.5


@dataclass(frozen=True)
class TraceReport:
    media_id: str | None
    similarity: float
    delivery: Delivery | None
    result: TraceResult | None

    def summary(self, server_name: str, names: Callable[[str], str]) -> str:
        if self.media_id is None:
            return "No protected image on this server resembles this file."
        mxc = f"mxc://{server_name}/{self.media_id}"
        if self.delivery is None or self.result is None or not self.result.confident:
            return (
                f"This is a copy of {mxc} (similarity {self.similarity:.2f}), but no recorded "
                "viewer's mark is present with confidence."
            )
        when = datetime.fromtimestamp(self.delivery.minute).astimezone().strftime("%Y-%m-%d %H:%M %Z")
        score = self.result.scores[self.delivery.mark_id]
        return (
            f"Leaked copy of {mxc}: rendered for {names(self.delivery.user_id)} "
            f"({self.delivery.user_id}) at {when} (mark score {score:.1f}, similarity {self.similarity:.2f})."
        )


def trace_leak(
    leaked: bytes,
    txn: object,
    dialect: str,
    read_original: Callable[[str], bytes | None],
    mark_key: bytes,
) -> TraceReport:
    """Try every media that was ever served watermarked, best-resembling first."""
    by_media: dict[str, list[Delivery]] = {}
    for delivery in deliveries(txn, dialect):
        by_media.setdefault(delivery.media_id, []).append(delivery)
    ranked: list[tuple[float, str, bytes]] = []
    for media_id in by_media:
        original = read_original(media_id)
        if original is None:
            continue
        ranked.append((similarity(leaked, original), media_id, original))
    ranked.sort(key=lambda item: item[0], reverse=True)
    best: TraceReport = TraceReport(None, 0.0, None, None)
    for score, media_id, original in ranked:
        if score < MIN_SIMILARITY:
            break
        candidates = by_media[media_id]
        result = trace(leaked, original, mark_key, [d.mark_id for d in candidates])
        if result.confident and result.best is not None:
            delivery = next(d for d in candidates if d.mark_id == result.best)
            return TraceReport(media_id, score, delivery, result)
        if best.media_id is None:
            best = TraceReport(media_id, score, None, result)
    return best
