"""Commands as staff really type them: with a Chinese input method on (full-width ！ and
digits), with Chinese names instead of IDs, with arguments missing or wrong. Every answer
says what to type, Chinese first with English beside it; nothing typed is met with silence
or with a case room for a patient the hospital does not have."""

from __future__ import annotations

from pathlib import Path

from nio import AsyncClient, RoomSendResponse

from tests.e2e.test_bot import dm_with_bot
from tests.e2e.test_oncall import BACKLOG_SECONDS, ICU, dm_role
from tests.oncall_support import notices
from tests.support import RunningStack, eventually, log_problems, log_sizes, wait_for_event


async def ask(stack: RunningStack, client: AsyncClient, room_id: str, text: str) -> str:
    """Send ``text`` and return the bot's answer to it (the first notice after it)."""
    sent = await client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": text})
    assert isinstance(sent, RoomSendResponse), sent
    seen: list[str] = []

    def after_mine(event: dict) -> bool:
        seen.append(event["event_id"])
        return (
            sent.event_id in seen[:-1]
            and event["sender"] == stack.bot_user_id
            and event["content"].get("msgtype") == "m.notice"
        )

    reply = await wait_for_event(client, room_id, after_mine)
    return str(reply["content"]["body"])


async def ask_in(client: AsyncClient, room_id: str, text: str, speaker: str, expect: str) -> str:
    """Send ``text`` in a role's room and return the notice ``speaker`` posts after it that
    holds ``expect`` (the role account also posts page notices there)."""
    sent = await client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": text})
    assert isinstance(sent, RoomSendResponse), sent

    async def answer() -> str | None:
        chunk = (await client.room_messages(room_id, limit=30)).chunk  # newest first
        ids = [e.event_id for e in chunk]
        if sent.event_id not in ids:
            return None
        later = [str(e.source["content"].get("body", "")) for e in chunk[:ids.index(sent.event_id)]
                 if e.sender == speaker]
        return next((body for body in later if expect in body), None)

    return str(await eventually(answer, timeout=BACKLOG_SECONDS))


def bilingual(answer: str) -> bool:
    """Chinese first, English beside it."""
    first_cjk = next((i for i, ch in enumerate(answer) if "\u4e00" <= ch <= "\u9fff"), None)
    first_latin_word = next((i for i, word in enumerate(answer.split()) if word.isascii() and word.isalpha()), None)
    return first_cjk is not None and first_latin_word is not None and first_cjk < len(" ".join(answer.split()[:first_latin_word]))


async def test_a_command_typed_with_a_chinese_input_method_is_answered(stack: RunningStack):
    """With a Chinese IME on, ! comes out as the full-width ！ and digits may be full-width:
    the nurse must get the same answer, not silence."""
    nurse = await stack.login("n3001")
    try:
        dm = await dm_with_bot(stack, nurse)
        plain = await ask(stack, nurse, dm, "!oncall icu")
        assert "重症医学科 · 责任护士" in plain
        assert await ask(stack, nurse, dm, "！oncall icu") == plain
        assert await ask(stack, nurse, dm, "！ｏｎｃａｌｌ　ｉｃｕ") == plain
        pong = await ask(stack, nurse, dm, "！ping")
        assert pong.startswith("pong")
        # The page ID as printed in brackets, or typed with full-width characters, is the ID.
        ack = await ask(stack, nurse, dm, "！ack [ＺＺ９９]")
        assert "[ZZ99]" in ack and "[[" not in ack and "ＺＺ" not in ack
    finally:
        await nurse.close()


async def test_missing_or_wrong_arguments_get_the_usage_not_unknown_command(stack: RunningStack):
    nurse = await stack.login("n3001")
    try:
        dm = await dm_with_bot(stack, nurse)
        for text in ("!quiet", "!quiet maybe"):
            answer = await ask(stack, nurse, dm, text)
            assert "未知指令" not in answer and "Unknown command" not in answer, (text, answer)
            assert answer.startswith("用法") and "!quiet on|off" in answer and "Usage" in answer, (text, answer)
    finally:
        await nurse.close()


async def test_oncall_for_a_unit_named_in_chinese_or_in_capitals_lists_that_unit(stack: RunningStack):
    nurse = await stack.login("n3001")
    try:
        dm = await dm_with_bot(stack, nurse)
        icu = await ask(stack, nurse, dm, "!oncall icu")
        assert await ask(stack, nurse, dm, "!oncall 重症医学科") == icu
        assert await ask(stack, nurse, dm, "!oncall ICU") == icu
        unknown = await ask(stack, nurse, dm, "!oncall 骨科")
        # What can be asked for instead: the units that have on-duty roles, ID and name.
        assert bilingual(unknown) and "icu" in unknown and "重症医学科" in unknown and "cardiology" in unknown
    finally:
        await nurse.close()


async def test_call_a_role_or_a_colleague_by_chinese_name(stack: RunningStack):
    nurse = await stack.login("n3001")
    try:
        dm = await dm_with_bot(stack, nurse)
        by_id = await ask(stack, nurse, dm, "!call icu/doctor")
        assert by_id.startswith("📞"), by_id
        whom = by_id.split(": https://", 1)[0]  # "📞 正在呼叫 Calling <holder>, <role>"
        for typed in ("!call 重症医学科值班医生", "!call 重症医学科 · 值班医生", "!call ICU/doctor"):
            answer = await ask(stack, nurse, dm, typed)
            assert answer.split(": https://", 1)[0] == whom, (typed, answer)
        by_name = await ask(stack, nurse, dm, "!call 陈静")
        assert by_name.startswith("📞 正在呼叫 Calling 陈静 Chen Jing (D2001)"), by_name
        vague = await ask(stack, nurse, dm, "!call 医生")
        # More than one role fits: they are named, nobody is rung.
        assert not vague.startswith("📞") and "icu/doctor" in vague and "cardiology/attending" in vague, vague
    finally:
        await nurse.close()


async def test_case_open_for_a_patient_the_emr_and_adt_do_not_know_opens_no_room(stack: RunningStack):
    """A name typed where the patient ID belongs, or a mistyped ID, must not open a case room
    (later filed in the EMR) for a patient the hospital does not have."""
    doctor = await stack.login("d1001")
    try:
        dm = await dm_with_bot(stack, doctor)
        rooms_before = await rooms_of(stack, "d1001")
        logs = log_sizes([stack.deployment.paths.appservice_log])
        for typed, given in (("!case open 王建国", "王建国"), ("!case open P2026110", "P2026110")):
            answer = await ask(stack, doctor, dm, typed)
            assert "matrix.to" not in answer and bilingual(answer), answer
            assert given in answer and "未开立" in answer and "no case room was opened" in answer, answer
        assert await rooms_of(stack, "d1001") == rooms_before
        # A typing slip is the user's to fix, told to them: nothing for the operator's log.
        assert log_problems(logs) == []
    finally:
        await doctor.close()


async def rooms_of(stack: RunningStack, localpart: str) -> set[str]:
    """The rooms someone is in or invited to, as a fresh sign-in sees them."""
    client = await stack.login(localpart)
    try:
        synced = await client.sync(timeout=0)
        return set(synced.rooms.join) | set(synced.rooms.invite)
    finally:
        await client.close()


async def test_an_alias_nobody_has_logs_no_warning(stack: RunningStack):
    """A mistyped room address is the typist's slip, answered 404 to them: the homeserver's
    log gets no WARNING for it (nor does a clean start, which looks up every standard room's
    address before making it)."""
    log = stack.deployment.paths.synapse_log
    nurse = await stack.login("n3001")
    try:
        before = log_sizes([log])
        missing = await nurse.room_resolve_alias(f"#no-such-ward-typed:{stack.server_name}")
        assert getattr(missing, "status_code", None) == "M_NOT_FOUND", missing
        assert alias_warnings(log, before[log]) == []
        assert alias_warnings(log, 0, stack.ready_logs.get(log)) == []
    finally:
        await nurse.close()


def alias_warnings(log: Path, start: int, end: int | None = None) -> list[str]:
    """The homeserver's WARNING lines about asking the service for a room address."""
    with log.open("rb") as f:
        f.seek(start)
        data = f.read() if end is None else f.read(max(0, end - start))
    return [line for line in data.decode(errors="replace").splitlines() if " WARNING " in line and "query_alias" in line]


async def test_a_page_names_its_sender_once_and_carries_their_words_as_typed(stack: RunningStack):
    """Full-width digits, Chinese punctuation and emoji reach the doctor as the nurse typed
    them, after her name said once (not "刘洋 Liu Yang (刘洋 Liu Yang (N3001))")."""
    nurse = await stack.login("n3001")
    try:
        room = await dm_role(stack, nurse, ICU)
        text = "１２床血钾６．８ｍｍｏｌ／Ｌ，请速来！😱"
        sent = await nurse.room_send(room, "m.room.message", {"msgtype": "m.text", "body": text})
        assert isinstance(sent, RoomSendResponse), sent

        async def the_page() -> dict | None:
            return next((n for n in await notices(nurse, room) if n["content"].get("org.carematrix.page")), None)

        page_notice = await eventually(the_page)
        body = page_notice["content"]["body"]
        assert f"刘洋 Liu Yang (N3001): {text}\n" in body, body
        assert body.count("刘洋") == 1, body
        # Whoever was paged acknowledges it where the page is, as the page says: "or send
        # !ack <id>". The role account answers there (the bot is not in the room), and the
        # service logs no error for it.
        alert_id = page_notice["content"]["org.carematrix.alert_id"]
        logs = log_sizes([stack.deployment.paths.appservice_log])
        paged = page_notice["content"]["m.mentions"]["user_ids"]
        doctor = await stack.login(paged[0].split(":")[0][1:])
        try:
            await doctor.join(room)
            answer = await ask_in(doctor, room, f"!ack {alert_id}", stack.user_id(ICU), f"已确认呼叫 [{alert_id}]")
            assert answer.startswith(f"已确认呼叫 [{alert_id}]") and "Acknowledged page" in answer, answer
        finally:
            await doctor.close()
        # A command a nurse sends in the role's chat is answered there too, not met with silence.
        listing = await ask_in(nurse, room, "!oncall icu", stack.user_id(ICU), "重症医学科 · 责任护士")
        assert "重症医学科 · 责任护士" in listing, listing
        # Commands page nobody: once a later one is answered (events of a room are handled in
        # order), the room still holds its one page.
        await ask_in(nurse, room, "!oncall cardiology", stack.user_id(ICU), "心内科")
        pages = [n for n in await notices(nurse, room) if n["content"].get("org.carematrix.page")]
        assert [p["event_id"] for p in pages] == [page_notice["event_id"]], [p["content"]["body"] for p in pages]
        assert log_problems(logs) == []
    finally:
        await nurse.close()
