"""A small blocking JSON-over-HTTP helper for the command-line tools (no event loop needed)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class HttpError(Exception):
    def __init__(self, status: int, body: Any, url: str) -> None:
        self.status = status
        self.body = body
        self.url = url
        errcode = body.get("errcode") if isinstance(body, dict) else None
        message = body.get("error") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status} from {url}: {errcode or ''} {message or ''}".strip())

    @property
    def errcode(self) -> str | None:
        return self.body.get("errcode") if isinstance(self.body, dict) else None


def request_json(
    method: str,
    url: str,
    body: Any = None,
    token: str | None = None,
    timeout: float = 30.0,
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = raw.decode(errors="replace")
        raise HttpError(exc.code, parsed, url) from None
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")
