"""A caller whose callback cannot be booked (PostgreSQL is down) is offered a message and leaves one.

The server keeps everything in a PostgreSQL of this test's own
(tests/support/pg.py), stopped before the call. The caller
(tests/sipp/booking_failed_message.xml) goes through the demo IVR to the
callback offer, books "as soon as possible", hears it could not be booked,
takes the demo's `failed` branch (press 1 to leave a message), speaks 7 s
and ends with '#'. Then:

- while the database is still down, the message is on disk (a WAV with the
  speech in it), no callback was promised, and the call's record waits;
- once it is back, the call's record is written with the WAV's path and the
  path through the flow: the booking, its failure, the message.
"""

from __future__ import annotations

import json
import wave
from collections.abc import Callable
from pathlib import Path

import pytest
from support.bookings import booking_overrides
from support.pg import PgCluster, private_cluster
from support.server import Server
from support.sipp import dial
from support.waiting import wait_until

pytestmark = [pytest.mark.sipp, pytest.mark.postgres, pytest.mark.slow]

CALLER = "4447100"


pg = pytest.fixture(private_cluster, name="pg")  # its own: the tests stop and start it


def test_a_caller_leaves_a_message_when_the_booking_fails(
    pg: PgCluster, server_factory: Callable[[dict[str, object]], Server], sipp: str, tmp_path: Path
) -> None:
    url = pg.create_database("live")
    database = url.rsplit("/", 1)[1]
    overrides, _ = booking_overrides(tmp_path)
    overrides["storage"] = {"url": url, "flush_interval": 0.2}
    media = overrides["media"]
    assert isinstance(media, dict)
    media["timeout"] = 0  # the caller sends no RTP until the recording
    recordings = Path(media["recordings_dir"])
    server = server_factory(overrides)
    assert server.metric("frontdesk_database_up") == 1
    pg.pause()
    try:
        run = dial(sipp, server, tmp_path / "caller", "booking_failed_message.xml", [CALLER], timeout=60)
        assert run.successful == 1, run.report()
        # still down: the message is kept on disk, nothing was booked, the record waits in memory
        assert server.metric("frontdesk_database_up") == 0
        assert server.metric("frontdesk_callback_bookings_total") == 0
        assert server.metric("frontdesk_callback_booking_errors_total") == 1
        wait_until(
            "the call's record held for the database",
            lambda: server.metric("frontdesk_database_writes_waiting", kind="call_records") == 1,
            10,
        )
        (message,) = recordings.glob("*.wav")
        with wave.open(str(message)) as w:
            seconds = w.getnframes() / w.getframerate()
        assert 5.0 < seconds < 10.0, seconds  # the 7 s of speech
        about = json.loads(message.with_suffix(".json").read_text())  # who left it, whatever becomes of the record
        assert about["caller"] and about["call_id"] and 5.0 < about["seconds"] < 10.0, about
    finally:
        pg.resume()

    def records() -> int:
        return int(pg.psql("SELECT count(*) FROM call_records", database).strip())

    wait_until("the call's record written", lambda: records() == 1, timeout=20, interval=0.2)
    row = pg.psql("SELECT caller, recording, ivr_path, ivr_outcomes FROM call_records", database).strip()
    caller, recording, path, outcomes = row.split("|")
    assert (caller, recording) == (CALLER, str(message))
    assert "book_asap booking_failed leave_message message_saved" in path, path
    assert {"callback_failed", "message", "message_left"} <= set(outcomes.split(",")), outcomes
    assert pg.psql("SELECT count(*) FROM callbacks", database).strip() == "0"
    assert server.metric("frontdesk_database_writes_dropped_total") == 0
    assert "Traceback" not in server.log_path.read_text()
