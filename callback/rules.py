"""The rules of a callback list, as pure functions of a callback and the time (no I/O).

Theory of operation
-------------------
A callback moves through these states; the store (``callback/store.py``)
applies the transitions, these functions decide them::

    booked --not_before has come (promote_due)------------------> due
    due ----claim (lease until now + lease)---------------------> offered
    offered --release, or the lease lapsed----------------------> due
    offered --start_call (attempts += 1)------------------------> in_progress
    in_progress --outcome completed-----------------------------> completed
    in_progress --outcome no_answer/busy, attempts < max--------> due (next_attempt_at = now + delay)
    in_progress --outcome no_answer/busy, attempts >= max-------> failed (retries_exhausted)
    in_progress --outcome failed, or the agent gives up---------> failed
    offered/in_progress --reschedule----------------------------> booked (or due when the slot has come)
    booked/due/offered --caller cancels, reaches an agent (R10)-> cancelled
    booked/due/offered --older than max_age---------------------> expired

The four *active* states (booked, due, offered, in_progress) hold at most one
callback per number and queue (a unique partial index enforces it). Due
callbacks are served in order of the caller's first arrival in the queue, so
a caller who booked a callback keeps their place in line: never sent to the
back, never ahead of anyone who arrived earlier.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

BOOKED: Final = "booked"
DUE: Final = "due"
OFFERED: Final = "offered"
IN_PROGRESS: Final = "in_progress"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
EXPIRED: Final = "expired"
CANCELLED: Final = "cancelled"

STATES: Final = (BOOKED, DUE, OFFERED, IN_PROGRESS, COMPLETED, FAILED, EXPIRED, CANCELLED)
ACTIVE_STATES: Final = (BOOKED, DUE, OFFERED, IN_PROGRESS)
CLOSED_STATES: Final = (COMPLETED, FAILED, EXPIRED, CANCELLED)
# a call underway is never expired or closed under the agent's feet
EXPIRABLE_STATES: Final = (BOOKED, DUE, OFFERED)
WAITING_STATES: Final = (BOOKED, DUE)

CALLBACK: Final = "callback"
FOLLOW_UP: Final = "follow_up"
KINDS: Final = (CALLBACK, FOLLOW_UP)

Kind = Literal["callback", "follow_up"]

# what an agent reports after dialling (record_outcome)
OUTCOMES: Final = ("completed", "no_answer", "busy", "failed")
RETRY_OUTCOMES: Final = ("no_answer", "busy")


@dataclass(frozen=True)
class Callback:
    """One row of the ``callbacks`` table as plain values; every datetime is aware UTC."""

    id: int
    queue: str
    number: str
    kind: str
    parent_id: int | None
    state: str
    arrived_at: datetime
    booked_at: datetime
    not_before: datetime
    window_end: datetime | None
    promised_by: datetime
    attempts: int
    next_attempt_at: datetime | None
    claimed_by: str | None
    lease_until: datetime | None
    outcome: str | None
    notes: str | None
    message_path: str | None
    call_id: str | None
    created_by: str
    closed_at: datetime | None
    close_reason: str | None
    promise_warned: bool
    version: int
    booking_key: str | None = None  # the IVR's idempotency key (a retried booking finds its own row)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


@dataclass(frozen=True)
class RetryPolicy:
    """A customer who does not answer is tried ``max_attempts`` times in all, ``delay`` apart."""

    max_attempts: int = 3
    delay: timedelta = timedelta(minutes=10)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.delay < timedelta(0):
            raise ValueError(f"the retry delay must not be negative, got {self.delay}")


def order_key(cb: Callback) -> tuple[datetime, int]:
    """Due callbacks are served in this order: the caller's first arrival in the queue, then id."""
    return (cb.arrived_at, cb.id)


def slot_has_come(cb: Callback, now: datetime) -> bool:
    """A booked callback whose slot has started: ``promote_due`` makes it due."""
    return cb.state == BOOKED and cb.not_before <= now


def is_due(cb: Callback, now: datetime) -> bool:
    """May this callback be dialled now? Due, and past any retry delay.

    (A booked one becomes due when ``promote_due`` sees its slot has come.)
    """
    return cb.state == DUE and (cb.next_attempt_at is None or cb.next_attempt_at <= now)


def next_state_after_no_answer(cb: Callback, now: datetime, retry: RetryPolicy) -> tuple[str, datetime | None]:
    """After an attempt the customer did not answer (``cb.attempts`` already counts it).

    Returns ``("due", now + delay)`` while attempts remain, else ``("failed", None)``
    (close reason ``retries_exhausted``).
    """
    if cb.attempts >= retry.max_attempts:
        return FAILED, None
    return DUE, now + retry.delay


def age_start(cb: Callback) -> datetime:
    """Where a callback's age is counted from: its booking, or its slot when booked for later."""
    return max(cb.booked_at, cb.not_before)


def expired(cb: Callback, now: datetime, max_age: timedelta) -> bool:
    """Has this callback waited longer than ``max_age`` (it is then expired, with a text)?

    Counted from ``booked_at``; a callback booked for a later slot is counted from
    the slot's start, so it does not expire before it was ever due. A call
    underway (in_progress) never expires.
    """
    return cb.state in EXPIRABLE_STATES and now - age_start(cb) >= max_age


def promise_at_risk(cb: Callback, now: datetime, forecast_start: datetime) -> bool:
    """Will the callback start after the time promised to the caller (by the forecast)?

    Only a callback still waiting for an agent can miss its promise; one the
    caller was already warned about is not warned twice. A promise already past
    (``now`` > ``promised_by``) is at risk too: it has been missed.
    """
    if cb.state not in EXPIRABLE_STATES or cb.promise_warned:
        return False
    return max(forecast_start, now) > cb.promised_by


def served_order(callbacks: list[Callback], now: datetime) -> list[Callback]:
    """The callbacks that may be dialled now, in the order they are to be served."""
    return sorted((cb for cb in callbacks if is_due(cb, now)), key=order_key)


def aware_utc(value: datetime, what: str = "time") -> datetime:
    """``value`` as aware UTC; a naive datetime is refused (we cannot know its zone)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (UTC), got naive {value.isoformat()}")
    return value.astimezone(UTC)


__all__ = [
    "ACTIVE_STATES",
    "BOOKED",
    "CALLBACK",
    "CANCELLED",
    "CLOSED_STATES",
    "COMPLETED",
    "DUE",
    "EXPIRABLE_STATES",
    "EXPIRED",
    "FAILED",
    "FOLLOW_UP",
    "IN_PROGRESS",
    "KINDS",
    "OFFERED",
    "OUTCOMES",
    "RETRY_OUTCOMES",
    "STATES",
    "WAITING_STATES",
    "Callback",
    "Kind",
    "RetryPolicy",
    "age_start",
    "aware_utc",
    "expired",
    "is_due",
    "next_state_after_no_answer",
    "order_key",
    "promise_at_risk",
    "served_order",
    "slot_has_come",
]
