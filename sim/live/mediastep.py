"""One step of the media benchmark: a fresh server, SIPp holding N calls, one measured window, its verdict.

See sim/live/mediabench.py for what is measured and when a step passes; the
readings come from sim/live/readings.py and the receive side from
sim/live/rtprx.py.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sim.benchkit import log
from sim.live.promtext import parse_metrics, sample
from sim.live.readings import (
    MetricsSnapshot,
    bucket_deltas,
    cpu_seconds,
    highest_bucket,
    histogram_quantile,
    summarise_profile,
)
from sim.live.rtprx import RtpReceiver, analyse_capture
from sim.live.sipprun import SIPP_EXIT, parse_stat_file
from sim.live.targets import HOST, Frontdesk, free_port, stop_process

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "media_uac.xml"
PACKETS_PER_STREAM = 50.0  # 20 ms frames
RTP_PORT_MIN = 20000  # the server's default RTP range is 20000-30000: 5,000 streams

LATENESS = "frontdesk_rtp_pacing_lateness_seconds"
PACKETS = "frontdesk_rtp_packets_total"
STREAMS = "frontdesk_media_streams_active"
CALLS_ENDED = "frontdesk_calls_ended_total"


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
    machine_cpu: float | None = None  # every core's busy time over the window, in cores (2.0: a 2-core machine full)
    other_cpu: float | None = None  # of machine_cpu, what the server, SIPp and this benchmark did not use
    send_path: str | None = None  # how the server sent RTP: "batched" (its rtp-send thread runs) or "sendto"
    receiver: dict[str, Any] | None = None
    sipp: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] | None = None
    loadavg: list[float] = field(default_factory=list)


def thread_names(pid: int | None) -> set[str]:
    """The names of a process's threads (/proc/PID/task/*/comm)."""
    names: set[str] = set()
    if pid is None:
        return names
    for comm in Path(f"/proc/{pid}/task").glob("*/comm"):
        try:
            names.add(comm.read_text().strip())
        except OSError:
            continue  # a thread that ended meanwhile
    return names


def machine_busy_seconds() -> float | None:
    """CPU seconds every core has been busy since boot (/proc/stat; interrupts and steal included), or None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


SENDER_THREAD = "rtp-send"  # the server's batch sender thread (ivr/transport/rtpsend.c), there when it is used


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
        busy_a = machine_busy_seconds()
        if self.receiver is not None:
            self.receiver.begin()
        time.sleep(o.window)
        capture = self.receiver.end() if self.receiver is not None else None
        b = self._snapshot()
        busy_b = machine_busy_seconds()
        self._finish_profiler(profiler)
        self._finish_sipp()
        self._evaluate(a, b)
        res.send_path = "batched" if SENDER_THREAD in thread_names(server.pid) else "sendto"
        if busy_a is not None and busy_b is not None and res.window_s:
            res.machine_cpu = round((busy_b - busy_a) / res.window_s, 3)
            ours = (res.server_cpu or 0.0) + (res.sipp_cpu or 0.0) + (res.bench_cpu or 0.0)
            res.other_cpu = round(max(0.0, res.machine_cpu - ours), 3)
        if capture is not None:
            rx = analyse_capture(capture)
            res.receiver = asdict(rx)
            if rx.streams < n:
                res.problems.append(f"receiver saw {rx.streams} of {n} streams")
            if rx.late_p99_ms is not None and rx.late_p99_ms > o.goal_ms:
                res.problems.append(f"receiver lateness p99 {rx.late_p99_ms:.2f} ms > {o.goal_ms:g} ms")
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
