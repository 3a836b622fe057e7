"""The RTP relay bridge between two call legs: pure streams, on a stepped clock, then the RTP shell on loopback."""

from __future__ import annotations

import array
import itertools
import math

from support.media import Recorder, SteppedMedia, UdpPhone, make_shell
from support.waiting import wait_until_async

from ivr.media import g711
from ivr.media.dtmf import TelephoneEvent
from ivr.media.rtp import RtpPacket
from ivr.media.stream import KeyPressed, MediaStream, PlaybackFinished, RecordingStopped

PHONE_A = ("192.0.2.10", 4000)
PHONE_B = ("198.51.100.20", 5000)


def leg(codec: g711.Codec, remote: tuple[str, int], ssrc: int, seq: int, timestamp: int) -> MediaStream:
    return MediaStream(10000, remote, codec, codec.payload_type, 101, ssrc=ssrc, seq=seq, timestamp=timestamp, now=0.0)


def bridged_pair(codec_a: g711.Codec = g711.PCMU, codec_b: g711.Codec = g711.PCMU) -> tuple[MediaStream, MediaStream]:
    a = leg(codec_a, PHONE_A, ssrc=0xAAAA, seq=100, timestamp=1000)
    b = leg(codec_b, PHONE_B, ssrc=0xBBBB, seq=0xFFFE, timestamp=0xFFFFFF00)
    a.bridge(b)
    return a, b


def voice_frames(codec: g711.Codec, n: int, size: int = 160) -> list[bytes]:
    """n distinct payloads of ``size`` bytes, none of them silence."""
    pcm = array.array("h", [int(6000 * math.sin(2 * math.pi * 440 * i / 8000)) for i in range(n * size)])
    audio = codec.encode(pcm.tobytes())
    return [audio[i : i + size] for i in range(0, n * size, size)]


class PhoneSender:
    """Builds a phone's RTP packets: its own SSRC, seq and timestamps."""

    def __init__(self, pt: int, ssrc: int, samples_per_packet: int = 160) -> None:
        self.pt = pt
        self.ssrc = ssrc
        self.seq = itertools.count(7)
        self.step = samples_per_packet
        self.ts = itertools.count(50_000, samples_per_packet)

    def packet(self, payload: bytes, marker: bool = False) -> bytes:
        return RtpPacket(self.pt, next(self.seq), next(self.ts), self.ssrc, payload, marker).serialize()


def feed(stream: MediaStream, sender: PhoneSender, addr: tuple[str, int], payloads: list[bytes]) -> None:
    for p in payloads:
        stream.receive(sender.packet(p), addr, 0.0)


def send(stream: MediaStream, n: int) -> list[RtpPacket]:
    return [RtpPacket.parse(stream.next_packet()) for _ in range(n)]


def test_same_codec_payloads_are_relayed_unchanged_in_order() -> None:
    a, b = bridged_pair()
    assert a.bridged is b and b.bridged is a
    frames = voice_frames(g711.PCMU, 4)
    feed(a, PhoneSender(0, 0x1234), PHONE_A, frames)
    pkts = send(b, 6)
    assert [p.payload for p in pkts] == [*frames, b.silence, b.silence]
    assert all(p.payload_type == 0 for p in pkts)
    assert a.relayed_in == 4 and b.relayed_in == 0
    assert a.relay_dropped == b.relay_dropped == 0


def test_b_keeps_its_own_ssrc_seq_and_timestamps() -> None:
    a, b = bridged_pair()
    before = send(b, 2)  # B has been sending silence on its own counters
    feed(a, PhoneSender(0, 0x1234), PHONE_A, voice_frames(g711.PCMU, 3))
    pkts = before + send(b, 3)
    assert {p.ssrc for p in pkts} == {0xBBBB}
    assert [p.sequence for p in pkts] == [0xFFFE, 0xFFFF, 0, 1, 2]
    assert [p.timestamp for p in pkts] == [(0xFFFFFF00 + 160 * i) & 0xFFFFFFFF for i in range(5)]


def test_pcmu_to_pcma_and_back_is_transcoded() -> None:
    a, b = bridged_pair(g711.PCMU, g711.PCMA)
    ulaw = voice_frames(g711.PCMU, 3)
    feed(a, PhoneSender(0, 1), PHONE_A, ulaw)
    pkts = send(b, 3)
    assert [p.payload_type for p in pkts] == [8, 8, 8]
    assert [p.payload for p in pkts] == [g711.PCMA.encode(g711.PCMU.decode(f)) for f in ulaw]
    assert pkts[0].payload != ulaw[0]

    alaw = voice_frames(g711.PCMA, 2)
    feed(b, PhoneSender(8, 2), PHONE_B, alaw)
    back = send(a, 2)
    assert [p.payload_type for p in back] == [0, 0]
    assert [p.payload for p in back] == [g711.PCMU.encode(g711.PCMA.decode(f)) for f in alaw]


def test_every_code_transcodes_like_the_codecs_themselves() -> None:
    codes = bytes(range(256)) * 2  # 512 bytes: three frames and a 32-byte remainder
    for src, dst in ((g711.PCMU, g711.PCMA), (g711.PCMA, g711.PCMU)):
        a, b = bridged_pair(src, dst)
        b.relay_cap = 10
        a.receive(PhoneSender(src.payload_type, 1, 512).packet(codes), PHONE_A, 0.0)
        out = b"".join(p.payload for p in send(b, 3))
        assert out == dst.encode(src.decode(codes))[:480]


def test_30ms_packets_are_rechunked_into_20ms_frames() -> None:
    a, b = bridged_pair()
    audio = b"".join(voice_frames(g711.PCMU, 6))  # 120 ms
    phone = PhoneSender(0, 9, samples_per_packet=240)
    pkts: list[RtpPacket] = []
    for i in range(0, len(audio), 240):  # four 30 ms packets, a tick after each
        a.receive(phone.packet(audio[i : i + 240]), PHONE_A, 0.0)
        pkts += send(b, 1)
    pkts += send(b, 3)
    payloads = [p.payload for p in pkts]
    assert all(len(p) == 160 for p in payloads)
    voice = [p for p in payloads if p != b.silence]
    assert b"".join(voice) == audio
    assert a.relayed_in == 4


def test_the_buffer_caps_at_five_frames_dropping_the_oldest() -> None:
    a, b = bridged_pair()
    frames = voice_frames(g711.PCMU, 8)
    feed(a, PhoneSender(0, 1), PHONE_A, frames)  # a burst: 8 frames before B's next tick
    assert b.relay_dropped == 3 and a.relay_dropped == 0
    assert a.relayed_in == 8
    assert [p.payload for p in send(b, 6)] == [*frames[3:], b.silence]


def test_a_prompt_on_b_wins_over_relayed_audio() -> None:
    a, b = bridged_pair()
    prompt = [bytes([0x10 + i]) * 160 for i in range(7)]
    b.play([prompt], play_id=3)
    phone = PhoneSender(0, 1)
    frames = voice_frames(g711.PCMU, 7)
    out: list[RtpPacket] = []
    for f in frames:  # A talks all through B's prompt
        a.receive(phone.packet(f), PHONE_A, 0.0)
        out += send(b, 1)
    assert [p.payload for p in out] == prompt
    assert PlaybackFinished(3) in b.drain_events()
    # only the newest 100 ms of A's talk survived the prompt
    assert b.relay_dropped == 2
    after = send(b, 6)
    assert [p.payload for p in after] == [*frames[2:], b.silence]
    assert after[0].marker and not any(p.marker for p in after[1:])


def test_a_prompt_started_mid_talk_interrupts_the_relay() -> None:
    a, b = bridged_pair()
    frames = voice_frames(g711.PCMU, 2)
    feed(a, PhoneSender(0, 1), PHONE_A, frames)
    b.play([[b"\x01" * 160]], play_id=1)
    assert [p.payload for p in send(b, 3)] == [b"\x01" * 160, *frames]


def test_telephone_events_are_not_relayed_but_still_give_keys() -> None:
    a, b = bridged_pair()
    for n, end in enumerate((False, True, True, True)):  # one event: one timestamp
        event = TelephoneEvent(5, end, 10, 800).serialize()
        a.receive(RtpPacket(101, 30 + n, 8000, 1, event, n == 0).serialize(), PHONE_A, 0.0)
    assert a.drain_events() == [KeyPressed("5")]
    assert b.drain_events() == []
    assert a.relayed_in == 0
    assert [p.payload for p in send(b, 3)] == [b.silence] * 3
    # a payload type that is neither the voice nor the event one is not relayed either
    a.receive(RtpPacket(13, 1, 1, 1, b"\x40").serialize(), PHONE_A, 0.0)
    assert a.relayed_in == 0 and send(b, 1)[0].payload == b.silence


def test_unbridge_from_either_side_stops_the_relay_both_ways_and_clears_buffers() -> None:
    for side in ("a", "b"):
        a, b = bridged_pair()
        pa, pb = PhoneSender(0, 1), PhoneSender(0, 2)
        feed(a, pa, PHONE_A, voice_frames(g711.PCMU, 3))
        feed(b, pb, PHONE_B, voice_frames(g711.PCMU, 3))
        a.receive(pa.packet(b"\x22" * 80), PHONE_A, 0.0)  # half a frame in B's remainder
        (a if side == "a" else b).unbridge()
        assert a.bridged is None and b.bridged is None
        assert [p.payload for p in send(b, 2)] == [b.silence] * 2  # buffered audio dropped
        assert [p.payload for p in send(a, 2)] == [a.silence] * 2
        feed(a, pa, PHONE_A, voice_frames(g711.PCMU, 2))
        feed(b, pb, PHONE_B, voice_frames(g711.PCMU, 2))
        assert [p.payload for p in send(b, 2)] == [b.silence] * 2
        assert [p.payload for p in send(a, 2)] == [a.silence] * 2
        assert a.relayed_in == 4 and b.relayed_in == 3
        # bridged again: the stale half frame is gone, frames line up from the start
        a.bridge(b)
        f = voice_frames(g711.PCMU, 1)
        feed(a, pa, PHONE_A, f)
        assert send(b, 1)[0].payload == f[0]
        a.unbridge()
        a.unbridge()  # idempotent


def test_bridging_a_third_leg_undoes_the_first_bridge() -> None:
    a, b = bridged_pair()
    c = leg(g711.PCMU, ("203.0.113.5", 6000), ssrc=0xCCCC, seq=0, timestamp=0)
    c.bridge(a)
    assert a.bridged is c and c.bridged is a and b.bridged is None
    f = voice_frames(g711.PCMU, 1)
    feed(a, PhoneSender(0, 1), PHONE_A, f)
    assert send(c, 1)[0].payload == f[0]
    assert send(b, 1)[0].payload == b.silence


def test_marker_bit_at_the_start_of_each_relayed_talkspurt() -> None:
    a, b = bridged_pair()
    phone = PhoneSender(0, 1)
    assert send(b, 2)[0].marker  # the stream's first packet
    frames = voice_frames(g711.PCMU, 5)
    feed(a, phone, PHONE_A, frames[:3])
    first = send(b, 5)  # three relayed, then the buffer runs dry: silence
    assert [p.marker for p in first] == [True, False, False, False, False]
    assert [p.payload for p in first[3:]] == [b.silence] * 2
    feed(a, phone, PHONE_A, frames[3:])
    second = send(b, 2)
    assert [p.marker for p in second] == [True, False]
    assert [p.payload for p in second] == frames[3:]


def test_recording_still_works_while_bridged() -> None:
    a, b = bridged_pair()
    a.start_recording(max_seconds=0.1, silence_seconds=5)
    frames = voice_frames(g711.PCMU, 5)
    feed(a, PhoneSender(0, 1), PHONE_A, frames)
    stopped = [e for e in a.drain_events() if isinstance(e, RecordingStopped)]
    assert len(stopped) == 1 and stopped[0].reason == "max_length"
    assert stopped[0].pcm == g711.PCMU.decode(b"".join(frames))
    assert [p.payload for p in send(b, 5)] == frames  # and B heard it all


# -- on a stepped clock, then the shell on loopback ---------------------------------------------


def is_subsequence(short: list[bytes], long: list[bytes]) -> bool:
    it = iter(long)
    return all(x in it for x in short)


def test_two_legs_hear_each_other_tick_by_tick_on_a_stepped_clock() -> None:
    a, b = bridged_pair()
    media = SteppedMedia(a, b)
    from_a = voice_frames(g711.PCMU, 20)
    from_b = [bytes(reversed(f)) for f in from_a]
    phone_a, phone_b = PhoneSender(0, 0xA), PhoneSender(0, 0xB)
    for n in range(23):  # both phones talk at once, a packet a tick, then fall silent

        def talk(now: float, n: int = n) -> None:
            if n < 20:
                a.receive(phone_a.packet(from_a[n], n == 0), PHONE_A, now)
                b.receive(phone_b.packet(from_b[n], n == 0), PHONE_B, now)

        media.step(talk)
    heard_b, heard_a = media.sent[b], media.sent[a]
    assert a.relayed_in == b.relayed_in == 20 and a.relay_dropped == b.relay_dropped == 0
    for heard, sent, other_leg in ((heard_b, from_a, b), (heard_a, from_b, a)):
        assert {p.ssrc for p in heard} == {other_leg.ssrc}  # the leg's own stream, not the far phone's
        assert all((y.sequence - x.sequence) & 0xFFFF == 1 for x, y in itertools.pairwise(heard))
        # each frame goes out on the tick it arrived before: all 20, in order, then silence
        assert [p.payload for p in heard] == [*sent, other_leg.silence, other_leg.silence, other_leg.silence]


async def test_two_phones_hear_each_other_through_the_engine() -> None:
    rec = Recorder()
    shell = await make_shell(rec)
    phone_a, phone_b = UdpPhone(), UdpPhone()
    try:
        leg_a = shell.open(phone_a.addr, "PCMU", 0, 101)
        leg_b = shell.open(phone_b.addr, "PCMU", 0, 101)
        leg_a.bridge(leg_b)
        from_a = voice_frames(g711.PCMU, 20)
        from_b = [bytes(reversed(f)) for f in voice_frames(g711.PCMU, 20)]
        assert not set(from_a) & set(from_b)
        for n in range(20):  # both phones talk at once
            phone_a.sock.sendto(
                RtpPacket(0, n, n * 160, 0xA, from_a[n], n == 0).serialize(), ("127.0.0.1", leg_a.local_port)
            )
            phone_b.sock.sendto(
                RtpPacket(0, 500 + n, n * 160, 0xB, from_b[n], n == 0).serialize(), ("127.0.0.1", leg_b.local_port)
            )

        async def both_relayed_and_ran_dry() -> bool:
            phone_a.drain()
            phone_b.drain()
            heard = (phone_b.received, leg_b), (phone_a.received, leg_a)
            return leg_a.relayed_in == leg_b.relayed_in == 20 and all(
                len(h) >= 3 and all(p.payload == leg.silence for p in h[-3:]) for h, leg in heard
            )

        await wait_until_async("both phones' talk relayed, then silence", both_relayed_and_ran_dry)
        for heard, sent, other_leg in (
            (phone_b.received, from_a, leg_b),
            (phone_a.received, from_b, leg_a),
        ):
            assert {p.ssrc for p in heard} == {other_leg.ssrc}  # the leg's own stream, not the far phone's
            assert all((y.sequence - x.sequence) & 0xFFFF == 1 for x, y in itertools.pairwise(heard))
            voice = [p.payload for p in heard if p.payload != other_leg.silence]
            # what arrives is the far phone's talk in order; the jitter buffer drops the oldest of a burst
            assert len(voice) + other_leg.relay_dropped == 20
            assert is_subsequence(voice, sent)
    finally:
        shell.close_all()
        phone_a.close()
        phone_b.close()


async def test_closing_a_leg_unbridges_the_other() -> None:
    shell = await make_shell(Recorder())
    try:
        leg_a = shell.open(("127.0.0.1", 9), "PCMU", 0, 101)
        leg_b = shell.open(("127.0.0.1", 9), "PCMA", 8, 101)
        leg_a.bridge(leg_b)
        shell.close(leg_a)
        assert leg_b.bridged is None and leg_a.bridged is None
    finally:
        shell.close_all()
