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

Errors are the one error body of ``ivr/web/common.py``, with a 4xx that says what to fix. The values of the
runtime settings are checked by ``ivr/settings/queues.py``, the same checks as the config file's; the body
models here only fix the names. The routes are listed in ``ivr/web/routes.py``.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import ConfigDict, Field, WithJsonSchema
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from ivr.calls.queues import ClusterUnavailable, LiveQueues
from ivr.settings.queues import (
    QUEUE_RUNTIME_KEYS,
    SURGE_RUNTIME_KEYS,
    queue_for_runtime_update,
    surge_for_runtime_update,
)
from ivr.storage.audit import audit
from ivr.web.admin import AdminState
from ivr.web.common import (
    AGENT_CHALLENGE,
    ApiError,
    RequestBody,
    agent_password_ok,
    basic_credentials,
    settings_error,
)
from queueing.agents import Agent
from queueing.events import PolicyError, QueueReconfigured, SurgeReconfigured

QUEUES = web.AppKey("queues", LiveQueues)

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
        "registered": queues.registered(agent.id),
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


def _queues(request: web.Request) -> LiveQueues:
    queues = request.app.get(QUEUES)
    if queues is None:
        raise ApiError(503, "the queues are not running (server starting or stopping)")
    return queues


async def agent_context(request: web.Request) -> tuple[LiveQueues, str]:
    """The queues and the agent whose SIP name and password came as HTTP Basic (else 401/403/429/503)."""
    queues = _queues(request)
    given = basic_credentials(request)
    if given is None:
        raise ApiError(401, "log in with your SIP name and password (HTTP Basic)", headers=AGENT_CHALLENGE)
    name, password = given
    if not agent_password_ok(queues.ua.registrar, request, "basic", name, password, queues.sip_now()):
        raise ApiError(401, "wrong agent name or password", headers=AGENT_CHALLENGE)
    if name not in queues.engine.agents:
        raise ApiError(403, f"{name} has a SIP login but is not an agent of any queue")
    return queues, name


class NotReadyBody(RequestBody):
    """Why the agent steps away; no body means "busy"."""

    model_config = ConfigDict(extra="ignore", strict=True)  # as before: other keys are not an error
    empty_is_object = True

    reason: str = Field("", max_length=64, description='shown to supervisors; empty means "busy"')


async def _agent_answer(queues: LiveQueues, name: str, action: str, reason: str | None) -> web.StreamResponse:
    try:
        await queues.agent_request(name, action, reason)
    except PolicyError as exc:
        raise ApiError(409, str(exc)) from None
    except ClusterUnavailable as exc:
        raise ApiError(503, str(exc)) from None
    return web.json_response(agent_json(queues, queues.engine.agents[name]))


async def agent_state(request: web.Request, queues: LiveQueues, name: str) -> web.StreamResponse:
    """The agent's own state."""
    return web.json_response(agent_json(queues, queues.engine.agents[name]))


async def agent_login(request: web.Request, queues: LiveQueues, name: str) -> web.StreamResponse:
    """Log in: the agent becomes ready."""
    return await _agent_answer(queues, name, "login", None)


async def agent_ready(request: web.Request, queues: LiveQueues, name: str) -> web.StreamResponse:
    """Ready for the next caller."""
    return await _agent_answer(queues, name, "ready", None)


async def agent_not_ready(
    request: web.Request, queues: LiveQueues, name: str, body: NotReadyBody
) -> web.StreamResponse:
    """Not ready, with a reason."""
    return await _agent_answer(queues, name, "not_ready", body.reason or "busy")


async def agent_logout(request: web.Request, queues: LiveQueues, name: str) -> web.StreamResponse:
    """Log out."""
    return await _agent_answer(queues, name, "logout", None)


# -- admin ----------------------------------------------------------------------------------

_NUMBER: dict[str, Any] = {"type": ["number", "null"]}
_LIMIT: dict[str, Any] = {
    "description": "seconds (or a count) for both modes, or each mode apart",
    "oneOf": [
        {"type": "number"},
        {
            "type": "object",
            "properties": {"normal": {"type": "number"}, "surge": {"type": "number"}},
            "additionalProperties": False,
        },
    ],
}
_TEXT: dict[str, Any] = {"type": "string"}
_FLAG: dict[str, Any] = {"type": "boolean"}
# checked by ivr/settings/queues.py (the config file's checks), documented here
Setting = Annotated[Any, WithJsonSchema(_NUMBER)]
LimitSetting = Annotated[Any, WithJsonSchema(_LIMIT)]
TextSetting = Annotated[Any, WithJsonSchema(_TEXT)]
FlagSetting = Annotated[Any, WithJsonSchema(_FLAG)]


def _no_defaults(schema: dict[str, Any]) -> None:
    """A setting left out keeps its value: it has no default to document."""
    for prop in schema.get("properties", {}).values():
        prop.pop("default", None)


class QueuePatch(RequestBody):
    """A queue's limits changed at runtime; a setting left out keeps its value."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_no_defaults)

    max_wait: LimitSetting = None
    max_length: LimitSetting = None
    announce_every: LimitSetting = None
    ring_timeout: Setting = None
    wrap_up: Setting = None
    overflow: TextSetting = None
    surge_overflow: TextSetting = None
    strategy: TextSetting = None
    service_level_target: Setting = Field(None, description="a ratio from 0 to 1")
    callback_ewt: Setting = Field(None, description="R2: seconds of estimated wait from which a callback is offered")


class SurgePatch(RequestBody):
    """The surge switch's thresholds at runtime; a threshold set to null is not used."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_no_defaults)

    ewt_on: Setting = None
    ewt_off: Setting = None
    queue_length_on: Setting = None
    queue_length_off: Setting = None
    service_level_on: Setting = None
    service_level_off: Setting = None
    min_dwell: Setting = None
    peak_shaving_ewt: Setting = None
    auto: FlagSetting = None
    notice: FlagSetting = None
    pause_outbound: FlagSetting = None


class SurgeSwitchBody(RequestBody):
    """Surge on or off by hand, or null: back to the schedule and the thresholds."""

    on: bool | None


class AgentStateBody(RequestBody):
    """A supervisor sets an agent's state (ready logs a logged-out agent in)."""

    state: Literal["ready", "not_ready", "logged_out"]
    reason: str | None = None


async def _audited(engine: AsyncEngine, actor: str, action: str, target: str, detail: dict[str, Any]) -> None:
    async with async_sessionmaker(engine)() as session, session.begin():
        audit(session, datetime.now(UTC), actor, action, target, detail)


async def admin_queues(request: web.Request, state: AdminState, actor: str) -> web.StreamResponse:
    """Every queue now: waiting, EWT, service level, its limits; and the surge switch."""
    return web.json_response(queues_json(_queues(request)))


async def put_surge(request: web.Request, state: AdminState, actor: str, body: SurgeSwitchBody) -> web.StreamResponse:
    """The surge switch by hand (audited; R15: surge pauses outbound callbacks)."""
    queues = _queues(request)
    await _audited(state.engine, actor, "surge_switch", "surge", {"on": body.on})
    queues.surge_switch(body.on, "manual")
    return web.json_response(queues_json(queues)["surge"])


async def patch_surge(request: web.Request, state: AdminState, actor: str, body: SurgePatch) -> web.StreamResponse:
    """The surge thresholds (audited)."""
    queues = _queues(request)
    _no_live_change_in_cluster(queues)
    changes = body.model_dump(exclude_unset=True)
    try:
        spec = surge_for_runtime_update(queues.engine.model.surge, changes)
    except ValueError as exc:
        raise settings_error(exc, SURGE_RUNTIME_KEYS) from None
    await _audited(state.engine, actor, "surge_settings", "surge", changes)
    queues.feed(SurgeReconfigured(spec=spec, now=queues.now()))
    return web.json_response(queues_json(queues)["surge"])


async def patch_queue(request: web.Request, state: AdminState, actor: str, body: QueuePatch) -> web.StreamResponse:
    """One queue's limits (audited)."""
    queues = _queues(request)
    _no_live_change_in_cluster(queues)
    name = request.match_info["name"]
    spec = queues.engine.queues.get(name)
    if spec is None:
        known = ", ".join(sorted(queues.engine.queues))
        raise ApiError(404, f"no queue {name!r}; queues: {known}", [("name", f"no such queue; queues: {known}")])
    changes = body.model_dump(exclude_unset=True)
    try:
        new = queue_for_runtime_update(spec, changes)
    except ValueError as exc:
        raise settings_error(exc, QUEUE_RUNTIME_KEYS) from None
    await _audited(state.engine, actor, "queue_settings", name, changes)
    queues.feed(QueueReconfigured(spec=new, now=queues.now()))
    return web.json_response(queues_json(queues)["queues"][name])


def _no_live_change_in_cluster(queues: LiveQueues) -> None:
    if queues.cluster is not None:
        raise ApiError(
            409, "cluster mode: change queue and surge settings in every node's config and restart the nodes"
        )


async def admin_agents(request: web.Request, state: AdminState, actor: str) -> web.StreamResponse:
    """Every agent's state."""
    queues = _queues(request)
    return web.json_response({"agents": [agent_json(queues, a) for a in queues.engine.agents.values()]})


async def put_agent_state(
    request: web.Request, state: AdminState, actor: str, body: AgentStateBody
) -> web.StreamResponse:
    """A supervisor sets an agent's state (audited)."""
    queues = _queues(request)
    agent_id = request.match_info["id"]
    if agent_id not in queues.engine.agents:
        raise ApiError(404, f"no agent {agent_id!r}", [("id", "no such agent")])
    agent = queues.engine.agents[agent_id]
    action = _STATES[body.state]
    if action == "ready" and agent.state.value == "logged_out":
        action = "login"  # logging in makes the agent ready
    await _audited(state.engine, actor, "agent_state", agent_id, body.model_dump(exclude_unset=True))
    try:
        await queues.agent_request(agent_id, action, body.reason)
    except PolicyError as exc:
        raise ApiError(409, str(exc)) from None
    except ClusterUnavailable as exc:
        raise ApiError(503, str(exc)) from None
    return web.json_response(agent_json(queues, queues.engine.agents[agent_id]))


__all__ = ["QUEUES", "agent_context", "agent_json", "queues_json"]
