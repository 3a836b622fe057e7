"""A pyVoIP phone against the real server: it registers, calls in, hears the welcome, and is heard.

pyVoIP is an independent SIP/RTP implementation (docs/architecture.md), so this proves
our digest registrar, our SIP answer and our RTP in both directions against
code we did not write. The phone:

1. registers with digest authentication (the server has its HA1 in ``agents:``);
2. calls ``service``: the demo flow answers and plays its ``welcome`` prompt;
3. reads what it heard and compares its energy envelope (20 ms RMS frames)
   with the same prompt rendered by :class:`PromptStore` from the same cache;
4. sends audio of its own: the server counts the RTP packets it received;
5. presses 2 (the hot-topic key) on its own RTP session and hears the
   hot-topic answer; it hangs up, and the call record, the text message and
   the metrics show the walk.

What pyVoIP 1.6.8 does, and how the test deals with it:

- Its ACK to our 200 OK carries a new random To tag (``SIPClient.gen_ack``
  calls ``gen_tag()``) instead of ours, so it matches no dialog: a correct
  server ignores it, resends the 200 until 64*T1 and then hangs up with BYE
  (``no_ack``). The test patches ``gen_ack`` on its own phone to copy the
  To tag of the 200 OK, the only change made to pyVoIP's behaviour.
- It cannot build DTMF: no RFC 4733 sender in its RTP code (only a
  receiver) and no INFO, though its SDP offers telephone-event/101. The
  test writes the RFC 4733 packets itself and sends them from the phone's
  own RTP socket, so the key travels in the phone's RTP session.
- ``read_audio`` hands out 8-bit unsigned linear PCM (``ulaw2lin(..., 1)``
  then +128); with ``blocking=True`` it skips frames of pure silence, which
  would bend the envelope, so the test waits and reads without blocking.
- Its digest answer has no qop (RFC 2069 style), with
  ``uri="sip:<server>;transport=UDP"`` while the Request-URI is
  ``sip:<server>``: the registrar compares the two without URI parameters.
- Its ``call()`` stores the call only after ``invite()`` returns on the
  100 Trying; a 200 OK read in between is dropped ("Unknown/No call"), and
  our 200 retransmission (Timer G-like, RFC 6026) is what gets it answered.
- ``stop()`` deregisters (Expires: 0, again answering the 401) and waits
  up to ``register_timeout`` for each answer: the test bounds that to 5 s.

The test renders the prompt cache first (the same one the server uses), so
it can compare what the phone heard with the prompts' own audio.
"""

from __future__ import annotations

import array
import hashlib
import math
import socket
import sqlite3
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from support.demo import demo_ivr
from support.ports import free_port
from support.records import read_records
from support.server import Server
from support.waiting import wait_until

from ivr.media.dtmf import TelephoneEvent
from ivr.media.prompts import PromptStore
from ivr.media.rtp import RtpPacket
from ivr.settings.config import Config
from ivr.settings.prompts import prompt_sources
from sim.live.phones import ack_with_the_dialogs_to_tag, stop_phone

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # pyVoIP imports audioop (deprecated in 3.11)
    from pyVoIP.VoIP import CallState, PhoneStatus, VoIPCall, VoIPPhone

pytestmark = pytest.mark.pyvoip

USER = "7007"  # an extension: digits, so the hotkey's text message can go to it
PASSWORD = "correct horse battery"
REALM = "frontdesk"
FRAME = 160  # samples in 20 ms at 8 kHz


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def press_key(sock: socket.socket, dest: tuple[str, int], key: str) -> None:
    """An RFC 4733 key as a phone sends it: three updates, then three end packets."""
    event = "0123456789*#".index(key)
    seq, ts, ssrc = 4000, 160_000, 0x7007
    for n, (end, duration) in enumerate(
        [(False, 160), (False, 320), (False, 480), (True, 800), (True, 800), (True, 800)]
    ):
        payload = TelephoneEvent(event, end, 10, duration).serialize()
        sock.sendto(RtpPacket(101, seq + n, ts, ssrc, payload, marker=n == 0).serialize(), dest)
        time.sleep(0.02)


def envelope(samples: array.array[int]) -> list[float]:
    """RMS of each whole 20 ms frame."""
    out = []
    for i in range(0, len(samples) - FRAME + 1, FRAME):
        frame = samples[i : i + FRAME]
        out.append(math.sqrt(sum(s * s for s in frame) / FRAME))
    return out


def pearson(a: list[float], b: list[float]) -> float:
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    va = math.sqrt(sum((x - ma) ** 2 for x in a))
    vb = math.sqrt(sum((y - mb) ** 2 for y in b))
    return cov / (va * vb) if va and vb else 0.0


def best_match(heard: list[float], expected: list[float]) -> tuple[float, int]:
    """Highest normalised correlation of ``expected`` against ``heard`` over every lag, and that lag."""
    best = (-1.0, 0)
    for lag in range(len(heard) - len(expected) + 1):
        best = max(best, (pearson(heard[lag : lag + len(expected)], expected), lag))
    return best


def test_pyvoip_phone_registers_calls_in_and_hears_the_welcome(
    server_factory: Callable[[dict[str, object]], Server], tmp_path: Path
) -> None:
    ivr = demo_ivr()
    cache = tmp_path / "prompts"
    config = Config.model_validate({"ivr": ivr, "media": {"prompt_cache": str(cache)}})
    store = PromptStore(cache)
    store.load(prompt_sources(config))
    server = server_factory(
        {
            "sip": {"hold_time": 60, "realm": REALM},
            "media": {"prompt_cache": str(cache), "recordings_dir": str(tmp_path / "recordings")},
            "agents": {USER: {"ha1": md5(f"{USER}:{REALM}:{PASSWORD}"), "display_name": "Agent Seven"}},
            "ivr": ivr,
            "security": {"trusted_networks": ["127.0.0.1/32"]},  # the caller's number is believed: it gets its text
        }
    )
    rtp_port = free_port()
    phone = VoIPPhone(
        "127.0.0.1",
        server.sip_port,
        USER,
        PASSWORD,
        myIP="127.0.0.1",
        sipPort=free_port(),
        rtpPortLow=rtp_port,
        rtpPortHigh=rtp_port,
    )
    phone.sip.register_timeout = 5  # bounds every wait for a REGISTER answer
    ack_with_the_dialogs_to_tag(phone)
    call: VoIPCall | None = None
    try:
        # 1. register: challenged once, then 200 with the binding
        phone.start()
        assert phone.get_status() == PhoneStatus.REGISTERED
        assert server.metric("frontdesk_registrations_active") == 1
        assert server.metric("frontdesk_register_requests_total", result="challenged") == 1
        assert server.metric("frontdesk_register_requests_total", result="ok") == 1

        # 2. call in; the demo flow answers
        call = phone.call("service")
        wait_until("the call to be answered", lambda: call is not None and call.state == CallState.ANSWERED, 10)
        answered_at = time.monotonic()

        # 4. our own audio goes out as well: a 440 Hz tone, 8-bit unsigned like pyVoIP's input
        tone = bytes(128 + int(60 * math.sin(2 * math.pi * 440 * i / 8000)) for i in range(8000))
        call.write_audio(tone)

        # 3. what the phone heard: 3 s read once 4 s of audio had time to arrive
        time.sleep(max(0.0, answered_at + 4.0 - time.monotonic()))
        raw = call.read_audio(3 * 8000, blocking=False)
        heard = array.array("h", [b - 128 for b in raw])
        expected = array.array("h")
        expected.frombytes(store.pcm("welcome"))
        heard_env, expected_env = envelope(heard), envelope(expected)
        assert max(heard_env) > 5, "the phone heard only silence"
        score, lag = best_match(heard_env, expected_env)
        assert score > 0.7, f"welcome prompt not recognised: correlation {score:.2f} at {lag * 20} ms"
        assert lag * 0.02 < 1.0, f"the welcome started {lag * 20} ms into the call, not first"
        # a prompt that is not playing then does not match as well
        other = array.array("h")
        other.frombytes(store.pcm("no_choice")[: len(store.pcm("welcome"))])
        assert best_match(heard_env, envelope(other))[0] < score

        # the server received the phone's RTP (pyVoIP sends every 20 ms: silence or our tone)
        assert server.metric("frontdesk_rtp_packets_total", direction="in") > 100

        # 5. press 2 (barge-in on the main menu): the hot-topic answer plays next
        rtp = call.RTPClients[0]
        press_key(rtp.sout, (rtp.outIP, rtp.outPort), "2")
        time.sleep(6.0)
        raw = call.read_audio(12 * 8000, blocking=False)
        after = array.array("h", [b - 128 for b in raw])
        answer = array.array("h")
        answer.frombytes(store.pcm("hot_topic_answer")[: 4 * 8000 * 2])  # its first 4 s
        score, _ = best_match(envelope(after), envelope(answer))
        assert score > 0.7, f"hot-topic answer not heard after the key: correlation {score:.2f}"
        call.hangup()
        [record] = wait_until("the call record", lambda: read_records(server.db_path), 5)
        assert record["caller"] == USER and record["called"] == "service"
        assert (record["outcome"], record["hangup_by"]) == ("completed", "caller")
        assert record["keys"] == "2"
        assert record["ivr_path"].split()[:4] == ["welcome", "surge_check", "main_menu", "hot_topic"]
        assert "hotkey" in record["ivr_outcomes"].split(",")
        assert server.metric("frontdesk_dtmf_received_total", source="rtp") == 1
        assert server.metric("frontdesk_ivr_hotkey_uses_total") == 1
        with sqlite3.connect(server.db_path) as conn:
            texts = conn.execute("SELECT to_number, reason FROM text_messages").fetchall()
        assert texts == [(USER, "hotkey")]
    finally:
        if call is not None and call.state == CallState.ANSWERED:
            call.hangup()
        stop_phone(phone)
    # stop() deregistered with Expires: 0
    wait_until("the binding to go", lambda: server.metric("frontdesk_registrations_active") == 0, 5)
