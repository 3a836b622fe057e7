"""Call-detail records (R4): one row per call, written through SQLAlchemy async.

Writing never sits between INVITE and 200 OK: the router appends a plain
tuple to an in-memory batch when a call ends, and :class:`CallRecorder`'s
background task writes batches every ``flush_interval`` seconds (and on
shutdown) in one transaction.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from sqlalchemy import DateTime, Float, Integer, String, Text, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from callback.base import create_engine as create_engine  # one engine factory for records and callbacks alike

log = logging.getLogger(__name__)


class RecordsBase(DeclarativeBase):
    pass


class CallRecord(RecordsBase):
    __tablename__ = "call_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(String(255), index=True)
    caller: Mapped[str] = mapped_column(String(255), index=True)
    called: Mapped[str] = mapped_column(String(255))
    invite_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    answer_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    end_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    answer_latency_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    outcome: Mapped[str] = mapped_column(String(32))
    hangup_by: Mapped[str | None] = mapped_column(String(16), nullable=True)
    end_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    transport: Mapped[str] = mapped_column(String(8))
    complaint: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)  # R4 category
    ivr_path: Mapped[str | None] = mapped_column(Text, nullable=True)  # node ids entered, space-separated
    keys: Mapped[str | None] = mapped_column(String(255), nullable=True)  # keys pressed, in order
    ivr_outcomes: Mapped[str | None] = mapped_column(Text, nullable=True)  # notes: notice:x,hotkey,self_service,...
    recording: Mapped[str | None] = mapped_column(String(1024), nullable=True)  # path of a message left


@dataclass(frozen=True, slots=True)
class CallSummary:
    """What the router hands over when a call ends (times in wall-clock seconds)."""

    call_id: str
    caller: str
    called: str
    invite_at: float
    answer_at: float | None
    end_at: float
    outcome: str
    hangup_by: str | None
    end_status: int | None
    transport: str
    # what the IVR learnt (R4); summary_row writes them under the same names
    complaint: str | None = None
    ivr_path: str | None = None
    keys: str | None = None
    ivr_outcomes: str | None = None
    recording: str | None = None


def _ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=UTC)


_SUMMARY_FIELDS = tuple(f.name for f in dataclasses.fields(CallSummary))


def summary_row(s: CallSummary) -> dict[str, object]:
    """The call_records row for a summary: same names, times as datetimes."""
    row: dict[str, object] = {name: getattr(s, name) for name in _SUMMARY_FIELDS}
    for name in ("invite_at", "answer_at", "end_at"):
        value = row[name]
        row[name] = _ts(value) if isinstance(value, float) else None
    row["answer_latency_s"] = (s.answer_at - s.invite_at) if s.answer_at is not None else None
    return row


async def init_schema(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        await conn.run_sync(RecordsBase.metadata.create_all)


class CallRecorder:
    """Batches call summaries and writes them off the call path."""

    def __init__(self, engine: AsyncEngine, flush_interval: float = 0.2) -> None:
        self.engine = engine
        self.flush_interval = flush_interval
        self._pending: list[CallSummary] = []
        self.written = 0
        self.write_errors = 0

    def add(self, summary: CallSummary) -> None:
        self._pending.append(summary)

    @property
    def backlog(self) -> int:
        return len(self._pending)

    async def flush(self) -> int:
        batch, self._pending = self._pending, []
        if not batch:
            return 0
        # Core executemany, not ORM objects: a flush of a few hundred records
        # must not hold the event loop (it sits beside the SIP path)
        rows = [summary_row(s) for s in batch]
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(CallRecord), rows)
        except Exception:
            # keep the batch: it is retried on the next flush, nothing is lost
            self._pending[:0] = batch
            self.write_errors += 1
            log.exception("writing %d call records failed; will retry", len(batch))
            return 0
        self.written += len(rows)
        return len(rows)

    async def run(self) -> None:
        """Flush every ``flush_interval`` until cancelled, then flush once more."""
        try:
            while True:
                await asyncio.sleep(self.flush_interval)
                await self.flush()
        finally:
            await asyncio.shield(self.flush())


async def count_records(engine: AsyncEngine) -> dict[str, int]:
    """Calls by outcome (for tests and the CLI)."""
    sessions = async_sessionmaker(engine)
    async with sessions() as session:
        rows = await session.execute(select(CallRecord.outcome, func.count()).group_by(CallRecord.outcome))
        return {outcome: n for outcome, n in rows.all()}


async def complaint_counts(engine: AsyncEngine, year: int, month: int, tz: tzinfo = UTC) -> dict[str, int]:
    """Complaints by category for one calendar month (R4); the month's bounds are taken in ``tz``."""
    if not 1 <= month <= 12:
        raise ValueError(f"month {month} is not 1..12")
    start = datetime(year, month, 1, tzinfo=tz).astimezone(UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=tz).astimezone(UTC)
    sessions = async_sessionmaker(engine)
    async with sessions() as session:
        rows = await session.execute(
            select(CallRecord.complaint, func.count())
            .where(CallRecord.complaint.is_not(None), CallRecord.invite_at >= start, CallRecord.invite_at < end)
            .group_by(CallRecord.complaint)
            .order_by(CallRecord.complaint)
        )
        return {str(complaint): int(n) for complaint, n in rows.all()}
