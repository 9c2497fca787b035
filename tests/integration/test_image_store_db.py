"""Protected images' features in the homeserver database (carematrix/hsdb/image_store.py) on
real SQLite and PostgreSQL: filed once, found from a copy, never from the image's own room."""

from __future__ import annotations

from functools import cache

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
    copied = image_store.first_copied(found, views, lambda stored: perceptual.decode_grey(data))
    assert copied is not None and copied[0].media_id == "FILM"


def test_an_unrelated_image_finds_nothing(audit_db):
    _, features = film()
    with audit_db.transaction() as txn:
        image_store.record_image(txn, audit_db.dialect, WARD, "$film", "FILM", features, 1)
    views = perceptual.candidate_views(corpus.jpeg(corpus.ecg(33), 85))
    with audit_db.transaction(read_only=True) as txn:
        assert image_store.shortlisted(txn, audit_db.dialect, views, DM) == []
