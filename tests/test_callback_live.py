"""Callbacks end to end: a SIPp caller books one by DTMF, a pyVoIP agent works it, a SIPp customer is dialled.

1. The demo flow's queue overflows a caller (max wait 3 s, overflow target
   ``callback``) to its callback offer; the caller presses 1 (this number)
   and 1 (as soon as possible); the booking is in the database, keeping the
   caller's place (``arrived_at`` is when they joined the queue) and a
   promise from the forecast, and the caller heard "booked" only after that.
   Then an agent's phone registers: the dispatcher claims the callback for
   that agent, rings the phone, and once the agent answers dials the
   customer (SIPp's own UAS, the trunk in the config) and bridges the two.
   The agent hangs up; the customer gets BYE.
2. R10: a caller who booked a callback and then calls again and reaches an
   agent has the callback closed and gets a text message saying so.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from support.agents import agent_phone, http, server_config
from support.callers import caller_media
from support.ports import free_port, port_range
from support.records import wait_for_records
from support.server import Server
from support.sipp import run_callers
from support.waiting import wait_until

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # pyVoIP imports audioop (deprecated in 3.11)
    from pyVoIP.VoIP import CallState, VoIPCall

pytestmark = [pytest.mark.pyvoip, pytest.mark.sipp]


def callbacks(server: Server) -> list[dict[str, Any]]:
    with sqlite3.connect(server.db_path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM callbacks ORDER BY id")]


def texts(server: Server) -> list[tuple[str, str, str]]:
    with sqlite3.connect(server.db_path) as conn:
        return [tuple(r) for r in conn.execute("SELECT to_number, reason, body FROM text_messages ORDER BY id")]


def config(trunk_port: int, **callbacks: object) -> dict[str, object]:
    cfg = server_config({"max_wait": 3, "overflow": "callback", "wrap_up": 1}, ["8001"])
    cfg["callbacks"] = {
        "trunk": f"sip:{{number}}@127.0.0.1:{trunk_port}",
        "reserve_agents": 0,
        "dispatch_interval": 0.5,
        "promise_margin": 60,
        **callbacks,
    }
    cfg["security"] = {"trusted_networks": ["127.0.0.1/32"]}  # SIPp is the trunk: its callers' numbers are believed
    return cfg


def test_caller_books_a_callback_and_an_agent_calls_the_customer_back(
    server_factory: Callable[[dict[str, object]], Server], sipp: str, tmp_path: Path
) -> None:
    trunk_port = free_port()
    server = server_factory(config(trunk_port))
    # 1. the booking: nobody is logged in, so the queue overflows the caller after 3 s
    with caller_media(1) as [media]:
        run = run_callers(
            sipp, server, tmp_path / "book", [("4445001", media.port, None)], scenario="queue_book_callback.xml"
        )
    assert run.returncode == 0 and run.successful == 1, run.report()
    [cb] = callbacks(server)
    assert (cb["number"], cb["queue"], cb["state"], cb["kind"]) == ("4445001", "general", "due", "callback")
    assert cb["created_by"] == "ivr" and cb["call_id"]
    [record] = wait_for_records(server.db_path, 1, timeout=5, settle=0)
    outcomes = record["ivr_outcomes"].split(",")
    assert outcomes[:2] == ["queued", "overflow:callback"] and "callback_booked" in outcomes
    assert record["ivr_path"].split()[3:7] == ["agent", "offer_callback", "callback_slot", "book_asap"]
    assert server.metric("frontdesk_callback_bookings_total") == 1
    wait_until("the dispatcher's count", lambda: server.metric("frontdesk_callbacks", state="due") == 1, 3)

    # 2. the customer's phone (SIPp's UAS) and the agent's phone (pyVoIP, auto-answer)
    uas = subprocess.Popen(
        [sipp, "-sn", "uas", "-i", "127.0.0.1", "-p", str(trunk_port), "-m", "1", "-timeout", "40s",
         "-timeout_error", "-nostdin", "-bind_local", "-mp", str(port_range(4).start)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    answered: list[VoIPCall] = []

    def on_call(call: VoIPCall) -> None:
        call.answer()
        answered.append(call)

    # R15: in a surge the dispatcher leaves the agent to inbound callers
    status, body = http(server, "PUT", "/admin/surge", body={"on": True})
    assert status == 200 and body["on"] is True, body
    try:
        with agent_phone(server, "8001", on_call) as phone:
            wait_until("the dispatcher to pause", lambda: server.metric("frontdesk_callback_dispatch_paused") == 1, 3)
            time.sleep(1.5)  # three dispatcher rounds
            assert phone.invites() == [] and callbacks(server)[0]["state"] == "due"
            assert http(server, "PUT", "/admin/surge", body={"on": False})[0] == 200
            wait_until("the callback to ring the agent", lambda: len(answered) == 1, 10)
            assert phone.invites()[0][3] == "4445001"  # the agent sees whom it calls back
            wait_until(
                "the customer to answer and be bridged",
                lambda: server.metric("frontdesk_callback_dials_total", result="connected") == 1,
                10,
            )
            [cb] = callbacks(server)
            assert (cb["state"], cb["claimed_by"], cb["attempts"]) == ("in_progress", "8001", 1)
            _, body = http(server, "GET", "/agent/state", agent="8001")
            assert (body["state"], body["reason"]) == ("not_ready", "callback")  # no inbound call rings it
            time.sleep(1.0)
            answered[0].hangup()
            wait_until(
                "the agent back to ready",
                lambda: http(server, "GET", "/agent/state", agent="8001")[1]["state"] == "ready",
                5,
            )
        assert uas.wait(15) == 0  # the customer got BYE when the agent hung up
    finally:
        if uas.poll() is None:
            uas.kill()
            uas.wait()
    assert answered[0].state == CallState.ENDED

    # 3. the agent records the outcome through the API, with a satisfaction follow-up (R18)
    [cb] = callbacks(server)
    status, body = http(
        server, "POST", f"/callbacks/{cb['id']}/outcome", agent="8001",
        body={"outcome": "completed", "notes": "router replaced", "follow_up": True},
    )  # fmt: skip
    assert status == 200, body
    done, follow_up = callbacks(server)
    assert (done["state"], done["close_reason"]) == ("completed", "completed")
    assert "router replaced" in done["notes"]
    assert (follow_up["kind"], follow_up["parent_id"], follow_up["state"]) == ("follow_up", done["id"], "booked")


def test_a_caller_who_reaches_an_agent_has_the_callback_closed(
    server_factory: Callable[[dict[str, object]], Server], sipp: str, tmp_path: Path
) -> None:
    # reserve_agents high: the dispatcher never takes the agent; the caller gets through first
    server = server_factory(config(free_port(), reserve_agents=5))
    with caller_media(1) as [media]:
        run = run_callers(
            sipp, server, tmp_path / "book", [("4445002", media.port, None)], scenario="queue_book_callback.xml"
        )
    assert run.returncode == 0, run.report()
    assert [c["state"] for c in callbacks(server)] == ["due"]

    def on_call(call: VoIPCall) -> None:
        call.answer()

    with agent_phone(server, "8001", on_call), caller_media(1) as [media], ThreadPoolExecutor(1) as pool:
        calls = pool.submit(run_callers, sipp, server, tmp_path / "again", [("4445002", media.port, 4000)])
        assert calls.result(timeout=30).returncode == 0
    wait_until("the callback to close", lambda: callbacks(server)[0]["state"] != "due", 5)
    [cb] = callbacks(server)
    assert cb["close_reason"] == "reached_agent"
    assert server.metric("frontdesk_callback_closed_reached_agent_total") == 1
    wait_until("the text message", lambda: any(t[1] == "callback" for t in texts(server)), 5)
    wait_until("the text message", lambda: any("closed the callback" in t[2] for t in texts(server)), 5)
    sent = [t for t in texts(server) if t[1] == "callback"]
    assert [(to, "closed the callback" in body) for to, _, body in sent].count(("4445002", True)) == 1
    # while nobody served the queue, the promise monitor had warned the caller (R10)
    assert any(to == "4445002" and "self-service" in body for to, _, body in sent)


def test_an_agent_claims_a_callback_and_calls_the_customer_from_the_api(
    server_factory: Callable[[dict[str, object]], Server], sipp: str, tmp_path: Path
) -> None:
    trunk_port = free_port()
    # reserve_agents high: the dispatcher never dials; the agent does it by hand (click-to-call)
    server = server_factory(config(trunk_port, reserve_agents=5))
    status, body = http(server, "POST", "/callbacks", agent="8001", body={"number": "4445003", "queue": "general"})
    assert status == 201, body
    cb_id = body["callback"]["id"]
    wait_until("the callback to be due", lambda: callbacks(server)[0]["state"] == "due", 3)
    uas = subprocess.Popen(
        [sipp, "-sn", "uas", "-i", "127.0.0.1", "-p", str(trunk_port), "-m", "1", "-timeout", "40s",
         "-timeout_error", "-nostdin", "-bind_local", "-mp", str(port_range(4).start)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    answered: list[VoIPCall] = []

    def on_call(call: VoIPCall) -> None:
        call.answer()
        answered.append(call)

    try:
        with agent_phone(server, "8001", on_call) as phone:
            status, body = http(server, "POST", f"/callbacks/{cb_id}/call", agent="8001")
            assert status == 409 and "claim" in body["error"]  # the claim comes first
            status, body = http(server, "POST", f"/callbacks/{cb_id}/claim", agent="8001")
            assert (status, body["callback"]["state"]) == (200, "offered"), body
            # the agent's phone rings (pyVoIP answers after about 1 s), then the customer's
            status, body = http(server, "POST", f"/callbacks/{cb_id}/call", agent="8001")
            assert status == 200, body
            assert (body["callback"]["state"], body["callback"]["attempts"]) == ("in_progress", 1)
            assert [i[3] for i in phone.invites()] == ["4445003"]
            wait_until(
                "the customer to answer and be bridged",
                lambda: server.metric("frontdesk_callback_dials_total", result="connected") == 1,
                10,
            )
            time.sleep(1.0)
            answered[0].hangup()
        assert uas.wait(15) == 0
    finally:
        if uas.poll() is None:
            uas.kill()
            uas.wait()
    status, body = http(server, "POST", f"/callbacks/{cb_id}/outcome", agent="8001", body={"outcome": "completed"})
    assert (status, body["callback"]["state"]) == (200, "completed"), body
