"""Media test helpers: SIPp's RTP captures, tones, a phone's UDP socket, the RTP shell, and a stepped media clock.

:class:`SteppedMedia` does what the RTP shell's tick does (ivr/transport/rtp.py)
on pure streams and a virtual clock (``now += 0.020``): the pacing, catch-up,
playback and bridge tests run without sockets or sleeps and can count
frames exactly. :func:`make_shell` builds the real shell on ports reserved
for this test session (tests/support/ports.py), for the few loopback tests
that check what arrives.
"""

from __future__ import annotations

import array
import math
import socket
import struct
from collections.abc import Callable
from pathlib import Path

from ivr.media.g711 import FRAME_SECONDS, Codec
from ivr.media.pacing import Pacer, Tick
from ivr.media.rtp import RtpPacket
from ivr.media.stream import MediaEvent, MediaStream
from ivr.transport.rtp import MediaShell
from support.ports import port_range

SIPP_PCAPS = Path("/usr/share/sip-tester")  # Debian's sip-tester: RTP and RFC 2833 captures


def read_pcap_udp_payloads(path: Path) -> list[bytes]:
    """UDP payloads of an Ethernet/IPv4 pcap (enough for SIPp's captures)."""
    data = path.read_bytes()
    magic = struct.unpack_from("<I", data)[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    offset = 24
    out = []
    while offset + 16 <= len(data):
        incl = struct.unpack_from(endian + "I", data, offset + 8)[0]
        frame = data[offset + 16 : offset + 16 + incl]
        offset += 16 + incl
        l2 = 14 if linktype == 1 else 16 if linktype == 113 else 0
        ip = frame[l2:]
        if not ip or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        ihl = (ip[0] & 0x0F) * 4
        out.append(ip[ihl + 8 :])
    return out


def tone(seconds: float, freq: float = 440.0, amp: int = 8000) -> bytes:
    """16-bit PCM at 8 kHz: a sine, loud enough to count as voice."""
    n = int(seconds * 8000)
    return array.array("h", [int(amp * math.sin(2 * math.pi * freq * i / 8000)) for i in range(n)]).tobytes()


def stream(codec: Codec, remote: tuple[str, int] = ("192.0.2.1", 4000), now: float = 0.0, **kw: int) -> MediaStream:
    """A pure stream (no socket) with fixed SSRC, sequence and timestamp unless given."""
    ids = {"ssrc": 0x5555, "seq": 100, "timestamp": 1000} | kw
    return MediaStream(
        10000,
        remote,
        codec,
        codec.payload_type,
        101,
        ssrc=ids["ssrc"],
        seq=ids["seq"],
        timestamp=ids["timestamp"],
        now=now,
    )


class SteppedMedia:
    """Pure streams paced by a :class:`Pacer` on a virtual clock, as the shell paces real ones."""

    def __init__(self, *streams: MediaStream, now: float = 0.0) -> None:
        self.pacer = Pacer()
        self.streams = list(streams)
        self.now = now
        self.sent: dict[MediaStream, list[RtpPacket]] = {s: [] for s in streams}
        self.pacer.start(now)

    def tick_at(self, now: float) -> Tick:
        """Run the tick due at ``pacer.due`` at ``now`` (later means late): each stream sends what it owes."""
        assert now >= self.pacer.due, "a tick never runs early"
        self.now = now
        tick = self.pacer.tick(now)
        for s in self.streams:
            if tick.skipped:
                s.skip(tick.skipped)
            self.sent[s] += [RtpPacket.parse(s.next_packet()) for _ in range(tick.frames)]
        return tick

    def step(self, before_tick: Callable[[float], None] | None = None) -> Tick:
        """``now += 20 ms`` to the next tick, on time; ``before_tick(now)`` runs first (a phone's packet)."""
        now = self.now + FRAME_SECONDS
        now = max(now, self.pacer.due)  # float steps must not fall a hair short of the grid
        if before_tick is not None:
            before_tick(now)
        return self.tick_at(now)


class UdpPhone:
    """A plain UDP socket standing in for a caller's phone on loopback."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.addr: tuple[str, int] = self.sock.getsockname()
        self.received: list[RtpPacket] = []

    def drain(self) -> list[RtpPacket]:
        """What arrived since the last drain (also kept in :attr:`received`)."""
        out: list[RtpPacket] = []
        while True:
            try:
                data, _ = self.sock.recvfrom(2048)
            except BlockingIOError:
                self.received += out
                return out
            out.append(RtpPacket.parse(data))

    def close(self) -> None:
        self.sock.close()


class Recorder:
    """The shell's two callbacks, recording what they were given."""

    def __init__(self) -> None:
        self.events: list[MediaEvent] = []
        self.timeouts: list[MediaStream] = []

    def on_events(self, stream: MediaStream, events: list[MediaEvent]) -> None:
        self.events += events

    def on_timeout(self, stream: MediaStream) -> None:
        self.timeouts.append(stream)


SHELL_PORTS = 20  # RTP ports per test shell: ten streams


async def make_shell(
    rec: Recorder, media_timeout: float = 0.0, *, own_poller: bool | None = None, streams: int = SHELL_PORTS // 2
) -> MediaShell:
    """The real RTP shell on the running loop, on ports reserved for this test session."""
    ports = port_range(max(SHELL_PORTS, 2 * streams + 2))
    return MediaShell(
        "127.0.0.1", ports.start, ports[-1], rec.on_events, rec.on_timeout, media_timeout, own_poller=own_poller
    )
