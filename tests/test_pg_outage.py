"""The database goes away and comes back: bookings fail cleanly, records and texts wait and are written once.

A PostgreSQL server of this module's own (tests/support/pg.py) is stopped as
a crash stops it (``pg_ctl stop -m immediate``: open connections dropped) and
started again on the same port. SQLite's version of an outage is a write lock
another process holds for longer than the writer waits.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from support.pg import PgCluster, private_cluster
from support.waiting import wait_until_async

from callback import db
from callback.health import DatabaseCollector, health_for, is_outage
from callback.outbox import Outbox, TextMessage
from callback.store import AlreadyBooked, CallbackStore
from ivr.storage.audit import read_audit
from ivr.storage.records import CallRecord, CallRecorder, CallSummary, init_schema
from ivr.web.admin import needs_database
from ivr.web.common import ApiError

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


pg = pytest.fixture(private_cluster, scope="module", name="pg")  # its own: the tests stop and start it


@pytest.fixture
async def engine(pg: PgCluster) -> AsyncIterator[AsyncEngine]:
    eng = db.create_engine(pg.create_database("outage"))
    await init_schema(eng)
    await db.init_schema(eng)
    yield eng
    if not pg.pid:
        pg.resume()  # a failed test leaves the server up for the next one
    await eng.dispose()


def summary(i: int) -> CallSummary:
    at = 1796168228.0 + i
    return CallSummary(f"call-{i}@h", f"+1555{i:07d}", "100", at, at + 0.1, at + 5.0, "completed", "caller", 200, "udp")


async def record_ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.scalars(select(CallRecord.call_id).order_by(CallRecord.id))).all())


async def book(store: CallbackStore, number: str, key: str | None = None) -> int:
    cb = await store.book(queue="general", number=number, arrived_at=NOW, promised_by=NOW, now=NOW, key=key)
    return cb.id


# -- bookings ---------------------------------------------------------------------------------------


async def test_a_booking_while_down_fails_as_an_outage_and_works_when_back(pg: PgCluster, engine: AsyncEngine) -> None:
    store = CallbackStore(engine)
    await book(store, "5550001")  # the pool holds a connection from before
    pg.pause()
    with pytest.raises(Exception) as failed:
        await asyncio.wait_for(book(store, "5550002"), 10)
    assert is_outage(failed.value), repr(failed.value)
    pg.resume()
    for _ in range(2):  # the first may still meet a connection of the old server: that one is an outage too
        try:
            await book(store, "5550002")
            break
        except Exception as exc:  # noqa: BLE001 - any failure here must be an outage
            assert is_outage(exc), repr(exc)
    assert [cb.number for cb in await store.list()] == ["5550001", "5550002"]


async def test_a_booking_retried_with_its_key_finds_its_row_not_a_second(engine: AsyncEngine) -> None:
    store = CallbackStore(engine)
    first = await book(store, "5550003", key="k-1")
    # the commit went through but its answer was lost: the retry, same key, gets the same callback
    assert await book(store, "5550003", key="k-1") == first
    # a second booking of the same number (another call, another key) is still told it exists
    with pytest.raises(AlreadyBooked):
        await book(store, "5550003", key="k-2")
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM callbacks WHERE number = '5550003'")) == 1


# -- call records -----------------------------------------------------------------------------------


async def test_call_records_wait_in_order_and_are_written_once_when_back(
    pg: PgCluster, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    recorder = CallRecorder(engine, retry_interval=0.05)
    health = health_for(engine)
    recorder.add(summary(0))
    assert await recorder.flush() == 1
    pg.pause()
    for i in range(1, 41):
        recorder.add(summary(i))
        if i % 10 == 0:
            assert await recorder.flush() == 0
            await asyncio.sleep(0.06)
    assert not health.up and recorder.backlog == 40 and health.writes_waiting() >= 40
    pg.resume()

    async def written() -> bool:
        await recorder.flush()
        return recorder.backlog == 0

    await wait_until_async("the waiting records written", written, timeout=20, interval=0.1)
    assert health.up
    assert await record_ids(engine) == [f"call-{i}@h" for i in range(41)]  # in order, none twice
    log = [r.getMessage() for r in caplog.records if r.name == "callback.health"]
    assert len([m for m in log if m.startswith("database unreachable")]) == 1, log
    assert len([m for m in log if m.startswith("database reachable again")]) == 1, log
    assert not [r for r in caplog.records if r.name == "ivr.storage.records" and r.levelno >= logging.ERROR]


async def test_call_records_beyond_the_cap_are_dropped_counted_and_logged_once(
    pg: PgCluster, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = CallRecorder(engine, max_waiting=10, retry_interval=0.05)
    pg.pause()
    try:
        for i in range(25):
            recorder.add(summary(i))
        await recorder.flush()
    finally:
        pg.resume()
    assert recorder.backlog == 10 and recorder.dropped == 15
    families = {m.name: m for m in DatabaseCollector(health_for(engine)).collect()}
    dropped = {s.labels["kind"]: s.value for s in families["frontdesk_database_writes_dropped"].samples}
    assert dropped["call_records"] == 15
    assert len([r for r in caplog.records if "dropping the newest" in r.getMessage()]) == 1

    async def written() -> bool:
        await recorder.flush()
        return recorder.backlog == 0

    await wait_until_async("the kept records written", written, timeout=20, interval=0.1)
    assert await record_ids(engine) == [f"call-{i}@h" for i in range(10)]


async def test_a_batch_whose_commit_may_have_gone_through_is_not_written_twice(engine: AsyncEngine) -> None:
    recorder = CallRecorder(engine)
    batch = [summary(i) for i in range(5)]
    # the COMMIT reached the server, then the connection broke before its answer: the rows are there...
    other = CallRecorder(engine)
    for s in batch[:3]:
        other.add(s)
    assert await other.flush() == 3
    # ...and the writer, not knowing, keeps them as a COMMIT that failed leaves them
    recorder._unsure.update((s.call_id, s.invite_at) for s in batch[:3])
    for s in batch:
        recorder.add(s)
    assert await recorder.flush() == 2
    assert await record_ids(engine) == [f"call-{i}@h" for i in range(5)]


# -- texts ------------------------------------------------------------------------------------------


async def test_texts_handed_over_while_down_are_written_in_order_once(pg: PgCluster, engine: AsyncEngine) -> None:
    outbox = Outbox(engine, retry_interval=0.05)
    intake = asyncio.create_task(outbox.run_intake())
    try:
        outbox.submit("+15550100", "first", "callback")
        await wait_until_async("the first text written", lambda: _no_wait(outbox))
        pg.pause()
        for i in range(20):
            outbox.submit("+15550100", f"text {i}", "callback")
        await asyncio.sleep(0.3)
        assert outbox.waiting == 20 and not outbox.health.up
        pg.resume()
        await wait_until_async("the waiting texts written", lambda: _no_wait(outbox), timeout=20)
    finally:
        intake.cancel()
        await asyncio.gather(intake, return_exceptions=True)
    async with engine.connect() as conn:
        bodies = list((await conn.scalars(select(TextMessage.body).order_by(TextMessage.id))).all())
        keys = await conn.scalar(select(func.count(func.distinct(TextMessage.intake_key))))
    assert bodies == ["first", *(f"text {i}" for i in range(20))]
    assert keys == 21


async def test_a_text_written_again_with_its_key_is_not_doubled(engine: AsyncEngine) -> None:
    outbox = Outbox(engine)
    outbox.submit("+15550100", "once", "hotkey")
    handed = outbox._handed[0]
    assert await outbox.write_handed() == 1
    outbox._handed.append(handed)  # a retry after a COMMIT whose answer was lost
    assert await outbox.write_handed() == 1 and outbox.waiting == 0
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(TextMessage)) == 1
    with pytest.raises(IntegrityError):  # the key is unique in the table itself
        async with engine.begin() as conn:
            await conn.execute(
                TextMessage.__table__.insert(),
                {
                    "to_number": "+1",
                    "body": "x",
                    "reason": "hotkey",
                    "created_at": NOW,
                    "state": "queued",
                    "attempts": 0,
                    "next_attempt_at": NOW,
                    "intake_key": handed.key,
                },
            )


async def _no_wait(outbox: Outbox) -> bool:
    return outbox.waiting == 0


# -- SQLite: locked ------------------------------------------------------------------------------------


async def test_sqlite_locked_past_its_busy_timeout_is_an_outage_and_records_wait(tmp_path: Path) -> None:
    path = tmp_path / "frontdesk.db"
    # SQLite waits for a lock (30 s in the server); here a short wait, so "database is locked" comes soon
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}", connect_args={"timeout": 0.3})
    try:
        await init_schema(engine)
        recorder = CallRecorder(engine, retry_interval=0.0)
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        try:
            recorder.add(summary(1))
            assert await recorder.flush() == 0
            assert recorder.backlog == 1 and not recorder.health.up
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert await recorder.flush() == 1 and recorder.health.up
        assert await record_ids(engine) == ["call-1@h"]
    finally:
        await engine.dispose()


def test_what_counts_as_an_outage() -> None:
    from sqlalchemy.exc import OperationalError, ProgrammingError

    assert is_outage(ConnectionRefusedError(111, "refused"))
    assert is_outage(TimeoutError())
    assert is_outage(OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked")))
    assert is_outage(OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full")))
    assert not is_outage(OperationalError("INSERT", {}, sqlite3.OperationalError("no such table: callbacks")))
    assert not is_outage(ProgrammingError("SELECT", {}, Exception("syntax error")))
    assert not is_outage(ValueError("a callback number is digits"))
    assert not is_outage(IntegrityError("INSERT", {}, Exception("duplicate key")))


# -- the HTTP APIs ----------------------------------------------------------------------------------


async def test_an_api_handler_answers_503_with_a_message_while_the_database_is_down(
    pg: PgCluster, engine: AsyncEngine
) -> None:
    @needs_database
    async def audit_page(limit: int) -> list[dict[str, object]]:
        return await read_audit(engine, limit)

    assert await audit_page(10) == []
    pg.pause()
    try:
        with pytest.raises(ApiError) as refused:
            await asyncio.wait_for(audit_page(10), 10)
    finally:
        pg.resume()
    assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "5"}
    assert "database is unreachable" in refused.value.error
    assert refused.value.detail[0][0] == "database"

    @needs_database
    async def a_bug() -> None:
        raise KeyError("not an outage")

    with pytest.raises(KeyError):  # anything else is left to the server's 500 (and its log line)
        await a_bug()
