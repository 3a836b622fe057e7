"""The RTP shell: sockets and one shared 20 ms clock for every call's audio.

One non-blocking UDP socket per call (even ports from the configured
range), watched with ``loop.add_reader``. All streams are paced from one
tick scheduled at absolute times ``t0 + k * 20 ms``, so pacing does not
drift, and one timer serves every call (DESIGN.md: one task per stream
falls over near 1,000 streams; one shared tick holds 1,500-2,000). A late
tick sends the frames it owes (two at most, so one stall does not make
the next tick late too) and skips the rest as a gap in RTP time. Media timeouts are checked once a second.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from ivr.media.g711 import FRAME_SECONDS, get_codec
from ivr.media.stream import MediaEvent, MediaStream

log = logging.getLogger(__name__)

MAX_CATCH_UP = 2  # frames a late tick may send per stream: more would make the next tick late too
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
        self.port_min = port_min + (port_min & 1)
        self.port_max = port_max
        self.on_events = on_events
        self.on_timeout = on_timeout
        self.media_timeout = media_timeout
        self.rng = rng or random.Random()
        self.stats = MediaStats()
        self._next_port = self.port_min
        self._streams: dict[MediaStream, socket.socket] = {}
        self._tick_handle: asyncio.TimerHandle | None = None
        self._t0 = 0.0
        self._k = 0

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
            self._t0 = self.loop.time()
            self._k = 0
            self._schedule_tick()
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
        span = (self.port_max - self.port_min) // 2 + 1
        for _ in range(span):
            port = self._next_port
            self._next_port += 2
            if self._next_port > self.port_max:
                self._next_port = self.port_min
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
    def _schedule_tick(self) -> None:
        self._k += 1
        self._tick_handle = self.loop.call_at(self._t0 + self._k * FRAME_SECONDS, self._tick)

    def _tick(self) -> None:
        now = self.loop.time()
        due = self._t0 + self._k * FRAME_SECONDS
        late = max(0.0, now - due)
        stats = self.stats
        stats.ticks += 1
        stats.observe_lateness(late)
        # frames owed: this one plus any whole periods the tick slept through;
        # the next tick is the first one still in the future
        owed = 1 + int(late / FRAME_SECONDS)
        self._k += owed - 1
        skipped = max(0, owed - MAX_CATCH_UP)
        if skipped:
            # too late to make up: skip ahead rather than burst (a gap in RTP time)
            stats.frames_skipped += skipped
            owed = MAX_CATCH_UP
        fired: list[MediaStream] = []
        for stream, sock in self._streams.items():
            remote = stream.remote
            if skipped:
                stream.skip(skipped)
            for _ in range(owed):
                try:
                    sock.sendto(stream.next_packet(), remote)
                except OSError:
                    pass  # send buffer full or peer unreachable: a lost frame
            if stream.events:
                fired.append(stream)
        for stream in fired:
            self.on_events(stream, stream.drain_events())
        if stats.ticks % 50 == 0 and self.media_timeout > 0:
            limit = now - self.media_timeout
            for stream in [s for s in self._streams if s.last_rx < limit]:
                stats.media_timeouts += 1
                self.on_timeout(stream)
        if self._streams:
            self._schedule_tick()
        else:
            self._tick_handle = None
