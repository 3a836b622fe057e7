"""Durable callback bookings per second: ``frontdesk bench-bookings`` (or ``python -m callback.bench``).

Each booking is one :meth:`callback.store.CallbackStore.book`: one committed
transaction for a distinct number, exactly what the IVR waits for before the
caller hears "your callback is booked". ``--concurrency`` tasks book in a loop
for ``--seconds`` after a short warm-up; the figure is committed bookings per
second, with book() latency p50/p99. At the end the rows are counted back from
the database: every booking made (warm-up included) must be there.

Targets: SQLite in a temporary file (unless ``--no-sqlite``), and each
``--url`` (``sqlite+aiosqlite:///PATH`` or ``postgresql+asyncpg://...``). A
given database gets the callback tables if it lacks them; the benchmark's
rows go into a queue of their own and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, func, select

GOAL_SQLITE = 1000.0  # bookings/s (issue 5)


@dataclass(frozen=True)
class BookingResult:
    target: str  # "sqlite" or "postgresql"
    url: str  # without a password
    concurrency: int
    seconds: float
    bookings: int
    per_second: float
    p50_ms: float
    p99_ms: float
    booked: int  # every booking of the run, the warm-up's too
    stored: int  # rows found in the database afterwards: equals booked


def _log(msg: str) -> None:
    print(f"bench-bookings: {msg}", file=sys.stderr, flush=True)


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


async def bench_url(url: str, *, seconds: float, concurrency: int, warmup: float = 0.5) -> BookingResult:
    """Book for ``seconds`` with ``concurrency`` tasks on ``url``; every booking commits."""
    from callback import db
    from callback.store import CallbackStore
    from callback.store import T as table

    engine = db.create_engine(url, pool_size=max(5, concurrency))
    queue = f"bench-{secrets.token_hex(4)}"
    numbers = itertools.count(1)
    latencies: list[float] = []
    booked = 0
    try:
        await db.init_schema(engine)
        store = CallbackStore(engine)
        measuring = False
        stop_at = float("inf")

        async def worker() -> None:
            nonlocal booked
            while True:
                now = datetime.now(UTC)
                t = time.perf_counter()
                if t >= stop_at:
                    return
                await store.book(
                    queue=queue,
                    number=f"+1{next(numbers):010d}",
                    arrived_at=now,
                    promised_by=now + timedelta(hours=1),
                    now=now,
                    call_id=f"bench-{queue}",
                )
                booked += 1
                if measuring:
                    latencies.append(time.perf_counter() - t)

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        try:
            await asyncio.sleep(warmup)
            measuring = True
            began = time.perf_counter()
            stop_at = began + seconds
            await asyncio.gather(*tasks)
            elapsed = time.perf_counter() - began
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        async with engine.begin() as conn:
            stored = int(await conn.scalar(select(func.count()).where(table.c.queue == queue)) or 0)
            await conn.execute(delete(table).where(table.c.queue == queue))
    finally:
        await engine.dispose()
    ms = sorted(x * 1000 for x in latencies)
    n = len(ms)
    return BookingResult(
        target=engine.dialect.name,
        url=_shown(url),
        concurrency=concurrency,
        seconds=round(elapsed, 3),
        bookings=n,
        per_second=round(n / elapsed, 1) if elapsed > 0 else 0.0,
        p50_ms=round(statistics.median(ms), 2) if ms else 0.0,
        p99_ms=round(ms[min(n - 1, int(n * 0.99))], 2) if ms else 0.0,
        booked=booked,
        stored=stored,
    )


def run(urls: list[str], *, seconds: float, concurrency: int, sqlite: bool = True) -> list[BookingResult]:
    """Each target in turn (SQLite in a temporary file first, unless ``sqlite`` is false)."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop  # the loop `frontdesk serve` runs on

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    results = []
    with tempfile.TemporaryDirectory(prefix="bookbench-") as tmp:
        targets = ([f"sqlite+aiosqlite:///{Path(tmp) / 'bookings.db'}"] if sqlite else []) + urls
        for url in targets:
            _log(f"{_shown(url)}: {concurrency} tasks for {seconds:g} s")
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                result = runner.run(bench_url(url, seconds=seconds, concurrency=concurrency))
            _log(
                f"{result.target}: {result.per_second:.0f} bookings/s ({result.bookings} measured, "
                f"{result.booked} booked, {result.stored} stored), "
                f"book() p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms"
            )
            results.append(result)
    return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="frontdesk bench-bookings",
        description="Durable callback bookings per second (each one committed), on SQLite and PostgreSQL.",
    )
    p.add_argument(
        "--url",
        action="append",
        default=[],
        help="also benchmark this database (postgresql+asyncpg://USER@HOST/DB or sqlite+aiosqlite:///PATH); "
        "may be given more than once; its rows are deleted afterwards",
    )
    p.add_argument("--no-sqlite", action="store_true", help="skip the temporary SQLite file")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per target (10)")
    p.add_argument("--concurrency", type=int, default=8, help="tasks booking at once (8)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON here")
    p.add_argument("--check", action="store_true", help=f"exit 1 when SQLite books fewer than {GOAL_SQLITE:g}/s")
    return p


def main(argv: list[str] | None = None) -> int:
    # Its own short plumbing: the other benchmarks share sim/benchkit.py, which callback/ may not import
    # (it imports only callback and queueing: tests/test_layers.py).
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.seconds <= 0 or args.concurrency < 1:
        print("bench-bookings: need --seconds > 0 and --concurrency >= 1", file=sys.stderr)
        return 2
    for url in args.url:
        if not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            print(f"bench-bookings: {url!r}: use sqlite+aiosqlite:///PATH or postgresql+asyncpg://...", file=sys.stderr)
            return 2
    if args.no_sqlite and not args.url:
        print("bench-bookings: nothing to do (--no-sqlite and no --url)", file=sys.stderr)
        return 2
    results = run(args.url, seconds=args.seconds, concurrency=args.concurrency, sqlite=not args.no_sqlite)
    print(f"{'target':<12} {'bookings/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'stored':>8}  url")
    for r in results:
        print(f"{r.target:<12} {r.per_second:>10.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.stored:>8}  {r.url}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    lost = [r for r in results if r.stored != r.booked]
    if lost:
        print("bench-bookings: the database holds another number of bookings than were made!", file=sys.stderr)
        return 1
    if args.check and any(r.target == "sqlite" and r.per_second < GOAL_SQLITE for r in results):
        print(f"bench-bookings: SQLite below the goal of {GOAL_SQLITE:g} bookings/s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
