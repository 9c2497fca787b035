"""No-forward check cost: fingerprinting plus ``find_foreign`` against a store holding a
million fingerprints, on SQLite and PostgreSQL.

The store is filled the way a busy hospital would have filled it: a few thousand realistic
protected messages recorded through ``record_origin`` (one transaction each, as the module
does for every send in a protected room), then bulk-loaded 64-bit keys up to ``n`` (keys
are hashes, so random keys index exactly like real ones). Then 2,000 realistic messages,
each checked in its own transaction like the module will: new text of every length, exact
and reworded copies, pasted paragraphs, images (new and re-posted, with their file hash),
and short replies that have no fingerprints at all.

Target: the check adds <= 2 ms at p99 per message. SQLite is a temp file with Synapse's
settings (WAL); PostgreSQL is a throwaway database on :data:`TEST_SERVER_URL`.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import random
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.stats import summary
from carematrix.hsdb.audit_store import sql
from carematrix.hsdb.forward_store import (
    ORIGIN_TABLE,
    TABLE,
    find_foreign,
    record_origin,
)
from carematrix.hsdb.migrations import upgrade
from carematrix.protect.fingerprint import content_fingerprints, media_hash_fingerprint
from carematrix_ops.audit_db import AuditDb, connect
from carematrix_ops.pgadmin import (
    create_database,
    database_url,
    drop_database,
    on_maintenance_db,
)
from tests.ports import TEST_SERVER_URL

QUERIES = 2_000
_MEDIA_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
PROTECTED_MESSAGES = 3_000
_FILL_ROWS_PER_STATEMENT = 500
_FILL_ROWS_PER_TRANSACTION = 50_000
_KEYS_PER_SYNTHETIC_ORIGIN = 40

_WORDS = (
    "patient bed ward potassium sodium creatinine lactate haemoglobin platelets insulin "
    "dextrose furosemide amoxicillin piperacillin heparin enoxaparin morphine paracetamol "
    "ondansetron fever cough sepsis culture sputum urine chest xray ct mri ultrasound echo "
    "consultant registrar nurse physio pharmacist review escalate family consent theatre "
    "fasting morning evening overnight handover bleeding drain wound dressing oxygen "
    "saturation breathing pain analgesia nausea vomiting stool output balance weight falls "
    "pressure skin delirium confusion discharge transfer referral clinic follow-up repeat "
    "bloods obs stable deteriorating improving septic hypotensive tachycardic afebrile "
    "catheter cannula line infusion rate dose stopped started increased reduced held "
    "allergy penicillin diabetes hypertension copd asthma ckd heart failure stroke fracture"
).split()
_PHRASES = (
    "please review the patient",
    "vital signs stable",
    "no known drug allergies",
    "continue current management",
    "please call if any concerns",
    "for repeat bloods in the morning",
    "discussed with the family",
)
_ZH_PHRASES = ("请查看患者", "生命体征平稳", "继续目前治疗", "明早复查血常规", "如有不适及时告知")
_NAMES = "Wang Li Zhang Liu Chen Yang Huang Zhao Smith Jones Brown Taylor Ahmed Khan Nguyen".split()
_HANZI = (
    "患者血压心率体温发热咳嗽呼吸急促胸痛腹痛恶心呕吐头晕乏力查房医嘱复查血常规肝功能肾功能"
    "电解质血钾血钠肌酐胰岛素输液抗生素手术麻醉护理观察出院入院病房床位家属签字同意告知风险"
    "请及时处理谢谢今晨昨夜术后第天予停用加量减量会诊影像检验结果报告异常正常建议继续密切监测"
)


def _vocabulary(rng: random.Random, common: list[str], rare: int, make: Any) -> tuple:
    """Common words first, then ``rare`` made-up ones, with Zipf weights (1/rank), so
    messages repeat everyday words and phrases as real ones do but not every word pair."""
    words = list(dict.fromkeys(common))
    seen = set(words)
    while len(words) < len(common) + rare:
        word = make(rng)
        if word not in seen:
            seen.add(word)
            words.append(word)
    weights = [1 / (rank + 2) for rank in range(len(words))]
    return words, list(itertools.accumulate(weights))


_SYLLABLES = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"] + ["ine", "ol", "ex", "um"]
_EN = _vocabulary(
    random.Random(1),
    _WORDS,
    4000,
    lambda r: "".join(r.choice(_SYLLABLES) for _ in range(r.randint(2, 4))),
)
_ZH = _vocabulary(random.Random(2), list(_HANZI), 3000, lambda r: chr(r.randint(0x4E00, 0x6FFF)))


def _words(rng: random.Random, vocabulary: tuple, k: int) -> list[str]:
    words, cumulative = vocabulary
    return rng.choices(words, cum_weights=cumulative, k=k)


def _sentence(rng: random.Random, chinese: bool) -> str:
    if chinese:
        parts = []
        for _ in range(rng.randint(2, 5)):
            if rng.random() < 0.15:
                parts.append(rng.choice(_ZH_PHRASES))
            elif rng.random() < 0.2:
                parts.append(f"{rng.randint(1, 48)}床{rng.choice(_NAMES)}")
            parts.append("".join(_words(rng, _ZH, rng.randint(4, 14))))
        return "，".join(parts) + "。"
    words = []
    for _ in range(rng.randint(5, 16)):
        r = rng.random()
        if r < 0.06:
            words.append(rng.choice(_PHRASES))
        elif r < 0.12:
            words.append(f"bed {rng.randint(1, 48)} {rng.choice(_NAMES)}")
        elif r < 0.18:
            words.append(f"{rng.choice(['K+', 'Na', 'Hb', 'CRP', 'Cr'])} {rng.uniform(1, 150):.1f}")
        else:
            words.extend(_words(rng, _EN, 1))
    text = " ".join(words)
    return text[0].upper() + text[1:] + rng.choice([".", ".", "!", "?"])


def _text(rng: random.Random) -> str:
    """A message body with a realistic spread of lengths (most short, a few long reports)."""
    r = rng.random()
    target = (
        rng.randint(20, 80)
        if r < 0.4
        else rng.randint(80, 400)
        if r < 0.8
        else rng.randint(400, 1500)
        if r < 0.95
        else rng.randint(1500, 4000)
    )
    chinese = rng.random() < 0.3
    out: list[str] = []
    while sum(map(len, out)) < target:
        out.append(_sentence(rng, chinese))
    return " ".join(out)


def _image(rng: random.Random) -> tuple[dict[str, Any], str]:
    media_id = "".join(rng.choice(_MEDIA_ID_CHARS) for _ in range(24))
    content = {
        "msgtype": "m.image",
        "body": f"IMG_{rng.randint(10**7, 10**8)}.jpg",
        "url": f"mxc://hospital.example/{media_id}",
        "info": {"thumbnail_url": f"mxc://hospital.example/{media_id}t", "size": 123_456},
    }
    return content, hashlib.sha256(media_id.encode()).hexdigest()


def _reworded(rng: random.Random, text: str) -> str:
    words = text.split(" ")
    for _ in range(rng.randint(1, 3)):
        words.insert(rng.randrange(len(words) + 1), rng.choice(_WORDS))
    return " ".join(words)


def _protected_corpus(rng: random.Random, count: int) -> list[tuple[dict[str, Any], list[str]]]:
    """(content, extra fingerprints) of the messages posted in protected rooms."""
    corpus = []
    for _ in range(count):
        if rng.random() < 0.1:
            content, digest = _image(rng)
            corpus.append((content, [media_hash_fingerprint(digest)]))
        else:
            corpus.append(({"msgtype": "m.text", "body": _text(rng)}, []))
    return corpus


def _queries(
    rng: random.Random, corpus: list[tuple[dict[str, Any], list[str]]], count: int
) -> list[tuple[str, dict[str, Any], list[str]]]:
    """(kind, content, extra) of the messages checked: what a ward sends all day."""
    texts = [c["body"] for c, _ in corpus if c["msgtype"] == "m.text"]
    long_texts = [t for t in texts if len(t) >= 400]
    images = [(c, e) for c, e in corpus if c["msgtype"] == "m.image"]
    out: list[tuple[str, dict[str, Any], list[str]]] = []
    for _ in range(count):
        r = rng.random()
        if r < 0.55:
            out.append(("new text", {"msgtype": "m.text", "body": _text(rng)}, []))
        elif r < 0.62:
            body = rng.choice(["ok", "收到", "thanks", "will do", "好的，谢谢", "👍"])
            out.append(("short reply", {"msgtype": "m.text", "body": body}, []))
        elif r < 0.70:
            out.append(("copied text", {"msgtype": "m.text", "body": rng.choice(texts)}, []))
        elif r < 0.78:
            body = _reworded(rng, rng.choice(texts))
            out.append(("reworded copy", {"msgtype": "m.text", "body": body}, []))
        elif r < 0.86:
            source = rng.choice(long_texts)
            start = rng.randrange(len(source) - 120)
            body = f"{_text(rng)} {source[start : start + rng.randint(80, 120)]} {_text(rng)}"
            out.append(("pasted paragraph", {"msgtype": "m.text", "body": body}, []))
        elif r < 0.93:
            content, digest = _image(rng)
            out.append(("new image", content, [media_hash_fingerprint(digest)]))
        else:
            content, extra = rng.choice(images)
            reupload, _ = _image(rng)  # same bytes, new upload: only the hash gives it away
            reupload["body"] = content["body"]
            out.append(("re-posted image", reupload, extra))
    return out


_BUCKETS = ("up to 400 chars", "400-1500 chars", "over 1500 chars")


def _length_bucket(content: dict[str, Any]) -> str:
    size = len(content.get("body", ""))
    return _BUCKETS[0] if size <= 400 else _BUCKETS[1] if size <= 1500 else _BUCKETS[2]


def _bulk_fill(db: AuditDb, rows: int, rng: random.Random) -> float:
    """Random 64-bit keys with synthetic origins, in large multi-row INSERTs; seconds taken."""
    start = time.perf_counter()
    done = 0
    origin_seq = 0
    while done < rows:
        with db.transaction() as txn:
            in_txn = min(_FILL_ROWS_PER_TRANSACTION, rows - done)
            origins = []
            keys = []
            for i in range(in_txn):
                if i % _KEYS_PER_SYNTHETIC_ORIGIN == 0:
                    origin_seq += 1
                    origins.append(
                        (-origin_seq, f"!r{origin_seq % 500}:hs", f"$bulk{origin_seq}:hs", 0)
                    )
                keys.append((rng.getrandbits(64) - 2**63, -origin_seq))
            for first in range(0, len(origins), _FILL_ROWS_PER_STATEMENT):
                chunk = origins[first : first + _FILL_ROWS_PER_STATEMENT]
                txn.execute(
                    sql(
                        f"INSERT INTO {ORIGIN_TABLE} (id, room_id, event_id, ts) VALUES "
                        + ", ".join(["(?, ?, ?, ?)"] * len(chunk))
                        + " ON CONFLICT (id) DO NOTHING",
                        db.dialect,
                    ),
                    [v for row in chunk for v in row],
                )
            for first in range(0, len(keys), _FILL_ROWS_PER_STATEMENT):
                chunk = keys[first : first + _FILL_ROWS_PER_STATEMENT]
                txn.execute(
                    sql(
                        f"INSERT INTO {TABLE} (fp, origin) VALUES "
                        + ", ".join(["(?, ?)"] * len(chunk))
                        + " ON CONFLICT (fp) DO NOTHING",
                        db.dialect,
                    ),
                    [v for row in chunk for v in row],
                )
            done += in_txn
    return time.perf_counter() - start


def _count(db: AuditDb) -> int:
    with db.transaction(read_only=True) as txn:
        txn.execute(f"SELECT COUNT(*) FROM {TABLE}")
        return int(txn.fetchone()[0])


def measure(dialect: str, url: str, n: int = 1_000_000, queries: int = QUERIES) -> dict:
    """Fill a fresh store at ``url`` to ``n`` fingerprints and time ``queries`` checks."""
    rng = random.Random(20261125)
    db = connect(url)
    if db.dialect != dialect:
        raise ValueError(f"{url} is a {db.dialect} database, not {dialect}")
    try:
        upgrade(db.transaction, db.dialect)

        corpus = _protected_corpus(rng, PROTECTED_MESSAGES)
        record_ms = []
        t_corpus = time.perf_counter()
        for i, (content, extra) in enumerate(corpus):
            fingerprints = content_fingerprints("m.room.message", content)
            t0 = time.perf_counter()
            with db.transaction() as txn:
                record_origin(
                    txn,
                    db.dialect,
                    [*fingerprints.all(), *extra],
                    f"!protected{i % 50}:hospital.example",
                    f"$p{i}:hospital.example",
                    1_795_000_000_000 + i,
                )
            record_ms.append((time.perf_counter() - t0) * 1000)
        t_corpus = time.perf_counter() - t_corpus
        realistic = _count(db)

        bulk_rows = max(0, n - realistic)
        # its own generator: how many rows the fill takes depends on the fingerprints,
        # and the checked messages must not change with them
        fill_s = _bulk_fill(db, bulk_rows, random.Random(n))
        if db.dialect == "postgres":
            with db.transaction() as txn:  # what autovacuum does shortly after a big load
                txn.execute(f"ANALYZE {TABLE}")
                txn.execute(f"ANALYZE {ORIGIN_TABLE}")
        stored = _count(db)

        checks = _queries(rng, corpus, queries)
        fp_ms: list[float] = []
        find_ms: list[float] = []
        total_ms: list[float] = []
        by_kind: dict[str, list[float]] = {}
        by_length: dict[str, list[float]] = {}
        found: dict[str, list[int]] = {}
        for kind, content, extra in checks:
            t0 = time.perf_counter()
            fingerprints = content_fingerprints("m.room.message", content)
            t1 = time.perf_counter()
            with db.transaction(read_only=True) as txn:
                match = find_foreign(txn, db.dialect, fingerprints, extra, "!ward:hospital.example")
            t2 = time.perf_counter()
            fp_ms.append((t1 - t0) * 1000)
            find_ms.append((t2 - t1) * 1000)
            total_ms.append((t2 - t0) * 1000)
            by_kind.setdefault(kind, []).append((t2 - t1) * 1000)
            by_length.setdefault(_length_bucket(content), []).append((t2 - t0) * 1000)
            hits = found.setdefault(kind, [0, 0])
            hits[0] += match is not None
            hits[1] += 1
        return {
            "backend": dialect,
            "fingerprints": stored,
            "protected_messages": {
                "messages": len(corpus),
                "fingerprints": realistic,
                "seconds": round(t_corpus, 2),
                "record_origin": summary(record_ms),
            },
            "fill": {
                "rows": bulk_rows,
                "seconds": round(fill_s, 2),
                "rows_per_s": round(bulk_rows / fill_s) if fill_s else 0,
            },
            "fingerprint": summary(fp_ms),
            "find_foreign": summary(find_ms),
            "check": summary(total_ms),
            "find_by_kind": {k: summary(v) for k, v in sorted(by_kind.items())},
            "check_by_length": {k: summary(by_length[k]) for k in _BUCKETS if k in by_length},
            "flagged": {k: f"{h[0]}/{h[1]}" for k, h in sorted(found.items())},
        }
    finally:
        db.close()


def format_result(r: dict) -> str:
    f, c, t = r["find_foreign"], r["fingerprint"], r["check"]
    fill, prot = r["fill"], r["protected_messages"]
    rec = prot["record_origin"]
    lines = [
        f"no-forward check on {r['backend']} with {r['fingerprints']:,} fingerprints:",
        f"  find_foreign      : p50 {f['p50_ms']:.3f} ms  p99 {f['p99_ms']:.3f} ms  "
        f"mean {f['mean_ms']:.3f} ms ({f['n']} messages, one transaction each)",
        f"  fingerprinting    : p50 {c['p50_ms']:.3f} ms  p99 {c['p99_ms']:.3f} ms",
        f"  whole check       : p50 {t['p50_ms']:.3f} ms  p99 {t['p99_ms']:.3f} ms",
        f"  bulk fill         : {fill['rows']:,} rows in {fill['seconds']:.1f} s "
        f"({fill['rows_per_s']:,} rows/s)",
        f"  record_origin     : {prot['messages']:,} protected messages, "
        f"{prot['fingerprints']:,} fingerprints, p50 {rec['p50_ms']:.3f} ms "
        f"p99 {rec['p99_ms']:.3f} ms per message (committed)",
    ]
    for bucket, s in r["check_by_length"].items():
        lines.append(
            f"    whole check, {bucket:<16}: p50 {s['p50_ms']:.3f} ms  p99 {s['p99_ms']:.3f} ms "
            f"({s['n']} messages)"
        )
    for kind, s in r["find_by_kind"].items():
        lines.append(
            f"    {kind:<17}: p50 {s['p50_ms']:.3f} ms  p99 {s['p99_ms']:.3f} ms  "
            f"flagged {r['flagged'][kind]}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.no_forward")
    parser.add_argument("--n", type=int, default=1_000_000, help="fingerprints in the store")
    parser.add_argument("--queries", type=int, default=QUERIES, help="messages checked")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args()
    results = []
    if args.backend in ("sqlite", "both"):
        work = Path(tempfile.mkdtemp(prefix="carematrix-no-forward-bench-"))
        try:
            results.append(measure("sqlite", str(work / "homeserver.db"), args.n, args.queries))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(format_result(results[-1]), flush=True)
    if args.backend in ("postgres", "both"):
        dbname = f"carematrix_no_forward_bench_{secrets.token_hex(4)}"
        on_maintenance_db(TEST_SERVER_URL, create_database, dbname)
        try:
            url = database_url(TEST_SERVER_URL, dbname)
            results.append(measure("postgres", url, args.n, args.queries))
        finally:
            on_maintenance_db(TEST_SERVER_URL, drop_database, dbname)
        print(format_result(results[-1]), flush=True)
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
