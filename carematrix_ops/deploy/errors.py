"""The one error deployment raises."""

from __future__ import annotations


class DeployError(Exception):
    """A problem the operator can fix; the message says what and how."""
