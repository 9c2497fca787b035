"""Checkpoint signatures and the audit key files."""

from __future__ import annotations

import os
import stat

import pytest

from carematrix.audit.checkpoint import (
    AuditKeyError,
    Checkpoint,
    export_verify_key,
    load_or_create_signing_key,
    load_verify_keys,
    parse_verify_key,
    sign,
    signature_problem,
)

HASH = "ab" * 32


def test_key_file_is_created_private_and_reused(tmp_path):
    path = tmp_path / "keys" / "audit_signing.key"
    key = load_or_create_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_signing_key(path)
    assert export_verify_key(again) == export_verify_key(key)
    assert path.read_text().startswith("ed25519 audit_")


def test_a_key_file_others_can_read_is_refused(tmp_path):
    path = tmp_path / "audit_signing.key"
    load_or_create_signing_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(AuditKeyError, match="chmod 600"):
        load_or_create_signing_key(path)


def test_signed_checkpoint_verifies_with_the_exported_key(tmp_path):
    key = load_or_create_signing_key(tmp_path / "k")
    keys = load_verify_keys(["# audit verify keys", export_verify_key(key) + "  # current", ""])
    cp = sign(key, 1200, HASH, 1_795_000_000_000_000)
    assert signature_problem(cp, keys) is None
    assert signature_problem(Checkpoint.from_json(cp.to_json()), keys) is None


@pytest.mark.parametrize(
    "edit",
    [{"seq": 1201}, {"hash": "cd" * 32}, {"signed_at": 1_795_000_000_000_001}],
)
def test_any_edit_to_a_checkpoint_breaks_its_signature(tmp_path, edit):
    key = load_or_create_signing_key(tmp_path / "k")
    keys = load_verify_keys([export_verify_key(key)])
    edited = Checkpoint.from_json(
        {**sign(key, 1200, HASH, 1_795_000_000_000_000).to_json(), **edit}
    )
    assert signature_problem(edited, keys) == (
        f"checkpoint at record {edited.seq} has a bad signature (forged or edited?)"
    )


def test_a_checkpoint_from_an_unknown_key_is_not_trusted(tmp_path):
    mine = load_or_create_signing_key(tmp_path / "mine")
    theirs = load_or_create_signing_key(tmp_path / "theirs")
    problem = signature_problem(
        sign(theirs, 5, HASH, 0), load_verify_keys([export_verify_key(mine)])
    )
    assert "not a trusted audit verify key" in problem


def test_bad_verify_key_lines_say_what_is_wrong():
    with pytest.raises(AuditKeyError, match="must look like"):
        parse_verify_key("ed25519 abc")
    with pytest.raises(AuditKeyError, match="not a valid Ed25519 key"):
        parse_verify_key("ed25519:audit_x AAAA")
