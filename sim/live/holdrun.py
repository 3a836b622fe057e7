"""One run of the overload benchmark: a server, its line grown step by step by SIPp holders, each step's windows.

See sim/live/holdbench.py for what is measured and how the goal is judged;
the readings come from sim/live/readings.py, the new calls' SIPp run from
sim/live/sipprun.py.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.benchkit import log, shown
from sim.live.mediastep import (
    LATENESS,
    PACKETS,
    RTP_PORT_MIN,
    SCENARIO,
    SENDER_THREAD,
    STREAMS,
    machine_busy_seconds,
    thread_names,
)
from sim.live.promtext import parse_metrics, sample
from sim.live.readings import (
    MetricsSnapshot,
    bucket_deltas,
    cpu_seconds,
    highest_bucket,
    histogram_quantile,
    summarise_profile,
)
from sim.live.sipprun import SIPP_EXIT, Run, parse_stat_file, run_uac
from sim.live.targets import HOST, Frontdesk, free_port, stop_process

QUEUE = "general"
WAITING = "frontdesk_queue_waiting_calls"
OFFERED = "frontdesk_queue_calls_offered_total"
ANSWER_LATENCY = "frontdesk_sip_answer_latency_seconds"
MAX_LENGTH = (65534 - RTP_PORT_MIN) // 2 - 1000  # RTP ports for the holders and the new calls


@dataclass
class HoldBenchOptions:
    sipp: str
    lengths: list[int]
    rate: int
    window: float
    quiet: float
    settle: float
    ramp_rate: int
    goal_ms: float
    goal_length: int
    announce_every: float = 10.0
    profile: str | None = None  # py-spy the server over each step's windows; raw stacks into this folder
    loop_lag: str | None = None  # run the server under tools/loop_lag.py, its samples written here


@dataclass
class HoldStep:
    line: int  # callers asked to hold in line
    problems: list[str] = field(default_factory=list)
    ramp_s: float | None = None
    waiting_before: int | None = None  # the server's queue gauge as the new calls began
    waiting_after: int | None = None
    streams_before: int | None = None
    offered_in_window: int | None = None  # callers who joined the queue in the loaded window
    quiet_tick_p99_ms: float | None = None
    quiet_server_cpu: float | None = None
    quiet_packets_per_s: float | None = None  # RTP packets the server sent per second with the line held
    quiet_us_per_packet: float | None = None  # the server's quiet CPU per packet sent: what holding costs
    rate: int = 0
    achieved: float | None = None  # new calls completed per second
    new_calls: int = 0
    failed: int = 0
    retransmissions: int = 0
    p50_ms: float | None = None  # INVITE -> 200 OK as SIPp measured it
    p99_ms: float | None = None
    server_answer_p99_ms: float | None = None
    tick_p50_ms: float | None = None
    tick_p99_ms: float | None = None
    tick_worst: str | None = None
    server_cpu: float | None = None  # the whole server process, share of one core
    loop_cpu: float | None = None  # the server's event-loop thread
    sipp_cpu: float | None = None  # the holders' SIPp
    cpu_per_call_ms: float | None = None  # (loaded - quiet CPU) per new call answered
    machine_cpu: float | None = None  # every core's busy time in the loaded window, in cores (everything running)
    send_path: str | None = None  # how the server sent RTP: "batched" (its rtp-send thread ran) or "sendto"
    window_s: float | None = None
    loadavg: list[float] = field(default_factory=list)
    profile: dict[str, Any] | None = None


def hold_config(workdir: Path, prompt_cache: Path, longest: int, announce_every: float) -> dict[str, Any]:
    """The server's settings laid over the benchmark's own (sim/live/targets.py)."""
    return {
        "ivr": {
            "flows": {"hold": {"start": "line", "nodes": {"line": {"type": "queue", "queue": QUEUE}}}},
            "default_flow": "hold",
        },
        "queues": {QUEUE: {"max_length": 10 * longest + 10000, "max_wait": 86400.0, "announce_every": announce_every}},
        "surge": {"auto": False},  # no agents: an automatic switch would shave the line (R8)
        "media": {
            "timeout": 0,  # SIPp sends no RTP: no media timeout
            "prompt_cache": str(prompt_cache),
            "recordings_dir": str(workdir / "recordings"),
            "rtp_port_min": RTP_PORT_MIN,
            "rtp_port_max": 65534,
        },
        "sip": {"max_calls": max(20000, 4 * longest)},
    }


# --------------------------------------------------------------------------- one run


class HoldRun:
    """One server; the line grown step by step by SIPp holders; each step's quiet and loaded windows."""

    def __init__(self, opts: HoldBenchOptions, workdir: Path, config: Mapping[str, Any]) -> None:
        self.opts = opts
        self.workdir = workdir
        self.server = Frontdesk(
            workdir,
            hold_time=86400.0,
            config=config,
            nofile=2 * max(opts.lengths) + 4096,
            loop_lag=Path(opts.loop_lag) if opts.loop_lag else None,
        )
        self.holders: list[subprocess.Popen[bytes]] = []
        self.holder_stats: list[Path] = []  # each holders' SIPp's -trace_stat file
        self.held = 0  # holders started so far
        self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # where the holders' RTP goes, unread
        self.sink.bind((HOST, 0))
        self.hold_ms = int(self._longest_run_s() * 1000)

    def _longest_run_s(self) -> float:
        o = self.opts
        per_step = o.settle + o.quiet + o.window + 30
        return max(o.lengths) / o.ramp_rate * 2 + len(o.lengths) * per_step + 120

    def stop(self) -> None:
        for proc in self.holders:
            stop_process(proc, grace=3)
        self.server.stop()
        self.sink.close()

    # -- measuring ------------------------------------------------------------------
    def snapshot(self) -> MetricsSnapshot:
        t0 = time.monotonic()
        text = self.server.http_get("/metrics", timeout=10).decode()
        t = (t0 + time.monotonic()) / 2
        pid = self.server.pid
        holder = self.holders[-1].pid if self.holders and self.holders[-1].poll() is None else None
        own = os.times()
        return MetricsSnapshot(
            t, parse_metrics(text), cpu_seconds(pid, pid), cpu_seconds(pid), cpu_seconds(holder), own.user + own.system
        )

    def _add_holders(self, n: int) -> None:
        o = self.opts
        rundir = self.workdir / f"holders-{self.held + n}"
        rundir.mkdir(parents=True, exist_ok=True)
        rtp_port = int(self.sink.getsockname()[1])
        cmd = [
            o.sipp,
            f"{HOST}:{self.server.port}",
            "-sf", str(SCENARIO),
            "-i", HOST,
            "-p", str(free_port()),
            "-mp", str(free_port()),
            "-key", "rtp_ip", HOST,
            "-key", "rtp_port", str(rtp_port),
            "-r", str(o.ramp_rate),
            "-l", str(n),
            "-m", str(n),
            "-recv_timeout", str(self.hold_ms),  # the hold: then the caller sends BYE
            "-timeout", f"{self.hold_ms // 1000 + 30}s",
            "-nostdin",
            "-trace_stat", "-stf", str(rundir / "sipp-stat.csv"), "-fd", "1",
            "-trace_err", "-error_file", str(rundir / "sipp-errors.log"),
        ]  # fmt: skip
        with (rundir / "sipp-stderr.log").open("wb") as err:
            proc = subprocess.Popen(cmd, cwd=rundir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        self.holders.append(proc)
        self.holder_stats.append(rundir / "sipp-stat.csv")
        self.held += n

    def _wait_for_line(self, step: HoldStep) -> bool:
        """Until the server's gauge shows ``step.line`` callers in line; False (reason noted) otherwise."""
        o = self.opts
        started = time.monotonic()
        deadline = started + step.line / o.ramp_rate * 2 + 30
        waiting = 0
        while time.monotonic() < deadline:
            if not self.server.alive():
                step.problems.append("server died while the line filled")
                return False
            try:
                waiting = int(sample(self.snapshot().samples, WAITING, queue=QUEUE))
            except OSError as exc:
                step.problems.append(f"/metrics failed while the line filled: {exc}")
                return False
            if waiting >= step.line:
                step.ramp_s = round(time.monotonic() - started, 1)
                return True
            dead = [p for p in self.holders if p.poll() is not None]
            if dead:
                rc = dead[0].returncode
                step.problems.append(f"holders' sipp exited {rc} ({SIPP_EXIT.get(rc, 'unknown')}) at {waiting} in line")
                return False
            time.sleep(0.5)
        step.problems.append(f"only {waiting} of {step.line} callers in line after {time.monotonic() - started:.0f} s")
        return False

    def step(self, line: int) -> HoldStep:
        o = self.opts
        res = HoldStep(line=line, rate=o.rate, loadavg=[round(x, 2) for x in os.getloadavg()])
        if line > self.held:
            self._add_holders(line - self.held)
            log(f"  {line:>5} in line: ramping at {o.ramp_rate}/s ...")
        if not self._wait_for_line(res):
            return res
        time.sleep(o.settle)
        profiler = self._start_profiler(line)
        a = self.snapshot()
        time.sleep(o.quiet)
        b = self.snapshot()
        c = self.snapshot()
        busy_c = machine_busy_seconds()
        run = run_uac(o.sipp, self.server, o.rate, o.window, self.workdir, rtt=True)
        d = self.snapshot()
        busy_d = machine_busy_seconds()
        res.profile = self._finish_profiler(profiler)
        evaluate(res, a, b, c, d, run, o)
        if busy_c is not None and busy_d is not None and d.t > c.t:
            res.machine_cpu = round((busy_d - busy_c) / (d.t - c.t), 3)
        res.send_path = "batched" if SENDER_THREAD in thread_names(self.server.pid) else "sendto"
        return res

    def _start_profiler(self, line: int) -> tuple[subprocess.Popen[bytes], Path] | None:
        o, pid = self.opts, self.server.pid
        if not o.profile or pid is None:
            return None
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        out = Path(o.profile) / f"holdbench-{line}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        seconds = math.ceil(o.quiet + o.window + 2)
        cmd = [pyspy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
               "--nonblocking", "--format", "raw", "--output", str(out)]  # fmt: skip
        with (self.workdir / "py-spy.log").open("ab") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT)
        return proc, out

    @staticmethod
    def _finish_profiler(started: tuple[subprocess.Popen[bytes], Path] | None) -> dict[str, Any] | None:
        if started is None:
            return None
        proc, out = started
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            stop_process(proc)
        return {"file": str(out)} | summarise_profile(out)

    def run(self) -> list[HoldStep]:
        self.server.start()
        steps: list[HoldStep] = []
        for line in self.opts.lengths:
            try:
                res = self.step(line)
            except (OSError, RuntimeError) as exc:
                res = HoldStep(line=line, rate=self.opts.rate, problems=[f"{type(exc).__name__}: {exc}"])
            steps.append(res)
            log(f"  {line:>5} in line: {brief(res)}")
            if not self.server.alive() or (res.problems and res.waiting_before is None):
                break  # the line could not be built: longer steps would not be either
        self._check_holders(steps)
        return steps

    def _check_holders(self, steps: Sequence[HoldStep]) -> None:
        """A holder whose call failed before the end is a broken step (the line shrank under it)."""
        failed = 0
        for stat in self.holder_stats:
            try:
                failed += int(parse_stat_file(stat).get("FailedCall(C)", 0) or 0)
            except (OSError, ValueError):
                continue
        if failed and steps:
            steps[-1].problems.append(f"{failed} holding callers' calls failed (see holders-*/sipp-errors.log)")


def _delta_quantiles(a: MetricsSnapshot, b: MetricsSnapshot, name: str) -> tuple[float | None, float | None, str]:
    """p50, p99 (ms) and the worst bucket of histogram ``name`` between two scrapes."""
    bounds, counts = bucket_deltas(a.samples, b.samples, name)
    p50 = histogram_quantile(0.5, bounds, counts)
    p99 = histogram_quantile(0.99, bounds, counts)
    ms = [None if p is None else round(p * 1000, 3) for p in (p50, p99)]
    return ms[0], ms[1], highest_bucket(bounds, counts)


def _rate(a: MetricsSnapshot, b: MetricsSnapshot, attr: str) -> float | None:
    x, y = getattr(a, attr), getattr(b, attr)
    return None if x is None or y is None or b.t <= a.t else round((y - x) / (b.t - a.t), 3)


def evaluate(
    res: HoldStep,
    a: MetricsSnapshot,
    b: MetricsSnapshot,
    c: MetricsSnapshot,
    d: MetricsSnapshot,
    run: Run,
    opts: HoldBenchOptions,
) -> None:
    """Fill ``res`` from the quiet window (a -> b), the loaded one (c -> d) and SIPp's run."""
    _, res.quiet_tick_p99_ms, _ = _delta_quantiles(a, b, LATENESS)
    res.quiet_server_cpu = _rate(a, b, "server_cpu")
    sent = sample(b.samples, PACKETS, direction="out") - sample(a.samples, PACKETS, direction="out")
    res.quiet_packets_per_s = round(sent / (b.t - a.t), 1)
    if res.quiet_server_cpu is not None and sent > 0:
        res.quiet_us_per_packet = round(res.quiet_server_cpu / res.quiet_packets_per_s * 1e6, 2)
    res.waiting_before = int(sample(c.samples, WAITING, queue=QUEUE))
    res.waiting_after = int(sample(d.samples, WAITING, queue=QUEUE))
    res.streams_before = int(sample(c.samples, STREAMS))
    res.offered_in_window = int(sample(d.samples, OFFERED, queue=QUEUE) - sample(c.samples, OFFERED, queue=QUEUE))
    res.window_s = round(d.t - c.t, 2)
    res.tick_p50_ms, res.tick_p99_ms, res.tick_worst = _delta_quantiles(c, d, LATENESS)
    _, res.server_answer_p99_ms, _ = _delta_quantiles(c, d, ANSWER_LATENCY)
    res.server_cpu = _rate(c, d, "server_cpu")
    res.loop_cpu = _rate(c, d, "loop_cpu")
    res.sipp_cpu = _rate(c, d, "sipp_cpu")
    res.new_calls, res.failed, res.retransmissions = run.successful, run.failed, run.retransmissions
    res.achieved = round(run.achieved, 1)
    res.p50_ms, res.p99_ms = run.p50_ms, run.p99_ms
    if res.server_cpu is not None and res.quiet_server_cpu is not None and run.successful:
        extra = (res.server_cpu - res.quiet_server_cpu) * (d.t - c.t)
        res.cpu_per_call_ms = round(max(0.0, extra) / run.successful * 1000, 3)
    res.problems += run.problems
    if min(res.waiting_before, res.waiting_after) < res.line:
        res.problems.append(f"callers in line {res.waiting_before} -> {res.waiting_after}, not {res.line}")
    if res.offered_in_window < run.successful:
        res.problems.append(f"only {res.offered_in_window} of {run.successful} new calls joined the line")


def brief(s: HoldStep) -> str:
    text = (
        f"new calls {shown(s.achieved, '.0f')}/s p50 {shown(s.p50_ms, '.0f')} / p99 {shown(s.p99_ms, '.0f')} ms, "
        f"tick p99 {shown(s.tick_p99_ms, '.2f')} ms (quiet {shown(s.quiet_tick_p99_ms, '.2f')}), "
        f"server CPU {shown(s.server_cpu, '.0%')}"
    )
    return text + (" ok" if not s.problems else f" FAIL ({'; '.join(s.problems)})")
