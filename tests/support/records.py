"""The server's call records, read straight from its SQLite file while it runs."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from support.waiting import wait_until


def read_records(db_path: Path) -> list[dict[str, object]]:
    """Every row of ``call_records`` in the order written; none while the table is not created yet."""
    con = sqlite3.connect(db_path, timeout=5)
    try:
        con.row_factory = sqlite3.Row
        try:
            rows = con.execute("SELECT * FROM call_records ORDER BY id").fetchall()
        except sqlite3.OperationalError:  # table not created yet
            return []
        return [dict(r) for r in rows]
    finally:
        con.close()


def wait_for_records(
    db_path: Path, expected: int, timeout: float = 2.5, settle: float = 0.3
) -> list[dict[str, object]]:
    """Poll the call_records table until it holds ``expected`` rows (or ``timeout`` passes); the rows then.

    Waits ``settle`` more seconds once the count is reached so that extra,
    unexpected rows written by the same flush cycle show up too. On a timeout
    it returns what is there: the test's own assertion shows it.
    """
    try:
        wait_until(f"{expected} call records", lambda: len(read_records(db_path)) >= expected, timeout)
    except AssertionError:
        return read_records(db_path)
    if settle:
        time.sleep(settle)
    return read_records(db_path)
