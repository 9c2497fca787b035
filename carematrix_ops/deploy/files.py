"""Writing the data dir's files."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write via a temp file and rename, so a crash never leaves a half-written config."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def staged(path: Path, destdir: Path | None) -> Path:
    """Where ``path`` is written: itself, or below ``destdir`` when files are rendered for
    another machine (``carematrix deploy``: its tree is copied to that machine's root)."""
    return destdir / path.relative_to(path.anchor) if destdir is not None else path
