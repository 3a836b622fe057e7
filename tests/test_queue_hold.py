"""A caller on hold, heard from the caller's own RTP socket: prompt, announcements, music, overflow.

SIPp places the call and presses 1 (the demo's "agent" key) by SIP INFO; its
SDP names a UDP socket of this test as the caller's media address, so the
test hears exactly what the caller hears. Nobody serves the queue, so the
caller hears the queue node's prompt, the announcement (position, then
"all our agents are busy" since no wait can be promised), hold music, the
announcement again ``announce_every`` after the caller joined the queue, and at ``max_wait`` the flow's
overflow node for "message" (agents_busy, then the message recording).
What was heard is matched frame by frame against the prompts' own G.711
frames from the server's prompt cache: the server sends them unchanged, so
each prompt is found exactly, with the time it started.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from support.callers import CallerEar, find_all
from support.demo import demo_ivr
from support.records import read_records
from support.server import Server
from support.sipp import run_sipp
from support.waiting import wait_until

from ivr.media.g711 import get_codec
from ivr.settings.config import Config
from ivr.settings.prompts import load_prompts

pytestmark = [pytest.mark.sipp, pytest.mark.slow]

ANNOUNCE_EVERY = 12.0
MAX_WAIT = 22.0
CALLER = "4440077"


def test_caller_on_hold_hears_announcements_and_music_then_overflows(
    server_factory: Callable[[dict[str, object]], Server], sipp: str, tmp_path: Path
) -> None:
    ivr = demo_ivr()
    cache = tmp_path / "prompts"
    store = load_prompts(Config.model_validate({"ivr": ivr, "media": {"prompt_cache": str(cache)}}))
    server = server_factory(
        {
            "sip": {"hold_time": 60},
            "media": {"prompt_cache": str(cache), "recordings_dir": str(tmp_path / "recordings")},
            "ivr": ivr,
            "queues": {"general": {"announce_every": ANNOUNCE_EVERY, "max_wait": MAX_WAIT, "overflow": "message"}},
            "surge": {"auto": False},
        }
    )
    ear = CallerEar()
    ear.start()
    csv = tmp_path / "callers.csv"
    stay_ms = int((2.8 + MAX_WAIT + 9) * 1000)  # past the overflow, into the message prompt
    csv.write_text(f"SEQUENTIAL\n{CALLER};{ear.port};{stay_ms};\n")
    try:
        run = run_sipp(
            sipp,
            server.sip_target,
            tmp_path / "sipp",
            scenario="queue_caller.xml",
            timeout=50,
            extra=["-inf", str(csv)],
        )
    finally:
        ear.stop()
    assert run.returncode == 0, run.report()

    codec = get_codec("PCMU")

    def frames(*pids: str) -> list[bytes]:
        return [f for pid in pids for f in store.frames(pid, codec)]

    heard = ear.payloads()
    announcement = frames("queue_position", "num_1", "queue_in_line", "queue_wait_unknown")
    music = frames("hold_music")[:50]  # its first second
    # key 1 at 2.8 s: the queue's own prompt, then at once the first announcement, then hold music
    [held] = find_all(heard, frames("hold_for_agent") + announcement + music)
    entry = ear.at(held)
    assert abs(entry - 2.8) < 0.3
    # announcements every ANNOUNCE_EVERY s from the entry into the queue, each followed by the music
    starts = [ear.at(i) for i in find_all(heard, announcement + music)]
    assert len(starts) == 2, starts
    assert abs(starts[1] - (entry + ANNOUNCE_EVERY)) < 0.3, (starts, entry)
    # at max wait: the flow's node for "message" (agents_busy, then the message prompt)
    [busy] = find_all(heard, frames("agents_busy"))
    assert abs(ear.at(busy) - (entry + MAX_WAIT)) < 0.3, (ear.at(busy), entry)
    assert not find_all(heard[busy:], music)  # no more hold music after the overflow

    assert server.metric("frontdesk_queue_calls_offered_total", queue="general") == 1
    assert server.metric("frontdesk_queue_calls_overflowed_total", queue="general", target="message") == 1
    assert server.metric("frontdesk_queue_calls_answered_total", queue="general") == 0
    [record] = wait_until("the call record", lambda: read_records(server.db_path), 5)
    assert record["ivr_path"].split()[3:6] == ["agent", "agents_busy", "leave_message"]
    assert record["ivr_outcomes"].split(",")[:3] == ["queued", "overflow:message", "queue_overflow"]
