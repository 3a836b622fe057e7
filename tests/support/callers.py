"""The callers' side of a live call, owned by the test: the RTP socket a SIPp caller names in its SDP.

SIPp places the call and presses keys; the audio goes to and from one of
these sockets (field 1 of the callers' CSV), so a test hears exactly what a
caller hears. :class:`CallerMedia` sends a tone back to wherever the server's
RTP comes from and keeps the packets; :class:`CallerEar` sends silence on a
steady 20 ms clock and keeps the payloads with their arrival times, for
frame-exact matching against the prompts (:func:`find_all`).
"""

from __future__ import annotations

import array
import math
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ivr.media.g711 import get_codec
from ivr.media.rtp import RtpError, RtpPacket
from support.ports import free_port

RATE = 8000
FRAME = 160  # samples in 20 ms
PCMU = get_codec("PCMU")


class CallerMedia:
    """The RTP socket a SIPp caller offers in its SDP (field 1), owned by the test.

    Once the server's first packet arrives it sends a PCMU tone back to where
    that packet came from (symmetric RTP), every 20 ms; it keeps every packet
    it receives with the time it arrived.
    """

    def __init__(self, tone_hz: float | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", free_port()))
        self.sock.settimeout(0.005)
        self.port = int(self.sock.getsockname()[1])
        self.received: list[tuple[float, RtpPacket]] = []
        self.sent = 0
        pcm = array.array("h", [int(8000 * math.sin(2 * math.pi * (tone_hz or 0) * n / RATE)) for n in range(FRAME)])
        if sys.byteorder == "big":
            pcm.byteswap()
        # 1 kHz has exactly 20 periods in a 20 ms frame, so one payload repeats without a seam
        self.payload = PCMU.encode(pcm.tobytes()) if tone_hz else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"caller-rtp-{self.port}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        peer: tuple[str, int] | None = None
        seq, ts, next_at = 0, 0, 0.0
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(2048)
                try:
                    self.received.append((time.monotonic(), RtpPacket.parse(data)))
                except RtpError:
                    pass
                peer = addr
            except (TimeoutError, OSError):
                pass
            now = time.monotonic()
            if peer is not None and self.payload is not None and now >= next_at:
                packet = RtpPacket(0, seq & 0xFFFF, ts & 0xFFFFFFFF, 0x1000, self.payload, marker=seq == 0)
                try:
                    self.sock.sendto(packet.serialize(), peer)
                    self.sent += 1
                except OSError:
                    pass
                seq, ts = seq + 1, ts + FRAME
                next_at = max(next_at + 0.02, now - 0.02)

    def heard_after(self, t: float) -> list[array.array[int]]:
        """Decoded PCMU frames received at or after monotonic time ``t``."""
        frames = []
        for at, pkt in list(self.received):
            if at >= t and pkt.payload_type == 0:
                pcm = array.array("h")
                pcm.frombytes(PCMU.decode(pkt.payload))
                if sys.byteorder == "big":
                    pcm.byteswap()
                frames.append(pcm)
        return frames

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@contextmanager
def caller_media(count: int = 1, tone_hz: float | None = None) -> Iterator[list[CallerMedia]]:
    media = [CallerMedia(tone_hz) for _ in range(count)]
    try:
        yield media
    finally:
        for m in media:
            m.close()


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
