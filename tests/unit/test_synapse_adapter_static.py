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
from synapse_modules.adapter.media import MEDIA_REPOSITORY, MEDIA_SERVLETS, UPLOAD_SERVLETS
from synapse_modules.adapter.profile import PROFILE_HANDLER
from synapse_modules.adapter.push import HTTP_PUSHER
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


def test_the_wrapped_upload_servlets_take_the_request_and_the_store_call_what_we_read():
    for module_name, class_name, method in UPLOAD_SERVLETS:
        assert _parameters((module_name, class_name), method)[:2] == ["self", "request"], class_name
    assert _parameters(MEDIA_REPOSITORY, "create_or_update_content")[:6] == [
        "self", "media_type", "upload_name", "content", "content_length", "auth_user",
    ]


def test_no_upload_servlet_escapes_the_observer():
    """A new upload path in Synapse would upload without a record."""
    from synapse.rest.media import media_repository_resource, upload_resource

    observed = {c for _, c, _ in UPLOAD_SERVLETS}
    for module in (upload_resource, media_repository_resource):
        for name, cls in inspect.getmembers(module, inspect.isclass):
            patterns = " ".join(getattr(p, "pattern", str(p)) for p in getattr(cls, "PATTERNS", None) or [])
            if re.search(r"/upload", patterns):
                assert name in observed, f"{name} takes uploads outside the observer"


def test_the_guarded_display_name_change_takes_the_keywords_the_guard_reads():
    params = inspect.signature(synapse_class(PROFILE_HANDLER).set_displayname).parameters
    for name in ("target_user", "requester", "new_displayname", "by_admin"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name


def test_the_wrapped_event_rules_hook_takes_event_and_context():
    assert _parameters(EVENT_RULES, "check_event_allowed")[:3] == ["self", "event", "context"]


def test_sso_refusals_are_the_exception_synapses_oidc_handler_shows():
    from synapse.handlers import oidc

    from synapse_modules.adapter.sso import MappingException

    assert oidc.MappingException is MappingException
    # A refusal is rendered as the "mapping_error" page with the exception's message.
    source = inspect.getsource(oidc.OidcProvider.handle_oidc_callback)
    assert re.search(r"except MappingException as e:\s+.*\n\s+self\._sso_handler\.render_error\(request, \"mapping_error\", str\(e\)\)", source)


def test_the_userinfo_fetch_is_wrapped_once_and_takes_the_token():
    from synapse.handlers import oidc

    from synapse_modules.adapter.sso import keep_logging_context_in_userinfo_fetch

    before = oidc.OidcProvider._fetch_userinfo  # wrapped already if a homeserver ran in this process
    original = getattr(before, "__wrapped__", before)
    assert list(inspect.signature(original).parameters)[:2] == ["self", "token"]
    oidc.OidcProvider._fetch_userinfo = original  # type: ignore[method-assign]
    try:
        keep_logging_context_in_userinfo_fetch()
        wrapped = oidc.OidcProvider._fetch_userinfo
        keep_logging_context_in_userinfo_fetch()  # a second provider or a reload wraps nothing more
        assert wrapped is not original and oidc.OidcProvider._fetch_userinfo is wrapped
    finally:
        oidc.OidcProvider._fetch_userinfo = before  # type: ignore[method-assign]


def test_listeners_are_opened_by_the_wrapped_functions_without_a_backlog():
    """listen_http must look both functions up by name (so it gets the wrapper) and pass no
    backlog of its own; both must still take the backlog fifth."""
    from synapse.app import _base

    from synapse_modules.adapter.listeners import BACKLOG_POSITION, LISTEN_FUNCTIONS

    source = inspect.getsource(_base.listen_http)
    for name in LISTEN_FUNCTIONS:
        assert re.search(rf"\b{name}\(", source), name
        params = list(inspect.signature(getattr(_base, name)).parameters)
        assert params.index("backlog") == BACKLOG_POSITION, (name, params)
    assert "backlog" not in source


def test_a_listener_is_opened_with_the_deeper_backlog(tmp_path):
    from synapse.app import _base
    from twisted.internet.protocol import ServerFactory

    from synapse_modules.adapter.listeners import LISTEN_BACKLOG, deepen_listen_backlog

    opened: list[tuple[str, int]] = []

    class Reactor:
        def listenUNIX(self, path, factory, backlog, mode, want_pid):  # noqa: N802 - Twisted's name
            opened.append(("unix", backlog))

        def listenTCP(self, port, factory, backlog, interface):  # noqa: N802 - Twisted's name
            opened.append(("tcp", backlog))

    deepen_listen_backlog()
    deepen_listen_backlog()  # once per process: a second call wraps nothing again
    _base.listen_unix(str(tmp_path / "s.sock"), 0o600, ServerFactory(), reactor=Reactor())
    _base.listen_tcp(["127.0.0.1"], 0, ServerFactory(), reactor=Reactor())
    _base.listen_tcp(["127.0.0.1"], 0, ServerFactory(), Reactor(), 7)  # a backlog given is kept
    assert opened == [("unix", LISTEN_BACKLOG), ("tcp", LISTEN_BACKLOG), ("tcp", 7)]


def test_a_burst_of_connections_waits_to_be_accepted_instead_of_being_refused(tmp_path):
    """The 502s under 200 concurrent senders: a busy process's UNIX socket refused every
    connection beyond 50 waiting. Synapse's own listen_unix, wrapped, on a reactor that
    accepts nothing (as one busy with a burst): 300 connections all wait."""
    import subprocess
    import sys

    script = f"""
import socket
from synapse.app import _base
from twisted.internet import reactor
from twisted.internet.protocol import ServerFactory
from synapse_modules.adapter.listeners import deepen_listen_backlog
deepen_listen_backlog()
path = {str(tmp_path / "burst.sock")!r}
_base.listen_unix(path, 0o600, ServerFactory(), reactor=reactor)
waiting = []
for _ in range(300):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(path)
    except BlockingIOError:
        break
    waiting.append(s)
print(len(waiting))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "300"


def test_every_push_notification_passes_the_filter_before_it_is_posted():
    """The notification built from an event (room name and sender's display name for a pusher
    without ``event_id_only``) reaches the gateway only through ``dispatch_push``, whose first
    argument after self is it; nothing else in the HTTP pusher posts one built from an event."""
    pusher = synapse_class(HTTP_PUSHER)
    assert _parameters(HTTP_PUSHER, "dispatch_push")[:2] == ["self", "content"]
    source = inspect.getsource(pusher.dispatch_push_event)
    assert 'content["room_name"]' in source and 'content["sender_display_name"]' in source
    assert re.search(r"await self\.dispatch_push\(content, tweaks\)", source)
    posts = [name for name, fn in inspect.getmembers(pusher, inspect.isfunction)
             if "post_json_get_json" in inspect.getsource(fn)]
    assert sorted(posts) == ["_send_badge", "dispatch_push"], posts  # a badge carries counts only


def test_an_alias_query_answered_404_is_logged_as_the_filter_expects():
    """Place 30: Synapse still logs the service's answer to an alias query with this message,
    on this logger, at WARNING; the filter lowers a 404 to INFO and leaves the rest."""
    import logging

    from synapse.appservice import api

    from synapse_modules.adapter.appservice_log import LOGGER, QUERY_ALIAS_ANSWER, AliasNotOurs

    assert api.logger.name == LOGGER
    source = inspect.getsource(api.ApplicationServiceApi.query_alias)
    assert f'logger.warning("{QUERY_ALIAS_ANSWER}", service.url, e.code)' in source

    def logged(code: object) -> int:
        record = logging.LogRecord(LOGGER, logging.WARNING, __file__, 1, QUERY_ALIAS_ANSWER,
                                   ("http://127.0.0.1:8009", code), None)
        assert AliasNotOurs().filter(record)
        return record.levelno

    assert logged(404) == logging.INFO
    assert logged(500) == logging.WARNING


def test_a_refused_sign_in_is_logged_as_the_filter_expects():
    """Place 31: Synapse still logs a mapping provider's refusal with this message, on this
    logger, with its traceback; the filter makes that a WARNING with the reason the person was
    shown, and leaves any other exception logged there as it was."""
    import logging
    import sys

    from synapse.handlers import oidc
    from synapse.handlers.sso import MappingException

    from synapse_modules.adapter.sso_log import COULD_NOT_MAP, LOGGER, RefusalNotAFault

    assert oidc.logger.name == LOGGER
    source = inspect.getsource(oidc.OidcProvider.handle_oidc_callback)
    assert "except MappingException as e:" in source and f'logger.exception("{COULD_NOT_MAP}")' in source

    def logged(exc: Exception) -> logging.LogRecord:
        try:
            raise exc
        except Exception:
            record = logging.LogRecord(LOGGER, logging.ERROR, __file__, 1, COULD_NOT_MAP, None, sys.exc_info())
        assert RefusalNotAFault().filter(record)
        return record

    refused = logged(MappingException("Staff number P5001 is not on this hospital's staff list"))
    assert (refused.levelno, refused.exc_info) == (logging.WARNING, None)
    assert refused.getMessage() == "SSO sign-in refused: Staff number P5001 is not on this hospital's staff list"
    fault = logged(RuntimeError("database gone"))
    assert fault.levelno == logging.ERROR and fault.exc_info is not None


def test_a_purge_with_nothing_to_purge_is_logged_as_the_filter_expects():
    """Place 32: Synapse still logs a retention room with no event old enough to purge with
    this message, on this logger, at WARNING; the filter lowers exactly that line to INFO."""
    import logging

    from synapse.handlers import pagination

    from synapse_modules.adapter.retention_log import LOGGER, NOTHING_TO_PURGE, NothingToPurge

    assert pagination.logger.name == LOGGER
    source = " ".join(inspect.getsource(pagination.PaginationHandler.purge_history_for_rooms_in_range).split())
    first, rest = NOTHING_TO_PURGE.split("(ts", 1)
    assert f'logger.warning( "{first}" "(ts{rest}",' in source

    def logged(msg: str, level: int) -> int:
        record = logging.LogRecord(LOGGER, level, __file__, 1, msg, (1781033291325, 2), None)
        assert NothingToPurge().filter(record)
        return record.levelno

    assert logged(NOTHING_TO_PURGE, logging.WARNING) == logging.INFO
    assert logged("[purge] not purging room %s for retention as there's an ongoing purge", logging.WARNING) == logging.WARNING
