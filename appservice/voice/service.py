"""Voice messages in, transcripts out, without ever holding up the appservice, and without
losing one to a crash.

A voice message is written to the appservice database (``store.py``) before the homeserver's
transaction that carried it is answered (``accept``, called for every transaction): mautrix
answers the transaction before it runs the event handlers, and the homeserver never sends an
answered transaction again. The row stays pending until the transcript or a notice is
posted; pending rows are taken up again at start (``start``), so a voice message accepted
before a crash or a stop is answered after the restart, once.

Each message (carematrix.voice.messages) is checked at once — end-to-end encrypted, or
declared longer than the policy's ``voice.max_seconds``: a short notice, nothing queued —
and otherwise put on a bounded priority queue: voice messages to on-duty roles
(push-to-talk pages) first, then the rest in arrival order. A full queue answers with a
notice, never by waiting. Each queued message is downloaded and handed to a worker process
(``engine.py``, a process pool whose workers load the verified model once); the event loop
only awaits the result. A worker that dies (out of memory, a crash in the decoder) breaks
the pool: the pool is started again and the message tried again. Every recognition started
is counted in the database before it starts, so one that takes down a worker — or the whole
appservice — again and again is given up after ``MAX_ATTEMPTS`` with a notice to the sender,
never retried for ever. The homeserver being away (download, posting) is not the message's
fault: it waits and is tried again, not counted.

The answer is a reply to the voice message, posted by whoever the room talks to: the bot,
or in a room of an on-duty role the role account (it is the one in the room). In a page's
room the transcript mentions the people the page reached, so the on-duty phone rings
with the words as well as the audio. The audit trail gets metadata only (who, room,
duration, model, language, confidence) — never the words.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from appservice.audit_client import AuditClient
from appservice.config import VoiceConfig
from appservice.holds import Holds
from appservice.homeserver import Homeserver, HomeserverUnreachable, MatrixCallFailed
from appservice.oncall.store import OncallStore
from appservice.voice import engine, models
from appservice.voice.store import VoiceRow, VoiceStore
from carematrix import identity
from carematrix.policy.holder import PolicyHolder
from carematrix.policy.oncall import role_localpart
from carematrix.policy.org import staff_localpart
from carematrix.voice.messages import (
    Transcript,
    VoiceMessage,
    initial_prompt,
    percent,
    problem_content,
    transcript_content,
    voice_message,
)

log = logging.getLogger("carematrix.appservice.voice")

#: A voice message's file larger than this is not fetched (Opus at 24 kbit/s: ~3 KB a second;
#: ten minutes of the richest codec a phone records stays well below).
MAX_DOWNLOAD_BYTES = 25 * 1024 * 1024
ROLE_PRIORITY, ROOM_PRIORITY = 0, 1
#: Recognitions of one message that may die (the worker, or the appservice) before it is
#: given up with a notice.
MAX_ATTEMPTS = 3
#: A message waiting for the homeserver is tried again after 5, 10, 20 ... s, at most this apart.
RETRY_MAX_SECONDS = 60


@dataclass(order=True)
class Job:
    priority: int
    seq: int
    room_id: str = field(compare=False)
    event_id: str = field(compare=False)
    sender: str = field(compare=False)
    voice: VoiceMessage = field(compare=False)
    poster: str = field(compare=False)  # the account that answers in the room
    role_id: str | None = field(compare=False)
    attempts: int = field(compare=False, default=0)  # recognitions started that never returned
    problem: str | None = field(compare=False, default=None)  # the notice to post, once decided
    waits: int = field(compare=False, default=0)  # times it waited for the homeserver (back-off)
    queued_at: float = field(compare=False, default_factory=time.monotonic)


class _TryLater(Exception):
    """The homeserver is away or answered 5xx/429: the message stays pending and is tried
    again after a while."""


class VoiceService:
    # A taker of appservice.intake: transactions without audio are not parsed for it.
    what: str = "voice messages"
    needles: tuple[bytes, ...] = (b'"m.audio"',)

    def __init__(
        self, config: VoiceConfig, holder: PolicyHolder, homeserver: Homeserver, bot: str,
        audit: AuditClient, oncall_store: OncallStore, default_cache: Path, store: VoiceStore,
        holds: Holds | None = None,
    ) -> None:
        self.config = config
        self.holder = holder
        self.matrix = homeserver
        self.bot = bot
        self.audit = audit
        self.oncall_store = oncall_store
        self.store = store
        self.holds = holds
        self.cache_dir = config.cache_dir or default_cache
        # Bounded by admission (``config.queue`` waiting), not by the queue: a message that
        # waited for the homeserver goes back in whatever the length.
        self.queue: asyncio.PriorityQueue[Job] = asyncio.PriorityQueue()
        self._seq = itertools.count()
        self._pool: ProcessPoolExecutor | None = None
        self._models: dict[str, models.SpeechModel] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._waiting: set[asyncio.Task[None]] = set()  # messages waiting to be tried again
        # Messages taken up (queued, being answered, or waiting to be tried again): a
        # delivery of one of them while it is under way starts nothing.
        self._active: set[str] = set()
        self.unavailable: str | None = None  # why transcription is off, for the health endpoint
        self.ready = asyncio.Event()
        #: Called with (room, voice event, transcript event) once a transcript is posted; the
        #: benchmark times the room's view of it.
        self.on_transcript: Callable[[str, str, str], Awaitable[None]] | None = None

    # -- start and stop -------------------------------------------------------------------

    async def start(self) -> None:
        """Verify the models (in a thread: hashing 220 MB), start the worker pool and the
        consumers, then take up the voice messages accepted before the last stop. A model
        that fails its check switches transcription off with an ERROR naming why, and voice
        messages are told so; everything else keeps running."""
        if not self.config.enabled:
            self.unavailable = "switched off in the appservice config (voice.enabled: false)"
        else:
            try:
                self._models = await asyncio.to_thread(
                    models.prepare, self.cache_dir, self.config.model_dir, self.config.model_sha256
                )
            except (models.ModelUnavailable, OSError) as exc:
                self.unavailable = str(exc)
                log.error("voice transcription is off: %s", exc)
        if self.unavailable is None:
            self._pool = self._new_pool()
            for _ in range(self.config.workers):
                self._tasks.append(asyncio.create_task(self._consume()))
            self._tasks.append(asyncio.create_task(self._warm_up()))
            log.info(
                "voice transcription on: %s, %d worker(s) x %d threads, queue %d",
                ", ".join(f"{k}={m.name}" for k, m in self._models.items()), self.config.workers,
                self.config.threads, self.config.queue,
            )
        await self._resume()

    async def _resume(self) -> None:
        rows = await self.store.pending()
        if rows:
            log.info("taking up %d voice message(s) accepted before the restart", len(rows))
        for row in rows:
            await self._take_up(row)

    def _new_pool(self) -> ProcessPoolExecutor:
        # "spawn": a fork of an asyncio process with open sockets and threads is not safe.
        spec = {key: (m.name, str(m.path)) for key, m in self._models.items()}
        return ProcessPoolExecutor(
            max_workers=self.config.workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=engine.init_worker, initargs=(spec, self.config.threads),
        )

    async def _warm_up(self) -> None:
        """Start the workers now (model load, ~1 s each), not on the first voice message."""
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        try:
            await asyncio.gather(*(loop.run_in_executor(self._pool, engine.warm_up) for _ in range(self.config.workers)))
            self.ready.set()
            log.info("voice workers ready")
        except Exception as exc:
            log.error("voice workers failed to start: %s", exc)

    async def stop(self) -> None:
        """What is still pending stays in the database and is taken up after the restart."""
        tasks = [*self._tasks, *self._waiting]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def health(self) -> dict[str, Any]:
        if self.unavailable is not None:
            return {"transcription": "off", "why": self.unavailable}
        return {
            "transcription": "ready" if self.ready.is_set() else "starting",
            "models": {k: m.name for k, m in self._models.items()},
            "queued": self.queue.qsize(),
        }

    # -- events ---------------------------------------------------------------------------

    def voice_messages_in(self, events: list[Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
        """The voice messages to transcribe among a transaction's events (as JSON): (event
        ID, room, sender, content) each."""
        if not self.holder.current.voice.transcribe:
            return []
        found = []
        for raw in events:
            if not isinstance(raw, dict) or raw.get("type") != "m.room.message" or "state_key" in raw:
                continue
            event_id, room_id, sender, content = (raw.get(k) for k in ("event_id", "room_id", "sender", "content"))
            if not (isinstance(event_id, str) and isinstance(room_id, str) and isinstance(sender, str)
                    and isinstance(content, dict)):
                continue
            if voice_message(content) is None or identity.is_system_account(sender, self.bot, self.matrix.server):
                continue
            found.append((event_id, room_id, sender, content))
        return found

    async def accept(self, events: list[Any]) -> int:
        """Called with every transaction's events before the transaction is answered: the
        voice messages among them are written down (raises if they could not be, and the
        transaction must then be refused so the homeserver sends it again). How many."""
        found = self.voice_messages_in(events)
        if found:
            await self.store.accept(found)
        return len(found)

    async def on_message(self, room_id: str, sender: str, event_id: str, content: dict[str, Any]) -> None:
        """Called for every ``m.room.message`` the appservice sees (after ``accept``); returns
        at once."""
        voice = voice_message(content)
        if voice is None or identity.is_system_account(sender, self.bot, self.matrix.server):
            return
        if event_id in self._active:
            return
        row = await self.store.get(event_id)
        if row is None:
            # Not written when its transaction came (transcription was off then).
            if not self.holder.current.voice.transcribe:
                return
            await self.store.accept([(event_id, room_id, sender, content)])
            row = await self.store.get(event_id)
        if row is not None and not row.done:
            await self._take_up(row)

    async def _take_up(self, row: VoiceRow) -> None:
        """A pending message: answered with a notice at once when it cannot be transcribed
        (or its notice is still owed), else queued."""
        if row.event_id in self._active:
            return
        self._active.add(row.event_id)
        try:
            await self._admit(row)
        except BaseException:
            self._active.discard(row.event_id)  # still pending: taken up again at the next start
            raise

    async def _admit(self, row: VoiceRow) -> None:
        policy = self.holder.current.voice
        voice = voice_message(row.content)
        if voice is None or not policy.transcribe:
            await self._finish(row.event_id)
            return
        roles = await self.oncall_store.role_rooms(row.room_id)
        role_id = roles[0][0] if roles else None
        poster = self.matrix.uid(role_localpart(role_id)) if role_id else self.bot
        job = Job(
            ROLE_PRIORITY if role_id else ROOM_PRIORITY, next(self._seq), row.room_id, row.event_id, row.sender,
            voice, poster, role_id, attempts=row.attempts, problem=row.problem,
        )
        if job.problem is not None:
            await self._answer_problem(job, job.problem)  # decided before the restart
        elif voice.encrypted or voice.url is None:
            await self._answer_problem(job, "encrypted")
        elif voice.duration_ms is not None and voice.duration_ms > policy.max_seconds * 1000 + 1000:
            await self._answer_problem(job, "too_long")
        elif self.unavailable is not None:
            log.warning("voice message %s in %s not transcribed: transcription is off (%s)", job.event_id, job.room_id, self.unavailable)
            await self._answer_problem(job, "failed")
        elif self.queue.qsize() >= self.config.queue:
            log.warning("voice queue full (%d waiting): %s in %s not transcribed", self.queue.qsize(), job.event_id, job.room_id)
            await self._answer_problem(job, "busy")
        else:
            self.queue.put_nowait(job)

    # -- the consumers --------------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                await self._process(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("voice message %s in %s: transcription failed", job.event_id, job.room_id)
                try:
                    await self._answer_problem(job, "failed")
                except Exception:
                    log.exception("voice message %s in %s: could not say that it failed", job.event_id, job.room_id)
                    self._active.discard(job.event_id)
            finally:
                self.queue.task_done()

    def _settings(self, job: Job) -> tuple[str | None, str | None]:
        """Language (None: detect) and initial prompt for the unit the message belongs to:
        the on-duty role's unit in its rooms, else the sender's own unit."""
        policy = self.holder.current
        unit: str | None = None
        if job.role_id and policy.oncall and job.role_id in policy.oncall.roles:
            unit = policy.oncall.roles[job.role_id].unit
        if unit is None:
            person = policy.staff_for_localpart(identity.localpart(job.sender))
            unit = person.units[0] if person and person.units else None
        language, glossary = policy.voice.settings_for(policy.ancestry(unit) if unit else [])
        chosen = None if language == "auto" else language
        return chosen, initial_prompt(glossary, chosen)

    async def _process(self, job: Job) -> None:
        if job.problem is not None:
            await self._answer_problem(job, job.problem)
            return
        if self.holds is not None:
            await self.holds.voice.wait(job.event_id)
        assert job.voice.url is not None
        if job.voice.size is not None and job.voice.size > MAX_DOWNLOAD_BYTES:
            await self._answer_problem(job, "too_long")
            return
        if await self._given_up(job):
            return
        try:
            data = await self.matrix.download(job.voice.url)
        except (MatrixCallFailed, HomeserverUnreachable) as exc:
            if exc.transient:
                self._later(job, f"the download failed ({exc})")
                return
            log.warning("voice message %s in %s: download failed: %s", job.event_id, job.room_id, exc)
            await self._answer_problem(job, "download")
            return
        language, prompt = self._settings(job)
        max_seconds = self.holder.current.voice.max_seconds
        while True:
            if await self._given_up(job):
                return
            job.attempts = await self.store.started(job.event_id)
            pool = self._pool
            assert pool is not None
            dies = self.holds is not None and self.holds.voice_worker_dies
            try:
                result = await asyncio.get_running_loop().run_in_executor(
                    pool, engine.die if dies else engine.transcribe, data, language, prompt, max_seconds,
                )
                break
            except asyncio.CancelledError:
                # The appservice is stopping: a recognition cut off by a stop is no death.
                await self.store.not_started(job.event_id)
                raise
            except BrokenProcessPool:
                log.error(
                    "voice worker died on %s in %s (attempt %d of %d); starting new workers",
                    job.event_id, job.room_id, job.attempts, MAX_ATTEMPTS,
                )
                if self._pool is pool:  # not already replaced by another consumer
                    pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = self._new_pool()
        await self.store.returned(job.event_id)
        job.attempts = 0
        if "problem" in result:
            await self._answer_problem(job, str(result["problem"]))
            return
        transcript = Transcript(
            text=str(result["text"]), language=str(result["language"]), model=str(result["model"]),
            confidence=float(result["confidence"]), duration_s=float(result["duration_s"]),
            language_probability=float(result["language_probability"]),
        )
        content = transcript_content(job.event_id, job.sender, transcript)
        paged = await self._paged_for(job)
        if paged:
            content["m.mentions"] = {"user_ids": sorted({job.sender, *paged})}
        try:
            event_id = await self._send(job, content)
        except _TryLater as exc:
            self._later(job, f"the transcript could not be posted ({exc})")
            return
        if event_id is None:
            # Refused (a forward of protected words, say): the warning is logged; the record
            # says no transcript was posted.
            await self._record_problem(job, "not_posted")
            await self._finish(job.event_id)
            return
        waited = time.monotonic() - job.queued_at
        log.info(
            "transcribed %s in %s: %.1f s of %s speech by %s in %.2f s (%.2f s after it arrived)",
            job.event_id, job.room_id, transcript.duration_s, transcript.language, transcript.model,
            float(result["seconds"]), waited,
        )
        await self._finish(job.event_id)
        await self.audit.record(
            actor=job.sender, action="appservice.voice.transcribed", object=job.event_id, room=job.room_id,
            outcome="success", process="appservice",
            details={
                "duration_ms": round(transcript.duration_s * 1000), "model": transcript.model,
                "language": transcript.language, "confidence": percent(transcript.confidence),
                "transcript_event": event_id, **({"role": job.role_id} if job.role_id else {}),
            },
        )
        if event_id and self.on_transcript is not None:
            await self.on_transcript(job.room_id, job.event_id, event_id)

    async def _given_up(self, job: Job) -> bool:
        """Whether recognising this message has died too often (the worker or the whole
        appservice, counted in the database) — then the sender is told, and that is the end."""
        if job.attempts < MAX_ATTEMPTS:
            return False
        log.error(
            "voice message %s in %s from %s: recognition died %d times on it; not tried again",
            job.event_id, job.room_id, job.sender, job.attempts,
        )
        await self._answer_problem(job, "gave_up")
        return True

    def _later(self, job: Job, why: str) -> None:
        """The homeserver is away: the message waits (pending in the database) and goes back
        on the queue after a back-off."""
        job.waits += 1
        delay = min(5 * 2 ** (job.waits - 1), RETRY_MAX_SECONDS)
        log.warning("voice message %s in %s: %s; trying again in %d s", job.event_id, job.room_id, why, delay)

        async def again() -> None:
            await asyncio.sleep(delay)
            self.queue.put_nowait(job)

        task = asyncio.create_task(again())
        self._waiting.add(task)
        task.add_done_callback(self._waiting.discard)

    async def _finish(self, event_id: str) -> None:
        await self.store.done(event_id)
        self._active.discard(event_id)

    async def _paged_for(self, job: Job) -> list[str]:
        """The people a page opened by this voice message reached, so far."""
        if job.role_id is None:
            return []
        for page in await self.oncall_store.open_pages_in(job.room_id):
            if page.event_id == job.event_id:
                return [self.matrix.uid(staff_localpart(s)) for s in page.paged]
        return []

    async def _send(self, job: Job, content: dict[str, Any]) -> str | None:
        """Post the answer; None if the homeserver refused it (logged). Raises _TryLater when
        the refusal may pass. The transaction ID is made from the voice message (and the
        problem), so an answer posted again after a crash is not posted twice."""
        txn = f"voice-{uuid.uuid5(uuid.NAMESPACE_URL, job.event_id + str(content.get('org.carematrix.voice_problem', ''))).hex}"
        try:
            sent = await self.matrix.call(
                "PUT", f"/_matrix/client/v3/rooms/{quote(job.room_id)}/send/m.room.message/{txn}", content,
                as_user=None if job.poster == self.bot else job.poster,
            )
        except (MatrixCallFailed, HomeserverUnreachable) as exc:
            if exc.transient:
                raise _TryLater(str(exc)) from exc
            log.warning("voice message %s in %s: could not post the answer: %s", job.event_id, job.room_id, exc)
            return None
        return str(sent.get("event_id", "")) if isinstance(sent, dict) else None

    async def _answer_problem(self, job: Job, problem: str) -> None:
        """Tell the room, in a short reply, why this voice message has no transcript. The
        notice is written down first: if the homeserver is away it is posted later (after a
        restart too)."""
        if job.problem is None:
            log.warning("voice message %s in %s from %s not transcribed: %s", job.event_id, job.room_id, job.sender, problem)
            await self.store.set_problem(job.event_id, problem)
            job.problem = problem
        content = problem_content(job.event_id, problem, self.holder.current.voice.max_seconds, attempts=MAX_ATTEMPTS)
        try:
            await self._send(job, content)
        except _TryLater as exc:
            self._later(job, f"the notice could not be posted ({exc})")
            return
        await self._finish(job.event_id)
        await self._record_problem(job, problem)

    async def _record_problem(self, job: Job, problem: str) -> None:
        await self.audit.record(
            actor=job.sender, action="appservice.voice.not_transcribed", object=job.event_id, room=job.room_id,
            outcome="failure", process="appservice",
            details={"problem": problem, **({"duration_ms": job.voice.duration_ms} if job.voice.duration_ms else {})},
        )
