"""The agent and admin HTTP APIs of the live queues, against the real server."""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from support.server import Server

TOKEN = "queue-admin-token-0123456789"
PASSWORD = "agent password 8001"


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def call(
    server: Server, method: str, path: str, body: Any = None, *, auth: str | None = None, raw: bytes | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(f"http://127.0.0.1:{server.http_port}{path}", data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if auth is not None:
        req.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


ADMIN = f"Bearer {TOKEN}"
AGENT = basic("8001", PASSWORD)


@pytest.fixture
def qserver(server_factory: Callable[[dict[str, object]], Server]) -> Server:
    return server_factory(
        {
            "sip": {"realm": "frontdesk"},
            "admin": {"token": TOKEN},
            "agents": {
                "8001": {"ha1": md5(f"8001:frontdesk:{PASSWORD}"), "skills": {"billing": 2}},
                "8002": {"ha1": md5("8002:frontdesk:other password")},
            },
            "queues": {"general": {"max_wait": {"normal": 60, "surge": 40}}},
        }
    )


def test_agents_log_in_and_out_with_their_sip_password(qserver: Server) -> None:
    status, body, headers = call(qserver, "GET", "/agent/state")
    assert status == 401 and "SIP name and password" in body["error"]
    assert headers["WWW-Authenticate"].startswith("Basic ")
    assert call(qserver, "GET", "/agent/state", auth=basic("8001", "wrong"))[0] == 401
    assert call(qserver, "GET", "/agent/state", auth=basic("9999", PASSWORD))[0] == 401
    assert call(qserver, "GET", "/agent/state", auth="Basic !!!")[0] == 401

    status, body, _ = call(qserver, "GET", "/agent/state", auth=AGENT)
    assert status == 200
    assert body == {
        "agent": "8001",
        "state": "logged_out",
        "reason": None,
        "call": None,
        "skills": {"billing": 2},
        "registered": False,
    }
    # not ready is illegal before logging in: nothing changes
    status, body, _ = call(qserver, "POST", "/agent/ready", auth=AGENT)
    assert status == 409 and "illegal while logged_out" in body["error"]
    status, body, _ = call(qserver, "POST", "/agent/login", auth=AGENT)
    assert (status, body["state"]) == (200, "ready")
    status, body, _ = call(qserver, "POST", "/agent/not-ready", {"reason": "lunch"}, auth=AGENT)
    assert (status, body["state"], body["reason"]) == (200, "not_ready", "lunch")
    assert qserver.metric("frontdesk_agents", state="not_ready") == 1
    assert qserver.metric("frontdesk_agents", state="logged_out") == 1  # 8002
    assert call(qserver, "POST", "/agent/not-ready", raw=b"{", auth=AGENT)[0] == 400
    assert call(qserver, "POST", "/agent/not-ready", {"reason": "x" * 65}, auth=AGENT)[0] == 400
    status, body, _ = call(qserver, "POST", "/agent/ready", auth=AGENT)
    assert (status, body["state"], body["reason"]) == (200, "ready", None)
    assert qserver.metric("frontdesk_queue_agents_serving", queue="general") == 1
    status, body, _ = call(qserver, "POST", "/agent/logout", auth=AGENT)
    assert (status, body["state"]) == (200, "logged_out")


def test_admin_switches_surge_changes_limits_and_agents_audited(qserver: Server) -> None:
    assert call(qserver, "GET", "/admin/queues")[0] == 401
    assert call(qserver, "GET", "/admin/queues", auth="Bearer wrong-token-0000000000")[0] == 403
    status, body, _ = call(qserver, "GET", "/admin/queues", auth=ADMIN)
    assert status == 200
    general = body["queues"]["general"]
    assert general["waiting"] == 0 and general["offered"] == 0 and general["ewt_s"] is None  # nobody serves
    assert general["settings"]["max_wait"] == {"normal": 60.0, "surge": 40.0}
    assert body["surge"]["on"] is False and body["outbound_paused"] is False

    # the surge switch, by hand
    status, body, _ = call(qserver, "PUT", "/admin/surge", {"on": "yes"}, auth=ADMIN)
    assert status == 400 and body["detail"] == [{"field": "on", "message": "Input should be a valid boolean"}]
    status, body, _ = call(qserver, "PUT", "/admin/surge", {"on": True}, auth=ADMIN)
    assert (status, body["on"], body["changes"]["manual"]) == (200, True, 1)
    assert qserver.metric("frontdesk_surge_active") == 1
    assert qserver.metric("frontdesk_surge_changes_total", cause="manual") == 1
    assert qserver.metric("frontdesk_outbound_paused") == 1  # R15
    status, body, _ = call(qserver, "PUT", "/admin/surge", {"on": None}, auth=ADMIN)
    assert (status, body["on"]) == (200, False)  # released: no schedule, no threshold crossed

    # thresholds and limits at runtime
    status, body, _ = call(qserver, "PATCH", "/admin/surge", {"ewt_on": 90, "min_dwell": 30}, auth=ADMIN)
    assert (status, body["settings"]["ewt_on"], body["settings"]["min_dwell"]) == (200, 90.0, 30.0)
    status, body, _ = call(qserver, "PATCH", "/admin/surge", {"ewt_off": 200}, auth=ADMIN)
    assert status == 400 and "ewt_off" in body["error"] and body["detail"][0]["field"] == "ewt_off"
    status, body, _ = call(qserver, "PATCH", "/admin/queues/general", {"max_wait": {"normal": 30}}, auth=ADMIN)
    assert (status, body["settings"]["max_wait"]) == (200, {"normal": 30.0, "surge": 40.0})
    status, body, _ = call(qserver, "PATCH", "/admin/queues/general", {"max_wiat": 30}, auth=ADMIN)
    assert status == 400 and "max_wiat" in body["error"] and body["detail"][0]["field"] == "max_wiat"
    status, body, _ = call(qserver, "PATCH", "/admin/queues/sales", {"max_wait": 30}, auth=ADMIN)
    assert status == 404 and "general" in body["error"]

    # agents' states, by a supervisor
    status, body, _ = call(qserver, "PUT", "/admin/agents/8002/state", {"state": "ready"}, auth=ADMIN)
    assert (status, body["state"]) == (200, "ready")
    status, body, _ = call(qserver, "PUT", "/admin/agents/8002/state", {"state": "busy"}, auth=ADMIN)
    assert status == 400
    assert call(qserver, "PUT", "/admin/agents/nobody/state", {"state": "ready"}, auth=ADMIN)[0] == 404
    status, body, _ = call(qserver, "GET", "/admin/agents", auth=ADMIN)
    assert {a["agent"]: a["state"] for a in body["agents"]} == {"8001": "logged_out", "8002": "ready"}

    status, body, _ = call(qserver, "GET", "/admin/audit", auth=ADMIN)
    actions = [(e["action"], e["target"]) for e in body["entries"]][::-1]
    assert actions == [
        ("surge_switch", "surge"),
        ("surge_switch", "surge"),
        ("surge_settings", "surge"),
        ("queue_settings", "general"),
        ("agent_state", "8002"),
    ]
    assert body["entries"][-1]["detail"] == {"on": True}
