"""Typed configuration for the CareMatrix Synapse modules."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synapse_modules.policy_source import load_at_config

USER_ID_RE = re.compile(r"^@[a-z0-9._=/+-]+:[A-Za-z0-9.:\[\]-]+$")


def checked_keys_and_policy_dir(config: Any, allowed: set[str]) -> str:
    """Every module's config is a mapping of known keys with the policies directory in it:
    a typo in a key is an error at start, not a silently ignored setting."""
    if not isinstance(config, dict):
        raise ValueError("module config must be a mapping")
    unknown = set(config) - allowed
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(sorted(unknown))}; valid keys: {', '.join(sorted(allowed))}"
        )
    policy_dir = config.get("policy_dir")
    if not isinstance(policy_dir, str) or not policy_dir:
        raise ValueError("'policy_dir' must be the path of the policies directory")
    return policy_dir


@dataclass(frozen=True)
class PolicyModuleConfig:
    policy_dir: Path
    bot_user_id: str
    reload_interval_seconds: float
    # Secret keying the hidden watermark; None switches watermarking to "refuse protected
    # images" (fail closed) rather than serving them unmarked.
    watermark_key: bytes | None = None
    watermark_cache_dir: Path | None = None
    burn_interval_seconds: float = 1.0
    # Where uploads are stored (homeserver.yaml's media_store_path): a worker that serves no
    # media reads a message's image from there for the no-forward check.
    media_store_path: Path | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PolicyModuleConfig:
        """Raises ValueError naming the bad key; the caller turns it into ConfigError."""
        policy_dir = checked_keys_and_policy_dir(config, {
            "policy_dir", "bot_user_id", "reload_interval_seconds", "watermark_key",
            "watermark_cache_dir", "burn_interval_seconds", "media_store_path",
        })
        bot = config.get("bot_user_id")
        if not isinstance(bot, str) or not USER_ID_RE.match(bot):
            raise ValueError(f"'bot_user_id' must be a Matrix user ID like @carematrix:example.org, got {bot!r}")
        interval = config.get("reload_interval_seconds", 2)
        if not isinstance(interval, int | float) or isinstance(interval, bool) or not 0.2 <= interval <= 3600:
            raise ValueError(f"'reload_interval_seconds' must be a number between 0.2 and 3600, got {interval!r}")
        key = config.get("watermark_key")
        if key is not None and (not isinstance(key, str) or len(key) < 16):
            raise ValueError("'watermark_key' must be a secret of at least 16 characters")
        cache = config.get("watermark_cache_dir")
        if cache is not None and (not isinstance(cache, str) or not cache):
            raise ValueError("'watermark_cache_dir' must be a directory path")
        burn = config.get("burn_interval_seconds", 1.0)
        if not isinstance(burn, int | float) or isinstance(burn, bool) or not 0.1 <= burn <= 600:
            raise ValueError(f"'burn_interval_seconds' must be a number between 0.1 and 600, got {burn!r}")
        media = config.get("media_store_path")
        if media is not None and (not isinstance(media, str) or not media):
            raise ValueError("'media_store_path' must be a directory path")
        load_at_config(policy_dir)
        return cls(
            Path(policy_dir), bot, float(interval), key.encode() if key else None,
            Path(cache) if cache else None, float(burn), Path(media) if media else None,
        )
