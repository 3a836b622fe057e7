"""Admin HTTP API: targeted notices (R6), the audit log, monthly complaint counts (R4).

Every route needs ``Authorization: Bearer <admin.token>``. With no token in
the config the API answers 503: an admin API nobody secured stays shut.
Every change is written to the audit log in the same transaction as the
change itself. Errors are JSON ``{"error": "..."}`` worded for the operator.

    GET    /admin/notices                    all notices, active or not
    PUT    /admin/notices/{id}               {"group", "prompt", "active"} publish / change
    DELETE /admin/notices/{id}               withdraw
    GET    /admin/audit?limit=100&before=ID  newest first
    GET    /admin/complaints?month=YYYY-MM   complaints by category (default: this month, UTC)
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from ivr.settings.config import AdminSettings
from ivr.storage.audit import read_audit
from ivr.storage.notices import NoticeBoard, NoticeError, UnknownNotice
from ivr.storage.records import complaint_counts


@dataclass
class AdminState:
    """What the handlers work on; set as ``app[ADMIN]`` once the database is up."""

    engine: AsyncEngine
    notices: NoticeBoard


ADMIN = web.AppKey("admin", AdminState)

ACTOR = "admin"  # one token, one name in the audit log
_MONTH = re.compile(r"(\d{4})-(\d{2})")
_NOTICE_FIELDS = ("group", "prompt", "active")

Handler = Callable[[web.Request, AdminState, str], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _guard(handler: Handler, token: str | None) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def guarded(request: web.Request) -> web.StreamResponse:
        if token is None:
            return _error(503, "the admin API is disabled: set admin.token in the config to enable it")
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            return _error(
                401,
                "missing admin token: send 'Authorization: Bearer <admin.token>'",
                {"WWW-Authenticate": 'Bearer realm="frontdesk admin"'},
            )
        if not hmac.compare_digest(given.encode(), token.encode()):
            return _error(403, "wrong admin token")
        state = request.app.get(ADMIN)
        if state is None:
            return _error(503, "the admin API is not ready (server starting or stopping)")
        return await handler(request, state, ACTOR)

    return guarded


def _notice_json(state: AdminState, notice_id: str) -> dict[str, Any]:
    notice = state.notices.get(notice_id)
    assert notice is not None
    body = notice.as_dict()
    problem = state.notices.problem(notice_id)
    if problem:
        body["problem"] = f"not played: {problem}"
    return body


async def list_notices(request: web.Request, state: AdminState, actor: str) -> web.StreamResponse:
    return web.json_response({"notices": [_notice_json(state, n.id) for n in state.notices.notices()]})


async def put_notice(request: web.Request, state: AdminState, actor: str) -> web.StreamResponse:
    notice_id = request.match_info["id"]
    try:
        data = await request.json()
    except (ValueError, UnicodeDecodeError) as exc:
        return _error(400, f"the body is not valid JSON: {exc}")
    if not isinstance(data, dict):
        return _error(400, 'the body must be a JSON object: {"group": ..., "prompt": ..., "active": true}')
    unknown = sorted(set(data) - set(_NOTICE_FIELDS))
    if unknown:
        return _error(400, f"unknown field(s) {', '.join(unknown)}; expected {', '.join(_NOTICE_FIELDS)}")
    group, prompt, active = data.get("group"), data.get("prompt"), data.get("active", True)
    for name, value in (("group", group), ("prompt", prompt)):
        if value is not None and not isinstance(value, str):
            return _error(400, f"{name} must be a string")
    if not isinstance(active, bool):
        return _error(400, "active must be true or false")
    try:
        await state.notices.publish(notice_id, group, prompt, active, actor=actor)
    except NoticeError as exc:
        return _error(400, str(exc))
    return web.json_response(_notice_json(state, notice_id))


async def delete_notice(request: web.Request, state: AdminState, actor: str) -> web.StreamResponse:
    notice_id = request.match_info["id"]
    try:
        await state.notices.withdraw(notice_id, actor=actor)
    except UnknownNotice:
        return _error(404, f"no notice {notice_id!r}")
    return web.json_response(_notice_json(state, notice_id))


def _int_param(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}")
    return value


async def get_audit(request: web.Request, state: AdminState, actor: str) -> web.StreamResponse:
    try:
        limit = _int_param(request, "limit", 100, 1, 1000)
        before = _int_param(request, "before", None, 1, 2**63 - 1)
    except ValueError as exc:
        return _error(400, str(exc))
    assert limit is not None
    return web.json_response({"entries": await read_audit(state.engine, limit, before)})


async def get_complaints(request: web.Request, state: AdminState, actor: str) -> web.StreamResponse:
    month_text = request.query.get("month") or datetime.now(UTC).strftime("%Y-%m")
    match = _MONTH.fullmatch(month_text)
    if match is None or not 1 <= int(match[2]) <= 12 or not 1900 <= int(match[1]) <= 9998:
        return _error(400, f"month must be YYYY-MM (e.g. 2024-05), not {month_text!r}")
    counts = await complaint_counts(state.engine, int(match[1]), int(match[2]))
    return web.json_response({"month": month_text, "counts": counts, "total": sum(counts.values())})


def setup_admin_routes(app: web.Application, settings: AdminSettings) -> None:
    """Add the /admin routes; handlers find their state at ``app[ADMIN]``."""
    token = settings.token.get_secret_value().strip() if settings.token is not None else None
    app.router.add_get("/admin/notices", _guard(list_notices, token))
    app.router.add_put("/admin/notices/{id}", _guard(put_notice, token))
    app.router.add_delete("/admin/notices/{id}", _guard(delete_notice, token))
    app.router.add_get("/admin/audit", _guard(get_audit, token))
    app.router.add_get("/admin/complaints", _guard(get_complaints, token))


__all__ = ["ADMIN", "AdminState", "setup_admin_routes"]
