"""Call records (ivr/storage/records.py): the SQLite fast path stores exactly what SQLAlchemy's Core insert stores."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, text

from ivr.storage.records import (
    CallRecord,
    CallRecorder,
    CallSummary,
    count_records,
    create_engine,
    init_schema,
    summary_row,
)

SUMMARIES = [
    CallSummary("a@h", "+15550001", "100", 1796168228.146718, 1796168228.25, 1796168230.5, "completed", "caller", 200,
                "udp", complaint="billing", ivr_path="root menu", keys="1#", ivr_outcomes="self_service"),
    CallSummary("b@h", "anonymous", "100", 1796168300.0, None, 1796168301.000001, "abandoned", None, None, "tcp"),
]  # fmt: skip


def test_sqlite_batch_rows_match_core_insert(tmp_path: Path) -> None:
    async def main() -> tuple[list[tuple[object, ...]], list[tuple[object, ...]], list[Any]]:
        fast, core = (
            create_engine(f"sqlite+aiosqlite:///{tmp_path / 'fast.db'}"),
            create_engine(f"sqlite+aiosqlite:///{tmp_path / 'core.db'}"),
        )
        try:
            for engine in (fast, core):
                await init_schema(engine)
            recorder = CallRecorder(fast)
            for s in SUMMARIES:
                recorder.add(s)
            assert await recorder.flush() == len(SUMMARIES) and recorder.backlog == 0
            async with core.begin() as conn:
                await conn.execute(insert(CallRecord), [summary_row(s) for s in SUMMARIES])
            raw = []
            for engine in (fast, core):
                async with engine.connect() as conn:
                    rows = (await conn.execute(text("SELECT * FROM call_records ORDER BY id"))).all()
                    raw.append([tuple(r) for r in rows])
            async with fast.connect() as conn:
                orm = list((await conn.execute(select(CallRecord).order_by(CallRecord.id))).all())
            assert await count_records(fast) == {"completed": 1, "abandoned": 1}
            return raw[0], raw[1], orm
        finally:
            await fast.dispose()
            await core.dispose()

    fast_rows, core_rows, read_back = asyncio.run(main())
    assert fast_rows == core_rows
    assert len(read_back) == 2 and read_back[0].answer_latency_s is not None
    assert read_back[1].answer_at is None


def test_a_failed_batch_is_kept_for_the_next_flush(tmp_path: Path) -> None:
    async def main() -> tuple[int, int, int, int]:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
        try:
            recorder = CallRecorder(engine)
            recorder.add(SUMMARIES[0])
            first = await recorder.flush()  # no table yet: the write fails
            kept = recorder.backlog
            await init_schema(engine)
            second = await recorder.flush()
            return first, kept, second, recorder.write_errors
        finally:
            await engine.dispose()

    assert asyncio.run(main()) == (0, 1, 1, 1)
