"""One SIPp UAC run (``-sn uac -d 0``, or a scenario file) against a target, and the reading of SIPp's statistics.

A run is *clean* when no call failed, nothing was retransmitted, every call
completed, SIPp exited 0 and it offered at least ``MIN_RATE_SHARE`` of the
rate asked for; ``Run.problems`` says what made it dirty. Each run also
reads the CPU time the target used meanwhile (``Run.cpu_ms_per_call``).
"""

from __future__ import annotations

import contextlib
import glob
import math
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sim.live.targets import HOST, Target, free_port, stop_process

UAC_BUILTIN = ("-sn", "uac", "-d", "0")  # SIPp's own caller: INVITE, 200, ACK, BYE at once
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


@dataclass(frozen=True)
class UacScenario:
    """SIPp's arguments naming the call (``-sn uac`` or ``-sf FILE`` and its options); its RTD 1 is INVITE -> 200."""

    args: tuple[str, ...] = UAC_BUILTIN
    linger: float = 0.0  # seconds every call stays after its last message (a timewait): not part of the offered rate


BUILTIN_UAC = UacScenario()


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
    target_cpu_s: float | None = None  # CPU time the target used during the run
    problems: list[str] = field(default_factory=list)

    @property
    def cpu_ms_per_call(self) -> float | None:
        """The target's CPU time per completed call: a cost figure that a busy shared machine disturbs far less."""
        if self.target_cpu_s is None or self.successful <= 0:
            return None
        return 1000 * self.target_cpu_s / self.successful

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
    scenario: UacScenario = BUILTIN_UAC,
) -> Run:
    """One SIPp UAC run of ``scenario`` at ``rate`` calls/s for ``seconds`` against ``target``."""
    calls = max(1, round(rate * seconds))
    run = Run(requested=rate, calls=calls, rc=None)
    timeout = math.ceil(seconds + grace)
    for _attempt in range(3):
        rundir = Path(tempfile.mkdtemp(prefix=f"uac-{target.name}-{rate}-", dir=workdir))
        stat = rundir / "stat.csv"
        cmd = [
            sipp,
            f"{HOST}:{target.port}",
            *scenario.args,
            "-i", HOST,
            "-p", str(free_port()),
            "-nostdin",
            "-r", str(rate),
            "-m", str(calls),
            "-l", str(calls),  # no concurrency cap: keep the load open-loop
            "-timeout", f"{timeout}s",
            "-timeout_error",
            "-trace_stat", "-stf", str(stat), "-fd", "1",
        ]  # fmt: skip
        if rtt:
            cmd += ["-trace_rtt", "-rtt_freq", "1"]
        cpu_before = target.cpu_seconds()
        with (rundir / "stderr.log").open("wb") as err:
            proc = subprocess.Popen(cmd, cwd=rundir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
            try:
                run.rc = proc.wait(timeout + 15)
            except subprocess.TimeoutExpired:
                run.problems.append("sipp hung past its own -timeout")
            finally:
                stop_process(proc, grace=2)
        cpu_after = target.cpu_seconds()
        if cpu_before is not None and cpu_after is not None:
            run.target_cpu_s = round(cpu_after - cpu_before, 3)
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
        run.elapsed_s = _epoch(st["CurrentTime"]) - _epoch(st["StartTime"]) - scenario.linger
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
