"""The bulk-join request org sync sends: malformed requests are refused before anything
is looked up, and a user named twice is joined once."""

from __future__ import annotations

import json

import pytest

from synapse_modules.org_populate import MAX_USERS, parse_request


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_a_well_formed_request_keeps_the_order_and_drops_repeats():
    room, users = parse_request(body(room_id="!r:h", user_ids=["@b:h", "@a:h", "@b:h"]))
    assert room == "!r:h"
    assert users == ["@b:h", "@a:h"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "JSON object"),
        (body(user_ids=["@a:h"]), "'room_id'"),
        (body(room_id="#alias:h", user_ids=["@a:h"]), "'room_id'"),
        (body(room_id="!r:h", user_ids=[]), "'user_ids'"),
        (body(room_id="!r:h", user_ids="@a:h"), "'user_ids'"),
        (body(room_id="!r:h", user_ids=["a:h"]), "'user_ids'"),
        (body(room_id="!r:h", user_ids=[f"@u{i}:h" for i in range(MAX_USERS + 1)]), f"at most {MAX_USERS}"),
    ],
)
def test_malformed_requests_are_refused_with_what_is_wrong(raw: bytes, message: str):
    with pytest.raises(ValueError, match=message):
        parse_request(raw)
