"""Guard tests of synapse_modules/adapter that need no running homeserver: the signatures
of the Synapse methods the adapter wraps (the federation servlets cannot be reached in the
in-process homeserver), that no media servlet escapes the gate, and when Synapse loads
modules. They read the installed Synapse's classes and code."""

from __future__ import annotations

import importlib
import inspect
import re

from synapse_modules.adapter.auth import LOGIN_SERVLET
from synapse_modules.adapter.events import EVENT_RULES
from synapse_modules.adapter.media import MEDIA_SERVLETS
from synapse_modules.adapter.wrapping import synapse_class


def _parameters(target: tuple[str, str], method: str) -> list[str]:
    # inspect.signature sees through our wrapper (functools.wraps) to Synapse's method.
    return list(inspect.signature(getattr(synapse_class(target), method)).parameters)


def test_the_wrapped_media_servlets_take_the_arguments_the_gate_passes_on():
    for module_name, class_name, _kind, auth in MEDIA_SERVLETS:
        params = _parameters((module_name, class_name), "on_GET")
        if auth == "federation":
            assert params[:5] == ["self", "origin", "content", "request", "media_id"], (class_name, params)
        else:
            assert params[:4] == ["self", "request", "server_name", "media_id"], (class_name, params)


def test_no_servlet_outside_the_gate_serves_media():
    """A new download path in Synapse would bypass the gate: every servlet whose pattern
    downloads or thumbnails media must be one we wrap."""
    wrapped = {(m, c) for m, c, _, _ in MEDIA_SERVLETS}
    modules = {m for m, _, _, _ in MEDIA_SERVLETS} | {"synapse.rest.media.media_repository_resource"}
    for module_name in modules:
        module = importlib.import_module(module_name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module_name:
                continue
            patterns = " ".join(getattr(p, "pattern", str(p)) for p in getattr(cls, "PATTERNS", []))
            patterns += str(getattr(cls, "PATH", ""))
            if re.search(r"/(download|thumbnail)/", patterns):
                assert (module_name, name) in wrapped, f"{module_name}.{name} serves media outside the gate"


def test_modules_are_loaded_before_the_listeners_are_built():
    """The servlets' bound methods are registered when the listeners are built; a module's
    constructor wraps the servlet classes, so it must run first."""
    from synapse.app import _base

    source = inspect.getsource(_base.start)
    assert source.index("hs.config.modules.loaded_modules") < source.index("hs.start_listening()")


def test_the_wrapped_login_servlet_takes_the_request():
    assert _parameters(LOGIN_SERVLET, "on_POST")[:2] == ["self", "request"]


def test_the_wrapped_event_rules_hook_takes_event_and_context():
    assert _parameters(EVENT_RULES, "check_event_allowed")[:3] == ["self", "event", "context"]


def test_sso_refusals_are_the_exception_synapses_oidc_handler_shows():
    from synapse.handlers import oidc

    from synapse_modules.adapter.sso import MappingException

    assert oidc.MappingException is MappingException
    # A refusal is rendered as the "mapping_error" page with the exception's message.
    source = inspect.getsource(oidc.OidcProvider.handle_oidc_callback)
    assert re.search(r"except MappingException as e:\s+.*\n\s+self\._sso_handler\.render_error\(request, \"mapping_error\", str\(e\)\)", source)
