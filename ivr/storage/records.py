"""Call-detail records (R4): one row per call, written through SQLAlchemy async.

Writing never sits between INVITE and 200 OK: the router appends a plain
tuple to an in-memory batch when a call ends, and :class:`CallRecorder`'s
background task writes batches every ``flush_interval`` seconds (and on
shutdown) in one transaction. On SQLite a batch goes straight to the driver
(one ``executemany`` run in aiosqlite's thread, times pre-formatted as
SQLAlchemy stores them): SQLAlchemy's statement compilation and per-value
bind processing would otherwise run on the event loop, beside the SIP path,
for every row.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from sqlalchemy import DateTime, Float, Integer, String, Text, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker
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


_COLUMNS = (*_SUMMARY_FIELDS, "answer_latency_s")
_SQLITE_INSERT = (
    f"INSERT INTO {CallRecord.__tablename__} ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
)


_second_text: dict[int, str] = {}  # "YYYY-MM-DD HH:MM:SS" of the last few whole seconds: a batch shares them


def _sqlite_time(t: float | None) -> str | None:
    # SQLAlchemy's SQLite DateTime storage format: "YYYY-MM-DD HH:MM:SS.ffffff", UTC, no offset.
    # Rounded as datetime.fromtimestamp rounds (half-even to the microsecond).
    if t is None:
        return None
    second = math.floor(t)
    micro = round((t - second) * 1e6)
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    text = _second_text.get(second)
    if text is None:
        if len(_second_text) >= 64:
            _second_text.clear()
        text = _second_text[second] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{text}.{micro:06d}"


def sqlite_row(s: CallSummary) -> tuple[object, ...]:
    """The call_records row for a summary as SQLite parameters in ``_COLUMNS`` order (what summary_row stores)."""
    return (
        s.call_id,
        s.caller,
        s.called,
        _sqlite_time(s.invite_at),
        _sqlite_time(s.answer_at),
        _sqlite_time(s.end_at),
        s.outcome,
        s.hangup_by,
        s.end_status,
        s.transport,
        s.complaint,
        s.ivr_path,
        s.keys,
        s.ivr_outcomes,
        s.recording,
        (s.answer_at - s.invite_at) if s.answer_at is not None else None,
    )


async def _write(conn: AsyncConnection, batch: list[CallSummary]) -> None:
    if conn.dialect.name == "sqlite":
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection  # aiosqlite's connection, inside the transaction conn began
        assert driver is not None
        cursor = await driver.executemany(_SQLITE_INSERT, [sqlite_row(s) for s in batch])
        await cursor.close()
    else:
        await conn.execute(insert(CallRecord), [summary_row(s) for s in batch])


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
        # one executemany, not ORM objects: a flush of a few hundred records
        # must not hold the event loop (it sits beside the SIP path)
        try:
            async with self.engine.begin() as conn:
                await _write(conn, batch)
        except Exception:
            # keep the batch: it is retried on the next flush, nothing is lost
            self._pending[:0] = batch
            self.write_errors += 1
            log.exception("writing %d call records failed; will retry", len(batch))
            return 0
        self.written += len(batch)
        return len(batch)

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
