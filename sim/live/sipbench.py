"""SIP answering benchmark: SIPp UAC against SIPp's own UAS, Kamailio and frontdesk.

The targets: ``sipp-uas`` (SIPp's built-in UAS), ``kamailio-1`` and
``kamailio-2`` (Kamailio answering statefully with ``tm``, one and two UDP
workers; config in ``sim/live/kamailio/stateful.cfg``) and ``frontdesk`` on
its defaults (demo IVR, call records written). ``frontdesk bench-sip
[options]`` (or ``python -m sim.live.sipbench``) does, in one run and for
each target, with the targets interleaved (each rung of the ladder is run on
every target before the next rung):

1. steps the offered call rate up on a geometric ladder (``--start-rate``,
   doubling up to ``--max-rate``), then bisects between the last clean and
   the first dirty rate until the gap is within ``--precision``;
2. calls a step *clean* when its median run (of ``--repeat`` runs) had no
   failed call, no retransmission, every call completed, SIPp exited 0 and
   SIPp actually offered at least 90% of the requested rate;
3. at 80% of the highest clean rate, runs again with ``-trace_rtt`` and
   reports p50/p99 INVITE -> 200 OK response times (SIPp's RTD, whole ms)
   and the CPU time the target used per call (from ``/proc``; for Kamailio
   its main process and workers): on a busy shared machine the rates move
   with the neighbours' load, the cost per call much less.

Every call is the stock ``-sn uac`` scenario with ``-d 0`` (INVITE, 180,
200, ACK, BYE, 200) over UDP on 127.0.0.1. The reported rate is the rate
SIPp achieved (successful calls / elapsed), not the one asked for. The
target is restarted after a dirty run so that one overload does not leak
into the next step. Every process started here is stopped on the way out.

The targets are in ``sim/live/targets.py``, one SIPp run and the reading of
its files in ``sim/live/sipprun.py``; the plumbing shared with the other
benchmarks in ``sim/benchkit.py``. ``--loop-lag PATH`` runs frontdesk under
``tools/loop_lag.py`` and prints its event loop's stalls and garbage
collections after the table. The report gives frontdesk's highest clean
rate as a ratio to each reference; the goals are >= 1.0x Kamailio with one
worker and a p99 INVITE -> 200 OK of at most 5 ms at 80% of frontdesk's rate.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sim.benchkit import (
    BenchRun,
    cli_args,
    executable,
    log,
    ratio,
    refuse,
    shown,
    sigterm_unwinds,
    sipp_bench_options,
    table,
    verdict,
    work_directory,
)
from sim.live.sipprun import BUILTIN_UAC, MIN_RATE_SHARE, Run, UacScenario, run_uac
from sim.live.targets import (
    Frontdesk,
    Kamailio,
    SippUas,
    Target,
    event_loop_name,
    find_kamailio,
    kamailio_version,
    loop_lag_report,
    sipp_version,
)

RATIO_GOAL = 1.0  # frontdesk max clean rate / Kamailio's (stateful, one worker) max clean rate
P99_GOAL_MS = 5.0  # frontdesk p99 INVITE -> 200 OK at 80% of its max clean rate
LATENCY_LOAD = 0.8
REFERENCES = ("kamailio-1", "kamailio-2", "sipp-uas")  # frontdesk's rate is shown as a ratio to each
GOAL_REFERENCE = "kamailio-1"
TARGETS = ("sipp-uas", "kamailio-1", "kamailio-2", "frontdesk")


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
    """One target's search; ``uac`` is SIPp's call scenario for it (bench-cluster's go through Kamailio)."""

    def __init__(self, opts: SipBenchOptions, target: Target, workdir: Path, uac: UacScenario = BUILTIN_UAC) -> None:
        self.opts = opts
        self.target = target
        self.workdir = workdir
        self.uac = uac
        self.steps: list[SipStep] = []
        self.best: SipStep | None = None
        self.restarts = 0

    def _restart(self) -> None:
        self.target.stop()
        self.target.start()
        self.restarts += 1

    def _run(self, rate: int, *, rtt: bool = False) -> Run:
        if not self.target.alive():
            self._restart()
        o = self.opts
        run = run_uac(
            o.sipp, self.target, rate, o.step_seconds, self.workdir, rtt=rtt, grace=o.grace, scenario=self.uac
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

    def search(self) -> Iterator[SipStep]:
        """Highest clean step: geometric ladder, then bisection; one step per ``next()``, the best in ``self.best``.

        A generator so that ``interleave`` can run several targets rung by rung.
        """
        o = self.opts
        lo, hi = 0, None
        rate = o.start_rate
        while True:
            s = self.step(rate)
            self.steps.append(s)
            yield s
            if not s.clean:
                hi = rate
                break
            self.best, lo = s, rate
            if rate >= o.max_rate:
                break
            rate = min(o.max_rate, max(rate + 1, round(rate * o.factor)))
        if hi is None:
            return
        while hi - lo > max(1.0, o.precision * max(lo, 1)):
            mid = (lo + hi) // 2
            if mid in (lo, hi):
                break
            s = self.step(mid)
            self.steps.append(s)
            yield s
            if s.clean:
                self.best, lo = s, mid
            else:
                hi = mid


def interleave(benches: Sequence[Bench]) -> None:
    """Run every bench's search, one step of each in turn: each rate is tried on every target before the next.

    Targets whose searches go the same way see the same rates back to back, so a
    quiet or a busy spell of the shared machine falls on all of them alike.
    """
    searches = [b.search() for b in benches]
    while searches:
        for search in list(searches):
            if next(search, None) is None:
                searches.remove(search)


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
    cpu_ms_per_call: float | None = None  # the target's CPU time per call in the 80% run
    latency_clean: bool | None = None
    target_restarts: int = 0
    steps: list[dict[str, Any]] = field(default_factory=list)
    latency_runs: list[dict[str, Any]] = field(default_factory=list)


def measure(
    opts: SipBenchOptions,
    targets: Sequence[Target],
    workdir: Path,
    uac: Mapping[str, UacScenario] | None = None,
) -> dict[str, TargetResult]:
    """Search every target's highest clean rate (interleaved), then time each at 80% of its own.

    ``uac``: SIPp's call scenario by target name (default ``-sn uac -d 0``).
    """
    names = ", ".join(t.name for t in targets)
    log(f"{names}: stepping the call rate up ({opts.start_rate}..{opts.max_rate}/s, "
        f"{opts.step_seconds:g} s per run, {opts.repeat} run(s) per step, rates interleaved)")  # fmt: skip
    benches = [Bench(opts, target, workdir, (uac or {}).get(target.name, BUILTIN_UAC)) for target in targets]
    for target in targets:
        target.start()
    interleave(benches)
    return {b.target.name: latency(b) for b in benches}


def latency(bench: Bench) -> TargetResult:
    target, best = bench.target, bench.best
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
        cpu = pick.cpu_ms_per_call
        res.cpu_ms_per_call = None if cpu is None else round(cpu, 3)
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


def results_table(results: Mapping[str, TargetResult]) -> list[str]:
    """One row per target: highest clean rate, first dirty step, and the 80% run's response times and CPU per call."""
    head = ("target", "max clean/s", "(asked)", "first dirty", "80% load/s", "p50 ms", "p99 ms", "CPU ms/call")
    rows = [
        (
            r.name,
            shown(r.max_clean_rate, ".0f"),
            str(r.max_clean_requested),
            str(r.first_dirty_requested or "-"),
            shown(r.latency_achieved, ".0f"),
            shown(r.p50_ms, ".0f"),
            shown(r.p99_ms, ".0f"),
            shown(r.cpu_ms_per_call, ".3f"),
        )
        for r in results.values()
    ]
    return table(head, rows)


def render(results: dict[str, TargetResult], summary: dict[str, Any]) -> str:
    out = results_table(results)
    for ref in REFERENCES:
        if ref in results and "frontdesk" in results:
            goal = f"  (goal >= {RATIO_GOAL:g}: {verdict(summary['ratio_met'])})" if ref == GOAL_REFERENCE else ""
            out.append(
                f"ratio frontdesk / {ref} max clean rate: {shown(summary['ratios'][ref], '.2f')}{goal}; "
                f"by CPU per call ({ref} / frontdesk): {shown(summary['cpu_ratios'][ref], '.2f')}"
            )
    out.append(
        f"frontdesk p99 INVITE->200 at {LATENCY_LOAD:.0%} load: {shown(summary['frontdesk_p99_ms'], '.0f')} ms  "
        f"(goal <= {P99_GOAL_MS:g} ms: {verdict(summary['p99_met'])})"
    )
    out.extend(result_notes(results))
    return "\n".join(out)


def result_notes(results: Mapping[str, TargetResult]) -> list[str]:
    """A line for each target whose ladder never went dirty or whose 80% run was not clean."""
    notes = [f"{r.name}: {r.limit}" for r in results.values() if r.first_dirty_requested is None]
    notes += [f"{r.name}: the 80% run was not clean" for r in results.values() if r.latency_clean is False]
    return [f"note: {n}" for n in notes]


# --------------------------------------------------------------------------- entry point


def make_target(
    name: str, opts: SipBenchOptions, kamailio: str | None, workdir: Path, loop_lag: Path | None = None
) -> Target:
    if name == "sipp-uas":
        return SippUas(opts.sipp, workdir)
    if name.startswith("kamailio-"):
        assert kamailio is not None  # main() refused the command line otherwise
        return Kamailio(kamailio, workdir, children=int(name.removeprefix("kamailio-")))
    return Frontdesk(workdir, loop_lag=loop_lag)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="frontdesk bench-sip",
        description="Highest clean call rate and INVITE->200 response times: SIPp UAC against "
        "SIPp's own UAS, Kamailio (stateful, 1 and 2 workers) and frontdesk, on 127.0.0.1.",
    )
    p.add_argument("--quick", action="store_true", help="short smoke run for CI (< 60 s): few steps, 1 run each")
    p.add_argument("--start-rate", type=int, help="first rung of the ladder, calls/s (default 200)")
    p.add_argument("--max-rate", type=int, help="highest rate tried, calls/s (default 20000; quick 3200)")
    p.add_argument("--factor", type=float, default=2.0, help="ladder growth factor (default 2)")
    p.add_argument("--precision", type=float, help="bisect until the gap is this share of the rate (default 0.05)")
    p.add_argument("--step-seconds", type=float, help="seconds of traffic per run (default 5; quick 1)")
    p.add_argument("--repeat", type=int, help="runs per step; the median run counts (default 3; quick 1)")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma list of {', '.join(TARGETS)} (default all)")
    p.add_argument("--kamailio", default=find_kamailio(), help="Kamailio binary (Debian package kamailio)")
    p.add_argument(
        "--loop-lag",
        type=Path,
        metavar="PATH",
        help="run frontdesk under tools/loop_lag.py (event-loop lag and garbage collections) and write its "
        "samples to PATH; the breakdown (of the server's last start to its stop) is printed at the end",
    )
    sipp_bench_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(cli_args(argv))
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
        return refuse("bench-sip", "need --factor > 1, 1 <= --start-rate <= --max-rate, --repeat >= 1")
    if not executable(opts.sipp):
        return refuse("bench-sip", f"SIPp not found at {opts.sipp} (Debian package sip-tester)")
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    if not names or any(n not in TARGETS for n in names) or len(set(names)) != len(names):
        return refuse("bench-sip", f"--targets takes a comma list of distinct names from {', '.join(TARGETS)}")
    if any(n.startswith("kamailio-") for n in names) and not (args.kamailio and executable(args.kamailio)):
        return refuse(
            "bench-sip",
            f"Kamailio not found at {args.kamailio or 'kamailio, /usr/sbin/kamailio'} (Debian package kamailio; "
            "or leave the kamailio targets out of --targets)",
        )

    run = BenchRun("frontdesk bench-sip")
    with work_directory("sipbench-", args.keep) as workdir, sigterm_unwinds():
        targets = [make_target(name, opts, args.kamailio, workdir, args.loop_lag) for name in names]
        try:
            results = measure(opts, targets, workdir)
        finally:
            for target in targets:
                target.stop()

    fd = results.get("frontdesk")
    fd_rate = fd.max_clean_rate if fd else None
    ratios = {
        ref: None if (r := ratio(fd_rate, results[ref].max_clean_rate)) is None else round(r, 3)
        for ref in REFERENCES
        if ref in results
    }
    # the same comparison by CPU cost: the reference's CPU per call over frontdesk's (above 1: frontdesk is cheaper)
    fd_cpu = fd.cpu_ms_per_call if fd else None
    cpu_ratios = {
        ref: None if (r := ratio(results[ref].cpu_ms_per_call, fd_cpu)) is None else round(r, 3)
        for ref in REFERENCES
        if ref in results
    }
    goal_ratio = ratios.get(GOAL_REFERENCE)
    p99 = fd.p99_ms if fd else None
    summary: dict[str, Any] = {
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "ratio": goal_ratio,
        "ratio_reference": GOAL_REFERENCE,
        "ratio_goal": RATIO_GOAL,
        "ratio_met": None if goal_ratio is None else goal_ratio >= RATIO_GOAL,
        "frontdesk_p99_ms": p99,
        "p99_goal_ms": P99_GOAL_MS,
        "p99_met": None if p99 is None else p99 <= P99_GOAL_MS,
    }
    summary["met"] = bool(summary["ratio_met"]) and bool(summary["p99_met"])
    print()
    print(render(results, summary))
    if args.loop_lag is not None and "frontdesk" in names:
        print("\nfrontdesk event loop (tools/loop_lag.py):")
        print(loop_lag_report(args.loop_lag))
    report = run.report(
        options=asdict(opts) | {"quick": quick, "latency_load": LATENCY_LOAD, "min_rate_share": MIN_RATE_SHARE},
        scenario="sipp -sn uac -d 0 over UDP on 127.0.0.1; rtd = INVITE -> 200 OK, whole ms",
        machine=run.machine(
            frontdesk_event_loop=event_loop_name(),
            sipp=sipp_version(opts.sipp),
            kamailio=kamailio_version(args.kamailio) if any(n.startswith("kamailio-") for n in names) else None,
        ),
        targets={name: asdict(r) for name, r in results.items()},
        **summary,
    )
    return run.finish(report, json_path=args.json, check=args.check, met=summary["met"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
