"""The live queues end to end: SIPp callers, pyVoIP agent phones, the real server.

Every test starts the server (``server_factory``) with the demo IVR, whose key
1 joins queue ``general``; SIPp callers press 1 by SIP INFO 2.8 s after the
answer (tests/sipp/queue_caller*.xml). Agents are pyVoIP phones: a phone's
registration logs its agent in and ready, and the server rings it with an
INVITE when the queue picks that agent. pyVoIP calls ``callCallback`` one
second after an INVITE (a ``threading.Timer``), so an answering agent answers
about 1 s after the ring starts.

1. A caller reaches the agent and both hear each other: a 1 kHz tone from the
   caller's RTP socket reaches the agent's phone, the agent's 440 Hz tone
   reaches the caller (Goertzel filters tell the tones apart); the books,
   the call record and the agent's wrap-up follow.
2. Ring-no-answer: an agent whose phone never answers is rung for
   ``ring_timeout``, gets a CANCEL and goes "not ready: no answer"
   (``max_misses`` 1); the caller waits on and goes to the next agent once
   that one is ready.
3. Tiers and the length limit: with no agent ready, a vip caller is put ahead
   of two ordinary ones, the queue's ``max_length`` sends the last ordinary
   caller to leave a message, and the agent, once ready, gets the vip first.
4. A surge: callers come faster than one agent can talk to them; the
   queue length switches surge on by itself, surge's limits and targets
   (callback, peak shaving) apply, nobody waits beyond ``max_wait``, every
   INVITE is answered at once and every caller is in the books.

pyVoIP's quirks (see tests/test_pyvoip.py): its ACK is patched to carry the
dialog's To tag, and its non-daemon threads are stopped in ``finally``
whatever happens (tests/support/agents.py). It answers CANCEL with 200 but never sends 487 for the
INVITE; the server's CANCEL transaction copes (RFC 3261 9.1).
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from support.agents import (
    admin_agents,
    admin_queue,
    agent_phone,
    agent_state,
    answers_then_hangs_up,
    http,
    server_config,
    tone_u8,
)
from support.callers import FRAME, RATE, caller_media
from support.demo import demo_ivr
from support.records import wait_for_records
from support.server import Server
from support.sipp import SippRun, run_callers
from support.waiting import wait_until

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # pyVoIP imports audioop (deprecated in 3.11)
    from pyVoIP.VoIP import CallState, VoIPCall

pytestmark = [pytest.mark.pyvoip, pytest.mark.sipp]

ServerFactory = Callable[[dict[str, object]], Server]


# -- tones ------------------------------------------------------------------------------------


def goertzel(samples: Sequence[int], freq: float) -> float:
    """Power of ``freq`` in ``samples`` (8 kHz), by the Goertzel recurrence."""
    coeff = 2 * math.cos(2 * math.pi * freq / RATE)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coeff * s1 - s2, s1
    return s1 * s1 + s2 * s2 - coeff * s1 * s2


def tone_energy(frames: Iterable[Sequence[int]], freq: float) -> float:
    return sum(goertzel(f, freq) for f in frames)


def tone_frames(frames: Iterable[Sequence[int]], freq: float, other: float, min_amplitude: float) -> int:
    """How many frames carry ``freq`` with at least ``min_amplitude``, at 10 times the power of ``other``."""
    count = 0
    for f in frames:
        p, q = goertzel(f, freq), goertzel(f, other)
        if p > 10 * q and 2 * math.sqrt(p) / len(f) >= min_amplitude:  # |X| = A * N / 2 for a pure tone
            count += 1
    return count


def records_by_caller(server: Server, expected: int) -> dict[str, dict[str, Any]]:
    rows = wait_for_records(server.db_path, expected, timeout=5)
    assert len(rows) == expected, rows
    by_caller = {str(r["caller"]): dict(r) for r in rows}
    assert len(by_caller) == expected, rows
    return by_caller


def outcomes(record: dict[str, Any]) -> list[str]:
    return str(record["ivr_outcomes"] or "").split(",")


def seconds_between(earlier: object, later: object) -> float:
    return (datetime.fromisoformat(str(later)) - datetime.fromisoformat(str(earlier))).total_seconds()


# -- 1 ----------------------------------------------------------------------------------------


def test_caller_reaches_agent_with_two_way_audio(server_factory: ServerFactory, sipp: str, tmp_path: Path) -> None:
    wrap_up = 3.0
    server = server_factory(server_config({"ring_timeout": 5, "max_wait": 30, "wrap_up": wrap_up}, ["8001"]))
    heard: list[bytes] = []  # what the agent's phone received, 20 ms at a time
    answered: list[tuple[float, str]] = []
    done = threading.Event()

    def on_call(call: VoIPCall) -> None:
        try:
            call.answer()
            answered.append((time.monotonic(), call.request.headers["From"]["number"]))
            call.write_audio(tone_u8(440, 12))
            deadline = time.monotonic() + 20
            while call.state == CallState.ANSWERED and time.monotonic() < deadline:
                heard.append(call.read_audio(FRAME, blocking=False))
                time.sleep(0.02)
        finally:
            done.set()

    with agent_phone(server, "8001", on_call) as agent, caller_media(1, tone_hz=1000) as [media]:
        # the caller presses 1 at 2.8 s, the agent answers about 1 s later, the caller hangs up 7 s after the key
        run = run_callers(sipp, server, tmp_path / "sipp", [("4441001", media.port, 7000)])
        assert run.returncode == 0 and run.successful == 1, run.report()
        ended_at = time.monotonic()
        # the caller's BYE ends the agent's leg too
        assert done.wait(5), "the server did not hang up the agent's phone"
        # wrap-up, then ready again by itself
        assert agent_state(server, "8001")["state"] == "wrap_up"
        wait_until(
            "the agent ready after wrap-up", lambda: agent_state(server, "8001")["state"] == "ready", wrap_up + 3
        )
        assert time.monotonic() - ended_at > wrap_up - 1.0, "wrap-up ended early"
        assert [r[3] for r in agent.invites()] == ["4441001"]

    assert [number for _, number in answered] == ["4441001"]
    connected_at = answered[0][0]

    # the agent heard the caller's 1 kHz tone (amplitude 8000 of 32768: 31 in pyVoIP's 8 bits), not 440 Hz
    agent_frames = [[b - 128 for b in f] for f in heard if len(f) == FRAME]
    assert len(agent_frames) > 200, f"the agent read only {len(agent_frames)} frames"
    at_1k, at_440 = tone_energy(agent_frames, 1000), tone_energy(agent_frames, 440)
    assert at_1k > 20 * at_440, f"1 kHz {at_1k:.3g} does not dominate 440 Hz {at_440:.3g} at the agent"
    assert tone_frames(agent_frames, 1000, 440, 10) > 150, "the agent heard less than 3 s of the caller's tone"
    assert tone_frames(agent_frames, 440, 1000, 10) == 0

    # the caller heard the agent's 440 Hz tone after the connect (60 of 128 in 8 bits: ~15000), not 1 kHz
    caller_frames = media.heard_after(connected_at + 0.3)
    assert len(caller_frames) > 200, f"the caller got only {len(caller_frames)} packets after the connect"
    at_440, at_1k = tone_energy(caller_frames, 440), tone_energy(caller_frames, 1000)
    assert at_440 > 20 * at_1k, f"440 Hz {at_440:.3g} does not dominate 1 kHz {at_1k:.3g} at the caller"
    assert tone_frames(caller_frames, 440, 1000, 3000) > 150, "the caller heard less than 3 s of the agent's tone"
    assert tone_frames(caller_frames, 1000, 440, 3000) == 0
    assert media.sent > 300  # the caller talked all along (2.8 s of menu + ~7 s)

    assert server.metric("frontdesk_queue_calls_offered_total", queue="general") == 1
    assert server.metric("frontdesk_queue_calls_answered_total", queue="general") == 1
    assert server.metric("frontdesk_queue_calls_abandoned_total", queue="general") == 0
    assert server.metric("frontdesk_queue_calls_overflowed_total", queue="general") == 0
    assert server.metric("frontdesk_queue_agent_calls_total", result="answered") == 1
    assert server.metric("frontdesk_queue_agent_unreachable_total") == 0

    record = records_by_caller(server, 1)["4441001"]
    assert "agent" in outcomes(record)
    assert record["ivr_path"].split()[-1] == "agent"
    assert record["keys"] == "1"


# -- 2 ----------------------------------------------------------------------------------------


def test_unanswered_ring_redirects_and_agent_goes_not_ready(
    server_factory: ServerFactory, sipp: str, tmp_path: Path
) -> None:
    ring_timeout = 4.0
    server = server_factory(
        server_config({"ring_timeout": ring_timeout, "max_wait": 40, "wrap_up": 1}, ["8001", "8002"])
    )
    answered: list[tuple[float, str]] = []

    def on_call(call: VoIPCall) -> None:
        call.answer()
        answered.append((time.monotonic(), call.request.headers["From"]["number"]))

    with (
        agent_phone(server, "8001", on_call) as good,
        agent_phone(server, "8002", None) as deaf,
        caller_media(1) as [media],
        ThreadPoolExecutor(1) as pool,  # SIPp runs while the test acts
    ):
        status, body = http(server, "POST", "/agent/not-ready", agent="8001", body={"reason": "lunch"})
        assert (status, body["state"], body["reason"]) == (200, "not_ready", "lunch")
        assert admin_agents(server)["8002"]["state"] == "ready"

        # the caller presses 1 at 2.8 s and hangs up 14 s later
        calls = pool.submit(run_callers, sipp, server, tmp_path / "sipp", [("4442001", media.port, 14000)])
        wait_until("8002's phone to ring", lambda: len(deaf.invites()) == 1, 6)
        rung_at = deaf.invites()[0][0]
        assert deaf.invites()[0][3] == "4442001"
        assert agent_state(server, "8002")["state"] == "ringing"

        wait_until("the CANCEL", lambda: len(deaf.cancels()) == 1, ring_timeout + 3)
        cancelled_after = deaf.cancels()[0][0] - rung_at
        assert ring_timeout - 0.5 < cancelled_after < ring_timeout + 1.0, cancelled_after
        wait_until(
            "the ring to count as not answered",
            lambda: server.metric("frontdesk_queue_ring_no_answer_total", queue="general") == 1,
            2,
        )
        agents = admin_agents(server)
        assert (agents["8002"]["state"], agents["8002"]["reason"]) == ("not_ready", "no answer")
        assert (agents["8001"]["state"], agents["8001"]["reason"]) == ("not_ready", "lunch")
        queue = admin_queue(server)
        assert (queue["waiting"], queue["ringing"], queue["answered"]) == (1, 0, 0)
        assert answered == []

        # the caller is still in line: the next agent to be ready gets them
        status, body = http(server, "POST", "/agent/ready", agent="8001")
        assert status == 200, body
        wait_until("8001 to answer", lambda: len(answered) == 1, 4)
        wait_until(
            "the queue's answer",
            lambda: server.metric("frontdesk_queue_calls_answered_total", queue="general") == 1,
            2,
        )
        assert agent_state(server, "8001")["state"] == "talking"
        run = calls.result(timeout=30)
        assert run.returncode == 0 and run.successful == 1, run.report()
        assert [r[3] for r in good.invites()] == ["4442001"]
        assert len(deaf.invites()) == 1  # rung once, then not ready: never again
        assert len(deaf.cancels()) == 1

    assert [number for _, number in answered] == ["4442001"]
    assert server.metric("frontdesk_queue_ring_no_answer_total", queue="general") == 1
    assert server.metric("frontdesk_queue_calls_answered_total", queue="general") == 1
    assert server.metric("frontdesk_queue_calls_abandoned_total", queue="general") == 0
    assert server.metric("frontdesk_queue_calls_overflowed_total", queue="general") == 0
    assert server.metric("frontdesk_queue_agent_calls_total", result="answered") == 1
    record = records_by_caller(server, 1)["4442001"]
    assert "agent" in outcomes(record)


def test_caller_hanging_up_while_the_agent_rings_cleans_up_everything(
    server_factory: ServerFactory, sipp: str, tmp_path: Path
) -> None:
    server = server_factory(server_config({"ring_timeout": 8, "max_wait": 40, "wrap_up": 1}, ["8002"]))
    with agent_phone(server, "8002", None) as deaf, caller_media(1) as [media]:
        # the caller presses 1 at 2.8 s and hangs up 1.5 s later, while 8002's phone rings
        run = run_callers(sipp, server, tmp_path / "sipp", [("4442009", media.port, 1500)])
        assert run.returncode == 0 and run.successful == 1, run.report()
        wait_until("the CANCEL to the ringing phone", lambda: len(deaf.cancels()) == 1, 3)
        assert len(deaf.invites()) == 1
        assert deaf.cancels()[0][0] - deaf.invites()[0][0] < 3.0  # at the hang-up, not at the ring timeout
        wait_until("8002 to be ready again", lambda: agent_state(server, "8002")["state"] == "ready", 3)
        # (pyVoIP answers the CANCEL 200 but never sends 487: the leg's transaction runs out by itself)
        assert server.metric("frontdesk_sip_requests_sent_total", method="CANCEL") == 1
    queue = admin_queue(server)
    assert (queue["waiting"], queue["ringing"], queue["offered"], queue["abandoned"]) == (0, 0, 1, 1)
    assert server.metric("frontdesk_queue_ring_no_answer_total", queue="general") == 0  # not the agent's miss
    assert server.metric("frontdesk_queue_calls_answered_total", queue="general") == 0
    assert server.metric("frontdesk_media_streams_active") == 0  # both legs' RTP closed
    assert server.metric("frontdesk_calls_active") == 0
    record = records_by_caller(server, 1)["4442009"]
    assert (record["outcome"], record["hangup_by"]) == ("completed", "caller")


# -- 3 ----------------------------------------------------------------------------------------


def test_tiers_are_served_in_order_and_a_full_queue_overflows(
    server_factory: ServerFactory, sipp: str, tmp_path: Path
) -> None:
    ivr = demo_ivr()
    ivr["groups"]["vip"] = {"prefixes": ["777"]}
    queue = {
        "ring_timeout": 5,
        "max_wait": 40,
        "max_length": {"normal": 2, "surge": 2},
        "wrap_up": 1,
        "overflow": "message",
        "tiers": [{"name": "special", "priority": 3, "groups": ["vip"]}, {"name": "ordinary", "priority": 1}],
    }
    server = server_factory(server_config(queue, ["8001"], ivr=ivr))
    answered: list[str] = []

    def on_call(call: VoIPCall) -> None:
        call.answer()
        answered.append(call.request.headers["From"]["number"])
        deadline = time.monotonic() + 20
        while call.state == CallState.ANSWERED and time.monotonic() < deadline:
            time.sleep(0.05)

    # (number, ms to stay after pressing 1): the vip talks ~3 s, then 4440001 ~3 s; 4440002 leaves a message
    callers = [("4440001", 12000), ("4440002", 3000), ("7770003", 5000)]
    with (
        agent_phone(server, "8001", on_call) as agent,
        caller_media(len(callers)) as media,
        ThreadPoolExecutor(len(callers)) as pool,  # one SIPp run per caller
    ):
        status, body = http(server, "POST", "/agent/not-ready", agent="8001", body={"reason": "meeting"})
        assert (status, body["state"]) == (200, "not_ready")
        runs: list[Future[SippRun]] = []
        for i, ((number, ms), m) in enumerate(zip(callers, media, strict=True)):
            if i:
                time.sleep(0.7)  # one arrival at a time, in this order
            runs.append(pool.submit(run_callers, sipp, server, tmp_path / f"sipp{i}", [(number, m.port, ms)]))
        # the third arrival makes the line 3 long: the last ordinary caller leaves for a message
        wait_until(
            "three callers offered",
            lambda: server.metric("frontdesk_queue_calls_offered_total", queue="general") == 3,
            6,
        )
        q = admin_queue(server)
        assert (q["offered"], q["waiting"], q["overflowed"]) == (3, 2, {"message": 1}), q
        assert server.metric("frontdesk_queue_calls_overflowed_total", queue="general", target="message") == 1
        assert answered == []

        status, body = http(server, "POST", "/agent/ready", agent="8001")
        assert status == 200, body
        results = [r.result(timeout=30) for r in runs]
        for run in results:
            assert run.returncode == 0 and run.successful == 1, run.report()
        assert [r[3] for r in agent.invites()] == ["7770003", "4440001"]

    assert answered == ["7770003", "4440001"]
    assert server.metric("frontdesk_queue_calls_answered_total", queue="general") == 2
    assert server.metric("frontdesk_queue_calls_abandoned_total", queue="general") == 0
    assert server.metric("frontdesk_queue_calls_overflowed_total", queue="general") == 1
    assert server.metric("frontdesk_queue_calls_overflowed_total", queue="general", target="message") == 1
    assert server.metric("frontdesk_queue_agent_calls_total", result="answered") == 2
    records = records_by_caller(server, 3)
    assert "overflow:message" in outcomes(records["4440002"])
    assert "agent" not in outcomes(records["4440002"])
    assert "agents_busy" in str(records["4440002"]["ivr_path"]).split()
    for number in ("7770003", "4440001"):
        assert "agent" in outcomes(records[number]), records[number]
        assert not any(o.startswith("overflow:") for o in outcomes(records[number]))


# -- 4 ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_surge_switches_on_overflows_and_every_caller_is_answered_and_leaves_by_max_wait(
    server_factory: ServerFactory, sipp: str, tmp_path: Path
) -> None:
    """One agent talks 5.5 s a call; ten callers join the queue 1 s apart (c0..c9).

    What happens, in queue time (c0 joins at 0; the agent answers ~1 s after a ring):

    - c0 is put through at once (answered ~1 s, talks until ~6.5 s);
    - c1 waits; c2 makes the line 2 long: surge turns on by itself (``queue_length_on``),
      and surge's ``max_wait`` (8 s) now holds for c1 and c2;
    - c3..c5 (and so on while c1 and c2 wait) would join at place 3 with an EWT of
      3 x AHT (``initial_aht`` 8 s) = 24 s > ``peak_shaving_ewt`` 20 s: peak-shaved
      on arrival (R8), the demo's ``peak_shaved`` node tells them and hangs up;
    - c0's talk ends: c1 is put through; one of the next arrivals, at place 2
      (EWT ~15 s), waits and is put through when c1's talk ends;
    - c2 is still in line at 8 s after joining: it overflows to ``surge_overflow``
      (callback: the demo's ``offer_callback`` menu);
    - the line empties; ``min_dwell`` (3 s) is long over: surge turns off.

    So: 3 answered by the agent, 1 callback, 6 peak-shaved, surge on and off once
    (the engine, fed the same arrivals with up to 0.5 s of jitter, always ends so).
    The normal overflow target (message) is never used: in normal mode the line
    never gets past 2 before surge is on.
    """
    talk = 5.5
    ring_limit = 10.0
    max_wait = {"normal": 12, "surge": 8}
    queue = {
        "ring_timeout": 5,
        "wrap_up": 0,
        "max_wait": max_wait,
        "max_length": {"normal": 4, "surge": 2},
        "overflow": "message",
        "surge_overflow": "callback",
        "initial_aht": 8,
    }
    surge = {
        "auto": True,
        "ewt_on": None,
        "ewt_off": None,
        "queue_length_on": 2,
        "queue_length_off": 0,
        "min_dwell": 3,
        "peak_shaving_ewt": 20,
    }
    ivr = demo_ivr()
    # The demo plays "lines are busy" (a play node: keys are not taken) before the menu while surge
    # is on; callers who press 1 at 2.8 s would lose the key. Straight to the menu here.
    nodes = ivr["flows"]["main"]["nodes"]
    nodes["surge_check"]["cases"] = [{"on": True, "next": "main_menu"}]
    del nodes["busy_lines"]
    server = server_factory(server_config(queue, ["8001"], surge=surge, ivr=ivr))
    assert admin_queue(server)["settings"]["max_wait"] == max_wait
    talks: list[str] = []
    numbers = [f"44401{i:02d}" for i in range(10)]
    with agent_phone(server, "8001", answers_then_hangs_up(talks, talk)), caller_media(len(numbers)) as media:
        run = run_callers(
            sipp,
            server,
            tmp_path / "sipp",
            [(n, m.port, None) for n, m in zip(numbers, media, strict=True)],
            scenario="queue_caller_until_bye.xml",
            rate=1,
            timeout=45,
        )
        assert run.returncode == 0 and run.successful == len(numbers), run.report()
        wait_until("the agent's last call to end", lambda: agent_state(server, "8001")["state"] == "ready", 8)

    q = admin_queue(server)
    overflowed = q["overflowed"]
    # nobody lost from the books
    assert q["offered"] == len(numbers)
    assert q["offered"] == q["answered"] + q["abandoned"] + sum(overflowed.values()), q
    assert (q["answered"], q["abandoned"], overflowed) == (3, 0, {"callback": 1, "peak_shaving": 6}), q
    assert server.metric("frontdesk_queue_calls_offered_total", queue="general") == len(numbers)
    assert server.metric("frontdesk_queue_calls_answered_total", queue="general") == 3
    assert server.metric("frontdesk_queue_calls_abandoned_total", queue="general") == 0
    # overflow went to the surge targets only: callback (max_wait) and peak shaving, never message
    for target, count in {"callback": 1, "peak_shaving": 6, "message": 0, "self_service": 0}.items():
        metric = server.metric("frontdesk_queue_calls_overflowed_total", queue="general", target=target)
        assert metric == count, (target, metric)
    assert server.metric("frontdesk_queue_agent_calls_total", result="answered") == 3

    # surge went on by itself, and off again once the line was empty
    assert server.metric("frontdesk_surge_changes_total", cause="auto") == 2
    assert server.metric("frontdesk_surge_changes_total", cause="manual") == 0
    assert server.metric("frontdesk_surge_active") == 0
    assert server.metric("frontdesk_outbound_paused") == 0  # R15: paused in surge, resumed after

    # nobody waited in line beyond the wait limit; c2 waited exactly surge's 8 s
    # (an answered caller may wait a little longer: max_wait does not cut a ring short)
    longest = q["longest_wait_ever_s"]
    assert max_wait["surge"] - 0.05 <= longest <= max_wait["normal"] + 1.0, q

    # every caller was answered by the IVR at once, and their records tell what happened
    records = records_by_caller(server, len(numbers))
    assert sorted(records) == numbers
    for number, record in records.items():
        assert record["answer_at"] is not None, record
        latency = seconds_between(record["invite_at"], record["answer_at"])
        assert 0 <= latency < ring_limit, (number, latency)
    shaved = sorted(n for n, r in records.items() if "overflow:peak_shaving" in outcomes(r))
    called_back = [n for n, r in records.items() if "overflow:callback" in outcomes(r)]
    put_through = sorted(n for n, r in records.items() if "agent" in outcomes(r))
    assert called_back == [numbers[2]]
    assert talks == put_through  # first come, first served (one tier)
    assert {records[n]["hangup_by"] for n in put_through} == {"agent"}  # the agent ended each talk
    assert talks[:2] == numbers[:2] and talks[2] in numbers[6:], talks
    assert len(shaved) == 6 and set(numbers[3:6]) <= set(shaved), shaved
    assert set(shaved) | set(called_back) | set(put_through) == set(numbers)
    for number in shaved:
        assert records[number]["ivr_path"].split()[-1] == "peak_shaved"
        assert records[number]["hangup_by"] == "frontdesk"
    path = records[numbers[2]]["ivr_path"].split()
    assert path[path.index("agent") + 1] == "offer_callback"  # the demo's callback offer (docs/callbacks.md)
