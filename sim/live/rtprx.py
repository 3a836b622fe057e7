"""The media benchmark's receive side: one UDP port that reads every call's RTP back, and what it shows.

Every call's SDP names this one port; a thread reads each packet with its
kernel receive timestamp (``SO_TIMESTAMPNS``), and :func:`analyse_capture`
turns one window of packets into per-stream lateness against the 20 ms grid
the RTP timestamps promise, RFC 3550 jitter, loss, and the send burst of each
tick.
"""

from __future__ import annotations

import itertools
import math
import socket
import struct
import threading
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sim.live.targets import HOST

_RTP_HEADER = struct.Struct("!BBHII")
_TIMESPEC = struct.Struct("@qq")
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; SCM_TIMESTAMPNS has the same value
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
NS_PER_SAMPLE = 125_000  # 8 kHz RTP clock


@dataclass
class Capture:
    """Every RTP packet that arrived in the window: SSRC, sequence, timestamp, kernel receive time."""

    ssrc: array[int] = field(default_factory=lambda: array("I"))
    seq: array[int] = field(default_factory=lambda: array("H"))
    ts: array[int] = field(default_factory=lambda: array("I"))
    t_ns: array[int] = field(default_factory=lambda: array("q"))
    seconds: float = 0.0
    socket_drops: int | None = None
    kernel_timestamps: bool = True


class RtpReceiver:
    """One UDP port on 127.0.0.1 that every call's SDP names; a thread reads and timestamps what arrives.

    The thread polls (sleep a few ms, then drain the socket) rather than
    blocking in ``recvmsg``: on loopback the sender's ``sendto`` delivers
    into this socket itself, and waking a blocked reader for each packet
    would bill that wake-up to the server being measured. Arrival times
    are the kernel's (``SO_TIMESTAMPNS``), so reading late loses nothing.
    Nothing is read until :meth:`arm` (the kernel drops what does not fit
    the buffer); packets are kept from :meth:`begin` to :meth:`end`.
    """

    POLL_SECONDS = 0.004

    def __init__(self, rcvbuf: int = 32 << 20) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)  # root may exceed rmem_max
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.kernel_timestamps = True
        except OSError:
            self.kernel_timestamps = False
        self.sock.bind((HOST, 0))
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])
        self._armed = threading.Event()
        self._quit = False
        self._from_ns = 1 << 62
        self._to_ns = 1 << 62
        self._done = threading.Event()
        self._capture = Capture()
        self._drops_before: int | None = None
        self._thread: threading.Thread | None = None

    def arm(self) -> None:
        """Start reading (and throwing away) so the socket is drained when the window opens."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rtp-receiver", daemon=True)
            self._thread.start()
        self._armed.set()

    def begin(self) -> None:
        self._capture = Capture(kernel_timestamps=self.kernel_timestamps)
        self._done.clear()
        self._to_ns = 1 << 62
        self._drops_before = udp_socket_drops(self.port)
        self._from_ns = time.time_ns()
        self.arm()

    def end(self) -> Capture:
        """Close the window; waits until what arrived before now has been read."""
        self._to_ns = time.time_ns()
        self._done.wait(5.0)
        self._armed.clear()
        cap = self._capture
        cap.seconds = (self._to_ns - self._from_ns) / 1e9
        drops = udp_socket_drops(self.port)
        if drops is not None and self._drops_before is not None:
            cap.socket_drops = drops - self._drops_before
        self._from_ns = 1 << 62
        return cap

    def close(self) -> None:
        self._quit = True
        self._armed.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self.sock.close()

    def _run(self) -> None:
        sock = self.sock
        ancsize = socket.CMSG_SPACE(_TIMESPEC.size)
        unpack_header = _RTP_HEADER.unpack_from
        unpack_time = _TIMESPEC.unpack_from
        while not self._quit:
            if not self._armed.wait(0.2):
                continue
            time.sleep(self.POLL_SECONDS)
            drain_started = time.time_ns()
            cap = self._capture
            from_ns, to_ns = self._from_ns, self._to_ns
            while True:
                try:
                    data, anc, _flags, _addr = sock.recvmsg(12, ancsize)
                except BlockingIOError:
                    break
                except OSError:
                    if self._quit:
                        return
                    break
                t_ns = 0
                for _level, kind, cdata in anc:
                    if kind == SO_TIMESTAMPNS and len(cdata) >= _TIMESPEC.size:
                        sec, nsec = unpack_time(cdata)
                        t_ns = sec * 1_000_000_000 + nsec
                if not t_ns:
                    t_ns = time.time_ns()
                if t_ns < from_ns or t_ns >= to_ns or len(data) < 12:
                    continue
                _vpx, _mpt, seq, ts, ssrc = unpack_header(data)
                cap.ssrc.append(ssrc)
                cap.seq.append(seq)
                cap.ts.append(ts)
                cap.t_ns.append(t_ns)
            if drain_started > to_ns + 1_000_000:
                self._done.set()  # drained after the window closed: everything in it has been read


def udp_socket_drops(port: int) -> int | None:
    """The kernel's drop count for our UDP socket on 127.0.0.1:port (/proc/net/udp)."""
    want = f"0100007F:{port:04X}"
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) > 12 and parts[1] == want:
            return int(parts[-1])
    return None


@dataclass
class RxStats:
    packets: int
    streams: int
    seconds: float
    packets_per_stream_per_s: float | None
    loss: float | None  # share of packets missing by sequence number (the receiver's own drops included)
    late_p50_ms: float | None  # arrival minus the stream's best fit to its 20 ms grid
    late_p99_ms: float | None
    late_max_ms: float | None
    jitter_p50_ms: float | None  # peak RFC 3550 interarrival jitter of each stream over the window
    jitter_p99_ms: float | None
    jitter_max_ms: float | None
    burst_p50_ms: float | None  # first to last packet of one tick: time each tick spends sending
    burst_p99_ms: float | None
    bursts_per_s: float | None
    socket_drops: int | None
    kernel_timestamps: bool


def analyse_capture(cap: Capture, burst_gap_ms: float = 2.0) -> RxStats:
    """Per-stream lateness, jitter and loss, and the per-tick send bursts, from one window's packets."""
    n = len(cap.t_ns)
    by_stream: dict[int, list[int]] = {}
    for i, s in enumerate(cap.ssrc):
        by_stream.setdefault(s, []).append(i)
    late: list[float] = []
    jitters: list[float] = []
    expected = received = 0
    t_ns, ts, seq = cap.t_ns, cap.ts, cap.seq
    for idx in by_stream.values():
        idx.sort(key=lambda i: t_ns[i])
        ts0 = ts[idx[0]]
        offsets = [t_ns[i] - ((ts[i] - ts0) & 0xFFFFFFFF) * NS_PER_SAMPLE for i in idx]
        best = min(offsets)
        late.extend((o - best) / 1e6 for o in offsets)
        jit = peak = 0.0
        for a, b in itertools.pairwise(idx):
            d = (t_ns[b] - t_ns[a]) - ((ts[b] - ts[a]) & 0xFFFFFFFF) * NS_PER_SAMPLE
            jit += (abs(d) / 1e6 - jit) / 16
            peak = max(peak, jit)
        jitters.append(peak)
        s0, s1 = seq[idx[0]], seq[idx[-1]]
        expected += ((s1 - s0) & 0xFFFF) + 1
        received += len(idx)
    bursts: list[float] = []
    if n:
        times = sorted(t_ns)
        gap = burst_gap_ms * 1e6
        start = prev = times[0]
        for t in times[1:]:
            if t - prev > gap:
                bursts.append((prev - start) / 1e6)
                start = t
            prev = t
        bursts.append((prev - start) / 1e6)
        bursts = bursts[1:-1] or bursts  # the first and last may be cut by the window edges
    streams = len(by_stream)
    late.sort()
    jitters.sort()
    bursts.sort()

    def pct(ordered: Sequence[float], p: float) -> float | None:
        # nearest rank, as sim.live.sipprun.percentile, on values already sorted
        if not ordered:
            return None
        return round(ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))], 3)

    return RxStats(
        packets=n,
        streams=streams,
        seconds=round(cap.seconds, 3),
        packets_per_stream_per_s=round(n / cap.seconds / streams, 2) if streams and cap.seconds > 0 else None,
        loss=round(1 - received / expected, 6) if expected else None,
        late_p50_ms=pct(late, 50),
        late_p99_ms=pct(late, 99),
        late_max_ms=round(late[-1], 3) if late else None,
        jitter_p50_ms=pct(jitters, 50),
        jitter_p99_ms=pct(jitters, 99),
        jitter_max_ms=round(jitters[-1], 3) if jitters else None,
        burst_p50_ms=pct(bursts, 50),
        burst_p99_ms=pct(bursts, 99),
        bursts_per_s=round(len(bursts) / cap.seconds, 1) if cap.seconds > 0 and bursts else None,
        socket_drops=cap.socket_drops,
        kernel_timestamps=cap.kernel_timestamps,
    )
