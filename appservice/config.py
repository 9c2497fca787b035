"""Typed appservice configuration, validated once at start."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from appservice.clinical.mllp_listener import DEFAULT_FRAME_TIMEOUT, MllpLimits
from bridges.hl7.mllp import DEFAULT_MAX_BYTES
from carematrix import identity

PLACEHOLDERS = ("example.com", "example.org", "CHANGE_ME", "changeme")


class AppserviceConfigError(Exception):
    pass


@dataclass(frozen=True)
class VoiceConfig:
    """Transcription of voice messages (docs/voice.md): worker processes, their threads,
    how many messages may wait, and the model (the packaged base model unless ``model_dir``
    names a bigger one, pinned by ``model_sha256``)."""

    enabled: bool = True
    workers: int = 1
    threads: int = 2
    queue: int = 20
    cache_dir: Path | None = None  # where the packaged model is joined (default: beside the database)
    model_dir: Path | None = None
    model_sha256: str | None = None


@dataclass(frozen=True)
class AppserviceConfig:
    homeserver_url: str
    domain: str
    id: str
    bot_localpart: str
    as_token: str
    hs_token: str
    listen_host: str
    listen_port: int
    database: str
    policy_dir: Path
    log_file: Path | None
    # Password given to accounts org sync creates (demo only; production logs in via SSO).
    initial_password: str | None = None
    test_clock: bool = False
    hl7_host: str = "127.0.0.1"
    hl7_port: int = 0
    his_token: str | None = None
    # A bigger HL7 message is refused with AR; a frame unfinished this long closes its connection.
    hl7_max_message_bytes: int = DEFAULT_MAX_BYTES
    hl7_frame_timeout: float = DEFAULT_FRAME_TIMEOUT
    fhir_tokens: dict[str, str] = field(default_factory=dict)  # source -> bearer token
    fhir_server: str | None = None
    dicomweb: str | None = None
    emr_archive: str | None = None
    systems_token: str | None = None  # bearer token for the FHIR server and the EMR archive
    case_archives: Path | None = None
    # Device ID -> SHA-256 of its generated token (devices with 'token: generated' in the
    # policy; the tokens themselves stay in the data dir's secrets).
    device_token_hashes: dict[str, str] = field(default_factory=dict)
    voice: VoiceConfig = field(default_factory=lambda: VoiceConfig())

    @property
    def bot_user_id(self) -> str:
        return identity.user_id(self.bot_localpart, self.domain)

    @property
    def mllp_limits(self) -> MllpLimits:
        return MllpLimits(self.hl7_max_message_bytes, self.hl7_frame_timeout)

    @classmethod
    def load(cls, path: Path) -> AppserviceConfig:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise AppserviceConfigError(f"{path}: cannot read appservice config: {exc}") from exc
        try:
            return cls.from_dict(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise AppserviceConfigError(f"{path}: {exc}") from exc

    @classmethod
    def from_dict(cls, raw: Any) -> AppserviceConfig:
        def section(name: str) -> dict[str, Any]:
            value = raw.get(name) if isinstance(raw, dict) else None
            if not isinstance(value, dict):
                raise ValueError(f"missing section '{name}'")
            return value

        def text(sec: dict[str, Any], key: str, where: str) -> str:
            value = sec.get(key)
            if not isinstance(value, str) or not value:
                raise ValueError(f"'{where}.{key}' must be non-empty text")
            if any(p in value for p in PLACEHOLDERS):
                raise ValueError(f"'{where}.{key}' still holds the placeholder {value!r}; set the real value")
            return value

        hs = section("homeserver")
        asv = section("appservice")
        port = asv.get("listen_port")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"'appservice.listen_port' must be a port number, got {port!r}")
        policy_dir = raw.get("policy_dir")
        if not isinstance(policy_dir, str):
            raise ValueError("'policy_dir' must be the path of the policies directory")
        log_file = raw.get("log_file")
        org = raw.get("org") or {}
        if not isinstance(org, dict):
            raise ValueError("'org' must be a mapping")
        initial_password = org.get("initial_password")
        if initial_password is not None and (not isinstance(initial_password, str) or len(initial_password) < 8):
            raise ValueError("'org.initial_password' must be text of at least 8 characters, or null")
        return cls(
            homeserver_url=text(hs, "url", "homeserver").rstrip("/"),
            domain=text(hs, "domain", "homeserver"),
            id=text(asv, "id", "appservice"),
            bot_localpart=text(asv, "bot_localpart", "appservice"),
            as_token=text(asv, "as_token", "appservice"),
            hs_token=text(asv, "hs_token", "appservice"),
            listen_host=text(asv, "listen_host", "appservice"),
            listen_port=port,
            database=text(asv, "database", "appservice"),
            policy_dir=Path(policy_dir),
            log_file=Path(log_file) if isinstance(log_file, str) else None,
            initial_password=initial_password,
            test_clock=raw.get("test_clock") is True,
            **_hl7(raw.get("hl7")),
            **_fhir(raw.get("fhir")),
            **_systems(raw.get("systems")),
            **_devices(raw.get("devices")),
            voice=_voice(raw.get("voice")),
        )


def _hl7(section: Any) -> dict[str, Any]:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ValueError("'hl7' must be a mapping")
    port = section.get("listen_port", 0)
    if not isinstance(port, int) or not 0 <= port < 65536:
        raise ValueError(f"'hl7.listen_port' must be a port number (0: off), got {port!r}")
    token = section.get("his_token")
    if token is not None and (not isinstance(token, str) or len(token) < 16):
        raise ValueError("'hl7.his_token' must be a secret of at least 16 characters")
    max_bytes = section.get("max_message_bytes", DEFAULT_MAX_BYTES)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1024:
        raise ValueError(f"'hl7.max_message_bytes' must be a number of bytes of at least 1024, got {max_bytes!r}")
    timeout = section.get("frame_timeout_seconds", DEFAULT_FRAME_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ValueError(f"'hl7.frame_timeout_seconds' must be a positive number of seconds, got {timeout!r}")
    return {
        "hl7_host": str(section.get("listen_host", "127.0.0.1")), "hl7_port": port, "his_token": token,
        "hl7_max_message_bytes": max_bytes, "hl7_frame_timeout": float(timeout),
    }


def _fhir(section: Any) -> dict[str, Any]:
    if section is None:
        return {}
    tokens = section.get("tokens") if isinstance(section, dict) else None
    if not isinstance(tokens, dict):
        raise ValueError("'fhir.tokens' must map each FHIR source to its bearer token")
    for source, token in tokens.items():
        if not isinstance(token, str) or len(token) < 16:
            raise ValueError(f"'fhir.tokens.{source}' must be a secret of at least 16 characters")
    return {"fhir_tokens": {str(k): v for k, v in tokens.items()}}


def _systems(section: Any) -> dict[str, Any]:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ValueError("'systems' must be a mapping")
    out: dict[str, Any] = {}
    for key in ("fhir_server", "dicomweb", "emr_archive"):
        value = section.get(key)
        if value is not None and (not isinstance(value, str) or not value.startswith(("http://", "https://"))):
            raise ValueError(f"'systems.{key}' must be an http(s) URL or null, got {value!r}")
        out[key] = value.rstrip("/") if value else None
    token = section.get("token")
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise ValueError("'systems.token' must be the bearer token text, or null")
    out["systems_token"] = token
    archives = section.get("case_archives")
    out["case_archives"] = Path(archives) if isinstance(archives, str) else None
    return out


def _devices(section: Any) -> dict[str, Any]:
    if section is None:
        return {}
    hashes = section.get("token_hashes") if isinstance(section, dict) else None
    if not isinstance(hashes, dict) or not all(
        isinstance(v, str) and len(v) == 64 for v in hashes.values()
    ):
        raise ValueError("'devices.token_hashes' must map each device ID to the SHA-256 (hex) of its token")
    return {"device_token_hashes": {str(k): v for k, v in hashes.items()}}
def _voice(section: Any) -> VoiceConfig:
    if section is None:
        return VoiceConfig()
    if not isinstance(section, dict):
        raise ValueError("'voice' must be a mapping")

    def count(key: str, default: int, top: int) -> int:
        value = section.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise ValueError(f"'voice.{key}' must be a whole number from 1 to {top}, got {value!r}")
        return value

    enabled = section.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ValueError("'voice.enabled' must be true or false")
    sha = section.get("model_sha256")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha)):
        raise ValueError("'voice.model_sha256' must be the 64 hex digits of model.bin's SHA-256, or null")
    paths = {}
    for key in ("cache_dir", "model_dir"):
        value = section.get(key)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"'voice.{key}' must be a directory path, or null")
        paths[key] = Path(value) if value else None
    return VoiceConfig(
        enabled=enabled, workers=count("workers", 1, 16), threads=count("threads", 2, 64),
        queue=count("queue", 20, 1000), model_sha256=sha, **paths,
    )
