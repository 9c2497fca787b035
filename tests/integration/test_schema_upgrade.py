"""Databases made by CareMatrix before its tables had numbered migrations are upgraded with
every row intact, on SQLite and PostgreSQL, and work with today's code afterwards.

The fixtures (tests/fixtures/pre_migrations/) are dumps of databases the code at 09ffe83
made and filled through its own stores (generate.py there). Each test loads one into a new
database, reads every row of every table, upgrades, and reads them again.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from mautrix.appservice.state_store.asyncpg import PgASStateStore
from mautrix.util.async_db import Database

from appservice import migrations as as_migrations
from appservice.clinical.cases import CaseStore
from appservice.clinical.store import ClinicalStore
from appservice.oncall.store import OncallStore
from appservice.voice.store import VoiceStore
from carematrix.audit.checkpoint import load_verify_keys
from carematrix.audit.record import AuditRecord
from carematrix.audit.verify import verify
from carematrix.hsdb import burn_store, forward_store, image_store, media_store
from carematrix.hsdb import migrations as hs_migrations
from carematrix.hsdb.audit_store import append
from carematrix.protect import perceptual
from carematrix.protect.fingerprint import content_fingerprints
from carematrix_ops.audit_db import connect
from carematrix_ops.pgadmin import create_database, database_url, drop_database, on_maintenance_db
from tests import image_corpus as corpus
from tests.ports import TEST_SERVER_URL

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "pre_migrations"
# The message the fixture recorded as protected content in !icu (see generate.py).
PROTECTED_TEXT = "K+ 6.8 mmol/L on the 06:00 bloods, ECG shows peaked T waves; repeat potassium at 08:00."
HOMESERVER_TABLES = {
    "carematrix_audit_log", "carematrix_audit_head", "carematrix_audit_checkpoint",
    "carematrix_protected_fingerprint", "carematrix_protected_origin", "carematrix_protected_media",
    "carematrix_watermark_delivery", "carematrix_burn",
}
APPSERVICE_TABLES = {
    "carematrix_org_account", "oncall_shift", "oncall_feed", "oncall_override", "oncall_page", "oncall_outbox",
    "oncall_quiet_pref", "oncall_holders", "oncall_page_notice", "oncall_page_seen", "oncall_role_dm",
    "oncall_role_room", "hl7_inbox", "hl7_dead_letter", "clinical_patient", "clinical_direct", "clinical_alert",
    "clinical_alert_room", "clinical_case",
}


class Backend:
    """New empty databases of one kind, and plain DB-API access to them."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self._tmp = tmp_path
        self._pg: list[str] = []

    def new(self) -> str:
        """A DB-API target (file path or postgresql:// URL) of a new empty database."""
        if self.kind == "sqlite":
            return str(self._tmp / f"{secrets.token_hex(4)}.db")
        name = f"carematrix_upgrade_{secrets.token_hex(4)}"
        on_maintenance_db(TEST_SERVER_URL, create_database, name)
        self._pg.append(name)
        return database_url(TEST_SERVER_URL, name)

    def loaded(self, dump: str) -> str:
        """A new database holding a fixture dump."""
        target = self.new()
        text = (FIXTURES / f"{dump}.{self.kind}.sql").read_text()
        if self.kind == "sqlite":
            conn = sqlite3.connect(target)
            conn.executescript(text)
        else:
            conn = psycopg2.connect(target)
            conn.autocommit = True
            conn.cursor().execute(text)
        conn.close()
        return target

    @staticmethod
    def mautrix_url(target: str) -> str:
        return target if target.startswith("postgresql://") else f"sqlite:///{target}"

    def rows(self, target: str) -> dict[str, list[tuple[Any, ...]]]:
        """Every table's rows as sorted (column, value) tuples: order of rows and columns aside."""
        out = {}
        with self._cursor(target) as cur:
            for table in self._tables(cur):
                cur.execute(f'SELECT * FROM "{table}"')
                names = [d[0] for d in cur.description]
                out[table] = sorted(
                    (tuple(sorted(zip(names, map(_plain, row), strict=True))) for row in cur.fetchall()), key=repr
                )
        return out

    def shape(self, target: str) -> dict[str, Any]:
        """Tables with their columns (name, type, nullability, default), and index names."""
        with self._cursor(target) as cur:
            if self.kind == "sqlite":
                columns = {}
                for table in self._tables(cur):
                    cur.execute(f'PRAGMA table_info("{table}")')
                    columns[table] = sorted((r[1], r[2], r[3], r[4], r[5]) for r in cur.fetchall())
                cur.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
            else:
                cur.execute(
                    "SELECT table_name, column_name, data_type, is_nullable, column_default "
                    "FROM information_schema.columns WHERE table_schema = 'public'"
                )
                columns = {}
                for table, *column in cur.fetchall():
                    columns.setdefault(table, []).append(tuple(column))
                columns = {t: sorted(c) for t, c in columns.items()}
                cur.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")
            return {"columns": columns, "indexes": sorted(r[0] for r in cur.fetchall())}

    def _tables(self, cur: Any) -> list[str]:
        if self.kind == "sqlite":
            cur.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        else:
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        return sorted(r[0] for r in cur.fetchall())

    def _cursor(self, target: str) -> Any:
        return _Cursor(sqlite3.connect(target) if self.kind == "sqlite" else psycopg2.connect(target))

    def drop_all(self) -> None:
        for name in self._pg:
            on_maintenance_db(TEST_SERVER_URL, drop_database, name)


class _Cursor:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def __enter__(self) -> Any:
        return self._conn.cursor()

    def __exit__(self, *exc: object) -> None:
        self._conn.close()


def _plain(value: Any) -> Any:
    return bytes(value) if isinstance(value, memoryview) else value


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = Backend(request.param, tmp_path)
    yield b
    b.drop_all()


# -- the homeserver database ----------------------------------------------------------------


def test_homeserver_rows_survive_the_upgrade(backend):
    target = backend.loaded("homeserver")
    before = backend.rows(target)
    assert set(before) == HOMESERVER_TABLES
    assert all(before[t] for t in HOMESERVER_TABLES), "the fixture has rows in every table"
    with connect(target) as db:
        assert hs_migrations.upgrade(db.transaction, db.dialect) == (0, hs_migrations.LATEST)
    after = backend.rows(target)
    assert {t: after[t] for t in before} == before


def test_an_upgraded_homeserver_database_works_with_todays_code(backend):
    target = backend.loaded("homeserver")
    keys = load_verify_keys(FIXTURES / "audit-verify.key")
    with connect(target) as db:
        hs_migrations.upgrade(db.transaction, db.dialect)
        with db.transaction(read_only=True) as txn:
            hs_migrations.require_current(txn, db.dialect)  # what `carematrix audit verify` checks
            result = verify(txn, db.dialect, keys)
        assert result.ok, result.problem
        assert result.count == 6
        with db.transaction() as txn:
            record = AuditRecord(actor="@auditor:hospital.example", action="audit.query", object="audit", process="main")
            assert append(txn, db.dialect, [record]) == [7]
        with db.transaction(read_only=True) as txn:
            assert verify(txn, db.dialect, keys).count == 7
            copy = content_fingerprints("m.room.message", {"msgtype": "m.text", "body": PROTECTED_TEXT})
            match = forward_store.find_foreign(txn, db.dialect, copy, (), "!ward7:hospital.example")
            assert match is not None and match.origin_event == "$ev1"
            assert [p.event_id for p in media_store.postings_of(txn, db.dialect, "abcMEDIA1")] == ["$img1"]
            assert [d.user_id for d in media_store.deliveries(txn, db.dialect)] == ["@dr.chen:hospital.example"]
            assert sorted(b.event_id for b in burn_store.pending(txn, db.dialect)) == ["$burn1", "$burn2"]
        # migration 2: protected images are filed and found on the upgraded database
        protected = corpus.chest_film(1)
        with db.transaction() as txn:
            features = perceptual.protected_features(corpus.encode(protected))
            assert image_store.record_image(txn, db.dialect, "!ward7:hospital.example", "$img2", "abcMEDIA2", features, 1)
        views = perceptual.candidate_views(corpus.jpeg(corpus.resized(protected, 0.7), 80))
        with db.transaction(read_only=True) as txn:
            found = image_store.shortlisted(txn, db.dialect, views, "!dm:hospital.example")
        assert [f.event_id for f in found][:1] == ["$img2"]


def test_a_fresh_homeserver_database_has_the_upgraded_ones_shape(backend):
    old = backend.loaded("homeserver")
    fresh = backend.new()
    for target in (old, fresh):
        with connect(target) as db:
            hs_migrations.upgrade(db.transaction, db.dialect)
    assert backend.shape(fresh) == backend.shape(old)


# -- the appservice database ----------------------------------------------------------------


@asynccontextmanager
async def opened(backend: Backend, target: str) -> AsyncIterator[tuple[Database, tuple[int, int]]]:
    """The database opened and upgraded as the appservice does at start; closed after."""
    db = Database.create(backend.mautrix_url(target), upgrade_table=PgASStateStore.upgrade_table, owner_name="carematrix")
    await db.start()
    try:
        yield db, await as_migrations.upgrade(db)
    finally:
        await db.stop()


async def test_appservice_rows_survive_the_upgrade(backend):
    target = backend.loaded("appservice")
    before = backend.rows(target)
    assert APPSERVICE_TABLES <= set(before)
    assert all(before[t] for t in APPSERVICE_TABLES), "the fixture has rows in every table"
    async with opened(backend, target) as (_, versions):
        assert versions == (0, len(as_migrations.upgrade_table.upgrades))
    after = backend.rows(target)
    assert {t: after[t] for t in before} == before


async def test_an_upgraded_appservice_database_works_with_todays_code(backend):
    async with opened(backend, backend.loaded("appservice")) as (db, _):
        oncall, clinical, cases = OncallStore(db), ClinicalStore(db), CaseStore(db)
        page = await oncall.page("page-1")
        assert page is not None
        assert (page.priority, page.subject, page.role_name, page.paged) == (
            "critical", "Bed 12: K+ 6.8", "ICU registrar", ("S1001",),
        )
        assert [p.page_id for p in await oncall.open_pages_noticed_in("!icu:hospital.example")] == ["page-1"]
        assert [(q.key, q.page_priority) for q in await oncall.unsent()] == [("txn-1", "critical")]
        assert len(await oncall.shifts()) == 2
        assert [(i.control_id, i.urgent) for i in await clinical.pending()] == [("MSG0001", True)]
        assert await clinical.open_alerts_for("P-1001")
        assert (await cases.by_origin("ORM-77") or {}).get("state") == "closed"
        assert await clinical.accept("LAB", "MSG0003", "ORU^R01", b"MSH|...", urgent=False, patient_id="P-1001")


async def test_a_fresh_appservice_database_has_the_upgraded_ones_shape(backend):
    old = backend.loaded("appservice")
    fresh = backend.new()
    for target in (old, fresh):
        async with opened(backend, target):
            pass
    assert backend.shape(fresh) == backend.shape(old)


async def test_a_fresh_appservice_database_gets_the_latest_version_once(backend):
    target = backend.new()
    latest = len(as_migrations.upgrade_table.upgrades)
    async with opened(backend, target) as (db, versions):
        assert versions == (0, latest)
        await OncallStore(db).set_quiet_pref("S1", True)
    assert APPSERVICE_TABLES <= set(backend.rows(target))
    async with opened(backend, target) as (db, versions):
        assert versions == (latest, latest)
        assert await OncallStore(db).quiet_prefs() == {"S1": True}


async def test_a_newer_appservice_database_is_refused_and_left_alone(backend):
    target = backend.new()
    async with opened(backend, target) as (db, (_, latest)):
        await db.execute(f"UPDATE {as_migrations.VERSION_TABLE} SET version = {latest + 1}")
    with pytest.raises(hs_migrations.SchemaVersionError) as info:
        async with opened(backend, target):
            pass
    message = str(info.value)
    assert f"the appservice database is at CareMatrix schema version {latest + 1}, newer than" in message
    assert "Run that version, or restore the database backup" in message
    assert backend.rows(target)[as_migrations.VERSION_TABLE] == [(("version", latest + 1),)]


async def test_voice_messages_written_down_are_pending_after_a_reopen(backend):
    """Upgrade 5: a voice message accepted before a crash is still pending when the appservice
    opens the database again, with the recognitions that died on it counted; an answered
    one is not, and keeps no file URL."""
    target = backend.loaded("appservice")
    content = {"msgtype": "m.audio", "url": "mxc://h/abc", "info": {"duration": 6000}, "org.matrix.msc3245.voice": {}}
    async with opened(backend, target) as (db, _):
        store = VoiceStore(db)
        await store.accept([("$v1", "!r:h", "@n1:h", content), ("$v2", "!r:h", "@n1:h", content)])
        await store.accept([("$v1", "!r:h", "@n1:h", {"msgtype": "m.audio"})])  # redelivered: left alone
        assert await store.started("$v1") == 1
        assert await store.started("$v1") == 2
        assert await store.started("$v1") == 3
        await store.not_started("$v1")  # that one was called off by a stop
        await store.set_problem("$v2", "busy")
        await store.done("$v2")
    async with opened(backend, target) as (db, _):
        store = VoiceStore(db)
        (pending,) = await store.pending()
        assert (pending.event_id, pending.content, pending.attempts, pending.problem) == ("$v1", content, 2, None)
        await store.returned("$v1")
        assert (await store.get("$v1")).attempts == 0  # type: ignore[union-attr]
        answered = await store.get("$v2")
        assert answered is not None and answered.done and answered.content == {} and answered.problem == "busy"
