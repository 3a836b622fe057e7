"""The OpenAPI 3.1 document of the HTTP API, made from the route table and the request models.

OpenAPI 3.1 schemas are JSON Schema 2020-12, which is what pydantic's ``model_json_schema()`` writes, so
each request model goes into ``components/schemas`` as it is; query models become query parameters, the
route's auth scheme its ``security``. Served at ``GET /openapi.json``; ``GET /docs`` renders it
(``ivr/web/static/docs.js``). The table is ``ivr/web/routes.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any, Protocol

from aiohttp import web
from pydantic import BaseModel

from ivr.web.common import Auth, QueryString, RequestBody
from ivr.web.sessions import COOKIE

OPENAPI = web.AppKey("openapi", dict[str, Any])
_REF = "#/components/schemas/{model}"
_PARAM = re.compile(r"\{(\w+)(?::([^{}]*))?\}")

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "adminToken": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <admin.token>"},
    "agentBasic": {"type": "http", "scheme": "basic", "description": "the agent's SIP name and password"},
    "sessionCookie": {
        "type": "apiKey",
        "in": "cookie",
        "name": COOKIE,
        "description": "set by POST /callbacks/login (HttpOnly, SameSite=Strict)",
    },
    "sessionToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "the token of POST /callbacks/login, for scripts",
    },
}
SECURITY: dict[Auth, list[dict[str, list[str]]]] = {
    Auth.NONE: [],
    Auth.ADMIN: [{"adminToken": []}],
    Auth.AGENT: [{"agentBasic": []}],
    Auth.SESSION: [{"sessionCookie": []}, {"sessionToken": []}, {"agentBasic": []}],  # any one of them
}
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Error",
    "description": "every 4xx (and the click-to-call 502)",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string", "description": "a short message for a person"},
        "detail": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {
                    "field": {"type": "string", "description": "dotted body field, query, path or header name"},
                    "message": {"type": "string"},
                },
            },
        },
    },
}


class RouteLike(Protocol):
    """What the document reads of a route (``ivr.web.routes.Route``)."""

    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def handler(self) -> Callable[..., Any]: ...
    @property
    def auth(self) -> Auth: ...
    @property
    def tag(self) -> str: ...
    @property
    def status(self) -> int: ...
    @property
    def content_type(self) -> str: ...
    @property
    def errors(self) -> tuple[int, ...]: ...
    @property
    def also(self) -> tuple[int, ...]: ...
    @property
    def inputs(self) -> tuple[type[RequestBody] | None, type[QueryString] | None]: ...


def openapi_path(path: str) -> str:
    """aiohttp's ``/callbacks/{id:\\d+}/claim`` as OpenAPI's ``/callbacks/{id}/claim``."""
    return _PARAM.sub(lambda m: "{" + m[1] + "}", path)


def _register(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=_REF)
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}


def _parameters(path: str, query: type[QueryString] | None) -> list[dict[str, Any]]:
    params = []
    for m in _PARAM.finditer(path):
        schema = {"type": "integer"} if m[2] == r"\d+" else {"type": "string"}
        params.append({"name": m[1], "in": "path", "required": True, "schema": schema})
    if query is not None:
        fields: dict[str, Any] = query.model_json_schema(ref_template=_REF)
        required = set(fields.get("required", ()))
        for name, prop in fields.get("properties", {}).items():
            param: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
            if "description" in prop:
                param["description"] = prop["description"]
            params.append(param)
    return params


def _operation(route: RouteLike, schemas: dict[str, Any]) -> dict[str, Any]:
    body, query = route.inputs
    doc = (route.handler.__doc__ or "").strip()
    slug = re.sub(r"[^a-z0-9]+", "_", openapi_path(route.path).lower()).strip("_")
    content = {"schema": {"type": "object"} if route.content_type == "application/json" else {"type": "string"}}
    responses: dict[str, Any] = {str(route.status): {"description": "done", "content": {route.content_type: content}}}
    error_schema = {"schema": {"$ref": _REF.format(model="Error")}}
    error = {"description": "refused: what to fix", "content": {"application/json": error_schema}}
    if route.auth is not Auth.NONE or body is not None or query is not None or "{" in route.path:
        responses["4XX"] = error
    for status in route.errors:
        responses[str(status)] = error
    for status in route.also:  # the success body, in another state (a draining server's /healthz)
        responses[str(status)] = {"description": "the same body", "content": {route.content_type: content}}
    op: dict[str, Any] = {
        "operationId": f"{route.method.lower()}_{slug or 'root'}",
        "summary": doc.splitlines()[0] if doc else route.handler.__name__.replace("_", " "),
        "tags": [route.tag],
        "security": SECURITY[route.auth],
        "responses": responses,
    }
    params = _parameters(route.path, query)
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {
            "required": not body.empty_is_object,
            "content": {"application/json": {"schema": _register(body, schemas)}},
        }
    return op


def _version() -> str:
    try:
        return metadata.version("frontdesk")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "0.0.0"


def document(routes: Iterable[RouteLike]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``."""
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(openapi_path(route.path), {})[route.method.lower()] = _operation(route, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "frontdesk",
            "version": _version(),
            "description": "The HTTP API of the frontdesk call-center server: agents, callbacks, admin, health.",
        },
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": SECURITY_SCHEMES},
    }


async def openapi_json(request: web.Request) -> web.Response:
    """This document."""
    return web.json_response(request.app[OPENAPI])


__all__ = ["OPENAPI", "SECURITY", "document", "openapi_json", "openapi_path"]
