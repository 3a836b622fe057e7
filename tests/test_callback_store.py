"""The durable callback list on SQLite and on a real PostgreSQL: booking, dedupe, place in line,
claims and leases, concurrent claiming, retries, expiry, R10 closing, follow-ups, handover, migrations."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from callback import base, db
from callback.outbox import Outbox
from callback.rules import ACTIVE_STATES, STATES
from callback.store import AlreadyBooked, Callback, CallbackStore, Conflict, NotFound, RetryPolicy

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
MIN = timedelta(minutes=1)
LEASE = timedelta(minutes=5)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'callbacks.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    eng = db.create_engine(db_url)
    await db.init_schema(eng)
    yield eng
    await eng.dispose()


@pytest.fixture
def store(engine: AsyncEngine) -> CallbackStore:
    return CallbackStore(engine, RetryPolicy(max_attempts=3, delay=timedelta(minutes=10)), lease=LEASE)


async def book(
    store: CallbackStore, number: str, *, arrived: datetime = T0, now: datetime = T0, **kw: object
) -> Callback:
    kw.setdefault("queue", "general")
    kw.setdefault("promised_by", now + HOUR)
    return await store.book(number=number, arrived_at=arrived, now=now, **kw)  # type: ignore[arg-type]


# -- migrations -------------------------------------------------------------------------------


def _schema_diff(conn: Connection) -> list[object]:
    ctx = MigrationContext.configure(conn, opts={"include_name": db.include_name, "compare_type": True})
    return list(compare_metadata(ctx, base.Base.metadata))


def _index_names(conn: Connection, table: str) -> set[str]:
    return {str(ix["name"]) for ix in inspect(conn).get_indexes(table)}


async def test_migration_matches_the_models_and_runs_twice(db_url: str) -> None:
    eng = db.create_engine(db_url)
    try:
        await db.init_schema(eng)
        await db.init_schema(eng)  # idempotent: nothing left to do
        async with eng.connect() as conn:
            assert await conn.run_sync(_schema_diff) == []
            assert (await conn.execute(text(f"SELECT version_num FROM {db.VERSION_TABLE}"))).scalar_one() == "0002"
            assert "uq_callbacks_active_number" in await conn.run_sync(_index_names, "callbacks")
    finally:
        await eng.dispose()


async def test_migration_adopts_an_outbox_made_by_create_all(db_url: str) -> None:
    """An install from before migrations has text_messages (and its rows): they stay."""
    from callback.outbox import TextMessage

    eng = db.create_engine(db_url)
    try:
        async with eng.begin() as conn:
            await conn.run_sync(lambda c: TextMessage.__table__.create(c))
        old = Outbox(eng, clock=lambda: T0)
        msg_id = await old.enqueue("+15550001", "hello", "callback")
        await db.init_schema(eng)
        async with eng.connect() as conn:
            assert await conn.run_sync(_schema_diff) == []
        assert (await Outbox(eng).get(msg_id)) is not None
        assert await CallbackStore(eng).counts_by_state() == dict.fromkeys(STATES, 0)
    finally:
        await eng.dispose()


async def test_the_partial_index_allows_one_active_callback_per_number_and_queue(engine: AsyncEngine) -> None:
    row = (
        "INSERT INTO callbacks (queue, number, kind, state, arrived_at, booked_at, not_before, promised_by, "
        "attempts, created_by, promise_warned, version) VALUES ('q', '+1', 'callback', :state, :t, :t, :t, :t, "
        "0, 'ivr', false, 1)"
    )
    async with engine.begin() as conn:
        for state in ("completed", "cancelled", "expired", "failed", "due"):
            await conn.execute(text(row), {"state": state, "t": T0})
    for state in ACTIVE_STATES:
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(text(row), {"state": state, "t": T0})


# -- booking ----------------------------------------------------------------------------------


async def test_a_booking_is_committed_when_book_returns(store: CallbackStore, db_url: str) -> None:
    cb = await book(store, "+15550100", message_path="/rec/1.wav", call_id="abc@host")
    other = db.create_engine(db_url)  # another process, as after a crash and restart
    try:
        seen = await CallbackStore(other).get(cb.id)
    finally:
        await other.dispose()
    assert seen == cb
    assert (seen.state, seen.number, seen.queue, seen.kind, seen.attempts, seen.version) == (
        "due",
        "+15550100",
        "general",
        "callback",
        0,
        1,
    )
    assert seen.booked_at == seen.not_before == T0 and seen.booked_at.tzinfo is not None
    assert (seen.message_path, seen.call_id, seen.created_by, seen.promise_warned) == (
        "/rec/1.wav",
        "abc@host",
        "ivr",
        False,
    )


async def test_one_active_callback_per_number_and_queue(store: CallbackStore) -> None:
    first = await book(store, "5550101")
    with pytest.raises(AlreadyBooked) as caught:
        await book(store, "5550101", now=T0 + MIN)
    assert caught.value.existing == first
    assert "already has a callback" in str(caught.value)
    assert await store.active_for("5550101", "general") == first
    other_queue = await book(store, "5550101", queue="billing")  # another queue is another list
    assert other_queue.id != first.id
    await store.cancel(first.id, now=T0 + MIN, by="caller")
    assert await store.active_for("5550101", "general") is None
    again = await book(store, "5550101", now=T0 + 2 * MIN)
    assert again.id != first.id and again.state == "due"


async def test_simultaneous_bookings_of_one_number_make_one_callback(db_url: str, engine: AsyncEngine) -> None:
    engines = [db.create_engine(db_url) for _ in range(8)]
    try:
        results = await asyncio.gather(
            *(book(CallbackStore(e), "+15550102", now=T0 + i * MIN) for i, e in enumerate(engines)),
            return_exceptions=True,
        )
    finally:
        for e in engines:
            await e.dispose()
    made = [r for r in results if isinstance(r, Callback)]
    refused = [r for r in results if isinstance(r, AlreadyBooked)]
    assert len(made) == 1 and len(refused) == 7, results
    assert all(r.existing.id == made[0].id for r in refused)


async def test_concurrent_bookings_in_one_process_commit_together_and_each_gets_its_answer(
    store: CallbackStore,
) -> None:
    numbers = [f"+1555{i:04d}" for i in range(40)] + ["+15550000"]  # the last one twice
    results = await asyncio.gather(*(book(store, n) for n in numbers), return_exceptions=True)
    assert sum(isinstance(r, Callback) for r in results) == 40
    assert sum(isinstance(r, AlreadyBooked) for r in results) == 1
    counts = await store.counts_by_state()
    assert counts["due"] == 40


async def test_callers_who_hang_up_mid_booking_do_not_hold_up_the_others(store: CallbackStore) -> None:
    tasks = [asyncio.create_task(book(store, f"+1556{i:04d}")) for i in range(30)]
    await asyncio.sleep(0)
    for task in tasks[::3]:
        task.cancel()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    made = [r for r in results if isinstance(r, Callback)]
    assert all(isinstance(r, Callback | asyncio.CancelledError) for r in results), results
    assert len(made) >= 20
    stored = await store.list(limit=1000)
    # every booking confirmed is stored; a hung-up one may be stored or not, but never twice
    assert {c.id for c in made} <= {c.id for c in stored}
    assert len({c.number for c in stored}) == len(stored) <= 30


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"number": "555-0100"}, "digits"),
        ({"number": ""}, "digits"),
        ({"number": "+" + "1" * 32}, "digits"),
        ({"kind": "survey"}, "kind"),
        ({"queue": ""}, "queue"),
        ({"now": datetime(2024, 5, 1, 12, 0)}, "timezone-aware"),
        ({"not_before": T0 + HOUR, "window_end": T0 + HOUR}, "slot must end after it starts"),
    ],
)
async def test_bad_bookings_are_refused(store: CallbackStore, changes: dict[str, object], message: str) -> None:
    kw: dict[str, object] = {"number": "+15550103", "queue": "general", "arrived_at": T0, "now": T0}
    kw["promised_by"] = T0 + HOUR
    kw.update(changes)
    with pytest.raises(ValueError, match=message):
        await store.book(**kw)  # type: ignore[arg-type]


async def test_a_later_slot_is_booked_until_it_comes(store: CallbackStore) -> None:
    cb = await book(store, "5550104", not_before=T0 + HOUR, window_end=T0 + 2 * HOUR)
    assert cb.state == "booked" and cb.window_end == T0 + 2 * HOUR
    assert await store.due(T0 + HOUR) == []
    with pytest.raises(Conflict, match="not due before its slot"):
        await store.claim(cb.id, agent="ann", now=T0)
    assert await store.promote_due(T0 + 59 * MIN) == 0
    assert await store.promote_due(T0 + HOUR) == 1
    assert [c.id for c in await store.due(T0 + HOUR)] == [cb.id]


# -- place in line ----------------------------------------------------------------------------


async def test_due_callbacks_are_served_in_order_of_arrival(store: CallbackStore) -> None:
    # booked in another order than the callers arrived in the queue
    arrivals = {"+1003": T0 - 3 * MIN, "+1001": T0 - 9 * MIN, "+1004": T0 - 1 * MIN, "+1002": T0 - 5 * MIN}
    for i, (number, arrived) in enumerate(arrivals.items()):
        await book(store, number, arrived=arrived, now=T0 + i * MIN)
    await book(store, "+1009", arrived=T0 - 2 * MIN, queue="billing")
    due = await store.due(T0 + 10 * MIN, queue="general")
    assert [c.number for c in due] == ["+1001", "+1002", "+1003", "+1004"]
    assert [c.number for c in await store.due(T0 + 10 * MIN)] == ["+1001", "+1002", "+1003", "+1009", "+1004"]
    assert [c.number for c in await store.due(T0 + 10 * MIN, limit=2)] == ["+1001", "+1002"]
    first = await store.claim_next(agent="ann", now=T0 + 10 * MIN, queue="general")
    assert first is not None and first.number == "+1001"


async def test_a_retried_callback_keeps_its_place(store: CallbackStore) -> None:
    early = await book(store, "+2001", arrived=T0 - 10 * MIN)
    late = await book(store, "+2002", arrived=T0 - 1 * MIN)
    await store.claim(early.id, agent="ann", now=T0)
    await store.start_call(early.id, agent="ann", now=T0)
    await store.record_outcome(early.id, agent="ann", now=T0 + MIN, outcome="no_answer")
    assert [c.id for c in await store.due(T0 + 2 * MIN)] == [late.id]  # waiting out the retry delay
    assert [c.id for c in await store.due(T0 + 11 * MIN)] == [early.id, late.id]


# -- claims and leases ------------------------------------------------------------------------


async def test_a_claim_is_a_lease_that_no_one_else_can_take(store: CallbackStore) -> None:
    cb = await book(store, "+3001")
    mine = await store.claim(cb.id, agent="ann", now=T0)
    assert (mine.state, mine.claimed_by, mine.lease_until, mine.version) == ("offered", "ann", T0 + LEASE, 2)
    with pytest.raises(Conflict, match="claimed by ann until"):
        await store.claim(cb.id, agent="bob", now=T0 + MIN)
    for action in (store.start_call, store.release, store.give_up):
        with pytest.raises(Conflict, match="claimed by ann, not by you"):
            await action(cb.id, agent="bob", now=T0 + MIN)
    again = await store.claim(cb.id, agent="ann", now=T0 + 2 * MIN)  # the same agent extends
    assert again.lease_until == T0 + 2 * MIN + LEASE
    # the lease lapses: the agent cannot act on it any more, and another agent may take it
    with pytest.raises(Conflict, match="lapsed"):
        await store.start_call(cb.id, agent="ann", now=T0 + 8 * MIN)
    bob = await store.claim(cb.id, agent="bob", now=T0 + 8 * MIN)
    assert bob.claimed_by == "bob"
    released = await store.release(cb.id, agent="bob", now=T0 + 9 * MIN)
    assert (released.state, released.claimed_by, released.lease_until) == ("due", None, None)


async def test_lapsed_leases_go_back_to_due(store: CallbackStore) -> None:
    a = await book(store, "+3002")
    b = await book(store, "+3003")
    await store.claim(a.id, agent="ann", now=T0)
    await store.claim(b.id, agent="bob", now=T0 + 3 * MIN)
    back = await store.release_lapsed(T0 + 6 * MIN)
    assert [c.id for c in back] == [a.id] and back[0].state == "due" and back[0].claimed_by is None
    assert (await store.get(b.id)).state == "offered"


async def test_a_stale_version_is_a_conflict(store: CallbackStore) -> None:
    cb = await book(store, "+3004")
    claimed = await store.claim(cb.id, agent="ann", now=T0, version=cb.version)
    with pytest.raises(Conflict, match="changed meanwhile"):
        await store.add_notes(cb.id, agent="ann", now=T0, notes="x", version=cb.version)
    noted = await store.add_notes(cb.id, agent="ann", now=T0, notes="rang twice", version=claimed.version)
    assert noted.notes is not None and noted.notes.endswith("ann] rang twice")


async def test_unknown_callbacks_are_not_found(store: CallbackStore) -> None:
    with pytest.raises(NotFound):
        await store.get(999)
    with pytest.raises(NotFound):
        await store.claim(999, agent="ann", now=T0)
    with pytest.raises(NotFound):
        await store.mark_warned(999)


async def test_many_agents_claiming_at_once_never_share_a_callback(
    db_url: str, store: CallbackStore, request: pytest.FixtureRequest
) -> None:
    ids = [(await book(store, f"+4{i:03d}", arrived=T0 - i * MIN)).id for i in range(10)]
    engines = [db.create_engine(db_url) for _ in range(20)]  # 20 agents, each on its own connection
    try:
        stores = [CallbackStore(e, lease=LEASE) for e in engines]
        results = await asyncio.gather(*(s.claim_next(agent=f"agent{i}", now=T0 + MIN) for i, s in enumerate(stores)))
    finally:
        for e in engines:
            await e.dispose()
    won = [r for r in results if r is not None]
    assert sorted(c.id for c in won) == sorted(ids)  # each callback claimed exactly once
    assert len({c.claimed_by for c in won}) == len(won) == 10  # and no agent got two
    for i, r in enumerate(results):
        assert r is None or r.claimed_by == f"agent{i}"
    stored = {c.id: c.claimed_by for c in await store.list(states=["offered"])}
    assert stored == {c.id: c.claimed_by for c in won}
    assert await store.claim_next(agent="late", now=T0 + MIN) is None


async def test_claim_next_takes_the_earliest_caller_and_skips_retry_delays(store: CallbackStore) -> None:
    waiting = await book(store, "+4101", arrived=T0 - 9 * MIN)
    await book(store, "+4102", arrived=T0 - 5 * MIN)
    await store.claim(waiting.id, agent="ann", now=T0)
    await store.record_outcome(waiting.id, agent="ann", now=T0, outcome="busy")  # offered: counts an attempt
    assert (await store.get(waiting.id)).attempts == 1
    nxt = await store.claim_next(agent="bob", now=T0 + MIN)
    assert nxt is not None and nxt.number == "+4102"
    assert await store.claim_next(agent="bob", now=T0 + 2 * MIN) is None
    again = await store.claim_next(agent="cat", now=T0 + 10 * MIN)
    assert again is not None and again.id == waiting.id
    assert await store.claim_next(agent="dan", now=T0 + 10 * MIN, queue="billing") is None


# -- outcomes ---------------------------------------------------------------------------------


async def test_no_answer_is_retried_then_fails(store: CallbackStore) -> None:
    cb = await book(store, "+5001")
    now = T0
    for attempt in (1, 2, 3):
        await store.claim(cb.id, agent="ann", now=now)
        called = await store.start_call(cb.id, agent="ann", now=now)
        assert called.state == "in_progress" and called.attempts == attempt
        after = await store.record_outcome(cb.id, agent="ann", now=now + MIN, outcome="no_answer", notes="rang out")
        if attempt < 3:
            assert (after.state, after.next_attempt_at, after.claimed_by) == ("due", now + 11 * MIN, None)
            with pytest.raises(Conflict):  # no longer the agent's
                await store.give_up(cb.id, agent="ann", now=now + 2 * MIN)
        now += 11 * MIN
    assert (after.state, after.close_reason, after.attempts, after.outcome) == (
        "failed",
        "retries_exhausted",
        3,
        "no_answer",
    )
    assert after.closed_at == now - 10 * MIN
    assert after.notes is not None and after.notes.count("rang out") == 3
    with pytest.raises(Conflict, match="already failed"):
        await store.claim(cb.id, agent="ann", now=now)


async def test_completed_and_failed_outcomes_close_the_callback(store: CallbackStore) -> None:
    a = await book(store, "+5002")
    b = await book(store, "+5003")
    for cb in (a, b):
        await store.claim(cb.id, agent="ann", now=T0)
        await store.start_call(cb.id, agent="ann", now=T0)
    with pytest.raises(Conflict, match="already under way"):
        await store.start_call(a.id, agent="ann", now=T0)
    with pytest.raises(ValueError, match="outcome"):
        await store.record_outcome(a.id, agent="ann", now=T0, outcome="great")
    with pytest.raises(Conflict, match="not by you"):
        await store.record_outcome(a.id, agent="bob", now=T0, outcome="completed")
    done = await store.record_outcome(a.id, agent="ann", now=T0 + 5 * MIN, outcome="completed", notes="sorted")
    assert (done.state, done.close_reason, done.closed_at, done.claimed_by) == (
        "completed",
        "completed",
        T0 + 5 * MIN,
        "ann",
    )
    bad = await store.record_outcome(b.id, agent="ann", now=T0 + 5 * MIN, outcome="failed")
    assert (bad.state, bad.close_reason) == ("failed", "failed")
    later = await store.add_notes(a.id, agent="ann", now=T0 + HOUR, notes="customer happy")
    assert later.notes is not None and "sorted" in later.notes and "customer happy" in later.notes
    with pytest.raises(Conflict, match="not yours"):
        await store.add_notes(a.id, agent="bob", now=T0 + HOUR, notes="hi")


async def test_releasing_a_call_that_was_never_placed_does_not_count_an_attempt(store: CallbackStore) -> None:
    cb = await book(store, "+5004")
    await store.claim(cb.id, agent="ann", now=T0)
    await store.start_call(cb.id, agent="ann", now=T0)
    back = await store.release(cb.id, agent="ann", now=T0)
    assert (back.state, back.attempts, back.claimed_by) == ("due", 0, None)


async def test_reschedule_books_a_new_slot_and_keeps_the_place(store: CallbackStore) -> None:
    cb = await book(store, "+6001", arrived=T0 - 20 * MIN)
    other = await book(store, "+6002", arrived=T0 - 5 * MIN)
    await store.claim(cb.id, agent="ann", now=T0)
    await store.start_call(cb.id, agent="ann", now=T0)
    moved = await store.reschedule(cb.id, agent="ann", now=T0 + MIN, not_before=T0 + 3 * HOUR, window_end=T0 + 4 * HOUR)
    assert (moved.state, moved.not_before, moved.window_end, moved.promised_by, moved.claimed_by) == (
        "booked",
        T0 + 3 * HOUR,
        T0 + 4 * HOUR,
        T0 + 4 * HOUR,
        None,
    )
    assert moved.arrived_at == T0 - 20 * MIN and moved.attempts == 1
    assert await store.promote_due(T0 + 3 * HOUR) == 1
    assert [c.id for c in await store.due(T0 + 3 * HOUR)] == [cb.id, other.id]
    with pytest.raises(Conflict):
        await store.reschedule(cb.id, agent="ann", now=T0 + 3 * HOUR, not_before=T0 + 5 * HOUR)


async def test_give_up_and_reassign(store: CallbackStore) -> None:
    a = await book(store, "+6101")
    b = await book(store, "+6102", not_before=T0 + HOUR)
    await store.claim(a.id, agent="ann", now=T0)
    moved = await store.reassign(a.id, to_agent="bob", now=T0 + MIN)
    assert (moved.state, moved.claimed_by, moved.lease_until) == ("offered", "bob", T0 + MIN + LEASE)
    with pytest.raises(Conflict, match="claimed by bob"):
        await store.start_call(a.id, agent="ann", now=T0 + MIN)
    with pytest.raises(Conflict, match="not due before its slot"):
        await store.reassign(b.id, to_agent="bob", now=T0)
    gone = await store.give_up(a.id, agent="bob", now=T0 + 2 * MIN, notes="wrong number")
    assert (gone.state, gone.close_reason) == ("failed", "gave_up")
    assert gone.notes is not None and "wrong number" in gone.notes and "reassigned from ann to bob" in gone.notes
    with pytest.raises(Conflict, match="already failed"):
        await store.reassign(a.id, to_agent="cat", now=T0 + 3 * MIN)


# -- closing, expiry, follow-ups --------------------------------------------------------------


async def test_a_caller_who_reaches_an_agent_has_their_callback_closed(store: CallbackStore) -> None:
    due = await book(store, "+7001")
    elsewhere = await book(store, "+7001", queue="billing")
    closed = await store.close_for_number("+7001", "general", now=T0 + MIN)
    assert [c.id for c in closed] == [due.id]
    assert (closed[0].state, closed[0].close_reason, closed[0].closed_at) == (
        "cancelled",
        "reached_agent",
        T0 + MIN,
    )
    assert (await store.get(elsewhere.id)).state == "due"
    assert await store.close_for_number("+7001", "general", now=T0 + MIN) == []
    # a call already under way is left alone
    calling = await book(store, "+7002")
    await store.claim(calling.id, agent="ann", now=T0)
    await store.start_call(calling.id, agent="ann", now=T0)
    assert await store.close_for_number("+7002", "general", now=T0 + MIN) == []
    with pytest.raises(Conflict, match="calling the customer right now"):
        await store.cancel(calling.id, now=T0 + MIN, by="caller")


async def test_old_callbacks_expire(store: CallbackStore) -> None:
    old = await book(store, "+8001")
    claimed = await book(store, "+8002", now=T0 + MIN)
    later_slot = await book(store, "+8003", not_before=T0 + 3 * HOUR)
    calling = await book(store, "+8004")
    fresh = await book(store, "+8005", now=T0 + 3 * HOUR)
    await store.claim(claimed.id, agent="ann", now=T0 + 2 * MIN)
    await store.claim(calling.id, agent="bob", now=T0)
    await store.start_call(calling.id, agent="bob", now=T0)
    assert await store.expire(T0 + 4 * HOUR - 1 * MIN, max_age=4 * HOUR) == []
    gone = await store.expire(T0 + 4 * HOUR + MIN, max_age=4 * HOUR)
    assert [c.id for c in gone] == [old.id, claimed.id]
    assert all((c.state, c.close_reason, c.lease_until) == ("expired", "expired", None) for c in gone)
    assert (await store.get(later_slot.id)).state == "booked"  # counted from its slot
    assert (await store.get(calling.id)).state == "in_progress"
    assert (await store.get(fresh.id)).state == "due"
    assert [c.id for c in await store.expire(T0 + 7 * HOUR, max_age=4 * HOUR)] == [later_slot.id, fresh.id]
    again = await book(store, "+8001", now=T0 + 7 * HOUR)  # expired: a new booking is welcome
    assert again.state == "due"


async def test_a_follow_up_callback_points_at_its_case(store: CallbackStore) -> None:
    case = await book(store, "+9001")
    await store.claim(case.id, agent="ann", now=T0)
    await store.start_call(case.id, agent="ann", now=T0)
    await store.record_outcome(case.id, agent="ann", now=T0 + 5 * MIN, outcome="completed")
    follow = await book(
        store,
        "+9001",
        now=T0 + 5 * MIN,
        arrived=T0 + 5 * MIN,
        kind="follow_up",
        parent_id=case.id,
        not_before=T0 + 24 * HOUR,
        created_by="ann",
    )
    assert (follow.kind, follow.parent_id, follow.state, follow.created_by) == ("follow_up", case.id, "booked", "ann")
    with pytest.raises(NotFound, match="#12345"):
        await book(store, "+9002", kind="follow_up", parent_id=12345)
    noted = await store.add_notes(follow.id, agent="ann", now=T0 + HOUR, notes="ask about the router")
    assert noted.notes is not None


# -- reports ----------------------------------------------------------------------------------


async def test_handover_lists_every_open_callback_with_who_holds_it(store: CallbackStore) -> None:
    a = await book(store, "+1101", arrived=T0 - 3 * MIN, queue="sales")
    b = await book(store, "+1102", arrived=T0 - 9 * MIN)
    c = await book(store, "+1103", not_before=T0 + HOUR, promised_by=T0 + 2 * HOUR)
    d = await book(store, "+1104", arrived=T0 - 30 * MIN)
    done = await book(store, "+1105")
    await store.claim(b.id, agent="ann", now=T0)
    await store.claim(d.id, agent="bob", now=T0)
    await store.start_call(d.id, agent="bob", now=T0)
    await store.claim(done.id, agent="ann", now=T0)
    await store.record_outcome(done.id, agent="ann", now=T0, outcome="completed")
    report = await store.handover(T0 + MIN)
    assert [(x.id, x.state, x.claimed_by) for x in report] == [
        (d.id, "in_progress", "bob"),
        (b.id, "offered", "ann"),
        (c.id, "booked", None),
        (a.id, "due", None),
    ]
    assert report[2].promised_by == T0 + 2 * HOUR


async def test_counts_lists_and_the_oldest_wait(store: CallbackStore) -> None:
    assert await store.counts_by_state() == dict.fromkeys(STATES, 0)
    assert await store.oldest_waiting_age(T0) is None
    a = await book(store, "+1201", arrived=T0 - 10 * MIN)
    await book(store, "+1202", arrived=T0 - 30 * MIN, not_before=T0 + HOUR)  # not waiting yet
    c = await book(store, "+1203", arrived=T0 - 5 * MIN)
    await store.claim(a.id, agent="ann", now=T0)
    await store.cancel(c.id, now=T0, by="caller")
    counts = await store.counts_by_state()
    assert counts == {**dict.fromkeys(STATES, 0), "offered": 1, "booked": 1, "cancelled": 1}
    assert await store.oldest_waiting_age(T0 + MIN) is None  # the booked one's slot has not come
    assert await store.oldest_waiting_age(T0 + HOUR) == pytest.approx(90 * 60)
    assert [x.id for x in await store.list(agent="ann")] == [a.id]
    assert [x.number for x in await store.list(states=["booked", "cancelled"])] == ["+1202", "+1203"]
    assert len(await store.list(queue="general", limit=2)) == 2
    with pytest.raises(ValueError, match="unknown state"):
        await store.list(states=["lost"])


async def test_promises_at_risk_are_found_once(store: CallbackStore) -> None:
    safe = await book(store, "+1301", promised_by=T0 + HOUR)
    risky = await book(store, "+1302", promised_by=T0 + 30 * MIN)
    forecast = {safe.id: T0 + 50 * MIN, risky.id: T0 + 50 * MIN}
    found = await store.at_risk(T0, lambda cb: forecast[cb.id])
    assert [cb.id for cb in found] == [risky.id]
    await store.mark_warned(risky.id)
    assert (await store.get(risky.id)).promise_warned
    assert await store.at_risk(T0, lambda cb: forecast[cb.id]) == []


# -- the benchmark ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.postgres
def test_durable_bookings_per_second(pg_url: str) -> None:
    from callback import bench as bookbench

    results = bookbench.run([pg_url], seconds=2.0, concurrency=8)
    by_target = {r.target: r for r in results}
    assert set(by_target) == {"sqlite", "postgresql"}
    for r in results:
        assert r.stored == r.booked and r.bookings > 0, r
    # the rate goal (GOAL_SQLITE) is the benchmark's own verdict (`frontdesk bench-bookings --check`, figures in the
    # README): a shared CI machine's speed is no test of correctness, so here only that every booking was stored
