"""Admin HTTP API: targeted notices (R6), the audit log, monthly complaint counts (R4).

Every route needs ``Authorization: Bearer <admin.token>``. With no token in
the config the API answers 503: an admin API nobody secured stays shut.
Every change is written to the audit log in the same transaction as the
change itself; while the database is unreachable the routes that need it
answer 503 (the change is not made, so there is no audit entry to keep).
Errors are the one error body of ``ivr/web/common.py``, worded for the operator.

    GET    /admin/notices                    all notices, active or not
    PUT    /admin/notices/{id}               {"group", "prompt", "active"} publish / change
    DELETE /admin/notices/{id}               withdraw
    GET    /admin/audit?limit=100&before=ID  newest first
    GET    /admin/complaints?month=YYYY-MM   complaints by category (default: this month, UTC)

The routes themselves are listed in ``ivr/web/routes.py``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from aiohttp import web
from pydantic import Field, field_validator
from sqlalchemy.ext.asyncio import AsyncEngine

from callback.health import describe, is_outage
from ivr.storage.audit import read_audit
from ivr.storage.notices import NoticeBoard, NoticeError, UnknownNotice
from ivr.storage.records import complaint_counts
from ivr.web.common import ApiError, QueryString, RequestBody, admin_token_of


@dataclass
class AdminState:
    """What the handlers work on; set as ``app[ADMIN]`` once the database is up."""

    engine: AsyncEngine
    notices: NoticeBoard


ADMIN = web.AppKey("admin", AdminState)

ACTOR = "admin"  # one token, one name in the audit log
_MONTH = re.compile(r"(\d{4})-(\d{2})")

_P = ParamSpec("_P")
_R = TypeVar("_R")
_RETRY_AFTER = "5"  # seconds, for a request refused while the database is down


def needs_database(handler: Callable[_P, Awaitable[_R]]) -> Callable[_P, Awaitable[_R]]:
    """A handler whose database is unreachable answers 503 with a message (and Retry-After), not 500."""

    @functools.wraps(handler)
    async def handle(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await handler(*args, **kwargs)
        except ApiError:
            raise
        except Exception as exc:
            if not is_outage(exc):
                raise
            message = "the database is unreachable just now: nothing was changed; try again in a moment"
            raise ApiError(503, message, [("database", describe(exc))], headers={"Retry-After": _RETRY_AFTER}) from None

    return handle


async def admin_context(request: web.Request, token: str | None) -> tuple[AdminState, str]:
    """The admin state and the audit log's actor, once the token checks out (else 401/403/503)."""
    admin_token_of(request, token)
    state = request.app.get(ADMIN)
    if state is None:
        raise ApiError(503, "the admin API is not ready (server starting or stopping)")
    return state, ACTOR


class NoticeBody(RequestBody):
    """Publish, change or prepare a notice; a new notice needs both group and prompt."""

    group: str | None = Field(None, description="the caller group that hears it (ivr.groups)")
    prompt: str | None = Field(None, description="the prompt played (ivr.prompts or a built-in one)")
    active: bool = Field(True, description="played now (true) or kept for later (false)")


class AuditQuery(QueryString):
    limit: int = Field(100, ge=1, le=1000, description="entries at most, newest first")
    before: int | None = Field(None, ge=1, le=2**63 - 1, description="only entries older than this id (paging)")


class ComplaintsQuery(QueryString):
    month: str | None = Field(None, description="YYYY-MM, UTC; default: this month", examples=["2024-05"])

    @field_validator("month")
    @classmethod
    def _a_month(cls, value: str | None) -> str | None:
        if not value:
            return None
        match = _MONTH.fullmatch(value)
        if match is None or not 1 <= int(match[2]) <= 12 or not 1900 <= int(match[1]) <= 9998:
            raise ValueError(f"month must be YYYY-MM (e.g. 2024-05), not {value!r}")
        return value


def _notice_json(state: AdminState, notice_id: str) -> dict[str, Any]:
    notice = state.notices.get(notice_id)
    assert notice is not None
    body = notice.as_dict()
    problem = state.notices.problem(notice_id)
    if problem:
        body["problem"] = f"not played: {problem}"
    return body


async def list_notices(request: web.Request, state: AdminState, actor: str) -> web.StreamResponse:
    """Every notice, configured or added at runtime, active or not."""
    return web.json_response({"notices": [_notice_json(state, n.id) for n in state.notices.notices()]})


@needs_database
async def put_notice(request: web.Request, state: AdminState, actor: str, body: NoticeBody) -> web.StreamResponse:
    """Publish or change a notice (audited)."""
    notice_id = request.match_info["id"]
    try:
        await state.notices.publish(notice_id, body.group, body.prompt, body.active, actor=actor)
    except NoticeError as exc:
        text = str(exc)
        field = next(
            (f for f in ("group", "prompt") if f"unknown {f} " in text), "id" if "notice id" in text else "body"
        )
        raise ApiError(400, text, [(field, text)]) from None
    return web.json_response(_notice_json(state, notice_id))


@needs_database
async def delete_notice(request: web.Request, state: AdminState, actor: str) -> web.StreamResponse:
    """Withdraw a notice (audited); it stays listed, inactive."""
    notice_id = request.match_info["id"]
    try:
        await state.notices.withdraw(notice_id, actor=actor)
    except UnknownNotice:
        raise ApiError(404, f"no notice {notice_id!r}", [("id", "no such notice")]) from None
    return web.json_response(_notice_json(state, notice_id))


@needs_database
async def get_audit(request: web.Request, state: AdminState, actor: str, query: AuditQuery) -> web.StreamResponse:
    """The audit log, newest first."""
    return web.json_response({"entries": await read_audit(state.engine, query.limit, query.before)})


@needs_database
async def get_complaints(
    request: web.Request, state: AdminState, actor: str, query: ComplaintsQuery
) -> web.StreamResponse:
    """R4: complaints of one month by category."""
    month_text = query.month or datetime.now(UTC).strftime("%Y-%m")
    year, month = (int(part) for part in month_text.split("-"))
    counts = await complaint_counts(state.engine, year, month)
    return web.json_response({"month": month_text, "counts": counts, "total": sum(counts.values())})


__all__ = ["ADMIN", "AdminState", "admin_context", "needs_database"]
