"""Chinese first in search: colleagues and on-duty role addresses are found in the user
directory by any part of their Chinese name, unit or title, and message search finds a
Chinese word inside a message — with English search unchanged (docs/search.md)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from nio import AsyncClient, RoomSendResponse

from tests.support import RunningStack, eventually

# On workers the message index is written by the event persister and searched by a client
# reader, the directory by the user-directory worker: each must run the CJK hooks.
pytestmark = pytest.mark.worker_pass


async def post(client: AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.post(
        client.homeserver + path, json=body, headers={"Authorization": f"Bearer {client.access_token}"},
    ) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def directory(client: AsyncClient, term: str) -> dict[str, str]:
    """user ID -> display name of everyone the user directory finds for ``term``."""
    body = await post(client, "/_matrix/client/v3/user_directory/search", {"search_term": term, "limit": 50})
    return {u["user_id"]: u.get("display_name") or "" for u in body["results"]}


async def search_messages(client: AsyncClient, room_id: str, term: str) -> tuple[list[str], set[str]]:
    """(event IDs found in ``room_id``, highlights) for ``term``, as Element asks."""
    body = await post(client, "/_matrix/client/v3/search", {"search_categories": {"room_events": {
        "search_term": term, "order_by": "recent", "filter": {"rooms": [room_id], "limit": 50},
    }}})
    found = body["search_categories"]["room_events"]
    return [r["result"]["event_id"] for r in found["results"]], set(found.get("highlights", []))


async def test_people_and_role_addresses_are_found_by_any_part_of_their_chinese_name(stack: RunningStack):
    nurse = await stack.login("n3002")
    uid = stack.user_id
    attending, backup = uid("role-cardiology-attending"), uid("role-cardiology-backup")
    icu_nurse, icu_doctor = uid("role-icu-nurse"), uid("role-icu-doctor")
    try:
        # Role accounts are named by the appservice at start: wait until the directory has them.
        assert await eventually(lambda: _has(nurse, "attending on duty", attending), timeout=60, interval=1)
        expected = {
            "心内科": {attending, backup},          # a unit inside a longer display name
            "主班医生": {attending},                 # a title
            "医生": {attending, backup, icu_doctor},
            "重症医学科": {icu_nurse, icu_doctor},
            "责任护士": {icu_nurse},
            "刘洋": {uid("n3001")},                  # 2-character names
            "李伟": {uid("d1001")},
            "心": {attending, backup},               # one character, as before
            "Cardiology attending": {attending},   # English, as before
            "Liu Yang": {uid("n3001")},
            # pinyin, as a Chinese input method user types a name on a Latin keyboard
            "liuyang": {uid("n3001")},
            "ly": {uid("n3001")},
            "xnk": {attending, backup},              # 心内科's initials
            "zzyxk": {icu_nurse, icu_doctor},
        }
        for term, who in expected.items():
            found = await directory(nurse, term)
            assert who <= set(found), (term, found)
        assert uid("d1001") not in await directory(nurse, "刘洋")
        assert uid("d1001") not in await directory(nurse, "liuyang")
        assert set(await directory(nurse, "心内科")).isdisjoint({icu_nurse, icu_doctor, uid("n3001")})
        assert set(await directory(nurse, "主班医生")).isdisjoint({backup, icu_doctor})
        # What a user sees: the whole display name of the role they looked for.
        assert (await directory(nurse, "主班医生"))[attending].startswith("心内科 · 主班医生")
    finally:
        await nurse.close()


async def _has(client: AsyncClient, term: str, user_id: str) -> bool:
    return user_id in await directory(client, term)


async def test_a_chinese_word_inside_a_message_is_found_and_english_still_is(stack: RunningStack):
    nurse = await stack.login("n3001")
    try:
        room = (await nurse.room_resolve_alias(f"#icu-team:{stack.server_name}")).room_id
        sent = {}
        for key, body in (
            ("chinese", "患者王建国血钾7.2，请复查"),
            ("english", "Bed 3 serum potassium critical, repeat the draw"),
            ("mixed", "王建国 potassium rechecked 5.1"),
            ("other", "王国建议明天查房"),  # the same characters, not the same word
        ):
            resp = await nurse.room_send(room, "m.room.message", {"msgtype": "m.text", "body": body})
            assert isinstance(resp, RoomSendResponse), resp
            sent[key] = resp.event_id

        found, highlights = await search_messages(nurse, room, "王建国")
        assert {sent["chinese"], sent["mixed"]} <= set(found) and sent["other"] not in found
        assert "王建国" in highlights
        found, _ = await search_messages(nurse, room, "血钾")
        assert sent["chinese"] in found and sent["mixed"] not in found
        found, _ = await search_messages(nurse, room, "potassium")
        assert {sent["english"], sent["mixed"]} <= set(found) and sent["chinese"] not in found
        found, _ = await search_messages(nurse, room, "王建国 potassium")
        assert sent["mixed"] in found and sent["chinese"] not in found and sent["english"] not in found
    finally:
        await nurse.close()


async def test_latin_words_and_numbers_written_against_chinese_are_found(stack: RunningStack):
    """Clinical notes write CT, ECG, ST, 8mm or 5A against the Chinese with no space, and an
    input method may type digits full-width: each is found by the word as one types it."""
    doctor = await stack.login("d2001")
    try:
        room = (await doctor.room_resolve_alias(f"#icu-team:{stack.server_name}")).room_id
        sent = {}
        for key, body in (
            ("ct", "患者王建国CT示右肺结节8mm，建议3个月复查"),
            ("ecg", "12床张三丰的ECG示ST段抬高，已通知5A病区"),
            ("full-width", "血钾７．２，请复查"),
            ("english", "CT chest booked for bed 9"),
        ):
            resp = await doctor.room_send(room, "m.room.message", {"msgtype": "m.text", "body": body})
            assert isinstance(resp, RoomSendResponse), resp
            sent[key] = resp.event_id

        async def found(term: str) -> set[str]:
            return set((await search_messages(doctor, room, term))[0]) & set(sent.values())

        assert await found("CT") == {sent["ct"], sent["english"]}
        assert await found("8mm") == {sent["ct"]}
        assert await found("ECG") == {sent["ecg"]}
        assert await found("ST段") == {sent["ecg"]}
        assert await found("5A") == {sent["ecg"]}
        assert await found("王建国 CT") == {sent["ct"]}
        # A phrase copied from the note, Latin and Chinese side by side.
        assert await found('"CT示右肺"') == {sent["ct"]}
        assert await found('"ECG示ST段抬高"') == {sent["ecg"]}
        assert await found('"王建国CT"') == {sent["ct"]}
        assert await found("7.2") == {sent["full-width"]}
        assert await found("７．２") == {sent["full-width"]}
        assert await found("chest") == {sent["english"]}
    finally:
        await doctor.close()


async def test_a_lab_value_written_against_its_unit_is_found_by_value_and_unit(stack: RunningStack):
    """Results are written "血钾7.2mmol/L" or "K+ 6.8mmol/L", or as shorthand against their
    label ("K7.2 Na128", "K+6.8"): the value, the unit and the label are each found, in Chinese
    and in English notes, and the whole word as typed still is."""
    doctor = await stack.login("d2001")
    try:
        room = (await doctor.room_resolve_alias(f"#icu-team:{stack.server_name}")).room_id
        sent = {}
        for key, body in (
            ("chinese", "患者刘洋血钾7.2mmol/L，已通知值班医生"),
            ("english", "Bed 12 K+ 6.8mmol/L, repeat sample sent"),
            ("fever", "体温38.5℃，已物理降温"),
            ("spaced", "Na 128 mmol/L"),
            # lab shorthand: the value against its label
            ("shorthand", "12床 K7.2 Na128 Hb78，已复查"),
            ("ion", "Bed 3 K+6.8, recheck pending"),
        ):
            resp = await doctor.room_send(room, "m.room.message", {"msgtype": "m.text", "body": body})
            assert isinstance(resp, RoomSendResponse), resp
            sent[key] = resp.event_id

        async def found(term: str) -> set[str]:
            return set((await search_messages(doctor, room, term))[0]) & set(sent.values())

        assert await found("7.2") == {sent["chinese"], sent["shorthand"]}
        assert await found("6.8") == {sent["english"], sent["ion"]}
        assert await found("128") == {sent["spaced"], sent["shorthand"]}
        assert await found("Hb") == {sent["shorthand"]}
        assert await found("K7.2") == {sent["shorthand"]}
        assert await found("mmol") == {sent["chinese"], sent["english"], sent["spaced"]}
        assert await found("mmol/L") == {sent["chinese"], sent["english"], sent["spaced"]}
        assert await found("7.2mmol/L") == {sent["chinese"]}
        assert await found("血钾 7.2") == {sent["chinese"]}
        assert await found("38.5") == {sent["fever"]}
        assert await found("repeat") == {sent["english"]}
    finally:
        await doctor.close()

