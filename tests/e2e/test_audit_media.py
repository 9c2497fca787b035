"""Every file request a client makes is on record exactly once, by the person who made it
(or ``anonymous`` from their address), with the outcome of the answer they got: a 415 is a
failure for that person, a refusal is denied with its rule, an upload names its mxc:// URI."""

from __future__ import annotations

import io
import json
import secrets
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp
from nio import AsyncClient, RoomSendResponse
from PIL import Image

from carematrix_ops.audit_db import connect
from tests.images import photo
from tests.support import (
    RunningStack,
    audit_cli,
    eventually,
    log_files,
    log_problems,
    log_sizes,
    search,
)


@dataclass(frozen=True)
class Answer:
    """One request as its client saw it, and the record it should have."""

    actor: str
    action: str
    object: str
    status: int
    method: str = "GET"

    @property
    def outcome(self) -> str:
        # What a person reading the answer would call it, decided here independently: a
        # HEAD answer carries no file, so nobody received one.
        if 200 <= self.status < 300 and self.method != "HEAD":
            return "success"
        if 200 <= self.status < 300:
            return "failure"
        return "denied" if self.status in (401, 403) else "failure"


def db_target(stack: RunningStack) -> str:
    s = stack.deployment.settings
    return s.db_url if s.database == "postgres" else str(stack.deployment.paths.sqlite_db)


def records_after(stack: RunningStack, seq: int) -> list[dict[str, Any]]:
    with connect(db_target(stack)) as db, db.transaction(read_only=True) as txn:
        mark = "%s" if db.dialect == "postgres" else "?"
        txn.execute(
            f"SELECT seq, actor, action, object, outcome, source, room, rule, details FROM carematrix_audit_log "
            f"WHERE seq > {mark} ORDER BY seq",
            (seq,),
        )
        cols = ("seq", "actor", "action", "object", "outcome", "source", "room", "rule", "details")
        return [dict(zip(cols, row, strict=True)) | {"details": json.loads(row[-1] or "{}")} for row in txn.fetchall()]


def last_seq(stack: RunningStack) -> int:
    with connect(db_target(stack)) as db, db.transaction(read_only=True) as txn:
        txn.execute("SELECT COALESCE(MAX(seq), 0) FROM carematrix_audit_log")
        return int(txn.fetchone()[0])


class Client:
    """Raw HTTP, so the test sees exactly the status each answer had."""

    def __init__(self, stack: RunningStack, http: aiohttp.ClientSession) -> None:
        self.stack = stack
        self.http = http
        self.answers: list[Answer] = []

    async def get(self, who: AsyncClient | None, path: str, token: str | None = None, method: str = "GET") -> tuple[int, bytes]:
        headers = {}
        if who is not None or token is not None:
            headers["Authorization"] = f"Bearer {token or who.access_token}"  # type: ignore[union-attr]
        async with self.http.request(method, self.stack.url + path, headers=headers) as resp:
            return resp.status, await resp.read()

    async def fetch(
        self, who: AsyncClient | None, path: str, *, token: str | None = None, expect: int | None = None, method: str = "GET"
    ) -> bytes:
        """GET (or HEAD) a download or thumbnail path and note what its record must say."""
        status, body = await self.get(who, path, token, method)
        if expect is not None:
            assert status == expect, (path, status, body[:300])
        kind = "media.thumbnail" if "/thumbnail/" in path else "media.download"
        server, media_id = path.split("/download/" if kind == "media.download" else "/thumbnail/", 1)[1].split("?")[0].split("/")[:2]
        actor = who.user_id if who is not None and token is None else "anonymous"
        self.answers.append(Answer(actor, kind, f"mxc://{server}/{media_id}", status, method))
        return body

    async def upload(self, who: AsyncClient | None, data: bytes, content_type: str, expect: int) -> str | None:
        headers = {"Content-Type": content_type}
        if who is not None:
            headers["Authorization"] = f"Bearer {who.access_token}"
        url = f"{self.stack.url}/_matrix/media/v3/upload?filename=f"
        async with self.http.post(url, data=data, headers=headers) as resp:
            assert resp.status == expect, await resp.text()
            body = await resp.json()
        uri = body.get("content_uri")
        self.answers.append(Answer(who.user_id if who else "anonymous", "media.upload", uri or "upload", expect))
        return uri


def big_png() -> bytes:
    """A small file of 64 million pixels: more than the marker will decode."""
    out = io.BytesIO()
    Image.new("1", (8000, 8000)).save(out, "PNG")
    return out.getvalue()


async def test_every_file_request_has_one_record_with_the_answers_outcome_and_actor(stack: RunningStack):
    nurse = await stack.login("n3001")
    doctor = await stack.login("d2001")
    outsider = await stack.login("d1001")
    start = last_seq(stack)
    logs_before = log_sizes(log_files(stack.deployment.settings.data_dir))
    server = stack.server_name
    try:
        icu = (await nurse.room_resolve_alias(f"#icu-team:{server}")).room_id
        async with aiohttp.ClientSession() as http:
            c = Client(stack, http)
            scan = photo(21, (400, 300))
            protected = await c.upload(nurse, scan, "image/jpeg", expect=200)
            plain = await c.upload(nurse, b"%PDF-1.4 unshared leaflet\n%%EOF\n", "application/pdf", expect=200)
            huge = await c.upload(nurse, big_png(), "image/png", expect=200)
            await c.upload(None, b"anything", "text/plain", expect=401)
            assert protected and plain and huge
            for uri, name in ((protected, "scan.jpg"), (huge, "huge.png")):
                sent = await nurse.room_send(icu, "m.room.message", {"msgtype": "m.image", "body": name, "url": uri})
                assert isinstance(sent, RoomSendResponse), sent

            p, u, h = (uri[len("mxc://"):] for uri in (protected, plain, huge))
            v1 = "/_matrix/client/v1/media"
            await c.fetch(doctor, f"{v1}/download/{p}", expect=200)  # a member: marked copy
            await c.fetch(doctor, f"{v1}/thumbnail/{p}?width=64&height=64&method=scale", expect=200)
            await c.fetch(doctor, f"{v1}/download/{p}", method="HEAD", expect=200)  # headers, no file
            await c.fetch(doctor, f"{v1}/download/{u}", method="HEAD", expect=200)  # the same, not protected
            await c.fetch(doctor, f"{v1}/thumbnail/{p}?width=0&height=0", expect=400)  # no such size
            await c.fetch(outsider, f"{v1}/download/{p}", expect=403)  # not a member
            await c.fetch(None, f"{v1}/download/{p}", expect=401)  # no token
            await c.fetch(None, f"{v1}/download/{p}", token="not-a-token", expect=401)  # invalid token
            await c.fetch(None, f"/_matrix/media/v3/download/{p}", expect=401)  # legacy, protected
            await c.fetch(doctor, f"{v1}/download/{h}", expect=415)  # too many pixels to mark
            await c.fetch(doctor, f"{v1}/download/{u}", expect=200)  # not protected: as uploaded
            await c.fetch(doctor, f"{v1}/thumbnail/{u}?width=32&height=32", expect=None)  # a PDF has none
            await c.fetch(doctor, f"{v1}/download/{server}/NoSuchFile{secrets.token_hex(4)}", expect=404)
            await c.fetch(None, f"/_matrix/media/r0/download/{u}", expect=None)  # legacy, unauthenticated
            await c.fetch(doctor, f"/_matrix/media/v3/download/{u}", expect=None)  # legacy with a token
            # The last request: once its record is there, every earlier one's is too.
            sentinel = f"{v1}/download/{server}/Sentinel{secrets.token_hex(4)}"
            await c.fetch(doctor, sentinel, expect=404)
    finally:
        await nurse.close()
        await doctor.close()
        await outsider.close()

    sentinel_object = c.answers[-1].object
    await eventually(lambda: any(r["object"] == sentinel_object for r in records_after(stack, start)))
    records = records_after(stack, start)
    ours = {a.object for a in c.answers}
    file_records = [r for r in records if r["action"].startswith("media.") and r["object"] in ours]
    got = Counter((r["actor"], r["action"], r["object"], r["outcome"], r["details"].get("status")) for r in file_records)
    want = Counter((a.actor, a.action, a.object, a.outcome, a.status) for a in c.answers)
    assert got == want, f"records differ from answers:\nmissing {want - got}\nextra {got - want}"

    # Nobody is "None" or empty, anywhere in what was recorded meanwhile.
    assert all(r["actor"] and r["actor"] != "None" for r in records), [r for r in records if r["actor"] in ("", "None")]
    anonymous = [r for r in file_records if r["actor"] == "anonymous"]
    assert anonymous and all(r["source"] for r in anonymous)  # the client's address
    # Media refusals are the file's record, with the rule; no second policy.denied beside it.
    refused = next(r for r in file_records if r["actor"] == outsider.user_id)
    assert (refused["rule"], refused["room"]) == ("protection.media_members", icu)
    assert not [r for r in records if r["action"] == "policy.denied" and protected in (r["object"] or "")]
    # Uploads name the file they stored.
    upload = next(r for r in file_records if r["action"] == "media.upload" and r["object"] == protected)
    assert upload["details"].items() >= {"size": len(scan), "content_type": "image/jpeg", "status": 200}.items()

    # An auditor searching by person sees the 415 the doctor got, with its reason, not a success.
    doctor_trail = search(stack, "--actor", stack.user_id("d2001"), "--action", "media.")
    on_huge = [r for r in doctor_trail if r["object"] == huge]
    assert [(r["outcome"], r["details"]["status"]) for r in on_huge] == [("failure", 415)]
    assert "too many pixels" in on_huge[0]["details"]["reason"]
    served = [r for r in doctor_trail if r["object"] == protected and r["action"] == "media.download"]
    assert sorted((r["outcome"], r["details"]["protected"]) for r in served) == [("failure", "watermark"), ("success", "watermark")]
    assert "headers only" in next(r for r in served if r["outcome"] == "failure")["details"]["reason"]
    # Odd requests are the client's errors, answered and recorded: none is an error of ours.
    assert log_problems(logs_before) == []

    verified = audit_cli(stack, "verify")
    assert verified.returncode == 0 and verified.stdout.startswith("audit log OK:"), verified.stdout + verified.stderr
