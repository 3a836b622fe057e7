"""The RTP engine on loopback: pacing, playback, keys, recording, timeouts."""

from __future__ import annotations

import array
import asyncio
import itertools
import math
import socket
import time
from pathlib import Path

import pytest
from test_media import SIPP_PCAPS, read_pcap_udp_payloads

from ivr.media import g711
from ivr.media.dtmf import TelephoneEvent
from ivr.media.rtp import RtpPacket
from ivr.media.stream import KeyPressed, MediaEvent, MediaStream, PlaybackFinished, RecordingStopped
from ivr.transport.rtp import MediaShell


def tone(seconds: float, freq: float = 440.0, amp: int = 8000) -> bytes:
    n = int(seconds * 8000)
    return array.array("h", [int(amp * math.sin(2 * math.pi * freq * i / 8000)) for i in range(n)]).tobytes()


class Peer:
    """A plain UDP socket standing in for the caller's phone."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.addr = self.sock.getsockname()

    def drain(self) -> list[RtpPacket]:
        out = []
        while True:
            try:
                data, _ = self.sock.recvfrom(2048)
            except BlockingIOError:
                return out
            out.append(RtpPacket.parse(data))

    def close(self) -> None:
        self.sock.close()


class Recorder:
    def __init__(self) -> None:
        self.events: list[MediaEvent] = []
        self.timeouts: list[MediaStream] = []

    def on_events(self, stream: MediaStream, events: list[MediaEvent]) -> None:
        self.events += events

    def on_timeout(self, stream: MediaStream) -> None:
        self.timeouts.append(stream)


async def make_engine(rec: Recorder, media_timeout: float = 0.0) -> MediaShell:
    return MediaShell("127.0.0.1", 40000, 40100, rec.on_events, rec.on_timeout, media_timeout)


async def test_prompt_is_paced_at_20ms_with_consecutive_seq_and_timestamps() -> None:
    rec = Recorder()
    engine = await make_engine(rec)
    peer = Peer()
    try:
        stream = engine.open(peer.addr, "PCMU", 0, 101)
        frames = g711.PCMU.encode(tone(0.5))
        prompt = [frames[i : i + 160] for i in range(0, len(frames), 160)]
        stream.play([prompt], play_id=7)
        loop = asyncio.get_running_loop()
        start = loop.time()
        while not any(isinstance(e, PlaybackFinished) for e in rec.events) and loop.time() - start < 3:
            await asyncio.sleep(0.01)
        elapsed = loop.time() - start
        await asyncio.sleep(0.05)
        pkts = peer.drain()
        assert PlaybackFinished(7) in rec.events
        assert 0.4 <= elapsed <= 0.9  # 25 frames of 20 ms
        seqs = [p.sequence for p in pkts]
        assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
        stamps = [p.timestamp for p in pkts]
        assert all((b - a) & 0xFFFFFFFF == 160 for a, b in itertools.pairwise(stamps))
        payloads = [p.payload for p in pkts]
        # the prompt's frames went out in order, then silence
        i = payloads.index(prompt[0])
        assert payloads[i : i + len(prompt)] == prompt
        assert engine.stats.ticks > 0
    finally:
        engine.close_all()
        peer.close()


async def test_keys_from_sipp_capture_and_symmetric_rtp() -> None:
    rec = Recorder()
    engine = await make_engine(rec)
    peer = Peer()
    try:
        # the SDP named a dead address; the stream latches onto the real sender
        stream = engine.open(("127.0.0.1", 9), "PCMA", 8, 101)
        pcap = SIPP_PCAPS / "dtmf_2833_4.pcap"
        for payload in read_pcap_udp_payloads(pcap):
            pkt = RtpPacket.parse(payload)
            if pkt.payload_type not in (0, 8):
                # SIPp's capture uses payload type 101 for telephone-event
                peer.sock.sendto(
                    RtpPacket(101, pkt.sequence, pkt.timestamp, 1, pkt.payload, pkt.marker).serialize(),
                    ("127.0.0.1", stream.local_port),
                )
        await asyncio.sleep(0.15)
        assert [e for e in rec.events if isinstance(e, KeyPressed)] == [KeyPressed("4")]
        assert stream.remote == peer.addr
        assert peer.drain(), "nothing was sent back to where the caller's packets came from"
    finally:
        engine.close_all()
        peer.close()


async def test_recording_stops_on_silence_and_keeps_the_voice() -> None:
    rec = Recorder()
    engine = await make_engine(rec)
    peer = Peer()
    try:
        stream = engine.open(peer.addr, "PCMU", 0, 101)
        stream.start_recording(max_seconds=10, silence_seconds=0.4)
        audio = g711.PCMU.encode(tone(0.6) + b"\x00\x00" * 8000)  # 0.6 s voice, then 1 s silence
        for n, i in enumerate(range(0, len(audio), 160)):
            peer.sock.sendto(
                RtpPacket(0, n, n * 160, 5, audio[i : i + 160]).serialize(), ("127.0.0.1", stream.local_port)
            )
            if n % 10 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0.1)
        stopped = [e for e in rec.events if isinstance(e, RecordingStopped)]
        assert len(stopped) == 1 and stopped[0].reason == "silence"
        seconds = len(stopped[0].pcm) / 16000
        assert 0.6 <= seconds <= 1.0
    finally:
        engine.close_all()
        peer.close()


async def test_recording_stops_on_hash_and_at_max_length() -> None:
    rec = Recorder()
    engine = await make_engine(rec)
    try:
        stream = engine.open(("127.0.0.1", 9), "PCMU", 0, 101)
        stream.start_recording(max_seconds=0.2, silence_seconds=5)
        voice = g711.PCMU.encode(tone(0.5))
        for n in range(25):
            stream.receive(
                RtpPacket(0, n, n * 160, 5, voice[n * 160 : n * 160 + 160]).serialize(), ("127.0.0.1", 9), 0.0
            )
        stream.start_recording(max_seconds=5, silence_seconds=5)
        stream.receive(
            RtpPacket(101, 99, 9999, 5, TelephoneEvent(11, True, 10, 800).serialize()).serialize(),
            ("127.0.0.1", 9),
            0.0,
        )
        reasons = [e.reason for e in stream.drain_events() if isinstance(e, RecordingStopped)]
        assert reasons == ["max_length", "key"]
    finally:
        engine.close_all()


async def test_media_timeout_when_rtp_stops() -> None:
    rec = Recorder()
    engine = await make_engine(rec, media_timeout=0.3)
    try:
        stream = engine.open(("127.0.0.1", 9), "PCMU", 0, None)
        await asyncio.sleep(1.3)  # checked once a second
        assert rec.timeouts == [stream]
    finally:
        engine.close_all()


def test_prompt_store_renders_text_with_espeak(tmp_path: Path) -> None:
    from ivr.media.prompts import PromptSource, PromptStore

    store = PromptStore(tmp_path / "cache")
    store.load({"hello": PromptSource(text="Hello and welcome")})
    assert 0.5 < store.seconds("hello") < 4
    frames = store.frames("hello", g711.PCMU)
    assert all(len(f) == 160 for f in frames)
    # cached: a second store renders nothing new
    before = sorted(p.name for p in (tmp_path / "cache").iterdir())
    PromptStore(tmp_path / "cache").load({"hello": PromptSource(text="Hello and welcome")})
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == before


def test_prompt_store_missing_file_is_an_error(tmp_path: Path) -> None:
    from ivr.media.prompts import PromptError, PromptSource, PromptStore

    with pytest.raises(PromptError, match=r"'greeting'.*not found"):
        PromptStore(tmp_path).load({"greeting": PromptSource(file=tmp_path / "nope.wav")})


async def test_a_stalled_tick_catches_up_two_frames_and_skips_the_rest() -> None:
    rec = Recorder()
    engine = await make_engine(rec)
    peer = Peer()
    try:
        engine.open(peer.addr, "PCMU", 0, None)
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0.3)
        before = peer.drain()[-1]  # the last packet sent before the stall
        start = loop.time()
        time.sleep(0.2)  # the event loop stalls for 10 frame periods
        await asyncio.sleep(0.005)  # the late tick runs
        burst = peer.drain()
        await asyncio.sleep(0.5)
        pkts = burst + peer.drain()
        elapsed = loop.time() - start
        assert 1 <= len(burst) <= 2, f"a late tick sent {len(burst)} frames at once"
        assert engine.stats.frames_skipped >= 7
        # RTP time still follows the wall clock: the skipped frames are a gap, not a drift
        ts_span = (pkts[-1].timestamp - before.timestamp) & 0xFFFFFFFF
        assert abs(ts_span / 8000 - elapsed) < 0.06
        # and the next ticks are back on the 20 ms grid, not bursting
        assert len(pkts) <= int((elapsed - 0.2) / 0.02) + 4
    finally:
        engine.close_all()
        peer.close()
