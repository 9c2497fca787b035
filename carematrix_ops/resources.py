"""The files CareMatrix ships, found the same way in a checkout and in an installed package.

The config templates live in the package (``carematrix_ops/templates/``), so both read them
with importlib.resources. The demo hospital's policy lives at the top of a checkout
(``policies/``), where ``make run`` reads it and an admin edits it; a wheel carries a copy of
it as ``carematrix_ops/demo/policies/`` (the build copies it, see ``setup.py``), because an
installed package has no checkout to read it from. There, ``carematrix up`` copies it into the
data dir on the data dir's first start and the admin edits that copy.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib.resources import as_file, files
from importlib.resources.abc import Traversable
from pathlib import Path


def _checkout() -> Path | None:
    """The source tree this code runs from, or None for an installed package."""
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "policies").is_dir():
        return root
    return None


CHECKOUT = _checkout()


def template(name: str) -> str:
    """The text of the config template ``name`` (e.g. ``homeserver.yaml.in``)."""
    return (files(__package__) / "templates" / name).read_text(encoding="utf-8")


def demo_policy() -> Traversable:
    """The demo hospital's policy directory: the checkout's, or the package's copy."""
    if CHECKOUT is not None:
        return CHECKOUT / "policies"
    return files(__package__) / "demo" / "policies"


def default_data_dir() -> Path | None:
    """``var/`` in a checkout; an installed package has no place of its own, so None."""
    return CHECKOUT / "var" if CHECKOUT is not None else None


def default_policy_dir(data_dir: Path) -> Path:
    """The checkout's ``policies/`` (what ``make run`` uses), else the data dir's own."""
    return CHECKOUT / "policies" if CHECKOUT is not None else data_dir / "policies"


def copy_demo_policy(target: Path) -> None:
    """Create ``target`` as a copy of the demo policy. All or nothing: the copy is made
    beside it and renamed into place, so an interrupted copy is never taken for a policy.
    Raises FileExistsError if ``target`` exists: an admin's policy is never overwritten."""
    if target.exists():
        raise FileExistsError(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".policies-") as staging:
        draft = Path(staging) / "policies"
        with as_file(demo_policy()) as source:
            shutil.copytree(source, draft)
        draft.rename(target)
