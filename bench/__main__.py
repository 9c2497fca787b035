"""``make bench``: every benchmark, each against its baseline measured in the same run.

Prints the comparison tables and saves JSON under var/bench/. ``--only NAME`` runs one:
roundtrip (messages: plain Synapse / CareMatrix / audit off), access (invite+join check),
orgsync (org sync at a scale this machine finishes in minutes), audit (the audit store),
watermark (marking a 12 MP photo), media (protected download vs Synapse's), noforward (the
no-forward lookup with 1,000,000 stored fingerprints, SQLite and PostgreSQL), oncall (role
resolution with 10,000 roster entries), paging (a message to an on-duty role until the doctor
sees it, against a direct message; escalation lag after a deadline), hl7 (parse + ACK),
ingest (HL7 over MLLP stored and acknowledged, 1 and 4 connections), reload (event-loop stalls
and MLLP ACKs while a 5,000-staff policy edit is reloaded), workers (one Synapse process vs the
worker deployment on PostgreSQL: round trip, concurrent senders, a critical HL7 result until the
nurse's /sync, org sync), perceptual (no-forward for
images that look the same: recall per copy kind, false positives, lookup with 100,000
protected images on SQLite and PostgreSQL), voice (a 15 s Mandarin voice message until its
transcript is in the sender's /sync, five at once; real-time factor, CER/WER and peak memory
of the recogniser), dirsearch (user-directory search with 5,000 staff named in
Chinese), msgsearch (message search of Chinese and English words).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import org_sync, roundtrip
from bench.stats import format_comparison
from tests.paths import REPO_ROOT

BENCHMARKS = (
    "roundtrip", "access", "orgsync", "audit", "watermark", "media", "noforward", "oncall", "paging",
    "hl7", "ingest", "alert", "exactlyonce", "reload", "workers", "perceptual", "voice", "dirsearch", "msgsearch", "device_call",
)


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _save(out_dir: Path, name: str, result: object) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"machine": machine(), "result": result}, indent=2) + "\n")
    print(f"  saved {out}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--only", choices=BENCHMARKS, action="append")
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--joins", type=int, default=100)
    parser.add_argument("--staff", type=int, default=300)
    parser.add_argument("--units", type=int, default=20)
    parser.add_argument("--queued", type=int, default=10_000, help="messages queued before the kill -9 (exactlyonce)")
    parser.add_argument("--reload-staff", type=int, default=5000, help="staff in the reloaded policy (reload)")
    parser.add_argument("--reload-rounds", type=int, default=3, help="policy edits measured per pass (reload)")
    parser.add_argument("--reload-baseline", type=Path, help="a checkout of older code run alongside, same data (reload)")
    parser.add_argument("--reload-passes", type=int, default=1, help="passes, alternating with the baseline (reload)")
    parser.add_argument("--reload-keep", type=Path,
                        help="a directory that keeps the seeded stack between runs: the 5,000 accounts are made "
                             "once, later runs start on them (reload)")
    parser.add_argument("--senders", type=int, default=200, help="concurrent senders (workers)")
    parser.add_argument("--per-sender", type=int, default=5, help="messages each concurrent sender sends (workers)")
    parser.add_argument("--workers-part", action="append", choices=("roundtrip", "concurrent", "alerts", "orgsync"),
                        help="run only these parts of the workers benchmark (repeatable; default all)")
    parser.add_argument("--alert-rounds", type=int, default=40, help="critical results per deployment (workers)")
    parser.add_argument("--orgsync-staff", type=int, default=1000, help="staff in the synced hospital (workers)")
    parser.add_argument("--orgsync-units", type=int, default=50, help="units in the synced hospital (workers)")
    parser.add_argument("--orgsync-on", action="append", choices=("monolith", "workers"),
                        help="sync on this deployment only (repeatable; default both, one after the other) (workers)")
    parser.add_argument("--voice-rounds", type=int, default=10, help="voice messages sent one at a time (voice)")
    parser.add_argument("--search-staff", type=int, default=5000, help="staff in the directory (dirsearch)")
    parser.add_argument("--search-messages", type=int, default=100_000, help="messages sent before searching (msgsearch)")
    parser.add_argument("--search-fill-minutes", type=float, default=60, help="stop sending messages after this long (msgsearch)")
    parser.add_argument("--search-rounds", type=int, default=20, help="times each term is searched per server (dirsearch, msgsearch)")
    parser.add_argument("--search-db", choices=["sqlite", "postgres"], action="append", help="database(s) (dirsearch, msgsearch; default both)")
    parser.add_argument("--search-width", type=int, default=32, help="requests in flight while filling (dirsearch, msgsearch)")
    parser.add_argument("--search-rooms", type=int, default=16, help="rooms per server the messages go to (msgsearch)")
    parser.add_argument("--search-keep", type=Path,
                        help="a directory that keeps both servers, their databases and what was filled between runs: "
                             "a later run goes on filling where the last stopped (dirsearch, msgsearch; one directory "
                             "per benchmark, a subdirectory per database)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "var" / "bench")
    args = parser.parse_args()
    chosen = args.only or list(BENCHMARKS)
    print(f"machine: {machine()}", flush=True)
    for name in chosen:
        work = Path(tempfile.mkdtemp(prefix=f"carematrix-bench-{name}-"))
        try:
            if name == "roundtrip":
                results = asyncio.run(roundtrip.measure(work, args.messages, args.warmup, args.batch))
                for r in results:
                    print(format_comparison(r), flush=True)
                _save(args.out, name, results)
            elif name == "access":
                result = asyncio.run(org_sync.access_check_cost(work, args.joins))
                print(format_comparison(result), flush=True)
                _save(args.out, name, result)
            elif name == "orgsync":
                result = asyncio.run(org_sync.sync_at_scale(work, args.staff, args.units, "sqlite", None))
                print(org_sync.format_sync(result), flush=True)
                _save(args.out, name, result)
            elif name == "audit":
                from bench import audit

                sys.argv = [sys.argv[0], "--out", str(args.out)]
                audit.main()
            elif name == "watermark":
                from bench import watermark

                _save(args.out, name, watermark.measure())
            elif name == "media":
                from bench import protected_media

                result = asyncio.run(protected_media.measure(work))
                print(format_comparison(result), f"  first render per viewer: {result['first_render_ms']} ms", sep="\n", flush=True)
                _save(args.out, name, result)
            elif name == "oncall":
                from bench import oncall

                _save(args.out, name, oncall.measure())
            elif name == "paging":
                from bench import oncall_e2e

                result = asyncio.run(oncall_e2e.measure(work))
                lag = result["escalation_lag"]
                print(format_comparison(result["latency"]), flush=True)
                print(f"escalation lag after the deadline: n {lag['n']} p50 {lag['p50_ms']:.0f} ms p99 {lag['p99_ms']:.0f} ms", flush=True)
                _save(args.out, name, result)
            elif name == "device_call":
                from bench import device_call

                result = asyncio.run(device_call.measure(work))
                print(format_comparison(result), flush=True)
                _save(args.out, name, result)
            elif name == "hl7":
                from bench import hl7

                _save(args.out, name, hl7.measure())
            elif name == "ingest":
                from bench import clinical_ingest

                result = asyncio.run(clinical_ingest.measure(work))
                for key, value in result.items():
                    ack = value["ack"]
                    print(f"MLLP ingest, {key}: {value['messages_per_s']} msg/s, ACK p50 {ack['p50_ms']:.1f} ms p99 {ack['p99_ms']:.1f} ms", flush=True)
                _save(args.out, name, result)
            elif name == "alert":
                from bench import critical_alert

                result = asyncio.run(critical_alert.measure(work))
                print(format_comparison(result), f"  background HL7: {result['background_messages_per_s']} msg/s", sep="\n", flush=True)
                for label, s in result["fallbacks"].items():
                    print(f"  fallback, {label}: n {s['n']}, p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms", flush=True)
                for label, s in result["stored_to_sync"].items():
                    print(f"  stored by the homeserver -> /sync, {label}: p50 {s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms", flush=True)
                print(critical_alert.format_steps(result["steps"]), flush=True)
                _save(args.out, name, result)
            elif name == "exactlyonce":
                from bench import clinical_durability

                result = asyncio.run(clinical_durability.measure(work, args.queued))
                print(clinical_durability.format_result(result), flush=True)
                _save(args.out, name, result)
            elif name == "reload":
                from bench import policy_reload

                result = asyncio.run(policy_reload.measure(
                    args.reload_keep or work, args.reload_staff, rounds=args.reload_rounds,
                    baseline=args.reload_baseline, passes=args.reload_passes,
                ))
                print(policy_reload.format_result(result), flush=True)
                _save(args.out, name, result)
            elif name == "workers":
                from bench import workers

                result = asyncio.run(workers.measure(
                    work, args.messages, args.warmup, args.batch, args.senders, args.per_sender,
                    parts=tuple(args.workers_part or workers.PARTS), alert_rounds=args.alert_rounds,
                    orgsync_staff=args.orgsync_staff, orgsync_units=args.orgsync_units,
                    orgsync_on=tuple(args.orgsync_on or ("monolith", "workers")),
                ))
                for key in ("roundtrip",):
                    if key in result:
                        print(format_comparison(result[key]), flush=True)
                if "alerts" in result:
                    print(format_comparison(result["alerts"]["critical"]), flush=True)
                    print(format_comparison(result["alerts"]["direct"]), flush=True)
                if "concurrent" in result:
                    print(workers.format_concurrent(result["concurrent"]), flush=True)
                if "orgsync" in result:
                    print(workers.format_orgsync(result["orgsync"]), flush=True)
                _save(args.out, name, result)
            elif name == "perceptual":
                from bench import perceptual

                sys.argv = [sys.argv[0]]
                perceptual.main()
            elif name == "voice":
                from bench import voice

                result = voice.measure(work, args.voice_rounds)
                print(voice.format_result(result), flush=True)
                _save(args.out, name, result)
            elif name in ("dirsearch", "msgsearch"):
                from bench import search

                results = []
                for database in args.search_db or ["sqlite", "postgres"]:
                    result = asyncio.run(search.measure(
                        (args.search_keep or work) / database, name, args.search_staff, args.search_messages,
                        args.search_rounds, database, width=args.search_width, rooms=args.search_rooms,
                        budget_s=args.search_fill_minutes * 60, keep=args.search_keep is not None,
                    ))
                    print(search.format_result(result), flush=True)
                    results.append(result)
                _save(args.out, name, results)
            elif name == "noforward":
                from bench import no_forward

                sys.argv = [sys.argv[0]]
                no_forward.main()
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
