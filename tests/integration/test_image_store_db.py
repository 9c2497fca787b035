"""Protected images' features in the homeserver database (carematrix/hsdb/image_store.py) on
real SQLite and PostgreSQL: filed once, found from a copy, never from the image's own room."""

from __future__ import annotations

from functools import cache

import numpy as np

from carematrix.hsdb import image_store
from carematrix.protect import perceptual
from tests import image_corpus as corpus

WARD = "!ward:hospital.example"
DM = "!dm:hospital.example"


@cache
def film() -> tuple[bytes, perceptual.Features]:
    data = corpus.jpeg(corpus.chest_film(31, template=2), 92)
    return data, perceptual.protected_features(data)


def test_a_copy_finds_its_protected_image_outside_its_room(audit_db):
    data, features = film()
    with audit_db.transaction() as txn:
        assert image_store.record_image(txn, audit_db.dialect, WARD, "$film", "FILM", features, 1)
        # a retried transaction files nothing twice
        assert not image_store.record_image(txn, audit_db.dialect, WARD, "$film", "FILM", features, 1)
        other = perceptual.protected_features(corpus.jpeg(corpus.photo(32), 92))
        assert image_store.record_image(txn, audit_db.dialect, WARD, "$photo", "PHOTO", other, 2)
    views = perceptual.candidate_views(corpus.jpeg(corpus.resized(corpus.chest_film(31, template=2), 0.4), 70))
    with audit_db.transaction(read_only=True) as txn:
        found = image_store.shortlisted(txn, audit_db.dialect, views, DM)
        same_room = image_store.shortlisted(txn, audit_db.dialect, views, WARD)
    assert [f.media_id for f in found] == ["FILM"]
    assert found[0].room_id == WARD and found[0].event_id == "$film"
    assert (found[0].features.bits == features.bits).all()
    assert same_room == []
    copied = image_store.first_copied(found, views, lambda stored: perceptual.original_grey(data))
    assert copied is not None and copied[0].media_id == "FILM"


def test_an_unrelated_image_finds_nothing(audit_db):
    _, features = film()
    with audit_db.transaction() as txn:
        image_store.record_image(txn, audit_db.dialect, WARD, "$film", "FILM", features, 1)
    views = perceptual.candidate_views(corpus.jpeg(corpus.ecg(33), 85))
    with audit_db.transaction(read_only=True) as txn:
        assert image_store.shortlisted(txn, audit_db.dialect, views, DM) == []


def test_a_bucket_shared_by_more_images_than_common_is_marked_and_emptied(audit_db):
    """ECG paper, a form's rules: once more than COMMON_BUCKET protected images share a
    bucket, its rows go and it is never filed under again; a copy is still found by the
    buckets it does not share."""
    base = film()[1]
    shared = base.bits[:1]  # one feature every image below has: its buckets crowd
    rng = np.random.default_rng(5)
    with audit_db.transaction() as txn:
        for n in range(perceptual.COMMON_BUCKET + 3):
            bits = np.concatenate([shared, rng.integers(0, 2**63, len(base) - 1, dtype=np.int64).astype(np.uint64)])
            other = perceptual.Features(base.points, bits, base.width, base.height)
            assert image_store.record_image(txn, audit_db.dialect, WARD, f"$ecg{n}", f"ECG{n}", other, n)
        assert image_store.record_image(txn, audit_db.dialect, WARD, "$film", "FILM", base, 99)
    shared_keys = sorted(perceptual.bucket_keys(shared).tolist())
    with audit_db.transaction(read_only=True) as txn:
        txn.execute(f"SELECT bucket FROM {image_store.CROWDED_TABLE} ORDER BY bucket")
        assert [int(r[0]) for r in txn.fetchall()] == shared_keys
        txn.execute(f"SELECT count(*) FROM {image_store.BUCKET_TABLE} WHERE bucket IN ({', '.join(map(str, shared_keys))})")
        assert txn.fetchone()[0] == 0
        txn.execute(f"SELECT max(n) FROM (SELECT count(*) AS n FROM {image_store.BUCKET_TABLE} GROUP BY bucket) AS c")
        assert txn.fetchone()[0] <= perceptual.COMMON_BUCKET
    data = film()[0]
    views = perceptual.candidate_views(corpus.jpeg(corpus.resized(corpus.chest_film(31, template=2), 0.6), 75))
    with audit_db.transaction(read_only=True) as txn:
        found = image_store.shortlisted(txn, audit_db.dialect, views, DM)
    assert found and found[0].media_id == "FILM"
    copied = image_store.first_copied(found, views, lambda stored: perceptual.original_grey(data))
    assert copied is not None and copied[0].media_id == "FILM"


def test_a_check_reads_at_most_max_originals(audit_db):
    """However many shortlisted images match by features, a check reads a bounded number of
    originals: here every original read is another patient's film (refused by its pixels);
    after MAX_ORIGINALS of them the check ends with no copy found."""
    data, features = film()
    with audit_db.transaction() as txn:
        for n in range(6):
            image_store.record_image(txn, audit_db.dialect, f"!ward{n}:hs", f"$f{n}", f"F{n}", features, n)
    views = perceptual.candidate_views(corpus.jpeg(corpus.chest_film(31, template=2), 85))
    with audit_db.transaction(read_only=True) as txn:
        found = image_store.shortlisted(txn, audit_db.dialect, views, DM)
    assert len(found) == 6
    read: list[str] = []

    def other_patient(stored: image_store.StoredImage) -> np.ndarray:
        read.append(stored.media_id)
        return perceptual.original_grey(corpus.jpeg(corpus.chest_film(77, template=2), 92))

    assert image_store.first_copied(found, views, other_patient) is None
    assert len(read) == image_store.MAX_ORIGINALS
