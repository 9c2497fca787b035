"""Perceptual no-forward: recall per transform, false positives, and lookup cost.

Two parts, ``python -m bench --only perceptual`` runs both:

* **accuracy** (:func:`accuracy`): ``--protected`` images (default 200; photos, scans, ECGs,
  chest films in turn, :mod:`tests.image_corpus`) are protected; each is copied once per
  transform of :data:`tests.image_corpus.TRANSFORMS` and every copy must be recognised. Then
  ``--unrelated`` images (default 2,000) of the same kinds, plus one *sibling* per protected
  chest film and scan (another patient on the same anatomy template / the same printed
  form), must all pass. Lookups rank as the store does
  (:func:`carematrix.protect.perceptual.ranked` over bucket rows, in memory) and decide
  with the store's own :func:`carematrix.hsdb.image_store.first_copied`.
* **lookup** (:func:`lookup_cost`): the homeserver-database store holding ``--stored``
  protected images (default 100,000) on SQLite and PostgreSQL; the time of
  :func:`carematrix.hsdb.image_store.shortlisted` and ``first_copied`` per image checked (bucket probe, shortlist,
  verification), separately from computing the candidate's features.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from typing import Any

import numpy as np

from bench.stats import summary
from carematrix.hsdb import image_store
from carematrix.protect import perceptual as P
from tests import image_corpus as corpus


class MemoryIndex:
    """Bucket -> protected image, like the store's index table, for the accuracy run."""

    def __init__(self) -> None:
        self.buckets: dict[int, list[int]] = defaultdict(list)
        self.images: list[tuple[P.Features, np.ndarray]] = []
        self.files: list[bytes] = []
        self._received: dict[int, np.ndarray] = {}

    def add(self, stored: P.Features, original: np.ndarray, data: bytes) -> None:
        number = len(self.images)
        self.images.append((stored, original))
        self.files.append(data)
        for key in P.indexed_keys(stored).tolist():
            self.buckets[key].append(number)

    def received(self, stored: image_store.StoredImage, original: np.ndarray) -> list[np.ndarray]:
        """The copy of a protected image the sender received, as the homeserver makes it
        again. Every check here has one for every protected image (the sender received them
        all): the hardest case for false positives."""
        if stored.id not in self._received:
            self._received[stored.id] = corpus.received_again(self.files[stored.id], original)
        return [self._received[stored.id]]

    def find(self, views: list[P.Features]) -> tuple[int | None, int]:
        """(the protected image copied or None, how many were verified)."""
        rows = [(key, image) for key in P.lookup_keys(views).tolist() for image in self.buckets.get(key, ())]
        ranked = P.ranked(rows)[: P.SHORTLIST]
        chosen = [image_store.StoredImage(i, "", "", "", self.images[i][0], score) for i, score in ranked]
        copied = image_store.first_copied(chosen, views, lambda stored: self.images[stored.id][1], self.received)
        return (copied[0].id if copied else None), len(chosen)


def accuracy(protected: int, unrelated: int, seed: int = 7) -> dict[str, Any]:
    index = MemoryIndex()
    images = corpus.protected_set(protected)
    samples = corpus.sample_photos()
    images += [("real photo (scikit-image)", 0, image) for _name, image in samples[:10]]
    started = time.perf_counter()
    for _kind, _seed, image in images:
        data = corpus.jpeg(image, 92)  # protected images arrive as camera/scanner JPEGs
        index.add(P.protected_features(data), P.original_grey(data), data)
    rng = np.random.default_rng(seed)
    recall: dict[str, dict[str, Any]] = {}
    feature_ms: list[float] = []
    for name, transform in corpus.TRANSFORMS.items():
        found = 0
        by_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for number, (kind, _seed, image) in enumerate(images):
            data = transform(image, rng)
            t0 = time.perf_counter()
            views = P.candidate_views(data)
            feature_ms.append((time.perf_counter() - t0) * 1000)
            match, _ = index.find(views)
            ok = match == number
            found += ok
            by_kind[kind][0] += ok
            by_kind[kind][1] += 1
        recall[name] = {"found": found, "of": len(images), "by_kind": {k: f"{a}/{b}" for k, (a, b) in by_kind.items()}}
        print(f"  recall, {name}: {found}/{len(images)} {recall[name]['by_kind']}", flush=True)
    negatives: list[tuple[str, bytes]] = []
    for kind, _seed, image in corpus.unrelated_set(unrelated):
        negatives.append((kind, corpus.jpeg(image, int(rng.integers(60, 96)))))
    for _name, image in samples[10:]:
        negatives.append(("real photo (scikit-image)", corpus.jpeg(image, 85)))
    siblings = 0
    for kind, seed_, _image in images:
        if kind == "chest":
            negatives.append(("sibling chest film", corpus.jpeg(corpus.sibling_film(seed_), 90)))
            # the other patient's film as a ward member received it, watermarked for them
            negatives.append(("sibling chest film, as received (watermarked)",
                              corpus.jpeg(corpus.delivered(corpus.sibling_film(seed_)), 85)))
            siblings += 1
        elif kind == "scan":
            negatives.append(("sibling scan (same form)", corpus.jpeg(corpus.sibling_scan(seed_), 90)))
            siblings += 1
    false_positives: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    verified = 0
    for kind, data in negatives:
        match, tried = index.find(P.candidate_views(data))
        verified += tried
        false_positives[kind][0] += match is not None
        false_positives[kind][1] += 1
    fp = {k: f"{a}/{b}" for k, (a, b) in false_positives.items()}
    print(f"  false positives: {fp} (verifications run: {verified})", flush=True)
    return {
        "protected": len(images),
        "sample_photos": [name for name, _ in samples],
        "unrelated": unrelated,
        "siblings": siblings,
        "recall": recall,
        "false_positives": fp,
        "verifications_on_negatives": verified,
        "candidate_features_ms": summary(feature_ms),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.perceptual")
    parser.add_argument("--protected", type=int, default=200)
    parser.add_argument("--unrelated", type=int, default=2000)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-lookup", action="store_true")
    parser.add_argument("--stored", type=int, default=100_000)
    args = parser.parse_args()
    result: dict[str, Any] = {}
    if not args.skip_accuracy:
        result["accuracy"] = accuracy(args.protected, args.unrelated)
    if not args.skip_lookup:
        from bench.perceptual_lookup import lookup_cost

        result["lookup"] = lookup_cost(args.stored)
    print(json.dumps(result, indent=2), flush=True)


if __name__ == "__main__":
    main()
