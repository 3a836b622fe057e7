"""RTP pacing benchmark: N concurrent IVR calls streaming prompts from one server process.

``frontdesk bench-media [options]`` (or ``python -m sim.live.mediabench``) does,
for each N in ``--streams`` (default 250, 500, 1000, 1500):

1. starts ``frontdesk serve`` (uvloop, log level warning, hold time one
   hour, media timeout off, a prompt cache rendered once per benchmark run)
   with a fresh database: one process, so one core for its event loop;
2. has SIPp (``sim/scenarios/media_uac.xml``) place N calls at
   ``--ramp-rate`` calls/s and hold them: INVITE offering PCMU, PCMA and
   telephone-event, ACK, then wait for the server's BYE (the caller hangs
   up itself after the hold). Every call walks the built-in demo IVR
   (welcome, then the main menu and its re-prompts: about 95 s of prompts
   and menu waits with no key pressed), so every call has an RTP stream
   paced by the server's one shared 20 ms tick;
3. waits until ``frontdesk_media_streams_active`` reaches N, lets it settle,
   then measures over ``--window`` seconds between two ``/metrics`` scrapes:

   * pacing lateness p50/p99 of the shared tick, from the deltas of the
     ``frontdesk_rtp_pacing_lateness_seconds`` histogram (one observation
     per tick; buckets 0.5, 1, 2, 5, 10, 20, 50, 100 ms; the quantile is
     interpolated linearly inside its bucket, as Prometheus'
     ``histogram_quantile`` does, so it is exact only to the bucket);
   * RTP packets sent per second (``frontdesk_rtp_packets_total{direction="out"}``),
     which should be 50 per stream;
   * CPU time of the server's event-loop thread, of the whole server process
     and of SIPp, from ``/proc``;
   * the receive side: the SDP of every call names one UDP port bound by
     this benchmark (SIPp sends no RTP and does not read its media port), so
     every packet of every stream is read here with its kernel receive
     timestamp (``SO_TIMESTAMPNS``; on loopback, that is when the server's
     ``sendto`` ran). Per stream, each packet's lateness is its arrival
     minus the stream's own best fit to the 20 ms grid its RTP timestamps
     promise (arrival - timestamp/8000, less that stream's minimum), and
     the peak of its RFC 3550 interarrival jitter is kept. The send burst
     of a tick (its first to its last packet) shows how much of each 20 ms
     the tick spends sending.

A step passes when tick lateness p99 <= ``--goal-ms`` (5 ms), the server
sent at least ``--min-rate-share`` (95%) of 50 x N packets per second, all
N streams were up through the window and no call failed. Stepping stops at
the first step that does not pass (``--keep-going`` runs them all).
``--profile`` records the server with py-spy during each window. Every
process started here is stopped on the way out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sim.live.promtext import Samples, parse_metrics, sample
from sim.live.sipbench import (
    HOST,
    SIPP_EXIT,
    Frontdesk,
    event_loop_name,
    free_port,
    log,
    parse_stat_file,
    sigterm_unwinds,
    sipp_version,
    stop_process,
    table,
    write_json,
)

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "media_uac.xml"

GOAL_P99_MS = 5.0  # tick lateness p99 (issue 3)
GOAL_STREAMS = 500  # concurrent calls the goal must hold at (issue 3)
PACKETS_PER_STREAM = 50.0  # 20 ms frames
MIN_RATE_SHARE = 0.95  # packets sent per second, share of 50 x N
DEFAULT_STREAMS = (250, 500, 1000, 1500)
RTP_PORT_MIN = 20000  # the server's default RTP range is 20000-30000: 5,000 streams
DEMO_CALL_SECONDS = 95.0  # the demo flow with no key pressed (measured: 95.1 s)

LATENESS = "frontdesk_rtp_pacing_lateness_seconds"
PACKETS = "frontdesk_rtp_packets_total"
STREAMS = "frontdesk_media_streams_active"
CALLS_ENDED = "frontdesk_calls_ended_total"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- server metrics


def histogram_buckets(samples: Samples, name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of one histogram, ascending, +Inf last."""
    rows = [(float(dict(lab)["le"]), v) for (n, lab), v in samples.items() if n == f"{name}_bucket"]
    return sorted(rows)


def bucket_deltas(before: Samples, after: Samples, name: str) -> tuple[list[float], list[float]]:
    """Finite upper bounds and per-bucket (not cumulative) counts observed between two scrapes.

    The counts list has one more entry than the bounds: the +Inf bucket.
    """
    a = dict(histogram_buckets(before, name))
    rows = histogram_buckets(after, name)
    bounds = [le for le, _ in rows if not math.isinf(le)]
    counts: list[float] = []
    prev = 0.0
    for le, cum in rows:
        cum -= a.get(le, 0.0)
        counts.append(cum - prev)
        prev = cum
    return bounds, counts


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """The q-quantile, interpolated linearly inside its bucket (the lowest bucket starts at 0).

    Like Prometheus' ``histogram_quantile``: a quantile that falls in the +Inf
    bucket is reported as the highest finite bound. ``None`` with no observations.
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    cum = 0.0
    lower = 0.0
    for i, n in enumerate(counts):
        upper = bounds[i] if i < len(bounds) else math.inf
        if n > 0 and cum + n >= rank:
            if math.isinf(upper):
                return bounds[-1] if bounds else None
            return lower + (upper - lower) * (rank - cum) / n
        cum += n
        lower = upper
    return bounds[-1] if bounds else None


def highest_bucket(bounds: Sequence[float], counts: Sequence[float]) -> str:
    """The bucket of the worst observation, as text: '<= 2 ms' or '> 100 ms'."""
    top = max((i for i, n in enumerate(counts) if n > 0), default=None)
    if top is None:
        return "-"
    if top >= len(bounds):
        return f"> {bounds[-1] * 1000:g} ms"
    return f"<= {bounds[top] * 1000:g} ms"


def cpu_seconds(pid: int | None, tid: int | None = None) -> float | None:
    """User + system CPU seconds of a process (all threads) or of one of its threads."""
    if pid is None:
        return None
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class MetricsSnapshot:
    t: float
    samples: Samples
    loop_cpu: float | None  # the server's main thread: its event loop
    server_cpu: float | None
    sipp_cpu: float | None
    bench_cpu: float  # this process: the RTP receiver thread, mostly


# --------------------------------------------------------------------------- the receive side

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
        # nearest rank, as sipbench.percentile, on values already sorted
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


# --------------------------------------------------------------------------- one step


@dataclass
class MediaBenchOptions:
    sipp: str
    streams: list[int]
    ramp_rate: int
    window: float
    settle: float
    goal_ms: float
    min_rate_share: float
    receiver: bool
    keep_going: bool
    profile: str | None


@dataclass
class StepResult:
    streams: int
    passed: bool = False
    problems: list[str] = field(default_factory=list)
    ramp_s: float | None = None
    window_s: float | None = None
    active_start: int | None = None
    active_end: int | None = None
    calls_ended_in_window: int | None = None
    ticks_per_s: float | None = None
    packets_out_per_s: float | None = None
    packets_per_stream_per_s: float | None = None
    rate_share: float | None = None  # packets_out_per_s / (50 x streams)
    lateness_p50_ms: float | None = None
    lateness_p99_ms: float | None = None
    lateness_mean_ms: float | None = None
    lateness_worst_bucket: str | None = None
    lateness_p99_beyond_buckets: bool = False
    lateness_buckets: dict[str, int] = field(default_factory=dict)  # "<=0.5ms": ticks in the window
    server_loop_cpu: float | None = None  # share of one core used by the event-loop thread
    server_cpu: float | None = None  # the whole server process (all threads), share of one core
    sipp_cpu: float | None = None
    bench_cpu: float | None = None  # this benchmark process (the RTP receiver), share of one core
    receiver: dict[str, Any] | None = None
    sipp: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] | None = None
    loadavg: list[float] = field(default_factory=list)


class MediaStep:
    """One N: a fresh server, SIPp holding N calls, one measured window."""

    def __init__(self, opts: MediaBenchOptions, n: int, workdir: Path, prompt_cache: Path) -> None:
        self.opts = opts
        self.n = n
        self.dir = workdir / f"step-{n}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prompt_cache = prompt_cache
        self.result = StepResult(streams=n)
        self.server: Frontdesk | None = None
        self.sipp: subprocess.Popen[bytes] | None = None
        self.receiver: RtpReceiver | None = None
        self.sink: socket.socket | None = None

    # -- processes ------------------------------------------------------------------
    def _start_server(self) -> Frontdesk:
        n = self.n
        config = {
            "media": {
                "timeout": 0,  # SIPp sends no RTP: no media timeout
                "prompt_cache": str(self.prompt_cache),
                "recordings_dir": str(self.dir / "recordings"),
                "rtp_port_min": RTP_PORT_MIN,
                "rtp_port_max": max(30000, min(65534, RTP_PORT_MIN + 2 * n + 200)),
            },
            "sip": {"max_calls": max(20000, 2 * n)},
        }
        server = Frontdesk(self.dir, hold_time=3600.0, config=config, nofile=n + 4096)
        self.server = server
        server.start()
        return server

    def _start_sipp(self, server: Frontdesk, rtp_port: int) -> subprocess.Popen[bytes]:
        o, n = self.opts, self.n
        hold_ms = int((n / o.ramp_rate + o.settle + o.window + 120) * 1000)
        cmd = [
            o.sipp,
            f"{HOST}:{server.port}",
            "-sf", str(SCENARIO),
            "-i", HOST,
            "-p", str(free_port()),
            "-mp", str(free_port()),  # SIPp's own media port (unused), away from other SIPp runs' 6000
            "-key", "rtp_ip", HOST,
            "-key", "rtp_port", str(rtp_port),
            "-r", str(o.ramp_rate),
            "-l", str(n),
            "-m", str(n),
            "-recv_timeout", str(hold_ms),  # the hold: then the caller sends BYE
            "-nostdin",
            "-trace_stat", "-stf", str(self.dir / "sipp-stat.csv"), "-fd", "1",
            "-trace_err", "-error_file", str(self.dir / "sipp-errors.log"),
        ]  # fmt: skip
        self.result.sipp["command"] = " ".join(cmd)
        with (self.dir / "sipp-stderr.log").open("wb") as err:
            self.sipp = subprocess.Popen(
                cmd, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )
        return self.sipp

    def stop(self) -> None:
        stop_process(self.sipp, grace=3)
        if self.server is not None:
            self.server.stop()
        if self.receiver is not None:
            self.receiver.close()
        if self.sink is not None:
            self.sink.close()

    # -- measuring -------------------------------------------------------------------
    def _snapshot(self) -> MetricsSnapshot:
        server = self.server
        assert server is not None
        t0 = time.monotonic()
        text = server.http_get("/metrics", timeout=10).decode()
        t = (t0 + time.monotonic()) / 2  # the counters were read somewhere in between
        pid = server.pid
        sipp_pid = self.sipp.pid if self.sipp is not None and self.sipp.poll() is None else None
        own = os.times()
        return MetricsSnapshot(
            t,
            parse_metrics(text),
            cpu_seconds(pid, pid),
            cpu_seconds(pid),
            cpu_seconds(sipp_pid),
            own.user + own.system,
        )

    def _wait_for_streams(self) -> bool:
        """Until N streams are up; False (with the reason noted) when that does not happen."""
        o, n, res = self.opts, self.n, self.result
        started = time.monotonic()
        deadline = started + n / o.ramp_rate * 2 + 30
        active = 0
        while time.monotonic() < deadline:
            assert self.server is not None and self.sipp is not None
            if not self.server.alive():
                res.problems.append("server died during the ramp")
                return False
            try:
                active = int(sample(self._snapshot().samples, STREAMS))
            except OSError as exc:
                res.problems.append(f"/metrics failed during the ramp: {exc}")
                return False
            if active >= n:
                res.ramp_s = round(time.monotonic() - started, 1)
                return True
            if self.sipp.poll() is not None:
                rc = self.sipp.returncode
                res.problems.append(f"sipp exited {rc} ({SIPP_EXIT.get(rc, 'unknown')}) with {active} of {n} streams")
                return False
            time.sleep(0.5)
        res.problems.append(f"only {active} of {n} streams after {time.monotonic() - started:.0f} s")
        return False

    def run(self) -> StepResult:
        o, n, res = self.opts, self.n, self.result
        res.loadavg = [round(x, 2) for x in os.getloadavg()]
        if o.receiver:
            self.receiver = RtpReceiver()
            rtp_port = self.receiver.port
        else:
            # a bound port nobody reads: packets fill its buffer and are dropped, no ICMP
            self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sink.bind((HOST, 0))
            rtp_port = int(self.sink.getsockname()[1])
        server = self._start_server()
        self._start_sipp(server, rtp_port)
        log(f"  {n:>5} streams: ramping at {o.ramp_rate}/s ...")
        if not self._wait_for_streams():
            self._finish_sipp()
            return res
        if self.receiver is not None:
            self.receiver.arm()
        time.sleep(o.settle)
        profiler = self._start_profiler()
        a = self._snapshot()
        if self.receiver is not None:
            self.receiver.begin()
        time.sleep(o.window)
        capture = self.receiver.end() if self.receiver is not None else None
        b = self._snapshot()
        self._finish_profiler(profiler)
        self._finish_sipp()
        self._evaluate(a, b)
        if capture is not None:
            rx = analyse_capture(capture)
            res.receiver = asdict(rx)
            if rx.streams < n:
                res.problems.append(f"receiver saw {rx.streams} of {n} streams")
        res.passed = not res.problems
        return res

    def _evaluate(self, a: MetricsSnapshot, b: MetricsSnapshot) -> None:
        o, n, res = self.opts, self.n, self.result
        dt = b.t - a.t
        res.window_s = round(dt, 2)
        res.active_start = int(sample(a.samples, STREAMS))
        res.active_end = int(sample(b.samples, STREAMS))
        res.calls_ended_in_window = int(sample(b.samples, CALLS_ENDED) - sample(a.samples, CALLS_ENDED))
        out = sample(b.samples, PACKETS, direction="out") - sample(a.samples, PACKETS, direction="out")
        res.packets_out_per_s = round(out / dt, 1)
        streams = (res.active_start + res.active_end) / 2 or n
        res.packets_per_stream_per_s = round(out / dt / streams, 2)
        res.rate_share = round(out / dt / (PACKETS_PER_STREAM * n), 4)
        bounds, counts = bucket_deltas(a.samples, b.samples, LATENESS)
        ticks = sum(counts)
        res.ticks_per_s = round(ticks / dt, 2)
        lat_sum = sample(b.samples, f"{LATENESS}_sum") - sample(a.samples, f"{LATENESS}_sum")
        if ticks:
            res.lateness_mean_ms = round(lat_sum / ticks * 1000, 3)
        p50 = histogram_quantile(0.5, bounds, counts)
        p99 = histogram_quantile(0.99, bounds, counts)
        res.lateness_p50_ms = None if p50 is None else round(p50 * 1000, 3)
        res.lateness_p99_ms = None if p99 is None else round(p99 * 1000, 3)
        above = sum(counts[i] for i in range(len(bounds), len(counts)))
        res.lateness_p99_beyond_buckets = bool(ticks) and above > 0.01 * ticks
        res.lateness_worst_bucket = highest_bucket(bounds, counts)
        labels = [f"<={b * 1000:g}ms" for b in bounds] + [f">{bounds[-1] * 1000:g}ms" if bounds else "+Inf"]
        res.lateness_buckets = {lab: int(c) for lab, c in zip(labels, counts, strict=True)}
        if a.loop_cpu is not None and b.loop_cpu is not None:
            res.server_loop_cpu = round((b.loop_cpu - a.loop_cpu) / dt, 3)
        if a.server_cpu is not None and b.server_cpu is not None:
            res.server_cpu = round((b.server_cpu - a.server_cpu) / dt, 3)
        if a.sipp_cpu is not None and b.sipp_cpu is not None:
            res.sipp_cpu = round((b.sipp_cpu - a.sipp_cpu) / dt, 3)
        res.bench_cpu = round((b.bench_cpu - a.bench_cpu) / dt, 3)
        # the verdict
        if min(res.active_start, res.active_end) < n:
            res.problems.append(f"streams active {res.active_start} -> {res.active_end}, not {n}")
        if res.calls_ended_in_window:
            res.problems.append(f"{res.calls_ended_in_window} calls ended in the window")
        if res.lateness_p99_ms is None:
            res.problems.append("no ticks observed")
        elif res.lateness_p99_ms > o.goal_ms:
            res.problems.append(f"tick lateness p99 {res.lateness_p99_ms:.2f} ms > {o.goal_ms:g} ms")
        if res.rate_share < o.min_rate_share:
            res.problems.append(f"sent {res.rate_share:.1%} of 50 x {n} packets/s (< {o.min_rate_share:.0%})")
        elif res.rate_share > 2 - o.min_rate_share:
            # more frames than the clock allows: late ticks catching up (the RTP clock runs fast)
            res.problems.append(f"sent {res.rate_share:.1%} of 50 x {n} packets/s (catch-up bursts)")

    def _finish_sipp(self) -> None:
        res = self.result
        alive = self.sipp is not None and self.sipp.poll() is None
        stop_process(self.sipp, grace=3)
        res.sipp["exited_early"] = not alive
        try:
            st = parse_stat_file(self.dir / "sipp-stat.csv")
        except (OSError, ValueError):
            return
        for key in ("OutgoingCall(C)", "SuccessfulCall(C)", "FailedCall(C)", "Retransmissions(C)"):
            res.sipp[key.removesuffix("(C)").lower()] = int(st.get(key, 0) or 0)
        if res.sipp.get("failedcall"):
            res.problems.append(f"{res.sipp['failedcall']} SIPp calls failed (see sipp-errors.log)")

    # -- profiling ---------------------------------------------------------------------
    def _start_profiler(self) -> subprocess.Popen[bytes] | None:
        o = self.opts
        if not o.profile or self.server is None or self.server.pid is None:
            return None
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        out = Path(o.profile) / f"mediabench-{self.n}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [pyspy, "record", "--pid", str(self.server.pid), "--duration", str(math.ceil(o.window)),
               "--rate", "200", "--nonblocking", "--format", "raw", "--output", str(out)]  # fmt: skip
        with (self.dir / "py-spy.log").open("wb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT)
        self.result.profile = {"file": str(out), "command": " ".join(cmd)}
        return proc

    def _finish_profiler(self, proc: subprocess.Popen[bytes] | None) -> None:
        if proc is None:
            return
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            stop_process(proc)
        assert self.result.profile is not None
        self.result.profile |= summarise_profile(Path(self.result.profile["file"]))


def summarise_profile(path: Path, top: int = 12) -> dict[str, Any]:
    """Self and inclusive sample shares by function, from py-spy's raw (collapsed-stack) output."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return {"error": str(exc)}
    self_n: Counter[str] = Counter()
    incl_n: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame_name(f) for f in stack.split(";")]
        self_n[frames[-1]] += n
        for f in set(frames):
            incl_n[f] += n
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "self": [[f, round(c / total, 4)] for f, c in self_n.most_common(top)],
        "inclusive": [[f, round(c / total, 4)] for f, c in incl_n.most_common(top * 2)],
    }


def _frame_name(frame: str) -> str:
    # "next_packet (ivr/media/stream.py:142)" -> "next_packet (ivr/media/stream.py)"
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


# --------------------------------------------------------------------------- report


def _f(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def render(steps: Sequence[StepResult], opts: MediaBenchOptions, summary: Mapping[str, Any]) -> str:
    head = ["streams", "active", "pkts/s", "per stream", "of 50N", "tick p50 ms", "tick p99 ms", "worst tick"]
    if opts.receiver:
        head += ["rx late p99 ms", "rx jitter p99 ms", "send/tick ms"]
    head += ["loop CPU", "result"]
    rows = []
    for r in steps:
        active = "-" if r.active_start is None else f"{min(r.active_start, r.active_end or 0)}"
        row = [
            str(r.streams),
            active,
            _f(r.packets_out_per_s, ".0f"),
            _f(r.packets_per_stream_per_s),
            "-" if r.rate_share is None else f"{r.rate_share:.1%}",
            _f(r.lateness_p50_ms),
            _f(r.lateness_p99_ms) + ("+" if r.lateness_p99_beyond_buckets else ""),
            r.lateness_worst_bucket or "-",
        ]
        if opts.receiver:
            rx = r.receiver or {}
            row += [_f(rx.get("late_p99_ms")), _f(rx.get("jitter_p99_ms")), _f(rx.get("burst_p50_ms"))]
        row += ["-" if r.server_loop_cpu is None else f"{r.server_loop_cpu:.0%}", "ok" if r.passed else "FAIL"]
        rows.append(row)
    out = table(head, rows)
    for r in steps:
        if r.problems:
            out.append(f"{r.streams} streams: {'; '.join(r.problems)}")
    out.append(
        "tick p50/p99: lateness of the server's shared 20 ms tick (one observation per tick) from "
        "frontdesk_rtp_pacing_lateness_seconds deltas over the window, interpolated linearly inside the "
        "histogram buckets (0.5/1/2/5/10/20/50/100 ms); '+' = p99 beyond the last bucket."
    )
    if opts.receiver:
        out.append(
            "rx: every packet read back with its kernel timestamp; late = arrival minus the stream's own best "
            "fit to its 20 ms grid, jitter = each stream's peak RFC 3550 jitter, "
            "send/tick = p50 first-to-last packet of a tick."
        )
    met = summary["max_streams_passed"]
    out.append(
        f"highest step passing (tick p99 <= {opts.goal_ms:g} ms, >= {opts.min_rate_share:.0%} of 50 pkt/s per "
        f"stream): {met or 'none'}  (goal >= {GOAL_STREAMS}: {'MET' if summary['met'] else 'NOT MET'})"
    )
    return "\n".join(out)


# --------------------------------------------------------------------------- entry point


def render_prompts(cache: Path) -> None:
    """Render the server's prompts (the demo flow's and the built-ins) into ``cache`` once.

    The same loader the server runs at start-up, on the same (default) IVR
    config, so every step's server finds them all cached and renders nothing.
    """
    from ivr.settings.config import parse_config
    from ivr.settings.prompts import load_prompts

    load_prompts(parse_config(json.dumps({"media": {"prompt_cache": str(cache)}})))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="frontdesk bench-media",
        description="RTP pacing with N concurrent IVR calls on one server process (one core): "
        "tick lateness p50/p99, packets sent per stream, and the receive side, SIPp as the callers.",
    )
    p.add_argument("--quick", action="store_true", help="short smoke run for CI (< 60 s): 100 streams, 10 s window")
    p.add_argument("--streams", help="comma list of concurrent calls per step (default 250,500,1000,1500; quick 100)")
    p.add_argument("--ramp-rate", type=int, help="calls/s while ramping up (default 100)")
    p.add_argument("--window", type=float, help="seconds measured at steady state (default 20; quick 10)")
    p.add_argument("--settle", type=float, help="seconds between the last call up and the window (default 5; quick 2)")
    p.add_argument("--goal-ms", type=float, default=GOAL_P99_MS, help="tick lateness p99 a step must hold (5)")
    p.add_argument("--min-rate-share", type=float, default=MIN_RATE_SHARE, help="of 50 x N packets/s (0.95)")
    p.add_argument("--no-receiver", action="store_true", help="do not read the RTP back (server-side figures only)")
    p.add_argument("--keep-going", action="store_true", help="run every step even after one fails")
    p.add_argument("--profile", metavar="DIR", help="py-spy the server during each window; raw stacks into DIR")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (SIPp files, server log)")
    p.add_argument("--check", action="store_true", help=f"exit 1 when no step of >= {GOAL_STREAMS} streams passes")
    p.add_argument("--sipp", default=shutil.which("sipp") or "/usr/bin/sipp", help="SIPp binary")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    quick = args.quick
    try:
        streams = [int(x) for x in args.streams.split(",") if x.strip()] if args.streams else None
    except ValueError:
        print("bench-media: --streams takes a comma list of integers", file=sys.stderr)
        return 2
    opts = MediaBenchOptions(
        sipp=args.sipp,
        streams=streams or ([100] if quick else list(DEFAULT_STREAMS)),
        ramp_rate=args.ramp_rate or 100,
        window=args.window or (10.0 if quick else 20.0),
        settle=args.settle if args.settle is not None else (2.0 if quick else 5.0),
        goal_ms=args.goal_ms,
        min_rate_share=args.min_rate_share,
        receiver=not args.no_receiver,
        keep_going=args.keep_going,
        profile=args.profile,
    )
    if not opts.streams or min(opts.streams) < 1 or opts.ramp_rate < 1 or opts.window <= 0 or opts.settle < 0:
        print("bench-media: need streams >= 1, --ramp-rate >= 1, --window > 0, --settle >= 0", file=sys.stderr)
        return 2
    if max(opts.streams) > (65534 - RTP_PORT_MIN) // 2 - 100:
        print(f"bench-media: at most {(65534 - RTP_PORT_MIN) // 2 - 100} streams (RTP ports)", file=sys.stderr)
        return 2
    if not (os.path.isfile(opts.sipp) and os.access(opts.sipp, os.X_OK)):
        print(f"bench-media: SIPp not found at {opts.sipp} (Debian package sip-tester)", file=sys.stderr)
        return 2
    longest = max(opts.streams) / opts.ramp_rate + opts.settle + opts.window + 5
    if longest > DEMO_CALL_SECONDS - 10:
        log(f"warning: ramp + settle + window of the largest step is {longest:.0f} s, close to the "
            f"~{DEMO_CALL_SECONDS:.0f} s a demo call lasts; raise --ramp-rate or shorten --window")  # fmt: skip

    began = time.time()
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="mediabench-"))
    steps: list[StepResult] = []
    try:
        with sigterm_unwinds():
            cache = workdir / "prompts"
            t = time.monotonic()
            render_prompts(cache)
            log(f"prompts rendered into {cache} in {time.monotonic() - t:.1f} s")
            log(f"stepping concurrent calls {opts.streams}: ramp {opts.ramp_rate}/s, settle {opts.settle:g} s, "
                f"window {opts.window:g} s")  # fmt: skip
            for n in opts.streams:
                step = MediaStep(opts, n, workdir, cache)
                try:
                    res = step.run()
                except (OSError, RuntimeError) as exc:
                    res = step.result
                    res.problems.append(f"{type(exc).__name__}: {exc}")
                finally:
                    step.stop()
                steps.append(res)
                log(f"  {n:>5} streams: {_brief(res)}")
                if not res.passed and not opts.keep_going:
                    break
    finally:
        if args.keep:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    passed = [r.streams for r in steps if r.passed]
    best = max(passed) if passed else None
    summary: dict[str, Any] = {
        "max_streams_passed": best,
        "goal_streams": GOAL_STREAMS,
        "goal_p99_ms": opts.goal_ms,
        "met": best is not None and best >= GOAL_STREAMS,
        "stopped_at": next((r.streams for r in steps if not r.passed), None),
    }
    print()
    print(render(steps, opts, summary))
    report = {
        "benchmark": "frontdesk bench-media",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(began)),
        "duration_s": round(time.time() - began, 1),
        "options": asdict(opts) | {"quick": quick},
        "scenario": "SIPp sim/scenarios/media_uac.xml (INVITE with PCMU/PCMA/101 SDP, ACK, hold) over UDP on "
        "127.0.0.1; server: demo IVR flow, one process, media timeout off",
        "method": {
            "tick_lateness": "delta of frontdesk_rtp_pacing_lateness_seconds between two /metrics scrapes; "
            "one observation per shared 20 ms tick; quantiles interpolated linearly within buckets",
            "packets_out": "delta of frontdesk_rtp_packets_total{direction='out'} / window",
            "cpu": "utime+stime from /proc over the window, share of one core (loop = the server's main thread)",
            "receiver": "all calls' SDP name one UDP port read by this benchmark with SO_TIMESTAMPNS",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "python": sys.version.split()[0],
            "frontdesk_event_loop": event_loop_name(),
            "sipp": sipp_version(opts.sipp),
        },
        "steps": [asdict(r) for r in steps],
        **summary,
    }
    if args.json:
        write_json(args.json, report)
        print(f"results written to {args.json}")
    print(f"total time {report['duration_s']:.0f} s; load average before/after "
          f"{load_before[0]:.2f}/{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")  # fmt: skip
    if args.check and not summary["met"]:
        return 1
    return 0


def _brief(r: StepResult) -> str:
    text = (
        f"p50 {_f(r.lateness_p50_ms)} / p99 {_f(r.lateness_p99_ms)} ms, "
        f"{_f(r.packets_per_stream_per_s)} pkt/s per stream, loop CPU {_f(r.server_loop_cpu, '.0%')}"
    )
    if r.receiver:
        text += f", rx late p99 {_f(r.receiver.get('late_p99_ms'))} ms"
    return text + (" ok" if r.passed else f" FAIL ({'; '.join(r.problems)})")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
