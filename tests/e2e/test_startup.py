"""A clean start is clean: by the time the stack is ready no log holds an error or a
traceback (Synapse, the appservice, the supervised processes, the PostgreSQL server for our
databases), and the appservice said "starting" rather than failing while it set up."""

from __future__ import annotations

import re

import pytest
import requests

from tests.support import RunningStack, log_problems

# Also run on the worker deployment (tests/conftest.py).
pytestmark = pytest.mark.worker_pass

HEALTH_ACCESS = re.compile(r'"GET /_carematrix/health HTTP/[\d.]+" (\d{3})')


def test_a_clean_start_logs_no_error_and_no_traceback(stack: RunningStack):
    own_logs = {path: 0 for path in stack.ready_logs if path not in stack.pg_logs_before}
    assert any(p.name == "homeserver.log" for p in own_logs) and any(p.name == "appservice.log" for p in own_logs)
    assert log_problems(own_logs, stack.ready_logs) == []
    if stack.pg_dbname:
        # Our two databases' lines in the server's log ("user@database ERROR: ...").
        assert log_problems(stack.pg_logs_before, stack.ready_logs, only=f"@{stack.pg_dbname}") == []


def test_health_said_starting_until_the_appservice_was_ready(stack: RunningStack):
    log = stack.deployment.paths.appservice_log.read_text(errors="replace")
    before_ready, _, after_ready = log.partition("CareMatrix appservice ready as")
    assert after_ready, "the appservice never logged that it was ready"
    # Polled while it set up: never a failure, never "ok" before it was ready.
    assert set(HEALTH_ACCESS.findall(before_ready)) <= {"503"}
    assert "200" in HEALTH_ACCESS.findall(after_ready)
    health = requests.get(f"{stack.deployment.settings.appservice_url}/_carematrix/health", timeout=10)
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
