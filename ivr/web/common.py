"""What every HTTP handler shares: the one error body, typed request bodies and query strings, the auth schemes.

Every 4xx (and the click-to-call 502) answers with one JSON shape, named ``Error`` in ``GET /openapi.json``::

    {"error": "<short message>", "detail": [{"field": "<dotted field, query or path name>", "message": "..."}]}

A handler raises :class:`ApiError`; the route wrapper (``ivr/web/routes.py``) turns it into that body, and
:func:`error_middleware` does the same for aiohttp's own refusals (unknown path, method not allowed, body too
large). Request bodies and query strings are pydantic models read by :func:`read_body` and :func:`read_query`;
their validation errors become the ``detail`` list, each naming its field.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from enum import Enum
from typing import Any, ClassVar, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError


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
            error_body(exc.reason.lower(), [(where, f"{request.method} {request.path}: {exc.reason}")]),
            status=exc.status,
            headers=headers,
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
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(403, "wrong admin token", [("Authorization", "this is not the admin token")])


def basic_credentials(request: web.Request) -> tuple[str, str] | None:
    """(name, password) from HTTP Basic; None when the request has no Basic credentials; 401 when malformed."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() != "basic" or not given:
        return None
    try:
        name, sep, password = base64.b64decode(given, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise ApiError(401, "malformed Basic credentials", headers=AGENT_CHALLENGE) from None
    if not sep:
        raise ApiError(401, "wrong agent name or password", headers=AGENT_CHALLENGE)
    return name, password
