"""Call-detail records (R4): one row per call, written through SQLAlchemy async.

Writing never sits between INVITE and 200 OK: the router appends a plain
tuple to an in-memory batch when a call ends, and :class:`CallRecorder`'s
background task writes batches every ``flush_interval`` seconds (and on
shutdown) in one transaction. While the database is down the records wait in
memory, in order and up to a cap, and are written once it is back. On SQLite a batch goes straight to the driver
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
import time
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from sqlalchemy import DateTime, Float, Integer, String, Text, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from callback.base import create_engine as create_engine  # one engine factory for records and callbacks alike
from callback.base import utc
from callback.health import RETRY_INTERVAL, health_for, is_outage

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
    """Batches call summaries and writes them off the call path; they wait, in order, while the database is down.

    While the database is unreachable the summaries stay in memory, at most
    ``max_waiting`` of them (beyond that each new one is dropped and counted,
    logged once per outage), and a write is tried every ``retry_interval``
    seconds. A batch whose COMMIT failed may have been written: before it is
    written again, the records already in the table (same Call-ID and INVITE
    time) are taken out of it, so none is written twice.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        flush_interval: float = 0.2,
        *,
        max_waiting: int = 100_000,
        retry_interval: float = RETRY_INTERVAL,
        write_timeout: float = 10.0,
    ) -> None:
        self.engine = engine
        self.flush_interval = flush_interval
        self.max_waiting = max_waiting
        self.retry_interval = retry_interval
        self.write_timeout = write_timeout
        self._pending: list[CallSummary] = []
        self.written = 0
        self.write_errors = 0
        self.dropped = 0
        self.health = health_for(engine)
        self.health.waiting["call_records"] = lambda: len(self._pending)
        self._unsure: set[tuple[str, float]] = set()  # (call_id, invite_at) of a batch whose COMMIT failed
        self._retry_at = 0.0

    def add(self, summary: CallSummary) -> None:
        if len(self._pending) >= self.max_waiting:
            self.dropped += 1
            self.health.dropped("call_records", 1, self.max_waiting)
            return
        self._pending.append(summary)

    @property
    def backlog(self) -> int:
        return len(self._pending)

    async def flush(self) -> int:
        if not self._pending:
            return 0
        if not self.health.up and time.monotonic() < self._retry_at:
            return 0  # the database is down: one try per retry_interval, not one per flush
        batch, self._pending = self._pending, []
        committing = False
        try:
            async with asyncio.timeout(self.write_timeout), self.engine.connect() as conn:
                transaction = await conn.begin()
                if self._unsure:
                    batch = await self._not_yet_written(conn, batch)
                # one executemany, not ORM objects: a flush of a few hundred records
                # must not hold the event loop (it sits beside the SIP path)
                if batch:
                    await _write(conn, batch)
                committing = True
                await transaction.commit()
        except Exception as exc:
            # keep the batch: it is retried on the next flush, nothing is lost
            self._pending[:0] = batch
            self.write_errors += 1
            if committing:
                self._unsure.update((s.call_id, s.invite_at) for s in batch)
            if is_outage(exc):
                self.health.failed("call_records", exc)  # once per outage: no log line per flush
                self._retry_at = time.monotonic() + self.retry_interval
            else:
                log.exception("writing %d call records failed; will retry", len(batch))
            return 0
        self._unsure.clear()
        self.health.ok()
        self.written += len(batch)
        return len(batch)

    async def _not_yet_written(self, conn: AsyncConnection, batch: list[CallSummary]) -> list[CallSummary]:
        """``batch`` less the records a COMMIT that failed (as far as we could tell) did write."""
        doubtful = sorted({s.call_id for s in batch if (s.call_id, s.invite_at) in self._unsure})
        present: set[tuple[str, int]] = set()
        for i in range(0, len(doubtful), 500):
            rows = await conn.execute(
                select(CallRecord.call_id, CallRecord.invite_at).where(CallRecord.call_id.in_(doubtful[i : i + 500]))
            )
            present.update((call_id, _ms(utc(at).timestamp())) for call_id, at in rows.all())
        if not present:
            return batch
        kept = [s for s in batch if (s.call_id, _ms(s.invite_at)) not in present]
        log.info(
            "%d call record(s) were written before the connection broke; not writing them again", len(batch) - len(kept)
        )
        return kept

    async def run(self) -> None:
        """Flush every ``flush_interval`` until cancelled, then flush once more."""
        try:
            while True:
                await asyncio.sleep(self.flush_interval)
                await self.flush()
        finally:
            self._retry_at = 0.0
            await asyncio.shield(self.flush())
            if self._pending:  # the database is still down: say what is lost, once
                log.error("stopping with %d call record(s) unwritten: the database is unreachable", len(self._pending))


def _ms(t: float) -> int:
    return round(t * 1000)


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
