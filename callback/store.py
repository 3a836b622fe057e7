"""The durable callback list: booking, dedupe, claiming with a lease, outcomes, expiry, handover.

Theory of operation
-------------------
Every method is one database transaction (an optimistic retry may run a
second) and takes ``now`` (aware UTC), so tests drive it on a virtual clock.
The states and the rules that move a callback between them are in
``callback/rules.py``; this module applies them:

- :meth:`CallbackStore.book` commits before it returns: the caller hears
  "your callback is booked" only after that (the durability rule). A unique
  partial index allows one active callback per number and queue, so two
  simultaneous bookings cannot both succeed; the loser gets
  :class:`AlreadyBooked` with the one that exists.
- A booking from the IVR carries an idempotency key (``booking_key``, unique):
  tried again after a COMMIT whose outcome was unknown, it returns the row the
  first try wrote instead of writing a second.
- A change to one callback reads it (``SELECT ... FOR UPDATE`` on
  PostgreSQL), lets the rules decide, and writes it with
  ``UPDATE ... WHERE id = ? AND version = ?``. SQLite has no row locks, so
  there the version check is the guard: a writer that lost the race reads
  again and decides again.
- :meth:`CallbackStore.claim_next` is one statement,
  ``UPDATE ... WHERE id = (SELECT the first due ... FOR UPDATE SKIP LOCKED)
  AND state = 'due'``: on PostgreSQL concurrent agents skip each other's
  rows, on SQLite the statement holds the database's single write lock. No
  callback goes to two agents.
- An agent acts only on a callback it holds: ``claimed_by`` is the agent and
  (while offered) the lease has not lapsed. Anything else raises
  :class:`Conflict`, worded for the person who clicked.

On SQLite one process's writes also queue on an in-process lock, so they wait
for each other without SQLite's sleeping busy handler.

The module is long because :class:`CallbackStore` is the one
writer of the ``callbacks`` table, and each of its methods is one guarded
transaction (version check, row lock, holder check); kept in one class, every
way a callback changes can be read next to the guards that make it safe.
"""

from __future__ import annotations

import asyncio
import builtins
import re
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, DateTime, Row, Table, and_, bindparam, case, func, or_, select, true, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from callback.base import utc
from callback.models import CallbackRow
from callback.rules import (
    ACTIVE_STATES,
    BOOKED,
    CALLBACK,
    CANCELLED,
    CLOSED_STATES,
    COMPLETED,
    DUE,
    EXPIRABLE_STATES,
    EXPIRED,
    FAILED,
    IN_PROGRESS,
    KINDS,
    OFFERED,
    OUTCOMES,
    RETRY_OUTCOMES,
    STATES,
    Callback,
    RetryPolicy,
    aware_utc,
    next_state_after_no_answer,
    order_key,
    promise_at_risk,
)

T = cast(Table, CallbackRow.__table__)
COLUMNS = tuple(T.c)
_DATETIMES = frozenset(c.name for c in COLUMNS if isinstance(c.type, DateTime))
_NUMBER = re.compile(r"\+?[0-9]{1,31}")
_OPTIMISTIC_TRIES = 5
_GROUP_COMMIT = 500  # bookings in one SQLite transaction at most
_EXISTS = select(T.c.id).where(T.c.id == bindparam("id"))
_ACTIVE_FOR = select(*COLUMNS).where(
    T.c.number == bindparam("number"), T.c.queue == bindparam("queue"), T.c.state.in_(ACTIVE_STATES)
)
_BY_KEY = select(*COLUMNS).where(T.c.booking_key == bindparam("booking_key"))
DEFAULT_RETRY = RetryPolicy()


class AlreadyBooked(Exception):
    """The number already has an active callback in this queue (``existing``)."""

    def __init__(self, existing: Callback) -> None:
        self.existing = existing
        super().__init__(
            f"{existing.number} already has a callback in queue {existing.queue} "
            f"(#{existing.id}, {existing.state}, booked {_hm(existing.booked_at)})"
        )


class NotFound(Exception):
    """No callback with that id."""


class Conflict(Exception):
    """The callback is not in a state that allows this, or someone else holds it; the message says which."""


def _hm(value: datetime | None) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S} UTC"


def _to_callback(row: Row[Any]) -> Callback:
    values = dict(row._mapping)
    for name in _DATETIMES:
        if values[name] is not None:
            values[name] = utc(values[name])
    values["promise_warned"] = bool(values["promise_warned"])
    return Callback(**values)


def _note(existing: str | None, now: datetime, who: str, text: str | None) -> str | None:
    """Notes are a running log: each addition on its own line, stamped with when and who."""
    if not text or not text.strip():
        return existing
    line = f"[{now:%Y-%m-%d %H:%M} {who}] {text.strip()}"
    return line if not existing else f"{existing}\n{line}"


def _check_name(value: str, what: str, longest: int = 64) -> str:
    if not value or len(value) > longest or value != value.strip():
        raise ValueError(f"{what} must be 1 to {longest} characters without surrounding spaces, got {value!r}")
    return value


def _closed_message(cb: Callback) -> str:
    why = f" ({cb.close_reason})" if cb.close_reason else ""
    return f"callback #{cb.id} is already {cb.state}{why} since {_hm(cb.closed_at)}"


def _require_holder(cb: Callback, agent: str, now: datetime, action: str, *, lapsed_ok: bool = False) -> None:
    """The agent may ``action`` only a callback it has claimed, while its claim lasts."""
    if cb.state in CLOSED_STATES:
        raise Conflict(f"cannot {action}: {_closed_message(cb)}")
    if cb.state not in (OFFERED, IN_PROGRESS):
        raise Conflict(f"cannot {action}: callback #{cb.id} is {cb.state}, not claimed by anyone; claim it first")
    if cb.claimed_by != agent:
        raise Conflict(f"cannot {action}: callback #{cb.id} is claimed by {cb.claimed_by}, not by you ({agent})")
    if cb.state == OFFERED and not lapsed_ok and (cb.lease_until is None or cb.lease_until <= now):
        lapsed = _hm(cb.lease_until)
        raise Conflict(f"cannot {action}: your claim on callback #{cb.id} lapsed at {lapsed}; claim it again")


def _closing(now: datetime, state: str, reason: str) -> dict[str, Any]:
    return {"state": state, "closed_at": now, "close_reason": reason, "lease_until": None, "next_attempt_at": None}


class _SqliteWriter:
    """One per SQLite engine (and event loop) in this process: its writes take turns on one lock.

    Bookings made while another write holds the lock wait in ``pending``; the
    next booking to get the lock writes all of them in one transaction (group
    commit), and each waiting caller returns once that commit is done.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = asyncio.Lock()
        self.pending: builtins.list[_Booking] = []


@dataclass
class _Booking:
    values: dict[str, Any]
    done: asyncio.Future[Callback | None]


_sqlite_writers: weakref.WeakKeyDictionary[Any, _SqliteWriter] = weakref.WeakKeyDictionary()


def _sqlite_writer(engine: AsyncEngine) -> _SqliteWriter:
    loop = asyncio.get_running_loop()
    writer = _sqlite_writers.get(engine.sync_engine)
    if writer is None or writer.loop is not loop:
        writer = _sqlite_writers[engine.sync_engine] = _SqliteWriter(loop)
    return writer


class CallbackStore:
    """The callback list on a database; share one per engine (it is cheap to make more)."""

    def __init__(
        self, engine: AsyncEngine, retry: RetryPolicy = DEFAULT_RETRY, lease: timedelta = timedelta(minutes=5)
    ) -> None:
        if lease <= timedelta(0):
            raise ValueError(f"the lease must be positive, got {lease}")
        self.engine = engine
        self.retry = retry
        self.lease = lease
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._sqlite = engine.dialect.name == "sqlite"
        dialect_insert = sqlite_insert if self._sqlite else postgresql_insert
        # a second active booking for the number and queue, or a booking key already written, is not an
        # error here: book() reports the one that exists (no conflict target: every unique index counts)
        self._insert = dialect_insert(T).on_conflict_do_nothing().returning(*COLUMNS)

    # -- plumbing ------------------------------------------------------------------

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncSession]:
        """One write transaction, committed on the way out."""
        if not self._sqlite:
            async with self._sessions() as session, session.begin():
                yield session
            return
        async with _sqlite_writer(self.engine).lock, self._sessions() as session, session.begin():
            yield session

    async def _load(self, session: AsyncSession, id: int, *, lock: bool = False) -> Callback:
        stmt = select(*COLUMNS).where(T.c.id == id)
        if lock:
            stmt = stmt.with_for_update()  # PostgreSQL; SQLite relies on the version check
        row = (await session.execute(stmt)).first()
        if row is None:
            raise NotFound(f"there is no callback #{id}")
        return _to_callback(row)

    async def _change(
        self, id: int, decide: Callable[[Callback], dict[str, Any]], *, version: int | None = None
    ) -> Callback:
        """Read callback ``id``, let ``decide`` return the new values (or raise Conflict), write them."""
        for _ in range(_OPTIMISTIC_TRIES):
            async with self._write() as session:
                cb = await self._load(session, id, lock=True)
                if version is not None and cb.version != version:
                    raise Conflict(
                        f"callback #{id} was changed meanwhile (now {cb.state}, version {cb.version}); "
                        "reload it and try again"
                    )
                values = decide(cb)
                stmt = (
                    update(T)
                    .where(T.c.id == id, T.c.version == cb.version)
                    .values(**values, version=cb.version + 1)
                    .returning(*COLUMNS)
                )
                row = (await session.execute(stmt)).first()
                if row is not None:
                    return _to_callback(row)
            # another writer changed it between our read and our write (SQLite): decide again
        raise Conflict(f"callback #{id} keeps changing under us; reload it and try again")

    async def _bulk(self, where: Any, values: dict[str, Any]) -> builtins.list[Callback]:
        stmt = update(T).where(where).values(**values, version=T.c.version + 1).returning(*COLUMNS)
        async with self._write() as session:
            rows = (await session.execute(stmt)).all()
        return sorted((_to_callback(r) for r in rows), key=order_key)

    async def _select(self, where: Any, limit: int | None = None, first: Any = None) -> builtins.list[Callback]:
        order = (T.c.arrived_at, T.c.id) if first is None else (first, T.c.arrived_at, T.c.id)
        stmt = select(*COLUMNS).where(where).order_by(*order)
        if limit is not None:
            stmt = stmt.limit(limit)
        async with self._sessions() as session:
            rows = (await session.execute(stmt)).all()
        return [_to_callback(r) for r in rows]

    # -- booking -------------------------------------------------------------------

    async def book(
        self,
        *,
        queue: str,
        number: str,
        arrived_at: datetime,
        promised_by: datetime,
        now: datetime,
        not_before: datetime | None = None,
        window_end: datetime | None = None,
        message_path: str | None = None,
        call_id: str | None = None,
        kind: str = CALLBACK,
        parent_id: int | None = None,
        created_by: str = "ivr",
        key: str | None = None,
    ) -> Callback:
        """Book a callback; it is committed when this returns (only then may the caller hear "booked").

        ``key`` makes the booking idempotent: booked again with the same key (a retry after
        a commit whose outcome was unknown), it returns the row the first attempt wrote.

        ``not_before`` is the slot's start (default ``now``: as soon as possible);
        a callback whose slot has come is due at once. Raises :class:`AlreadyBooked`
        when the number has an active callback in this queue, :class:`NotFound`
        for an unknown ``parent_id``, ``ValueError`` for bad input.
        """
        _check_name(queue, "queue")
        _check_name(created_by, "created_by")
        if not _NUMBER.fullmatch(number):
            raise ValueError(f"a callback number is digits with an optional leading +, at most 32, got {number!r}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        now = aware_utc(now, "now")
        start = aware_utc(not_before, "not_before") if not_before is not None else now
        end = aware_utc(window_end, "window_end") if window_end is not None else None
        if end is not None and end <= start:
            raise ValueError(f"the slot must end after it starts ({_hm(start)} .. {_hm(end)})")
        values: dict[str, Any] = {
            "queue": queue,
            "number": number,
            "kind": kind,
            "parent_id": parent_id,
            "state": DUE if start <= now else BOOKED,
            "arrived_at": aware_utc(arrived_at, "arrived_at"),
            "booked_at": now,
            "not_before": start,
            "window_end": end,
            "promised_by": aware_utc(promised_by, "promised_by"),
            "attempts": 0,
            "next_attempt_at": None,
            "claimed_by": None,
            "lease_until": None,
            "outcome": None,
            "notes": None,
            "message_path": message_path,
            "call_id": call_id,
            "created_by": created_by,
            "closed_at": None,
            "close_reason": None,
            "promise_warned": False,
            "version": 1,
            "booking_key": _check_name(key, "key") if key is not None else None,
        }
        for _ in range(3):
            if self._sqlite:
                result = await self._book_together(values)
            else:
                async with self._sessions() as session, session.begin():
                    [result] = await self._insert_bookings(session, [values])
            if isinstance(result, Exception):
                raise result
            if result is not None:
                return result
            # the number's active callback closed between our insert and our look-up: try again
        raise Conflict(f"{number} has a callback in queue {queue} that keeps changing; try again")

    async def _insert_bookings(
        self, session: AsyncSession, batch: builtins.list[dict[str, Any]]
    ) -> builtins.list[Callback | Exception | None]:
        """Insert each booking in ``session``'s transaction: the callback, or why not (None: look again)."""
        out: builtins.list[Callback | Exception | None] = []
        for values in batch:
            parent = values["parent_id"]
            if parent is not None and (await session.execute(_EXISTS, {"id": parent})).first() is None:
                out.append(NotFound(f"there is no callback #{parent} to follow up"))
                continue
            row = (await session.execute(self._insert, values)).first()
            if row is None and values["booking_key"] is not None:
                row = (await session.execute(_BY_KEY, values)).first()  # our own, written by an earlier try
                if row is not None:
                    out.append(_to_callback(row))
                    continue
            if row is None:
                row = (await session.execute(_ACTIVE_FOR, values)).first()
                out.append(None if row is None else AlreadyBooked(_to_callback(row)))
            else:
                out.append(_to_callback(row))
        return out

    async def _book_together(self, values: dict[str, Any]) -> Callback | Exception | None:
        """SQLite: queue the booking; whoever holds the write lock next commits every queued one at once."""
        writer = _sqlite_writer(self.engine)
        mine = _Booking(values, writer.loop.create_future())
        writer.pending.append(mine)
        while not mine.done.done():
            try:
                await writer.lock.acquire()
            except asyncio.CancelledError:
                # the caller went away before its turn: nothing was written for it, and nothing will be
                if mine in writer.pending:
                    writer.pending.remove(mine)
                raise
            try:
                if mine.done.done():
                    break
                batch, writer.pending[:] = writer.pending[:_GROUP_COMMIT], writer.pending[_GROUP_COMMIT:]
                write = asyncio.ensure_future(self._commit_bookings(batch))
                try:
                    await asyncio.shield(write)
                except asyncio.CancelledError:
                    # our caller gave up, the others in the batch did not: finish their commit first
                    await write
                    raise
            finally:
                writer.lock.release()
        try:
            return mine.done.result()
        except Exception as exc:  # noqa: BLE001 - the batch's error is this booking's error
            return exc

    async def _commit_bookings(self, batch: builtins.list[_Booking]) -> None:
        try:
            async with self._sessions() as session, session.begin():
                results = await self._insert_bookings(session, [b.values for b in batch])
        except Exception as exc:  # noqa: BLE001 - nothing was committed: each booking fails with the cause
            for booking in batch:
                booking.done.set_exception(exc)
            return
        except BaseException:
            for booking in batch:
                booking.done.set_exception(ConnectionError("the booking was interrupted"))
            raise
        for booking, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                booking.done.set_exception(result)
            else:
                booking.done.set_result(result)

    async def get(self, id: int) -> Callback:
        async with self._sessions() as session:
            return await self._load(session, id)

    async def active_for(self, number: str, queue: str) -> Callback | None:
        """The number's active callback in this queue, if it has one (a repeat caller)."""
        found = await self._select(and_(T.c.number == number, T.c.queue == queue, T.c.state.in_(ACTIVE_STATES)))
        return found[0] if found else None

    async def cancel(
        self, id: int, *, now: datetime, by: str, reason: str = "cancelled_by_caller", version: int | None = None
    ) -> Callback:
        """The caller (or someone for them) no longer wants the callback. Not while it is being called."""
        now = aware_utc(now, "now")

        def decide(cb: Callback) -> dict[str, Any]:
            if cb.state in CLOSED_STATES:
                raise Conflict(f"cannot cancel: {_closed_message(cb)}")
            if cb.state == IN_PROGRESS:
                raise Conflict(f"cannot cancel callback #{cb.id}: {cb.claimed_by} is calling the customer right now")
            return {**_closing(now, CANCELLED, reason), "notes": _note(cb.notes, now, by, f"cancelled ({reason})")}

        return await self._change(id, decide, version=version)

    async def close_for_number(
        self, number: str, queue: str, *, now: datetime, reason: str = "reached_agent"
    ) -> builtins.list[Callback]:
        """The caller got through to an agent before their callback (R10): close it (cancelled, ``reason``).

        A callback already being called is left alone. Returns the closed ones (the
        caller is then told by text).
        """
        now = aware_utc(now, "now")
        where = and_(T.c.number == number, T.c.queue == queue, T.c.state.in_(EXPIRABLE_STATES))
        return await self._bulk(where, _closing(now, CANCELLED, reason))

    # -- the dispatcher ------------------------------------------------------------

    async def promote_due(self, now: datetime) -> int:
        """Booked callbacks whose slot has come become due. Returns how many."""
        now = aware_utc(now, "now")
        return len(await self._bulk(and_(T.c.state == BOOKED, T.c.not_before <= now), {"state": DUE}))

    def _due_where(self, now: datetime, queue: str | None) -> Any:
        where = and_(T.c.state == DUE, or_(T.c.next_attempt_at.is_(None), T.c.next_attempt_at <= now))
        return where if queue is None else and_(where, T.c.queue == queue)

    async def due(self, now: datetime, *, queue: str | None = None, limit: int = 100) -> builtins.list[Callback]:
        """Callbacks that may be dialled now, in the order they are served (the callers' arrival)."""
        return await self._select(self._due_where(aware_utc(now, "now"), queue), limit)

    async def release_lapsed(self, now: datetime) -> builtins.list[Callback]:
        """Offered callbacks whose lease lapsed (the agent went away) go back to due."""
        now = aware_utc(now, "now")
        where = and_(T.c.state == OFFERED, T.c.lease_until <= now)
        return await self._bulk(where, {"state": DUE, "claimed_by": None, "lease_until": None})

    # -- agents --------------------------------------------------------------------

    async def claim(self, id: int, *, agent: str, now: datetime, version: int | None = None) -> Callback:
        """Take a callback for ``self.lease``; claiming one's own again extends the lease."""
        _check_name(agent, "agent")
        now = aware_utc(now, "now")

        def decide(cb: Callback) -> dict[str, Any]:
            mine = {"claimed_by": agent, "lease_until": now + self.lease}
            if cb.state == DUE:
                return {"state": OFFERED, **mine}
            if cb.state == OFFERED:
                if cb.claimed_by == agent or cb.lease_until is None or cb.lease_until <= now:
                    return mine
                raise Conflict(f"callback #{cb.id} is claimed by {cb.claimed_by} until {_hm(cb.lease_until)}")
            if cb.state == IN_PROGRESS:
                if cb.claimed_by == agent:
                    return mine
                raise Conflict(f"callback #{cb.id}: {cb.claimed_by} is calling the customer right now")
            if cb.state == BOOKED:
                raise Conflict(f"callback #{cb.id} is booked for {_hm(cb.not_before)}; it is not due before its slot")
            raise Conflict(f"cannot claim: {_closed_message(cb)}")

        return await self._change(id, decide, version=version)

    async def claim_next(self, *, agent: str, now: datetime, queue: str | None = None) -> Callback | None:
        """Claim the first due callback (the earliest caller), atomically; None when nothing is due."""
        _check_name(agent, "agent")
        now = aware_utc(now, "now")
        first = (
            select(T.c.id)
            .where(self._due_where(now, queue))
            .order_by(T.c.arrived_at, T.c.id)
            .limit(1)
            .with_for_update(skip_locked=True)  # PostgreSQL: skip rows other agents are claiming
            .scalar_subquery()
        )
        stmt = (
            update(T)
            .where(T.c.id == first, T.c.state == DUE)
            .values(state=OFFERED, claimed_by=agent, lease_until=now + self.lease, version=T.c.version + 1)
            .returning(*COLUMNS)
        )
        async with self._write() as session:
            row = (await session.execute(stmt)).first()
        return None if row is None else _to_callback(row)

    async def release(self, id: int, *, agent: str, now: datetime, version: int | None = None) -> Callback:
        """Hand a claimed callback back: due again, for anyone.

        Released while in progress means the call was never placed (the agent's
        phone did not take it): that attempt is not counted. A call that reached
        the customer's phone gets an outcome instead (:meth:`record_outcome`).
        """
        now = aware_utc(now, "now")

        def decide(cb: Callback) -> dict[str, Any]:
            _require_holder(cb, agent, now, "release", lapsed_ok=True)
            attempts = cb.attempts - 1 if cb.state == IN_PROGRESS and cb.attempts > 0 else cb.attempts
            return {"state": DUE, "claimed_by": None, "lease_until": None, "attempts": attempts}

        return await self._change(id, decide, version=version)

    async def start_call(self, id: int, *, agent: str, now: datetime, version: int | None = None) -> Callback:
        """The agent is dialling the customer: in progress, one more attempt."""
        now = aware_utc(now, "now")

        def decide(cb: Callback) -> dict[str, Any]:
            _require_holder(cb, agent, now, "call")
            if cb.state == IN_PROGRESS:
                raise Conflict(f"the call to callback #{cb.id} is already under way")
            return {
                "state": IN_PROGRESS,
                "attempts": cb.attempts + 1,
                "lease_until": now + self.lease,
                "next_attempt_at": None,
            }

        return await self._change(id, decide, version=version)

    async def record_outcome(
        self,
        id: int,
        *,
        agent: str,
        now: datetime,
        outcome: str,
        notes: str | None = None,
        version: int | None = None,
    ) -> Callback:
        """How the call went: completed; no_answer/busy (retried after a delay, failed after the last
        attempt); failed. Recorded on an offered callback it counts as an attempt made outside start_call."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
        now = aware_utc(now, "now")

        def decide(cb: Callback) -> dict[str, Any]:
            _require_holder(cb, agent, now, f"record {outcome}")
            attempts = cb.attempts + (1 if cb.state == OFFERED else 0)
            values: dict[str, Any] = {"attempts": attempts, "outcome": outcome}
            values["notes"] = _note(cb.notes, now, agent, notes)
            if outcome == "completed":
                return {**values, **_closing(now, COMPLETED, "completed")}
            if outcome == "failed":
                return {**values, **_closing(now, FAILED, "failed")}
            assert outcome in RETRY_OUTCOMES
            state, at = next_state_after_no_answer(replace(cb, attempts=attempts), now, self.retry)
            if state == FAILED:
                return {**values, **_closing(now, FAILED, "retries_exhausted")}
            return {**values, "state": state, "next_attempt_at": at, "claimed_by": None, "lease_until": None}

        return await self._change(id, decide, version=version)

    async def reschedule(
        self,
        id: int,
        *,
        agent: str,
        now: datetime,
        not_before: datetime,
        window_end: datetime | None = None,
        promised_by: datetime | None = None,
        version: int | None = None,
    ) -> Callback:
        """The customer asked for another time: booked for the new slot (due at once if it has come).

        The new slot is the new promise (``promised_by`` defaults to the slot's end,
        or its start); the caller keeps their place in line once it is due.
        """
        now = aware_utc(now, "now")
        start = aware_utc(not_before, "not_before")
        end = aware_utc(window_end, "window_end") if window_end is not None else None
        if end is not None and end <= start:
            raise ValueError(f"the slot must end after it starts ({_hm(start)} .. {_hm(end)})")
        promise = aware_utc(promised_by, "promised_by") if promised_by is not None else (end or start)

        def decide(cb: Callback) -> dict[str, Any]:
            _require_holder(cb, agent, now, "reschedule")
            return {
                "state": DUE if start <= now else BOOKED,
                "not_before": start,
                "window_end": end,
                "promised_by": promise,
                "promise_warned": False,
                "next_attempt_at": None,
                "claimed_by": None,
                "lease_until": None,
                "notes": _note(cb.notes, now, agent, f"rescheduled to {_hm(start)}"),
            }

        return await self._change(id, decide, version=version)

    async def give_up(
        self, id: int, *, agent: str, now: datetime, notes: str | None = None, version: int | None = None
    ) -> Callback:
        """The agent stops trying (failed, ``gave_up``)."""
        now = aware_utc(now, "now")

        def decide(cb: Callback) -> dict[str, Any]:
            _require_holder(cb, agent, now, "give up")
            return {**_closing(now, FAILED, "gave_up"), "notes": _note(cb.notes, now, agent, notes)}

        return await self._change(id, decide, version=version)

    async def reassign(self, id: int, *, to_agent: str, now: datetime, version: int | None = None) -> Callback:
        """A supervisor hands a due or claimed callback to ``to_agent`` (with a fresh lease)."""
        _check_name(to_agent, "to_agent")
        now = aware_utc(now, "now")

        def decide(cb: Callback) -> dict[str, Any]:
            if cb.state in CLOSED_STATES:
                raise Conflict(f"cannot reassign: {_closed_message(cb)}")
            if cb.state == BOOKED:
                raise Conflict(f"callback #{cb.id} is booked for {_hm(cb.not_before)}; it is not due before its slot")
            return {
                "state": OFFERED if cb.state == DUE else cb.state,
                "claimed_by": to_agent,
                "lease_until": now + self.lease,
                "notes": _note(cb.notes, now, "supervisor", f"reassigned from {cb.claimed_by or '-'} to {to_agent}"),
            }

        return await self._change(id, decide, version=version)

    async def add_notes(
        self, id: int, *, agent: str, now: datetime, notes: str, version: int | None = None
    ) -> Callback:
        """Add to the notes of a callback the agent claimed or set up (also after it was closed)."""
        now = aware_utc(now, "now")
        if not notes.strip():
            raise ValueError("the notes are empty")

        def decide(cb: Callback) -> dict[str, Any]:
            if agent not in (cb.claimed_by, cb.created_by):
                raise Conflict(f"callback #{cb.id} is not yours to annotate: claim it first")
            return {"notes": _note(cb.notes, now, agent, notes)}

        return await self._change(id, decide, version=version)

    # -- monitors ------------------------------------------------------------------

    async def expire(self, now: datetime, max_age: timedelta) -> builtins.list[Callback]:
        """Close callbacks that waited longer than ``max_age`` (rules.expired); returns them (each gets a text)."""
        now = aware_utc(now, "now")
        cutoff = now - max_age
        # age counts from max(booked_at, not_before): both at or before the cutoff
        where = and_(T.c.state.in_(EXPIRABLE_STATES), T.c.booked_at <= cutoff, T.c.not_before <= cutoff)
        return await self._bulk(where, _closing(now, EXPIRED, "expired"))

    async def at_risk(
        self, now: datetime, forecast_start_for: Callable[[Callback], datetime]
    ) -> builtins.list[Callback]:
        """Waiting callbacks not yet warned whose forecast start is after their promise (the caller then
        sends the text and calls :meth:`mark_warned`)."""
        now = aware_utc(now, "now")
        waiting = await self._select(and_(T.c.state.in_(EXPIRABLE_STATES), T.c.promise_warned.is_(False)))
        return [cb for cb in waiting if promise_at_risk(cb, now, aware_utc(forecast_start_for(cb), "forecast"))]

    async def mark_warned(self, id: int) -> None:
        """The caller was told their promise is at risk: do not tell them twice."""
        stmt = update(T).where(T.c.id == id).values(promise_warned=True, version=T.c.version + 1)
        async with self._write() as session:
            result = await session.execute(stmt)
        if not getattr(result, "rowcount", 0):
            raise NotFound(f"there is no callback #{id}")

    async def handover(self, now: datetime) -> builtins.list[Callback]:
        """Every open callback at the end of a shift (R19): by queue, then place in line; with who holds it."""
        found = await self._select(T.c.state.in_(ACTIVE_STATES))
        return sorted(found, key=lambda cb: (cb.queue, *order_key(cb)))

    async def counts_by_state(self) -> dict[str, int]:
        """How many callbacks are in each state (every state present, 0 when none)."""
        async with self._sessions() as session:
            rows = (await session.execute(select(T.c.state, func.count()).group_by(T.c.state))).all()
        counts = dict.fromkeys(STATES, 0)
        counts.update({state: int(n) for state, n in rows})
        return counts

    async def oldest_waiting_age(self, now: datetime) -> float | None:
        """Seconds since the arrival of the earliest caller still waiting (due, or booked with its slot come)."""
        now = aware_utc(now, "now")
        waiting = or_(T.c.state == DUE, and_(T.c.state == BOOKED, T.c.not_before <= now))
        async with self._sessions() as session:
            oldest = await session.scalar(select(func.min(T.c.arrived_at)).where(waiting))
        if oldest is None:
            return None
        return max((now - utc(oldest)).total_seconds(), 0.0)

    async def list(
        self,
        *,
        states: Iterable[str] | None = None,
        agent: str | None = None,
        queue: str | None = None,
        limit: int = 200,
    ) -> builtins.list[Callback]:
        """Callbacks for a page or report, in order of the callers' arrival."""
        conditions: builtins.list[ColumnElement[bool]] = []
        if states is not None:
            wanted = builtins.list(states)
            unknown = set(wanted) - set(STATES)
            if unknown:
                raise ValueError(f"unknown state(s) {', '.join(sorted(unknown))}; states are {', '.join(STATES)}")
            conditions.append(T.c.state.in_(wanted))
        if agent is not None:
            conditions.append(T.c.claimed_by == agent)
        if queue is not None:
            conditions.append(T.c.queue == queue)
        return await self._select(and_(true(), *conditions), limit)

    async def agent_view(
        self,
        agent: str,
        *,
        held: Iterable[str],
        waiting: Iterable[str],
        queue: str | None = None,
        limit: int = 200,
    ) -> builtins.list[Callback]:
        """An agent's page in one read: those they hold in ``held`` states first, then the ``waiting`` ones for anyone.

        One statement, so a callback handed to the agent between two reads is never missing from both."""
        held, waiting = builtins.list(held), builtins.list(waiting)
        unknown = (set(held) | set(waiting)) - set(STATES)
        if unknown:
            raise ValueError(f"unknown state(s) {', '.join(sorted(unknown))}; states are {', '.join(STATES)}")
        mine = and_(T.c.state.in_(held), T.c.claimed_by == agent)
        where = or_(mine, T.c.state.in_(waiting))
        if queue is not None:
            where = and_(where, T.c.queue == queue)
        return await self._select(where, limit, first=case((mine, 0), else_=1))


__all__ = [
    "AlreadyBooked",
    "Callback",
    "CallbackStore",
    "Conflict",
    "NotFound",
    "RetryPolicy",
]
