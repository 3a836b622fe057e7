"""The media engine: pacing, playback, keys, recording and timeouts on a stepped clock; the RTP shell on loopback.

The pure parts (ivr/media/pacing.py, ivr/media/stream.py, ivr/media/ports.py)
are driven with ``now += 0.020`` and count frames exactly. The few loopback
tests of the shell (ivr/transport/rtp.py) check what arrives, never how fast.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import select
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.media import (
    SIPP_PCAPS,
    Recorder,
    SteppedMedia,
    UdpPhone,
    make_shell,
    read_pcap_udp_payloads,
    stream,
    tone,
)
from support.ports import port_range
from support.rtpsend import batch_sender_type, send_path  # noqa: F401  (fixtures)
from support.waiting import wait_until_async

from ivr.media import g711
from ivr.media.dtmf import TelephoneEvent
from ivr.media.g711 import FRAME_SECONDS
from ivr.media.pacing import MAX_CATCH_UP, Pacer, silent_streams
from ivr.media.ports import POOL_BYTES, RtpPortAllocator, UrandomPool
from ivr.media.rtp import RtpPacket
from ivr.media.stream import KeyPressed, MediaStream, PlaybackFinished, RecordingStopped
from ivr.transport import rtp, rtpwatch
from ivr.transport.rtp import MediaShell


async def until(what: str, check: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait inside the event loop (the shell runs on it) until ``check()`` holds."""

    async def holds() -> bool:
        return bool(check())

    await wait_until_async(what, holds, timeout=timeout)


def prompt_frames(seconds: float) -> list[bytes]:
    frames = g711.PCMU.encode(tone(seconds))
    return [frames[i : i + 160] for i in range(0, len(frames), 160)]


# -- the shared clock, on a stepped clock ----------------------------------------------------


def test_prompt_is_paced_one_frame_a_tick_with_consecutive_seq_and_timestamps() -> None:
    leg = stream(g711.PCMU, seq=0xFFF0, timestamp=0xFFFFF000)
    media = SteppedMedia(leg, now=1000.0)
    prompt = prompt_frames(0.5)
    leg.play([prompt], play_id=7)
    finished_after = None
    for n in range(1, 40):
        tick = media.step()
        assert (tick.frames, tick.skipped, tick.late) == (1, 0, 0.0)
        if PlaybackFinished(7) in leg.drain_events():
            finished_after = n
    assert finished_after == 25  # 25 frames of 20 ms: the event comes with the last one
    pkts = media.sent[leg]
    assert [p.payload for p in pkts[:25]] == prompt
    assert all(p.payload == leg.silence for p in pkts[25:])  # then silence
    assert all((b.sequence - a.sequence) & 0xFFFF == 1 for a, b in itertools.pairwise(pkts))
    assert all((b.timestamp - a.timestamp) & 0xFFFFFFFF == 160 for a, b in itertools.pairwise(pkts))
    assert pkts[0].marker and not any(p.marker for p in pkts[1:])
    assert media.now == pytest.approx(1000.0 + 39 * FRAME_SECONDS)


def test_a_stalled_tick_catches_up_two_frames_and_skips_the_rest() -> None:
    leg = stream(g711.PCMU)
    media = SteppedMedia(leg, now=50.0)
    for _ in range(15):
        media.step()
    before = media.sent[leg][-1]  # the last packet sent before the stall
    due = media.pacer.due
    stall = media.tick_at(due + 0.205)  # the loop stalled: the tick runs ten periods late
    assert stall.late == pytest.approx(0.205)
    assert stall.frames == MAX_CATCH_UP == 2  # not a burst of eleven
    assert stall.skipped == 9
    burst = media.sent[leg][-2:]
    assert burst[0].marker  # a gap in RTP time starts a new talkspurt
    assert burst[-1].timestamp - before.timestamp == 160 * 11  # the eleventh frame owed since `before`
    # the next tick is the first grid point still in the future, and on time again
    assert media.pacer.due == pytest.approx(due + 11 * FRAME_SECONDS)
    assert media.pacer.due > media.now
    after = [media.step() for _ in range(5)]
    assert [(t.frames, t.skipped) for t in after] == [(1, 0)] * 5
    # RTP time still follows the clock: the skipped frames are a gap, not a drift
    last = media.sent[leg][-1]
    periods = round((media.now - (due - FRAME_SECONDS)) / FRAME_SECONDS)
    assert (last.timestamp - before.timestamp) & 0xFFFFFFFF == 160 * periods


def test_a_tick_late_by_less_than_a_period_sends_one_frame_and_keeps_the_grid() -> None:
    pacer = Pacer()
    first = pacer.start(10.0)
    assert first == pytest.approx(10.02)
    tick = pacer.tick(first + 0.015)
    assert (tick.frames, tick.skipped) == (1, 0) and tick.late == pytest.approx(0.015)
    assert pacer.due == pytest.approx(10.04)  # absolute times: a late tick does not push the next one back
    tick = pacer.tick(10.04 + 0.025)  # a period and a bit: two frames, nothing skipped
    assert (tick.frames, tick.skipped) == (2, 0)
    assert pacer.due == pytest.approx(10.08)


def test_media_timeout_when_rtp_stops() -> None:
    quiet = stream(g711.PCMU, now=0.0)
    talking = stream(g711.PCMU, now=0.0)
    media = SteppedMedia(quiet, talking, now=0.0)
    found = []
    for n in range(1, 101):

        def talk(now: float, n: int = n) -> None:
            talking.receive(RtpPacket(0, n, n * 160, 9, talking.silence).serialize(), ("192.0.2.9", 4000), now)

        tick = media.step(talk)
        if tick.check_timeouts:  # once a second: every 50th tick
            found.append((n, silent_streams(media.streams, media.now, 0.3)))
    assert found == [(50, [quiet]), (100, [quiet])]
    assert silent_streams(media.streams, media.now, 0.0) == []  # a timeout of 0 turns the check off


def test_recording_stops_on_silence_and_keeps_the_voice() -> None:
    leg = stream(g711.PCMU)
    leg.start_recording(max_seconds=10, silence_seconds=0.4)
    audio = g711.PCMU.encode(tone(0.6) + b"\x00\x00" * 8000)  # 0.6 s voice, then 1 s silence
    now = 0.0
    for n, i in enumerate(range(0, len(audio), 160)):
        now += FRAME_SECONDS
        leg.receive(RtpPacket(0, n, n * 160, 5, audio[i : i + 160]).serialize(), ("127.0.0.1", 9), now)
    stopped = [e for e in leg.drain_events() if isinstance(e, RecordingStopped)]
    assert len(stopped) == 1 and stopped[0].reason == "silence"
    seconds = len(stopped[0].pcm) / 16000
    assert 0.6 <= seconds <= 1.0


def test_recording_stops_on_hash_and_at_max_length() -> None:
    leg = stream(g711.PCMU)
    leg.start_recording(max_seconds=0.2, silence_seconds=5)
    voice = g711.PCMU.encode(tone(0.5))
    for n in range(25):
        leg.receive(RtpPacket(0, n, n * 160, 5, voice[n * 160 : n * 160 + 160]).serialize(), ("127.0.0.1", 9), 0.0)
    leg.start_recording(max_seconds=5, silence_seconds=5)
    leg.receive(
        RtpPacket(101, 99, 9999, 5, TelephoneEvent(11, True, 10, 800).serialize()).serialize(),
        ("127.0.0.1", 9),
        0.0,
    )
    reasons = [e.reason for e in leg.drain_events() if isinstance(e, RecordingStopped)]
    assert reasons == ["max_length", "key"]


# -- RTP ports ---------------------------------------------------------------------------------


def test_rtp_ports_are_random_even_ports_whose_rtcp_port_fits() -> None:
    ports = RtpPortAllocator(20001, 20008, random.Random(7))  # odd bounds: 20002, 20004, 20006 (RTCP 20007)
    assert ports.span == 3
    drawn = [ports.next() for _ in range(60)]
    assert set(drawn) == {20002, 20004, 20006}  # never 20008: its RTCP port 20009 is outside the range
    # every candidate list ends with each port once, so a nearly full range still finds its free port
    tried = list(ports.candidates())
    assert sorted(tried[-3:]) == [20002, 20004, 20006] and len(tried) == 3 + 3
    assert RtpPortAllocator(20000, 20001).next() == 20000
    with pytest.raises(ValueError, match="no even RTP port"):
        RtpPortAllocator(20000, 20000)


def test_rtp_ports_are_not_sequential_and_a_seed_repeats_them() -> None:
    """Whoever made the last call cannot tell the next caller's port (issue: RTP hijack)."""
    a = RtpPortAllocator(20000, 29999, random.Random(13))
    ports = [a.next() for _ in range(200)]
    steps = [b - p for p, b in itertools.pairwise(ports)]
    assert sum(1 for d in steps if d == 2) < 5  # in sequence: every step would be +2
    assert len(set(ports)) > 180  # spread over the range's 5,000 even ports
    assert all(p % 2 == 0 and 20000 <= p <= 29998 for p in ports)
    b = RtpPortAllocator(20000, 29999, random.Random(13))
    assert [b.next() for _ in range(200)] == ports  # the injected random source makes tests deterministic


def test_the_default_port_draws_are_uniform_and_read_urandom_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel's CSPRNG, read a block at a time, and no port likelier than another."""
    reads: list[int] = []
    real = os.urandom

    def counting(n: int) -> bytes:
        reads.append(n)
        return real(n)

    monkeypatch.setattr("ivr.media.ports.os.urandom", counting)
    pool = UrandomPool()
    draws = 3 * POOL_BYTES // 4  # three blocks' worth of 32-bit words
    counts = [0] * 6
    for _ in range(draws):
        counts[pool.randrange(6)] += 1
    assert reads and set(reads) == {POOL_BYTES} and 3 <= len(reads) <= 4  # a rejected word may take one more
    expected = draws / 6
    chi2 = sum((c - expected) ** 2 / expected for c in counts)
    assert chi2 < 25.7  # 5 degrees of freedom: p = 1e-4
    # the rejection keeps n that do not divide 2**32 unbiased: 3 * 2**30 leaves a third of words to reject
    biased = UrandomPool()
    low = sum(1 for _ in range(6000) if biased.randrange(3 << 30) < 1 << 30)
    assert 1700 < low < 2300  # unbiased: a third; plain word % n would give a half
    assert RtpPortAllocator(20000, 29999).rng.__class__ is UrandomPool
    with pytest.raises(ValueError, match="empty range"):
        pool.randrange(0)


@pytest.mark.usefixtures("send_path")  # the sendto path and the batch sender
async def test_the_shell_binds_another_port_when_one_is_taken() -> None:
    rec = Recorder()
    ports = port_range(8)
    shell = MediaShell("127.0.0.1", ports.start, ports[-1], rec.on_events, rec.on_timeout, 0.0)
    evens = list(range(shell.ports.first, shell.ports.last + 1, 2))
    free = evens[-1]
    squatters = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in evens[:-1]]
    try:
        for sq, port in zip(squatters, evens, strict=False):
            sq.bind(("127.0.0.1", port))
        for _ in range(3):  # whatever the random draws, the one free port is found
            a = shell.open(("127.0.0.1", 9), "PCMU", 0, None)
            assert a.local_port == free
            shell.close(a)
        a = shell.open(("127.0.0.1", 9), "PCMU", 0, None)
        with pytest.raises(OSError, match="no free RTP port"):
            shell.open(("127.0.0.1", 9), "PCMU", 0, None)
        assert shell.stats.port_exhausted == 1
    finally:
        shell.close_all()
        for sq in squatters:
            sq.close()


# -- the shell on loopback: what arrives -----------------------------------------------------------


@pytest.mark.usefixtures("send_path")  # the sendto path and the batch sender
async def test_a_prompt_through_the_shell_arrives_in_order_with_consecutive_seq_and_timestamps() -> None:
    rec = Recorder()
    shell = await make_shell(rec)
    phone = UdpPhone()
    try:
        leg = shell.open(phone.addr, "PCMU", 0, 101)
        prompt = prompt_frames(0.3)
        leg.play([prompt], play_id=7)
        await until("the prompt to finish", lambda: PlaybackFinished(7) in rec.events)

        def arrived() -> bool:  # the whole prompt (a tone's frames repeat: its last frame alone says nothing)
            phone.drain()
            got = [p.payload for p in phone.received]
            return any(got[i : i + len(prompt)] == prompt for i in range(len(got) - len(prompt) + 1))

        await until("the prompt to arrive", arrived)
        pkts = phone.received
        seqs = [p.sequence for p in pkts]
        assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))  # loopback loses nothing
        stamps = [p.timestamp for p in pkts]
        # 160 a frame; a tick the loaded machine ran late may add a gap, never go back
        assert all(((b - a) & 0xFFFFFFFF) % 160 == 0 < (b - a) & 0xFFFFFFFF for a, b in itertools.pairwise(stamps))
        payloads = [p.payload for p in pkts]
        i = payloads.index(prompt[0])
        assert payloads[i : i + len(prompt)] == prompt  # the prompt's frames went out in order
        assert shell.stats.ticks > 0
    finally:
        shell.close_all()
        phone.close()


@pytest.mark.usefixtures("send_path")  # the sendto path and the batch sender
@pytest.mark.parametrize("own_poller", [True, False], ids=["own-epoll", "loop-add-reader"])
async def test_keys_from_sipp_capture_and_symmetric_rtp(own_poller: bool) -> None:
    rec = Recorder()
    shell = await make_shell(rec, own_poller=own_poller)
    phone = UdpPhone()
    try:
        # the SDP named a dead address; the stream latches onto the real sender
        leg = shell.open(("127.0.0.1", 9), "PCMA", 8, 101)
        pcap = SIPP_PCAPS / "dtmf_2833_4.pcap"
        for payload in read_pcap_udp_payloads(pcap):
            pkt = RtpPacket.parse(payload)
            if pkt.payload_type not in (0, 8):
                # SIPp's capture uses payload type 101 for telephone-event
                phone.sock.sendto(
                    RtpPacket(101, pkt.sequence, pkt.timestamp, 1, pkt.payload, pkt.marker).serialize(),
                    ("127.0.0.1", leg.local_port),
                )
        await until("the key", lambda: any(isinstance(e, KeyPressed) for e in rec.events))
        await until("audio sent back to where the caller's packets came from", phone.drain)
        assert [e for e in rec.events if isinstance(e, KeyPressed)] == [KeyPressed("4")]
        assert leg.remote == phone.addr
    finally:
        shell.close_all()
        phone.close()


def open_descriptors(kind: str) -> int:
    """This process's open descriptors of one kind: "socket" or "anon_inode:[eventpoll]"."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(kind)
        except OSError:
            pass  # the listing's own descriptor, closed by now
    return count


@pytest.mark.skipif(not hasattr(select, "epoll"), reason="the shell's own epoll set is Linux's")
async def test_the_shells_epoll_set_reads_every_ready_stream_and_is_closed_with_the_shell() -> None:
    """More streams ready at once than one wake-up takes are all read; a closed stream's socket leaves the set
    (its packets are not read, the others' still are); ``close_all`` closes the set, a new stream makes another."""
    rec = Recorder()
    sockets, epolls = open_descriptors("socket"), open_descriptors("anon_inode:[eventpoll]")
    shell = await make_shell(rec, streams=rtpwatch.POLL_BATCH + 44)
    phone = UdpPhone()
    try:
        legs = [shell.open(("127.0.0.1", 9), "PCMU", 0, 101) for _ in range(rtpwatch.POLL_BATCH + 44)]
        assert open_descriptors("socket") == sockets + len(legs) + 1  # the streams' and the phone's
        assert open_descriptors("anon_inode:[eventpoll]") == epolls + 1  # the shell's set
        gone = legs.pop()
        shell.close(gone)
        for leg in [*legs, gone]:  # one packet each, all queued before the loop looks
            phone.sock.sendto(RtpPacket(0, 1, 160, 1, b"\xff" * 160).serialize(), ("127.0.0.1", leg.local_port))
        await until("every open stream's packet read", lambda: sum(leg.packets_in for leg in legs) == len(legs))
        assert gone.packets_in == 0 and all(leg.remote == phone.addr for leg in legs)
        shell.close_all()
        assert open_descriptors("socket") == sockets + 1  # the phone's: the streams' are closed
        assert open_descriptors("anon_inode:[eventpoll]") == epolls  # and the shell's set
        again = shell.open(("127.0.0.1", 9), "PCMU", 0, 101)
        phone.sock.sendto(RtpPacket(0, 1, 160, 1, b"\xff" * 160).serialize(), ("127.0.0.1", again.local_port))
        await until("the new stream's packet read", lambda: again.packets_in == 1)
    finally:
        shell.close_all()
        phone.close()


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


@pytest.mark.usefixtures("send_path")  # the sendto path and the batch sender
async def test_media_timeout_reaches_the_shells_callback() -> None:
    rec = Recorder()
    shell = await make_shell(rec, media_timeout=0.05)
    try:
        leg = shell.open(("127.0.0.1", 9), "PCMU", 0, None)
        await until("the media timeout", lambda: rec.timeouts, timeout=5.0)  # checked once a second
        assert rec.timeouts[0] is leg and shell.stats.media_timeouts >= 1
    finally:
        shell.close_all()


class PartSpy:
    """The RTP shell's event loop, seen through: ``seen(start)`` as the loop begins each part of a tick.

    The tick is the one callback the shell arms with ``call_at`` (it sends part 0 itself); each later part is
    queued with ``call_soon(send_part, tick, senders, start, closed)``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, seen: Callable[[int], None]) -> None:
        self.loop, self.seen = loop, seen

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loop, name)

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> asyncio.TimerHandle:
        def tick() -> None:
            self.seen(0)
            callback(*args)

        return self.loop.call_at(when, tick)

    def call_soon(self, callback: Callable[..., None], *args: Any) -> asyncio.Handle:
        def part() -> None:
            self.seen(args[2])
            callback(*args)

        return self.loop.call_soon(part)


@pytest.mark.usefixtures("send_path")  # the sendto path and the batch sender
async def test_a_tick_sends_in_parts_so_a_datagram_waits_behind_one_part_not_the_whole_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rtp, "TICK_PART", 3)
    rec = Recorder()
    shell = await make_shell(rec)
    phones = [UdpPhone() for _ in range(7)]
    order: list[str] = []
    loop = asyncio.get_running_loop()
    probe_in, probe_out = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    probe_in.setblocking(False)
    legs: list[MediaStream] = []

    def probe_read() -> None:  # a datagram that came in during the tick's first part (as SIP would)
        probe_in.recv(64)
        order.append("datagram")
        if "closed" not in order:
            shell.close(legs[6])  # a call that ends before its part of the tick gets nothing more
            order.append("closed")

    def part_begins(start: int) -> None:
        order.append(f"part {start}")
        if start == 0 and "closed" not in order:
            probe_out.send(b"x")

    loop.add_reader(probe_in.fileno(), probe_read)
    shell.loop = PartSpy(loop, part_begins)  # type: ignore[assignment]  # the shell's turns, seen as the loop runs them
    try:
        legs += [shell.open(p.addr, "PCMU", 0, None) for p in phones]
        await until("three ticks after the close", lambda: order.count("part 0") >= 4)
        first = order[: order.index("part 0", 1)]
        # the tick's parts are turns of their own: the datagram was served before its last part
        assert first[0] == "part 0" and set(first) == {"part 0", "part 3", "part 6", "datagram", "closed"}
        assert first.index("datagram") < first.index("part 6")
        await until("two more ticks", lambda: order.count("part 0") >= 6)
        for i, phone in enumerate(phones):
            got = phone.drain()
            seqs = [p.sequence for p in got]
            assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs)), i  # one packet a tick, in order
            if i == 6:
                assert got == [] and legs[6].packets_out == 0  # its part came after the close
            else:
                assert len(got) >= 5
    finally:
        loop.remove_reader(probe_in.fileno())
        probe_in.close()
        probe_out.close()
        shell.close_all()
        for p in phones:
            p.close()
