"""Refusing a single sign-on.

An OpenID mapping provider refuses a person by raising Synapse's ``MappingException``:
Synapse shows its message on the error page. The class lives in ``synapse.handlers.sso``,
outside the module API.
"""

from __future__ import annotations

from synapse.handlers.sso import MappingException

__all__ = ["MappingException"]
