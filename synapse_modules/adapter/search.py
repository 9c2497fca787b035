"""Chinese text in Synapse's user directory and message search: the index and the query cut
the same way (carematrix/cjk_search.py), and rows indexed before are re-indexed once.

Synapse splits a directory *query* with a dictionary segmenter (ICU: 心内科 → 心 + 内科)
while its index (SQLite FTS, PostgreSQL ``to_tsvector('simple', …)``) keeps a display name's
run of Chinese characters whole, so "心内科" finds nobody; message search has no CJK
segmentation on either side, so a word inside a message ("王建国" in "患者王建国血钾7.2") is
never a token. Synapse offers modules no hook on either index, so the places below are
wrapped; everything else (ranking, visibility, pagination, English words) stays Synapse's.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from synapse.module_api import ModuleApi

from carematrix import cjk_search
from carematrix.hsdb import search_form_store
from synapse_modules.adapter.homeserver import dialect_of, homeserver
from synapse_modules.adapter.wrapping import wrap_function_once, wrap_once

log = logging.getLogger(__name__)

USER_DIRECTORY = "synapse.storage.databases.main.user_directory"
SEARCH = "synapse.storage.databases.main.search"
SEARCH_ENTRIES = (SEARCH, "SearchWorkerStore")  # store_search_entries_txn
SEARCH_QUERIES = (SEARCH, "SearchStore")  # search_msgs, search_rooms

BATCH = 500


def install_cjk_search() -> None:
    """Index and search Chinese text in the user directory and in messages by characters
    and character pairs. Once per process, before anything is indexed or searched (module
    construction)."""
    # The directory's one text filter, applied to display names when they are indexed and
    # to queries before they are split into words: CJK runs become their index grams, and
    # a name gains its pinyin (which the query's split drops again).
    wrap_function_once(USER_DIRECTORY, "_filter_text_for_index", _filtering_cjk)
    # The query's split into words (ICU): CJK grams pass whole, the rest as before.
    wrap_function_once(USER_DIRECTORY, "_parse_words", _parsing_cjk_words)
    wrap_once(SEARCH_ENTRIES, "store_search_entries_txn", _indexing_cjk_messages)
    wrap_once(SEARCH_QUERIES, "search_msgs", _searching_cjk_messages)
    wrap_once(SEARCH_QUERIES, "search_rooms", _searching_cjk_messages)


def _filtering_cjk(original: Callable[[str], str]) -> Callable[[str], str]:
    @functools.wraps(original)
    def _filter_text_for_index(text: str) -> str:
        return cjk_search.directory_index_form(original(text))

    return _filter_text_for_index


def _parsing_cjk_words(original: Callable[[str], list[str]]) -> Callable[[str], list[str]]:
    @functools.wraps(original)
    def _parse_words(search_term: str) -> list[str]:
        words: list[str] = []
        for cjk, piece in cjk_search.split_cjk(cjk_search.without_pinyin(search_term)):
            if cjk:
                words.append(piece)
            elif piece.strip():
                words.extend(original(piece))
        return cjk_search.collapse_query_words(words)

    return _parse_words


def _indexing_cjk_messages(original: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(original)
    def store_search_entries_txn(self: Any, txn: Any, entries: Iterable[Any]) -> None:
        import attr

        def indexed(entry: Any) -> Any:
            # message_index_value returns the very string it was given when no line is needed
            value = cjk_search.message_index_value(entry.value) if isinstance(entry.value, str) else entry.value
            return entry if value is entry.value else attr.evolve(entry, value=value)

        original(self, txn, [indexed(entry) for entry in entries])

    return store_search_entries_txn


def _searching_cjk_messages(original: Callable[..., Awaitable[dict[str, Any]]]) -> Callable[..., Awaitable[dict[str, Any]]]:
    @functools.wraps(original)
    async def search(self: Any, room_ids: Any, search_term: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if not cjk_search.needs_index_line(search_term):
            return await original(self, room_ids, search_term, *args, **kwargs)
        result = await original(self, room_ids, cjk_search.message_query(search_term), *args, **kwargs)
        # Highlights are what clients mark in the results: the words the user typed, not
        # the character pairs they were searched as.
        runs = cjk_search.cjk_runs(search_term)
        generated = {g for run in runs for g in cjk_search.index_grams(run)}
        generated |= {" ".join(form(run)) for run in runs for form in (cjk_search.query_grams, cjk_search.index_grams, list)}
        highlights = {h for h in result.get("highlights", ()) if h not in generated}
        if result.get("results"):
            highlights |= set(runs)
        result["highlights"] = highlights
        return result

    return search


# -- re-indexing rows written before -------------------------------------------------------


def runs_background_tasks(api: ModuleApi) -> bool:
    """Whether this process runs Synapse's background tasks (the main process unless a
    worker is configured for them): the one process that re-indexes."""
    return bool(homeserver(api).config.worker.run_background_tasks)


async def reindex_if_needed(api: ModuleApi, ready: Callable[[], Awaitable[None]]) -> None:
    """Re-index the user directory and the message index if their recorded form is not the
    code's (a deployment upgraded from a release without Chinese segmentation, or a new
    form). ``ready`` waits for our tables. Failures are logged; the next start tries again."""
    await ready()
    dialect = dialect_of(api)
    for index_name, reindex in (
        (search_form_store.USER_DIRECTORY, _reindex_user_directory),
        (search_form_store.MESSAGES, _reindex_messages),
    ):
        form = await api.run_db_interaction(
            "carematrix_search_form", search_form_store.form_of, dialect, index_name
        )
        if form == cjk_search.INDEX_FORM:
            continue
        started = time.monotonic()
        try:
            rows = await reindex(api, dialect)
        except Exception:
            log.warning(
                "re-indexing Chinese text in %s failed; names and messages written before this "
                "release are not found by Chinese words until the next start retries",
                index_name, exc_info=True,
            )
            continue
        await api.run_db_interaction(
            "carematrix_search_form", search_form_store.record_form, dialect, index_name,
            cjk_search.INDEX_FORM, rows,
        )
        log.info(
            "re-indexed %d rows of %s for Chinese search (form %s) in %.1f s",
            rows, index_name, cjk_search.INDEX_FORM, time.monotonic() - started,
        )


async def _reindex_user_directory(api: ModuleApi, dialect: str) -> int:
    """Rewrite the search row of every directory entry whose display name has CJK text,
    through Synapse's own index statement (with the filter above). Remote users whose
    profile Synapse has marked stale are left to Synapse's refresh, which re-indexes them
    (rewriting them here would clear the mark)."""
    from synapse.storage.databases.main.user_directory import _UserDirProfile

    store = homeserver(api).get_datastores().main
    after = ""
    rows = 0
    while True:
        batch = await store.db_pool.runInteraction(
            "carematrix_reindex_user_directory", _directory_batch, store, _UserDirProfile, after
        )
        if batch is None:
            return rows
        after, written = batch
        rows += written


def _directory_batch(txn: Any, store: Any, profile: Any, after: str) -> tuple[str, int] | None:
    txn.execute(
        "SELECT d.user_id, d.display_name, d.avatar_url FROM user_directory AS d "
        "WHERE d.user_id > ? AND NOT EXISTS (SELECT 1 FROM user_directory_stale_remote_users AS s "
        "WHERE s.user_id = d.user_id) ORDER BY d.user_id LIMIT ?",
        (after, BATCH),
    )
    found = txn.fetchall()
    if not found:
        return None
    profiles = [profile(user_id, name, avatar) for user_id, name, avatar in found if name and cjk_search.is_cjk(name)]
    if profiles:
        store._update_profiles_in_user_dir_txn(txn, profiles)
    return found[-1][0], len(profiles)


async def _reindex_messages(api: ModuleApi, dialect: str) -> int:
    """Rewrite the full-text row of every message, room name and topic with CJK text.
    SQLite keeps the indexed text in the row; PostgreSQL keeps only the vector, rebuilt
    from the event's stored JSON."""
    store = homeserver(api).get_datastores().main
    after: Any = 0 if dialect == "sqlite" else ""
    rows = 0
    batch_of = _message_batch_sqlite if dialect == "sqlite" else _message_batch_postgres
    while True:
        batch = await store.db_pool.runInteraction("carematrix_reindex_messages", batch_of, after)
        if batch is None:
            return rows
        after, written = batch
        rows += written


def _message_batch_sqlite(txn: Any, after: int) -> tuple[int, int] | None:
    txn.execute("SELECT rowid, value FROM event_search WHERE rowid > ? ORDER BY rowid LIMIT ?", (after, BATCH))
    found = txn.fetchall()
    if not found:
        return None
    changed = [
        (new_value, rowid)
        for rowid, value in found
        if isinstance(value, str) and (new_value := cjk_search.message_index_value(value)) != value
    ]
    for new_value, rowid in changed:
        txn.execute("UPDATE event_search SET value = ? WHERE rowid = ?", (new_value, rowid))
    return int(found[-1][0]), len(changed)


def _message_batch_postgres(txn: Any, after: str) -> tuple[str, int] | None:
    txn.execute(
        "SELECT s.event_id, s.key, j.json FROM event_search AS s JOIN event_json AS j USING (event_id) "
        "WHERE s.event_id > ? ORDER BY s.event_id LIMIT ?",
        (after, BATCH),
    )
    found = txn.fetchall()
    if not found:
        return None
    changed = 0
    for event_id, key, event_json in found:
        value = _content_value(event_json, key)
        if value is None or not cjk_search.needs_index_line(value):
            continue
        txn.execute(
            "UPDATE event_search SET vector = to_tsvector('english', ?) WHERE event_id = ? AND key = ?",
            (cjk_search.message_index_value(value.replace("\u0000", " ")), event_id, key),
        )
        changed += 1
    return str(found[-1][0]), changed


def _content_value(event_json: str, key: str) -> str | None:
    """The text an ``event_search`` key ("content.body") names in an event's JSON."""
    try:
        event = json.loads(event_json)
    except ValueError:
        return None
    value: Any = event
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value if isinstance(value, str) else None
