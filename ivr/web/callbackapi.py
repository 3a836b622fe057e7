"""Agents' HTTP API and page for working the callback lists (R2, R10, R14, R18, R19).

Agents log in with their SIP name and password (the server keeps only the
HA1, like ``/agent/state``). A login gives a signed session: an HttpOnly,
SameSite=Strict cookie for the page, and the same value as a bearer token
for scripts. HTTP Basic works on every route too. Agents named under
``callbacks.supervisors`` have the role "supervisor"::

    POST /callbacks/login                   {"agent", "password"} -> {"agent", "role", "token", "expires_at"}
    POST /callbacks/logout
    GET  /callbacks/me                      {"agent", "role"}
    GET  /callbacks?state=due,booked&mine=1&queue=general
    POST /callbacks                         an agent books one: {"number", "queue", "not_before"?, "notes"?}
    POST /callbacks/{id}/claim | /release
    POST /callbacks/{id}/call               click-to-call: your phone rings, then the customer's
    POST /callbacks/{id}/outcome            {"outcome": "completed" | "no_answer" | "busy" | "failed",
                                             "notes": "...", "follow_up": true}
    POST /callbacks/{id}/reschedule         {"not_before": ISO 8601, "window_end": ISO 8601 (optional)}
    POST /callbacks/{id}/give-up            {"notes": "..."}
    POST /callbacks/{id}/notes              {"notes": "..."}
    POST /callbacks/{id}/reassign           {"agent": "8002"}             (supervisors)
    GET  /callbacks/{id}/message            the caller's recorded message (audio/wav)
    GET  /callbacks/handover                every open callback and promise (R19, supervisors)
    GET  /agent/callbacks                   the agents' page

An agent sees the callbacks waiting (booked, due) and its own claimed ones,
and acts only on callbacks it holds; supervisors see and act on all. The
claim itself (a lease) is the store's: two agents never hold one callback.
Errors are JSON ``{"error": "..."}`` with a 4xx worded for the agent; a
failed click-to-call is a 502 carrying the dialer's reason.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiohttp import web

from callback.rules import ACTIVE_STATES, BOOKED, DUE, FOLLOW_UP, IN_PROGRESS, OFFERED, OUTCOMES, STATES
from callback.store import AlreadyBooked, Callback, CallbackStore, Conflict, NotFound
from ivr.calls.dialer import DialError
from ivr.settings.config import CallbackSettings
from ivr.sip.registrar import USERNAME_RE, Registrar
from ivr.web.admin import _error
from ivr.web.queueapi import QUEUES

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "frontdesk_session"
SUPERVISOR = "supervisor"
AGENT = "agent"
MAX_NOTES = 4000
# wrong passwords in a row before a name is refused for a while (guessing SIP passwords over HTTP)
MAX_FAILURES = 5
LOCKOUT = timedelta(minutes=1)
_SESSION_CONTEXT = b"frontdesk callbacks session v1\0"


class Dialer(Protocol):
    """Click-to-call (ivr.calls.dialer.CallbackDesk): rings the agent, then the customer. Raises DialError."""

    async def click_to_call(self, cb: Callback, agent: str) -> None: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Signed, expiring session tokens: ``base64(agent|expiry|nonce).base64(HMAC)``; nothing kept but logouts."""

    def __init__(self, secret: bytes, lifetime: timedelta) -> None:
        if len(secret) < 16:
            raise ValueError("the session secret must be at least 16 bytes")
        self._secret = secret
        self.lifetime = lifetime
        self._revoked: dict[str, datetime] = {}  # nonce -> expiry (forgotten once the token would be dead anyway)

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, _SESSION_CONTEXT + payload, hashlib.sha256).digest()

    def issue(self, agent: str, now: datetime) -> tuple[str, datetime]:
        expires = now + self.lifetime
        payload = f"{agent}|{int(expires.timestamp())}|{secrets.token_hex(8)}".encode()
        return f"{_b64(payload)}.{_b64(self._sign(payload))}", expires

    def _open(self, token: str) -> tuple[str, datetime, str] | None:
        body, _, sig = token.partition(".")
        try:
            payload, mac = _unb64(body), _unb64(sig)
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(mac, self._sign(payload)):
            return None
        try:
            agent, expiry, nonce = payload.decode().split("|")
            expires = datetime.fromtimestamp(int(expiry), UTC)
        except (UnicodeDecodeError, ValueError, OverflowError):
            return None
        return agent, expires, nonce

    def check(self, token: str, now: datetime) -> str | None:
        """The agent a live token was issued to, or None."""
        opened = self._open(token)
        if opened is None:
            return None
        agent, expires, nonce = opened
        if expires <= now or nonce in self._revoked:
            return None
        return agent

    def revoke(self, token: str, now: datetime) -> None:
        opened = self._open(token)
        if opened is not None:
            self._revoked[opened[2]] = opened[1]
        for nonce, expires in list(self._revoked.items()):
            if expires <= now:
                del self._revoked[nonce]


@dataclass
class CallbackService:
    """What the callback routes work on; set as ``app[CALLBACKS]`` once the database is up.

    ``registrar`` holds the agents' SIP logins; when None, the running
    queues' registrar (``app[ivr.web.queueapi.QUEUES].ua.registrar``) is used.
    ``send_text(number, body, reason)`` queues a text to a customer.
    """

    store: CallbackStore
    settings: CallbackSettings
    dialer: Dialer
    secret: bytes
    recordings_dir: Path
    send_text: Callable[[str, str, str], None]
    clock: Callable[[], datetime] = utcnow
    registrar: Registrar | None = None
    sessions: Sessions = field(init=False)
    _failures: dict[str, tuple[int, datetime]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.sessions = Sessions(self.secret, timedelta(hours=self.settings.session_hours))

    def role_of(self, agent: str) -> str:
        return SUPERVISOR if agent in self.settings.supervisors else AGENT

    def check_password(self, registrar: Registrar, name: str, password: str) -> bool | None:
        """True/False for the SIP password of ``name``; None while the name is locked out."""
        now = self.clock()
        failures, since = self._failures.get(name, (0, now))
        if failures >= MAX_FAILURES and now - since < LOCKOUT:
            return None
        ok = registrar.password_ok(name, password)
        if ok:
            self._failures.pop(name, None)
        elif name in registrar.credentials:  # count only real names: the table stays as small as the agent list
            self._failures[name] = (1 if now - since >= LOCKOUT else failures + 1, now)
        return ok


CALLBACKS = web.AppKey("callbacks", CallbackService)


@dataclass(frozen=True)
class Who:
    agent: str
    role: str
    token: str | None = None  # the session token, when the request came with one

    @property
    def supervisor(self) -> bool:
        return self.role == SUPERVISOR


# -- JSON -----------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def callback_json(cb: Callback) -> dict[str, Any]:
    """A callback for the API: every field but the server's file path of the message."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cb):
        value = getattr(cb, f.name)
        if f.name == "message_path":
            continue
        out[f.name] = _iso(value) if isinstance(value, datetime) else value
    out["has_message"] = bool(cb.message_path)
    return out


HANDOVER_FIELDS = (
    "id",
    "state",
    "kind",
    "number",
    "queue",
    "arrived_at",
    "not_before",
    "window_end",
    "promised_by",
    "claimed_by",
    "lease_until",
    "attempts",
    "next_attempt_at",
    "notes",
)


def handover_json(callbacks: Sequence[Callback], counts: dict[str, int], now: datetime) -> dict[str, Any]:
    """R19: every open callback and its promise, in writing, for the next shift."""
    rows = []
    for cb in callbacks:
        row = {name: getattr(cb, name) for name in HANDOVER_FIELDS}
        row = {k: _iso(v) if isinstance(v, datetime) else v for k, v in row.items()}
        row["promise_missed"] = cb.promised_by < now
        rows.append(row)
    claimed: dict[str, int] = {}
    for cb in callbacks:
        if cb.claimed_by is not None:
            claimed[cb.claimed_by] = claimed.get(cb.claimed_by, 0) + 1
    return {
        "generated_at": _iso(now),
        "open": len(rows),
        "promises_missed": sum(1 for r in rows if r["promise_missed"]),
        "claimed_by_agent": dict(sorted(claimed.items())),
        "counts_by_state": counts,
        "callbacks": rows,
    }


def handover_text(report: dict[str, Any]) -> str:
    """The handover report as lines for a person (CLI)."""
    lines = [
        f"shift handover at {report['generated_at']}: {report['open']} open callback(s), "
        f"{report['promises_missed']} promise(s) already missed",
    ]
    for agent, n in report["claimed_by_agent"].items():
        lines.append(f"  {agent} holds {n}")
    if report["callbacks"]:
        lines.append("")
        lines.append(
            f"{'id':>6}  {'state':<11} {'queue':<12} {'number':<16} {'promised by (UTC)':<20} "
            f"{'claimed by':<12} {'lease until':<20} tries"
        )
    for r in report["callbacks"]:

        def when(value: str | None) -> str:
            return value[:19].replace("T", " ") if value else "-"

        missed = "  MISSED" if r["promise_missed"] else ""
        lines.append(
            f"{r['id']:>6}  {r['state']:<11} {r['queue']:<12} {r['number']:<16} {when(r['promised_by']):<20} "
            f"{r['claimed_by'] or '-':<12} {when(r['lease_until']):<20} {r['attempts']}{missed}"
        )
        if r["notes"]:
            lines.append(f"{'':>8}notes: {' '.join(str(r['notes']).split())}")
    return "\n".join(lines)


# -- authentication ---------------------------------------------------------------------------

_CHALLENGE = {"WWW-Authenticate": 'Basic realm="frontdesk agents", charset="UTF-8"'}
# not Basic when no credentials came: a browser would put up its own password dialog over the page's form
_LOGIN = {"WWW-Authenticate": 'Bearer realm="frontdesk agents"'}


def _service(request: web.Request) -> CallbackService | web.Response:
    service = request.app.get(CALLBACKS)
    if service is None:
        return _error(503, "the callback lists are not running (server starting or stopping)")
    return service


def _registrar(request: web.Request, service: CallbackService) -> Registrar | web.Response:
    if service.registrar is not None:
        return service.registrar
    queues = request.app.get(QUEUES)
    if queues is None:
        return _error(503, "agent logins are not loaded yet (server starting or stopping)")
    return queues.ua.registrar


def _known(registrar: Registrar, agent: str) -> bool:
    return agent in registrar.credentials


def _authenticate(request: web.Request, service: CallbackService) -> Who | web.Response:
    """The agent behind Basic credentials, a bearer token or the session cookie; or the error response."""
    registrar = _registrar(request, service)
    if isinstance(registrar, web.Response):
        return registrar
    now = service.clock()
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() == "basic" and given:
        try:
            name, sep, password = base64.b64decode(given, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return _error(401, "malformed Basic credentials", _CHALLENGE)
        ok = service.check_password(registrar, name, password) if sep else False
        if ok is None:
            return _error(429, "too many wrong passwords: wait a minute", {"Retry-After": "60"})
        if not ok:
            return _error(401, "wrong agent name or password", _CHALLENGE)
        return Who(name, service.role_of(name))
    if scheme.lower() == "bearer" and given:
        agent = service.sessions.check(given, now)
        if agent is None or not _known(registrar, agent):
            return _error(401, "your session has ended: log in again", _LOGIN)
        return Who(agent, service.role_of(agent), given)
    cookie = request.cookies.get(COOKIE)
    if cookie:
        agent = service.sessions.check(cookie, now)
        if agent is None or not _known(registrar, agent):
            return _error(401, "your session has ended: log in again", _LOGIN)
        if request.method not in ("GET", "HEAD") and not _same_origin(request):
            return _error(403, "this request came from another site")
        return Who(agent, service.role_of(agent), cookie)
    return _error(401, "log in with your SIP name and password (POST /callbacks/login, or HTTP Basic)", _LOGIN)


def _same_origin(request: web.Request) -> bool:
    """A cookie-borne change must come from our own page (SameSite=Strict is the first guard)."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.host


Handler = Callable[[web.Request, CallbackService, Who], Awaitable[web.StreamResponse]]


def _authed(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def authed(request: web.Request) -> web.StreamResponse:
        service = _service(request)
        if isinstance(service, web.Response):
            return service
        who = _authenticate(request, service)
        if isinstance(who, web.Response):
            return who
        return await handler(request, service, who)

    return authed


async def _body(request: web.Request, example: str, allowed: Sequence[str]) -> dict[str, Any] | web.Response:
    """The JSON object of the request (an empty body is ``{}``), with no fields but ``allowed``."""
    if not request.can_read_body:
        return {}
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return _error(400, f"the body is not valid JSON: {exc}")
    if not isinstance(data, dict):
        return _error(400, f"the body must be a JSON object: {example}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        return _error(400, f"unknown field(s) {', '.join(unknown)}; expected {', '.join(allowed) or 'none'}")
    return data


def _notes(data: dict[str, Any]) -> str | web.Response | None:
    notes = data.get("notes")
    if notes is None:
        return None
    if not isinstance(notes, str):
        return _error(400, "notes must be text")
    notes = notes.strip()
    if len(notes) > MAX_NOTES:
        return _error(400, f"notes: {MAX_NOTES} characters at most")
    return notes or None


def _when(data: dict[str, Any], name: str) -> datetime | web.Response | None:
    value = data.get(name)
    if value is None:
        return None
    example = "2024-05-17T14:30:00+02:00"
    if not isinstance(value, str):
        return _error(400, f"{name} must be a date and time like {example}")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return _error(400, f"{name} must be a date and time like {example}, not {value!r}")
    if when.tzinfo is None or when.utcoffset() is None:
        return _error(400, f"{name} needs a time zone (e.g. {example} or a trailing Z)")
    return when.astimezone(UTC)


# -- session routes -------------------------------------------------------------------------


async def login(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    if isinstance(service, web.Response):
        return service
    registrar = _registrar(request, service)
    if isinstance(registrar, web.Response):
        return registrar
    if not _same_origin(request):
        return _error(403, "log in from the agents' page of this server")
    data = await _body(request, '{"agent": "8001", "password": "..."}', ("agent", "password"))
    if isinstance(data, web.Response):
        return data
    agent, password = data.get("agent"), data.get("password")
    if not isinstance(agent, str) or not isinstance(password, str) or not agent or not password:
        return _error(400, 'send {"agent": "your SIP name", "password": "your SIP password"}')
    if not USERNAME_RE.match(agent):
        return _error(401, "wrong agent name or password")
    ok = service.check_password(registrar, agent, password)
    if ok is None:
        return _error(429, "too many wrong passwords: wait a minute", {"Retry-After": "60"})
    if not ok:
        return _error(401, "wrong agent name or password")
    token, expires = service.sessions.issue(agent, service.clock())
    role = service.role_of(agent)
    response = web.json_response({"agent": agent, "role": role, "token": token, "expires_at": _iso(expires)})
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(service.sessions.lifetime.total_seconds()),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    log.info("callbacks: %s logged in (%s)", agent, role)
    return response


async def logout(request: web.Request, service: CallbackService, who: Who) -> web.StreamResponse:
    if who.token is not None:
        service.sessions.revoke(who.token, service.clock())
    response = web.json_response({"agent": who.agent, "logged_out": True})
    response.del_cookie(COOKIE, path="/")
    return response


async def me(request: web.Request, service: CallbackService, who: Who) -> web.StreamResponse:
    windows = [{"name": w.name, "start": w.start, "end": w.end} for w in service.settings.windows]
    return web.json_response({"agent": who.agent, "role": who.role, "windows": windows})


# -- the list -------------------------------------------------------------------------------

_WAITING = (BOOKED, DUE)
_HELD = (OFFERED, IN_PROGRESS)


async def list_callbacks(request: web.Request, service: CallbackService, who: Who) -> web.StreamResponse:
    raw = request.query.get("state", "")
    wanted = [s.strip() for s in raw.split(",") if s.strip()]
    if "all" in wanted:
        wanted = list(STATES)
    unknown = [s for s in wanted if s not in STATES]
    if unknown:
        return _error(400, f"unknown state(s) {', '.join(unknown)}; states: {', '.join(STATES)}, or all")
    mine = request.query.get("mine", "") in ("1", "true", "yes")
    queue = request.query.get("queue") or None
    try:
        limit = int(request.query.get("limit", "200"))
    except ValueError:
        return _error(400, "limit must be a whole number")
    if not 1 <= limit <= 1000:
        return _error(400, "limit must be between 1 and 1000")
    store = service.store
    found: list[Callback]
    if who.supervisor:
        states = wanted or list(ACTIVE_STATES)
        agent = who.agent if mine else (request.query.get("agent") or None)
        found = list(await store.list(states=states, agent=agent, queue=queue, limit=limit))
    else:
        if request.query.get("agent") not in (None, who.agent):
            return _error(403, "only supervisors see other agents' callbacks")
        beyond = [s for s in wanted if s not in ACTIVE_STATES]
        if beyond:
            return _error(403, f"agents see waiting and their own claimed callbacks, not {', '.join(beyond)} ones")
        held = [s for s in (wanted or _HELD) if s in _HELD]
        waiting = [s for s in (wanted or _WAITING) if s in _WAITING]
        found = list(await store.list(states=held, agent=who.agent, queue=queue, limit=limit)) if held else []
        if waiting and not mine:
            found += await store.list(states=waiting, queue=queue, limit=limit)
        found = found[:limit]
    return web.json_response(
        {
            "agent": who.agent,
            "role": who.role,
            "now": _iso(service.clock()),
            "callbacks": [callback_json(cb) for cb in found],
        }
    )


# -- acting on one callback ---------------------------------------------------------------------


def _id(request: web.Request) -> int | web.Response:
    try:
        return int(request.match_info["id"])
    except ValueError:
        return _error(404, f"no callback {request.match_info['id']!r}")


async def _get(service: CallbackService, cb_id: int) -> Callback | web.Response:
    try:
        cb = await service.store.get(cb_id)
    except NotFound:
        cb = None
    if cb is None:
        return _error(404, f"no callback {cb_id}")
    return cb


async def _held(request: web.Request, service: CallbackService, who: Who, doing: str) -> Callback | web.Response:
    """The callback of the request when ``who`` may act on it: its claimer, or any supervisor."""
    cb_id = _id(request)
    if isinstance(cb_id, web.Response):
        return cb_id
    cb = await _get(service, cb_id)
    if isinstance(cb, web.Response) or who.supervisor:
        return cb
    if cb.claimed_by is not None and cb.claimed_by != who.agent and cb.state in _HELD:
        return _error(403, f"callback {cb.id} is claimed by {cb.claimed_by}: only they or a supervisor can {doing}")
    if cb.claimed_by != who.agent or cb.state not in _HELD:
        return _error(409, f"claim callback {cb.id} first, then {doing}")
    return cb


def _actor(cb: Callback, who: Who) -> str:
    """Whose claim the store checks: a supervisor acts on the claimer's behalf."""
    if who.supervisor and cb.claimed_by is not None:
        return cb.claimed_by
    return who.agent


def _signed(cb: Callback, who: Who, notes: str | None) -> str | None:
    """Notes written by a supervisor for the claimer say so (the store stamps them with the claimer)."""
    if not who.supervisor or cb.claimed_by in (None, who.agent):
        return notes
    return f"(supervisor {who.agent}) {notes}" if notes else f"(recorded by supervisor {who.agent})"


def _done(cb: Callback, **extra: Any) -> web.Response:
    return web.json_response({"callback": callback_json(cb), **extra})


async def _run(action: Awaitable[Callback]) -> Callback | web.Response:
    """Run a store change; its refusals become the 4xx the agent reads."""
    try:
        return await action
    except NotFound as exc:
        return _error(404, str(exc) or "no such callback")
    except Conflict as exc:
        return _error(409, str(exc) or "the callback changed meanwhile: reload the list")
    except ValueError as exc:
        return _error(400, str(exc))


async def claim(request: web.Request, service: CallbackService, who: Who) -> web.StreamResponse:
    cb_id = _id(request)
    if isinstance(cb_id, web.Response):
        return cb_id
    cb = await _run(service.store.claim(cb_id, agent=who.agent, now=service.clock()))
    return cb if isinstance(cb, web.Response) else _done(cb)


async def release(request: web.Request, service: CallbackService, who: Who) -> web.StreamResponse:
    cb = await _held(request, service, who, "release it")
    if isinstance(cb, web.Response):
        return cb
    done = await _run(service.store.release(cb.id, agent=_actor(cb, who), now=service.clock()))
    return done if isinstance(done, web.Response) else _done(done)


async def call(request: web.Request, service: CallbackService, who: Who) -> web.StreamResponse:
    cb_id = _id(request)
    if isinstance(cb_id, web.Response):
        return cb_id
    cb = await _get(service, cb_id)
    if isinstance(cb, web.Response):
        return cb
    # your own phone rings: you must hold the claim, supervisors too (reassign it to yourself first)
    if cb.claimed_by is not None and cb.claimed_by != who.agent and cb.state in _HELD:
        return _error(403, f"callback {cb.id} is claimed by {cb.claimed_by}: only they can call the customer")
    if cb.claimed_by != who.agent or cb.state not in _HELD:
        return _error(409, f"claim callback {cb.id} first, then call the customer")
    if cb.state == IN_PROGRESS:
        return _error(409, f"a call for callback {cb.id} is already under way: record its outcome first")
    try:
        # the agent's phone rings first; the attempt starts (in_progress) once it is answered
        await service.dialer.click_to_call(cb, who.agent)
    except DialError as exc:
        # nothing was dialled: the callback stays claimed, as it was
        reason = str(exc) or "the call could not be placed"
        now_cb = await _get(service, cb.id)
        body = callback_json(now_cb) if not isinstance(now_cb, web.Response) else None
        return web.json_response({"error": reason, "callback": body}, status=502)
    started = await _get(service, cb.id)
    if isinstance(started, web.Response):
        return started
    return _done(started, calling=True)


async def outcome(request: web.Request, service: CallbackService, who: Who) -> web.StreamResponse:
    data = await _body(request, '{"outcome": "completed", "notes": "...", "follow_up": true}', _OUTCOME_FIELDS)
    if isinstance(data, web.Response):
        return data
    result, follow_up = data.get("outcome"), data.get("follow_up", False)
    if result not in OUTCOMES:
        return _error(400, f"outcome must be one of {', '.join(OUTCOMES)}")
    if not isinstance(follow_up, bool):
        return _error(400, "follow_up must be true or false")
    notes = _notes(data)
    if isinstance(notes, web.Response):
        return notes
    cb = await _held(request, service, who, "record the outcome")
    if isinstance(cb, web.Response):
        return cb
    if follow_up and result != "completed":
        return _error(400, "a follow-up call is booked only for a completed case")
    if follow_up and cb.kind == FOLLOW_UP:
        return _error(400, "this is already the follow-up call: record its result without another follow-up")
    now = service.clock()
    done = await _run(
        service.store.record_outcome(
            cb.id, agent=_actor(cb, who), now=now, outcome=result, notes=_signed(cb, who, notes)
        )
    )
    if isinstance(done, web.Response):
        return done
    extra: dict[str, Any] = {}
    if follow_up:
        extra["follow_up"], problem = await _book_follow_up(service, done, who, now)
        if problem:
            extra["follow_up_problem"] = problem
    if done.state == "failed" and done.kind != FOLLOW_UP:
        _tell_not_reached(service, done)
    return _done(done, **extra)


_OUTCOME_FIELDS = ("outcome", "notes", "follow_up")


async def _book_follow_up(
    service: CallbackService, cb: Callback, who: Who, now: datetime
) -> tuple[dict[str, Any] | None, str | None]:
    """R18: a satisfaction call after ``follow_up_delay``; its result is the outcome recorded on it."""
    settings = service.settings
    due = now + timedelta(seconds=settings.follow_up_delay)
    try:
        booked = await service.store.book(
            queue=cb.queue,
            number=cb.number,
            arrived_at=due,  # in line by when it is due, not ahead of callers waiting then
            promised_by=due + timedelta(seconds=settings.follow_up_delay),
            now=now,
            not_before=due,
            kind=FOLLOW_UP,
            parent_id=cb.id,
            created_by=who.agent,
        )
    except AlreadyBooked as exc:
        return None, f"not booked: the customer already has callback {exc.existing.id} open in {cb.queue}"
    except (Conflict, ValueError) as exc:
        return None, f"not booked: {exc}"
    return callback_json(booked), None


def _tell_not_reached(service: CallbackService, cb: Callback) -> None:
    """R10: a callback that will not be made gets a text that explains and points to self-service."""
    try:
        service.send_text(
            cb.number,
            "Frontdesk: we tried to call you back but could not reach you, so we have closed your callback. "
            "Please call us again, or use our self-service on the web, in the app or by text message.",
            "callback",
        )
    except Exception:  # the text is a courtesy: the outcome is already recorded
        log.exception("could not queue the text for callback %s", cb.id)


async def create(request: web.Request, service: CallbackService, who: Who) -> web.StreamResponse:
    """An agent books a callback for a complex enquiry (R2, R14), from now or from the time they pick."""
    example = '{"number": "+4930123456", "queue": "general", "not_before": "2024-05-17T14:00:00Z", "notes": "..."}'
    data = await _body(request, example, ("number", "queue", "not_before", "window_end", "notes"))
    if isinstance(data, web.Response):
        return data
    number, queue = data.get("number"), data.get("queue")
    if not isinstance(number, str) or not number.lstrip("+").isdigit() or not 3 <= len(number) <= 32:
        return _error(400, f"number must be the customer's phone number in digits: {example}")
    if not isinstance(queue, str) or not queue:
        return _error(400, f"queue must name the queue the callback belongs to: {example}")
    live = request.app.get(QUEUES)
    if live is not None and queue not in live.engine.queues:
        return _error(400, f"no queue {queue!r}; queues: {', '.join(sorted(live.engine.queues))}")
    not_before, window_end = _when(data, "not_before"), _when(data, "window_end")
    for value in (not_before, window_end):
        if isinstance(value, web.Response):
            return value
    notes = _notes(data)
    if isinstance(notes, web.Response):
        return notes
    now = service.clock()
    start = not_before if isinstance(not_before, datetime) else now
    if start < now - timedelta(minutes=1):
        return _error(400, "not_before is in the past: pick a time to come")
    end = window_end if isinstance(window_end, datetime) else None
    if end is not None and end <= start:
        return _error(400, "window_end must be after not_before")
    promised = end or start + timedelta(seconds=service.settings.promise_margin)
    try:
        booked = await service.store.book(
            queue=queue, number=number, arrived_at=now, promised_by=promised, now=now,
            not_before=start, window_end=end, created_by=who.agent,
        )  # fmt: skip
    except AlreadyBooked as exc:
        return _error(409, f"{number} already has callback {exc.existing.id} open in {queue}")
    except (Conflict, ValueError) as exc:
        return _error(400, str(exc))
    if notes:
        booked = await service.store.add_notes(booked.id, agent=who.agent, now=now, notes=notes)
    return web.json_response({"callback": callback_json(booked)}, status=201)


async def reschedule(request: web.Request, service: CallbackService, who: Who) -> web.StreamResponse:
    example = '{"not_before": "2024-05-17T14:00:00Z", "window_end": "2024-05-17T16:00:00Z"}'
    data = await _body(request, example, ("not_before", "window_end"))
    if isinstance(data, web.Response):
        return data
    not_before, window_end = _when(data, "not_before"), _when(data, "window_end")
    for value in (not_before, window_end):
        if isinstance(value, web.Response):
            return value
    if not isinstance(not_before, datetime):
        return _error(400, f"send the new time: {example}")
    now = service.clock()
    if not_before < now - timedelta(minutes=1):
        return _error(400, "not_before is in the past: pick a time to come")
    if isinstance(window_end, datetime) and window_end <= not_before:
        return _error(400, "window_end must be after not_before")
    cb = await _held(request, service, who, "reschedule it")
    if isinstance(cb, web.Response):
        return cb
    done = await _run(
        service.store.reschedule(
            cb.id,
            agent=_actor(cb, who),
            now=now,
            not_before=not_before,
            window_end=window_end if isinstance(window_end, datetime) else None,
        )
    )
    return done if isinstance(done, web.Response) else _done(done)


async def give_up(request: web.Request, service: CallbackService, who: Who) -> web.StreamResponse:
    data = await _body(request, '{"notes": "wrong number"}', ("notes",))
    if isinstance(data, web.Response):
        return data
    notes = _notes(data)
    if isinstance(notes, web.Response):
        return notes
    cb = await _held(request, service, who, "give it up")
    if isinstance(cb, web.Response):
        return cb
    now = service.clock()
    done = await _run(service.store.give_up(cb.id, agent=_actor(cb, who), now=now, notes=_signed(cb, who, notes)))
    if isinstance(done, web.Response):
        return done
    if done.kind != FOLLOW_UP:
        _tell_not_reached(service, done)
    return _done(done)


async def add_notes(request: web.Request, service: CallbackService, who: Who) -> web.StreamResponse:
    data = await _body(request, '{"notes": "customer asks for the billing team"}', ("notes",))
    if isinstance(data, web.Response):
        return data
    notes = _notes(data)
    if isinstance(notes, web.Response):
        return notes
    if notes is None:
        return _error(400, 'send {"notes": "..."} with some text')
    cb = await _held(request, service, who, "add notes")
    if isinstance(cb, web.Response):
        return cb
    # a supervisor may annotate any callback: written in the name of whoever holds (or set up) it
    actor = (cb.claimed_by or cb.created_by) if who.supervisor else who.agent
    if who.supervisor and actor != who.agent:
        notes = f"(supervisor {who.agent}) {notes}"
    done = await _run(service.store.add_notes(cb.id, agent=actor, now=service.clock(), notes=notes))
    return done if isinstance(done, web.Response) else _done(done)


async def reassign(request: web.Request, service: CallbackService, who: Who) -> web.StreamResponse:
    if not who.supervisor:
        return _error(403, "only supervisors can reassign callbacks")
    data = await _body(request, '{"agent": "8002"}', ("agent",))
    if isinstance(data, web.Response):
        return data
    to_agent = data.get("agent")
    registrar = _registrar(request, service)
    if isinstance(registrar, web.Response):
        return registrar
    if not isinstance(to_agent, str) or not to_agent:
        return _error(400, 'send {"agent": "the agent who takes it over"}')
    if not _known(registrar, to_agent):
        return _error(400, f"no agent {to_agent!r}")
    cb_id = _id(request)
    if isinstance(cb_id, web.Response):
        return cb_id
    done = await _run(service.store.reassign(cb_id, to_agent=to_agent, now=service.clock()))
    return done if isinstance(done, web.Response) else _done(done)


def message_file(recordings_dir: Path, message_path: str) -> Path | None:
    """The recording's file when it lies inside ``recordings_dir`` (a path in the database is not trusted)."""
    root = recordings_dir.resolve()
    given = Path(message_path)
    # written as recordings_dir / name; a bare name is read inside recordings_dir
    candidates = [given] if given.is_absolute() else [given, recordings_dir / given]
    for candidate in candidates:
        try:
            real = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if real.is_relative_to(root) and real.is_file():
            return real
    return None


async def message(request: web.Request, service: CallbackService, who: Who) -> web.StreamResponse:
    cb = await _held(request, service, who, "play the message")
    if isinstance(cb, web.Response):
        return cb
    path = message_file(service.recordings_dir, cb.message_path) if cb.message_path else None
    if path is None:
        return _error(404, f"callback {cb.id} has no recorded message")
    return web.FileResponse(
        path,
        headers={
            "Content-Type": "audio/wav",
            "Content-Disposition": f'inline; filename="callback-{cb.id}.wav"',
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, no-store",
        },
    )


async def handover(request: web.Request, service: CallbackService, who: Who) -> web.StreamResponse:
    if not who.supervisor:
        return _error(403, "only supervisors see the shift handover")
    now = service.clock()
    open_callbacks = await service.store.handover(now)
    counts = await service.store.counts_by_state()
    return web.json_response(handover_json(open_callbacks, counts, now))


# -- the page -------------------------------------------------------------------------------

_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; media-src 'self'; "
        "connect-src 'self'; img-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_ASSETS = {
    "/agent/callbacks": ("callbacks.html", "text/html"),
    "/agent/callbacks.js": ("callbacks.js", "text/javascript"),
    "/agent/callbacks.css": ("callbacks.css", "text/css"),
}


async def page(request: web.Request) -> web.StreamResponse:
    name, content_type = _ASSETS[request.path]
    body = (STATIC / name).read_bytes()
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=_PAGE_HEADERS)


def setup_callback_routes(app: web.Application, settings: CallbackSettings) -> None:
    """Add the /callbacks API and the agents' page; handlers find their state at ``app[CALLBACKS]``."""
    del settings  # everything is read from app[CALLBACKS] at request time
    for path in _ASSETS:
        app.router.add_get(path, page)
    app.router.add_post("/callbacks/login", login)
    app.router.add_post("/callbacks/logout", _authed(logout))
    app.router.add_get("/callbacks/me", _authed(me))
    app.router.add_get("/callbacks", _authed(list_callbacks))
    app.router.add_post("/callbacks", _authed(create))
    app.router.add_get("/callbacks/handover", _authed(handover))
    app.router.add_get(r"/callbacks/{id:\d+}/message", _authed(message))
    actions: dict[str, Handler] = {
        "claim": claim,
        "release": release,
        "call": call,
        "outcome": outcome,
        "reschedule": reschedule,
        "give-up": give_up,
        "notes": add_notes,
        "reassign": reassign,
    }
    for name, handler in actions.items():
        app.router.add_post(rf"/callbacks/{{id:\d+}}/{name}", _authed(handler))


__all__ = [
    "CALLBACKS",
    "CallbackService",
    "Dialer",
    "Sessions",
    "callback_json",
    "handover_json",
    "handover_text",
    "message_file",
    "setup_callback_routes",
]
