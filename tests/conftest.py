"""Shared fixtures. One real homeserver per database backend serves the whole run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import RunningStack, start_stack, stop_stack


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = start_stack(request.param, tmp_path_factory.mktemp(f"stack-{request.param}"))
    yield running
    stop_stack(running)
