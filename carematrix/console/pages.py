"""The console's HTML, rendered on the server with Jinja2 (autoescaping on): no script runs in
the browser, so the Content-Security-Policy can forbid every script. Times arrive in the
hospital's zone (ISO 8601 with offset) and are shown as they are, never in the browser's."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, pass_context, select_autoescape
from jinja2.runtime import Context

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"console.css": "text/css; charset=utf-8"}

# No script, no frame, no plug-in; styles and images only from the console itself; forms post
# only back to it.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def local_clock(value: str | None, timezone: str | None, with_day: bool = False) -> str:
    """"14:05" (or "12-05 14:05") of an ISO 8601 time, in the hospital's zone."""
    if not value:
        return ""
    at = datetime.fromisoformat(value)
    if timezone and at.utcoffset() is not None:
        at = at.astimezone(ZoneInfo(timezone))
    return at.strftime("%m-%d %H:%M" if with_day else "%H:%M")


@pass_context
def _clock(context: Context, value: str | None) -> str:
    return local_clock(value, context.get("timezone"))


@pass_context
def _day_clock(context: Context, value: str | None) -> str:
    return local_clock(value, context.get("timezone"), with_day=True)


def _blank_for_none(value: Any) -> Any:
    return "" if value is None else value


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
        # A missing value shows as nothing: an audit row without an object read "None".
        finalize=_blank_for_none,
    )
    env.filters["clock"] = _clock
    env.filters["dayclock"] = _day_clock
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def static_file(name: str) -> tuple[str, bytes] | None:
    """(content type, bytes) of a file the console serves, or None: only the listed files."""
    if name not in STATIC_FILES:
        return None
    return STATIC_FILES[name], (STATIC / name).read_bytes()
