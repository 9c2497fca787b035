"""The audit search's query string, as the homeserver module reads it."""

from __future__ import annotations

from synapse_modules.audit_module import query_arguments


def test_chinese_values_are_read_as_text():
    uri = b"/_synapse/client/carematrix/audit/search?actor=%E6%9D%8E%E4%BC%9F&patient=%E4%BD%8F%E9%99%A2%E5%8F%B7-0042&limit=5"
    assert query_arguments(uri) == {"actor": "李伟", "patient": "住院号-0042", "limit": "5"}


def test_the_last_value_of_a_name_counts_and_broken_bytes_do_not_raise():
    assert query_arguments(b"/s?action=auth.&action=policy.") == {"action": "policy."}
    assert query_arguments(b"/s?actor=%FF") == {"actor": "\ufffd"}
    assert query_arguments(b"/s") == {}
