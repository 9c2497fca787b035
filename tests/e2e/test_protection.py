"""Content protection end to end on a real Synapse: forwarding out of a ward room is refused
(by mxc, by re-upload, by copied text, by an edit), images are watermarked per viewer and
traced back, burn-after-read purges message, search row and files, encryption is honoured."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from nio import AsyncClient, RoomCreateResponse, RoomSendError, RoomSendResponse, UploadResponse
from PIL import Image

from carematrix.policy import load_policy
from carematrix_ops.audit_db import connect
from tests import image_corpus as corpus
from tests.images import photo
from tests.support import RunningStack, eventually, log_files, log_sizes, wait_for_event

# Also run on the worker deployment (tests/conftest.py).
pytestmark = pytest.mark.worker_pass

CLI = str(Path(sys.executable).parent / "carematrix")
REPORT = (
    "ICU bed 7 王建国 72y: K+ 6.8 mmol/L at 02:10, ECG peaked T waves, calcium gluconate given, "
    "repeat potassium at 04:00 and call the attending if still above 6.0."
)


async def upload(client: AsyncClient, data: bytes, content_type: str, name: str) -> str:
    resp, _ = await client.upload(io.BytesIO(data), content_type=content_type, filename=name, filesize=len(data))
    assert isinstance(resp, UploadResponse), resp
    return resp.content_uri


async def send(client: AsyncClient, room: str, content: dict[str, Any], event_type: str = "m.room.message") -> Any:
    return await client.room_send(room, event_type, content, ignore_unverified_devices=True)


def image_content(uri: str, name: str = "ct.jpg") -> dict[str, Any]:
    return {"msgtype": "m.image", "body": name, "url": uri, "info": {"mimetype": "image/jpeg"}}


async def media_get(
    stack: RunningStack, client: AsyncClient | None, path: str, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {client.access_token}"} if client else {}
    async with aiohttp.ClientSession() as http, http.request(method, stack.url + path, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def mxc_path(uri: str) -> str:
    return uri[len("mxc://"):]


async def team_room(stack: RunningStack, client: AsyncClient, unit: str) -> str:
    return (await client.room_resolve_alias(f"#{unit}-team:{stack.server_name}")).room_id


async def new_room(owner: AsyncClient, members: list[AsyncClient], **kwargs: Any) -> str:
    created = await owner.room_create(invite=[m.user_id for m in members], **kwargs)
    assert isinstance(created, RoomCreateResponse), created
    for member in members:
        await member.join(created.room_id)
    return created.room_id


def denied_as_no_forward(resp: Any) -> None:
    assert isinstance(resp, RoomSendError), f"forward was accepted: {resp}"
    assert resp.status_code == "M_FORBIDDEN"
    assert "Forwarding clinical content out of this room is disabled by hospital policy" in resp.message


def db_rows(stack: RunningStack, query: str, *args: Any) -> list[tuple]:
    s = stack.deployment.settings
    target = s.db_url if s.database == "postgres" else str(stack.deployment.paths.sqlite_db)
    with connect(target) as db, db.transaction(read_only=True) as txn:
        txn.execute(query.replace("?", "%s") if db.dialect == "postgres" else query, args)
        return list(txn.fetchall())


async def test_forwarding_out_of_a_ward_room_is_refused_every_way(stack: RunningStack):
    nurse = await stack.login("n3001")
    doctor = await stack.login("d2001")
    try:
        icu = await team_room(stack, nurse, "icu")
        scan = photo(1)
        uri = await upload(nurse, scan, "image/jpeg", "ct.jpg")
        assert isinstance(await send(nurse, icu, image_content(uri)), RoomSendResponse)
        assert isinstance(await send(nurse, icu, {"msgtype": "m.text", "body": REPORT}), RoomSendResponse)

        elsewhere = await new_room(nurse, [doctor], name="handover chat")
        denied_as_no_forward(await send(nurse, elsewhere, image_content(uri)))
        again = await upload(doctor, scan, "image/jpeg", "copy.jpg")
        assert again != uri
        denied_as_no_forward(await send(doctor, elsewhere, image_content(again, "copy.jpg")))
        altered = "FWD: " + REPORT.upper().replace(", ", " ,  ") + "  thanks"
        denied_as_no_forward(await send(doctor, elsewhere, {"msgtype": "m.text", "body": altered}))
        quoted = "> " + REPORT[:110] + "\n\nsee this, what do you think?"
        denied_as_no_forward(await send(doctor, elsewhere, {"msgtype": "m.text", "body": quoted}))
        innocent = await send(doctor, elsewhere, {"msgtype": "m.text", "body": "Quick question about bed 7"})
        assert isinstance(innocent, RoomSendResponse)
        edit = {
            "msgtype": "m.text", "body": "* " + REPORT,
            "m.new_content": {"msgtype": "m.text", "body": REPORT},
            "m.relates_to": {"rel_type": "m.replace", "event_id": innocent.event_id},
        }
        denied_as_no_forward(await send(doctor, elsewhere, edit))
        # Ordinary talk about the same patient is not a forward.
        ok = await send(doctor, elsewhere, {"msgtype": "m.text", "body": "Please review the patient in bed 7 when you can."})
        assert isinstance(ok, RoomSendResponse)
        # Inside the ward room itself, replies and re-posts are fine.
        assert isinstance(await send(doctor, icu, {"msgtype": "m.text", "body": "> " + REPORT + "\n\nseen"}), RoomSendResponse)
    finally:
        await nurse.close()
        await doctor.close()

    denials = db_rows(
        stack,
        "SELECT actor FROM carematrix_audit_log WHERE action = 'policy.denied' AND rule = 'protection.no_forward' AND room = ?",
        elsewhere,
    )
    assert len(denials) == 5, denials


async def test_a_copy_of_a_protected_image_that_looks_the_same_is_refused(stack: RunningStack):
    """Not the same file and not the same bytes: the film re-encoded, resized, cropped, in
    grey or inside a screenshot is refused in a DM under the no-forward rule, while another
    patient's film of the same anatomy template and an unrelated photo pass (the doctor having
    received the protected film: what they received is compared too)."""
    nurse = await stack.login("n3001")
    doctor = await stack.login("d2001")
    try:
        icu = await team_room(stack, nurse, "icu")
        film = corpus.chest_film(4242, template=3)
        uri = await upload(nurse, corpus.jpeg(film, 92), "image/jpeg", "chest.jpg")
        assert isinstance(await send(nurse, icu, image_content(uri, "chest.jpg")), RoomSendResponse)
        dm = await new_room(doctor, [nurse], is_direct=True, name="chat")
        # The doctor has received the film (the server marked it for them): what they
        # received is compared too, and another patient's film must still pass.
        received = await doctor.download(uri)
        assert getattr(received, "body", None) is not None, received

        copies = {
            "re-encoded at quality 85 and scaled to 99 %": (corpus.jpeg(corpus.resized(film, 0.99), 85), "image/jpeg"),
            "re-encoded at quality 50": (corpus.jpeg(film, 50), "image/jpeg"),
            "scaled to 25 %": (corpus.jpeg(corpus.resized(film, 0.25), 90), "image/jpeg"),
            "scaled to 200 %": (corpus.jpeg(corpus.resized(film, 2.0), 90), "image/jpeg"),
            "cropped by up to 20 % per edge": (corpus.jpeg(corpus.cropped(film, 0.2, 0.05, 0.1, 0.2), 90), "image/jpeg"),
            "in greyscale": (corpus.encode(film.convert("L"), "PNG"), "image/png"),
            "in a screenshot": (corpus.encode(corpus.screenshot(film, 7), "PNG"), "image/png"),
        }
        for name, (data, mimetype) in copies.items():
            copy_uri = await upload(doctor, data, mimetype, "copy")
            resp = await send(doctor, dm, {**image_content(copy_uri, "copy"), "info": {"mimetype": mimetype}})
            assert isinstance(resp, RoomSendError), f"the copy {name} was accepted"
            denied_as_no_forward(resp)
            assert "[rule protection.no_forward]" in resp.message

        other_patient = await upload(doctor, corpus.jpeg(corpus.sibling_film(4242), 90), "image/jpeg", "film.jpg")
        assert isinstance(await send(doctor, dm, image_content(other_patient, "film.jpg")), RoomSendResponse)
        unrelated = await upload(doctor, corpus.jpeg(corpus.photo(77), 85), "image/jpeg", "photo.jpg")
        assert isinstance(await send(doctor, dm, image_content(unrelated, "photo.jpg")), RoomSendResponse)
        # In the ward room itself a resized copy is just a re-post.
        inside = await upload(nurse, corpus.jpeg(corpus.resized(film, 0.5), 80), "image/jpeg", "again.jpg")
        assert isinstance(await send(nurse, icu, image_content(inside, "again.jpg")), RoomSendResponse)
    finally:
        await nurse.close()
        await doctor.close()

    denials = db_rows(
        stack,
        "SELECT actor FROM carematrix_audit_log WHERE action = 'policy.denied' AND rule = 'protection.no_forward' AND room = ?",
        dm,
    )
    assert denials == [(doctor.user_id,)] * len(copies)


async def test_a_copy_of_a_16_bit_film_as_its_viewer_received_it_is_refused(stack: RunningStack):
    """A radiograph exported from DICOM is a 16-bit PNG (12 bits of grey). The ward's doctor
    receives it watermarked in 8 bits and re-sends what was received, re-encoded, in a DM:
    refused under the no-forward rule (the film was checked clipped to almost white before,
    and such a copy passed)."""
    nurse = await stack.login("n3001")
    doctor = await stack.login("d2001")
    try:
        icu = await team_room(stack, nurse, "icu")
        deep = np.asarray(corpus.chest_film(4343, template=2).convert("L"), dtype=np.uint16) * 16 + 7
        out = io.BytesIO()
        Image.fromarray(deep).save(out, "PNG")
        uri = await upload(nurse, out.getvalue(), "image/png", "chest-16bit.png")
        assert isinstance(await send(nurse, icu, image_content(uri, "chest-16bit.png")), RoomSendResponse)
        received = await doctor.download(uri)
        body = getattr(received, "body", None)
        assert body is not None, received
        seen = Image.open(io.BytesIO(body))
        assert seen.mode in ("L", "RGB")  # delivered in 8 bits
        assert np.asarray(seen.convert("L")).mean() < 200, "delivered washed out"
        dm = await new_room(doctor, [nurse], is_direct=True, name="chat")
        copy_uri = await upload(doctor, corpus.jpeg(seen.convert("L"), 85), "image/jpeg", "copy.jpg")
        resp = await send(doctor, dm, {**image_content(copy_uri, "copy.jpg"), "info": {"mimetype": "image/jpeg"}})
        assert isinstance(resp, RoomSendError), "the copy of the 16-bit film was accepted"
        denied_as_no_forward(resp)
    finally:
        await nurse.close()
        await doctor.close()


async def test_a_copy_of_a_burnt_protected_film_is_still_refused_and_the_burn_is_no_warning(stack: RunningStack):
    """A film posted burn-after-read in a ward room is deleted with its files when its time
    runs out. A copy someone kept is still refused outside the room (its features decide,
    more strictly, with no original to compare), another patient's film still passes, and
    the homeserver does not warn about an original it deleted on purpose."""
    nurse = await stack.login("n3001")
    doctor = await stack.login("d2001")
    try:
        icu = await team_room(stack, nurse, "icu")
        film = corpus.chest_film(5151, template=3)
        uri = await upload(nurse, corpus.jpeg(film, 92), "image/jpeg", "chest.jpg")
        posted = await send(nurse, icu, {**image_content(uri, "chest.jpg"),
                                          "org.carematrix.burn_after_read": {"grace_seconds": 1, "ttl_seconds": 2}})
        assert isinstance(posted, RoomSendResponse), posted

        async def burnt() -> bool:
            status, _, _ = await media_get(stack, nurse, f"/_matrix/client/v1/media/download/{mxc_path(uri)}")
            return status == 404 and await event_content(nurse, icu, posted.event_id) == {}

        assert await eventually(burnt, timeout=30)
        logs = log_files(stack.deployment.settings.data_dir)
        before = log_sizes(logs)
        dm = await new_room(doctor, [nurse], is_direct=True, name="chat")
        kept = await upload(doctor, corpus.jpeg(corpus.resized(film, 0.99), 85), "image/jpeg", "kept.jpg")
        resp = await send(doctor, dm, image_content(kept, "kept.jpg"))
        denied_as_no_forward(resp)
        assert "[rule protection.no_forward]" in resp.message
        other_patient = await upload(doctor, corpus.jpeg(corpus.sibling_film(5151), 90), "image/jpeg", "film.jpg")
        assert isinstance(await send(doctor, dm, image_content(other_patient, "film.jpg")), RoomSendResponse)
    finally:
        await nurse.close()
        await doctor.close()

    warned = []
    for path, start in before.items():
        with path.open("rb") as f:
            f.seek(start)
            warned += [line for line in f.read().decode(errors="replace").splitlines()
                       if "original of protected image" in line and " WARNING " in line]
    assert warned == []


async def test_a_command_sent_in_a_ward_room_by_mistake_still_works_in_a_dm(stack: RunningStack):
    """Commands to the service are not clinical content: `!oncall cardiology` typed in the
    ward room is not fingerprinted, so the same command in a DM with the bot is answered;
    a clinical note from the same ward room is still refused there."""
    doctor = await stack.login("d1002")
    try:
        ward = await team_room(stack, doctor, "cardiology")
        note = "Bed 12 李秀英: troponin I 2.4 ng/mL at 06:40, rising; cath lab informed, heparin started per protocol."
        assert isinstance(await send(doctor, ward, {"msgtype": "m.text", "body": "!oncall cardiology"}), RoomSendResponse)
        assert isinstance(await send(doctor, ward, {"msgtype": "m.text", "body": note}), RoomSendResponse)

        dm = await doctor.room_create(is_direct=True, invite=[stack.bot_user_id])
        assert isinstance(dm, RoomCreateResponse), dm

        async def bot_joined() -> bool:
            members = await doctor.joined_members(dm.room_id)
            return stack.bot_user_id in {m.user_id for m in members.members}

        await eventually(bot_joined)
        again = await send(doctor, dm.room_id, {"msgtype": "m.text", "body": "!oncall cardiology"})
        assert isinstance(again, RoomSendResponse), again
        attending = load_policy(stack.policy_dir).oncall.roles["cardiology/attending"].name
        reply = await wait_for_event(
            doctor, dm.room_id, lambda e: e["sender"] == stack.bot_user_id and e["type"] == "m.room.message"
        )
        assert attending in reply["content"]["body"], reply["content"]["body"]
        # The protection itself still holds for clinical content from the same room.
        denied_as_no_forward(await send(doctor, dm.room_id, {"msgtype": "m.text", "body": note}))
    finally:
        await doctor.close()


async def test_each_member_gets_an_image_marked_for_them_and_a_leak_is_traced(stack: RunningStack, tmp_path: Path):
    nurse = await stack.login("n3001")
    doctor = await stack.login("d2001")
    outsider = await stack.login("d1001")
    try:
        icu = await team_room(stack, nurse, "icu")
        original = photo(2, (1600, 1200))
        uri = await upload(nurse, original, "image/jpeg", "xray.jpg")
        assert isinstance(await send(nurse, icu, image_content(uri, "xray.jpg")), RoomSendResponse)
        path = f"/_matrix/client/v1/media/download/{mxc_path(uri)}"
        status_n, headers_n, for_nurse = await media_get(stack, nurse, path)
        status_d, headers_d, for_doctor = await media_get(stack, doctor, path)
        assert status_n == 200 and status_d == 200
        assert for_nurse != for_doctor and original not in (for_nurse, for_doctor)
        assert Image.open(io.BytesIO(for_doctor)).size == (1600, 1200)
        for headers in (headers_n, headers_d):
            assert "no-store" in headers["Cache-Control"] and "private" in headers["Cache-Control"]
            assert "ETag" not in headers
        # Asking again within the minute gives the same rendering (cached per viewer).
        assert (await media_get(stack, doctor, path))[2] == for_doctor

        thumb = f"/_matrix/client/v1/media/thumbnail/{mxc_path(uri)}?width=320&height=240&method=scale"
        t_nurse, t_doctor = (await media_get(stack, nurse, thumb)), (await media_get(stack, doctor, thumb))
        assert t_nurse[0] == 200 and t_doctor[0] == 200 and t_nurse[2] != t_doctor[2]
        assert max(Image.open(io.BytesIO(t_doctor[2])).size) <= 320

        status, _, body = await media_get(stack, outsider, path)
        refusal = json.loads(body)
        assert status == 403 and "only its members can open it" in refusal["error"]
        assert refusal["error"].endswith("[rule protection.media_members]")
        assert refusal["org.carematrix.rule"] == "protection.media_members"
        legacy = await media_get(stack, None, f"/_matrix/media/v3/download/{mxc_path(uri)}")
        assert legacy[0] in (401, 404) and legacy[2] != original
        if legacy[0] == 401:
            assert json.loads(legacy[2])["error"].endswith("[rule protection.media_signed_in]")
    finally:
        await nurse.close()
        await doctor.close()
        await outsider.close()

    # The doctor photographs the screen: a half-size, quality-70 copy.
    leaked = Image.open(io.BytesIO(for_doctor))
    leaked = leaked.resize((800, 600), Image.Resampling.BILINEAR)
    leak_file = tmp_path / "leaked.jpg"
    leaked.save(leak_file, "JPEG", quality=70)
    result = subprocess.run(
        [CLI, "watermark", "trace", str(leak_file), "--data-dir", str(stack.deployment.settings.data_dir)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert stack.user_id("d2001") in result.stdout and "陈静 Chen Jing (D2001)" in result.stdout
    assert time.strftime("%Y-%m-%d") in result.stdout

    trail = db_rows(
        stack,
        "SELECT actor, action, outcome FROM carematrix_audit_log WHERE object = ? AND room = ?",
        uri, icu,
    )
    assert (stack.user_id("d2001"), "media.download", "success") in trail
    refused = db_rows(
        stack, "SELECT actor, action, outcome, rule FROM carematrix_audit_log WHERE object = ? AND actor = ?",
        uri, stack.user_id("d1001"),
    )
    assert [tuple(r) for r in refused] == [(stack.user_id("d1001"), "media.download", "denied", "protection.media_members")]


async def test_broken_image_in_a_protected_room_gets_an_error_never_the_original(stack: RunningStack):
    nurse = await stack.login("n3001")
    try:
        icu = await team_room(stack, nurse, "icu")
        broken = b"\xff\xd8\xff\xe0 not really a jpeg" + os.urandom(200)
        uri = await upload(nurse, broken, "image/jpeg", "broken.jpg")
        assert isinstance(await send(nurse, icu, image_content(uri, "broken.jpg")), RoomSendResponse)
        status, _, body = await media_get(stack, nurse, f"/_matrix/client/v1/media/download/{mxc_path(uri)}")
        assert status == 415 and body != broken
        assert "cannot be shown" in json.loads(body)["error"]
    finally:
        await nurse.close()


async def read_receipt(client: AsyncClient, room: str, event_id: str) -> None:
    resp = await client.room_read_markers(room, event_id, event_id)
    assert resp.__class__.__name__ == "RoomReadMarkersResponse", resp


async def event_content(client: AsyncClient, room: str, event_id: str) -> dict:
    resp = await client.room_get_event(room, event_id)
    return resp.event.source.get("content", {}) if hasattr(resp, "event") else {"error": str(resp)}


async def test_burn_after_read_purges_message_search_row_and_files(stack: RunningStack):
    nurse = await stack.login("n3001")
    doctor = await stack.login("d2001")
    try:
        room = await new_room(nurse, [doctor], name="bed 7 consult", initial_state=[
            {"type": "org.carematrix.room_class", "state_key": "", "content": {"class": "confidential"}},
        ])
        uri = await upload(nurse, photo(3, (640, 480)), "image/jpeg", "wound.jpg")
        secret = "Burnword zebra-quartz: HIV status of bed 7 is positive, treat accordingly."
        text = await send(nurse, room, {
            "msgtype": "m.text", "body": secret,
            "org.carematrix.burn_after_read": {"grace_seconds": 1},
        })
        image = await send(nurse, room, {**image_content(uri, "wound.jpg"), "org.carematrix.burn_after_read": {"grace_seconds": 1}})
        assert isinstance(text, RoomSendResponse) and isinstance(image, RoomSendResponse)
        assert (await event_content(doctor, room, text.event_id)).get("body") == secret
        # Not read yet: still there a little later.
        await asyncio.sleep(2.5)
        assert (await event_content(doctor, room, text.event_id)).get("body") == secret
        await read_receipt(doctor, room, image.event_id)

        async def burnt() -> bool:
            return (await event_content(doctor, room, text.event_id)) == {} and (
                await event_content(nurse, room, image.event_id)
            ) == {}

        assert await eventually(burnt, timeout=30)
        status, _, _ = await media_get(stack, doctor, f"/_matrix/client/v1/media/download/{mxc_path(uri)}")
        assert status == 404
    finally:
        await nurse.close()
        await doctor.close()

    stored = db_rows(stack, "SELECT json FROM event_json WHERE event_id = ?", text.event_id)
    assert stored and "zebra-quartz" not in stored[0][0]
    assert db_rows(stack, "SELECT event_id FROM event_search WHERE event_id = ?", text.event_id) == []
    burns = db_rows(stack, "SELECT details FROM carematrix_audit_log WHERE action = 'message.burn' AND object = ?", text.event_id)
    assert burns and "zebra" not in burns[0][0]


async def test_unread_burn_message_goes_when_its_time_to_live_runs_out(stack: RunningStack):
    nurse = await stack.login("n3001")
    doctor = await stack.login("d2001")
    try:
        icu = await team_room(stack, nurse, "icu")
        sent = await send(nurse, icu, {
            "msgtype": "m.text", "body": "Door code for the drug store tonight is 4711-burn",
            "org.carematrix.burn_after_read": {"ttl_seconds": 3},
        })
        assert isinstance(sent, RoomSendResponse)

        async def gone() -> bool:
            return (await event_content(doctor, icu, sent.event_id)) == {}

        assert await eventually(gone, timeout=30)
    finally:
        await nurse.close()
        await doctor.close()
    stored = db_rows(stack, "SELECT json FROM event_json WHERE event_id = ?", sent.event_id)
    assert "4711-burn" not in stored[0][0]


async def test_encrypted_room_class_keeps_membership_burn_retention_and_audit(stack: RunningStack):
    nurse = await stack.login("n3001")
    doctor = await stack.login("d2001")
    try:
        room = await new_room(nurse, [doctor], name="private", initial_state=[
            {"type": "org.carematrix.room_class", "state_key": "", "content": {"class": "encrypted"}},
        ])
        state = {(e["type"], e.get("state_key")): e["content"] for e in (await nurse.room_get_state(room)).events}
        assert state[("m.room.encryption", "")]["algorithm"] == "m.megolm.v1.aes-sha2"
        assert state[("m.room.retention", "")] == {"max_lifetime": 90 * 86400 * 1000}
        # What a client sends in an encrypted room: ciphertext the server cannot read, plus
        # the burn flag in the clear part of the envelope.
        sent = await send(nurse, room, {
            "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgAEoABzXb6nq0CIPHER", "sender_key": "k",
            "session_id": "s", "device_id": "D", "org.carematrix.burn_after_read": {"ttl_seconds": 2},
        }, event_type="m.room.encrypted")
        assert isinstance(sent, RoomSendResponse), sent

        async def gone() -> bool:
            return "ciphertext" not in (await event_content(doctor, room, sent.event_id))

        assert await eventually(gone, timeout=30)
        # Membership rules hold in encrypted rooms: the class admits invitations only.
        retention = await nurse.room_put_state(room, "m.room.retention", {"max_lifetime": 1000})
        assert retention.__class__.__name__ == "RoomPutStateError"
        assert "set by hospital policy" in retention.message
    finally:
        await nurse.close()
        await doctor.close()
    assert db_rows(stack, "SELECT action FROM carematrix_audit_log WHERE object = ?", sent.event_id)


async def test_ward_room_cannot_be_encrypted_and_its_protection_is_fixed(stack: RunningStack):
    nurse = await stack.login("n3001")
    try:
        icu = await team_room(stack, nurse, "icu")
        state = {(e["type"], e.get("state_key")): e["content"] for e in (await nurse.room_get_state(icu)).events}
        protection = state[("org.carematrix.protection", "")]
        assert protection["no_forward"] and protection["watermark"] and protection["no_screenshot"]
        assert state[("m.room.retention", "")] == {"max_lifetime": 180 * 86400 * 1000}
        enc = await nurse.room_put_state(icu, "m.room.encryption", {"algorithm": "m.megolm.v1.aes-sha2"})
        assert enc.__class__.__name__ == "RoomPutStateError" and "End-to-end encryption is off" in enc.message
        # Element asks for encryption when it creates a room; a server-protected class drops it.
        created = await nurse.room_create(name="shift planning", initial_state=[
            {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}},
        ])
        assert isinstance(created, RoomCreateResponse), created
        new_state = {e["type"] for e in (await nurse.room_get_state(created.room_id)).events}
        assert "m.room.encryption" not in new_state
    finally:
        await nurse.close()


def test_policy_check_rejects_encryption_with_watermark(stack: RunningStack, tmp_path: Path):
    policies = tmp_path / "policies"
    subprocess.run(["cp", "-r", str(stack.policy_dir), str(policies)], check=True)
    rooms = policies / "rooms.yaml"
    rooms.write_text(rooms.read_text().replace("      encryption: required  #", "      watermark: true\n      encryption: required  #"))
    result = subprocess.run([CLI, "policy", "check", str(policies)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "rooms.yaml:" in result.stdout + result.stderr
    assert "cannot be combined with watermark" in result.stdout + result.stderr


async def test_admins_see_what_retention_will_purge(stack: RunningStack):
    nurse = await stack.login("n3001")
    try:
        icu = await team_room(stack, nurse, "icu")
        assert isinstance(await send(nurse, icu, {"msgtype": "m.text", "body": "Handover at 8"}), RoomSendResponse)
    finally:
        await nurse.close()
    result = subprocess.run(
        [CLI, "retention", "report", "--days", "200", "--data-dir", str(stack.deployment.settings.data_dir)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith(icu))
    lifetime, past, soon = line.split()[1:4]
    # Everything in the ICU room is recent: nothing is past 180 days, all of it is due within 200.
    assert lifetime == "180d" and past == "0" and int(soon) > 0


async def test_retention_purge_job_deletes_messages_past_the_class_lifetime(stack: RunningStack):
    rooms_yaml = stack.policy_dir / "rooms.yaml"
    text = rooms_yaml.read_text()
    if "  shortlived:" not in text:
        rooms_yaml.write_text(text.replace(
            "room_classes:\n",
            "room_classes:\n  shortlived:\n    description: short-lived test room\n"
            "    protection:\n      retention: 10s\n",
            1,
        ))
    logs_before = log_sizes(log_files(stack.deployment.settings.data_dir))
    nurse = await stack.login("n3001")
    try:
        async def created() -> str | None:
            resp = await nurse.room_create(name="drill", initial_state=[
                {"type": "org.carematrix.room_class", "state_key": "", "content": {"class": "shortlived"}},
            ])
            return resp.room_id if isinstance(resp, RoomCreateResponse) else None

        room = await eventually(created)
        old = await send(nurse, room, {"msgtype": "m.text", "body": "drill message one"})
        assert isinstance(old, RoomSendResponse)
        await asyncio.sleep(11)
        # A newer message: Synapse always keeps a room's latest event.
        assert isinstance(await send(nurse, room, {"msgtype": "m.text", "body": "drill message two"}), RoomSendResponse)

        def purged() -> bool:
            return db_rows(stack, "SELECT event_id FROM events WHERE event_id = ?", old.event_id) == []

        assert await eventually(purged, timeout=60, interval=1)
    finally:
        await nurse.close()
    # While the room had nothing old enough, the purge job found nothing to purge: normal,
    # so not a WARNING an operator would chase (Synapse logs it as one).
    nothing_yet = [line for path, start in logs_before.items() if path.exists()
                   for line in path.read_bytes()[start:].decode("utf-8", "replace").splitlines()
                   if "[purge] purging events not possible" in line]
    assert nothing_yet and not [line for line in nothing_yet if " - WARNING - " in line], nothing_yet


async def test_burn_needs_no_appservice_and_survives_a_homeserver_crash(stack: RunningStack):
    nurse = await stack.login("n3001")
    doctor = await stack.login("d2001")
    try:
        room = await new_room(nurse, [doctor], name="crash drill", initial_state=[
            {"type": "org.carematrix.room_class", "state_key": "", "content": {"class": "confidential"}},
        ])
        sent = await send(nurse, room, {
            "msgtype": "m.text", "body": "Crash drill: burn me after reading",
            "org.carematrix.burn_after_read": {"grace_seconds": 2},
        })
        assert isinstance(sent, RoomSendResponse)
        stack.stack.appservice.stop()
        try:
            # Read while the appservice is down, then the homeserver dies before the burn.
            await read_receipt(doctor, room, sent.event_id)
            # The process that burns: the one Synapse, or the worker running background tasks.
            burner = stack.stack.background_synapse
            burner.kill()
            stack.stack.restart(burner)

            async def gone() -> bool:
                return (await event_content(doctor, room, sent.event_id)) == {}

            assert await eventually(gone, timeout=60)
        finally:
            stack.stack.restart_appservice()
    finally:
        await nurse.close()
        await doctor.close()
    stored = db_rows(stack, "SELECT json FROM event_json WHERE event_id = ?", sent.event_id)
    assert "Crash drill" not in stored[0][0]


async def test_other_files_are_served_to_members_on_record_or_blocked_per_class(stack: RunningStack):
    nurse = await stack.login("n3001")
    doctor = await stack.login("d2001")
    outsider = await stack.login("d1001")
    pdf = b"%PDF-1.4\n% discharge letter bed 7\n" + os.urandom(64) + b"\n%%EOF\n"
    try:
        icu = await team_room(stack, nurse, "icu")
        uri = await upload(nurse, pdf, "application/pdf", "letter.pdf")
        sent = await send(nurse, icu, {"msgtype": "m.file", "body": "letter.pdf", "url": uri})
        assert isinstance(sent, RoomSendResponse)
        path = f"/_matrix/client/v1/media/download/{mxc_path(uri)}"
        status, _, body = await media_get(stack, doctor, path)
        assert status == 200 and body == pdf  # ward rooms: other files audited, not altered
        assert (await media_get(stack, outsider, path))[0] == 403

        room = await new_room(nurse, [doctor], name="confidential files", initial_state=[
            {"type": "org.carematrix.room_class", "state_key": "", "content": {"class": "confidential"}},
        ])
        uri2 = await upload(nurse, pdf + b" ", "application/pdf", "letter2.pdf")
        assert isinstance(await send(nurse, room, {"msgtype": "m.file", "body": "letter2.pdf", "url": uri2}), RoomSendResponse)
        status, _, body = await media_get(stack, doctor, f"/_matrix/client/v1/media/download/{mxc_path(uri2)}")
        assert status == 403 and "cannot be downloaded from this room" in json.loads(body)["error"]
        assert "[rule protection.other_files]" in json.loads(body)["error"]
    finally:
        await nurse.close()
        await doctor.close()
        await outsider.close()
    fetched = db_rows(
        stack, "SELECT actor, details FROM carematrix_audit_log WHERE action = 'media.download' AND object = ? AND room = ?", uri, icu
    )
    assert any(actor == stack.user_id("d2001") and '"protected":"file"' in details for actor, details in fetched), fetched


def _audit_store(stack: RunningStack, up: bool) -> None:
    """Make every audit insert fail (up=False) or work again, from outside Synapse."""
    s = stack.deployment.settings
    target = s.db_url if s.database == "postgres" else str(stack.deployment.paths.sqlite_db)
    with connect(target) as db, db.transaction() as txn:
        if db.dialect == "sqlite":
            txn.execute("DROP TRIGGER IF EXISTS carematrix_test_block")
            if not up:
                txn.execute(
                    "CREATE TRIGGER carematrix_test_block BEFORE INSERT ON carematrix_audit_log "
                    "BEGIN SELECT RAISE(ABORT, 'audit store unavailable'); END"
                )
        else:
            txn.execute("DROP TRIGGER IF EXISTS carematrix_test_block ON carematrix_audit_log")
            if not up:
                txn.execute(
                    "CREATE OR REPLACE FUNCTION carematrix_test_block() RETURNS trigger AS $$ "
                    "BEGIN RAISE EXCEPTION 'audit store unavailable'; END $$ LANGUAGE plpgsql"
                )
                txn.execute(
                    "CREATE TRIGGER carematrix_test_block BEFORE INSERT ON carematrix_audit_log "
                    "FOR EACH ROW EXECUTE FUNCTION carematrix_test_block()"
                )


async def test_protected_download_is_refused_when_it_cannot_be_recorded(stack: RunningStack):
    nurse = await stack.login("n3001")
    doctor = await stack.login("d2001")
    try:
        uri = await posted_in_icu(stack, nurse, photo(11, (400, 300)), "scan.jpg")
        path = f"/_matrix/client/v1/media/download/{mxc_path(uri)}"
        _audit_store(stack, up=False)
        try:
            status, _, body = await media_get(stack, doctor, path)
        finally:
            _audit_store(stack, up=True)
        assert status == 503 and "could not be recorded in the audit trail" in json.loads(body)["error"]
        assert received_copies(stack, uri, doctor.user_id) == 0  # refused: he has no copy
        await receives_one_copy(stack, doctor, uri)
    finally:
        await nurse.close()
        await doctor.close()


async def posted_in_icu(stack: RunningStack, nurse: AsyncClient, image: bytes, name: str) -> str:
    """The mxc URI of a JPEG the nurse posted in the ICU team room (watermarked for members)."""
    icu = await team_room(stack, nurse, "icu")
    uri = await upload(nurse, image, "image/jpeg", name)
    assert isinstance(await send(nurse, icu, image_content(uri, name)), RoomSendResponse)
    return uri


async def receives_one_copy(stack: RunningStack, member: AsyncClient, uri: str) -> None:
    """The member downloads the 400 x 300 image at ``uri``: one copy is then on record."""
    status, _, body = await media_get(stack, member, f"/_matrix/client/v1/media/download/{mxc_path(uri)}")
    assert status == 200 and Image.open(io.BytesIO(body)).size == (400, 300)
    assert received_copies(stack, uri, member.user_id) == 1


def received_copies(stack: RunningStack, uri: str, user_id: str) -> int:
    """The marked copies of ``uri`` on record as received by ``user_id``: what a leak is
    traced to, and what no-forward compares that member's posts with."""
    rows = db_rows(stack, "SELECT count(*) FROM carematrix_watermark_delivery WHERE media_id = ? AND user_id = ?",
                   uri.rsplit("/", 1)[1], user_id)
    return int(rows[0][0])


async def test_a_head_request_for_a_protected_image_is_not_a_copy_received(stack: RunningStack):
    """A client asking only for the headers gets no picture: no copy is on record for them
    (it would be traced to them, and their later posts compared with a copy they never had)."""
    nurse = await stack.login("n3001")
    doctor = await stack.login("d2001")
    try:
        uri = await posted_in_icu(stack, nurse, photo(12, (400, 300)), "化验单.jpg")
        path = f"/_matrix/client/v1/media/download/{mxc_path(uri)}"
        status, headers, _ = await media_get(stack, doctor, path, method="HEAD")
        assert status == 200 and int(headers["Content-Length"]) > 0
        assert received_copies(stack, uri, doctor.user_id) == 0
        await receives_one_copy(stack, doctor, uri)
    finally:
        await nurse.close()
        await doctor.close()
