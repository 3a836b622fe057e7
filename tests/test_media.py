"""RTP, G.711 and RFC 4733 code on generated packets and SIPp's own captures."""

from __future__ import annotations

import array
import math
import struct
import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.media import SIPP_PCAPS, read_pcap_udp_payloads

from ivr.media import g711
from ivr.media.dtmf import DtmfReceiver, TelephoneEvent, parse_dtmf_info
from ivr.media.rtp import RtpError, RtpPacket


@pytest.mark.parametrize("digit", range(10))
def test_sipp_rfc2833_capture_gives_its_digit_once(digit: int) -> None:
    pcap = SIPP_PCAPS / f"dtmf_2833_{digit}.pcap"
    if not pcap.exists():
        pytest.fail(f"{pcap} missing: `make test` installs Debian's sip-tester")
    rx = DtmfReceiver()
    keys: list[str] = []
    events = 0
    for payload in read_pcap_udp_payloads(pcap):
        pkt = RtpPacket.parse(payload)
        if pkt.payload_type in (0, 8):
            continue
        events += 1
        keys += rx.feed(pkt.timestamp, pkt.payload)
    assert events >= 3  # start, continuation and the redundant end packets
    assert keys == [str(digit)]


def test_lost_end_packets_still_give_the_key_when_the_next_event_starts() -> None:
    rx = DtmfReceiver()
    assert rx.feed(1000, TelephoneEvent(5, False, 10, 160).serialize()) == []
    assert rx.feed(1000, TelephoneEvent(5, False, 10, 320).serialize()) == []
    # all end packets of "5" lost; "#" begins
    assert rx.feed(5000, TelephoneEvent(11, False, 10, 160).serialize()) == ["5"]
    assert rx.feed(5000, TelephoneEvent(11, True, 10, 800).serialize()) == ["#"]
    assert rx.feed(5000, TelephoneEvent(11, True, 10, 800).serialize()) == []


def test_same_key_twice_is_two_presses() -> None:
    rx = DtmfReceiver()
    keys = []
    for ts in (100, 2000):
        for end in (False, True, True, True):
            keys += rx.feed(ts, TelephoneEvent(1, end, 10, 400).serialize())
    assert keys == ["1", "1"]


def test_sip_info_bodies() -> None:
    assert parse_dtmf_info("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n") == "5"
    assert parse_dtmf_info("application/dtmf-relay", b"Signal= #\r\nDuration=160\r\n") == "#"
    assert parse_dtmf_info("application/dtmf", b"11") == "#"
    assert parse_dtmf_info("application/dtmf-relay", b"Signal=X\r\n") is None
    assert parse_dtmf_info("text/plain", b"5") is None


@given(
    pt=st.integers(0, 127),
    seq=st.integers(0, 0xFFFF),
    ts=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=400),
    marker=st.booleans(),
)
def test_rtp_round_trip(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool) -> None:
    pkt = RtpPacket(pt, seq, ts, ssrc, payload, marker)
    assert RtpPacket.parse(pkt.serialize()) == pkt


@given(st.binary(max_size=64))
def test_rtp_parse_never_raises_anything_else(data: bytes) -> None:
    try:
        RtpPacket.parse(data)
    except RtpError:
        pass


def test_rtp_csrc_extension_and_padding() -> None:
    header = struct.pack("!BBHII", 0x80 | 0x20 | 0x10 | 2, 0, 7, 160, 99)
    csrcs = struct.pack("!II", 1, 2)
    ext = struct.pack("!HH", 0xBEDE, 1) + b"\x00" * 4
    pkt = RtpPacket.parse(header + csrcs + ext + b"abc" + b"\x00\x00\x03")
    assert pkt.payload == b"abc" and pkt.sequence == 7 and pkt.timestamp == 160


def test_g711_matches_the_reference_codec_for_every_sample() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop  # the ITU-T G.711 reference rounding, in CPython 3.11

    every = array.array("h", range(-32768, 32768)).tobytes()
    assert g711.PCMU.encode(every) == audioop.lin2ulaw(every, 2)
    assert g711.PCMA.encode(every) == audioop.lin2alaw(every, 2)
    codes = bytes(range(256))
    assert g711.PCMU.decode(codes) == audioop.ulaw2lin(codes, 2)
    assert g711.PCMA.decode(codes) == audioop.alaw2lin(codes, 2)


@pytest.mark.parametrize("codec", [g711.PCMU, g711.PCMA])
def test_g711_keeps_a_tone(codec: g711.Codec) -> None:
    tone = array.array("h", [int(8000 * math.sin(2 * math.pi * 440 * i / 8000)) for i in range(800)])
    back = array.array("h")
    back.frombytes(codec.decode(codec.encode(tone.tobytes())))
    err = math.sqrt(sum((a - b) ** 2 for a, b in zip(tone, back, strict=True)) / len(tone))
    assert err < 8000 * 0.05  # G.711 SNR is ~38 dB; 5% RMS error is generous
