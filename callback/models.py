"""The ``callbacks`` table: one row per callback a caller booked (or an agent set up).

The rules that move a row from state to state are in ``callback/rules.py``;
the store that applies them is ``callback/store.py``. Schema changes go
through the alembic revisions in ``callback/migrations/versions/``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, DateTime, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from callback.base import Base
from callback.rules import ACTIVE_STATES, KINDS, STATES


def _in(column: str, values: tuple[str, ...]) -> str:
    # literal SQL, identical on SQLite and PostgreSQL (and in the migration)
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


ACTIVE_WHERE = _in("state", ACTIVE_STATES)


class CallbackRow(Base):
    __tablename__ = "callbacks"
    __table_args__ = (
        # one active callback per number and queue: a repeat caller is told they have one (race-safe)
        Index(
            "uq_callbacks_active_number",
            "number",
            "queue",
            unique=True,
            sqlite_where=text(ACTIVE_WHERE),
            postgresql_where=text(ACTIVE_WHERE),
        ),
        # the dispatcher: due ones by queue in order of arrival; booked ones whose slot has come
        Index("ix_callbacks_state_queue_arrived", "state", "queue", "arrived_at"),
        Index("ix_callbacks_state_not_before", "state", "not_before"),
        Index("ix_callbacks_state_next_attempt", "state", "next_attempt_at"),
        Index("ix_callbacks_claimed_by", "claimed_by"),
        Index("ix_callbacks_parent_id", "parent_id"),
        # the booking's idempotency key: a booking retried after a commit of unknown outcome finds its row
        Index("uq_callbacks_booking_key", "booking_key", unique=True),
        CheckConstraint(_in("state", STATES), name="ck_callbacks_state"),
        CheckConstraint(_in("kind", KINDS), name="ck_callbacks_kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    queue: Mapped[str] = mapped_column(String(64))
    number: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    parent_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("callbacks.id"), nullable=True)
    state: Mapped[str] = mapped_column(String(16))
    arrived_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    booked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    not_before: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    window_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    promised_by: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(32), nullable=True)
    notes: Mapped[str | None] = mapped_column(Text, nullable=True)
    message_path: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    call_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_by: Mapped[str] = mapped_column(String(64))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    close_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    promise_warned: Mapped[bool] = mapped_column(Boolean)
    version: Mapped[int] = mapped_column(Integer)
    booking_key: Mapped[str | None] = mapped_column(String(64), nullable=True)


__all__ = ["ACTIVE_WHERE", "CallbackRow"]
