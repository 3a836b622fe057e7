"""Every HTTP route of the server in one table: method, path, handler, auth scheme.

A handler's inputs are its annotations: a parameter ``body: SomeBody`` (a ``RequestBody``) is the JSON body
read and checked before the handler runs, ``query: SomeQuery`` (a ``QueryString``) the query string. The
route's auth scheme decides what comes before them: nothing (``Auth.NONE``), the admin state and actor
(``Auth.ADMIN``, ``ivr/web/admin.py``), the live queues and the agent's name (``Auth.AGENT``,
``ivr/web/queueapi.py``), or the callback service and the agent (``Auth.SESSION``, ``ivr/web/sessions.py``).
The same table makes the OpenAPI document (``ivr/web/openapi.py``), so the document lists exactly what is
routed, with the models the handlers read. Before any credentials are read, a change must come as JSON
(415) and, with HTTP Basic credentials, not from another site's page (403).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from aiohttp import web

from ivr.settings.config import Config
from ivr.web import admin, callbackapi, health, openapi, page, queueapi, sessions
from ivr.web.common import (
    STATE_CHANGING,
    ApiError,
    Auth,
    QueryString,
    RequestBody,
    error_middleware,
    read_body,
    read_query,
    require_json,
)

Handler = Callable[..., Awaitable[web.StreamResponse]]
Context = Callable[[web.Request], Awaitable[tuple[Any, ...]]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # aiohttp's: ``{id:\d+}`` is an integer path parameter
    handler: Handler
    auth: Auth
    tag: str
    status: int = 200  # on success
    content_type: str = "application/json"  # of the success answer
    errors: tuple[int, ...] = ()  # answered with the error body besides the 4xx (the click-to-call 502)
    also: tuple[int, ...] = ()  # answered with the success body under another status (/healthz's 503 draining)

    @property
    def inputs(self) -> tuple[type[RequestBody] | None, type[QueryString] | None]:
        return inputs_of(self.handler)


@cache
def inputs_of(handler: Handler) -> tuple[type[RequestBody] | None, type[QueryString] | None]:
    """The body and query models a handler reads, from its annotations."""
    hints = typing.get_type_hints(handler)
    params = inspect.signature(handler).parameters
    body, query = hints.get("body") if "body" in params else None, hints.get("query") if "query" in params else None
    if body is not None and not (isinstance(body, type) and issubclass(body, RequestBody)):
        raise TypeError(f"{handler.__qualname__}: body must be a RequestBody, not {body!r}")
    if query is not None and not (isinstance(query, type) and issubclass(query, QueryString)):
        raise TypeError(f"{handler.__qualname__}: query must be a QueryString, not {query!r}")
    return body, query


A, G, S, N = Auth.ADMIN, Auth.AGENT, Auth.SESSION, Auth.NONE
_ID = r"{id:\d+}"

SERVICE_ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", health.healthz, N, "service", also=(503,)),
    Route("GET", "/metrics", health.metrics, N, "service", content_type="text/plain"),
    Route("GET", "/openapi.json", openapi.openapi_json, N, "service"),
    Route("GET", "/docs", page.page, N, "service", content_type="text/html"),
    Route("GET", "/docs.js", page.page, N, "service", content_type="text/javascript"),
)
ADMIN_ROUTES: tuple[Route, ...] = (
    Route("GET", "/admin/notices", admin.list_notices, A, "admin"),
    Route("PUT", "/admin/notices/{id}", admin.put_notice, A, "admin"),
    Route("DELETE", "/admin/notices/{id}", admin.delete_notice, A, "admin"),
    Route("GET", "/admin/audit", admin.get_audit, A, "admin"),
    Route("GET", "/admin/complaints", admin.get_complaints, A, "admin"),
)
QUEUE_ROUTES: tuple[Route, ...] = (
    Route("GET", "/agent/state", queueapi.agent_state, G, "agent"),
    Route("POST", "/agent/login", queueapi.agent_login, G, "agent"),
    Route("POST", "/agent/ready", queueapi.agent_ready, G, "agent"),
    Route("POST", "/agent/not-ready", queueapi.agent_not_ready, G, "agent"),
    Route("POST", "/agent/logout", queueapi.agent_logout, G, "agent"),
    Route("GET", "/admin/queues", queueapi.admin_queues, A, "queues"),
    Route("PATCH", "/admin/queues/{name}", queueapi.patch_queue, A, "queues"),
    Route("PUT", "/admin/surge", queueapi.put_surge, A, "queues"),
    Route("PATCH", "/admin/surge", queueapi.patch_surge, A, "queues"),
    Route("GET", "/admin/agents", queueapi.admin_agents, A, "queues"),
    Route("PUT", "/admin/agents/{id}/state", queueapi.put_agent_state, A, "queues"),
)
CALLBACK_ROUTES: tuple[Route, ...] = (
    Route("GET", "/agent/callbacks", page.page, N, "callbacks", content_type="text/html"),
    Route("GET", "/agent/callbacks.js", page.page, N, "callbacks", content_type="text/javascript"),
    Route("GET", "/agent/callbacks.css", page.page, N, "callbacks", content_type="text/css"),
    Route("POST", "/callbacks/login", sessions.login, N, "callbacks"),
    Route("POST", "/callbacks/logout", sessions.logout, S, "callbacks"),
    Route("GET", "/callbacks/me", sessions.me, S, "callbacks"),
    Route("GET", "/callbacks", callbackapi.list_callbacks, S, "callbacks"),
    Route("POST", "/callbacks", callbackapi.create, S, "callbacks", status=201),
    Route("GET", "/callbacks/handover", callbackapi.handover, S, "callbacks"),
    Route("GET", f"/callbacks/{_ID}/message", callbackapi.message, S, "callbacks", content_type="audio/wav"),
    Route("POST", f"/callbacks/{_ID}/claim", callbackapi.claim, S, "callbacks"),
    Route("POST", f"/callbacks/{_ID}/release", callbackapi.release, S, "callbacks"),
    Route("POST", f"/callbacks/{_ID}/call", callbackapi.call, S, "callbacks", errors=(502,)),
    Route("POST", f"/callbacks/{_ID}/outcome", callbackapi.outcome, S, "callbacks"),
    Route("POST", f"/callbacks/{_ID}/reschedule", callbackapi.reschedule, S, "callbacks"),
    Route("POST", f"/callbacks/{_ID}/give-up", callbackapi.give_up, S, "callbacks"),
    Route("POST", f"/callbacks/{_ID}/notes", callbackapi.add_notes, S, "callbacks"),
    Route("POST", f"/callbacks/{_ID}/reassign", callbackapi.reassign, S, "callbacks"),
)
ROUTES = SERVICE_ROUTES + ADMIN_ROUTES + QUEUE_ROUTES + CALLBACK_ROUTES


def _context(auth: Auth, admin_token: str | None) -> Context:
    async def no_one(request: web.Request) -> tuple[Any, ...]:
        return ()

    async def the_admin(request: web.Request) -> tuple[Any, ...]:
        return await admin.admin_context(request, admin_token)

    contexts: dict[Auth, Context] = {
        Auth.NONE: no_one,
        Auth.ADMIN: the_admin,
        Auth.AGENT: queueapi.agent_context,
        Auth.SESSION: sessions.session_context,
    }
    return contexts[auth]


def _no_cross_site_basic(request: web.Request) -> None:
    """403 for a change with HTTP Basic credentials sent from another site's page.

    A browser adds an agent's cached Basic credentials to any request to this server, a bodiless cross-site
    ``fetch`` POST too (which ``require_json`` lets through, as the agents' page posts its buttons that way);
    such a request carries the other site's ``Origin``. Scripts send no Origin and are not affected.
    """
    scheme = request.headers.get("Authorization", "")[:6].lower()
    if request.method in STATE_CHANGING and scheme == "basic " and not sessions.same_origin(request):
        raise ApiError(403, "this request came from another site", [("Origin", "not this server's page")])


def _bind(route: Route, admin_token: str | None) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    context = _context(route.auth, admin_token)
    body_model, query_model = route.inputs
    handler = route.handler

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            require_json(request)  # before the credentials are even read: a cross-site form post gets nothing
            _no_cross_site_basic(request)
            args = await context(request)
            inputs: dict[str, Any] = {}
            if query_model is not None:
                inputs["query"] = read_query(request, query_model)
            if body_model is not None:
                inputs["body"] = await read_body(request, body_model)
            return await handler(request, *args, **inputs)
        except ApiError as exc:
            return exc.response()

    handle.__name__ = handle.__qualname__ = handler.__name__
    handle.__doc__ = handler.__doc__
    return handle


def add_routes(app: web.Application, routes: Sequence[Route], *, admin_token: str | None = None) -> None:
    """Route ``routes`` on ``app`` (GET answers HEAD too), with the one error body for aiohttp's own 4xx."""
    if error_middleware not in app.middlewares:
        app.middlewares.append(error_middleware)
    for route in routes:
        bound = _bind(route, admin_token)
        if route.method == "GET":
            app.router.add_get(route.path, bound)
        else:
            app.router.add_route(route.method, route.path, bound)


def setup_routes(app: web.Application, config: Config) -> None:
    """Every route of the server and ``GET /openapi.json``, the document made from the same table."""
    token = config.admin.token.get_secret_value().strip() if config.admin.token is not None else None
    add_routes(app, ROUTES, admin_token=token)
    app[openapi.OPENAPI] = openapi.document(ROUTES)


__all__ = ["ADMIN_ROUTES", "CALLBACK_ROUTES", "QUEUE_ROUTES", "ROUTES", "SERVICE_ROUTES", "Route", "add_routes"]
