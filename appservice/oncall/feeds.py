"""Roster feeds: each feed in the on-call policy (a file beside the policy or a URL) is read
when it changes or is due, parsed off the event loop and put in force; a feed that cannot be
read or parsed leaves the previous roster in force and the admins are told once."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import aiohttp

from appservice.homeserver import MatrixCallFailed
from appservice.oncall.context import OncallContext
from bridges.roster import FeedConfig, FeedInvalid, parse_feed
from bridges.roster.config import DEFAULT_COLUMNS

log = logging.getLogger("carematrix.appservice.oncall")

ROSTER_PAST = timedelta(days=2)
ROSTER_AHEAD = timedelta(days=35)
# A recurring feed is expanded for [now - ROSTER_PAST, now + ROSTER_AHEAD]. An unchanged file
# is otherwise never parsed again, so the shifts in force would run out after ROSTER_AHEAD of
# uptime (pages to a "roster gap"): once less than this is left ahead, or the clock is moved
# back before the window, the feed is expanded again for the clock's new position.
ROSTER_KEEP_AHEAD = timedelta(days=28)
# How often a feed that cannot be re-expanded (unreadable, broken) is tried again for that.
STALE_RETRY_SECONDS = 30.0
# An edited feed file is read once it has stayed the same (time and size) this long. A HIS
# export arriving over SFTP, or a tool that rewrites the file in place, leaves it empty or
# half written for a while; read then, it was rejected and the roster office was told of an
# error in a roster nobody had sent (the last good roster stayed in force either way).
FEED_SETTLE_SECONDS = 2.0


class RosterFeeds:
    def __init__(self, ctx: OncallContext) -> None:
        self.ctx = ctx
        self.errors: dict[str, str] = {}  # feed -> why its last read was rejected
        self._checked: dict[str, float] = {}
        self._stamps: dict[str, tuple[int, int] | None] = {}
        self._windows: dict[str, tuple[datetime, datetime]] = {}  # feed -> window in force
        self._failed_at: dict[str, float] = {}  # feed -> when its last read was rejected
        self._edits: dict[str, tuple[tuple[int, int], float]] = {}  # feed -> edit seen, since when

    def _settled(self, feed_id: str, stamp: tuple[int, int]) -> bool:
        """Whether an edit seen in ``stamp`` has stayed unchanged for FEED_SETTLE_SECONDS."""
        now = time.monotonic()
        seen = self._edits.get(feed_id)
        if seen is None or seen[0] != stamp:
            self._edits[feed_id] = (stamp, now)
            return False
        return now - seen[1] >= FEED_SETTLE_SECONDS

    def _window_stale(self, feed_id: str, now: datetime) -> bool:
        window = self._windows.get(feed_id)
        if window is None:
            return True
        return now - ROSTER_PAST < window[0] or now + ROSTER_KEEP_AHEAD > window[1]

    async def refresh(self, policy_dir: Path, force: bool = False) -> None:
        ctx = self.ctx
        oncall = ctx.oncall
        if oncall is None:
            return
        now = ctx.clock.now()
        changed = False
        for feed in oncall.feeds:
            last = self._checked.get(feed.id, 0.0)
            stamp = _file_stamp(policy_dir, feed.path)
            edited = stamp is not None and stamp != self._stamps.get(feed.id)
            if stamp is not None and edited and not force and not self._settled(feed.id, stamp):
                continue  # still being written, or just written: read on a later poll
            stale = (self._window_stale(feed.id, now)
                     and time.monotonic() - self._failed_at.get(feed.id, -STALE_RETRY_SECONDS) >= STALE_RETRY_SECONDS)
            if not force and not edited and not stale and time.monotonic() - last < feed.refresh_seconds:
                continue
            self._stamps[feed.id] = stamp
            self._edits.pop(feed.id, None)
            self._checked[feed.id] = time.monotonic()
            source = feed.url or feed.path or feed.id
            try:
                data = await _read_feed(policy_dir, feed.path, feed.url)
                digest = hashlib.sha256(data).hexdigest()
                if not force and not stale and digest == await ctx.store.feed_digest(feed.id):
                    # Back to the content in force (e.g. a broken edit was reverted).
                    self.errors.pop(feed.id, None)
                    continue
                config = FeedConfig(
                    timezone=oncall.timezone, roles=feed.roles, staff=feed.staff,
                    known_staff=frozenset(p.staff_number for p in ctx.policy.staff),
                    known_roles=frozenset(oncall.roles), role_from=feed.role_from,  # type: ignore[arg-type]
                    encoding=feed.encoding, columns=feed.columns or DEFAULT_COLUMNS,
                )
                # In a thread: a large roster takes a good part of a second to parse, and every
                # policy edit re-reads them all (MLLP ACKs and escalations must not wait).
                window = (now - ROSTER_PAST, now + ROSTER_AHEAD)
                shifts = await asyncio.to_thread(parse_feed, feed.kind, data, source, config, window)
            except (TimeoutError, OSError, aiohttp.ClientError, FeedInvalid, ValueError) as exc:
                message = str(exc) if isinstance(exc, FeedInvalid | ValueError) else f"{source}: cannot read the feed ({exc})"
                self._failed_at[feed.id] = time.monotonic()
                await self._problem(feed.id, message, now)
                continue
            await ctx.store.replace_feed(feed.id, shifts, digest, now)
            self._windows[feed.id] = window
            self._failed_at.pop(feed.id, None)
            self.errors.pop(feed.id, None)
            changed = True
            log.info("roster feed %s: %d shifts in force from %s to %s", feed.id, len(shifts),
                     window[0].isoformat(timespec="minutes"), window[1].isoformat(timespec="minutes"))
            await ctx.audit.record(
                actor=ctx.bot, action="appservice.roster.loaded", object=feed.id, outcome="success",
                process="appservice", details={"shifts": len(shifts), "digest": digest[:16]},
            )
        if changed:
            await ctx.reload_roster()

    async def _problem(self, feed_id: str, message: str, now: datetime) -> None:
        """The previous roster stays in force; the admins hear about it once per new error."""
        if self.errors.get(feed_id) == message:
            return
        ctx = self.ctx
        self.errors[feed_id] = message
        log.error("roster feed %s rejected, previous roster kept:\n%s", feed_id, message)
        await ctx.store.feed_failed(feed_id, message, now)
        await ctx.audit.record(
            actor=ctx.bot, action="appservice.roster.rejected", object=feed_id, outcome="failure",
            process="appservice", details={"errors": message.count("\n") + 1},
        )
        room = ctx.oncall.admin_room if ctx.oncall else None
        if room:
            try:
                room_id = (await ctx.matrix.call("GET", f"/_matrix/client/v3/directory/room/{quote('#' + room + ':' + ctx.matrix.server)}"))["room_id"]
                await ctx.notice(room_id, ctx.bot, f"排班数据源 '{feed_id}' 被拒收，原排班继续有效。 Roster feed '{feed_id}' was rejected; the previous roster stays in force.\n{message}", None)
            except MatrixCallFailed as exc:
                log.error("could not tell the admin room about feed %s: %s", feed_id, exc)


def _file_stamp(policy_dir: Path, path: str | None) -> tuple[int, int] | None:
    """A file feed is re-read as soon as it changes, not only every ``refresh``."""
    if path is None:
        return None
    try:
        st = (policy_dir / path).stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


async def _read_feed(policy_dir: Path, path: str | None, url: str | None) -> bytes:
    if path is not None:
        return (policy_dir / path).read_bytes()
    async with aiohttp.ClientSession() as session, session.get(url, timeout=aiohttp.ClientTimeout(total=30)) as resp:  # type: ignore[arg-type]
        resp.raise_for_status()
        return await resp.read()
