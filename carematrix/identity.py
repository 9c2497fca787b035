"""Matrix IDs of the hospital's accounts: their parts, and which accounts act for the
hospital rather than for a person.

The CareMatrix bot and the on-duty role accounts (``@role-cardiology-attending:…``) are
the service: they post everywhere, are exempt from class rules and never take a person's
place in a room. One test here keeps the Synapse modules and the appservice agreeing on it.
"""

from __future__ import annotations

# Localparts of the on-duty role accounts (and their ``#role-…`` aliases) start with this.
ROLE_PREFIX = "role-"


def localpart(matrix_id: str) -> str:
    """``@d1001:hospital.example`` → ``d1001``; the same for ``#alias:server``. A string
    without a sigil is taken as starting with its localpart."""
    body = matrix_id[1:] if matrix_id[:1] in ("@", "#", "!", "+") else matrix_id
    return body.partition(":")[0]


def server_name(matrix_id: str) -> str:
    """``@d1001:hospital.example:8448`` → ``hospital.example:8448``; "" without one."""
    return matrix_id.partition(":")[2]


def user_id(localpart: str, server: str) -> str:
    return f"@{localpart}:{server}"


def local_localpart(matrix_id: str, server: str) -> str | None:
    """The localpart of an ID on ``server``; None for an ID of another server."""
    return localpart(matrix_id) if server_name(matrix_id) == server else None


def is_role_account(matrix_id: str, server: str) -> bool:
    """An on-duty role account of this server (the appservice owns the ``role-`` namespace)."""
    local = local_localpart(matrix_id, server)
    return local is not None and matrix_id.startswith("@") and local.startswith(ROLE_PREFIX)


def is_system_account(matrix_id: str, bot_user_id: str, server: str) -> bool:
    """The bot and the role accounts act for the hospital, not for a person."""
    return matrix_id == bot_user_id or is_role_account(matrix_id, server)
