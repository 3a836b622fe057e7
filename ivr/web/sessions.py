"""Who is calling the callbacks API: agents' sessions, their login and logout, and the service the routes share.

Agents log in with their SIP name and password (the server keeps only the
HA1, like ``/agent/state``). A login gives a signed session: an HttpOnly,
SameSite=Strict cookie for the page, and the same value as a bearer token
for scripts. HTTP Basic works on every route too. Agents named under
``callbacks.supervisors`` have the role "supervisor". Wrong passwords go to
the registrar's throttle of failed logins (``ivr/sip/throttle.py``), shared
with REGISTER: too many from one address, for any name, known or not, and
that address gets 429 for a while; agents elsewhere log in as before.

    POST /callbacks/login                   {"agent", "password"} -> {"agent", "role", "token", "expires_at"}
    POST /callbacks/logout
    GET  /callbacks/me                      {"agent", "role", "windows"}

The callback lists themselves are ``ivr/web/callbackapi.py``; the routes are listed in ``ivr/web/routes.py``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import heapq
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import Field

from callback.base import utcnow
from callback.store import Callback, CallbackStore
from ivr.settings.config import CallbackSettings
from ivr.sip.registrar import USERNAME_RE, Registrar
from ivr.web.common import AGENT_CHALLENGE, ApiError, RequestBody, agent_password_ok, basic_credentials
from ivr.web.queueapi import QUEUES

log = logging.getLogger(__name__)

COOKIE = "frontdesk_session"
SUPERVISOR = "supervisor"
AGENT = "agent"
_SESSION_CONTEXT = b"frontdesk callbacks session v1\0"


class Dialer(Protocol):
    """Click-to-call (ivr.calls.dialer.CallbackDesk): rings the agent, then the customer. Raises DialError."""

    async def click_to_call(self, cb: Callback, agent: str) -> None: ...


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


class Sessions:
    """Signed, expiring session tokens: ``base64(agent|expiry|nonce).base64(HMAC)``; nothing kept but logouts."""

    def __init__(self, secret: bytes, lifetime: timedelta, max_revoked: int = 100_000) -> None:
        if len(secret) < 16:
            raise ValueError("the session secret must be at least 16 bytes")
        self._secret = secret
        self.lifetime = lifetime
        # logouts: nonce -> expiry, forgotten once the token would be dead anyway; a heap by expiry finds those.
        # At most max_revoked (security.limits.revoked_sessions): beyond it the one ending first is forgotten
        # and its agent's tokens ending no later are refused instead, so no logged-out token comes back to life.
        self.max_revoked = max_revoked
        self._revoked: dict[str, datetime] = {}
        self._revoked_heap: list[tuple[datetime, str, str]] = []  # (expiry, nonce, agent)
        self._revoked_until: dict[str, datetime] = {}  # agent -> its tokens ending no later are refused
        self.revoked_forgotten = 0  # forgotten early at the cap (their agent's floor refuses them)

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
        until = self._revoked_until.get(agent)
        if until is not None and expires <= until:
            return None
        return agent

    @property
    def revoked(self) -> int:
        """Logged-out tokens remembered (at most ``max_revoked``)."""
        return len(self._revoked)

    def revoke(self, token: str, now: datetime) -> None:
        self._forget_dead(now)
        opened = self._open(token)
        if opened is None:
            return
        agent, expires, nonce = opened
        if nonce in self._revoked or expires <= now:
            return
        self._revoked[nonce] = expires
        heapq.heappush(self._revoked_heap, (expires, nonce, agent))
        while len(self._revoked) > self.max_revoked:
            first, gone, whose = heapq.heappop(self._revoked_heap)
            del self._revoked[gone]
            self._revoked_until[whose] = max(first, self._revoked_until.get(whose, first))
            self.revoked_forgotten += 1

    def _forget_dead(self, now: datetime) -> None:
        heap = self._revoked_heap
        while heap and heap[0][0] <= now:
            _, nonce, _ = heapq.heappop(heap)
            self._revoked.pop(nonce, None)
        for agent in [a for a, until in self._revoked_until.items() if until <= now]:
            del self._revoked_until[agent]  # keyed by signed agent names only: as small as the agent list


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
    ticks: Callable[[], float] = lambda: asyncio.get_running_loop().time()  # the throttle's clock, as SIP's
    max_revoked: int = 100_000  # logged-out sessions remembered (security.limits.revoked_sessions)
    sessions: Sessions = field(init=False)

    def __post_init__(self) -> None:
        self.sessions = Sessions(self.secret, timedelta(hours=self.settings.session_hours), self.max_revoked)

    def role_of(self, agent: str) -> str:
        return SUPERVISOR if agent in self.settings.supervisors else AGENT

    def check_password(self, request: web.Request, registrar: Registrar, door: str, name: str, password: str) -> bool:
        """Whether ``password`` is ``name``'s SIP password; 429 while this address may not try that name."""
        return agent_password_ok(registrar, request, door, name, password, self.ticks())


CALLBACKS = web.AppKey("callbacks", CallbackService)


@dataclass(frozen=True)
class Who:
    agent: str
    role: str
    token: str | None = None  # the session token, when the request came with one

    @property
    def supervisor(self) -> bool:
        return self.role == SUPERVISOR


# -- authentication ---------------------------------------------------------------------------

# not Basic when no credentials came: a browser would put up its own password dialog over the page's form
_LOGIN = {"WWW-Authenticate": 'Bearer realm="frontdesk agents"'}


def service_of(request: web.Request) -> CallbackService:
    service = request.app.get(CALLBACKS)
    if service is None:
        raise ApiError(503, "the callback lists are not running (server starting or stopping)")
    return service


def registrar_of(request: web.Request, service: CallbackService) -> Registrar:
    if service.registrar is not None:
        return service.registrar
    queues = request.app.get(QUEUES)
    if queues is None:
        raise ApiError(503, "agent logins are not loaded yet (server starting or stopping)")
    return queues.ua.registrar


def same_origin(request: web.Request) -> bool:
    """A cookie-borne change must come from our own page (SameSite=Strict is the first guard)."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None
    try:
        return urlsplit(origin).netloc == request.host
    except ValueError:  # not a URL ("http://[::1"): not our page
        return False


def _session_agent(service: CallbackService, registrar: Registrar, token: str) -> str:
    agent = service.sessions.check(token, service.clock())
    if agent is None or agent not in registrar.credentials:
        raise ApiError(401, "your session has ended: log in again", headers=_LOGIN)
    return agent


async def session_context(request: web.Request) -> tuple[CallbackService, Who]:
    """The service and the agent behind Basic credentials, a bearer token or the session cookie (else 401/403/429)."""
    service = service_of(request)
    registrar = registrar_of(request, service)
    given = basic_credentials(request)
    if given is not None:
        name, password = given
        if not service.check_password(request, registrar, "basic", name, password):
            raise ApiError(401, "wrong agent name or password", headers=AGENT_CHALLENGE)
        return service, Who(name, service.role_of(name))
    scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and bearer.strip():
        token = bearer.strip()
        agent = _session_agent(service, registrar, token)
        return service, Who(agent, service.role_of(agent), token)
    cookie = request.cookies.get(COOKIE)
    if cookie:
        agent = _session_agent(service, registrar, cookie)
        if request.method not in ("GET", "HEAD") and not same_origin(request):
            raise ApiError(403, "this request came from another site", [("Origin", "not this server's page")])
        return service, Who(agent, service.role_of(agent), cookie)
    raise ApiError(401, "log in with your SIP name and password (POST /callbacks/login, or HTTP Basic)", headers=_LOGIN)


# -- session routes -------------------------------------------------------------------------


class LoginBody(RequestBody):
    """The agent's SIP name and password."""

    empty_is_object = True  # then both fields are missing: named in the error

    agent: str = Field(min_length=1, description="the SIP name", examples=["8001"])
    password: str = Field(min_length=1, description="the SIP password")


async def login(request: web.Request, body: LoginBody) -> web.StreamResponse:
    """Log in: a session cookie for the page, the same token for scripts."""
    service = service_of(request)
    registrar = registrar_of(request, service)
    if not same_origin(request):
        raise ApiError(403, "log in from the agents' page of this server", [("Origin", "not this server's page")])
    if not USERNAME_RE.match(body.agent):
        raise ApiError(401, "wrong agent name or password")
    if not service.check_password(request, registrar, "login", body.agent, body.password):
        raise ApiError(401, "wrong agent name or password")
    token, expires = service.sessions.issue(body.agent, service.clock())
    role = service.role_of(body.agent)
    response = web.json_response({"agent": body.agent, "role": role, "token": token, "expires_at": iso(expires)})
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(service.sessions.lifetime.total_seconds()),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    log.info("callbacks: %s logged in (%s)", body.agent, role)
    return response


async def logout(request: web.Request, service: CallbackService, who: Who) -> web.StreamResponse:
    """End the session (cookie and token alike)."""
    if who.token is not None:
        service.sessions.revoke(who.token, service.clock())
    response = web.json_response({"agent": who.agent, "logged_out": True})
    response.del_cookie(COOKIE, path="/")
    return response


async def me(request: web.Request, service: CallbackService, who: Who) -> web.StreamResponse:
    """Who is logged in, their role and the callback windows customers pick from."""
    windows = [{"name": w.name, "start": w.start, "end": w.end} for w in service.settings.windows]
    return web.json_response({"agent": who.agent, "role": who.role, "windows": windows})


__all__ = ["CALLBACKS", "COOKIE", "CallbackService", "Dialer", "Sessions", "Who", "session_context"]
