"""The data dir's secrets (``secrets.json``), generated once and reused so that re-running
``carematrix up`` never invalidates sessions or tokens, and the homeserver's signing key."""

from __future__ import annotations

import json
import os
import secrets

from carematrix_ops.deploy.errors import DeployError
from carematrix_ops.deploy.files import atomic_write
from carematrix_ops.deploy.settings import Paths

SECRET_KEYS = (
    "registration_shared_secret",
    "macaroon_secret_key",
    "form_secret",
    "as_token",
    "hs_token",
    "admin_password",
    "demo_password",
    # Keys the hidden watermark pattern; `carematrix watermark trace` needs the same key.
    "watermark_key",
    # Bearer token hospital systems use to ask the appservice about their alerts.
    "his_token",
    # coturn checks the call credentials Synapse hands out against it (TURN REST scheme).
    "turn_shared_secret",
)


# Each FHIR source in the clinical policy pushes with its own bearer token, kept in the
# secrets as "fhir_token:<source>".
FHIR_TOKEN_PREFIX = "fhir_token:"
# Each device with 'token: generated' in the policy's devices section presses with its own
# token, kept as "device_token:<id>" (carematrix.policy.devices).
DEVICE_TOKEN_PREFIX = "device_token:"


def load_or_create_secrets(paths: Paths, extra_keys: list[str] | None = None) -> dict[str, str]:
    existing: dict[str, str] = {}
    if paths.secrets.exists():
        try:
            existing = json.loads(paths.secrets.read_text())
        except (OSError, ValueError) as exc:
            raise DeployError(
                f"{paths.secrets} is unreadable or corrupt ({exc}); restore it from backup — "
                "deleting it would invalidate every token and the appservice registration"
            ) from exc
    missing = [k for k in (*SECRET_KEYS, *(extra_keys or [])) if not existing.get(k)]
    if missing:
        for key in missing:
            existing[key] = (
                "-".join(secrets.token_hex(2) for _ in range(3))
                if key == "demo_password"
                else secrets.token_urlsafe(32)
            )
        atomic_write(paths.secrets, json.dumps(existing, indent=2) + "\n", 0o600)
    return existing


def ensure_signing_key(paths: Paths) -> None:
    if paths.signing_key.exists():
        return
    from signedjson.key import generate_signing_key, write_signing_keys

    key = generate_signing_key("a_" + secrets.token_hex(2))
    tmp = paths.signing_key.with_name("signing.key.tmp")
    paths.signing_key.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        write_signing_keys(fh, [key])
    os.replace(tmp, paths.signing_key)
