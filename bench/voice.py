"""Voice messages transcribed on premises (docs/voice.md), in two parts:

* the recogniser alone, as a worker runs it (2 threads): real-time factor, and CER (Mandarin)
  / WER (English) of each committed clip against its reference text, with and without the
  demo hospital's glossary as the initial prompt; the worker's peak memory;
* on a running CareMatrix stack: a 15 s Mandarin voice message (the committed ward-round
  clip) sent by a nurse's client until its transcript is in her /sync, one at a time, then
  five sent at once (the queue); the worker process's peak memory (VmHWM) afterwards.

Nothing is compared against a baseline: plain Synapse has no transcription. The audio's own
delivery (the voice message in /sync) is timed beside it for scale.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp

from appservice.voice import engine, models
from bench.oncall_e2e import Syncer
from bench.roundtrip import _call, _login
from bench.stats import summary
from carematrix.policy import load_policy
from carematrix.voice.messages import initial_prompt
from carematrix.voice.scoring import cer, wer
from carematrix_ops.deploy.prepare import prepare
from carematrix_ops.deploy.settings import Settings
from carematrix_ops.seed import Seeder
from carematrix_ops.supervisor import Stack
from tests.paths import DEMO_POLICY_DIR, REPO_ROOT
from tests.ports import free_port_pair

CLIPS = REPO_ROOT / "tests" / "fixtures" / "voice"
BENCH_CLIP = "zh_ward_round"  # 14.8 s of Mandarin


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM), MB."""
    return _vm_hwm(Path("/proc/self/status"))


def _vm_hwm(status: Path) -> float:
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _clip_run(name: str, language: str | None, prompt: str | None) -> dict[str, Any]:
    data = (CLIPS / f"{name}.ogg").read_bytes()
    return engine.transcribe(data, language, prompt, 600)


def measure_engine(cache: Path, reps: int = 3) -> dict[str, Any]:
    reference = json.loads((CLIPS / "clips.json").read_text(encoding="utf-8"))
    prepared = models.prepare(cache)
    spec = {k: (m.name, str(m.path)) for k, m in prepared.items()}
    policy = load_policy(DEMO_POLICY_DIR)
    _, glossary = policy.voice.settings_for(policy.ancestry("cardiology-ward-5a"))
    out: dict[str, Any] = {"clips": {}}
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=engine.init_worker, initargs=(spec, 2)) as pool:
        pool.submit(engine.warm_up).result()
        for name, ref in sorted(reference.items()):
            row: dict[str, Any] = {"language": ref["language"]}
            for label, prompt in (("no glossary", None), ("glossary", initial_prompt(glossary, None))):
                runs = [pool.submit(_clip_run, name, None, prompt).result() for _ in range(reps)]
                result = runs[-1]
                score = cer(ref["text"], result["text"]) if ref["language"] == "zh" else wer(ref["text"], result["text"])
                seconds = sorted(r["seconds"] for r in runs)
                row[label] = {
                    "cer" if ref["language"] == "zh" else "wer": round(score, 3),
                    "text": result["text"],
                    "seconds_median": round(seconds[len(seconds) // 2], 2),
                    "rtf": round(seconds[len(seconds) // 2] / result["duration_s"], 3),
                }
            row["duration_s"] = round(result["duration_s"], 1)
            out["clips"][name] = row
        out["worker_peak_rss_mb"] = pool.submit(_peak_rss_mb).result()
    return out


def _worker_pids(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == parent and b"multiprocessing" in cmdline and b"spawn_main" in cmdline:
            pids.append(int(entry.name))
    return pids


async def _send_voice(s: aiohttp.ClientSession, base: str, token: str, room: str, data: bytes, duration_ms: int) -> str:
    async with s.post(f"{base}/_matrix/media/v3/upload?filename=voice.ogg", data=data,
                      headers={"Authorization": f"Bearer {token}", "Content-Type": "audio/ogg"}) as r:
        uri = (await r.json())["content_uri"]
    content = {
        "msgtype": "m.audio", "body": "Voice message", "url": uri,
        "info": {"mimetype": "audio/ogg", "size": len(data), "duration": duration_ms},
        "org.matrix.msc3245.voice": {},
    }
    sent = await _call(s, "PUT", f"{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/{uuid.uuid4().hex}", token, content)
    return str(sent["event_id"])


def _transcript_of(event_id: str) -> Any:
    return lambda e: e.get("content", {}).get("org.carematrix.transcript", {}).get("event_id") == event_id


async def measure_stack(work: Path, cache: Path, rounds: int = 10, burst: int = 5) -> dict[str, Any]:
    d = prepare(Settings(
        data_dir=work / "carematrix", port=free_port_pair(), relaxed_rate_limits=True, hl7_port=0,
        voice_model_cache=str(cache),
    ))
    stack = Stack(d)
    stack.start()
    try:
        Seeder(d).run()
        base, pw = d.settings.homeserver_url, d.secrets["demo_password"]
        bot = d.bot_user_id
        data = (CLIPS / f"{BENCH_CLIP}.ogg").read_bytes()
        async with aiohttp.ClientSession() as s:
            health = d.settings.appservice_url + "/_carematrix/health"
            for _ in range(120):  # the workers load the model after the appservice is up
                async with s.get(health) as r:
                    if (await r.json()).get("voice", {}).get("transcription") == "ready":
                        break
                await asyncio.sleep(1)
            nurse = await _login(s, base, "n3002", pw)
            room = (await _call(s, "POST", f"{base}/_matrix/client/v3/createRoom", nurse, {"invite": [bot], "is_direct": True}))["room_id"]
            await asyncio.sleep(2)  # the bot joins
            sync = Syncer(s, base, nurse)
            await sync.prime()
            # Warm-up: the first transcript pays for the worker's first allocation.
            first = await _send_voice(s, base, nurse, room, data, 14800)
            await sync.wait_for(room, _transcript_of(first), timeout=300)
            single: list[float] = []
            durations: list[float] = []
            for _ in range(rounds):
                start = time.perf_counter()
                event_id = await _send_voice(s, base, nurse, room, data, 14800)
                arrived = await sync.wait_for(room, _transcript_of(event_id), timeout=300)
                single.append((arrived - start) * 1000)
                durations.append(float(sync.matched["content"]["org.carematrix.transcript"]["duration_ms"]) if sync.matched else 0.0)
            # Five at once: each one's wait includes the ones queued ahead of it.
            start = time.perf_counter()
            sent = [await _send_voice(s, base, nurse, room, data, 14800) for _ in range(burst)]
            waiting = set(sent)
            done: dict[str, float] = {}
            deadline = time.monotonic() + 600
            while waiting and time.monotonic() < deadline:
                arrived = await sync.wait_for(
                    room, lambda e: e.get("content", {}).get("org.carematrix.transcript", {}).get("event_id") in waiting,
                    timeout=600,
                )
                assert sync.matched is not None
                got = sync.matched["content"]["org.carematrix.transcript"]["event_id"]
                waiting.discard(got)
                done[got] = (arrived - start) * 1000
            queued = [done[e] for e in sent if e in done]
            peaks = [_vm_hwm(Path(f"/proc/{pid}/status")) for pid in _worker_pids(stack.appservice.popen.pid)] if stack.appservice.popen else []
            return {
                "clip_seconds": round(sum(durations) / len(durations) / 1000, 1) if durations else None,
                "one_at_a_time": summary(single),
                "rtf_end_to_end_p50": round(summary(single)["p50_ms"] / (sum(durations) / len(durations)), 3) if durations else None,
                "five_at_once": {**summary(queued), "last_ms": round(max(queued), 1), "all_answered": len(queued) == burst},
                "worker_peak_rss_mb": max(peaks) if peaks else None,
                "cores": os.cpu_count(),
            }
    finally:
        stack.stop()


def measure(work: Path, rounds: int = 10) -> dict[str, Any]:
    cache = work / "voice-models"
    engine_part = measure_engine(cache)
    stack_part = asyncio.run(measure_stack(work, cache, rounds))
    return {"engine": engine_part, "stack": stack_part, "load_average": os.getloadavg()}


def format_result(result: dict[str, Any]) -> str:
    lines = ["voice: recogniser alone (whisper-base int8, 2 threads, one worker)"]
    for name, row in result["engine"]["clips"].items():
        metric = "cer" if row["language"] == "zh" else "wer"
        parts = [
            f"{label}: {metric.upper()} {row[label][metric]:.3f}, {row[label]['seconds_median']:.2f} s (RTF {row[label]['rtf']:.3f})"
            for label in ("no glossary", "glossary")
        ]
        lines.append(f"  {name} ({row['duration_s']} s): " + "; ".join(parts))
    lines.append(f"  worker peak memory: {result['engine']['worker_peak_rss_mb']} MB")
    st = result["stack"]
    one, five = st["one_at_a_time"], st["five_at_once"]
    lines.append(
        f"voice: {st['clip_seconds']} s Mandarin voice message -> transcript in the sender's /sync: "
        f"p50 {one['p50_ms']:.0f} ms, p99 {one['p99_ms']:.0f} ms (n {one['n']}, end-to-end RTF {st['rtf_end_to_end_p50']})"
    )
    lines.append(
        f"  five sent at once: p50 {five['p50_ms']:.0f} ms, p99 {five['p99_ms']:.0f} ms, last {five['last_ms']:.0f} ms; "
        f"worker peak memory {st['worker_peak_rss_mb']} MB; load average {result['load_average']}"
    )
    return "\n".join(lines)
