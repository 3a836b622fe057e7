"""PostgreSQL stopped and started under a stream of SIPp callers booking callbacks through the demo IVR.

The server keeps everything in a PostgreSQL of this test's own
(tests/support/pg.py). Callers (tests/sipp/queue_book_callback.xml) are
overflowed to the demo's callback offer and book one each, about 11 s into
their call, a few a second. While their bookings run the database is stopped
as a crash stops it, and a few seconds later started again. Each caller's RTP
goes to a socket of this test, which keeps what the caller heard:

- every caller heard either "your callback is booked" or "we could not book
  your callback", never both, never nothing;
- every caller refused heard the demo's `failed` branch next, the offer to
  leave a message (which they let pass), and nobody booked heard it;
- every caller who heard "booked" has exactly one row, and no other caller has one;
- callers heard the refusal while the database was down, and bookings before
  and after it went through;
- after it is back every call of the run has its call record, none twice;
- while it is down the admin API answers 503 (not 500) and /metrics says so.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support.bookings import booking_overrides, confirmation, refusal
from support.callers import CallerEar, find_all
from support.pg import PgCluster, private_cluster
from support.server import Server
from support.sipp import run_callers
from support.waiting import wait_until

from ivr.media.g711 import get_codec

pytestmark = [pytest.mark.sipp, pytest.mark.postgres, pytest.mark.slow]

CALLERS = 30
RATE = 3.0  # calls a second: the bookings (about 11 s into each call) spread over 10 s
DOWN_AT = 14.0  # seconds after the first call: the database stops...
UP_AT = 18.5  # ...and starts again
TOKEN = "outage-test-admin-token"


pg = pytest.fixture(private_cluster, name="pg")  # its own: the tests stop and start it


def admin_status(server: Server, path: str) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}{path}", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, dict(json.loads(r.read()))
    except urllib.error.HTTPError as exc:
        return exc.code, dict(json.loads(exc.read()))


def test_bookings_records_and_api_through_a_postgres_outage(
    pg: PgCluster, server_factory: Callable[[dict[str, object]], Server], sipp: str, tmp_path: Path
) -> None:
    url = pg.create_database("live")
    database = url.rsplit("/", 1)[1]
    overrides, store = booking_overrides(tmp_path)
    overrides["storage"] = {"url": url, "flush_interval": 0.2}
    overrides["admin"] = {"token": TOKEN}
    media = overrides["media"]
    assert isinstance(media, dict)
    media["timeout"] = 0  # the callers send no RTP; a refused one's call lasts past 30 s
    server = server_factory(overrides)
    assert server.metric("frontdesk_database_up") == 1
    ears = [CallerEar() for _ in range(CALLERS)]
    numbers = [f"44470{i:02d}" for i in range(CALLERS)]
    for ear in ears:
        ear.start()
    try:
        with ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            run = pool.submit(
                run_callers, sipp, server, tmp_path / "callers",
                [(n, ear.port, None) for n, ear in zip(numbers, ears, strict=True)],
                scenario="queue_book_callback.xml", rate=RATE, timeout=60,
            )  # fmt: skip
            time.sleep(DOWN_AT)
            pg.pause()
            try:
                wait_until("the server to see the outage", lambda: server.metric("frontdesk_database_up") == 0, 10)
                status, body = admin_status(server, "/admin/audit")
                assert status == 503, body
                assert "database is unreachable" in str(body["error"])
                assert time.monotonic() - started < UP_AT, "the checks took too long for the plan"
                time.sleep(max(0.0, UP_AT - (time.monotonic() - started)))
            finally:
                pg.resume()
            sipp_run = run.result(timeout=90)
    finally:
        for ear in ears:
            ear.stop()

    booked_frames, refused_frames = confirmation(store), refusal(store)
    heard_booked = {n for n, ear in zip(numbers, ears, strict=True) if find_all(ear.payloads(), booked_frames)}
    heard_refused = {n for n, ear in zip(numbers, ears, strict=True) if find_all(ear.payloads(), refused_frames)}
    print(f"booked {len(heard_booked)}, refused {len(heard_refused)} of {CALLERS}")  # shown with -s
    assert not heard_booked & heard_refused, sorted(heard_booked & heard_refused)
    assert heard_booked | heard_refused == set(numbers), (
        f"heard neither: {sorted(set(numbers) - heard_booked - heard_refused)}"
    )
    assert heard_refused, "nobody booked while the database was down"
    assert numbers[0] in heard_booked and numbers[-1] in heard_booked, (sorted(heard_booked), sorted(heard_refused))
    offer = list(store.frames("booking_failed_offer", get_codec("PCMU")))
    first = next(i for i, frame in enumerate(offer) if len(set(frame) - {0xFF, 0x7F}) > 8)  # past its opening silence
    offer_frames = offer[first : first + 3]
    heard_offer = {n for n, ear in zip(numbers, ears, strict=True) if find_all(ear.payloads(), offer_frames)}
    assert heard_offer == heard_refused, (sorted(heard_offer - heard_refused), sorted(heard_refused - heard_offer))

    rows = pg.psql("SELECT number FROM callbacks ORDER BY number", database).split()
    assert len(rows) == len(set(rows)), "a number booked twice"
    assert set(rows) == heard_booked, (sorted(set(rows) - heard_booked), sorted(heard_booked - set(rows)))

    def records() -> int:
        return int(pg.psql("SELECT count(*) FROM call_records", database).strip())

    wait_until("every call's record written", lambda: records() >= CALLERS, timeout=20, interval=0.2)
    calls = pg.psql("SELECT count(DISTINCT call_id), count(*) FROM call_records", database).strip()
    assert calls == f"{CALLERS}|{CALLERS}", calls
    assert server.metric("frontdesk_database_up") == 1
    assert server.metric("frontdesk_database_writes_dropped_total") == 0
    assert server.metric("frontdesk_database_write_failures_total", kind="bookings") >= len(heard_refused) > 0
    assert admin_status(server, "/admin/audit")[0] == 200
    log = server.log_path.read_text()
    assert log.count("database unreachable") == 1, log[-3000:]
    assert log.count("database reachable again") == 1, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert sipp_run is not None
