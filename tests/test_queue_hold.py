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

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, Server, free_port
from sipp_helpers import run_sipp
from test_pyvoip import read_call_records

from ivr.media.g711 import get_codec
from ivr.settings.config import Config
from ivr.settings.prompts import load_prompts

pytestmark = [pytest.mark.sipp, pytest.mark.slow]

ANNOUNCE_EVERY = 12.0
MAX_WAIT = 22.0
CALLER = "4440077"


class CallerEar:
    """The caller's RTP socket: keeps the payloads that arrive (with arrival times) and sends silence back."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", free_port()))
        self.sock.settimeout(0.02)
        self.port = self.sock.getsockname()[1]
        self.frames: list[tuple[float, bytes]] = []
        self.t0 = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        silence = bytes([get_codec("PCMU").silence]) * 160
        seq = 0
        peer = None
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(2048)
                if len(data) > 12 and data[1] & 0x7F == 0:
                    self.frames.append((time.monotonic(), data[12:]))
            except TimeoutError:
                pass
            if peer is not None and seq * 0.02 < time.monotonic() - self.t0:
                header = bytes([0x80, 0]) + (seq & 0xFFFF).to_bytes(2, "big") + (seq * 160).to_bytes(4, "big")
                self.sock.sendto(header + (77).to_bytes(4, "big") + silence, peer)
                seq += 1

    def start(self) -> None:
        self.t0 = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def payloads(self) -> list[bytes]:
        return [f for _, f in self.frames]

    def at(self, index: int) -> float:
        """When frame ``index`` arrived, in seconds after start()."""
        return self.frames[index][0] - self.t0


def find_all(heard: list[bytes], wanted: list[bytes]) -> list[int]:
    """Every index where ``wanted`` appears in ``heard`` as an exact run of frames."""
    n = len(wanted)
    return [i for i in range(len(heard) - n + 1) if heard[i] == wanted[0] and heard[i : i + n] == wanted]


def test_caller_on_hold_hears_announcements_and_music_then_overflows(
    server_factory: Callable[[dict[str, object]], Server], sipp: str, tmp_path: Path
) -> None:
    ivr: dict[str, Any] = yaml.safe_load((ROOT / "ivr" / "flow" / "demo.yaml").read_text())["ivr"]
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
    deadline = time.monotonic() + 5
    while not read_call_records(server.db_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    [record] = read_call_records(server.db_path)
    assert record["ivr_path"].split()[3:6] == ["agent", "agents_busy", "leave_message"]
    assert record["ivr_outcomes"].split(",")[:3] == ["queued", "overflow:message", "queue_overflow"]
