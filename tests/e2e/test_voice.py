"""Voice messages end to end: a nurse's client uploads an Ogg/Opus voice message the way
Element sends one, and the service answers in the room with its transcript — recognised on
this machine by the packaged Whisper model — or with a short notice saying why not; a
voice message to an on-duty role pages the person on duty, who gets the audio and the
words. The clips are the committed ones (tests/fixtures/voice, with what is said in each)."""

from __future__ import annotations

import io
import json
import subprocess
from datetime import timedelta
from typing import Any

from nio import AsyncClient, RoomSendResponse, UploadResponse

from tests.e2e.test_oncall import ATTENDING, bot_dm, dm_role
from tests.e2e.test_protection import (
    db_rows,
    denied_as_no_forward,
    event_content,
    new_room,
    read_receipt,
    send,
    team_room,
)
from tests.oncall_support import held, holds, members, notices, set_clock, tomorrow_at
from tests.paths import REPO_ROOT
from tests.support import CLI, RunningStack, eventually, search

CLIPS = REPO_ROOT / "tests" / "fixtures" / "voice"
REFERENCE = json.loads((CLIPS / "clips.json").read_text(encoding="utf-8"))
# Transcription runs on a CPU shared with the homeserver and the rest of the suite.
TRANSCRIPT_WAIT = 180.0


async def send_voice(
    client: AsyncClient, room: str, data: bytes, duration_ms: int, name: str = "voice.ogg", **extra: Any
) -> str:
    """Upload and send as Element's microphone button does (MSC3245 voice message)."""
    uploaded, _ = await client.upload(io.BytesIO(data), content_type="audio/ogg", filename=name, filesize=len(data))
    assert isinstance(uploaded, UploadResponse), uploaded
    content = {
        "msgtype": "m.audio", "body": "Voice message", "url": uploaded.content_uri,
        "info": {"mimetype": "audio/ogg", "size": len(data), "duration": duration_ms},
        "org.matrix.msc1767.audio": {"duration": duration_ms, "waveform": [0] * 10},
        "org.matrix.msc3245.voice": {},
        **extra,
    }
    sent = await client.room_send(room, "m.room.message", content)
    assert isinstance(sent, RoomSendResponse), sent
    return sent.event_id


async def reply_to(client: AsyncClient, room: str, event_id: str) -> dict[str, Any]:
    """The service's notice that answers ``event_id`` (transcript or problem)."""
    async def answered() -> dict[str, Any] | None:
        for n in await notices(client, room):
            relates = n["content"].get("m.relates_to", {}).get("m.in_reply_to", {})
            if relates.get("event_id") == event_id:
                return n
        return None

    return await eventually(answered, timeout=TRANSCRIPT_WAIT, interval=1.0)


async def answers_to(client: AsyncClient, room: str, event_id: str) -> list[dict[str, Any]]:
    """Every notice of the service's that answers ``event_id``."""
    return [n for n in await notices(client, room)
            if n["content"].get("m.relates_to", {}).get("m.in_reply_to", {}).get("event_id") == event_id]


def unique_copy(data: bytes) -> bytes:
    """The same Ogg/Opus audio in new bytes (remuxed, new stream serial): a clip an earlier
    test posted in a protected room would otherwise be refused here as a forward of it."""
    import secrets

    import av

    out = io.BytesIO()
    with av.open(io.BytesIO(data)) as source, av.open(out, "w", format="ogg") as copy:
        audio = source.streams.audio[0]
        stream = copy.add_stream_from_template(audio)
        copy.metadata["comment"] = secrets.token_hex(8)
        for packet in source.demux(audio):
            if packet.dts is None:
                continue
            packet.stream = stream
            copy.mux(packet)
    return out.getvalue()


def silence_ogg(seconds: float = 3.0) -> bytes:
    """Ogg/Opus of digital silence, as a pocket recording might be."""
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=48000)
        stream.layout = "mono"
        for i in range(int(seconds * 50)):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), dtype=np.int16), format="s16", layout="mono")
            frame.sample_rate = 48000
            frame.pts = i * 960
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


async def test_voice_message_gets_its_transcript_as_a_reply(stack: RunningStack):
    nurse = await stack.login("n3002")
    try:
        room = await bot_dm(stack, nurse)
        answers = {}
        for name in ("zh_potassium", "en_chest_pain"):
            data = (CLIPS / f"{name}.ogg").read_bytes()
            event_id = await send_voice(nurse, room, data, 6000 if name.startswith("zh") else 9000)
            answers[name] = (event_id, await reply_to(nurse, room, event_id))
        for name, (event_id, answer) in answers.items():
            content = answer["content"]
            assert answer["sender"] == stack.bot_user_id
            transcript = content["org.carematrix.transcript"]
            assert transcript["event_id"] == event_id
            assert transcript["language"] == REFERENCE[name]["language"]
            assert transcript["model"] == "whisper-base-int8"
            assert 0 < transcript["confidence"] <= 100  # percent
            text = content["body"].casefold()
            assert content["m.relates_to"]["m.in_reply_to"]["event_id"] == event_id
            wanted = ["病人", "医生", "化验"] if name.startswith("zh") else ["chest pain", "blood pressure", "doctor"]
            missing = [t for t in wanted if t not in text]
            assert not missing, f"{name}: {missing} not in {content['body']!r}"
            assert content["m.mentions"]["user_ids"] == [stack.user_id("n3002")]

        status = subprocess.run(
            [CLI, "status", "--data-dir", str(stack.deployment.settings.data_dir)], capture_output=True, text=True, timeout=120,
        )
        assert "voice transcription ready: whisper-base-int8, whisper-tiny.en-int8" in status.stdout, status.stdout

        # On record: who, where, how long, which model — never the words.
        records = await eventually(lambda: search(stack, "--action", "appservice.voice.transcribed", "--room", room))
        assert {r["actor"] for r in records} == {stack.user_id("n3002")}
        for record in records:
            details = record["details"]
            assert details["model"] == "whisper-base-int8" and details["duration_ms"] > 3000
            assert "病人" not in json.dumps(record, ensure_ascii=False) and "chest" not in json.dumps(record)
    finally:
        await nurse.close()


async def test_what_cannot_be_transcribed_gets_a_short_notice(stack: RunningStack):
    nurse = await stack.login("n3002")
    try:
        room = await bot_dm(stack, nurse)
        clip = (CLIPS / "zh_potassium.ogg").read_bytes()
        cases = {
            "not_audio": (b"\x89PNG\r\n\x1a\n" + bytes(2000), 3000),
            "corrupt": (clip[:300] + bytes(len(clip) - 300), 6000),
            "silence": (silence_ogg(), 3000),
            "too_long": (clip, 10 * 60 * 1000),  # declared 10 minutes: over the policy's 120 s
        }
        sent = {problem: await send_voice(nurse, room, data, ms) for problem, (data, ms) in cases.items()}
        for problem, event_id in sent.items():
            content = (await reply_to(nurse, room, event_id))["content"]
            assert content["org.carematrix.voice_problem"] == problem, content
            assert "org.carematrix.transcript" not in content
            body = content["body"]
            assert "无法转写" in body and "Not transcribed" in body and body.index("无法转写") < body.index("Not transcribed")
        assert "120" in (await reply_to(nurse, room, sent["too_long"]))["content"]["body"]
        # The service is still there for the next one.
        event_id = await send_voice(nurse, room, clip, 6000)
        assert "org.carematrix.transcript" in (await reply_to(nurse, room, event_id))["content"]
    finally:
        await nurse.close()


async def test_voice_message_to_a_role_pages_the_on_duty_doctor_with_audio_and_transcript(stack: RunningStack):
    nurse = await stack.login("n3002")
    doctor = await stack.login("d1001")  # the day attending
    try:
        # Days past any shift the on-call tests swap or cover on the shared stack: the roster's
        # own day attending is on duty.
        await set_clock(stack, tomorrow_at(8, 1) + timedelta(days=5))
        room = await dm_role(stack, nurse, ATTENDING)
        clip = (CLIPS / "zh_potassium.ogg").read_bytes()
        voice = await send_voice(nurse, room, clip, 6000)

        async def page_notice() -> dict | None:
            for n in await notices(nurse, room):
                if n["content"].get("org.carematrix.page"):
                    return n
            return None

        page = await eventually(page_notice)
        assert stack.user_id("d1001") in page["content"]["m.mentions"]["user_ids"]
        assert "语音消息" in page["content"]["body"] and "Voice message" in page["content"]["body"]
        assert (await members(nurse, room)).get(stack.user_id("d1001")) in ("invite", "join")

        # The doctor joins from the invitation and has both: the audio and its words.
        joined = await doctor.join(room)
        assert not hasattr(joined, "status_code") or joined.room_id == room, joined
        answer = await reply_to(doctor, room, voice)
        assert answer["sender"] == stack.user_id(ATTENDING)
        assert "org.carematrix.transcript" in answer["content"]
        assert stack.user_id("d1001") in answer["content"]["m.mentions"]["user_ids"]
        assert "病人" in answer["content"]["body"]
        messages = await doctor.room_messages(room, limit=50)
        audio = [e.source for e in messages.chunk if e.source.get("content", {}).get("msgtype") == "m.audio"]
        assert [a["event_id"] for a in audio] == [voice]
        downloaded = await doctor.download(audio[0]["content"]["url"])
        assert getattr(downloaded, "body", None) == clip, downloaded
        # Acknowledging works as for a text page: a reply to the page notice.
        ack = await doctor.room_send(room, "m.room.message", {
            "msgtype": "m.text", "body": "On my way",
            "m.relates_to": {"m.in_reply_to": {"event_id": page["event_id"]}},
        })
        assert isinstance(ack, RoomSendResponse), ack

        async def acknowledged() -> bool:
            return any("acknowledged" in n["content"]["body"] for n in await notices(nurse, room))

        assert await eventually(acknowledged)
    finally:
        await nurse.close()
        await doctor.close()


async def test_a_transcript_is_protected_like_the_ward_room_message_it_transcribes(stack: RunningStack):
    """No-forward fingerprints the transcript (its words are the nurse's), so pasting it into
    another room is refused like pasting her typed report."""
    nurse = await stack.login("n3001")
    doctor = await stack.login("d2001")
    try:
        icu = await team_room(stack, nurse, "icu")
        voice = await send_voice(nurse, icu, (CLIPS / "zh_ward_round.ogg").read_bytes(), 15000)
        answer = await reply_to(nurse, icu, voice)
        words = answer["content"]["body"]
        assert len(words) > 30 and "血压" in words, words
        assert db_rows(stack, "SELECT event_id FROM carematrix_protected_origin WHERE event_id = ?", answer["event_id"])
        elsewhere = await new_room(nurse, [doctor], name="voice handover chat")
        denied_as_no_forward(await send(doctor, elsewhere, {"msgtype": "m.text", "body": words}))
        # Every voice message carries the same label ("Voice message"): that is not a forward.
        await send_voice(doctor, elsewhere, (CLIPS / "en_chest_pain.ogg").read_bytes(), 9000)
    finally:
        await nurse.close()
        await doctor.close()


async def test_a_burning_voice_message_takes_its_transcript_with_it(stack: RunningStack):
    nurse = await stack.login("n3001")
    doctor = await stack.login("d2001")
    try:
        room = await new_room(nurse, [doctor], name="voice burn consult", initial_state=[
            {"type": "org.carematrix.room_class", "state_key": "", "content": {"class": "confidential"}},
        ])
        invited = await nurse.room_invite(room, stack.bot_user_id)
        assert not hasattr(invited, "status_code"), invited
        assert await eventually(lambda: _bot_joined(nurse, room, stack.bot_user_id))
        voice = await send_voice(
            nurse, room, (CLIPS / "zh_potassium.ogg").read_bytes(), 6000,
            **{"org.carematrix.burn_after_read": {"grace_seconds": 1}},
        )
        transcript = await reply_to(doctor, room, voice)
        words = transcript["content"]["body"]
        assert "病人" in words
        await read_receipt(doctor, room, transcript["event_id"])

        async def burnt() -> bool:
            return await event_content(doctor, room, voice) == {} and await event_content(doctor, room, transcript["event_id"]) == {}

        assert await eventually(burnt, timeout=60)
    finally:
        await nurse.close()
        await doctor.close()
    stored = db_rows(stack, "SELECT json FROM event_json WHERE event_id = ?", transcript["event_id"])
    assert stored and "病人" not in stored[0][0] and "\\u75c5" not in stored[0][0]
    assert db_rows(stack, "SELECT event_id FROM event_search WHERE event_id = ?", transcript["event_id"]) == []
    burns = await eventually(
        lambda: db_rows(stack, "SELECT details FROM carematrix_audit_log WHERE action = 'message.burn' AND object = ?", voice)
    )
    assert json.loads(burns[0][0])["with_it"] == 1 and "病人" not in burns[0][0]


async def _bot_joined(client: AsyncClient, room: str, bot: str) -> bool:
    return (await members(client, room)).get(bot) == "join"


async def test_a_voice_message_accepted_before_a_crash_is_transcribed_once_after_the_restart(stack: RunningStack):
    """Two voice messages are caught by a kill -9 of the appservice: one taken from the queue
    and about to be recognised, one whose transaction the homeserver had its answer for
    while its event handler had not run yet (the homeserver never sends that again). After
    the restart each gets its transcript, once."""
    nurse = await stack.login("n3002")
    # Words no earlier test posted in a protected room (its transcript would be a forward).
    clip = (CLIPS / "en_chest_pain.ogg").read_bytes()
    killed = False
    try:
        room = await bot_dm(stack, nurse)
        await holds(stack, voice=True)
        queued = await send_voice(nurse, room, unique_copy(clip), 9000)
        assert await eventually(lambda: held(stack, "voice", queued))
        await holds(stack, events=True)
        delivered = await send_voice(nurse, room, unique_copy(clip), 9000)
        assert await eventually(lambda: held(stack, "events", delivered))
        # The homeserver sends one transaction at a time: once a message sent after it is
        # held too, the voice message's transaction had its 200.
        later = await nurse.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "下一条 next"})
        assert isinstance(later, RoomSendResponse), later
        assert await eventually(lambda: held(stack, "events", later.event_id))
        assert await answers_to(nurse, room, queued) == [] and await answers_to(nurse, room, delivered) == []
        stack.stack.appservice.kill()  # SIGKILL: nothing is said, nothing is flushed
        killed = True
    finally:
        if not killed:
            await holds(stack, events=False, voice=False)
    stack.stack.restart_appservice()
    # One worker takes the messages in the order they came: this one's transcript comes
    # after theirs, so by then a second answer to either would be there too.
    after = await send_voice(nurse, room, unique_copy(clip), 9000)
    try:
        await reply_to(nurse, room, after)
        for event_id in (queued, delivered):
            (answer,) = await answers_to(nurse, room, event_id)
            assert "chest pain" in answer["content"]["body"].casefold(), answer["content"]
            assert answer["content"]["org.carematrix.transcript"]["event_id"] == event_id
    finally:
        await nurse.close()


async def test_a_voice_message_the_recogniser_keeps_dying_on_gets_a_notice_not_endless_tries(stack: RunningStack):
    nurse = await stack.login("n3002")
    # Words no earlier test posted in a protected room (its transcript would be a forward).
    clip = (CLIPS / "en_chest_pain.ogg").read_bytes()
    try:
        room = await bot_dm(stack, nurse)
        await holds(stack, voice_worker_dies=True)
        try:
            voice = await send_voice(nurse, room, unique_copy(clip), 9000)
            answer = await reply_to(nurse, room, voice)
        finally:
            await holds(stack, voice_worker_dies=False)
        content = answer["content"]
        assert content["org.carematrix.voice_problem"] == "gave_up", content
        body = content["body"]
        assert "无法转写" in body and "Not transcribed" in body and body.index("无法转写") < body.index("Not transcribed")
        assert "3" in body
        # The next voice message is transcribed by new workers; the one given up is not tried again.
        following = await send_voice(nurse, room, unique_copy(clip), 9000)
        assert "org.carematrix.transcript" in (await reply_to(nurse, room, following))["content"]
        assert len(await answers_to(nurse, room, voice)) == 1
        records = await eventually(lambda: [
            r for r in search(stack, "--action", "appservice.voice.not_transcribed", "--room", room) if r["object"] == voice
        ])
        assert [r["details"]["problem"] for r in records] == ["gave_up"]
    finally:
        await nurse.close()
