"""SIGTERM drains a real ``frontdesk serve``: the call in progress ends as it would, then the process exits 0.

Each test starts the server (tests/support/server.py), holds a SIPp call on it
and sends SIGTERM. While it drains, OPTIONS and a new INVITE get 503 with
Retry-After, ``/healthz`` answers 503 ``draining`` and ``/metrics`` says so;
the call's own requests (ACK, BYE) are served. The process exits 0 once the
call is over, or at ``shutdown.drain_seconds`` after hanging the call up (the
caller's SIPp scenario waits for that BYE), or at once on a second signal. A
caller waiting in line when the drain starts still reaches an agent.
"""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from support.agents import admin_queue, agent_phone, answers_then_hangs_up, http, server_config
from support.callers import caller_media
from support.records import wait_for_records
from support.server import Server, start_server
from support.sipp import SippRun, UdpSipClient, run_callers, run_sipp, sdp_offer
from support.waiting import wait_until

pytestmark = pytest.mark.sipp

NO_TIMERS = {"hold_time": 60}  # the server's own timers end no call in these tests
NO_MEDIA_TIMEOUT = {"timeout": 0}


@pytest.fixture
def server_with(tmp_path: Path) -> Iterator[Callable[[float], Server]]:
    started: list[Server] = []

    def make(drain_seconds: float) -> Server:
        s = start_server(
            tmp_path,
            {"sip": NO_TIMERS, "media": NO_MEDIA_TIMEOUT, "shutdown": {"drain_seconds": drain_seconds}},
        )
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


def hold_a_call(pool: ThreadPoolExecutor, sipp: str, server: Server, tmp_path: Path, **kw: object) -> Future[SippRun]:
    run: Future[SippRun] = pool.submit(run_sipp, sipp, server.sip_target, tmp_path / "sipp", calls=1, rate=1, **kw)  # type: ignore[arg-type]
    wait_until("the call answered", lambda: server.metric("frontdesk_calls_active") == 1 or run.done(), timeout=10)
    assert not run.done(), run.result().report()
    return run


def exits(server: Server, timeout: float) -> int:
    try:
        return server.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not exit within {timeout} s:\n{server.log_path.read_text()[-3000:]}")


def health_status(server: Server) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/healthz", timeout=5) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_sigterm_lets_the_call_in_progress_finish_and_exits_0(
    server_with: Callable[[float], Server], sipp: str, tmp_path: Path
) -> None:
    server = server_with(30)
    with ThreadPoolExecutor(1) as pool, UdpSipClient(server.sip_port) as probe:
        # SIPp's own caller: answered, 3 s of call, then its BYE
        call = hold_a_call(pool, sipp, server, tmp_path, sn="uac", timeout=20, extra=["-d", "3000"])
        server.terminate()
        signalled = time.monotonic()
        wait_until("draining", lambda: server.metric("frontdesk_draining") == 1, timeout=5)
        assert server.metric("frontdesk_drain_calls_left") == 1
        status, body = health_status(server)
        assert status == 503 and '"draining"' in body, body
        # a proxy's OPTIONS probe and a new call are refused: the proxy tries its next node
        probe.send(probe.build("OPTIONS"))
        reply = probe.final_reply()
        assert (reply.status, reply.get("retry-after")) == (503, "5")
        probe.send(probe.build("INVITE", body=sdp_offer("0", ("0 PCMU/8000",))))
        reply = probe.final_reply()
        assert (reply.status, reply.get("retry-after")) == (503, "5")
        run = call.result(timeout=30)
        assert run.returncode == 0 and run.successful == 1 and run.failed == 0, run.report()
        assert exits(server, 10) == 0
        took = time.monotonic() - signalled
    log = server.log_path.read_text()
    assert "drain done" in log and "0 call(s) hung up by the drain" in log, log[-3000:]
    assert took < 10, f"exited {took:.1f} s after SIGTERM, well before the 30 s limit: the call was over"
    records = wait_for_records(server.db_path, 2, timeout=1)
    assert sorted((r["outcome"], r["hangup_by"]) for r in records) == [
        ("completed", "caller"),
        ("rejected", "frontdesk"),
    ]


def test_the_drain_limit_hangs_up_a_call_that_would_not_end_and_exits_0(
    server_with: Callable[[float], Server], sipp: str, tmp_path: Path
) -> None:
    server = server_with(1.5)
    with ThreadPoolExecutor(1) as pool:
        # a caller that never hangs up: it waits (5 s at most) for the server's BYE and answers it
        call = hold_a_call(pool, sipp, server, tmp_path, scenario="uac_server_bye.xml", timeout=20)
        server.terminate()
        signalled = time.monotonic()
        wait_until("draining", lambda: server.metric("frontdesk_draining") == 1, timeout=5)
        assert server.metric("frontdesk_drain_calls_ended_total") == 0
        code = exits(server, 10)
        took = time.monotonic() - signalled
        run = call.result(timeout=30)
    assert code == 0
    assert run.returncode == 0 and run.successful == 1, run.report()  # the BYE came, in the dialog
    assert 1.4 <= took < 5.0, f"exited {took:.1f} s after SIGTERM (limit 1.5 s)"
    log = server.log_path.read_text()
    assert "1 call(s) still up at the 1.5 s limit: hanging up" in log, log[-3000:]
    assert "1 call(s) hung up by the drain, 0 left" in log, log[-3000:]
    [record] = wait_for_records(server.db_path, 1, timeout=1)
    assert (record["outcome"], record["hangup_by"]) == ("completed", "frontdesk")


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_during_the_drain_stops_at_once(
    server_with: Callable[[float], Server], sipp: str, tmp_path: Path, second: signal.Signals
) -> None:
    server = server_with(60)
    with ThreadPoolExecutor(1) as pool:
        call = hold_a_call(pool, sipp, server, tmp_path, scenario="uac_server_bye.xml", timeout=20)
        server.terminate()
        wait_until("draining", lambda: server.metric("frontdesk_draining") == 1, timeout=5)
        server.proc.send_signal(second)
        signalled = time.monotonic()
        code = exits(server, 10)
        took = time.monotonic() - signalled
        run = call.result(timeout=30)
    assert code == 0
    assert run.returncode == 0 and run.successful == 1, run.report()
    assert took < 4.0, f"exited {took:.1f} s after the {second.name}"
    assert f"{second.name} during the drain: stopping at once" in server.log_path.read_text()


def test_sigint_alone_stops_at_once_hanging_up_the_call(
    server_with: Callable[[float], Server], sipp: str, tmp_path: Path
) -> None:
    server = server_with(60)
    with ThreadPoolExecutor(1) as pool:
        call = hold_a_call(pool, sipp, server, tmp_path, scenario="uac_server_bye.xml", timeout=20)
        server.proc.send_signal(signal.SIGINT)
        code = exits(server, 6)
        run = call.result(timeout=30)
    assert code == 0
    assert run.returncode == 0 and run.successful == 1, run.report()


@pytest.mark.slow
def test_a_caller_waiting_in_line_when_the_drain_starts_still_reaches_an_agent(sipp: str, tmp_path: Path) -> None:
    """Draining takes no new call but serves the line: the agent made ready rings, talks, and the server exits."""
    # the drain lasts 8 s at least: the agent's phone leaves (REGISTER, served on one node) before the server
    config = server_config({"ring_timeout": 5, "max_wait": 60, "wrap_up": 1}, ["8001"])
    config["shutdown"] = {"drain_seconds": 30, "drain_min_seconds": 8}
    server = start_server(tmp_path, config)
    talks: list[str] = []
    try:
        with (
            agent_phone(server, "8001", answers_then_hangs_up(talks, 1.0)),
            caller_media(1) as [media],
            ThreadPoolExecutor(1) as pool,
        ):
            status, body = http(server, "POST", "/agent/not-ready", agent="8001", body={"reason": "briefing"})
            assert (status, body["state"]) == (200, "not_ready"), body
            rows = [("4445001", media.port, None)]
            caller = pool.submit(
                run_callers, sipp, server, tmp_path / "caller", rows, scenario="queue_caller_until_bye.xml"
            )
            wait_until("the caller in line", lambda: admin_queue(server)["waiting"] == 1, 10)
            server.terminate()
            wait_until("draining", lambda: server.metric("frontdesk_draining") == 1, timeout=5)
            status, body = http(server, "POST", "/agent/ready", agent="8001")  # the agents' API still answers
            assert status == 200, body
            run = caller.result(timeout=40)
            assert run.returncode == 0 and run.successful == 1, run.report()
        assert talks == ["4445001"]
        assert exits(server, 15) == 0
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert "draining: 1 call(s) in progress" in log and "0 call(s) hung up by the drain" in log, log[-3000:]
