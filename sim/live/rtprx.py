"""The media benchmark's receive side: one UDP port that reads every call's RTP back, and what it shows.

Every call's SDP names this one port; a thread reads each packet with its
kernel receive timestamp (``SO_TIMESTAMPNS``), and :func:`analyse_capture`
turns one window of packets into per-stream lateness against the 20 ms grid
the RTP timestamps promise, RFC 3550 jitter, loss, and the send burst of each
tick.

At 5,000 streams that is 250,000 packets a second, on a machine whose other
core runs the server being measured; one ``recvmsg`` per packet in Python
would cost the benchmark most of a core. On Linux the thread therefore reads
up to :data:`BATCH` packets per ``recvmmsg(2)`` call (through ctypes: the
standard library has no ``recvmmsg``) into fixed buffers, and numpy decodes
the headers and timestamps of the whole batch at once; elsewhere it falls
back to one ``recvmsg`` per packet.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import math
import socket
import struct
import sys
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sim.live.targets import HOST

_RTP_HEADER = struct.Struct("!BBHII")
_TIMESPEC = struct.Struct("@qq")
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; SCM_TIMESTAMPNS has the same value
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
NS_PER_SAMPLE = 125_000  # 8 kHz RTP clock
BATCH = 1024  # packets per recvmmsg call
MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0x40)
_SLOT = 16  # bytes kept of each packet (the 12-byte RTP header), one slot each
_HEADER_DTYPE = np.dtype([("b0", "u1"), ("b1", "u1"), ("seq", ">u2"), ("ts", ">u4"), ("ssrc", ">u4"), ("pad", "V4")])
# one control message: struct cmsghdr (size_t len, int level, int type) and the struct timespec it carries
_CMSG_DTYPE = np.dtype([("len", "u8"), ("level", "i4"), ("type", "i4"), ("sec", "i8"), ("nsec", "i8")])


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


class BatchReader:
    """``recvmmsg(2)`` on one UDP socket: up to :data:`BATCH` packets' RTP headers and kernel times per call.

    Only Linux on 64-bit machines (where ``struct cmsghdr`` holding a
    ``timespec`` is 32 bytes); :func:`batch_reader` returns None elsewhere.
    """

    def __init__(self, fd: int, recvmmsg: Callable[..., int], batch: int = BATCH) -> None:
        self.fd = fd
        self.batch = batch
        self._recvmmsg = recvmmsg
        self._ctrl_size = _CMSG_DTYPE.itemsize
        self._data = (ctypes.c_char * (batch * _SLOT))()
        self._ctrl = (ctypes.c_char * (batch * self._ctrl_size))()
        self._iov = (_IoVec * batch)()
        self._msgs = (_MMsgHdr * batch)()
        data, ctrl = ctypes.addressof(self._data), ctypes.addressof(self._ctrl)
        for i in range(batch):
            self._iov[i].base = data + i * _SLOT
            self._iov[i].len = 12  # the header is all we keep; the kernel truncates the rest
            hdr = self._msgs[i].hdr
            hdr.iov = ctypes.addressof(self._iov[i])
            hdr.iovlen = 1
            hdr.control = ctrl + i * self._ctrl_size
        # the kernel writes each message's control length back: reset them all before every call
        words = ctypes.sizeof(_MMsgHdr) // 8
        msgs = _as_bytes(self._msgs)
        self._controllen = np.frombuffer(msgs, dtype=np.uint64).reshape(batch, words)[
            :, _MMsgHdr.hdr.offset // 8 + _MsgHdr.controllen.offset // 8
        ]
        self._msg_len = np.frombuffer(msgs, dtype=np.uint32).reshape(batch, words * 2)[:, _MMsgHdr.len.offset // 4]
        self._headers = np.frombuffer(_as_bytes(self._data), dtype=_HEADER_DTYPE)
        self._cmsgs = np.frombuffer(_as_bytes(self._ctrl), dtype=_CMSG_DTYPE)

    def read(self) -> tuple[np.ndarray, np.ndarray] | None:
        """One call: (RTP headers, kernel receive times in ns, 0 where none came) of what was waiting; None if none."""
        self._controllen[:] = self._ctrl_size
        n = self._recvmmsg(self.fd, ctypes.byref(self._msgs), self.batch, MSG_DONTWAIT, None)
        if n <= 0:
            return None
        cm = self._cmsgs[:n]
        t_ns = np.where(
            (cm["type"] == SO_TIMESTAMPNS) & (self._controllen[:n] >= self._ctrl_size),
            cm["sec"] * 1_000_000_000 + cm["nsec"],
            0,
        )
        keep = self._msg_len[:n] >= 12
        return self._headers[:n][keep], t_ns[keep]


def _as_bytes(block: ctypes.Array[Any]) -> memoryview:
    """A ctypes array's memory as plain bytes (numpy views it without copying; the kernel writes into it)."""
    return memoryview(block).cast("B")


def batch_reader(sock: socket.socket) -> BatchReader | None:
    """A :class:`BatchReader` for ``sock`` where libc has ``recvmmsg`` (Linux, 64-bit), else None."""
    if not sys.platform.startswith("linux") or ctypes.sizeof(ctypes.c_void_p) != 8:
        return None
    if _MMsgHdr.len.offset != 56 or ctypes.sizeof(_MMsgHdr) != 64:
        return None  # not the x86-64/arm64 layout the numpy views assume
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.recvmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return BatchReader(sock.fileno(), fn)


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
        self.batched = batch_reader(self.sock)
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
        """Drain the socket every POLL_SECONDS while armed; say when a drain began after the window closed."""
        drain = self._drain_one if self.batched is None else self._drain_batched
        while not self._quit:
            if not self._armed.wait(0.2):
                continue
            time.sleep(self.POLL_SECONDS)
            drain_started = time.time_ns()
            if not drain(self._capture, self._from_ns, self._to_ns):
                return  # closed while reading
            if drain_started > self._to_ns + 1_000_000:
                self._done.set()  # drained after the window closed: everything in it has been read

    def _drain_one(self, cap: Capture, from_ns: int, to_ns: int) -> bool:
        """Read what is queued one ``recvmsg`` at a time (no ``recvmmsg``); False once closed."""
        sock = self.sock
        ancsize = socket.CMSG_SPACE(_TIMESPEC.size)
        unpack_header = _RTP_HEADER.unpack_from
        unpack_time = _TIMESPEC.unpack_from
        while True:
            try:
                data, anc, _flags, _addr = sock.recvmsg(12, ancsize)
            except BlockingIOError:
                return True
            except OSError:
                return not self._quit
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

    def _drain_batched(self, cap: Capture, from_ns: int, to_ns: int) -> bool:
        """Read what is queued in ``recvmmsg`` batches, decoded with numpy; False once closed."""
        reader = self.batched
        assert reader is not None
        while True:
            try:
                got = reader.read()
            except OSError:
                return not self._quit
            if got is None:
                return True
            headers, t_ns = got
            if not t_ns.all():
                t_ns = np.where(t_ns == 0, time.time_ns(), t_ns)
            inside = (t_ns >= from_ns) & (t_ns < to_ns)
            if not inside.any():
                continue
            h = headers[inside]
            cap.ssrc.frombytes(h["ssrc"].astype(np.uint32).tobytes())
            cap.seq.frombytes(h["seq"].astype(np.uint16).tobytes())
            cap.ts.frombytes(h["ts"].astype(np.uint32).tobytes())
            cap.t_ns.frombytes(t_ns[inside].astype(np.int64).tobytes())


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
