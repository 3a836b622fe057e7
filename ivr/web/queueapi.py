"""HTTP APIs of the live queues: agents' own buttons, and the admin's switches.

Agents (R17: remote and home agents work without a desk phone's buttons)
authenticate with HTTP Basic and their SIP login (name and password; the
server keeps only the HA1, so it checks ``MD5(name:realm:password)``)::

    GET  /agent/state                        {"agent", "state", "reason", "call", "registered"}
    POST /agent/login | /agent/ready | /agent/logout
    POST /agent/not-ready                    {"reason": "lunch"}

Admins use the admin token (ivr/web/admin.py) and every change is audited::

    GET   /admin/queues                      queues now: waiting, EWT, service level, limits
    PUT   /admin/surge                       {"on": true | false | null}  (null: back to schedule/auto)
    PATCH /admin/surge                       thresholds: {"ewt_on": 90, "min_dwell": 30, ...}
    PATCH /admin/queues/{name}               limits: {"max_wait": {"normal": 30, "surge": 20}, ...}
    GET   /admin/agents                      every agent's state
    PUT   /admin/agents/{id}/state           {"state": "ready" | "not_ready" | "logged_out", "reason": "..."}

Errors are JSON ``{"error": "..."}`` with a 4xx that says what to fix.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from ivr.calls.queues import LiveQueues
from ivr.settings.config import AdminSettings
from ivr.settings.queues import queue_for_runtime_update, surge_for_runtime_update
from ivr.storage.audit import audit
from ivr.web.admin import ADMIN, AdminState, _error, _guard
from queueing.engine import Agent, PolicyError
from queueing.events import QueueReconfigured, SurgeReconfigured

QUEUES = web.AppKey("queues", LiveQueues)

_ACTIONS = {"login": "login", "ready": "ready", "not-ready": "not_ready", "logout": "logout"}
_STATES = {"ready": "ready", "not_ready": "not_ready", "logged_out": "logout"}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def agent_json(queues: LiveQueues, agent: Agent) -> dict[str, Any]:
    return {
        "agent": agent.id,
        "state": agent.state.value,
        "reason": agent.reason,
        "call": agent.call,
        "skills": dict(agent.spec.skills),
        "registered": bool(queues.ua.registrar.lookup(agent.id, queues.now())),
    }


def queues_json(queues: LiveQueues) -> dict[str, Any]:
    engine = queues.engine
    snap = engine.snapshot()
    out: dict[str, Any] = {}
    for name, q in snap.queues.items():
        spec, st = engine.queues[name], engine.stats[name]
        out[name] = {
            "waiting": q.waiting,
            "ringing": q.ringing,
            "longest_waiting_s": round(q.longest_waiting, 3),
            "longest_wait_ever_s": round(st.longest_wait, 3),
            "ewt_s": _finite(round(q.ewt, 3)),
            "aht_s": round(q.aht, 3),
            "agents_serving": q.serving,
            "agents_idle": q.idle,
            "offered": st.offered,
            "answered": st.answered,
            "abandoned": st.abandoned,
            "overflowed": dict(st.overflowed),
            "service_level": round(st.service_level, 4),
            "asa_s": round(st.asa, 3),
            "settings": {
                "strategy": spec.strategy,
                "max_wait": dataclasses.asdict(spec.max_wait),
                "max_length": dataclasses.asdict(spec.max_length),
                "announce_every": dataclasses.asdict(spec.announce_every),
                "overflow": spec.overflow,
                "surge_overflow": spec.surge_overflow,
                "callback_ewt": spec.callback_ewt,
                "ring_timeout": spec.ring_timeout,
                "wrap_up": spec.wrap_up,
                "service_level_t": spec.service_level_t,
                "service_level_target": spec.service_level_target,
            },
        }
    surge = dataclasses.asdict(engine.model.surge)
    surge.pop("schedule", None)
    return {
        "surge": {"on": engine.surge, "changes": dict(engine.surge_changes), "settings": surge},
        "outbound_paused": queues.outbound_paused,
        "queues": out,
    }


# -- agents ---------------------------------------------------------------------------------


def _agent_auth(request: web.Request, queues: LiveQueues) -> str | web.Response:
    """The agent's name from valid Basic credentials, or the error response."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    challenge = {"WWW-Authenticate": 'Basic realm="frontdesk agents", charset="UTF-8"'}
    if scheme.lower() != "basic" or not given.strip():
        return _error(401, "log in with your SIP name and password (HTTP Basic)", challenge)
    try:
        name, sep, password = base64.b64decode(given.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return _error(401, "malformed Basic credentials", challenge)
    if not sep or not queues.ua.registrar.password_ok(name, password):
        return _error(401, "wrong agent name or password", challenge)
    if name not in queues.engine.agents:
        return _error(403, f"{name} has a SIP login but is not an agent of any queue")
    return name


def _queues(request: web.Request) -> LiveQueues | web.Response:
    queues = request.app.get(QUEUES)
    if queues is None:
        return _error(503, "the queues are not running (server starting or stopping)")
    return queues


def _agent(request: web.Request) -> tuple[LiveQueues, str] | web.Response:
    """The queues and the authenticated agent's name, or the error response."""
    queues = _queues(request)
    if isinstance(queues, web.Response):
        return queues
    name = _agent_auth(request, queues)
    if isinstance(name, web.Response):
        return name
    return queues, name


async def agent_state(request: web.Request) -> web.StreamResponse:
    found = _agent(request)
    if isinstance(found, web.Response):
        return found
    queues, name = found
    return web.json_response(agent_json(queues, queues.engine.agents[name]))


async def agent_action(request: web.Request) -> web.StreamResponse:
    found = _agent(request)
    if isinstance(found, web.Response):
        return found
    queues, name = found
    action = _ACTIONS[request.match_info["action"]]
    reason = None
    if action == "not_ready":
        reason = "busy"
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                return _error(400, 'the body must be JSON: {"reason": "lunch"}')
            if not isinstance(body, dict) or not isinstance(body.get("reason", ""), str):
                return _error(400, 'the body must be JSON: {"reason": "lunch"}')
            reason = body.get("reason") or "busy"
            if len(reason) > 64:
                return _error(400, "reason: 64 characters at most")
    try:
        queues.agent_event(name, action, reason)
    except PolicyError as exc:
        return _error(409, str(exc))
    return web.json_response(agent_json(queues, queues.engine.agents[name]))


# -- admin ----------------------------------------------------------------------------------


async def _audited(engine: AsyncEngine, actor: str, action: str, target: str, detail: dict[str, Any]) -> None:
    async with async_sessionmaker(engine)() as session, session.begin():
        audit(session, datetime.now(UTC), actor, action, target, detail)


async def _json_object(request: web.Request, example: str) -> dict[str, Any] | web.Response:
    try:
        data = await request.json()
    except (ValueError, UnicodeDecodeError) as exc:
        return _error(400, f"the body is not valid JSON: {exc}")
    if not isinstance(data, dict):
        return _error(400, f"the body must be a JSON object: {example}")
    return data


async def admin_queues(request: web.Request, state: AdminState, actor: str) -> web.StreamResponse:
    queues = _queues(request)
    if isinstance(queues, web.Response):
        return queues
    return web.json_response(queues_json(queues))


async def put_surge(request: web.Request, state: AdminState, actor: str) -> web.StreamResponse:
    queues = _queues(request)
    if isinstance(queues, web.Response):
        return queues
    data = await _json_object(request, '{"on": true}')
    if isinstance(data, web.Response):
        return data
    if set(data) != {"on"} or data["on"] not in (True, False, None):
        return _error(400, 'send {"on": true}, {"on": false} or {"on": null} (null: back to schedule and thresholds)')
    await _audited(state.engine, actor, "surge_switch", "surge", {"on": data["on"]})
    queues.surge_switch(data["on"], "manual")
    return web.json_response(queues_json(queues)["surge"])


async def patch_surge(request: web.Request, state: AdminState, actor: str) -> web.StreamResponse:
    queues = _queues(request)
    if isinstance(queues, web.Response):
        return queues
    data = await _json_object(request, '{"ewt_on": 90}')
    if isinstance(data, web.Response):
        return data
    try:
        spec = surge_for_runtime_update(queues.engine.model.surge, data)
    except ValueError as exc:
        return _error(400, str(exc))
    await _audited(state.engine, actor, "surge_settings", "surge", data)
    queues.feed(SurgeReconfigured(spec=spec, now=queues.now()))
    return web.json_response(queues_json(queues)["surge"])


async def patch_queue(request: web.Request, state: AdminState, actor: str) -> web.StreamResponse:
    queues = _queues(request)
    if isinstance(queues, web.Response):
        return queues
    name = request.match_info["name"]
    spec = queues.engine.queues.get(name)
    if spec is None:
        return _error(404, f"no queue {name!r}; queues: {', '.join(sorted(queues.engine.queues))}")
    data = await _json_object(request, '{"max_wait": {"normal": 30, "surge": 20}}')
    if isinstance(data, web.Response):
        return data
    try:
        new = queue_for_runtime_update(spec, data)
    except ValueError as exc:
        return _error(400, str(exc))
    await _audited(state.engine, actor, "queue_settings", name, data)
    queues.feed(QueueReconfigured(spec=new, now=queues.now()))
    return web.json_response(queues_json(queues)["queues"][name])


async def admin_agents(request: web.Request, state: AdminState, actor: str) -> web.StreamResponse:
    queues = _queues(request)
    if isinstance(queues, web.Response):
        return queues
    return web.json_response({"agents": [agent_json(queues, a) for a in queues.engine.agents.values()]})


async def put_agent_state(request: web.Request, state: AdminState, actor: str) -> web.StreamResponse:
    queues = _queues(request)
    if isinstance(queues, web.Response):
        return queues
    agent_id = request.match_info["id"]
    if agent_id not in queues.engine.agents:
        return _error(404, f"no agent {agent_id!r}")
    data = await _json_object(request, '{"state": "not_ready", "reason": "meeting"}')
    if isinstance(data, web.Response):
        return data
    target, reason = data.get("state"), data.get("reason")
    if target not in _STATES or set(data) - {"state", "reason"} or (reason is not None and not isinstance(reason, str)):
        return _error(400, 'send {"state": "ready" | "not_ready" | "logged_out", "reason": "..."}')
    agent = queues.engine.agents[agent_id]
    action = _STATES[target]
    if action == "ready" and agent.state.value == "logged_out":
        action = "login"  # logging in makes the agent ready
    await _audited(state.engine, actor, "agent_state", agent_id, data)
    try:
        queues.agent_event(agent_id, action, reason)
    except PolicyError as exc:
        return _error(409, str(exc))
    return web.json_response(agent_json(queues, agent))


def setup_queue_routes(app: web.Application, settings: AdminSettings) -> None:
    token = settings.token.get_secret_value().strip() if settings.token is not None else None
    app.router.add_get("/agent/state", agent_state)
    app.router.add_post(r"/agent/{action:login|ready|not-ready|logout}", agent_action)
    app.router.add_get("/admin/queues", _guard(admin_queues, token))
    app.router.add_patch("/admin/queues/{name}", _guard(patch_queue, token))
    app.router.add_put("/admin/surge", _guard(put_surge, token))
    app.router.add_patch("/admin/surge", _guard(patch_surge, token))
    app.router.add_get("/admin/agents", _guard(admin_agents, token))
    app.router.add_put("/admin/agents/{id}/state", _guard(put_agent_state, token))


__all__ = ["ADMIN", "QUEUES", "agent_json", "queues_json", "setup_queue_routes"]
