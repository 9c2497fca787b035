"""A policy check that breaks refuses the action (never lets it through), with the Chinese-first
refusal a person can read, and says in the log which check broke and why."""

from __future__ import annotations

import logging

import pytest

from synapse_modules.policy_module import FAILED_CLOSED, _fail_closed


class SerializationFailure(Exception):
    """Stands in for a database driver's error, whose message runs over several lines."""


async def test_a_check_that_raises_refuses_and_logs_which_check_and_why(caplog: pytest.LogCaptureFixture):
    @_fail_closed(FAILED_CLOSED.message)
    async def check_event_for_spam(event: object) -> str:
        raise SerializationFailure("could not serialize access due to concurrent update\nCONTEXT: line 2")

    with caplog.at_level(logging.ERROR, logger="synapse_modules.policy_module"):
        answer = await check_event_for_spam(object())

    assert answer == FAILED_CLOSED.message()
    assert answer.startswith("无法核对医院策略") and answer.endswith("[rule internal.error]")
    [line] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.getMessage() == (
        "CareMatrix policy check check_event_for_spam failed (SerializationFailure: could not serialize "
        "access due to concurrent update); refused with rule internal.error"
    )
    assert line.exc_info is not None  # the traceback follows for whoever debugs it


async def test_a_check_that_passes_is_untouched():
    @_fail_closed(FAILED_CLOSED.message)
    async def check_event_for_spam(event: object) -> str:
        return "NOT_SPAM"

    assert await check_event_for_spam(object()) == "NOT_SPAM"
