"""Protected images' perceptual features and their lookup index, on any DB-API cursor in
SQLite or PostgreSQL (same conventions as :mod:`carematrix.hsdb.forward_store`: every
function takes the transaction's cursor and the dialect; nothing here commits).

``carematrix_protected_image (id, room_id, event_id, media_id, features, ts)``
    One row per image posted in a no-forward room: where it was posted, its media ID (the
    verification compares pixels with the original) and its packed features
    (:func:`pack`: about 2 KB). ``id`` is the 64-bit hash of event and media ID.
``carematrix_protected_image_bucket (bucket, image)``
    The lookup index: one row per locality-sensitive hash bucket of each indexed feature
    (:func:`carematrix.protect.perceptual.indexed_keys`, up to 120 per image: 40 features in three tables). The primary key
    *is* the index (``WITHOUT ROWID`` on SQLite), so a probe is one B-tree descent per
    bucket and returns the images filed under it.

``carematrix_protected_image_crowded (bucket)``
    Buckets that more than :data:`~carematrix.protect.perceptual.COMMON_BUCKET` images
    share (ECG grid paper, a printed form's rules, a film's edge): marked here, their index
    rows deleted, and never filed under again (:func:`record_image`).

A check (:func:`shortlisted`) is one statement: the database probes the candidate's buckets,
ranks the images found (shared buckets, the rarer the better, as
:func:`~carematrix.protect.perceptual.ranked`) and returns the features of the best few outside
the candidate's room. The decision itself needs the candidate's pixels and the originals, so
it runs outside the transaction (:func:`first_copied`), reading at most
:data:`MAX_ORIGINALS` originals.
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
CROWDED_TABLE = "carematrix_protected_image_crowded"
_CHUNK = 500
MAX_ORIGINALS = 3  # originals read and compared per check, at most
MAX_RENDERED = 2  # renderings a sender received, re-made and compared per check, at most
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
    already (a retried transaction), which changes nothing.

    A bucket that would hold more than :data:`~carematrix.protect.perceptual.COMMON_BUCKET`
    images is marked crowded and its rows are deleted: it tells nothing about which image a
    candidate copies (:func:`~carematrix.protect.perceptual.ranked` would weigh it next to
    nothing), and reading its rows on every check is what made lookups slow."""
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
    if not keys:
        return True
    crowded = set(_select_buckets(txn, dialect, f"SELECT bucket FROM {CROWDED_TABLE} WHERE bucket IN ({{}})", keys))
    keys = [k for k in keys if k not in crowded]
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
    full = _select_buckets(
        txn, dialect,
        f"SELECT bucket FROM {BUCKET_TABLE} WHERE bucket IN ({{}}) GROUP BY bucket HAVING count(*) > {P.COMMON_BUCKET}",
        keys,
    )
    if full:
        marks = ", ".join(["(?)"] * len(full))
        txn.execute(sql(f"INSERT INTO {CROWDED_TABLE} (bucket) VALUES {marks} ON CONFLICT DO NOTHING", dialect), full)
        txn.execute(sql(f"DELETE FROM {BUCKET_TABLE} WHERE bucket IN ({', '.join(['?'] * len(full))})", dialect), full)
    return True


def mark_crowded_buckets(txn: Any, dialect: str) -> int:
    """After a bulk load that bypassed :func:`record_image`: mark every bucket holding more
    than :data:`~carematrix.protect.perceptual.COMMON_BUCKET` images and delete its rows,
    leaving the index as filing the images one by one would have; the number marked."""
    check_dialect(dialect)
    txn.execute(
        f"INSERT INTO {CROWDED_TABLE} (bucket) SELECT bucket FROM {BUCKET_TABLE} "
        f"GROUP BY bucket HAVING count(*) > {P.COMMON_BUCKET} ON CONFLICT DO NOTHING"
    )
    marked = int(txn.rowcount)
    txn.execute(f"DELETE FROM {BUCKET_TABLE} WHERE bucket IN (SELECT bucket FROM {CROWDED_TABLE})")
    return marked


def _select_buckets(txn: Any, dialect: str, query: str, keys: Sequence[int]) -> list[int]:
    """``query`` (with ``{}`` where the keys' placeholders go) run over ``keys`` in chunks."""
    out: list[int] = []
    for start in range(0, len(keys), _CHUNK):
        chunk = list(keys[start : start + _CHUNK])
        txn.execute(sql(query.format(", ".join(["?"] * len(chunk))), dialect), chunk)
        out.extend(int(r[0]) for r in txn.fetchall())
    return out


def _binary(blob: bytes, dialect: str) -> Any:
    """``blob`` as a BYTEA parameter. Synapse's PostgreSQL engine refuses plain ``bytes``
    parameters (they are usually a mistake there), so they are wrapped explicitly."""
    if dialect != "postgres":
        return blob
    import psycopg2  # PostgreSQL only; Synapse's postgres extra installs it

    return psycopg2.Binary(blob)


def shortlisted(txn: Any, dialect: str, views: list[P.Features], room_id: str) -> list[StoredImage]:
    """The protected images outside ``room_id`` that the candidate (its
    :func:`~carematrix.protect.perceptual.candidate_views`) may copy, most likely first.

    One statement: the database probes the candidate's buckets, counts each bucket's images
    (its weight is one over that count) and each image's hits, and returns the features of the
    best few with :data:`~carematrix.protect.perceptual.MIN_BUCKET_HITS` hits, as
    :func:`~carematrix.protect.perceptual.ranked` would rank them. Only those rows travel back.
    An image of the candidate's own room may be among those it shares most with (a re-post
    there is fine), so a few more than the shortlist are ranked, then those are dropped."""
    check_dialect(dialect)
    keys = [int(k) for k in P.lookup_keys(views).tolist()]
    if not keys:
        return []
    if dialect == "postgres":
        probe = "bucket = ANY(?::bigint[])"
        params: list[Any] = ["{" + ",".join(map(str, keys)) + "}"]
    else:
        probe = f"bucket IN ({', '.join(['?'] * len(keys))})"
        params = list(keys)
    wider = 3 * P.SHORTLIST
    query = (
        "SELECT i.id, i.room_id, i.event_id, i.media_id, i.features, r.score FROM ("
        "  SELECT image, sum(CAST(1 AS DOUBLE PRECISION) / df) AS score FROM ("
        f"    SELECT image, count(*) OVER (PARTITION BY bucket) AS df FROM {BUCKET_TABLE} WHERE {probe}"
        f"  ) AS hit GROUP BY image HAVING count(*) >= {P.MIN_BUCKET_HITS}"
        f"  ORDER BY score DESC, image LIMIT {wider}"
        f") AS r JOIN {IMAGE_TABLE} AS i ON i.id = r.image WHERE i.room_id <> ?"
        f" ORDER BY r.score DESC, i.id LIMIT {P.SHORTLIST}"
    )
    txn.execute(sql(query, dialect), [*params, room_id])
    return [
        StoredImage(int(ident), room, event_id, media_id, unpack(bytes(blob)), float(score))
        for ident, room, event_id, media_id, blob, score in txn.fetchall()
    ]


def first_copied(
    candidates: list[StoredImage], views: list[P.Features], original_of: Callable[[StoredImage], np.ndarray | None],
    delivered_of: Callable[[StoredImage, np.ndarray], list[np.ndarray]] | None = None,
) -> tuple[StoredImage, P.Decision] | None:
    """The first shortlisted image the candidate copies (pure but for ``original_of``,
    which reads and decodes an original, only for an image whose features the candidate
    matches: run it off the event loop). Once :data:`MAX_ORIGINALS` originals were read
    and none was copied, the check ends: the images ranked below them are less likely
    still, and judging them by features alone could refuse another patient's image (the
    pixel comparison is what tells two films on one template apart).

    ``delivered_of`` gives the renderings of a protected image its sender received, from its
    original in grey (:func:`carematrix.protect.perceptual.decide`); at most :data:`MAX_RENDERED` are
    compared per check, however many candidates ask."""
    read = 0
    rendered = 0

    def counted(candidate: StoredImage) -> np.ndarray | None:
        nonlocal read
        read += 1
        return original_of(candidate)

    def renderings(candidate: StoredImage, original: np.ndarray) -> list[np.ndarray]:
        nonlocal rendered
        if delivered_of is None or rendered >= MAX_RENDERED:
            return []
        found = delivered_of(candidate, original)[: MAX_RENDERED - rendered]
        rendered += len(found)
        return found

    for candidate in candidates:
        if read >= MAX_ORIGINALS:
            break
        decision = P.decide(candidate.features, functools.partial(counted, candidate), views,
                            functools.partial(renderings, candidate) if delivered_of is not None else None)
        if decision.is_copy:
            return candidate, decision
    return None
