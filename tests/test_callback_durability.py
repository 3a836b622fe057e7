"""Kill -9 during a burst of bookings: every booking a caller began to hear confirmed survives, none twice.

SIPp callers (tests/sipp/queue_book_callback.xml) are overflowed to the
demo's callback offer and book one each, all within a few seconds. Each
caller's RTP goes to a socket of this test, which keeps what the caller
heard. The server is killed with SIGKILL in the middle of the burst and
started again on the same database. A caller who heard the first frame of
"Your callback is booked" must have its callback in the list (the booking
was committed before the prompt began), and no number has two.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support.bookings import booking_overrides, confirmation
from support.callers import CallerEar, find_all
from support.server import Server, start_server
from support.sipp import run_callers

pytestmark = [pytest.mark.sipp, pytest.mark.slow]

CALLERS = 24


def test_bookings_survive_kill_9(
    server_factory: Callable[[dict[str, object]], Server], sipp: str, tmp_path: Path
) -> None:
    overrides, store = booking_overrides(tmp_path)
    server = server_factory(overrides)
    ears = [CallerEar() for _ in range(CALLERS)]
    numbers = [f"44460{i:02d}" for i in range(CALLERS)]
    for ear in ears:
        ear.start()
    try:
        with ThreadPoolExecutor(1) as pool:
            # 12/s: the bookings (about 11 s into each call) spread over 2 s
            run = pool.submit(
                run_callers, sipp, server, tmp_path / "burst",
                [(n, ear.port, None) for n, ear in zip(numbers, ears, strict=True)],
                scenario="queue_book_callback.xml", rate=12, timeout=25,
            )  # fmt: skip
            time.sleep(11.0 + CALLERS / 12 / 2)  # the middle of the bookings
            os.kill(server.proc.pid, signal.SIGKILL)
            server.proc.wait(5)
            run.result(timeout=60)  # SIPp's calls fail from here on; that is the point
    finally:
        for ear in ears:
            ear.stop()

    booked_frames = confirmation(store)
    heard = {n for n, ear in zip(numbers, ears, strict=True) if find_all(ear.payloads(), booked_frames)}
    with sqlite3.connect(server.db_path) as conn:
        booked_before = [r[0] for r in conn.execute("SELECT number FROM callbacks")]
    # the kill fell inside the burst: some heard the confirmation, some did not get that far
    assert 0 < len(heard) < CALLERS, (len(heard), sorted(heard))

    again = start_server(tmp_path, overrides)  # the same database file
    try:
        with sqlite3.connect(again.db_path) as conn:
            rows = [(r[0], r[1]) for r in conn.execute("SELECT number, state FROM callbacks")]
    finally:
        again.stop()
    numbers_booked = [n for n, _ in rows]
    assert len(numbers_booked) == len(set(numbers_booked)), "a number booked twice"
    assert heard <= set(numbers_booked), f"confirmed but lost: {sorted(heard - set(numbers_booked))}"
    assert sorted(numbers_booked) == sorted(booked_before)
    assert all(state in ("booked", "due") for _, state in rows)
