"""The OpenAPI document (ivr/web/openapi.py) against what the server routes, and the one error body of every 4xx."""

from __future__ import annotations

import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate

from callback.rules import OUTCOMES
from ivr.settings.config import parse_config
from ivr.settings.queues import QUEUE_RUNTIME_KEYS, SURGE_RUNTIME_KEYS
from ivr.storage.notices import NoticeBoard
from ivr.storage.records import create_engine, init_schema
from ivr.web.admin import ADMIN, AdminState
from ivr.web.app import create_app
from ivr.web.callbackapi import OutcomeBody
from ivr.web.openapi import OPENAPI, document
from ivr.web.queueapi import QueuePatch, SurgePatch
from ivr.web.routes import ADMIN_ROUTES, ROUTES, SERVICE_ROUTES, add_routes

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]
TOKEN = "openapi-admin-token-0123456789"
AGENT_BUTTONS = {"/agent/state", "/agent/login", "/agent/ready", "/agent/not-ready", "/agent/logout"}
SESSION = [{"sessionCookie": []}, {"sessionToken": []}, {"agentBasic": []}]


def expected_security(path: str) -> list[dict[str, list[str]]]:
    """The auth scheme of a path, by the rules of README.md's HTTP section (not read from the route table)."""
    if path.startswith("/admin/"):
        return [{"adminToken": []}]
    if path in AGENT_BUTTONS:
        return [{"agentBasic": []}]
    if path == "/callbacks/login":
        return []
    if path == "/callbacks" or path.startswith("/callbacks/"):
        return SESSION
    return []  # health, metrics, the pages, this document


@pytest.fixture(scope="module")
def server_app() -> web.Application:
    return create_app(parse_config(f"admin:\n  token: {TOKEN}\n"))


def test_every_route_is_in_the_document_with_its_auth_scheme(server_app: web.Application) -> None:
    doc = server_app[OPENAPI]
    routed: set[tuple[str, str]] = set()
    for route in server_app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        method = route.method.lower()
        if method == "head":  # aiohttp answers HEAD on every GET route: it is the GET operation
            assert "get" in doc["paths"][path], path
            continue
        routed.add((method, path))
        operation = doc["paths"].get(path, {}).get(method)
        assert operation is not None, f"{method.upper()} {path} is routed but not in /openapi.json"
        assert operation["security"] == expected_security(path), (method, path)
        assert operation["summary"], (method, path)
    documented = {(m, p) for p, item in doc["paths"].items() for m in item}
    assert documented == routed  # nothing documented that is not routed
    assert len(routed) >= 36


def test_the_document_is_valid_openapi_3_1(server_app: web.Application) -> None:
    doc = server_app[OPENAPI]
    assert doc["openapi"] == "3.1.0"
    validate(doc)
    schemes = doc["components"]["securitySchemes"]
    assert schemes["adminToken"] == {**schemes["adminToken"], "type": "http", "scheme": "bearer"}
    assert schemes["agentBasic"]["scheme"] == "basic"
    assert (schemes["sessionCookie"]["in"], schemes["sessionCookie"]["name"]) == ("cookie", "frontdesk_session")


def test_bodies_and_queries_come_from_the_handlers_models(server_app: web.Application) -> None:
    doc = server_app[OPENAPI]
    outcome = doc["paths"]["/callbacks/{id}/outcome"]["post"]
    ref = outcome["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert schema["properties"]["outcome"]["enum"] == list(OUTCOMES)
    assert schema["required"] == ["outcome"] and schema["additionalProperties"] is False
    assert [p["name"] for p in outcome["parameters"]] == ["id"] and outcome["parameters"][0]["schema"][
        "type"
    ] == "integer"
    audit = {p["name"]: p for p in doc["paths"]["/admin/audit"]["get"]["parameters"]}
    assert audit["limit"]["in"] == "query" and audit["limit"]["schema"]["maximum"] == 1000
    listing = {p["name"] for p in doc["paths"]["/callbacks"]["get"]["parameters"]}
    assert listing == {"state", "mine", "queue", "agent", "limit"}
    assert doc["paths"]["/callbacks"]["post"]["responses"]["201"]
    assert doc["paths"]["/callbacks/{id}/call"]["post"]["responses"]["502"]
    health = doc["paths"]["/healthz"]["get"]["responses"]  # a draining server answers 503 with the same body
    assert set(health) == {"200", "503"} and health["503"]["content"] == health["200"]["content"]
    assert "4XX" in doc["paths"]["/admin/surge"]["put"]["responses"]


def test_the_models_name_every_runtime_setting_and_outcome() -> None:
    assert set(QueuePatch.model_fields) == set(QUEUE_RUNTIME_KEYS)
    assert set(SurgePatch.model_fields) == set(SURGE_RUNTIME_KEYS)
    assert typing.get_args(OutcomeBody.model_fields["outcome"].annotation) == OUTCOMES


# -- served, and the error body ----------------------------------------------------------------------


@pytest.fixture
async def client(tmp_path: Path, aiohttp_client: ClientFactory) -> AsyncIterator[Client]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'frontdesk.db'}")
    await init_schema(engine)
    board = NoticeBoard(engine, {}, prompts={"welcome"}, groups={"north"})
    await board.load()
    app = web.Application()
    add_routes(app, SERVICE_ROUTES + ADMIN_ROUTES, admin_token=TOKEN)
    app[OPENAPI] = document(ROUTES)
    app[ADMIN] = AdminState(engine, board)
    yield await aiohttp_client(app)
    await engine.dispose()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def error_of(resp: Any) -> dict[str, Any]:
    body = await resp.json()
    assert set(body) == {"error", "detail"} and isinstance(body["error"], str), body
    assert all(set(d) == {"field", "message"} for d in body["detail"]), body
    return body


async def test_the_document_and_the_docs_page_are_served(client: Client) -> None:
    resp = await client.get("/openapi.json")
    assert resp.status == 200 and (await resp.json())["paths"]["/admin/notices"]
    resp = await client.get("/docs")
    assert resp.status == 200 and resp.content_type == "text/html"
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    assert 'src="/docs.js"' in await resp.text()
    resp = await client.get("/docs.js")
    assert resp.status == 200 and "/openapi.json" in await resp.text()


async def test_a_bad_body_names_each_field(client: Client) -> None:
    resp = await client.put("/admin/notices/n1", json={"group": 3, "active": "yes", "x": 1}, headers=AUTH)
    assert resp.status == 400
    body = await error_of(resp)
    assert {d["field"] for d in body["detail"]} == {"group", "active", "x"}
    assert "3 problems" in body["error"]
    resp = await client.put("/admin/notices/n1", data=b"", headers=AUTH)
    assert resp.status == 400 and (await error_of(resp))["detail"][0]["field"] == "body"


async def test_a_bad_query_names_the_parameter(client: Client) -> None:
    resp = await client.get("/admin/audit", params={"limit": "lots"}, headers=AUTH)
    assert resp.status == 400
    body = await error_of(resp)
    assert [d["field"] for d in body["detail"]] == ["limit"] and body["error"].startswith("limit: ")
    resp = await client.get("/admin/complaints", params={"month": "2024-13"}, headers=AUTH)
    assert resp.status == 400 and (await error_of(resp))["detail"][0]["field"] == "month"


async def test_refusals_of_auth_and_of_aiohttp_itself_use_the_same_body(client: Client) -> None:
    resp = await client.get("/admin/notices")
    assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
    await error_of(resp)
    resp = await client.get("/no/such/route")
    assert resp.status == 404
    assert (await error_of(resp))["detail"] == [{"field": "path", "message": "GET /no/such/route: Not Found"}]
    resp = await client.post("/admin/notices")
    assert resp.status == 405 and "GET" in resp.headers["Allow"]
    await error_of(resp)
