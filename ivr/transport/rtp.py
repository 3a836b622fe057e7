"""The RTP shell: sockets and the loop timer of the one shared 20 ms clock for every call's audio.

One non-blocking UDP socket per call (even ports from the configured range,
handed out by ivr/media/ports.py), watched with ``loop.add_reader``. All
streams are paced from one tick armed with ``loop.call_at`` at the times
ivr/media/pacing.py computes (``t0 + k * 20 ms``: no drift, one timer for
every call; one task per stream falls over near 1,000 streams, one shared
tick holds 1,500-2,000). What a late tick owes, and when media timeouts
are checked, is that module's arithmetic; this one only sends and reads.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from ivr.media.g711 import get_codec
from ivr.media.pacing import Pacer, silent_streams
from ivr.media.ports import RtpPortAllocator
from ivr.media.stream import MediaEvent, MediaStream

log = logging.getLogger(__name__)

LATENESS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


@dataclass
class MediaStats:
    packets_in: int = 0
    packets_out: int = 0
    bad_packets: int = 0
    media_timeouts: int = 0
    ticks: int = 0
    frames_skipped: int = 0  # frames a very late tick could not make up
    port_exhausted: int = 0
    lateness_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENESS_BUCKETS) + 1))
    lateness_sum: float = 0.0

    def observe_lateness(self, value: float) -> None:
        i = 0
        for bound in LATENESS_BUCKETS:
            if value <= bound:
                break
            i += 1
        self.lateness_counts[i] += 1
        self.lateness_sum += value


class MediaShell:
    """Opens and closes call streams; runs the shared pacing tick."""

    def __init__(
        self,
        host: str,
        port_min: int,
        port_max: int,
        on_events: Callable[[MediaStream, list[MediaEvent]], None],
        on_timeout: Callable[[MediaStream], None],
        media_timeout: float,
        rng: random.Random | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.host = host
        self.ports = RtpPortAllocator(port_min, port_max)
        self.on_events = on_events
        self.on_timeout = on_timeout
        self.media_timeout = media_timeout
        self.rng = rng or random.Random()
        self.stats = MediaStats()
        self._streams: dict[MediaStream, socket.socket] = {}
        self._tick_handle: asyncio.TimerHandle | None = None
        self.pacer = Pacer()

    @property
    def active(self) -> int:
        return len(self._streams)

    # -- streams ------------------------------------------------------------------
    def open(self, remote: tuple[str, int], codec_name: str, payload_type: int, dtmf_pt: int | None) -> MediaStream:
        """Bind a port and start sending (silence until something plays)."""
        sock, port = self._bind()
        rng = self.rng
        stream = MediaStream(
            port,
            remote,
            get_codec(codec_name),
            payload_type,
            dtmf_pt,
            ssrc=rng.getrandbits(32),
            seq=rng.getrandbits(16),
            timestamp=rng.getrandbits(32),
            now=self.loop.time(),
        )
        self._streams[stream] = sock
        self.loop.add_reader(sock.fileno(), self._readable, stream, sock)
        if self._tick_handle is None:
            self._tick_handle = self.loop.call_at(self.pacer.start(self.loop.time()), self._tick)
        return stream

    def close(self, stream: MediaStream) -> None:
        sock = self._streams.pop(stream, None)
        if sock is None:
            return
        stream.unbridge()  # the other leg must not relay into a closed stream
        self.loop.remove_reader(sock.fileno())
        sock.close()
        self.stats.packets_in += stream.packets_in
        self.stats.packets_out += stream.packets_out
        self.stats.bad_packets += stream.bad_packets
        if not self._streams and self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None

    def close_all(self) -> None:
        for stream in list(self._streams):
            self.close(stream)

    def totals(self) -> tuple[int, int]:
        """Packets in and out, closed streams and open ones together."""
        pin = self.stats.packets_in + sum(s.packets_in for s in self._streams)
        pout = self.stats.packets_out + sum(s.packets_out for s in self._streams)
        return pin, pout

    def _bind(self) -> tuple[socket.socket, int]:
        for _ in range(self.ports.span):  # one round of the range: a taken port is skipped
            port = self.ports.next()
            sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((self.host, port))
            except OSError:
                sock.close()
                continue
            sock.setblocking(False)
            return sock, port
        self.stats.port_exhausted += 1
        raise OSError("no free RTP port in the configured range")

    # -- receive --------------------------------------------------------------------
    def _readable(self, stream: MediaStream, sock: socket.socket) -> None:
        now = self.loop.time()
        for _ in range(32):
            try:
                data, addr = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            stream.receive(data, (addr[0], addr[1]), now)
        if stream.events:
            self.on_events(stream, stream.drain_events())

    # -- the shared clock -------------------------------------------------------------
    def _tick(self) -> None:
        now = self.loop.time()
        tick = self.pacer.tick(now)
        stats = self.stats
        stats.ticks += 1
        stats.observe_lateness(tick.late)
        frames, skipped = tick.frames, tick.skipped
        stats.frames_skipped += skipped
        fired: list[MediaStream] = []
        for stream, sock in self._streams.items():
            remote = stream.remote
            if skipped:
                stream.skip(skipped)
            for _ in range(frames):
                try:
                    sock.sendto(stream.next_packet(), remote)
                except OSError:
                    pass  # send buffer full or peer unreachable: a lost frame
            if stream.events:
                fired.append(stream)
        for stream in fired:
            self.on_events(stream, stream.drain_events())
        if tick.check_timeouts:
            for stream in silent_streams(self._streams, now, self.media_timeout):
                stats.media_timeouts += 1
                self.on_timeout(stream)
        if self._streams:
            self._tick_handle = self.loop.call_at(self.pacer.due, self._tick)
        else:
            self._tick_handle = None
