"""What every command shares: exit codes, and where the data dir and policy are."""

from __future__ import annotations

import os
from pathlib import Path

from carematrix_ops import resources
from carematrix_ops.deploy.errors import DeployError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def default_data_dir() -> Path:
    """$CAREMATRIX_DATA_DIR, else a checkout's var/; an installed package must be told."""
    chosen = os.environ.get("CAREMATRIX_DATA_DIR")
    if chosen:
        return Path(chosen)
    default = resources.default_data_dir()
    if default is None:
        raise DeployError("no data dir: pass --data-dir DIR or set CAREMATRIX_DATA_DIR")
    return default


def policy_dir(given: Path | None) -> Path:
    """The policy directory a command reads: named, $CAREMATRIX_POLICY_DIR, or the one
    ``carematrix up`` uses by default (the checkout's, or the data dir's)."""
    chosen = given or os.environ.get("CAREMATRIX_POLICY_DIR")
    if chosen:
        return Path(chosen)
    try:
        data_dir = default_data_dir()
    except DeployError:
        raise DeployError(
            "no policy directory: name it, or set CAREMATRIX_POLICY_DIR (or CAREMATRIX_DATA_DIR "
            "for the data dir's own policies/)"
        ) from None
    return resources.default_policy_dir(data_dir)
