"""What every HTTP handler shares: the one error body, typed request bodies and query strings, the auth schemes.

Every 4xx (and the click-to-call 502) answers with one JSON shape, named ``Error`` in ``GET /openapi.json``::

    {"error": "<short message>", "detail": [{"field": "<dotted field, query or path name>", "message": "..."}]}

A handler raises :class:`ApiError`; the route wrapper (``ivr/web/routes.py``) turns it into that body, and
:func:`error_middleware` does the same for aiohttp's own refusals (unknown path, method not allowed, body too
large). Request bodies and query strings are pydantic models read by :func:`read_body` and :func:`read_query`;
their validation errors become the ``detail`` list, each naming its field.

No input gives a 5xx (tests/test_http_hostile.py drives every route with hostile input): a handler's bug
that still raises is logged and answered 500 in the same body. A change (POST, PUT, PATCH, DELETE) with a
body takes only ``application/json`` (:func:`require_json`, 415 otherwise), so a cross-site form cannot
post to a route that a browser's cached HTTP Basic credentials would open.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from enum import Enum
from typing import Any, ClassVar, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from ivr.sip.registrar import Registrar

log = logging.getLogger(__name__)


class Auth(Enum):
    """How a route is authenticated; each is a security scheme of the OpenAPI document."""

    NONE = "none"
    ADMIN = "admin"  # Authorization: Bearer <admin.token>
    AGENT = "agent"  # HTTP Basic with the agent's SIP name and password
    SESSION = "session"  # the callbacks page's session: cookie, the same token as a bearer, or HTTP Basic


class ApiError(Exception):
    """A refusal: its status, a short message, the fields at fault, extra headers and extra body keys."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: Sequence[tuple[str, str]] = (),
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = list(detail)
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def response(self) -> web.Response:
        body = error_body(self.error, self.detail) | self.extra
        return web.json_response(body, status=self.status, headers=self.headers)


def error_body(error: str, detail: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
    return {"error": error, "detail": [{"field": field, "message": message} for field, message in detail]}


def field_error(status: int, field: str, message: str) -> ApiError:
    """One field at fault: the message is both the short one and the field's."""
    return ApiError(status, message, [(field, message)])


def settings_error(exc: ValueError, fields: Iterable[str], where: str = "body") -> ApiError:
    """A 400 from the settings' own checks, whose messages start ``key: ...`` or ``key.sub: ...``."""
    text = str(exc)
    known = list(fields)
    name, sep, message = text.partition(": ")
    if sep and name.split(".")[0] in known:
        return ApiError(400, text, [(name, message)])
    # a rule between settings ("surge: ewt_off must not exceed ewt_on"): the first setting it names
    mentioned = sorted((text.find(f), f) for f in known if f in text)
    return ApiError(400, text, [(mentioned[0][1] if mentioned else where, text)])


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own 4xx (no such route, wrong method, body too large) in the one error body."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if not 400 <= exc.status < 500:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate", "retry-after")}
        where = "path" if exc.status in (404, 405) else "body"
        return web.json_response(
            error_body(exc.reason.lower(), [(where, f"{request.method} {request.path[:200]}: {exc.reason}")]),
            status=exc.status,
            headers=headers,
        )
    except Exception:
        # a bug, never the client's input (tests/test_http_hostile.py): logged once, answered in the error body
        log.exception("HTTP %s %s failed", request.method, request.rel_url.path[:200])
        return web.json_response(error_body("internal error: the server's log has the details"), status=500)


STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# what a cross-site HTML form (or a no-cors fetch) may send without a CORS preflight, which we never grant
FORM_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})


def require_json(request: web.Request) -> None:
    """A state-changing request's body must be ``application/json``, else 415.

    A cross-site HTML form can post only ``text/plain``, urlencoded or multipart bodies without a preflight, and
    a browser adds the agent's cached HTTP Basic credentials to it; refusing every type but JSON keeps such a post
    away from the handlers. A bodiless action (the agents' page's buttons) needs no Content-Type, but one that
    names a form's type is a form post and is refused as well.
    """
    if request.method not in STATE_CHANGING:
        return
    if request.body_exists:
        if request.content_type == "application/json":
            return
    elif request.content_type not in FORM_TYPES:  # with no header aiohttp says application/octet-stream
        return
    shown = request.headers.get("Content-Type", "none")[:60]
    raise ApiError(
        415,
        "send the body as JSON with 'Content-Type: application/json'",
        [("Content-Type", f"expected application/json, not {shown!r}")],
    )


# -- request bodies and query strings ------------------------------------------------------------------


class RequestBody(BaseModel):
    """A JSON request body: strict types (``"yes"`` is not true, ``3`` is not a name), no unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True)
    # an empty body reads as {} (the agents' page posts actions without one); else it is not JSON
    empty_is_object: ClassVar[bool] = False


class QueryString(BaseModel):
    """A query string: values come as text and are converted; parameters we do not know are ignored."""

    model_config = ConfigDict(extra="ignore")


Body = TypeVar("Body", bound=RequestBody)
Query = TypeVar("Query", bound=QueryString)


def problems(exc: ValidationError, where: str) -> list[tuple[str, str]]:
    """pydantic's errors as (field, message); ``where`` (body, query) names the whole input."""
    out = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(part) for part in err["loc"]) or where
        kind, ctx = err["type"], err.get("ctx") or {}
        if kind == "value_error" and "error" in ctx:
            message = str(ctx["error"])  # our validators' own wording, without pydantic's "Value error, "
        elif kind == "json_invalid":
            field, message = where, f"not valid JSON: {ctx.get('error', err['msg'])}"
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            message = "must be a JSON object"
        elif kind == "extra_forbidden":
            message = "unknown field"
        else:
            message = err["msg"]
        out.append((field, message))
    return out


def _refusal(exc: ValidationError, where: str, model: type[BaseModel]) -> ApiError:
    found = problems(exc, where)
    if any(message == "unknown field" for _, message in found):
        found = [
            (f, f"unknown field; expected {', '.join(model.model_fields) or 'none'}" if m == "unknown field" else m)
            for f, m in found
        ]
    if len(found) == 1:
        field, message = found[0]
        short = message if field == where else f"{field}: {message}"
    else:
        short = f"the {'query string' if where == 'query' else 'request body'} has {len(found)} problems"
    return ApiError(400, short, found)


async def read_body(request: web.Request, model: type[Body]) -> Body:
    """The request's JSON body as ``model``, or a 400 naming each bad field."""
    raw = await request.read() if request.can_read_body else b""
    if not raw.strip():
        if not model.empty_is_object:
            raise ApiError(400, "send a JSON body", [("body", "the body is empty: send a JSON object")])
        raw = b"{}"
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _refusal(exc, "body", model) from None


def read_query(request: web.Request, model: type[Query]) -> Query:
    """The query string as ``model`` (the last value of a repeated name wins), or a 400 naming the parameter."""
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise _refusal(exc, "query", model) from None


# -- credentials -------------------------------------------------------------------------------------

AGENT_CHALLENGE = {"WWW-Authenticate": 'Basic realm="frontdesk agents", charset="UTF-8"'}


def admin_token_of(request: web.Request, token: str | None) -> None:
    """Passes for ``Authorization: Bearer <admin.token>``; else raises the 503/401/403 the operator reads."""
    if token is None:
        raise ApiError(503, "the admin API is disabled: set admin.token in the config to enable it")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        raise ApiError(
            401,
            "missing admin token: send 'Authorization: Bearer <admin.token>'",
            [("Authorization", "expected 'Bearer <admin.token>'")],
            headers={"WWW-Authenticate": 'Bearer realm="frontdesk admin"'},
        )
    # header bytes that are not UTF-8 arrive as surrogates (aiohttp's surrogateescape): compare the bytes sent
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode()):
        raise ApiError(403, "wrong admin token", [("Authorization", "this is not the admin token")])


def basic_credentials(request: web.Request) -> tuple[str, str] | None:
    """(name, password) from HTTP Basic; None when the request has no Basic credentials; 401 when malformed."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() != "basic" or not given:
        return None
    try:
        name, sep, password = base64.b64decode(given, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, ValueError):  # ValueError: not base64's alphabet (non-ASCII), or not UTF-8
        raise ApiError(401, "malformed Basic credentials", headers=AGENT_CHALLENGE) from None
    if not sep:
        raise ApiError(401, "wrong agent name or password", headers=AGENT_CHALLENGE)
    return name, password


def throttled(wait: float) -> ApiError:
    """The 429 of a login door while the name may not be tried from this address (ivr/sip/throttle.py)."""
    seconds = max(1, math.ceil(wait))
    return ApiError(429, f"too many wrong passwords: try again in {seconds} s", headers={"Retry-After": str(seconds)})


def agent_password_ok(
    registrar: Registrar, request: web.Request, door: str, name: str, password: str, now: float
) -> bool:
    """Whether ``password`` is ``name``'s SIP password, counted by the throttle of failed logins; 429 while blocked.

    Unknown names are counted and blocked exactly like agents' names, so a 429 says nothing about who exists;
    the count is per address, so a guesser elsewhere cannot lock a real agent out.
    """
    source, throttle = request.remote or "", registrar.throttle
    wait = throttle.wait(name, source, now)
    if wait > 0:
        throttle.refused(door)
        raise throttled(wait)  # unchecked: a right guess made while blocked is lost to the guesser
    ok = registrar.password_ok(name, password)
    if ok:
        throttle.succeeded(name, source)
    else:
        throttle.failed(door, name, source, now)
    return ok
