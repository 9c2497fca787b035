"""Protected images' perceptual features and their lookup index, on any DB-API cursor in
SQLite or PostgreSQL (same conventions as :mod:`carematrix.hsdb.forward_store`: every
function takes the transaction's cursor and the dialect; nothing here commits).

``carematrix_protected_image (id, room_id, event_id, media_id, features, ts)``
    One row per image posted in a no-forward room: where it was posted, its media ID (the
    verification compares pixels with the original) and its packed features
    (:func:`pack`: about 2 KB). ``id`` is the 64-bit hash of event and media ID.
``carematrix_protected_image_bucket (bucket, image)``
    The lookup index: one row per locality-sensitive hash bucket of each indexed feature
    (:func:`carematrix.protect.perceptual.indexed_keys`, 160 per image). The primary key
    *is* the index (``WITHOUT ROWID`` on SQLite), so a probe is one B-tree descent per
    bucket and returns the images filed under it.

A check (:func:`shortlisted`) probes the candidate's buckets in one statement on PostgreSQL
(``= ANY(array)``) or in chunks of 500 on SQLite, ranks the images found in Python
(:func:`~carematrix.protect.perceptual.ranked`: shared buckets, the rarer the better), keeps
the best few outside the candidate's room and reads their features. The decision itself needs the candidate's pixels and the
originals, so it runs outside the transaction (:func:`carematrix.protect.perceptual.decide`).
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from carematrix.hsdb.audit_store import check_dialect, sql
from carematrix.protect import perceptual as P

IMAGE_TABLE = "carematrix_protected_image"
BUCKET_TABLE = "carematrix_protected_image_bucket"
_CHUNK = 500
_FORMAT = 1
_HEADER = struct.Struct(">BHHH")  # format, width, height, number of features
_FIXED = 32.0  # positions and sizes are kept in 1/32 pixel of the work image


@dataclass(frozen=True)
class StoredImage:
    """A protected image the candidate may copy: where it was posted and its features."""

    id: int
    room_id: str
    event_id: str
    media_id: str
    features: P.Features
    score: float  # how strongly the lookup pointed at it (perceptual.ranked)


def image_id(event_id: str, media_id: str) -> int:
    digest = hashlib.blake2b(f"{event_id}\0{media_id}".encode(), digest_size=8).digest()
    value = int.from_bytes(digest, "big")
    return value - (1 << 64) if value >= 1 << 63 else value


def pack(features: P.Features) -> bytes:
    """Features as bytes: header, then x, y, size as uint16 in 1/32 pixel, then the bits."""
    n = len(features)
    fixed = np.clip(np.round(features.points * _FIXED), 0, 65535).astype(">u2")
    return (
        _HEADER.pack(_FORMAT, features.width, features.height, n)
        + fixed.tobytes()
        + features.bits.astype(">u8").tobytes()
    )


def unpack(blob: bytes) -> P.Features:
    version, width, height, n = _HEADER.unpack_from(blob)
    if version != _FORMAT:
        raise ValueError(f"unknown packed-features format {version}")
    start = _HEADER.size
    points = np.frombuffer(blob, ">u2", n * 3, start).reshape(n, 3).astype(np.float32) / _FIXED
    bits = np.frombuffer(blob, ">u8", n, start + n * 6).astype(np.uint64)
    return P.Features(points, bits, width, height)


def record_image(
    txn: Any, dialect: str, room_id: str, event_id: str, media_id: str, features: P.Features, ts_ms: int
) -> bool:
    """File a protected image under its buckets; False when this event's image was filed
    already (a retried transaction), which changes nothing."""
    check_dialect(dialect)
    ident = image_id(event_id, media_id)
    blob = pack(features)
    txn.execute(
        sql(
            f"INSERT INTO {IMAGE_TABLE} (id, room_id, event_id, media_id, features, ts) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            dialect,
        ),
        (ident, room_id, event_id, media_id, _binary(blob, dialect), int(ts_ms)),
    )
    if txn.rowcount == 0:
        return False
    keys = sorted(P.indexed_keys(features).tolist())
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        txn.execute(
            sql(
                f"INSERT INTO {BUCKET_TABLE} (bucket, image) VALUES {', '.join(['(?, ?)'] * len(chunk))} "
                "ON CONFLICT DO NOTHING",
                dialect,
            ),
            [v for k in chunk for v in (k, ident)],
        )
    return True


def _binary(blob: bytes, dialect: str) -> Any:
    """``blob`` as a BYTEA parameter. Synapse's PostgreSQL engine refuses plain ``bytes``
    parameters (they are usually a mistake there), so they are wrapped explicitly."""
    if dialect != "postgres":
        return blob
    import psycopg2  # PostgreSQL only; Synapse's postgres extra installs it

    return psycopg2.Binary(blob)


def bucket_rows(txn: Any, dialect: str, keys: Sequence[int]) -> list[tuple[int, int]]:
    """(bucket, protected image id) for every image filed under one of ``keys``, except
    buckets holding more than :data:`~carematrix.protect.perceptual.COMMON_BUCKET` images:
    those say nothing about which image was copied (:func:`~carematrix.protect.perceptual.ranked`
    would weigh them next to nothing), and reading all their rows is what made lookups
    slow. The database stops reading a bucket after one row more than that."""
    if not keys:
        return []
    keys = [int(k) for k in keys]
    cap = P.COMMON_BUCKET + 1
    if dialect == "postgres":
        txn.execute(
            f"SELECT k, b.image FROM unnest(%s::bigint[]) AS k, "
            f"LATERAL (SELECT image FROM {BUCKET_TABLE} WHERE bucket = k LIMIT {cap}) AS b",
            ("{" + ",".join(map(str, keys)) + "}",),
        )
        found = [(int(b), int(i)) for b, i in txn.fetchall()]
    else:
        found = []
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            txn.execute(
                f"SELECT bucket, image FROM (SELECT bucket, image, "
                f"row_number() OVER (PARTITION BY bucket) AS n FROM {BUCKET_TABLE} "
                f"WHERE bucket IN ({', '.join(['?'] * len(chunk))})) WHERE n <= {cap}",
                chunk,
            )
            found.extend((int(b), int(i)) for b, i in txn.fetchall())
    counts: dict[int, int] = {}
    for bucket, _ in found:
        counts[bucket] = counts.get(bucket, 0) + 1
    return [(b, i) for b, i in found if counts[b] <= P.COMMON_BUCKET]


def shortlisted(txn: Any, dialect: str, views: list[P.Features], room_id: str) -> list[StoredImage]:
    """The protected images outside ``room_id`` that the candidate (its
    :func:`~carematrix.protect.perceptual.candidate_views`) may copy, most likely first."""
    check_dialect(dialect)
    ranked = P.ranked(bucket_rows(txn, dialect, P.lookup_keys(views).tolist()))
    # an image of the candidate's own room may be among those it shares most with (a
    # re-post there is fine): read a few more than the shortlist, then drop those
    scores = dict(ranked[: 3 * P.SHORTLIST])
    wider = list(scores)
    if not wider:
        return []
    marks = ", ".join(["?"] * len(wider))
    txn.execute(
        sql(f"SELECT id, room_id, event_id, media_id, features FROM {IMAGE_TABLE} WHERE id IN ({marks})", dialect),
        wider,
    )
    rows = {int(r[0]): r for r in txn.fetchall()}
    out: list[StoredImage] = []
    for ident in wider:
        row = rows.get(ident)
        if row is None or row[1] == room_id:
            continue
        out.append(StoredImage(ident, row[1], row[2], row[3], unpack(bytes(row[4])), scores[ident]))
        if len(out) == P.SHORTLIST:
            break
    return out


def first_copied(
    candidates: list[StoredImage], views: list[P.Features], original_of: Callable[[StoredImage], np.ndarray | None]
) -> tuple[StoredImage, P.Decision] | None:
    """The first shortlisted image the candidate copies (pure but for ``original_of``,
    which reads and decodes an original, only for an image whose features the candidate
    matches: run it off the event loop)."""
    for candidate in candidates:
        decision = P.decide(candidate.features, functools.partial(original_of, candidate), views)
        if decision.is_copy:
            return candidate, decision
    return None
