"""Matrix IDs: their parts, and which accounts act for the hospital rather than a person."""

from __future__ import annotations

from carematrix.identity import (
    is_role_account,
    is_system_account,
    local_localpart,
    localpart,
    server_name,
    user_id,
)
from carematrix.policy.oncall import role_localpart

HS = "hospital.example"
BOT = "@carematrix:hospital.example"


def test_an_id_splits_into_localpart_and_server_even_with_a_port():
    assert localpart("@d1001:hospital.example") == "d1001"
    assert server_name("@d1001:hospital.example:8448") == "hospital.example:8448"
    assert localpart("#role-cardiology-attending:hospital.example") == "role-cardiology-attending"
    assert user_id("d1001", HS) == "@d1001:hospital.example"
    assert server_name("@broken") == ""


def test_only_ids_of_this_server_have_a_local_localpart():
    assert local_localpart("@d1001:hospital.example", HS) == "d1001"
    assert local_localpart("@d1001:evil.example", HS) is None
    # Not a suffix test: another server whose name ends like ours is another server.
    assert local_localpart("@d1001:xhospital.example", HS) is None


def test_the_bot_and_this_servers_role_accounts_are_the_service():
    role = user_id(role_localpart("cardiology/attending"), HS)
    assert role == "@role-cardiology-attending:hospital.example"
    assert is_role_account(role, HS) and is_system_account(role, BOT, HS)
    assert is_system_account(BOT, BOT, HS)


def test_people_and_other_servers_role_names_are_not():
    assert not is_system_account("@d1001:hospital.example", BOT, HS)
    assert not is_system_account("@role-cardiology-attending:evil.example", BOT, HS)
    assert not is_role_account("#role-cardiology-attending:hospital.example", HS)
