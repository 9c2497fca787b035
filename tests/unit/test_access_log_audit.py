"""What the request-log handler does with a line it cannot read: Synapse changed the line
(the guard tests in test_synapse_adapter_live.py catch that before an upgrade); the handler
then says so once, loudly, instead of misreading fields."""

from __future__ import annotations

import logging

import pytest

from synapse_modules.access_log import AccessLogAuditHandler


def _record(args: tuple) -> logging.LogRecord:
    return logging.LogRecord(
        "synapse.access.http.8008", logging.INFO, "site.py", 643,
        "%s - %s - {%s} Processed request: " + "%s " * (len(args) - 3), args, None,
    )


def test_a_changed_request_log_line_is_reported_once_and_records_nothing(caplog: pytest.LogCaptureFixture):
    recorded = []
    handler = AccessLogAuditHandler(recorded.append, "main")
    changed = ("10.0.0.1", "8008", "@admin:h", *range(9), "200", "GET", "/_synapse/admin/v1/users", "HTTP/1.1", "ua", 0, "extra")
    with caplog.at_level(logging.WARNING, logger="synapse_modules.access_log"):
        handler.emit(_record(changed))
        handler.emit(_record(changed))
    assert recorded == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "NOT being recorded" in warnings[0].getMessage()


def test_other_records_of_the_access_logger_are_ignored():
    recorded = []
    handler = AccessLogAuditHandler(recorded.append, "main")
    handler.emit(logging.LogRecord("synapse.access.http.8008", logging.INFO, "site.py", 1, "Connection from %s", ("x",), None))
    assert recorded == []


def test_only_admin_api_use_is_recorded_from_the_request_log():
    """File requests have their own records (synapse_modules/media_audit.py); reading them here
    too recorded each twice, the second time without its requester."""
    from synapse_modules.access_log import classify

    for path in (
        "/_matrix/client/v1/media/download/h/abc", "/_matrix/media/v3/download/h/abc",
        "/_matrix/media/r0/thumbnail/h/abc?width=32", "/_matrix/media/v3/upload?filename=x",
    ):
        assert classify("10.0.0.1", None, "200", "GET", path, "main") is None
    admin = classify("10.0.0.1", None, "401", "GET", "/_synapse/admin/v1/server_version", "main")
    assert admin is not None and (admin.actor, admin.outcome, admin.source) == ("anonymous", "denied", "10.0.0.1")
