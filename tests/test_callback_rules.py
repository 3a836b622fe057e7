"""Hypothesis on a virtual clock: callers keep their place, one active callback per number and queue,
retries and expiry; the pure rules alone, then the real store (SQLite) against a model of the list."""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from callback import db
from callback.rules import (
    ACTIVE_STATES,
    EXPIRABLE_STATES,
    STATES,
    Callback,
    RetryPolicy,
    age_start,
    aware_utc,
    expired,
    is_due,
    next_state_after_no_answer,
    order_key,
    promise_at_risk,
    served_order,
    slot_has_come,
)
from callback.store import AlreadyBooked, CallbackStore, Conflict

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)

minutes = st.integers(min_value=-600, max_value=600)


def callback(
    id: int,
    *,
    arrived: int = 0,
    state: str = "due",
    booked: int | None = None,
    slot: int | None = None,
    retry_at: int | None = None,
    promised: int = 60,
    attempts: int = 0,
    warned: bool = False,
) -> Callback:
    booked_at = T0 + MIN * (arrived if booked is None else booked)
    return Callback(
        id=id,
        queue="general",
        number=f"+1{id:04d}",
        kind="callback",
        parent_id=None,
        state=state,
        arrived_at=T0 + MIN * arrived,
        booked_at=booked_at,
        not_before=booked_at if slot is None else T0 + MIN * slot,
        window_end=None,
        promised_by=T0 + MIN * promised,
        attempts=attempts,
        next_attempt_at=None if retry_at is None else T0 + MIN * retry_at,
        claimed_by=None,
        lease_until=None,
        outcome=None,
        notes=None,
        message_path=None,
        call_id=None,
        created_by="ivr",
        closed_at=None,
        close_reason=None,
        promise_warned=warned,
        version=1,
    )


@st.composite
def callback_lists(draw: st.DrawFn) -> list[Callback]:
    n = draw(st.integers(min_value=0, max_value=25))
    ids = draw(st.lists(st.integers(min_value=1, max_value=10_000), min_size=n, max_size=n, unique=True))
    return [
        callback(
            i,
            arrived=draw(minutes),
            state=draw(st.sampled_from(STATES)),
            retry_at=draw(st.none() | minutes),
        )
        for i in ids
    ]


# -- place in line ----------------------------------------------------------------------------


@given(callback_lists(), minutes)
def test_the_served_order_is_the_order_of_arrival(cbs: list[Callback], now_min: int) -> None:
    now = T0 + MIN * now_min
    served = served_order(cbs, now)
    assert {cb.id for cb in served} == {cb.id for cb in cbs if is_due(cb, now)}
    assert served == sorted(served, key=lambda cb: (cb.arrived_at, cb.id))
    # no one is served before a caller who arrived earlier
    for earlier, later in itertools.pairwise(served):
        assert earlier.arrived_at <= later.arrived_at


@given(callback_lists(), minutes, minutes)
def test_a_new_booking_never_jumps_ahead_of_earlier_callers(cbs: list[Callback], arrived: int, now_min: int) -> None:
    now = T0 + MIN * now_min
    new = callback(10_001, arrived=arrived)  # due at once, as an as-soon-as-possible booking is
    before = served_order(cbs, now)
    after = served_order([*cbs, new], now)
    assert [cb for cb in after if cb.id != new.id] == before  # everyone else keeps their order
    ahead = after[: after.index(new)]
    assert all(cb.arrived_at <= new.arrived_at for cb in ahead)
    assert all(cb.arrived_at >= new.arrived_at for cb in after[after.index(new) + 1 :])


@given(st.sampled_from(STATES), minutes, st.none() | minutes, minutes)
def test_due_means_due_and_past_the_retry_delay(state: str, arrived: int, retry: int | None, now_min: int) -> None:
    cb = callback(1, arrived=arrived, state=state, retry_at=retry)
    now = T0 + MIN * now_min
    assert is_due(cb, now) == (state == "due" and (retry is None or retry <= now_min))
    assert order_key(cb) == (cb.arrived_at, 1)


@given(minutes, minutes, minutes)
def test_a_booked_slot_comes_at_its_start(booked: int, slot: int, now_min: int) -> None:
    cb = callback(1, state="booked", booked=booked, slot=slot)
    assert slot_has_come(cb, T0 + MIN * now_min) == (slot <= now_min)
    assert not is_due(cb, T0 + MIN * now_min)  # promote_due makes it due first


# -- retries ----------------------------------------------------------------------------------


@given(st.integers(min_value=1, max_value=10), st.integers(min_value=0, max_value=120), minutes)
def test_no_answer_is_tried_max_attempts_times_then_fails(max_attempts: int, delay: int, start: int) -> None:
    retry = RetryPolicy(max_attempts=max_attempts, delay=MIN * delay)
    cb = callback(1, state="in_progress")
    now = T0 + MIN * start
    tries = 0
    while True:
        tries += 1
        cb = replace(cb, attempts=cb.attempts + 1)  # start_call counts the attempt
        state, at = next_state_after_no_answer(cb, now, retry)
        if state == "failed":
            assert at is None
            break
        assert state == "due" and at == now + MIN * delay
        now = at
    assert tries == max_attempts


def test_a_retry_policy_must_make_sense() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="negative"):
        RetryPolicy(delay=-MIN)
    with pytest.raises(ValueError, match="timezone-aware"):
        aware_utc(datetime(2024, 5, 1))


# -- expiry and promises ----------------------------------------------------------------------


@given(st.sampled_from(STATES), minutes, st.none() | minutes, st.integers(min_value=1, max_value=600), minutes)
def test_expiry_counts_from_the_booking_or_a_later_slot(
    state: str, booked: int, slot: int | None, max_age: int, now_min: int
) -> None:
    cb = callback(1, state=state, booked=booked, slot=slot)
    now = T0 + MIN * now_min
    is_old = expired(cb, now, MIN * max_age)
    start = max(booked, booked if slot is None else slot)
    assert age_start(cb) == T0 + MIN * start
    assert is_old == (state in EXPIRABLE_STATES and now_min - start >= max_age)
    if is_old:  # once expired, expired for good (the clock only moves on)
        assert expired(cb, now + MIN * 5, MIN * max_age)
    if state in ("in_progress", "completed", "failed", "expired", "cancelled"):
        assert not is_old


@given(st.sampled_from(STATES), minutes, minutes, minutes, st.booleans())
def test_a_promise_is_at_risk_when_the_forecast_is_later(
    state: str, promised: int, forecast: int, now_min: int, warned: bool
) -> None:
    cb = callback(1, state=state, promised=promised, warned=warned)
    at_risk = promise_at_risk(cb, T0 + MIN * now_min, T0 + MIN * forecast)
    expected = state in EXPIRABLE_STATES and not warned and max(forecast, now_min) > promised
    assert at_risk == expected


# -- the real store against a model of the list -----------------------------------------------

NUMBERS = ("+1001", "+1002", "+1003")
QUEUES = ("general", "billing")
RETRY = RetryPolicy(max_attempts=2, delay=timedelta(minutes=10))
MAX_AGE = timedelta(hours=2)


@dataclass
class RuleModel:
    id: int
    number: str
    queue: str
    state: str
    arrived_at: datetime
    booked_at: datetime
    not_before: datetime
    attempts: int = 0
    next_attempt_at: datetime | None = None

    def due(self, now: datetime) -> bool:
        return self.state == "due" and (self.next_attempt_at is None or self.next_attempt_at <= now)


class CallbackList(RuleBasedStateMachine):
    """Random bookings, cancellations, calls (answered or not), time passing and expiry on a SQLite store.

    The model is written independently of ``callback.rules``: the store must agree with it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = tempfile.TemporaryDirectory(prefix="callback-rules-")
        self.engine = db.create_engine(f"sqlite+aiosqlite:///{Path(self.tmp.name) / 'list.db'}")
        self.run(db.init_schema(self.engine))
        self.store = CallbackStore(self.engine, RETRY)
        self.now = T0
        self.model: dict[int, RuleModel] = {}

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.engine.dispose())
        self.loop.close()
        self.tmp.cleanup()

    def active(self, number: str, queue: str) -> RuleModel | None:
        found = [m for m in self.model.values() if (m.number, m.queue) == (number, queue) and m.state in ACTIVE_STATES]
        assert len(found) <= 1
        return found[0] if found else None

    @initialize()
    def start(self) -> None:
        pass

    @rule(
        number=st.sampled_from(NUMBERS),
        queue=st.sampled_from(QUEUES),
        waited=st.integers(min_value=0, max_value=30),
        slot=st.none() | st.integers(min_value=1, max_value=90),
    )
    def book(self, number: str, queue: str, waited: int, slot: int | None) -> None:
        arrived = self.now - MIN * waited
        not_before = None if slot is None else self.now + MIN * slot
        existing = self.active(number, queue)
        try:
            cb = self.run(
                self.store.book(
                    queue=queue,
                    number=number,
                    arrived_at=arrived,
                    promised_by=self.now + timedelta(hours=1),
                    now=self.now,
                    not_before=not_before,
                )
            )
        except AlreadyBooked as exc:
            assert existing is not None and exc.existing.id == existing.id
            return
        assert existing is None, f"{number} booked twice in {queue}"
        self.model[cb.id] = RuleModel(
            cb.id, number, queue, "booked" if slot else "due", arrived, self.now, not_before or self.now
        )
        assert cb.state == self.model[cb.id].state

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        m = self.model[data.draw(st.sampled_from(sorted(self.model)))]
        try:
            cb = self.run(self.store.cancel(m.id, now=self.now, by="caller"))
        except Conflict:
            assert m.state not in ("booked", "due")
            return
        assert m.state in ("booked", "due") and cb.state == "cancelled"
        m.state = "cancelled"

    @rule(queue=st.sampled_from(QUEUES), answered=st.booleans())
    def call_the_next_one(self, queue: str, answered: bool) -> None:
        waiting = sorted(
            (m for m in self.model.values() if m.queue == queue and m.due(self.now)),
            key=lambda m: (m.arrived_at, m.id),
        )
        cb = self.run(self.store.claim_next(agent="ann", now=self.now, queue=queue))
        if not waiting:
            assert cb is None
            return
        assert cb is not None and cb.id == waiting[0].id, "served out of arrival order"
        m = waiting[0]
        self.run(self.store.start_call(cb.id, agent="ann", now=self.now))
        m.attempts += 1
        outcome = "completed" if answered else "no_answer"
        after = self.run(self.store.record_outcome(cb.id, agent="ann", now=self.now, outcome=outcome))
        if answered:
            m.state, m.next_attempt_at = "completed", None
        elif m.attempts >= RETRY.max_attempts:
            m.state, m.next_attempt_at = "failed", None
        else:
            m.state, m.next_attempt_at = "due", self.now + RETRY.delay
        assert (after.state, after.attempts, after.next_attempt_at) == (m.state, m.attempts, m.next_attempt_at)

    @rule(step=st.integers(min_value=1, max_value=45))
    def time_passes(self, step: int) -> None:
        self.now += MIN * step
        promoted = self.run(self.store.promote_due(self.now))
        slots = [m for m in self.model.values() if m.state == "booked" and m.not_before <= self.now]
        assert promoted == len(slots)
        for m in slots:
            m.state = "due"

    @rule()
    def expire(self) -> None:
        gone = self.run(self.store.expire(self.now, MAX_AGE))
        old = [
            m
            for m in self.model.values()
            if m.state in ("booked", "due") and max(m.booked_at, m.not_before) <= self.now - MAX_AGE
        ]
        assert sorted(cb.id for cb in gone) == sorted(m.id for m in old)
        for m in old:
            m.state = "expired"

    @invariant()
    def one_active_per_number_and_queue(self) -> None:
        active = self.run(self.store.list(states=ACTIVE_STATES, limit=10_000))
        keys = [(cb.number, cb.queue) for cb in active]
        assert len(keys) == len(set(keys))

    @invariant()
    def due_list_in_arrival_order(self) -> None:
        due = self.run(self.store.due(self.now, limit=10_000))
        expected = sorted((m for m in self.model.values() if m.due(self.now)), key=lambda m: (m.arrived_at, m.id))
        assert [cb.id for cb in due] == [m.id for m in expected]

    @invariant()
    def counts_agree(self) -> None:
        counts = self.run(self.store.counts_by_state())
        for state in STATES:
            assert counts[state] == sum(m.state == state for m in self.model.values()), state


CallbackList.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCallbackList = CallbackList.TestCase
