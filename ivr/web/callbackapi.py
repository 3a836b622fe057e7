"""Agents' HTTP API for working the callback lists (R2, R10, R14, R18, R19).

Every route needs a logged-in agent (ivr/web/sessions.py: cookie, bearer token or HTTP Basic)::

    GET  /callbacks?state=due,booked&mine=1&queue=general
    POST /callbacks                         an agent books one: {"number", "queue", "not_before"?, "notes"?}
    POST /callbacks/{id}/claim | /release
    POST /callbacks/{id}/call               click-to-call: your phone rings, then the customer's
    POST /callbacks/{id}/outcome            {"outcome": "completed" | "no_answer" | "busy" | "failed",
                                             "notes": "...", "follow_up": true}
    POST /callbacks/{id}/reschedule         {"not_before": ISO 8601, "window_end": ISO 8601 (optional)}
    POST /callbacks/{id}/give-up            {"notes": "..."}
    POST /callbacks/{id}/notes              {"notes": "..."}
    POST /callbacks/{id}/reassign           {"agent": "8002"}             (supervisors)
    GET  /callbacks/{id}/message            the caller's recorded message (audio/wav)
    GET  /callbacks/handover                every open callback and promise (R19, supervisors; callback/handover.py)

An agent sees the callbacks waiting (booked, due) and its own claimed ones,
and acts only on callbacks it holds; supervisors see and act on all. The
claim itself (a lease) is the store's: two agents never hold one callback.
Errors are the one error body of ``ivr/web/common.py``, worded for the agent; a
failed click-to-call is a 502 carrying the dialer's reason and the callback as it stays. While the
database is unreachable every route that reads or writes it answers 503 with ``Retry-After``
(:func:`needs_database`), never 500.
The routes are listed in ``ivr/web/routes.py``, the page in ``ivr/web/page.py``.

The module is long because it has one small handler per agent action, each
with its own refusals, and they share the holder checks kept here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from aiohttp import web
from pydantic import AfterValidator, AwareDatetime, Field, field_validator

from callback.handover import handover_json
from callback.rules import ACTIVE_STATES, BOOKED, DUE, FOLLOW_UP, IN_PROGRESS, OFFERED, STATES
from callback.store import AlreadyBooked, Callback, Conflict, NotFound
from ivr.calls.dialer import DialError
from ivr.web.admin import needs_database
from ivr.web.common import ApiError, QueryString, RequestBody, field_error
from ivr.web.queueapi import QUEUES
from ivr.web.sessions import CallbackService, Who, iso, registrar_of

log = logging.getLogger(__name__)

MAX_NOTES = 4000
_WAITING = (BOOKED, DUE)
_HELD = (OFFERED, IN_PROGRESS)


def callback_json(cb: Callback) -> dict[str, Any]:
    """A callback for the API: every field but the server's file path of the message."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cb):
        value = getattr(cb, f.name)
        if f.name == "message_path":
            continue
        out[f.name] = iso(value) if isinstance(value, datetime) else value
    out["has_message"] = bool(cb.message_path)
    return out


# -- request models -------------------------------------------------------------------------


def _clean_notes(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if len(value) > MAX_NOTES:
        raise ValueError(f"{MAX_NOTES} characters at most")
    return value or None


Notes = Annotated[
    str | None, AfterValidator(_clean_notes), Field(description=f"free text, {MAX_NOTES} characters at most")
]


_EARLIEST, _LATEST = datetime(1900, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC)


def _in_utc_range(value: datetime) -> datetime:
    """A time with room for the lists' arithmetic (margins, retries): ``9999-12-31T23:59:59-23:59`` parses, but
    lies after the last UTC datetime, and a margin added to 9999-12-31 overflows."""
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not _EARLIEST <= utc < _LATEST:
        raise ValueError("the time must lie between the years 1900 and 8999 (UTC)")
    return value


When = Annotated[
    AwareDatetime,
    AfterValidator(_in_utc_range),
    Field(description="ISO 8601 with a time zone", examples=["2024-05-17T14:30:00+02:00"]),
]


class CallbackBody(RequestBody):
    empty_is_object: ClassVar[bool] = True  # the page posts some actions with no body at all


class BookBody(CallbackBody):
    """An agent books a callback for a customer, from now or from the time picked."""

    number: str = Field(min_length=3, max_length=32, pattern=r"^\+*[0-9]+$", description="the customer's number")
    queue: str = Field(min_length=1, description="the queue the callback belongs to")
    not_before: When | None = None
    window_end: When | None = None
    notes: Notes = None


class OutcomeBody(CallbackBody):
    """How the call went; a completed case may book a follow-up call (R18)."""

    outcome: Literal["completed", "no_answer", "busy", "failed"]
    notes: Notes = None
    follow_up: bool = Field(False, description="R18: book a satisfaction call after callbacks.follow_up_delay")


class RescheduleBody(CallbackBody):
    """A new time agreed with the customer."""

    not_before: When
    window_end: When | None = None


class GiveUpBody(CallbackBody):
    notes: Notes = None


def _some_notes(value: str) -> str:
    notes = _clean_notes(value)
    if notes is None:
        raise ValueError("send some text")
    return notes


class NotesBody(CallbackBody):
    notes: Annotated[str, AfterValidator(_some_notes), Field(description=f"{MAX_NOTES} characters at most")]


class ReassignBody(CallbackBody):
    agent: str = Field(min_length=1, description="the agent who takes it over")


class ListQuery(QueryString):
    state: str = Field("", description=f"comma-separated states ({', '.join(STATES)}) or all; default: the open ones")
    mine: str = Field("", description="1, true or yes: only the callbacks you hold")
    queue: str | None = None
    agent: str | None = Field(None, description="supervisors: the callbacks one agent holds")
    limit: int = Field(200, ge=1, le=1000)

    @field_validator("state")
    @classmethod
    def _known_states(cls, value: str) -> str:
        unknown = [s for s in _split(value) if s not in STATES and s != "all"]
        if unknown:
            raise ValueError(f"unknown state(s) {', '.join(unknown)}; states: {', '.join(STATES)}, or all")
        return value

    @property
    def states(self) -> list[str]:
        wanted = _split(self.state)
        return list(STATES) if "all" in wanted else wanted

    @property
    def only_mine(self) -> bool:
        return self.mine in ("1", "true", "yes")


def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


# -- the list -------------------------------------------------------------------------------


@needs_database
async def list_callbacks(request: web.Request, service: CallbackService, who: Who, query: ListQuery) -> web.Response:
    """The callbacks waiting and those you hold (supervisors: any, by state, agent and queue)."""
    wanted, mine, queue, limit = query.states, query.only_mine, query.queue or None, query.limit
    store = service.store
    found: list[Callback]
    if who.supervisor:
        states = wanted or list(ACTIVE_STATES)
        agent = who.agent if mine else (query.agent or None)
        found = list(await store.list(states=states, agent=agent, queue=queue, limit=limit))
    else:
        if query.agent not in (None, who.agent):
            raise ApiError(403, "only supervisors see other agents' callbacks", [("agent", "only your own")])
        beyond = [s for s in wanted if s not in ACTIVE_STATES]
        if beyond:
            message = f"agents see waiting and their own claimed callbacks, not {', '.join(beyond)} ones"
            raise ApiError(403, message, [("state", message)])
        held = [s for s in (wanted or _HELD) if s in _HELD]
        waiting = [s for s in (wanted or _WAITING) if s in _WAITING]
        found = await store.agent_view(who.agent, held=held, waiting=[] if mine else waiting, queue=queue, limit=limit)
    return web.json_response(
        {
            "agent": who.agent,
            "role": who.role,
            "now": iso(service.clock()),
            "callbacks": [callback_json(cb) for cb in found],
        }
    )


@needs_database
async def create(request: web.Request, service: CallbackService, who: Who, body: BookBody) -> web.StreamResponse:
    """An agent books a callback for a complex enquiry (R2, R14), from now or from the time they pick."""
    live = request.app.get(QUEUES)
    if live is not None and body.queue not in live.engine.queues:
        raise field_error(400, "queue", f"no queue {body.queue!r}; queues: {', '.join(sorted(live.engine.queues))}")
    now = service.clock()
    start = body.not_before.astimezone(UTC) if body.not_before is not None else now
    if start < now - timedelta(minutes=1):
        raise field_error(400, "not_before", "not_before is in the past: pick a time to come")
    end = body.window_end.astimezone(UTC) if body.window_end is not None else None
    if end is not None and end <= start:
        raise field_error(400, "window_end", "window_end must be after not_before")
    promised = end or start + timedelta(seconds=service.settings.promise_margin)
    try:
        booked = await service.store.book(
            queue=body.queue, number=body.number, arrived_at=now, promised_by=promised, now=now,
            not_before=start, window_end=end, created_by=who.agent,
        )  # fmt: skip
    except AlreadyBooked as exc:
        raise ApiError(409, f"{body.number} already has callback {exc.existing.id} open in {body.queue}") from None
    except (Conflict, ValueError) as exc:
        raise ApiError(400, str(exc)) from None
    if body.notes:
        booked = await service.store.add_notes(booked.id, agent=who.agent, now=now, notes=body.notes)
    return web.json_response({"callback": callback_json(booked)}, status=201)


# -- acting on one callback ---------------------------------------------------------------------


MAX_ID = 2**63 - 1  # the database's integer: a larger id names no callback (and would overflow the driver)


def _id(request: web.Request) -> int:
    text = request.match_info["id"]
    # the length first: int() of thousands of digits is refused (and slow); \d also matches non-ASCII digits
    cb_id = int(text) if len(text) <= 19 and text.isascii() and text.isdigit() else 0
    if not 1 <= cb_id <= MAX_ID:
        raise ApiError(404, f"no callback {text[:40]!r}", [("id", "no such callback")])
    return cb_id


async def _get(service: CallbackService, cb_id: int) -> Callback:
    try:
        cb = await service.store.get(cb_id)
    except NotFound:
        cb = None
    if cb is None:
        raise ApiError(404, f"no callback {cb_id}", [("id", "no such callback")])
    return cb


async def _held(request: web.Request, service: CallbackService, who: Who, doing: str) -> Callback:
    """The callback of the request when ``who`` may act on it: its claimer, or any supervisor."""
    cb = await _get(service, _id(request))
    if who.supervisor:
        return cb
    if cb.claimed_by is not None and cb.claimed_by != who.agent and cb.state in _HELD:
        raise ApiError(403, f"callback {cb.id} is claimed by {cb.claimed_by}: only they or a supervisor can {doing}")
    if cb.claimed_by != who.agent or cb.state not in _HELD:
        raise ApiError(409, f"claim callback {cb.id} first, then {doing}")
    return cb


def _actor(cb: Callback, who: Who) -> str:
    """Whose claim the store checks: a supervisor acts on the claimer's behalf."""
    if who.supervisor and cb.claimed_by is not None:
        return cb.claimed_by
    return who.agent


def _signed(cb: Callback, who: Who, notes: str | None) -> str | None:
    """Notes written by a supervisor for the claimer say so (the store stamps them with the claimer)."""
    if not who.supervisor or cb.claimed_by in (None, who.agent):
        return notes
    return f"(supervisor {who.agent}) {notes}" if notes else f"(recorded by supervisor {who.agent})"


def _done(cb: Callback, **extra: Any) -> web.Response:
    return web.json_response({"callback": callback_json(cb), **extra})


async def _run(action: Awaitable[Callback]) -> Callback:
    """Run a store change; its refusals become the 4xx the agent reads."""
    try:
        return await action
    except NotFound as exc:
        raise ApiError(404, str(exc) or "no such callback") from None
    except Conflict as exc:
        raise ApiError(409, str(exc) or "the callback changed meanwhile: reload the list") from None
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


@needs_database
async def claim(request: web.Request, service: CallbackService, who: Who) -> web.StreamResponse:
    """Claim a callback: a lease of callbacks.lease_seconds; two agents never hold one."""
    return _done(await _run(service.store.claim(_id(request), agent=who.agent, now=service.clock())))


@needs_database
async def release(request: web.Request, service: CallbackService, who: Who) -> web.StreamResponse:
    """Put it back for anyone."""
    cb = await _held(request, service, who, "release it")
    return _done(await _run(service.store.release(cb.id, agent=_actor(cb, who), now=service.clock())))


@needs_database
async def call(request: web.Request, service: CallbackService, who: Who) -> web.StreamResponse:
    """Click-to-call: your phone rings, then the customer's (502 with the dialer's reason when it cannot)."""
    cb = await _get(service, _id(request))
    # your own phone rings: you must hold the claim, supervisors too (reassign it to yourself first)
    if cb.claimed_by is not None and cb.claimed_by != who.agent and cb.state in _HELD:
        raise ApiError(403, f"callback {cb.id} is claimed by {cb.claimed_by}: only they can call the customer")
    if cb.claimed_by != who.agent or cb.state not in _HELD:
        raise ApiError(409, f"claim callback {cb.id} first, then call the customer")
    if cb.state == IN_PROGRESS:
        raise ApiError(409, f"a call for callback {cb.id} is already under way: record its outcome first")
    try:
        # the agent's phone rings first; the attempt starts (in_progress) once it is answered
        await service.dialer.click_to_call(cb, who.agent)
    except DialError as exc:
        # nothing was dialled: the callback stays claimed, as it was
        reason = str(exc) or "the call could not be placed"
        try:
            now_cb: dict[str, Any] | None = callback_json(await _get(service, cb.id))
        except ApiError:
            now_cb = None
        raise ApiError(502, reason, extra={"callback": now_cb}) from None
    return _done(await _get(service, cb.id), calling=True)


@needs_database
async def outcome(request: web.Request, service: CallbackService, who: Who, body: OutcomeBody) -> web.StreamResponse:
    """Record how the call went (R10: a callback that fails for good sends the customer a text)."""
    cb = await _held(request, service, who, "record the outcome")
    if body.follow_up and body.outcome != "completed":
        raise field_error(400, "follow_up", "a follow-up call is booked only for a completed case")
    if body.follow_up and cb.kind == FOLLOW_UP:
        message = "this is already the follow-up call: record its result without another follow-up"
        raise field_error(400, "follow_up", message)
    now = service.clock()
    done = await _run(
        service.store.record_outcome(
            cb.id, agent=_actor(cb, who), now=now, outcome=body.outcome, notes=_signed(cb, who, body.notes)
        )
    )
    extra: dict[str, Any] = {}
    if body.follow_up:
        extra["follow_up"], problem = await _book_follow_up(service, done, who, now)
        if problem:
            extra["follow_up_problem"] = problem
    if done.state == "failed" and done.kind != FOLLOW_UP:
        _tell_not_reached(service, done)
    return _done(done, **extra)


async def _book_follow_up(
    service: CallbackService, cb: Callback, who: Who, now: datetime
) -> tuple[dict[str, Any] | None, str | None]:
    """R18: a satisfaction call after ``follow_up_delay``; its result is the outcome recorded on it."""
    settings = service.settings
    due = now + timedelta(seconds=settings.follow_up_delay)
    try:
        booked = await service.store.book(
            queue=cb.queue,
            number=cb.number,
            arrived_at=due,  # in line by when it is due, not ahead of callers waiting then
            promised_by=due + timedelta(seconds=settings.follow_up_delay),
            now=now,
            not_before=due,
            kind=FOLLOW_UP,
            parent_id=cb.id,
            created_by=who.agent,
        )
    except AlreadyBooked as exc:
        return None, f"not booked: the customer already has callback {exc.existing.id} open in {cb.queue}"
    except (Conflict, ValueError) as exc:
        return None, f"not booked: {exc}"
    return callback_json(booked), None


def _tell_not_reached(service: CallbackService, cb: Callback) -> None:
    """R10: a callback that will not be made gets a text that explains and points to self-service."""
    try:
        service.send_text(
            cb.number,
            "Frontdesk: we tried to call you back but could not reach you, so we have closed your callback. "
            "Please call us again, or use our self-service on the web, in the app or by text message.",
            "callback",
        )
    except Exception:  # the text is a courtesy: the outcome is already recorded
        log.exception("could not queue the text for callback %s", cb.id)


@needs_database
async def reschedule(
    request: web.Request, service: CallbackService, who: Who, body: RescheduleBody
) -> web.StreamResponse:
    """A new time agreed with the customer: the callback goes back to booked."""
    not_before = body.not_before.astimezone(UTC)
    window_end = body.window_end.astimezone(UTC) if body.window_end is not None else None
    now = service.clock()
    if not_before < now - timedelta(minutes=1):
        raise field_error(400, "not_before", "not_before is in the past: pick a time to come")
    if window_end is not None and window_end <= not_before:
        raise field_error(400, "window_end", "window_end must be after not_before")
    cb = await _held(request, service, who, "reschedule it")
    done = await _run(
        service.store.reschedule(cb.id, agent=_actor(cb, who), now=now, not_before=not_before, window_end=window_end)
    )
    return _done(done)


@needs_database
async def give_up(request: web.Request, service: CallbackService, who: Who, body: GiveUpBody) -> web.StreamResponse:
    """Close it unreached (R10: the customer gets a text)."""
    cb = await _held(request, service, who, "give it up")
    now = service.clock()
    done = await _run(service.store.give_up(cb.id, agent=_actor(cb, who), now=now, notes=_signed(cb, who, body.notes)))
    if done.kind != FOLLOW_UP:
        _tell_not_reached(service, done)
    return _done(done)


@needs_database
async def add_notes(request: web.Request, service: CallbackService, who: Who, body: NotesBody) -> web.StreamResponse:
    """Add notes, kept with who wrote them."""
    cb = await _held(request, service, who, "add notes")
    # a supervisor may annotate any callback: written in the name of whoever holds (or set up) it
    actor = (cb.claimed_by or cb.created_by) if who.supervisor else who.agent
    notes = body.notes
    if who.supervisor and actor != who.agent:
        notes = f"(supervisor {who.agent}) {notes}"
    return _done(await _run(service.store.add_notes(cb.id, agent=actor, now=service.clock(), notes=notes)))


@needs_database
async def reassign(request: web.Request, service: CallbackService, who: Who, body: ReassignBody) -> web.StreamResponse:
    """Supervisors hand a callback to another agent."""
    if not who.supervisor:
        raise ApiError(403, "only supervisors can reassign callbacks")
    if body.agent not in registrar_of(request, service).credentials:
        raise field_error(400, "agent", f"no agent {body.agent!r}")
    return _done(await _run(service.store.reassign(_id(request), to_agent=body.agent, now=service.clock())))


def message_file(recordings_dir: Path, message_path: str) -> Path | None:
    """The recording's file when it lies inside ``recordings_dir`` (a path in the database is not trusted)."""
    root = recordings_dir.resolve()
    given = Path(message_path)
    # written as recordings_dir / name; a bare name is read inside recordings_dir
    candidates = [given] if given.is_absolute() else [given, recordings_dir / given]
    for candidate in candidates:
        try:
            real = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if real.is_relative_to(root) and real.is_file():
            return real
    return None


@needs_database
async def message(request: web.Request, service: CallbackService, who: Who) -> web.StreamResponse:
    """The caller's recorded message (audio/wav), for its claimer or a supervisor."""
    cb = await _held(request, service, who, "play the message")
    path = message_file(service.recordings_dir, cb.message_path) if cb.message_path else None
    if path is None:
        raise ApiError(404, f"callback {cb.id} has no recorded message")
    return web.FileResponse(
        path,
        headers={
            "Content-Type": "audio/wav",
            "Content-Disposition": f'inline; filename="callback-{cb.id}.wav"',
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, no-store",
        },
    )


@needs_database
async def handover(request: web.Request, service: CallbackService, who: Who) -> web.StreamResponse:
    """R19: every open callback and its promise, for the next shift (supervisors)."""
    if not who.supervisor:
        raise ApiError(403, "only supervisors see the shift handover")
    now = service.clock()
    open_callbacks = await service.store.handover(now)
    counts = await service.store.counts_by_state()
    return web.json_response(handover_json(open_callbacks, counts, now))


__all__ = ["MAX_NOTES", "callback_json", "message_file"]
