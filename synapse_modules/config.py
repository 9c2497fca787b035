"""Typed configuration for the CareMatrix Synapse modules."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carematrix.policy import PolicyInvalid, load_policy

USER_ID_RE = re.compile(r"^@[a-z0-9._=/+-]+:[A-Za-z0-9.:\[\]-]+$")


@dataclass(frozen=True)
class PolicyModuleConfig:
    policy_dir: Path
    bot_user_id: str
    reload_interval_seconds: float

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PolicyModuleConfig:
        """Raises ValueError naming the bad key; the caller turns it into ConfigError."""
        if not isinstance(config, dict):
            raise ValueError("module config must be a mapping")
        allowed = {"policy_dir", "bot_user_id", "reload_interval_seconds"}
        unknown = set(config) - allowed
        if unknown:
            raise ValueError(
                f"unknown key(s) {', '.join(sorted(unknown))}; valid keys: {', '.join(sorted(allowed))}"
            )
        policy_dir = config.get("policy_dir")
        if not isinstance(policy_dir, str) or not policy_dir:
            raise ValueError("'policy_dir' must be the path of the policies directory")
        bot = config.get("bot_user_id")
        if not isinstance(bot, str) or not USER_ID_RE.match(bot):
            raise ValueError(f"'bot_user_id' must be a Matrix user ID like @carematrix:example.org, got {bot!r}")
        interval = config.get("reload_interval_seconds", 2)
        if not isinstance(interval, int | float) or isinstance(interval, bool) or not 0.2 <= interval <= 3600:
            raise ValueError(f"'reload_interval_seconds' must be a number between 0.2 and 3600, got {interval!r}")
        path = Path(policy_dir)
        try:
            load_policy(path)
        except PolicyInvalid as exc:
            raise ValueError(f"the policy in {path} is invalid:\n{exc}") from exc
        return cls(path, bot, float(interval))
