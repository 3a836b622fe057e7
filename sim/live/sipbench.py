"""SIP answering benchmark: SIPp UAC against SIPp's own UAS and against frontdesk.

``frontdesk bench-sip [options]`` (or ``python -m sim.live.sipbench``) does, in
one run and for each target:

1. steps the offered call rate up on a geometric ladder (``--start-rate``,
   doubling up to ``--max-rate``), then bisects between the last clean and
   the first dirty rate until the gap is within ``--precision``;
2. calls a step *clean* when its median run (of ``--repeat`` runs) had no
   failed call, no retransmission, every call completed, SIPp exited 0 and
   SIPp actually offered at least 90% of the requested rate;
3. at 80% of the highest clean rate, runs again with ``-trace_rtt`` and
   reports p50/p99 INVITE -> 200 OK response times (SIPp's RTD, whole ms).

Every call is the stock ``-sn uac`` scenario with ``-d 0`` (INVITE, 180,
200, ACK, BYE, 200) over UDP on 127.0.0.1. The reported rate is the rate
SIPp achieved (successful calls / elapsed), not the one asked for. The
target is restarted after a dirty run so that one overload does not leak
into the next step. Every process started here is stopped on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"

RATIO_GOAL = 0.3  # frontdesk max clean rate / SIPp UAS max clean rate
P99_GOAL_MS = 20.0  # frontdesk p99 INVITE -> 200 OK at 80% of its max clean rate
LATENCY_LOAD = 0.8
MIN_RATE_SHARE = 0.9  # a run that offered less than this share of the asked rate is not clean

# SIPp exit codes (sipp -h)
SIPP_EXIT = {
    0: "all calls successful",
    1: "some calls failed",
    97: "exit on internal command",
    99: "normal exit without calls processed",
    255: "fatal error",
    254: "fatal error binding a socket",
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- ports and processes


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((HOST, 0))
            port = int(t.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((HOST, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def udp_port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        try:
            u.bind((HOST, port))
        except OSError:
            return True
    return False


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    """Terminate, then kill: the process is gone when this returns."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class Target(Protocol):
    name: str
    port: int

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def alive(self) -> bool: ...

    @property
    def pid(self) -> int | None: ...


class SippUas:
    """SIPp's built-in UAS (``-sn uas``): the reference answering machine."""

    name = "sipp-uas"

    def __init__(self, sipp: str, workdir: Path) -> None:
        self.sipp = sipp
        self.workdir = workdir / "sipp-uas"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        for _attempt in range(3):
            self.port = free_port()
            err = (self.workdir / "stderr.log").open("ab")
            self.proc = subprocess.Popen(
                [self.sipp, "-sn", "uas", "-i", HOST, "-p", str(self.port), "-nostdin"],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
            err.close()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                if udp_port_taken(self.port):
                    time.sleep(0.2)  # bound; give it a moment to enter its loop
                    return
                time.sleep(0.05)
            stop_process(self.proc)  # lost a race for the port, or did not come up
        raise RuntimeError(f"SIPp UAS did not start; see {self.workdir / 'stderr.log'}")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def merge_config(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` laid over it, section by section (nested mappings merged)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = value
    return out


def raise_nofile(wanted: int) -> Callable[[], None]:
    """A ``preexec_fn`` that lifts the child's soft open-files limit to ``wanted`` (capped at the hard limit)."""

    def preexec() -> None:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))

    return preexec


class Frontdesk:
    """``frontdesk serve`` in a subprocess with a throw-away config and database.

    ``config`` is laid over the benchmark's own settings (ports, database,
    log level); ``nofile`` lifts the server's open-files soft limit.
    """

    name = "frontdesk"

    def __init__(
        self,
        workdir: Path,
        hold_time: float = 3600.0,
        *,
        config: Mapping[str, Any] | None = None,
        nofile: int | None = None,
    ) -> None:
        self.workdir = workdir / "frontdesk"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.hold_time = hold_time
        self.extra_config = dict(config or {})
        self.nofile = nofile
        self.port = 0
        self.http_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def http_get(self, path: str, timeout: float = 2.0) -> bytes:
        with urllib.request.urlopen(f"http://{HOST}:{self.http_port}{path}", timeout=timeout) as r:
            return bytes(r.read())

    def healthz(self) -> dict[str, Any]:
        return dict(json.loads(self.http_get("/healthz")))

    def start(self) -> None:
        self.starts += 1
        self.port, self.http_port = free_port(), free_port()
        db = self.workdir / f"bench-{self.starts}.db"
        config = {
            "sip": {"listen": HOST, "port": self.port, "hold_time": self.hold_time},
            "http": {"listen": HOST, "port": self.http_port},
            "storage": {"url": f"sqlite+aiosqlite:///{db}"},
            "log_level": "warning",
        }
        config = merge_config(config, self.extra_config)
        cfg = self.workdir / "frontdesk.json"  # JSON is YAML
        cfg.write_text(json.dumps(config))
        out = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ivr.cli", "serve", "--config", str(cfg)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=raise_nofile(self.nofile) if self.nofile else None,
        )
        out.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"frontdesk exited with {self.proc.returncode}; see {self.log_path}")
            try:
                self.healthz()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"frontdesk did not come up in 30 s; see {self.log_path}")

    def stop(self) -> None:
        stop_process(self.proc, grace=10)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


# --------------------------------------------------------------------------- one SIPp UAC run


@dataclass
class Run:
    requested: int
    calls: int
    rc: int | None
    successful: int = 0
    failed: int = 0
    retransmissions: int = 0
    created: int = 0
    elapsed_s: float = 0.0
    achieved: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    rtt_samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    def sort_key(self) -> tuple[bool, int, float]:
        return (not self.clean, self.failed + self.retransmissions + (self.calls - self.successful), -self.achieved)

    def brief(self) -> str:
        text = f"{self.achieved:.0f}/s"
        if self.p99_ms is not None:
            text += f" p50={self.p50_ms:.0f} p99={self.p99_ms:.0f}ms"
        return text + (" ok" if self.clean else f" DIRTY({'; '.join(self.problems)})")


def parse_stat_file(path: Path) -> dict[str, str]:
    """Header and last line of SIPp's ``-trace_stat`` CSV, as a dict."""
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    if len(lines) < 2:
        raise ValueError(f"{path}: no statistics line")
    header = lines[0].rstrip(";").split(";")
    last = lines[-1].rstrip(";").split(";")
    return dict(zip(header, last, strict=False))


def _epoch(value: str) -> float:
    # "2026-11-22\t07:59:08.474190\t1795334348.474190": the last field is epoch seconds
    return float(value.split("\t")[-1])


def parse_rtt_file(path: Path, rtd: str = "1") -> list[float]:
    """Response times (ms) of one RTD from SIPp's ``-trace_rtt`` CSV."""
    values: list[float] = []
    for line in path.read_text(errors="replace").splitlines()[1:]:
        parts = line.strip().split(";")
        if len(parts) >= 3 and parts[2] == rtd:
            with contextlib.suppress(ValueError):
                values.append(float(parts[1]))
    return values


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    k = max(0, math.ceil(p / 100 * len(ordered)) - 1)
    return ordered[min(k, len(ordered) - 1)]


def run_uac(
    sipp: str,
    target: Target,
    rate: int,
    seconds: float,
    workdir: Path,
    *,
    rtt: bool = False,
    grace: float = 5.0,
) -> Run:
    """One SIPp UAC run at ``rate`` calls/s for ``seconds`` against ``target``."""
    calls = max(1, round(rate * seconds))
    run = Run(requested=rate, calls=calls, rc=None)
    timeout = math.ceil(seconds + grace)
    for _attempt in range(3):
        rundir = Path(tempfile.mkdtemp(prefix=f"uac-{target.name}-{rate}-", dir=workdir))
        stat = rundir / "stat.csv"
        cmd = [
            sipp,
            f"{HOST}:{target.port}",
            "-sn", "uac",
            "-i", HOST,
            "-p", str(free_port()),
            "-nostdin",
            "-r", str(rate),
            "-m", str(calls),
            "-l", str(calls),  # no concurrency cap: keep the load open-loop
            "-d", "0",
            "-timeout", f"{timeout}s",
            "-timeout_error",
            "-trace_stat", "-stf", str(stat), "-fd", "1",
        ]  # fmt: skip
        if rtt:
            cmd += ["-trace_rtt", "-rtt_freq", "1"]
        with (rundir / "stderr.log").open("wb") as err:
            proc = subprocess.Popen(cmd, cwd=rundir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
            try:
                run.rc = proc.wait(timeout + 15)
            except subprocess.TimeoutExpired:
                run.problems.append("sipp hung past its own -timeout")
            finally:
                stop_process(proc, grace=2)
        if run.rc == 254:  # lost the local port to someone else: try another
            continue
        break
    if run.rc is not None and run.rc != 0:
        run.problems.append(f"sipp exit {run.rc} ({SIPP_EXIT.get(run.rc, 'unknown')})")
    try:
        st = parse_stat_file(stat)
    except (OSError, ValueError) as exc:
        run.problems.append(f"no statistics: {exc}")
        return run
    run.successful = int(st.get("SuccessfulCall(C)", 0))
    run.failed = int(st.get("FailedCall(C)", 0))
    run.retransmissions = int(st.get("Retransmissions(C)", 0))
    run.created = int(st.get("OutgoingCall(C)", 0))
    try:
        run.elapsed_s = _epoch(st["CurrentTime"]) - _epoch(st["StartTime"])
    except (KeyError, ValueError):
        run.elapsed_s = 0.0
    if run.elapsed_s > 0:
        run.achieved = run.successful / run.elapsed_s
    if run.failed:
        run.problems.append(f"{run.failed} failed")
    if run.retransmissions:
        run.problems.append(f"{run.retransmissions} retransmissions")
    if run.successful < calls:
        run.problems.append(f"{calls - run.successful} of {calls} calls not completed")
    elif run.achieved < MIN_RATE_SHARE * rate:
        run.problems.append(f"offered only {run.achieved:.0f} of {rate}/s")
    if rtt:
        files = glob.glob(str(rundir / "*_rtt.csv"))
        samples = parse_rtt_file(Path(files[0])) if files else []
        run.rtt_samples = len(samples)
        if samples:
            run.p50_ms = percentile(samples, 50)
            run.p99_ms = percentile(samples, 99)
        else:
            run.problems.append("no response times traced")
    if not target.alive():
        run.problems.append("target died")
    return run


# --------------------------------------------------------------------------- steps and search


@dataclass
class SipStep:
    requested: int
    runs: list[Run]

    @property
    def median(self) -> Run:
        """The median run by (clean, trouble, achieved rate); ties go to the worse side."""
        ordered = sorted(self.runs, key=Run.sort_key)
        return ordered[len(ordered) // 2]

    @property
    def clean(self) -> bool:
        return self.median.clean


@dataclass
class SipBenchOptions:
    sipp: str
    start_rate: int
    max_rate: int
    factor: float
    precision: float
    step_seconds: float
    repeat: int
    grace: float
    settle: float


class Bench:
    def __init__(self, opts: SipBenchOptions, target: Target, workdir: Path) -> None:
        self.opts = opts
        self.target = target
        self.workdir = workdir
        self.steps: list[SipStep] = []
        self.restarts = 0

    def _restart(self) -> None:
        self.target.stop()
        self.target.start()
        self.restarts += 1

    def _run(self, rate: int, *, rtt: bool = False) -> Run:
        if not self.target.alive():
            self._restart()
        run = run_uac(
            self.opts.sipp, self.target, rate, self.opts.step_seconds, self.workdir, rtt=rtt, grace=self.opts.grace
        )
        if not run.clean:
            # overload leaves half-done transactions behind: start the next run on a fresh target
            self._restart()
        else:
            time.sleep(self.opts.settle)
        return run

    def step(self, rate: int, *, rtt: bool = False) -> SipStep:
        runs: list[Run] = []
        need = self.opts.repeat // 2 + 1
        for _ in range(self.opts.repeat):
            runs.append(self._run(rate, rtt=rtt))
            if not rtt and sum(not r.clean for r in runs) >= need:
                break  # the median is dirty whatever the remaining runs do
        step = SipStep(rate, runs)
        verdict = "clean" if step.clean else "DIRTY"
        log(f"  {self.target.name:>9} {rate:>6}/s: {verdict:5}  [{' | '.join(r.brief() for r in runs)}]")
        return step

    def search(self) -> SipStep | None:
        """Highest clean step: geometric ladder, then bisection."""
        o = self.opts
        best: SipStep | None = None
        lo, hi = 0, None
        rate = o.start_rate
        while True:
            s = self.step(rate)
            self.steps.append(s)
            if not s.clean:
                hi = rate
                break
            best, lo = s, rate
            if rate >= o.max_rate:
                break
            rate = min(o.max_rate, max(rate + 1, round(rate * o.factor)))
        if hi is None:
            return best
        while hi - lo > max(1.0, o.precision * max(lo, 1)):
            mid = (lo + hi) // 2
            if mid in (lo, hi):
                break
            s = self.step(mid)
            self.steps.append(s)
            if s.clean:
                best, lo = s, mid
            else:
                hi = mid
        return best


@dataclass
class TargetResult:
    name: str
    max_clean_rate: float  # achieved calls/s of the median run at the highest clean step
    max_clean_requested: int
    limit: str  # what stopped the ladder
    first_dirty_requested: int | None
    latency_requested: int | None = None
    latency_achieved: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    rtt_samples: int = 0
    latency_clean: bool | None = None
    target_restarts: int = 0
    steps: list[dict[str, Any]] = field(default_factory=list)
    latency_runs: list[dict[str, Any]] = field(default_factory=list)


def measure(opts: SipBenchOptions, target: Target, workdir: Path) -> TargetResult:
    log(f"{target.name}: stepping the call rate up ({opts.start_rate}..{opts.max_rate}/s, "
        f"{opts.step_seconds:g} s per run, {opts.repeat} run(s) per step)")  # fmt: skip
    bench = Bench(opts, target, workdir)
    target.start()
    best = bench.search()
    dirty = sorted(s.requested for s in bench.steps if not s.clean)
    first_dirty = dirty[0] if dirty else None
    res = TargetResult(
        name=target.name,
        max_clean_rate=round(best.median.achieved, 1) if best else 0.0,
        max_clean_requested=best.requested if best else 0,
        limit="failures or retransmissions" if first_dirty else "max rate reached (raise --max-rate)",
        first_dirty_requested=first_dirty,
    )
    if best is not None:
        rate = max(1, round(LATENCY_LOAD * best.median.achieved))
        log(f"{target.name}: response times at {LATENCY_LOAD:.0%} of {best.median.achieved:.0f}/s = {rate}/s")
        lat = bench.step(rate, rtt=True)
        runs = [r for r in lat.runs if r.p99_ms is not None] or lat.runs
        pick = sorted(runs, key=lambda r: r.p99_ms if r.p99_ms is not None else math.inf)[len(runs) // 2]
        res.latency_requested = rate
        res.latency_achieved = round(pick.achieved, 1)
        res.p50_ms, res.p99_ms, res.rtt_samples = pick.p50_ms, pick.p99_ms, pick.rtt_samples
        res.latency_clean = pick.clean
        res.latency_runs = [asdict(r) | {"clean": r.clean} for r in lat.runs]
    res.target_restarts = bench.restarts
    res.steps = [
        {
            "requested": s.requested,
            "clean": s.clean,
            "median_achieved": round(s.median.achieved, 1),
            "runs": [asdict(r) | {"clean": r.clean} for r in s.runs],
        }
        for s in bench.steps
    ]
    return res


# --------------------------------------------------------------------------- report


def _fmt(v: float | None, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A plain-text table: first column left-aligned, the rest right-aligned, rules above and below the rows."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths, strict=True)))]
    out.append(line)
    for row in rows:
        out.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    out.append(line)
    return out


def render(results: dict[str, TargetResult], summary: dict[str, Any]) -> str:
    head = ("target", "max clean/s", "(asked)", "first dirty", "80% load/s", "p50 ms", "p99 ms")
    rows = [
        (
            r.name,
            _fmt(r.max_clean_rate),
            str(r.max_clean_requested),
            str(r.first_dirty_requested or "-"),
            _fmt(r.latency_achieved),
            _fmt(r.p50_ms),
            _fmt(r.p99_ms),
        )
        for r in results.values()
    ]
    out = table(head, rows)

    def yes(ok: bool | None) -> str:
        return "n/a" if ok is None else ("MET" if ok else "NOT MET")

    ratio = summary["ratio"]
    out.append(
        f"ratio frontdesk / sipp-uas max clean rate: {_fmt(ratio, '.2f')}  "
        f"(goal >= {RATIO_GOAL:g}: {yes(summary['ratio_met'])})"
    )
    out.append(
        f"frontdesk p99 INVITE->200 at {LATENCY_LOAD:.0%} load: {_fmt(summary['frontdesk_p99_ms'])} ms  "
        f"(goal <= {P99_GOAL_MS:g} ms: {yes(summary['p99_met'])})"
    )
    notes = [f"{r.name}: {r.limit}" for r in results.values() if r.first_dirty_requested is None]
    notes += [f"{r.name}: the 80% run was not clean" for r in results.values() if r.latency_clean is False]
    out.extend(f"note: {n}" for n in notes)
    return "\n".join(out)


# --------------------------------------------------------------------------- entry point


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so that every ``finally`` runs and children are stopped."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def sipp_version(sipp: str) -> str:
    out = subprocess.run([sipp, "-v"], capture_output=True, text=True, timeout=10)
    return next((ln.strip() for ln in (out.stdout + out.stderr).splitlines() if "SIPp v" in ln), "unknown")


def event_loop_name() -> str:
    """The event loop ``frontdesk serve`` runs on here: uvloop when installed."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def write_json(path: str | Path, report: Mapping[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="frontdesk bench-sip",
        description="Highest clean call rate and INVITE->200 response times: SIPp UAC against "
        "SIPp's own UAS and against frontdesk, on 127.0.0.1.",
    )
    p.add_argument("--quick", action="store_true", help="short smoke run for CI (< 60 s): few steps, 1 run each")
    p.add_argument("--start-rate", type=int, help="first rung of the ladder, calls/s (default 200)")
    p.add_argument("--max-rate", type=int, help="highest rate tried, calls/s (default 20000; quick 3200)")
    p.add_argument("--factor", type=float, default=2.0, help="ladder growth factor (default 2)")
    p.add_argument("--precision", type=float, help="bisect until the gap is this share of the rate (default 0.05)")
    p.add_argument("--step-seconds", type=float, help="seconds of traffic per run (default 5; quick 1)")
    p.add_argument("--repeat", type=int, help="runs per step; the median run counts (default 3; quick 1)")
    p.add_argument("--targets", default="sipp-uas,frontdesk", help="comma list of sipp-uas, frontdesk")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (SIPp files, server log)")
    p.add_argument("--check", action="store_true", help="exit 1 when a goal is not met")
    p.add_argument("--sipp", default=shutil.which("sipp") or "/usr/bin/sipp", help="SIPp binary")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        # `frontdesk bench-sip -- --quick`: ivr/cli.py hands over its REMAINDER with the "--" in it
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    quick = args.quick
    opts = SipBenchOptions(
        sipp=args.sipp,
        start_rate=args.start_rate or 200,
        max_rate=args.max_rate or (3200 if quick else 20000),
        factor=args.factor,
        precision=args.precision if args.precision is not None else (0.5 if quick else 0.05),
        step_seconds=args.step_seconds or (1.0 if quick else 5.0),
        repeat=args.repeat or (1 if quick else 3),
        grace=2.0 if quick else 5.0,
        settle=0.2 if quick else 0.5,
    )
    if opts.factor <= 1 or opts.start_rate < 1 or opts.max_rate < opts.start_rate or opts.repeat < 1:
        print("bench-sip: need --factor > 1, 1 <= --start-rate <= --max-rate, --repeat >= 1", file=sys.stderr)
        return 2
    if not (os.path.isfile(opts.sipp) and os.access(opts.sipp, os.X_OK)):
        print(f"bench-sip: SIPp not found at {opts.sipp} (Debian package sip-tester)", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    if not names or any(n not in ("sipp-uas", "frontdesk") for n in names):
        print("bench-sip: --targets takes sipp-uas and/or frontdesk", file=sys.stderr)
        return 2

    began = time.time()
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="sipbench-"))
    results: dict[str, TargetResult] = {}
    try:
        with sigterm_unwinds():
            for name in names:
                target: Target = SippUas(opts.sipp, workdir) if name == "sipp-uas" else Frontdesk(workdir)
                try:
                    results[name] = measure(opts, target, workdir)
                finally:
                    target.stop()
    finally:
        if args.keep:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    ref, fd = results.get("sipp-uas"), results.get("frontdesk")
    ratio = fd.max_clean_rate / ref.max_clean_rate if fd and ref and ref.max_clean_rate > 0 else None
    p99 = fd.p99_ms if fd else None
    summary: dict[str, Any] = {
        "ratio": None if ratio is None else round(ratio, 3),
        "ratio_goal": RATIO_GOAL,
        "ratio_met": None if ratio is None else ratio >= RATIO_GOAL,
        "frontdesk_p99_ms": p99,
        "p99_goal_ms": P99_GOAL_MS,
        "p99_met": None if p99 is None else p99 <= P99_GOAL_MS,
    }
    summary["met"] = bool(summary["ratio_met"]) and bool(summary["p99_met"])
    print()
    print(render(results, summary))
    report = {
        "benchmark": "frontdesk bench-sip",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(began)),
        "duration_s": round(time.time() - began, 1),
        "options": asdict(opts) | {"quick": quick, "latency_load": LATENCY_LOAD, "min_rate_share": MIN_RATE_SHARE},
        "scenario": "sipp -sn uac -d 0 over UDP on 127.0.0.1; rtd = INVITE -> 200 OK, whole ms",
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "python": sys.version.split()[0],
            "frontdesk_event_loop": event_loop_name(),
            "sipp": sipp_version(opts.sipp),
        },
        "targets": {name: asdict(r) for name, r in results.items()},
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
