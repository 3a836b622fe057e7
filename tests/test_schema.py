"""Database files made before the IVR columns existed keep working after an upgrade at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, inspect

from ivr.storage.records import CallRecorder, CallSummary, RecordsBase, complaint_counts, create_engine, init_schema
from ivr.storage.upgrade import SchemaError, add_missing_columns

OLD_CALL_RECORDS = """
CREATE TABLE call_records (
    id INTEGER NOT NULL PRIMARY KEY, call_id VARCHAR(255) NOT NULL, caller VARCHAR(255) NOT NULL,
    called VARCHAR(255) NOT NULL, invite_at DATETIME NOT NULL, answer_at DATETIME, end_at DATETIME NOT NULL,
    answer_latency_s FLOAT, outcome VARCHAR(32) NOT NULL, hangup_by VARCHAR(16), end_status INTEGER,
    transport VARCHAR(8) NOT NULL
)
"""


async def test_an_old_call_records_table_gains_the_ivr_columns(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(OLD_CALL_RECORDS)
        await init_schema(engine)  # create_all leaves the existing table alone
        added = await add_missing_columns(engine, RecordsBase.metadata)
        assert added == [
            "call_records.complaint",
            "call_records.ivr_path",
            "call_records.keys",
            "call_records.ivr_outcomes",
            "call_records.recording",
        ]
        assert await add_missing_columns(engine, RecordsBase.metadata) == []  # idempotent

        async with engine.connect() as conn:
            indexes = await conn.run_sync(lambda c: {i["name"] for i in inspect(c).get_indexes("call_records")})
        assert "ix_call_records_complaint" in indexes

        recorder = CallRecorder(engine)
        recorder.add(CallSummary("c1", "+1555", "100", 1.7e9, None, 1.7e9 + 5, "completed", None, None, "udp", "other"))
        assert await recorder.flush() == 1 and recorder.write_errors == 0
        assert await complaint_counts(engine, 2023, 11) == {"other": 1}
    finally:
        await engine.dispose()


async def test_a_missing_not_null_column_is_refused_by_name(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE things (id INTEGER PRIMARY KEY)")
        metadata = MetaData()
        Table("things", metadata, Column("id", Integer, primary_key=True), Column("name", String(9), nullable=False))
        with pytest.raises(SchemaError, match="table things has no column name"):
            await add_missing_columns(engine, metadata)
    finally:
        await engine.dispose()
