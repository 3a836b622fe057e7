"""``frontdesk load SCENARIO --target HOST:PORT``: play a scenario to a running server, beside the simulator.

Theory of operation
-------------------
1. **The calls** are drawn from the scenario with its seed (``sim.live.loadcalls.draw_calls``):
   the arrival instants of its piecewise-Poisson sources, each caller's queue
   (or diversion key), talk time and patience. ``--duration`` keeps the first
   seconds of the day; ``--max-calls`` refuses a run bigger than that.
2. **The callers** are SIPp (``sim/scenarios/load_caller.xml``). Every call
   starts at once and waits for its own wall-clock instant (a CSV line per
   call), so the arrival curve is replayed call by call. A caller presses its
   key ``key_delay`` after the answer and so joins the queue at the drawn
   instant. Its INVITE allows UPDATE: the server says by UPDATE (connected
   line) when an agent answered, and then the caller holds on until the agent
   hangs up; if its patience runs out first it hangs up (an abandon). Callers
   stream mu-law audio all along, as a phone does.
3. **The agents** are pyVoIP phones (an independent SIP stack, ``sim.live.phones``),
   registered under the server's agent names given in the scenario's
   ``load.agents`` with ``--password``; a registration logs the agent in, so
   the roster of each block registers and unregisters phones (an agent whose
   shift ends during a call finishes it first). A phone answers after the
   scenario's ring delay (pyVoIP itself answers no sooner than about 1 s
   after the INVITE) and hangs up after the talk time drawn for that caller,
   whom it knows by the number in the INVITE's From.
4. **Measured**: the server's own counters (``/metrics``) before and after
   the run; the service level, ASA and abandonment follow from them with the
   engine's definitions (docs/queueing.md), as the simulator's do.
5. **Predicted**: the simulator runs the very same calls (a script: no draws,
   the prediction for this run) and the scenario's replications for the same
   window (the prediction for any run of it, with 95 % intervals). The three
   columns are printed side by side; ``--tolerance`` makes the exit status
   say whether the live service level and abandonment are within that many
   points of the same-calls prediction.

What a load run cannot play is refused before any call is made: caller groups,
redials, callback bookings, surge-only diversion, targeted notices, reserve
echelons and surge switch events (the callers and agents here do not act on
the server's state). Traffic goes to loopback addresses only.

This module is the run and its command line; the calls, the refusals and the
predictions are in ``sim/live/loadcalls.py``, the agents' phones in
``sim/live/loadagents.py``. The module is long because the run is one
sequence (ports, callers, agents, the follow-up of the roster, the scrape and
the comparison) that reads best in one place, with its manual above.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sim.live.loadagents import PYVOIP_ANSWER_DELAY, Agents, AgentStats
from sim.live.loadcalls import (
    COMPARED,
    LoadCall,
    LoadError,
    draw_calls,
    loopback_target,
    measured,
    predict_same_calls,
    predict_scenario,
    replay_problems,
    scrape,
)
from sim.live.phones import (
    PortBlocks,
    PortRange,
    import_pyvoip,
    outside_ephemeral_ports,
)
from sim.plan import LoadPlan, Plan
from sim.stats import Estimate

CALLER_SCENARIO = "load_caller.xml"
CALLER_AUDIO = "caller_audio.ulaw"
LAUNCH_RATE = 500  # calls SIPp starts per second; each then waits for its own instant
# SIPp binds its media port (and +2) and names base + (4 (n - 1)) mod 10000 in call n's SDP: by default
# 9990..19989, below the server's default RTP range (20000-30000), the kernel's ephemeral ports and the
# agents' phones (--sipp-media-port moves it)
CALLER_MEDIA_PORTS = 9990
PHONE_BLOCK = 21  # a phone's ports: its SIP port, then the 20 RTP ports it picks a call's port from
NEVER_MS = 10**11  # the patience of a caller who never hangs up: three years

# ----------------------------------------------------------------- the callers


def write_callers(calls: list[LoadCall], ld: LoadPlan, t0: float, workdir: Path) -> Path:
    """SIPp's CSV: number; wall-clock ms of the INVITE; key or -; patience ms; key delay ms."""
    path = workdir / "calls.csv"
    lines = ["SEQUENTIAL"]
    for c in calls:
        invite_ms = (t0 + c.dial_at(ld.key_delay)) * 1000
        if c.diverted is not None:
            patience = ld.leave_after * 1000
        else:
            patience = NEVER_MS if math.isinf(c.patience) else c.patience * 1000
        lines.append(f"{c.number};{invite_ms:.0f};{c.key or '-'};{patience:.0f};{ld.key_delay * 1000:.0f}")
    path.write_text("\n".join(lines) + "\n")
    (workdir / CALLER_AUDIO).write_bytes(b"\xff" * 8000)  # a second of mu-law silence, looped
    return path


def sipp_media_span(base: int, calls: int) -> PortRange:
    """The ports SIPp binds (``base``, ``base + 2``) or names in its calls' SDP (``base + 4 (n - 1) mod 10000``)."""
    return PortRange(base, base + 4 * min(calls, 2500) + 3)


def sipp_command(
    sipp: str,
    host: str,
    port: int,
    ld: LoadPlan,
    n: int,
    timeout: float,
    workdir: Path,
    *,
    sip_port: int,
    media_port: int = CALLER_MEDIA_PORTS,
) -> list[str]:
    """SIPp with the caller scenario, its statistics, last screen and errors kept in ``workdir``."""
    scenario = resources.files("sim") / "scenarios" / CALLER_SCENARIO
    return [
        sipp, f"{host}:{port}",
        "-sf", str(scenario),
        "-inf", str(workdir / "calls.csv"),
        "-s", ld.number,
        "-t", "u1",
        "-i", "127.0.0.1",
        "-p", str(sip_port),
        "-mp", str(media_port),
        "-m", str(n),
        "-l", str(n),
        "-r", str(LAUNCH_RATE),
        "-timeout", f"{timeout:.0f}s",
        "-nostdin",
        "-trace_stat", "-stf", str(workdir / "sipp_stats.csv"), "-fd", "1",
        "-trace_screen", "-screen_file", str(workdir / "sipp_screen.log"),
        "-trace_err", "-error_file", str(workdir / "sipp_errors.log"),
    ]  # fmt: skip


# ----------------------------------------------------------------- the run


@dataclass
class LoadResult:
    live: dict[str, float]
    same_calls: dict[str, float]
    scenario: dict[str, Estimate]
    replications: int
    duration: float
    seed: int
    agents: AgentStats
    sipp: dict[str, str]
    warnings: list[str]
    seconds: float

    def gaps(self) -> dict[str, float]:
        """Live minus the same-calls prediction, in points, for the service level and the abandonment."""
        return {k: 100 * (self.live[k] - self.same_calls[k]) for k in ("service_level", "abandon_rate")}

    def to_json(self) -> dict[str, Any]:
        def est(e: Estimate) -> dict[str, float | None]:
            return {k: (None if math.isnan(v) else v) for k, v in dataclasses.asdict(e).items()}

        return {
            "duration_s": self.duration,
            "seed": self.seed,
            "replications": self.replications,
            "live": {k: self.live[k] for k in (*COMPARED, "answered_within_t", "abandoned_short", "ring_no_answer")},
            "same_calls": {k: self.same_calls[k] for k in COMPARED},
            "scenario": {k: est(self.scenario[k]) for k in COMPARED},
            "gap_points": self.gaps(),
            "agents": dataclasses.asdict(self.agents),
            "sipp": self.sipp,
            "warnings": self.warnings,
            "seconds": self.seconds,
        }


@contextmanager
def _agents(*args: Any) -> Iterator[Agents]:
    agents = Agents(*args)
    try:
        yield agents
    finally:
        agents.close()


def run_load(
    plan: Plan,
    target: str,
    *,
    password: Callable[[str], str],
    metrics_url: str,
    duration: float | None = None,
    seed: int | None = None,
    replications: int = 10,
    max_calls: int = 5000,
    drain: float = 600.0,
    sipp: str | None = None,
    workdir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    phone_ports: PortRange | None = None,
    sipp_media_port: int = CALLER_MEDIA_PORTS,
) -> LoadResult:
    """Play ``plan`` to the server at ``target`` and set the measured KPIs beside the simulator's.

    ``phone_ports`` is where the agents' phones and SIPp's SIP port take their
    ports (default: above the kernel's ephemeral range); SIPp's media ports
    start at ``sipp_media_port``. The two must not overlap.
    """
    started = time.perf_counter()
    say = progress or (lambda _msg: None)
    problems = replay_problems(plan)
    if problems:
        raise LoadError("this scenario cannot be played over SIP:\n  " + "\n  ".join(problems))
    ld = plan.load
    assert ld is not None
    host, port = loopback_target(target)
    sipp = sipp or shutil.which("sipp")
    if sipp is None:
        raise LoadError("SIPp is needed for the callers (Debian: apt-get install sip-tester)")
    import_pyvoip()
    seed = plan.seed if seed is None else seed
    duration = plan.duration if duration is None else min(duration, plan.duration)
    if duration <= 0:
        raise LoadError("--duration must be above 0")
    calls = draw_calls(plan, seed, duration)
    if not calls:
        raise LoadError(f"no call arrives in the first {duration:.0f} s of the scenario")
    if len(calls) > max_calls:
        raise LoadError(f"{len(calls)} calls in {duration:.0f} s: above --max-calls {max_calls}")
    ports = _port_blocks(phone_ports, sipp_media_port, len(calls))
    warnings = _warnings(plan)
    say(f"{len(calls)} calls in {duration:.0f} s; predicting")
    same = predict_same_calls(plan, calls, duration, seed)
    scenario = predict_scenario(plan, duration, replications)
    before = scrape(metrics_url)
    warnings += _threshold_warnings(plan, before)
    tmp = tempfile.TemporaryDirectory(prefix="frontdesk-load-") if workdir is None else None
    work = Path(tmp.name) if tmp is not None else workdir
    assert work is not None
    work.mkdir(parents=True, exist_ok=True)
    try:
        with _agents(plan, calls, host, port, password, seed, ports) as agents:
            agents.staff(0)
            say(f"{sum(len(v) for v in agents.on.values())} agents registered; calling")
            lead = 2.0 + max(i / LAUNCH_RATE - c.dial_at(ld.key_delay) for i, c in enumerate(calls))
            t0 = time.time() + max(lead, 2.0)
            write_callers(calls, ld, t0, work)
            last = max(c.dial_at(ld.key_delay) for c in calls)
            bound = (t0 - time.time()) + last + drain
            sipp_port = ports.take()[0]
            cmd = sipp_command(
                sipp, host, port, ld, len(calls), bound, work, sip_port=sipp_port, media_port=sipp_media_port
            )
            mono0 = time.monotonic() + (t0 - time.time())
            with (work / "sipp.out").open("wb") as out:
                proc = subprocess.Popen(cmd, cwd=work, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
                try:
                    _follow(proc, plan, agents, mono0, duration, bound + 15, say)
                finally:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
            agent_stats = agents.stats
        time.sleep(0.5)  # the last BYEs reach the engine's books
        after = scrape(metrics_url)
        stats = _sipp_stats(work / "sipp_stats.csv")
        if stats.get("TotalCallCreated") != str(len(calls)):
            tail = (work / "sipp.out").read_text(errors="replace")[-2000:]
            raise LoadError(
                f"SIPp placed {stats.get('TotalCallCreated', 'no')} of the {len(calls)} calls "
                f"(exit status {proc.returncode}):\n{tail}"
            )
    finally:
        if tmp is not None:
            tmp.cleanup()
    live = measured(before, after, calls)
    return LoadResult(
        live, same, scenario, replications, duration, seed, agent_stats, stats, warnings,
        time.perf_counter() - started,
    )  # fmt: skip


def _port_blocks(phone_ports: PortRange | None, sipp_media_port: int, calls: int) -> PortBlocks:
    """The phones' blocks, checked clear of SIPp's media ports."""
    try:
        media = sipp_media_span(sipp_media_port, calls)
    except ValueError as exc:
        raise LoadError(f"--sipp-media-port {sipp_media_port}: {exc}") from None
    ports = phone_ports or outside_ephemeral_ports()
    if ports is None:
        raise LoadError("the kernel's ephemeral port range leaves no room for the phones: give --phone-ports")
    if ports.overlaps(media):
        raise LoadError(f"--phone-ports {ports} overlaps SIPp's media ports {media} (--sipp-media-port)")
    try:
        return PortBlocks(ports, PHONE_BLOCK)
    except ValueError as exc:
        raise LoadError(f"--phone-ports: {exc}") from None


def _follow(
    proc: subprocess.Popen[bytes],
    plan: Plan,
    agents: Agents,
    mono0: float,
    duration: float,
    bound: float,
    say: Callable[[str], None],
) -> None:
    """Wait for SIPp, changing the roster at block edges and saying how far the run is."""
    block = 0
    deadline = time.monotonic() + bound
    next_note = time.monotonic() + 10
    while proc.poll() is None:
        now = time.monotonic()
        if now > deadline:
            raise LoadError(f"the run did not end within {bound:.0f} s")
        due = int((now - mono0) // plan.block_seconds) if now > mono0 else 0
        if due > block and due < plan.blocks:
            block = due
            agents.staff(block)
        if now >= next_note:
            next_note = now + 10
            elapsed = max(0.0, now - mono0)
            if elapsed < duration:
                say(f"{elapsed:.0f}/{duration:.0f} s of arrivals played; {agents.stats.answered} answered")
            else:
                say(f"every call placed; waiting for the last ones to end ({agents.stats.answered} answered)")
        time.sleep(0.1)


def _sipp_stats(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    rows = [r.split(";") for r in path.read_text(errors="replace").splitlines() if r]
    if len(rows) < 2:
        return {}
    row = dict(zip(rows[0], rows[-1], strict=False))
    return {k: row[k] for k in ("TotalCallCreated", "SuccessfulCall(C)", "FailedCall(C)") if k in row}


def _warnings(plan: Plan) -> list[str]:
    out = []
    if plan.ring_delay.expected < PYVOIP_ANSWER_DELAY:
        out.append(
            f"the scenario's agents answer in {plan.ring_delay.expected:.1f} s on average; pyVoIP phones take "
            f"at least {PYVOIP_ANSWER_DELAY:.0f} s: the live waits will be longer"
        )
    return out


def _threshold_warnings(plan: Plan, scraped: Mapping[str, float]) -> list[str]:
    out = []
    for spec in plan.model.queues:
        live = scraped.get(f"threshold.{spec.name}")
        if live is None:
            out.append(f"the server has no queue {spec.name!r}")
        elif abs(live - spec.service_level_t) > 1e-9:
            out.append(
                f"queue {spec.name!r}: the server's service-level threshold is {live:g} s, the scenario's "
                f"{spec.service_level_t:g} s (name the server's config in server_config)"
            )
    return out


# ----------------------------------------------------------------- output


def _fmt(key: str, v: float) -> str:
    if key in ("service_level", "abandon_rate"):
        return f"{100 * v:.1f} %"
    if key == "asa_s":
        return f"{v:.2f} s"
    return f"{v:.0f}"


def _fmt_est(key: str, e: Estimate) -> str:
    if math.isnan(e.ci95):
        return _fmt(key, e.mean)
    if key in ("service_level", "abandon_rate"):
        return f"{100 * e.mean:.1f} ± {100 * e.ci95:.1f} %"
    if key == "asa_s":
        return f"{e.mean:.2f} ± {e.ci95:.2f} s"
    return f"{e.mean:.0f} ± {e.ci95:.0f}"


LABELS = {
    "calls": "calls placed",
    "diverted": "took a diversion key",
    "offered": "joined a queue",
    "answered": "answered by an agent",
    "abandoned": "abandoned",
    "overflowed": "overflowed",
    "service_level": "service level",
    "asa_s": "ASA",
    "abandon_rate": "abandonment",
}


def table(result: LoadResult) -> str:
    head = ("", "live", "simulator, same calls", f"simulator, scenario ({result.replications} runs, 95 % CI)")
    rows = [head]
    for k in COMPARED:
        rows.append(
            (LABELS[k], _fmt(k, result.live[k]), _fmt(k, result.same_calls[k]), _fmt_est(k, result.scenario[k]))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    gaps = result.gaps()
    lines.append("")
    lines.append(
        f"live - same calls: service level {gaps['service_level']:+.1f} points, "
        f"abandonment {gaps['abandon_rate']:+.1f} points"
    )
    a = result.agents
    lines.append(
        f"agents: {a.rings} rings, {a.answered} answered, {a.talked} talked to the end, "
        f"{a.ended_by_server} ended by the server first, {a.left_ringing} left ringing; SIPp: "
        + ", ".join(f"{k} {v}" for k, v in result.sipp.items())
    )
    for w in result.warnings:
        lines.append(f"warning: {w}")
    for e in a.errors[:10]:
        lines.append(f"agent error: {e}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="frontdesk load",
        description="Play a scenario's calls to a running server over SIP (SIPp callers, pyVoIP agents) and "
        "compare the measured KPIs with the simulator's prediction (docs/sim.md).",
    )
    p.add_argument("scenario", help="scenario YAML with a `load` section")
    p.add_argument("--target", required=True, metavar="HOST:PORT", help="the server's SIP address (loopback only)")
    p.add_argument("--metrics", metavar="URL", help="the server's /metrics (default: http://HOST:8080/metrics)")
    p.add_argument(
        "--password",
        default="{agent}",
        metavar="TEMPLATE",
        help="the agents' SIP password; {agent} is replaced by the agent's name (default: {agent})",
    )
    p.add_argument("--duration", type=float, metavar="SECONDS", help="play the first SECONDS of the scenario only")
    p.add_argument("--seed", type=int, help="the seed of the calls (default: the scenario's)")
    p.add_argument("--replications", "-n", type=int, help="simulator runs for the scenario column (default: its own)")
    p.add_argument("--max-calls", type=int, default=5000, help="refuse a run with more calls (default 5000)")
    p.add_argument("--drain", type=float, default=600.0, metavar="SECONDS", help="time allowed after the last call")
    p.add_argument("--json", metavar="FILE", help="write the comparison as JSON")
    p.add_argument("--workdir", metavar="DIR", help="keep SIPp's call list, statistics and screen here")
    p.add_argument(
        "--phone-ports",
        type=_port_range,
        metavar="LOW-HIGH",
        help=f"ports for the agents' phones ({PHONE_BLOCK} each: SIP, then RTP) and SIPp's SIP port "
        "(default: above the kernel's ephemeral range)",
    )
    p.add_argument(
        "--sipp-media-port",
        type=int,
        default=CALLER_MEDIA_PORTS,
        metavar="BASE",
        help=f"SIPp's media port; call n's SDP names BASE + 4(n-1) (default {CALLER_MEDIA_PORTS})",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        metavar="POINTS",
        help="exit 1 unless the live service level and abandonment are within POINTS of the same-calls prediction",
    )
    return p


def _port_range(text: str) -> PortRange:
    try:
        return PortRange.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    from sim.scenario import ScenarioError, load_scenario

    args = build_parser().parse_args(argv)
    try:
        plan = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(exc, file=sys.stderr)
        return 2
    template: str = args.password
    try:
        host, _ = loopback_target(args.target)
        result = run_load(
            plan,
            args.target,
            password=lambda agent: template.replace("{agent}", agent),
            metrics_url=args.metrics or f"http://{host}:8080/metrics",
            duration=args.duration,
            seed=args.seed,
            replications=args.replications or plan.replications,
            max_calls=args.max_calls,
            drain=args.drain,
            workdir=Path(args.workdir) if args.workdir else None,
            progress=lambda msg: print(f"load: {msg}", file=sys.stderr, flush=True),
            phone_ports=args.phone_ports,
            sipp_media_port=args.sipp_media_port,
        )
    except (LoadError, ImportError) as exc:
        print(f"load: {exc}", file=sys.stderr)
        return 2
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_json(), indent=1))
    if args.tolerance is not None:
        gaps = result.gaps()
        if any(abs(g) > args.tolerance for g in gaps.values()):
            print(f"load: beyond the tolerance of {args.tolerance:g} points", file=sys.stderr)
            return 1
    return 0
