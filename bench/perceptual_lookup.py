"""Perceptual no-forward lookup cost with ``stored`` protected images in the homeserver
database, on SQLite and PostgreSQL (part of ``python -m bench --only perceptual``).

The store holds :data:`REAL` protected images of the corpus (features computed, originals
kept as JPEG files as the media store would) and is filled up to ``stored`` with synthetic
ones. A synthetic image is 160 features drawn from the real images' features with about one
bit in seven flipped: its buckets are as unevenly used as real ones (text, grid paper and
film edges give many similar descriptors) without being copies of them. Each image's index
rows and packed features are written as :func:`~carematrix.hsdb.image_store.record_image`
writes them, in large batches.

Before the timed checks, :data:`WARMUP` other unrelated images (none of them among those
timed) are checked the same way and reported apart ("first checks"): a homeserver's
connections are long-lived, and the first checks after a start pay for filling the
database's caches (on PostgreSQL with its default 128 MB of shared buffers, the 100,000-image
bucket index is about 620 MB, and which parts of it checks keep needing is what they learn).
The warm-up images share no buckets with the timed ones beyond what any two images of the
same kinds share (grid paper, film edges, a form's rules).

Timed per checked image, in its own read transaction like the module's check: the bucket
probe and shortlist (:func:`~carematrix.hsdb.image_store.shortlisted`), then verification
against each shortlisted image, which reads and decodes that original from its file
(:func:`~carematrix.hsdb.image_store.first_copied`). Computing the checked image's own
features is reported apart (it does not depend on the store's size).
"""

from __future__ import annotations

import io
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.stats import summary
from carematrix.hsdb import image_store
from carematrix.hsdb.audit_store import sql
from carematrix.hsdb.migrations import upgrade
from carematrix.protect import perceptual as P
from carematrix.watermark.remake import received_grey, upright_size
from carematrix_ops.audit_db import AuditDb, connect
from carematrix_ops.pgadmin import create_database, database_url, drop_database, on_maintenance_db
from tests import image_corpus as corpus
from tests.ports import TEST_SERVER_URL

REAL = 200
QUERIES = 400
WARMUP = 400
_BATCH_IMAGES = 500
_FLIP = 1 / 7


def _real_images(
    work: Path, real: int, queries: int
) -> tuple[list[tuple[str, P.Features]], dict[str, Path], list[tuple[str, bytes]], list[bytes]]:
    """Protected (media ID, features), their original files, the checked images (copies of
    them, every transform in turn, and unrelated ones, half each) and the warm-up images
    (unrelated, none of them checked)."""
    images = corpus.protected_set(real)
    protected = []
    files = {}
    for n, (_kind, _seed, image) in enumerate(images):
        data = corpus.jpeg(image, 92)
        media_id = f"real{n:04d}"
        files[media_id] = work / media_id
        files[media_id].write_bytes(data)
        protected.append((media_id, P.protected_features(data)))
    rng = np.random.default_rng(11)
    transforms = list(corpus.TRANSFORMS.items())
    checks: list[tuple[str, bytes]] = []
    unrelated = corpus.unrelated_set(queries // 2 + WARMUP)
    for i in range(queries // 2):
        name, transform = transforms[i % len(transforms)]
        checks.append((f"copy ({name})", transform(images[i % real][2], rng)))
        checks.append(("unrelated", corpus.jpeg(unrelated[i][2], 85)))
    warmup = [corpus.jpeg(image, 85) for _kind, _seed, image in unrelated[queries // 2 :]]
    return protected, files, checks, warmup


def _fill(db: AuditDb, count: int, pool: np.ndarray, rng: np.random.Generator) -> float:
    """``count`` synthetic protected images; seconds taken."""
    started = time.perf_counter()
    points = np.column_stack([rng.uniform(10, 500, P.STORED_POINTS), rng.uniform(10, 380, P.STORED_POINTS),
                              rng.uniform(3, 40, P.STORED_POINTS)]).astype(np.float32)
    done = 0
    while done < count:
        n = min(_BATCH_IMAGES, count - done)
        images = []
        buckets = []
        for i in range(n):
            bits = pool[rng.integers(0, len(pool), P.STORED_POINTS)]
            flips = rng.random((P.STORED_POINTS, P.BITS)) < _FLIP
            bits = bits ^ (flips.astype(np.uint64) << np.arange(P.BITS, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)
            features = P.Features(points, bits, 512, 384)
            ident = image_store.image_id(f"$bulk{done + i}", f"bulk{done + i}")
            images.append((ident, f"!ward{(done + i) % 300}:hs", f"$bulk{done + i}", f"bulk{done + i}",
                           image_store.pack(features), 0))
            buckets.extend((int(k), ident) for k in P.indexed_keys(features).tolist())
        with db.transaction() as txn:
            if db.dialect == "postgres":  # COPY: the bulk load a restore would do
                txn.copy_expert(
                    f"COPY {image_store.IMAGE_TABLE} (id, room_id, event_id, media_id, features, ts) FROM STDIN",
                    io.StringIO("".join(f"{i}\t{r}\t{e}\t{m}\t\\\\x{b.hex()}\t{t}\n" for i, r, e, m, b, t in images)),
                )
                txn.copy_expert(
                    f"COPY {image_store.BUCKET_TABLE} (bucket, image) FROM STDIN",
                    io.StringIO("".join(f"{k}\t{i}\n" for k, i in dict.fromkeys(buckets))),
                )
                done += n
                continue
            for first in range(0, len(images), 100):
                chunk = images[first : first + 100]
                txn.execute(
                    sql(f"INSERT INTO {image_store.IMAGE_TABLE} (id, room_id, event_id, media_id, features, ts) VALUES "
                        + ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk)), db.dialect),
                    [v for row in chunk for v in row],
                )
            for first in range(0, len(buckets), 2000):
                chunk = buckets[first : first + 2000]
                txn.execute(
                    sql(f"INSERT INTO {image_store.BUCKET_TABLE} (bucket, image) VALUES "
                        + ", ".join(["(?, ?)"] * len(chunk)) + " ON CONFLICT DO NOTHING", db.dialect),
                    [v for row in chunk for v in row],
                )
        done += n
    return time.perf_counter() - started


Real = tuple[list[tuple[str, P.Features]], dict[str, Path], list[tuple[str, bytes]], list[bytes]]


def measure(dialect: str, url: str, stored: int, real_images: Real) -> dict[str, Any]:
    db = connect(url)
    try:
        upgrade(db.transaction, db.dialect)
        protected, files, checks, warmup = real_images
        for n, (media_id, features) in enumerate(protected):
            with db.transaction() as txn:
                image_store.record_image(txn, db.dialect, f"!protected{n % 20}:hs", f"$real{n}", media_id, features, 0)
        pool = np.concatenate([f.bits for _, f in protected])
        fill_s = _fill(db, max(0, stored - len(protected)), pool, np.random.default_rng(stored))
        with db.transaction() as txn:  # the bulk load bypassed record_image's marking
            crowded = image_store.mark_crowded_buckets(txn, db.dialect)
        if db.dialect == "postgres":
            # what autovacuum does after a bulk load: statistics, and the visibility map that
            # lets the probe read the bucket index alone (an index-only scan)
            import psycopg2

            maintenance = psycopg2.connect(url)
            maintenance.autocommit = True
            with maintenance.cursor() as cur:
                for table in (image_store.IMAGE_TABLE, image_store.BUCKET_TABLE):
                    cur.execute(f"VACUUM ANALYZE {table}")
                # and the bulk load's gigabyte of written pages flushed now, not by the
                # checkpointer while checks are timed (a restore's aftermath, once)
                cur.execute("CHECKPOINT")
            maintenance.close()
        with db.transaction(read_only=True) as txn:
            txn.execute(f"SELECT COUNT(*) FROM {image_store.IMAGE_TABLE}")
            images = int(txn.fetchone()[0])
            txn.execute(f"SELECT COUNT(*) FROM {image_store.BUCKET_TABLE}")
            rows = int(txn.fetchone()[0])

        sizes: dict[str, tuple[int, int]] = {}
        viewer = corpus.received_viewer()

        def original(candidate: image_store.StoredImage) -> np.ndarray | None:
            path = files.get(candidate.media_id)
            if path is None:
                return None
            data = path.read_bytes()
            sizes[candidate.media_id] = upright_size(data)
            return P.original_grey(data)

        def received(candidate: image_store.StoredImage, grey: np.ndarray) -> list[np.ndarray]:
            """The copy the sender received, made again as the homeserver does when the
            watermark cache no longer has it (from the original it has just read, whose
            header it kept): the sender is taken to have received every protected image (the
            dearest case)."""
            path = files.get(candidate.media_id)
            return [received_grey(grey, sizes[candidate.media_id], viewer, corpus.RECEIVED_KEY, corpus.RECEIVED_MARK)] if path else []

        first_ms: list[float] = []
        for data in warmup:  # reported apart: see the module docstring
            views = P.candidate_views(data)
            t0 = time.perf_counter()
            with db.transaction(read_only=True) as txn:
                found = image_store.shortlisted(txn, db.dialect, views, "!dm:hs")
            image_store.first_copied(found, views, original, received)
            first_ms.append((time.perf_counter() - t0) * 1000)
        features_ms: list[float] = []
        probe_ms: list[float] = []
        verify_ms: list[float] = []
        total_ms: list[float] = []
        shortlisted: list[int] = []
        outcome: dict[str, list[int]] = {}
        for kind, data in checks:
            t0 = time.perf_counter()
            views = P.candidate_views(data)
            t1 = time.perf_counter()
            with db.transaction(read_only=True) as txn:
                found = image_store.shortlisted(txn, db.dialect, views, "!dm:hs")
            t2 = time.perf_counter()
            copied = image_store.first_copied(found, views, original, received)
            t3 = time.perf_counter()
            features_ms.append((t1 - t0) * 1000)
            probe_ms.append((t2 - t1) * 1000)
            verify_ms.append((t3 - t2) * 1000)
            total_ms.append((t3 - t1) * 1000)
            shortlisted.append(len(found))
            label = "unrelated" if kind == "unrelated" else "copy"
            tally = outcome.setdefault(label, [0, 0])
            tally[0] += copied is not None
            tally[1] += 1
        return {
            "backend": dialect,
            "images": images,
            "index_rows": rows,
            "crowded_buckets": crowded,
            "warmup_checks": len(warmup),
            "first_checks_lookup": summary(first_ms) if first_ms else None,
            "fill_seconds": round(fill_s, 1),
            "candidate_features": summary(features_ms),
            "probe_and_shortlist": summary(probe_ms),
            "verification": summary(verify_ms),
            "lookup": summary(total_ms),
            "shortlisted_mean": round(float(np.mean(shortlisted)), 2),
            "refused": {k: f"{a}/{b}" for k, (a, b) in outcome.items()},
        }
    finally:
        db.close()


def format_result(r: dict[str, Any]) -> str:
    def line(label: str, s: dict[str, float]) -> str:
        return f"  {label:<22}: p50 {s['p50_ms']:.2f} ms  p99 {s['p99_ms']:.2f} ms  mean {s['mean_ms']:.2f} ms"

    return "\n".join([
        f"perceptual lookup on {r['backend']}: {r['images']:,} protected images, {r['index_rows']:,} index rows, "
        f"{r['crowded_buckets']:,} crowded buckets (filled in {r['fill_seconds']} s)",
        *([line(f"first {r['warmup_checks']} checks (others)", r["first_checks_lookup"])] if r["first_checks_lookup"] else []),
        line("lookup (probe+verify)", r["lookup"]),
        line("probe and shortlist", r["probe_and_shortlist"]),
        line("verification", r["verification"]),
        line("candidate features", r["candidate_features"]),
        f"  shortlisted per check: {r['shortlisted_mean']} (mean); refused: {r['refused']}",
    ])


def lookup_cost(
    stored: int, backends: tuple[str, ...] = ("sqlite", "postgres"), real: int = REAL, queries: int = QUERIES
) -> list[dict[str, Any]]:
    results = []
    work = Path(tempfile.mkdtemp(prefix="carematrix-perceptual-bench-"))
    try:
        real_images = _real_images(work, real, queries)
        for backend in backends:
            if backend == "sqlite":
                db_file = work / "homeserver.db"
                try:
                    results.append(measure("sqlite", str(db_file), stored, real_images))
                finally:
                    for path in work.glob("homeserver.db*"):
                        path.unlink()
            else:
                dbname = f"carematrix_perceptual_bench_{secrets.token_hex(4)}"
                on_maintenance_db(TEST_SERVER_URL, create_database, dbname)
                try:
                    results.append(measure("postgres", database_url(TEST_SERVER_URL, dbname), stored, real_images))
                finally:
                    on_maintenance_db(TEST_SERVER_URL, drop_database, dbname)
            print(format_result(results[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results
