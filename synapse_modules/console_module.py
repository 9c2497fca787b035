"""Synapse module: the operations console in the browser, under ``/_carematrix/console`` on the
homeserver's own listener (docs/console.md).

Why here and not in the appservice: staff reach the homeserver's port already (it is the one
address Element uses, and the one a hospital puts behind its TLS proxy), sign-in must be the
homeserver's own ``/login`` (so Synapse passwords, the LDAP module and the hospital SSO —
a Matrix client's SSO redirect and ``m.login.token``, see ``carematrix.console.sso`` — work
the same), and the audit search and the audit writer live in this process. What only
the appservice knows — the roster index and the page store — it serves as JSON to this module
(``appservice/console_api.py``), authenticated with the appservice token the homeserver
already holds.

Pages are rendered on the server (``carematrix.console.pages``, Jinja2); who may open which
page is decided by ``carematrix.console.access`` from the person's roles in the policy.
Sessions live in the homeserver database under a hash of the cookie
(``carematrix.hsdb.console_session_store``), so a restart signs nobody out and any Synapse
process may serve the console. Forms post, so no patient ID or search term is
ever in a URL (and so never in Synapse's request log).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote
from zoneinfo import ZoneInfo

from synapse.module_api import ModuleApi
from synapse.module_api.errors import ConfigError
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from carematrix import identity
from carematrix.audit import actions as A
from carematrix.audit.people import actor_names, resolve_actor
from carematrix.audit.record import AuditRecord, AuditRecordInvalid, parse_time
from carematrix.audit.search import (
    AuditQuery,
    AuditQueryInvalid,
    as_dict,
    query_record,
    render,
    search,
)
from carematrix.console import charts as C
from carematrix.console import fatigue as F
from carematrix.console import pages as P
from carematrix.console import sessions as S
from carematrix.console import sso as SSO
from carematrix.console.access import (
    ACTION_BY_KEY,
    BY_KEY,
    decide_action,
    decide_page,
    sees_alert,
    visible_pages,
)
from carematrix.console.sessions import Session, csrf_ok
from carematrix.hsdb import console_session_store as session_store
from carematrix.policy.org import Staff, staff_localpart
from carematrix.stun import relay_check
from synapse_modules import hs_schema, policy_source
from synapse_modules.audit_writer import current_writer

log = logging.getLogger(__name__)

BASE = "/_carematrix/console"
SESSION_COOKIE = "carematrix_console"
LOGIN_COOKIE = "carematrix_console_login"  # the sign-in form's CSRF token, before any session
# The SSO sign-in's state, from the button to the callback. SameSite=Lax, not Strict: the
# browser comes back through the identity provider's site, and a Strict cookie is not sent
# on a navigation that crossed another site.
SSO_STATE_COOKIE = "carematrix_console_sso"
SSO_STATE_RULE = "console.sso_state"
SSO_TOKEN_RULE = "console.sso_token"
POLICY_RELOAD_MS = 2000
EXPORTS = {"csv": ("text/csv; charset=utf-8", "csv"), "json": ("application/json", "json"),
           "fhir": ("application/fhir+json", "json")}
AUDIT_FORMATS = (("page", "网页 On this page"), ("csv", "CSV"), ("json", "JSON"), ("fhir", "FHIR AuditEvent"))
AUDIT_LIMIT = 500
UNIT_SCOPE_RULE = "console.alerts_own_units"


@dataclass(frozen=True)
class ConsoleConfig:
    policy_dir: Path
    database: str
    homeserver_url: str  # where this module posts /login (the homeserver's own listener)
    appservice_url: str
    appservice_token: str
    secure_cookies: bool
    # How the system page checks TURN: {"host", "port", "uris", "secret"}, or {"off": why}.
    turn: dict[str, Any] = field(default_factory=lambda: {"off": "off"})

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ConsoleConfig:
        allowed = {"policy_dir", "database", "homeserver_url", "appservice_url", "appservice_token", "secure_cookies",
                   "turn"}
        unknown = set(config) - allowed
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))}; valid keys: {', '.join(sorted(allowed))}")
        for key in ("policy_dir", "homeserver_url", "appservice_url", "appservice_token"):
            if not isinstance(config.get(key), str) or not config[key]:
                raise ValueError(f"'{key}' is required")
        if config.get("database") not in ("sqlite", "postgres"):
            raise ValueError(f"'database' must be sqlite or postgres, got {config.get('database')!r}")
        turn = config.get("turn") or {"off": "off"}
        if not isinstance(turn, dict) or not ("off" in turn or {"host", "port", "uris", "secret"} <= set(turn)):
            raise ValueError("'turn' must be {off: <why>} or {host, port, uris, secret}")
        policy_source.load_at_config(config["policy_dir"])
        return cls(
            policy_dir=Path(config["policy_dir"]), database=config["database"],
            homeserver_url=config["homeserver_url"].rstrip("/"), appservice_url=config["appservice_url"].rstrip("/"),
            appservice_token=config["appservice_token"], secure_cookies=bool(config.get("secure_cookies", False)),
            turn=turn,
        )


@dataclass
class Reply:
    status: int = 200
    body: str = ""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    raw: bytes | None = None
    csp: str = P.CONTENT_SECURITY_POLICY


class ConsoleResource(Resource):
    """Every path below ``BASE``: the handler runs as a coroutine, and every answer carries
    the console's security headers."""

    isLeaf = True

    def __init__(self, api: ModuleApi, handle: Callable[[Request], Awaitable[Reply]]) -> None:
        super().__init__()
        self._api = api
        self._handle = handle

    def render_GET(self, request: Request) -> Any:  # noqa: N802 - twisted naming
        return self._dispatch(request)

    def render_POST(self, request: Request) -> Any:  # noqa: N802
        return self._dispatch(request)

    def _dispatch(self, request: Request) -> Any:
        async def respond() -> None:
            try:
                reply = await self._handle(request)
            except Exception:
                log.exception("console request failed")
                reply = Reply(500, P.render("error.html", **_bare(), heading="出错了 Something went wrong",
                                            message="请稍后再试 Please try again; the error is in the homeserver log."))
            request.setResponseCode(reply.status)
            request.setHeader(b"Content-Type", reply.content_type.encode())
            request.setHeader(b"Cache-Control", b"no-store")
            request.setHeader(b"Content-Security-Policy", reply.csp.encode())
            request.setHeader(b"X-Content-Type-Options", b"nosniff")
            request.setHeader(b"X-Frame-Options", b"DENY")
            request.setHeader(b"Referrer-Policy", b"no-referrer")
            for name, value in reply.headers:
                request.responseHeaders.addRawHeader(name.encode(), value.encode())
            request.write(reply.raw if reply.raw is not None else reply.body.encode())
            request.finish()

        self._api.run_as_background_process("carematrix_console", respond)
        return NOT_DONE_YET


def _bare() -> dict[str, Any]:
    return {"base": BASE, "hospital": "CareMatrix", "timezone": "UTC", "user": None, "pages": (), "csrf": ""}


def _query(request: Request, name: str) -> str | None:
    args: dict[bytes, list[bytes]] = request.args or {}
    values = args.get(name.encode())
    return values[-1].decode("utf-8", "replace") if values else None


def _error_text(exc: Exception) -> str:
    """The ``error`` of a JSON error answer from the appservice, if it has one."""
    raw = getattr(exc, "response", None) or b"{}"  # Synapse's HttpResponseException: the body
    try:
        return str(json.loads(raw).get("error", ""))[:300]
    except (ValueError, TypeError, AttributeError):
        return ""


def _form(request: Request) -> dict[str, str]:
    content = request.content
    if content is None:
        return {}
    content.seek(0)
    raw = content.read(64 * 1024)
    return {k: v[-1] for k, v in parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True).items()}


class CareMatrixConsole:
    def __init__(self, config: ConsoleConfig, api: ModuleApi) -> None:
        self._config = config
        self._api = api
        self._holder = policy_source.keep_fresh(api, config.policy_dir, POLICY_RELOAD_MS)
        self._schema = hs_schema.gate(api)
        # Secure cookies whenever staff reach the homeserver over TLS (a proxy in front).
        self._secure = config.secure_cookies or api.public_baseurl.startswith("https://")
        self.process = api.worker_name or "main"
        api.register_web_resource(BASE, ConsoleResource(api, self.handle))

    @staticmethod
    def parse_config(config: dict[str, Any]) -> ConsoleConfig:
        try:
            return ConsoleConfig.from_config(config or {})
        except ValueError as exc:
            raise ConfigError(f"CareMatrix console module: {exc}") from exc

    # -- plumbing ------------------------------------------------------------------------

    def _cookie(self, name: str, value: str, max_age: int | None = None, same_site: str = "Strict") -> tuple[str, str]:
        parts = [f"{name}={value}", f"Path={BASE}", "HttpOnly", f"SameSite={same_site}"]
        if self._secure:
            parts.append("Secure")
        if max_age is not None:
            parts.append(f"Max-Age={max_age}")
        return "Set-Cookie", "; ".join(parts)

    def _person(self, user_id: str) -> Staff | None:
        local = identity.local_localpart(user_id, self._api.server_name)
        return self._holder.current.staff_for_localpart(local) if local is not None else None

    def _timezone(self) -> str:
        oncall = self._holder.current.oncall
        return oncall.timezone if oncall else "UTC"

    def _context(self, session: Session | None, current: str = "") -> dict[str, Any]:
        policy = self._holder.current
        person = self._person(session.user_id) if session else None
        shown = f"{person.name} ({person.staff_number})" if person else (session.user_id if session else None)
        return {
            "base": BASE, "hospital": policy.hospital_name, "timezone": self._timezone(),
            "user": shown, "csrf": session.csrf if session else "", "current": current,
            "pages": visible_pages(person, session.is_admin) if session else (),
            "now": datetime.now(UTC).isoformat(),
        }

    def _page(self, template: str, session: Session | None, current: str = "", status: int = 200,
              **values: Any) -> Reply:
        return Reply(status, P.render(template, **{**self._context(session, current), **values}))

    async def _record(self, record: AuditRecord) -> None:
        writer = current_writer()
        if writer is None:
            log.warning("console: no audit writer in this process; %s not recorded", record.action)
            return
        await writer.record(record)

    def _source(self, request: Request) -> str:
        return str(request.getClientAddress().host)

    async def _db(self, desc: str, func: Callable[..., Any], *args: Any) -> Any:
        await self._schema.ready()
        return await self._api.run_db_interaction(desc, func, self._schema.dialect, *args)

    # -- sessions (in the homeserver database) -------------------------------------------

    async def _session(self, cookie: str | None, now: datetime) -> Session | None:
        """The live session this cookie belongs to (its idle clock restarted), or None. An
        expired one is deleted as it is found."""
        if not cookie:
            return None
        key = S.token_hash(cookie)
        row = await self._db("carematrix_console_session_find", session_store.find, key)
        if row is None:
            return None
        session = S.from_row(row)
        if S.expired(session, now):
            await self._db("carematrix_console_session_end", session_store.delete, key)
            return None
        if S.needs_touch(session, now):
            await self._db("carematrix_console_session_touch", session_store.touch, key, int(now.timestamp() * 1000))
        return session

    async def _start_session(self, user_id: str, now: datetime, is_admin: bool) -> tuple[str, Session]:
        cookie, session = S.new_session(user_id, now, is_admin)
        await self._db("carematrix_console_session_purge", session_store.purge_expired,
                       int(now.timestamp() * 1000), int(S.DEFAULT_IDLE.total_seconds() * 1000))
        await self._db("carematrix_console_session_start", session_store.insert, S.to_row(session), S.KEEP_PER_USER)
        return cookie, session

    # -- routing -------------------------------------------------------------------------

    async def handle(self, request: Request) -> Reply:
        path = request.path.decode("utf-8", "replace")
        sub = path[len(BASE):].strip("/") if path.startswith(BASE) else ""
        method = request.method.decode()
        if sub.startswith("static/") and method == "GET":
            found = P.static_file(sub.removeprefix("static/"))
            if found is None:
                return Reply(404, "not found", "text/plain")
            return Reply(200, content_type=found[0], raw=found[1])
        now = datetime.now(UTC)
        cookie = request.getCookie(SESSION_COOKIE.encode())
        session = await self._session(cookie.decode("utf-8", "replace") if cookie else None, now)
        if sub == "login":
            return await (self._login_post(request) if method == "POST" else self._login_form(request, None))
        if sub == "login/sso" and method == "GET":
            return await self._login_sso(request)
        if sub == SSO.CALLBACK and method == "GET":
            return await self._login_sso_callback(request)
        if session is None:
            if method == "POST":
                return self._page("error.html", None, status=403, heading="请重新登录 Please sign in again",
                                  message="会话已结束 Your session has ended.")
            return Reply(303, headers=[("Location", f"{BASE}/login")])
        if method == "POST":
            form = _form(request)
            if not csrf_ok(session, form.get("csrf")):
                log.warning("console: %s without a valid CSRF token from %s", sub, session.user_id)
                await self._record(AuditRecord(
                    actor=session.user_id, action=A.POLICY_DENIED, object=f"console/{sub}", outcome=A.DENIED,
                    rule="console.csrf", source=self._source(request), process=self.process,
                ))
                return self._page("error.html", session, status=403, heading="请求无效 Request refused",
                                  message="表单已过期，请重新打开页面。The form has expired; open the page again. [rule console.csrf]")
            if sub == "logout":
                return await self._logout(request, session)
            if sub in ("alerts/repage", "alerts/handover"):
                action = sub.removeprefix("alerts/")
                act = self._repage if action == "repage" else self._handover
                return await self._guarded(request, session, "alerts", lambda: self._scoped(request, session, form, act),
                                           action)
            if sub == "audit":
                return await self._guarded(request, session, "audit", lambda: self._audit(session, form))
            return Reply(404, P.render("error.html", **self._context(session), heading="没有这个页面 Not found", message=sub))
        if sub in ("", "index"):
            return Reply(303, headers=[("Location", f"{BASE}/board")])
        week = _query(request, "week")
        if sub.startswith("fatigue/"):
            part = sub.removeprefix("fatigue/")
            return await self._guarded(request, session, "fatigue", lambda: self._fatigue_part(request, session, part, week))
        page_key = sub
        if page_key not in BY_KEY:
            return self._page("error.html", session, status=404, heading="没有这个页面 Not found", message="")
        views: dict[str, Callable[[], Awaitable[Reply]]] = {
            "board": lambda: self._board(session),
            "alerts": lambda: self._alerts(session),
            "audit": lambda: self._audit_form(session),
            "fatigue": lambda: self._fatigue(session, week),
            "system": lambda: self._system(session),
        }
        return await self._guarded(request, session, page_key, views[page_key])

    async def _guarded(
        self, request: Request, session: Session, page_key: str, view: Callable[[], Awaitable[Reply]],
        action: str | None = None,
    ) -> Reply:
        """The page (or the action posted from it) when the person's roles allow it;
        otherwise a 403 page naming the rule, and the refusal on record."""
        # An action is its own right (a form posted from the page), decided on its own.
        person = self._person(session.user_id)
        verdict = decide_action(action, person) if action else decide_page(page_key, person, session.is_admin)
        if verdict.allowed:
            return await view()
        where = f"console/{page_key}" + (f"/{action}" if action else "")
        log.info("console denial rule=%s user=%s object=%s", verdict.rule, session.user_id, where)
        await self._record(AuditRecord(
            actor=session.user_id, action=A.POLICY_DENIED, object=where, outcome=A.DENIED,
            rule=verdict.rule, source=self._source(request), process=self.process,
        ))
        return self._page("refused.html", session, page_key, status=403, reason=verdict.reason, rule=verdict.rule)

    # -- sign-in -------------------------------------------------------------------------

    async def _sign_in_options(self) -> SSO.SignInOptions:
        """What the homeserver's ``/login`` offers now (password, SSO or both), asked as a
        Matrix client asks. If it does not answer, the password form is shown: its post then
        says whether sign-in works."""
        try:
            answer = await self._api.http_client.get_json(f"{self._config.homeserver_url}/_matrix/client/v3/login")
        except Exception as exc:
            log.warning("console: the homeserver's login flows could not be read: %s", exc)
            return SSO.SignInOptions(True, ())
        return SSO.sign_in_options(answer)

    def _public(self) -> str:
        """The homeserver's public URL (where staff reach it), without a trailing slash."""
        return self._api.public_baseurl.rstrip("/")

    async def _login_form(self, request: Request, error: str | None, status: int = 200,
                          extra: tuple[tuple[str, str], ...] = ()) -> Reply:
        options = await self._sign_in_options()
        token = secrets.token_urlsafe(24)
        # The SSO button starts on the public URL, so its state cookie is set on the host
        # Synapse sends the browser back to.
        sso = [{"name": idp.name,
                "href": f"{self._public()}{BASE}/login/sso" + (f"?idp={quote(idp.id, safe='')}" if idp.id else "")}
               for idp in options.sso]
        body = P.render("login.html", **{**self._context(None), "csrf": token}, title="登录 Sign in", error=error,
                        sso=sso, password=options.password or not sso)
        return Reply(status, body, headers=[self._cookie(LOGIN_COOKIE, token, 600), *extra])

    async def _login_post(self, request: Request) -> Reply:
        form = _form(request)
        expected = request.getCookie(LOGIN_COOKIE.encode())
        if not expected or not form.get("csrf") or not secrets.compare_digest(expected.decode(), form["csrf"]):
            return await self._login_form(request, "表单已过期，请再试一次 The form expired; please try again.", 403)
        user, password = form.get("user", "").strip(), form.get("password", "")
        if not user or not password:
            return await self._login_form(request, "请输入工号和密码 Enter your staff number and password.", 400)
        # The homeserver's own /login: whatever signs staff in to Element (Synapse's
        # passwords, the LDAP module) decides here too, and the attempt is on record there.
        try:
            answer = await self._homeserver_login(
                {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password})
        except Exception as exc:
            code = getattr(exc, "code", None)
            if code in (400, 401, 403):
                return await self._login_form(request, "工号或密码不正确 Wrong staff number or password.", 401)
            if code == 429:
                return await self._login_form(request, "尝试次数过多，请稍后再试 Too many attempts; try again shortly.", 429)
            log.warning("console sign-in could not reach the homeserver's /login: %s", exc)
            return await self._login_form(request, "暂时无法登录 Sign-in is unavailable right now.", 503)
        started = await self._signed_in(request, answer, "password")
        if isinstance(started, Reply):
            return started
        return Reply(303, headers=[
            ("Location", f"{BASE}/board"), self._cookie(SESSION_COOKIE, started), self._cookie(LOGIN_COOKIE, "", 0),
        ])

    async def _homeserver_login(self, submission: dict[str, Any]) -> dict[str, Any]:
        answer = await self._api.http_client.post_json_get_json(
            f"{self._config.homeserver_url}/_matrix/client/v3/login",
            {**submission, "initial_device_display_name": "CareMatrix console"},
        )
        return answer if isinstance(answer, dict) else {}

    async def _signed_in(self, request: Request, answer: dict[str, Any], how: str,
                         extra: tuple[tuple[str, str], ...] = ()) -> str | Reply:
        """After the homeserver's ``/login`` accepted someone (by password or SSO token):
        their Matrix device ended, the staff check, a console session. Returns the session
        cookie's value, or the refusal to show."""
        user_id, token = str(answer.get("user_id", "")), str(answer.get("access_token", ""))
        # The console keeps its own session; the Matrix device made by the sign-in is not
        # needed and is ended at once (so it does not linger in the person's device list).
        try:
            await self._api.http_client.post_json_get_json(
                f"{self._config.homeserver_url}/_matrix/client/v3/logout", {},
                headers={b"Authorization": [f"Bearer {token}".encode()]},
            )
        except Exception as exc:
            log.warning("console: the sign-in device of %s could not be logged out: %s", user_id, exc)
        is_admin = await self._api.is_user_admin(user_id)
        if self._person(user_id) is None and not is_admin:
            await self._record(AuditRecord(
                actor=user_id, action=A.POLICY_DENIED, object="console", outcome=A.DENIED,
                rule="console.staff_only", source=self._source(request), process=self.process,
                details={"how": how},
            ))
            return await self._login_form(
                request, "控制台仅限医院员工 The console is for hospital staff only. [rule console.staff_only]", 403,
                extra)
        cookie, _ = await self._start_session(user_id, datetime.now(UTC), is_admin)
        await self._record(AuditRecord(
            actor=user_id, action="console.sign_in", object="console", source=self._source(request),
            process=self.process, details={"how": how},
        ))
        return cookie

    async def _login_sso(self, request: Request) -> Reply:
        """The SSO button: a fresh state in a cookie of this browser, then Synapse's SSO
        redirect with the console's callback (carrying that state) as the client URL."""
        options = await self._sign_in_options()
        wanted = _query(request, "idp")
        idp = next((p for p in options.sso if p.id == wanted), None)
        if idp is None:
            return await self._login_form(
                request, "该统一身份认证方式不可用 This single sign-on is not offered by the homeserver.", 400)
        state = SSO.new_state()
        callback = SSO.callback_url(self._public(), BASE, state)
        return Reply(303, headers=[
            ("Location", SSO.redirect_url(self._public(), idp.id, callback)),
            self._cookie(SSO_STATE_COOKIE, state, SSO.STATE_LIFETIME_SECONDS, same_site="Lax"),
        ])

    async def _sso_refused(self, request: Request, rule: str, why: str, message: str, status: int) -> Reply:
        log.warning("console: SSO sign-in refused rule=%s from %s: %s", rule, self._source(request), why)
        await self._record(AuditRecord(
            actor="anonymous", action=A.POLICY_DENIED, object="console/login/sso", outcome=A.DENIED, rule=rule,
            source=self._source(request), process=self.process, details={"how": "sso", "reason": why},
        ))
        return await self._login_form(request, f"{message} [rule {rule}]", status, (self._clear_sso_state(),))

    def _clear_sso_state(self) -> tuple[str, str]:
        return self._cookie(SSO_STATE_COOKIE, "", 0, same_site="Lax")

    async def _login_sso_callback(self, request: Request) -> Reply:
        """Synapse sends the browser back here with a login token. The state must be this
        browser's own (else the token is not even used: it may be someone else's, sent to
        sign this browser in as them); the token is exchanged with ``m.login.token`` as a
        Matrix client does, and the device that makes is logged out at once."""
        given, token = _query(request, "state"), _query(request, "loginToken")
        cookie = request.getCookie(SSO_STATE_COOKIE.encode())
        expected = cookie.decode("utf-8", "replace") if cookie else None
        if not SSO.state_ok(expected, given):
            why = "no sign-in started in this browser" if not expected else "state does not match"
            return await self._sso_refused(
                request, SSO_STATE_RULE, why,
                "登录请求无效或已过期，请重新点击统一身份认证登录。"
                "The sign-in request is not valid for this browser or has expired; start the sign-in again.", 403)
        if not token:
            return await self._sso_refused(
                request, SSO_TOKEN_RULE, "no login token",
                "统一身份认证未完成，请重试。The hospital SSO sign-in did not complete; please try again.", 400)
        try:
            answer = await self._homeserver_login({"type": "m.login.token", "token": token})
        except Exception as exc:
            code = getattr(exc, "code", None)
            if code in (400, 401, 403):
                return await self._sso_refused(
                    request, SSO_TOKEN_RULE, f"login token refused ({code})",
                    "统一身份认证的登录凭据无效或已过期，请重试。"
                    "The hospital SSO sign-in token is invalid or has expired; please try again.", 401)
            log.warning("console SSO sign-in could not reach the homeserver's /login: %s", exc)
            return await self._login_form(request, "暂时无法登录 Sign-in is unavailable right now.", 503,
                                          (self._clear_sso_state(),))
        started = await self._signed_in(request, answer, "sso", (self._clear_sso_state(),))
        if isinstance(started, Reply):
            return started
        # A page, not a redirect: the browser arrived through the identity provider's site,
        # and it would not send the (SameSite=Strict) session cookie on a redirect from here.
        # The page's own refresh is a navigation from this site, so it does.
        body = P.render("signed_in.html", **self._context(None), title="已登录 Signed in",
                        refresh=f"0; url={BASE}/board", next=f"{BASE}/board")
        return Reply(200, body, headers=[self._cookie(SESSION_COOKIE, started), self._cookie(LOGIN_COOKIE, "", 0),
                                         self._clear_sso_state()])

    async def _logout(self, request: Request, session: Session) -> Reply:
        await self._db("carematrix_console_session_end", session_store.delete, session.token_hash)
        await self._record(AuditRecord(
            actor=session.user_id, action="console.sign_out", object="console", source=self._source(request),
            process=self.process,
        ))
        return Reply(303, headers=[("Location", f"{BASE}/login"), self._cookie(SESSION_COOKIE, "", 0)])

    # -- the appservice ------------------------------------------------------------------

    async def _appservice(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {b"Authorization": [f"Bearer {self._config.appservice_token}".encode()]}
        url = f"{self._config.appservice_url}{path}"
        if method == "GET":
            return await self._api.http_client.get_json(url, headers=headers)
        return await self._api.http_client.post_json_get_json(url, body or {}, headers=headers)

    def _unavailable(self, session: Session, current: str, exc: Exception) -> Reply:
        log.warning("console: the appservice did not answer for %s: %s", current, exc)
        return self._page("error.html", session, current, status=503,
                          heading="值班服务暂时无法访问 The on-call service is not answering",
                          message="页面稍后自动刷新 This page refreshes by itself shortly.", refresh=15)

    # -- pages ---------------------------------------------------------------------------

    async def _board(self, session: Session) -> Reply:
        try:
            data = await self._appservice("GET", "/_carematrix/console/board")
        except Exception as exc:
            return self._unavailable(session, "board", exc)
        return self._page("board.html", session, "board", title="值班表 On-call board", refresh=60,
                          roles=data.get("roles", []), feed_errors=data.get("feed_errors") or {},
                          now=data.get("now"))

    async def _alerts(self, session: Session, notice: str | None = None, status: int = 200,
                      error: str | None = None) -> Reply:
        try:
            data = await self._appservice("GET", "/_carematrix/console/alerts")
        except Exception as exc:
            return self._unavailable(session, "alerts", exc)
        person = self._person(session.user_id)
        may = {key: decide_action(key, person).allowed for key in ACTION_BY_KEY}
        policy = self._holder.current

        def mine(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [r for r in rows if sees_alert(r.get("units") or [], person, session.is_admin, policy)]

        scope = "全院 Whole hospital" if session.is_admin else " / ".join(
            policy.units[u].name if u in policy.units else u for u in (person.units if person else ()))
        return self._page("alerts.html", session, "alerts", status=status, title="告警 Alerts",
                          # No reload while a form may be half filled in after a refusal.
                          refresh=None if error else 20, scope=scope,
                          open=mine(data.get("open", [])), recent=mine(data.get("recent", [])),
                          unroutable=data.get("unroutable", []), recent_hours=12, notice=notice, error=error,
                          now=data.get("now"), may=may, staff=self._staff_choices() if may["handover"] else ())

    async def _scoped(self, request: Request, session: Session, form: dict[str, str],
                      act: Callable[[Session, dict[str, str]], Awaitable[Reply]]) -> Reply:
        """A re-page or hand-over of an alert of the person's own units only (the alerts page
        lists no other; a form posted for another unit's alert is refused, on record)."""
        alert_id = form.get("alert_id", "").strip().upper()
        try:
            data = await self._appservice("GET", "/_carematrix/console/alerts")
        except Exception as exc:
            return self._unavailable(session, "alerts", exc)
        row = next((r for r in data.get("open", []) if r.get("alert_id") == alert_id), None)
        if row is None or sees_alert(row.get("units") or [], self._person(session.user_id), session.is_admin,
                                     self._holder.current):
            return await act(session, form)  # a page no longer open is said so by the action
        log.info("console denial rule=%s user=%s alert=%s", UNIT_SCOPE_RULE, session.user_id, alert_id)
        await self._record(AuditRecord(
            actor=session.user_id, action=A.POLICY_DENIED, object=f"console/alerts/{alert_id}", outcome=A.DENIED,
            rule=UNIT_SCOPE_RULE, source=self._source(request), process=self.process,
        ))
        return self._page("refused.html", session, "alerts", status=403, rule=UNIT_SCOPE_RULE,
                          reason="告警 Alerts: 这不是您所在科室的告警 this alert is not one of your units'.")

    def _staff_choices(self) -> list[tuple[str, str]]:
        """(staff number, "name · title") of everyone a page can be handed to, for the form's
        suggestion list."""
        policy = self._holder.current
        return [(s.staff_number, f"{s.name} · {s.title}" if s.title else s.name)
                for s in sorted(policy.staff, key=lambda s: s.staff_number)]

    def _staff_by_number(self, given: str) -> Staff | None:
        """The staff member a form names: a staff number in any case, or their Matrix ID."""
        given = given.strip()
        local = identity.local_localpart(given, self._api.server_name) if given.startswith("@") else None
        found = self._holder.current.staff_for_localpart(local or staff_localpart(given))
        return found if found is not None and (local is not None or found.staff_number == given.upper()) else None

    async def _handover(self, session: Session, form: dict[str, str]) -> Reply:
        """Hand an open page to another named member of staff: the appservice pages them and
        moves the page's escalation onto them (``carematrix.oncall.escalation.hand_over``)."""
        alert_id = form.get("alert_id", "").strip().upper()
        given = form.get("to", "").strip()
        to = self._staff_by_number(given)
        if to is None:
            return await self._alerts(session, status=400, error=(
                f"找不到员工 “{given[:40]}”，告警 {alert_id} 未转交。请填写工号，例如 N3001。 "
                f"No member of staff '{given[:40]}': alert {alert_id} was not handed over. "
                "Enter a staff number, e.g. N3001."))
        rule = ACTION_BY_KEY["handover"].rule
        try:
            done = await self._appservice("POST", "/_carematrix/console/handover", {
                "alert_id": alert_id, "actor": session.user_id, "to": to.staff_number, "rule": rule})
        except Exception as exc:
            code = getattr(exc, "code", None)
            if code == 404:
                return await self._alerts(session, status=409, error=(
                    f"告警 {alert_id} 已不再未确认，未转交 Alert {alert_id} is no longer open; it was not handed over."))
            if code == 400:
                return await self._alerts(session, status=400, error=(
                    f"告警 {alert_id} 未转交 Alert {alert_id} was not handed over: {_error_text(exc)}"))
            return self._unavailable(session, "alerts", exc)
        return await self._alerts(
            session, f"已转交 Handed over {alert_id} → {done.get('to')}; 已通知原呼叫人和房间 "
                     "the sender and the room have been told.")

    async def _repage(self, session: Session, form: dict[str, str]) -> Reply:
        alert_id = form.get("alert_id", "").strip().upper()
        try:
            done = await self._appservice("POST", "/_carematrix/console/repage",
                                          {"alert_id": alert_id, "actor": session.user_id})
        except Exception as exc:
            if getattr(exc, "code", None) == 404:
                return await self._alerts(session, f"告警 {alert_id} 已不再未确认 Alert {alert_id} is no longer open.", 409)
            return self._unavailable(session, "alerts", exc)
        who = ", ".join(done.get("paged", []))
        return await self._alerts(session, f"已再次呼叫 Re-paged {alert_id}: {who}")

    def _audit_page(self, session: Session, status: int = 200, **values: Any) -> Reply:
        values.setdefault("q", {"format": "page"})
        values.setdefault("rows", None)
        return self._page("audit.html", session, "audit", status=status, title="审计 Audit", formats=AUDIT_FORMATS,
                          server=self._api.server_name, **values)

    async def _audit_form(self, session: Session) -> Reply:
        return self._audit_page(session)

    async def _audit(self, session: Session, form: dict[str, str]) -> Reply:
        """The CLI's search (``carematrix audit search``): same query, same record of it."""
        q = {k: (form.get(k) or "").strip() or None for k in ("actor", "patient", "room", "action", "since", "until")}
        fmt = form.get("format") or "page"
        shown = {**q, "format": fmt}
        try:
            if fmt != "page" and fmt not in EXPORTS:
                raise AuditQueryInvalid("format must be page, csv, json or fhir")
            policy = self._holder.current
            query = AuditQuery(
                actor=resolve_actor(q["actor"], policy.staff, self._api.server_name) if q["actor"] else None,
                room=q["room"], patient=q["patient"], action=q["action"],
                since=parse_time(q["since"]) if q["since"] else None,
                until=parse_time(q["until"]) if q["until"] else None,
                limit=AUDIT_LIMIT,
            )
        except (AuditQueryInvalid, AuditRecordInvalid, ValueError) as exc:
            return self._audit_page(session, 400, q=shown, error=str(exc))
        writer = current_writer()
        if writer is not None:
            await writer.ready()
        rows = await self._api.run_db_interaction("carematrix_console_audit", search, self._config.database, query)
        # Recorded before anything is shown, as the CLI's search is.
        await self._record(query_record(session.user_id, query, "table" if fmt == "page" else fmt, len(rows),
                                        process=self.process))
        if fmt == "page":
            names = actor_names({r.record.actor for r in rows}, self._holder.current.staff, self._api.server_name)
            return self._audit_page(session, q=shown, rows=[as_dict(r) for r in rows], names=names,
                                    searched_actor=query.actor if query.actor != q["actor"] else None)
        content_type, ext = EXPORTS[fmt]
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        return Reply(200, render(rows, fmt, server_name=self._api.server_name), content_type, headers=[
            ("Content-Disposition", f"attachment; filename=\"audit-{stamp}.{quote(ext)}\""),
        ])

    async def _fatigue_rows(self, week: str | None) -> tuple[dict[str, Any], list[F.Row]]:
        path = "/_carematrix/console/fatigue" + (f"?week={quote(week)}" if week else "")
        data = await self._appservice("GET", path)
        facts = [
            F.PageFact(
                p["role"], datetime.fromisoformat(p["created_at"]), p["priority"], tuple(p["paged"]), int(p["step"]),
                p.get("acked_by"), datetime.fromisoformat(p["acked_at"]) if p.get("acked_at") else None,
            )
            for p in data.get("pages", [])
        ]
        return data, F.report(facts, ZoneInfo(data["timezone"]))

    def _names(self) -> tuple[dict[str, str], Callable[[str], str]]:
        policy = self._holder.current
        roles = {r.id: r.name for r in policy.oncall.roles.values()} if policy.oncall else {}

        def person(number: str) -> str:
            found = policy.staff_for_localpart(staff_localpart(number))
            return f"{found.name} ({number})" if found is not None and found.staff_number == number else number

        return roles, person

    async def _fatigue(self, session: Session, week: str | None) -> Reply:
        try:
            data, rows = await self._fatigue_rows(week)
        except Exception as exc:
            if getattr(exc, "code", None) == 400:
                return self._page("error.html", session, "fatigue", status=400, heading="周次无效 Not a week",
                                  message="例如 For example 2026-W49")
            return self._unavailable(session, "fatigue", exc)
        roles, person = self._names()
        shown = F.as_dicts(rows)
        for d in shown:
            d["name"] = roles.get(str(d["who"]), d["who"]) if d["kind"] == "role" else person(str(d["who"]))
        tz = ZoneInfo(data["timezone"])
        start, _ = F.week_bounds(data["week"], tz)
        return self._page(
            "fatigue.html", session, "fatigue", title="告警疲劳 Alarm fatigue", week=data["week"],
            this_week=data["this_week"], prev_week=F.week_of(start - timedelta(days=1), tz),
            next_week=F.week_of(start + timedelta(days=7), tz), rows=shown, page_count=len(data.get("pages", [])),
            now=data.get("now"),
        )

    async def _fatigue_part(self, request: Request, session: Session, part: str, week: str | None) -> Reply:
        try:
            data, rows = await self._fatigue_rows(week)
        except Exception as exc:
            return self._unavailable(session, "fatigue", exc)
        if part == "export.csv":
            await self._record(AuditRecord(
                actor=session.user_id, action="console.fatigue_export", object=data["week"],
                source=self._source(request), process=self.process, details={"rows": len(rows)},
            ))
            return Reply(200, F.to_csv(rows), "text/csv; charset=utf-8", headers=[
                ("Content-Disposition", f"attachment; filename=\"alarm-fatigue-{data['week']}.csv\""),
            ])
        charts = {"shifts.svg": C.pages_per_shift, "tta.svg": C.time_to_acknowledge}
        if part not in charts:
            return self._page("error.html", session, "fatigue", status=404, heading="没有这个页面 Not found", message="")
        return Reply(200, content_type="image/svg+xml", raw=charts[part](rows), csp=C.SVG_CONTENT_SECURITY_POLICY)

    async def _system(self, session: Session) -> Reply:
        """What an admin checks first: the policy in force and its last reload (errors with
        file:line), what an org sync would change, and the health of every part — as
        ``carematrix status`` reports it (the appservice checks the hospital systems, see
        appservice/systems_health.py; TURN by the same relay allocation)."""
        holder = self._holder
        policy = holder.current
        tz = self._timezone()
        last = holder.last_outcome
        reload = None
        if last is not None:
            reload = {"accepted": last.accepted, "at": _iso(last.at, tz),
                      "errors": [{"file": e.file, "line": e.line, "message": e.message, "text": str(e)}
                                 for e in last.errors]}
        health: dict[str, Any] | None = None
        health_error = None
        try:
            health = await self._appservice("GET", "/_carematrix/health?systems=1")
        except Exception as exc:
            health_error = f"{type(exc).__name__}: {getattr(exc, 'code', '') or exc}"
            log.warning("console: the appservice health endpoint did not answer: %s", health_error)
        services = _services(self.process, policy.digest, health, health_error)
        services.append(await self._turn())
        try:
            dry = await self._appservice("POST", "/_carematrix/org/sync", {"dry_run": True})
            org = {"actions": dry.get("actions", []), "errors": dry.get("errors", []), "digest": dry.get("policy_digest")}
        except Exception as exc:
            log.warning("console: the org sync dry run failed: %s", exc)
            org = {"actions": [], "errors": [f"试运行失败 The dry run failed: {type(exc).__name__}"], "digest": None}
        appservice_rejected = (health or {}).get("policy_rejected_edit") or []
        return self._page(
            "system.html", session, "system", title="系统 System", services=services, org=org,
            policy={"digest": policy.digest, "dir": str(self._config.policy_dir), "loaded_at": _iso(holder.loaded_at, tz),
                    "appservice_digest": (health or {}).get("policy_digest")},
            reload=reload, appservice_rejected=appservice_rejected,
        )

    async def _turn(self) -> dict[str, Any]:
        turn = self._config.turn
        if "off" in turn:
            return {"name": "TURN 通话中继 call relay", "ok": None, "detail": str(turn["off"])}
        ok, detail = await self._api.defer_to_thread(
            relay_check, str(turn["host"]), int(turn["port"]), str(turn["secret"]), list(turn["uris"]), time.time())
        return {"name": "TURN 通话中继 call relay", "ok": ok, "detail": detail}


SYSTEMS = (
    ("hl7", "HL7 v2 接收 listener (MLLP)"),
    ("fhir_sources", "FHIR 来源 sources (push)"),
    ("fhir_server", "FHIR 服务器 server (EMR)"),
    ("pacs", "影像 PACS (DICOMweb)"),
)


def _services(process: str, digest: str, health: dict[str, Any] | None, error: str | None) -> list[dict[str, Any]]:
    """One row per part, from the appservice's health answer (``?systems=1``)."""
    rows: list[dict[str, Any]] = [
        {"name": "Synapse 主服务器 homeserver", "ok": True, "detail": f"运行中 running ({process}), policy {digest[:12]}"},
    ]
    if health is None:
        rows.append({"name": "应用服务 Appservice", "ok": False, "detail": f"无应答 not answering ({error})"})
        return rows
    voice = health.get("voice") or {}
    extra = [f"bot {health.get('bot')}", f"policy {str(health.get('policy_digest', ''))[:12]}",
             f"uptime {health.get('uptime_seconds', '?')} s"]
    if isinstance(voice, dict) and voice.get("transcription"):
        extra.append(f"voice {voice.get('transcription')}")
    for feed, why in (health.get("roster_feed_errors") or {}).items():
        extra.append(f"roster feed {feed}: {why}")
    rows.append({"name": "应用服务 Appservice", "ok": health.get("status") == "ok", "detail": "; ".join(extra)})
    undelivered = health.get("undelivered") or []
    if undelivered:
        # Hospital messages nobody has received: a row of their own, so an admin sees what
        # needs a person, and a running appservice is not shown as down because of them.
        rows.append({"name": "未送达消息 Undelivered hospital messages", "ok": False, "label": "待处理 NEEDS ACTION",
                     "detail": "; ".join(
            f"{item.get('type')} {item.get('control_id')} from {item.get('source')}" for item in undelivered)})
    systems = health.get("systems") or {}
    for key, name in SYSTEMS:
        found = systems.get(key)
        if isinstance(found, dict):
            rows.append({"name": name, "ok": found.get("ok"), "detail": str(found.get("detail", ""))})
    return rows


def _iso(epoch_seconds: float, timezone: str) -> str:
    return datetime.fromtimestamp(epoch_seconds, ZoneInfo(timezone)).isoformat()
