"""Synapse refuses to start with a broken module config, naming what is wrong."""

from __future__ import annotations

import pytest
from synapse.module_api.errors import ConfigError

from synapse_modules.policy_module import CareMatrixPolicy
from tests.paths import DEMO_POLICY_DIR

GOOD = {"policy_dir": str(DEMO_POLICY_DIR), "bot_user_id": "@carematrix:localhost"}


def test_valid_config():
    cfg = CareMatrixPolicy.parse_config(GOOD)
    assert cfg.bot_user_id == "@carematrix:localhost"
    assert cfg.reload_interval_seconds == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"policy_dirr": "x"}, "unknown key(s) policy_dirr"),
        ({"bot_user_id": "carematrix"}, "'bot_user_id' must be a Matrix user ID"),
        ({"reload_interval_seconds": 0}, "'reload_interval_seconds' must be a number between"),
        ({"policy_dir": "/nonexistent"}, "policy directory does not exist"),
    ],
)
def test_bad_config_is_a_config_error_naming_the_problem(change, message):
    with pytest.raises(ConfigError) as exc:
        CareMatrixPolicy.parse_config({**GOOD, **change})
    assert message in str(exc.value)
