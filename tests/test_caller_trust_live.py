"""Caller-ID trust against the running server: a spoofed From gets no text and closes no callback.

The server trusts 127.0.0.1/32 only (``security.trusted_networks``); SIPp
calls from 127.0.0.2 are the untrusted peer, claiming the same number.

1. The hotkey's text (R7): an untrusted caller is served the whole IVR, but
   no text goes to the number it claims (``frontdesk_untrusted_caller_id_total
   {action="text"}``); the same caller from the trusted address gets its text;
   a second one within the window is over ``texts_per_number`` (1 here) and
   refused (``frontdesk_texts_refused_total{reason="per_number_cap"}``).
2. R10's close-on-call-again: a callback booked for a number is not closed
   when an untrusted caller claiming that number reaches an agent; it is when
   the caller comes through the trusted peer.
3. Nor can an untrusted caller cancel the claimed number's callback from the
   IVR's keep-or-cancel menu; the caller through the trusted peer can.
4. A callback an untrusted caller books for the number it claims stands,
   marked ``ivr_unverified``, but no text about it (here: its expiry) goes to
   that number; the same booking through the trusted peer gets its text.
5. A table keyed by remote input holds within its cap: a thousand distinct
   SIP transactions against ``security.limits.sip_transactions: 100``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from support.agents import agent_phone, http, server_config
from support.callers import caller_media
from support.demo import CALLER
from support.ports import free_port
from support.records import wait_for_records
from support.server import Server
from support.sipp import SippRun, UdpSipClient, run_callers, run_sipp
from support.waiting import wait_until

pytestmark = pytest.mark.sipp

TRUSTED, UNTRUSTED = "127.0.0.1", "127.0.0.2"
SECURITY = {"trusted_networks": [f"{TRUSTED}/32"], "caller_id": {"texts_per_number": 1}}


def texts(server: Server) -> list[tuple[str, str, str]]:
    with sqlite3.connect(server.db_path) as conn:
        return [tuple(r) for r in conn.execute("SELECT to_number, reason, body FROM text_messages ORDER BY id")]


def callbacks(server: Server) -> list[dict[str, Any]]:
    with sqlite3.connect(server.db_path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM callbacks ORDER BY id")]


def hotkey_call(sipp: str, server: Server, workdir: Path, source: str) -> SippRun:
    """One caller (CALLER) from ``source`` pressing the hotkey (2) by RTP."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "callers.csv").write_text(f"SEQUENTIAL\n{CALLER};\n")
    run = run_sipp(
        sipp, server.sip_target, workdir, scenario="ivr_hotkey.xml", calls=1, rate=20, timeout=15,
        extra=["-inf", str(workdir / "callers.csv"), "-i", source],  # the later -i wins
    )  # fmt: skip
    assert run.returncode == 0 and run.successful == 1, run.report()
    return run


@pytest.fixture(scope="module")
def prompt_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prompt-cache")


def test_a_spoofed_caller_gets_no_text_and_the_per_number_cap_holds(
    server_factory: Callable[[dict[str, object]], Server], sipp: str, tmp_path: Path, prompt_cache: Path
) -> None:
    server = server_factory(
        {
            "media": {"prompt_cache": str(prompt_cache), "recordings_dir": str(tmp_path / "recordings")},
            "sip": {"hold_time": 60},
            "security": SECURITY,
        }
    )
    m = server.metric
    hotkey_call(sipp, server, tmp_path / "spoofed", UNTRUSTED)
    [rec] = wait_for_records(server.db_path, 1, timeout=5)
    outcomes = str(rec["ivr_outcomes"]).split(",")
    assert outcomes[0] == "hotkey" and "text_skipped:hotkey" in outcomes, rec  # the IVR served it all the same
    assert rec["caller"] == CALLER
    assert m("frontdesk_untrusted_caller_id_total", action="text") == 1
    assert texts(server) == []

    hotkey_call(sipp, server, tmp_path / "trusted", TRUSTED)
    wait_until("the text", lambda: len(texts(server)) == 1, 5)
    assert [(to, reason) for to, reason, _ in texts(server)] == [(CALLER, "hotkey")]
    assert m("frontdesk_untrusted_caller_id_total", action="text") == 1

    hotkey_call(sipp, server, tmp_path / "again", TRUSTED)  # one text per number per hour here
    wait_for_records(server.db_path, 3, timeout=5)
    assert m("frontdesk_texts_refused_total", reason="per_number_cap") == 1
    assert len(texts(server)) == 1
    assert m("frontdesk_bounded_map_entries", map="text_numbers") == 1


def callback_config() -> dict[str, object]:
    """One queue nobody serves (max wait 3 s, then the callback offer); 8001 is an agent of the API."""
    cfg = server_config({"max_wait": 3, "overflow": "callback", "wrap_up": 1}, ["8001"])
    cfg["callbacks"] = {
        "trunk": f"sip:{{number}}@127.0.0.1:{free_port()}",
        "reserve_agents": 5,  # the dispatcher never takes the agent: the caller gets through first
        "dispatch_interval": 0.5,
        "promise_margin": 60,
    }
    cfg["security"] = {"trusted_networks": [f"{TRUSTED}/32"]}
    return cfg


def test_a_spoofed_caller_cannot_cancel_the_real_numbers_callback(
    server_factory: Callable[[dict[str, object]], Server], sipp: str, tmp_path: Path
) -> None:
    server = server_factory(callback_config())
    status, body = http(server, "POST", "/callbacks", agent="8001", body={"number": "4445003", "queue": "general"})
    assert status == 201, body

    def cancel_from(source: str, workdir: Path) -> None:
        with caller_media(1) as [media]:
            run = run_callers(
                sipp, server, workdir, [("4445003", media.port, None)], scenario="queue_cancel_callback.xml",
                extra=["-i", source],
            )  # fmt: skip
        assert run.returncode == 0, run.report()

    cancel_from(UNTRUSTED, tmp_path / "spoofed")
    assert server.metric("frontdesk_untrusted_caller_id_total", action="cancel_callback") == 1
    assert [c["state"] for c in callbacks(server)] in (["booked"], ["due"])
    cancel_from(TRUSTED, tmp_path / "trusted")
    wait_until("the cancel", lambda: callbacks(server)[0]["state"] == "cancelled", 5)
    assert server.metric("frontdesk_untrusted_caller_id_total", action="cancel_callback") == 1


@pytest.mark.pyvoip
def test_a_spoofed_caller_who_reaches_an_agent_does_not_close_the_real_numbers_callback(
    server_factory: Callable[[dict[str, object]], Server], sipp: str, tmp_path: Path
) -> None:
    server = server_factory(callback_config())
    with caller_media(1) as [media]:
        run = run_callers(
            sipp, server, tmp_path / "book", [("4445002", media.port, None)], scenario="queue_book_callback.xml"
        )
    assert run.returncode == 0, run.report()
    assert [c["state"] for c in callbacks(server)] == ["due"]

    def reach_agent(source: str, workdir: Path) -> None:
        with caller_media(1) as [media], ThreadPoolExecutor(1) as pool:
            calls = pool.submit(
                run_callers, sipp, server, workdir, [("4445002", media.port, 4000)], extra=["-i", source]
            )
            result = calls.result(timeout=30)
            assert result.returncode == 0, result.report()

    with agent_phone(server, "8001", lambda call: call.answer()):
        reach_agent(UNTRUSTED, tmp_path / "spoofed")
        wait_until(
            "the refusal counted",
            lambda: server.metric("frontdesk_untrusted_caller_id_total", action="close_callback") == 1,
            5,
        )
        assert [c["state"] for c in callbacks(server)] == ["due"]  # the real caller's booking stands
        assert server.metric("frontdesk_callback_closed_reached_agent_total") == 0
        reach_agent(TRUSTED, tmp_path / "trusted")
    wait_until("the callback to close", lambda: callbacks(server)[0]["state"] != "due", 5)
    assert callbacks(server)[0]["close_reason"] == "reached_agent"
    wait_until("the text message", lambda: any("closed the callback" in t[2] for t in texts(server)), 5)
    assert [to for to, _, body in texts(server) if "closed the callback" in body] == ["4445002"]


def test_a_callback_booked_under_a_claimed_number_stands_but_texts_nobody(
    server_factory: Callable[[dict[str, object]], Server], sipp: str, tmp_path: Path
) -> None:
    cfg = callback_config()
    cfg["callbacks"]["max_age"] = 2  # type: ignore[index]  # expired (with a text) at the next dispatcher pass
    server = server_factory(cfg)
    for number, source in (("4445004", UNTRUSTED), ("4445005", TRUSTED)):
        with caller_media(1) as [media]:
            run = run_callers(
                sipp, server, tmp_path / number, [(number, media.port, None)], scenario="queue_book_callback.xml",
                extra=["-i", source],
            )  # fmt: skip
        assert run.returncode == 0, run.report()
    wait_until("both to expire", lambda: [c["state"] for c in callbacks(server)] == ["expired"] * 2, 10)
    booked_by = {c["number"]: c["created_by"] for c in callbacks(server)}
    assert booked_by == {"4445004": "ivr_unverified", "4445005": "ivr"}
    wait_until("the trusted caller's expiry text", lambda: any(t[0] == "4445005" for t in texts(server)), 5)
    assert not any(to == "4445004" for to, _, _ in texts(server))
    assert server.metric("frontdesk_untrusted_caller_id_total", action="text") >= 1


def test_a_flood_of_distinct_transactions_stays_within_the_servers_cap(
    server_factory: Callable[[dict[str, object]], Server],
) -> None:
    # flood control off: the cap itself is what is tested (the flood guard would block this source first)
    server = server_factory({"security": {"flood": {"enabled": False}, "limits": {"sip_transactions": 100}}})
    with UdpSipClient(server.sip_port) as client:
        for i in range(1_000):
            client.send(client.build("OPTIONS"))
            if i % 50 == 49:
                time.sleep(0.01)  # bounded bursts: the socket buffer keeps them all
        answered = client.replies_within(2.0)
    m = server.metric
    assert 90 <= len(answered) <= 100, len(answered)  # the first 100 held (and answered), the rest dropped
    assert m("frontdesk_bounded_map_entries", map="sip_transactions") <= 100
    assert m("frontdesk_bounded_map_limit", map="sip_transactions") == 100
    assert m("frontdesk_bounded_map_refused_total", map="sip_transactions") >= 800
