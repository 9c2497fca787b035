"""Durable HL7 intake in the appservice database: every accepted message is stored before its
ACK is sent and stays until it has been delivered; rejected ones go to a dead-letter table;
the patient registry remembers each patient's ward from ADT so results without a PV1 find
their ward. The tables are made by appservice.migrations."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from mautrix.util.async_db import Database

from appservice.db import transaction


@dataclass(frozen=True)
class Inbound:
    id: int
    facility: str
    control_id: str
    raw: bytes
    message_type: str = ""
    urgent: bool = False  # delivered ahead of the backlog (a critical result)


class ClinicalStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def accept(
        self, facility: str, control_id: str, message_type: str, raw: bytes, urgent: bool = False,
        patient_id: str | None = None,
    ) -> bool:
        """Store an inbound message; False if this (facility, control ID) was accepted before
        (a resend after a lost ACK), which must be acknowledged again but not delivered twice.
        ``urgent`` (a critical result) is delivered before any backlog of routine messages."""
        existing = await self.db.fetchrow(
            "SELECT id FROM hl7_inbox WHERE facility = $1 AND control_id = $2", facility, control_id
        )
        if existing:
            return False
        await self.db.execute(
            "INSERT INTO hl7_inbox (facility, control_id, message_type, received_at, raw, state, urgent, patient_id) "
            "VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7) ON CONFLICT (facility, control_id) DO NOTHING",
            facility, control_id, message_type, int(time.time() * 1000), raw, 1 if urgent else 0, patient_id,
        )
        return True

    async def dead_letter(self, peer: str, raw: bytes, code: str, error: str) -> None:
        await self.db.execute(
            "INSERT INTO hl7_dead_letter (received_at, peer, raw, error_code, error) VALUES ($1, $2, $3, $4, $5)",
            int(time.time() * 1000), peer, raw, code, error[:1000],
        )

    async def pending(self, limit: int = 100) -> list[Inbound]:
        rows = await self.db.fetch(
            "SELECT id, facility, control_id, raw, message_type, urgent FROM hl7_inbox WHERE state = 'pending' "
            "ORDER BY urgent DESC, id LIMIT $1", limit
        )
        return [
            Inbound(r["id"], r["facility"], r["control_id"], bytes(r["raw"]), r["message_type"], bool(r["urgent"]))
            for r in rows
        ]

    async def pending_movements_before(self, inbox_id: int, patient_id: str, limit: int = 200) -> list[Inbound]:
        """Admissions, transfers and encounters still queued ahead of ``inbox_id`` that are
        (or may be: FHIR encounters name their patient only once read) about this patient: a
        critical result jumps the queue, but the ADT that says where its patient lies must not
        be left behind it."""
        rows = await self.db.fetch(
            "SELECT id, facility, control_id, raw, message_type FROM hl7_inbox WHERE state = 'pending' AND id < $1 "
            "AND (message_type LIKE 'ADT%' OR message_type = 'FHIR/Encounter') "
            "AND (patient_id = $2 OR patient_id IS NULL) ORDER BY id DESC LIMIT $3",
            inbox_id, patient_id, limit,
        )
        # The newest ``limit`` (the patient's latest movements sit just ahead of the result,
        # however long the backlog), handed back oldest first.
        return [Inbound(r["id"], r["facility"], r["control_id"], bytes(r["raw"]), r["message_type"]) for r in reversed(rows)]

    async def done(self, inbox_id: int, state: str, result: str) -> None:
        await self.db.execute("UPDATE hl7_inbox SET state = $1, result = $2 WHERE id = $3", state, result[:500], inbox_id)

    async def counts(self) -> dict[str, int]:
        rows = await self.db.fetch("SELECT state, COUNT(*) AS n FROM hl7_inbox GROUP BY state")
        out = {r["state"]: int(r["n"]) for r in rows}
        out["dead_letter"] = int((await self.db.fetchval("SELECT COUNT(*) FROM hl7_dead_letter")) or 0)
        return out

    async def remember_patient(self, patient_id: str, name: str, ward: str | None, bed: str | None) -> None:
        await self.db.execute(
            "INSERT INTO clinical_patient (patient_id, name, ward, bed, updated_at) VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT (patient_id) DO UPDATE SET name = excluded.name, ward = excluded.ward, "
            "bed = excluded.bed, updated_at = excluded.updated_at",
            patient_id, name, ward, bed, int(time.time() * 1000),
        )

    async def patient(self, patient_id: str) -> dict[str, Any] | None:
        row = await self.db.fetchrow("SELECT name, ward, bed FROM clinical_patient WHERE patient_id = $1", patient_id)
        return dict(row) if row else None

    async def link_alert(self, facility: str, control_id: str, page_id: str, role: str, patient_id: str | None = None) -> None:
        await self.db.execute(
            "INSERT INTO clinical_alert (control_id, facility, page_id, role, patient_id) VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT DO NOTHING",
            control_id, facility, page_id, role, patient_id,
        )

    async def open_alerts_for(self, patient_id: str) -> list[tuple[str, str, str, str]]:
        """(facility, control ID, page ID, role) of every alert page about this patient."""
        rows = await self.db.fetch(
            "SELECT facility, control_id, page_id, role FROM clinical_alert WHERE patient_id = $1 ORDER BY page_id",
            patient_id,
        )
        return [(r["facility"], r["control_id"], r["page_id"], r["role"]) for r in rows]

    async def alert_of_page(self, page_id: str) -> dict[str, Any] | None:
        """The clinical message a page was opened for (facility, control ID, patient and the
        patient's name and ward as last known), or None for a page staff sent themselves."""
        row = await self.db.fetchrow(
            "SELECT a.facility, a.control_id, a.patient_id, p.name, p.ward, p.bed FROM clinical_alert a "
            "LEFT JOIN clinical_patient p ON p.patient_id = a.patient_id WHERE a.page_id = $1",
            page_id,
        )
        return dict(row) if row else None

    async def inbox_item(self, facility: str, control_id: str) -> dict[str, Any] | None:
        row = await self.db.fetchrow(
            "SELECT id, message_type, received_at, state, result FROM hl7_inbox WHERE facility = $1 AND control_id = $2",
            facility, control_id,
        )
        return dict(row) if row else None

    async def undelivered(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = await self.db.fetch(
            "SELECT facility, control_id, message_type, received_at, result FROM hl7_inbox "
            "WHERE state = 'unroutable' ORDER BY id DESC LIMIT $1", limit,
        )
        return [dict(r) for r in rows]

    async def alert_room(self, inbox_id: int) -> str | None:
        return await self.db.fetchval("SELECT room_id FROM clinical_alert_room WHERE inbox_id = $1", inbox_id)

    async def set_alert_room(self, inbox_id: int, room_id: str) -> None:
        await self.db.execute(
            "INSERT INTO clinical_alert_room (inbox_id, room_id) VALUES ($1, $2) ON CONFLICT (inbox_id) DO NOTHING",
            inbox_id, room_id,
        )

    async def add_spare_alert_room(self, room_id: str) -> None:
        await self.db.execute(
            "INSERT INTO clinical_spare_alert_room (room_id, made_at) VALUES ($1, $2)", room_id, int(time.time() * 1000)
        )

    async def spare_alert_rooms(self) -> int:
        return int(await self.db.fetchval("SELECT COUNT(*) FROM clinical_spare_alert_room") or 0)

    async def take_spare_alert_room(self, inbox_id: int) -> str | None:
        """The oldest spare alert room becomes this message's (None if there is none). Taken
        by a single delete, so two alerts taking one at once never get the same room."""
        async with transaction(self.db) as conn:
            room_id = await conn.fetchval(
                "DELETE FROM clinical_spare_alert_room WHERE room_id = "
                "(SELECT room_id FROM clinical_spare_alert_room ORDER BY made_at LIMIT 1) RETURNING room_id"
            )
            if room_id is not None:
                await conn.execute(
                    "INSERT INTO clinical_alert_room (inbox_id, room_id) VALUES ($1, $2) ON CONFLICT (inbox_id) DO NOTHING",
                    inbox_id, room_id,
                )
        return str(room_id) if room_id is not None else None

    async def alert_pages(self, facility: str, control_id: str) -> list[tuple[str, str]]:
        rows = await self.db.fetch(
            "SELECT page_id, role FROM clinical_alert WHERE facility = $1 AND control_id = $2 ORDER BY role",
            facility, control_id,
        )
        return [(r["page_id"], r["role"]) for r in rows]

    async def direct_room(self, user_id: str) -> str | None:
        return await self.db.fetchval("SELECT room_id FROM clinical_direct WHERE user_id = $1", user_id)

    async def set_direct_room(self, user_id: str, room_id: str) -> None:
        await self.db.execute(
            "INSERT INTO clinical_direct (user_id, room_id) VALUES ($1, $2) "
            "ON CONFLICT (user_id) DO UPDATE SET room_id = excluded.room_id",
            user_id, room_id,
        )
