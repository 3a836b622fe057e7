"""Simulator speed: simulated calls per second of wall time, ``frontdesk bench-sim`` (or ``python -m sim.simbench``).

One queue, N agents, Poisson callers, exponential handle times and
exponential patience (M/M/N+M, the Erlang A model): the simulator
(``sim.simulation.Simulation`` driving ``queueing.engine.Engine``) runs
``--calls`` callers, and Ciw (https://ciw.readthedocs.io, an independent
discrete-event simulator from PyPI) runs the same model in the same process
for the ratio. Both answer at once (no ring delay, no wrap-up); the simulator
still runs every policy step the live server runs (tiers, EWT announcements,
limits, timers), which Ciw has no notion of.

Printed: whether the compiled build runs (``queueing.native_status()``, docs/queueing.md,
"Compiled build"; ``FRONTDESK_PURE=1`` measures pure Python), then calls, wall
seconds, calls per second and engine events per second,
the service level (answered within 20 s over answered and abandoned) and the
abandonment of each, beside Erlang A; and whether 10^6 calls fit in the goal
(30 s). ``--jobs N`` splits the simulator's calls into N replications run
side by side in processes (the wall time then covers them all, process
start included). ``--json`` prints the same as one JSON object.

In the same invocation, an **overloaded** model: 100 agents, callers at 2.5
times their capacity who hold on long (mean patience 30 min) and a line
capped at 1,500, so 1,000+ callers wait most of the time; its calls per
second against the steady model's (goal: at least 0.8, the cost of a call
must not grow with the line). Then the engine alone (``sim/enginebench.py``):
the events of a run of each model replayed to a fresh engine, as engine
events and decisions per second in one process, and the engine's events per
second with 0, 100, 1,000 and 5,000 callers in line (``--line-lengths``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from dataclasses import asdict, dataclass

from queueing import native_status
from queueing.model import Limit, QueueSpec
from sim.benchkit import cli_args, log, ratio, refuse
from sim.enginebench import LINE_LENGTHS, EventRecorder, line_cost, replay
from sim.erlang import evaluate
from sim.plan import Plan, single_queue_plan
from sim.simulation import Simulation

GOAL_SECONDS = 30.0  # for 10^6 calls
TARGET_WAIT = 20.0
OVERLOAD_GOAL = 0.8  # overloaded calls/s over steady calls/s
# the overloaded model: agents, offered load per agent, mean patience (s), longest line
OVERLOAD = (100, 2.5, 1800.0, 1500)
ENGINE_CALLS = 50_000  # calls of the runs whose events the engine replays
LINE_ROUNDS = 20_000  # rounds of six events per line length


@dataclass(frozen=True)
class BenchResult:
    simulator: str
    calls: int
    seconds: float
    calls_per_second: float
    events_per_second: float | None
    service_level: float
    abandon_rate: float
    mean_line: float | None = None  # callers waiting, sampled every minute (overloaded) or hour
    longest_line: int | None = None  # exact


def bench_plan(calls: int, agents: int, load: float, aht: float, patience: float, seed: int, line: int = 0) -> Plan:
    """The benchmark's M/M/N+M day for about ``calls`` callers; ``line`` > 0 caps the line there (overloaded)."""
    rate = load * agents / aht
    hours = calls / rate / 3600
    queue = None
    if line:
        queue = QueueSpec(
            name="general",
            max_wait=Limit(1e9, 1e9),
            max_length=Limit(line, line),
            announce_every=Limit(1e9, 1e9),
            ring_timeout=1e6,
            wrap_up=0.0,
            service_level_t=TARGET_WAIT,
            abandon_grace=0.0,
            initial_aht=aht,
        )
    plan = single_queue_plan(
        arrival_rate=rate,
        aht=aht,
        agents=agents,
        patience=patience,
        hours=hours,
        block_seconds=3600,
        seed=seed,
        queue=queue,
    )
    return plan.with_changes(sample_every=3600.0 if not line else 60.0)


def _one_run(args: tuple[int, int, float, float, float, int, int]) -> tuple[int, int, float, int, int, int, float, int]:
    """One replication: (calls, engine events, seconds, answered within T, decided, abandoned, mean line, longest)."""
    calls, agents, load, aht, patience, seed, line = args
    sim = Simulation(bench_plan(calls, agents, load, aht, patience, seed, line), seed)
    started = time.perf_counter()
    result = sim.run()
    seconds = time.perf_counter() - started
    stats = sim.engine.stats["general"]
    decided = stats.answered + stats.abandoned + stats.overflowed_total - stats.abandoned_short
    mean_line = sum(s.waiting for s in result.samples) / len(result.samples) if result.samples else 0.0
    longest = int(max((b["queue_length_max"] for b in result.blocks), default=0))
    return result.calls, result.events, seconds, stats.answered_within_t, decided, stats.abandoned, mean_line, longest


def run_frontdesk(
    calls: int, agents: int, load: float, aht: float, patience: float, seed: int, jobs: int = 1, line: int = 0
) -> BenchResult:
    """The calls in ``jobs`` replications (seeds seed, seed+1, ...) side by side in processes; wall time of all."""
    parts = [(calls // jobs + (i < calls % jobs), agents, load, aht, patience, seed + i, line) for i in range(jobs)]
    started = time.perf_counter()
    if jobs == 1:
        runs = [_one_run(parts[0])]
    else:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            runs = pool.map(_one_run, parts)
    seconds = time.perf_counter() - started if jobs > 1 else runs[0][2]
    n = sum(r[0] for r in runs)
    decided = sum(r[4] for r in runs)
    return BenchResult(
        "frontdesk" if jobs == 1 else f"frontdesk x{jobs}",
        n,
        seconds,
        n / seconds,
        sum(r[1] for r in runs) / seconds,
        sum(r[3] for r in runs) / decided if decided else 1.0,
        sum(r[5] for r in runs) / n if n else 0.0,
        sum(r[6] for r in runs) / len(runs) if line else None,
        max(r[7] for r in runs) if line else None,
    )


def engine_alone(calls: int, agents: int, load: float, aht: float, patience: float, seed: int, line: int = 0) -> dict:
    """A run's engine events replayed to a fresh engine: events and decisions per second of the engine only."""
    plan = bench_plan(calls, agents, load, aht, patience, seed, line)
    recorder = EventRecorder()
    Simulation(plan, seed, trace=recorder).run()
    rate = replay(plan.model, recorder.events)
    return {
        "events": rate.events,
        "decisions": rate.decisions,
        "seconds": rate.seconds,
        "events_per_second": rate.events_per_second,
        "decisions_per_second": rate.decisions_per_second,
    }


def run_ciw(calls: int, agents: int, load: float, aht: float, patience: float, seed: int) -> BenchResult:
    import ciw  # a test extra: pip install -e '.[test]'

    rate = load * agents / aht
    network = ciw.create_network(
        arrival_distributions=[ciw.dists.Exponential(rate=rate)],
        service_distributions=[ciw.dists.Exponential(rate=1 / aht)],
        number_of_servers=[agents],
        reneging_time_distributions=[ciw.dists.Exponential(rate=1 / patience)],
    )
    ciw.seed(seed)
    q = ciw.Simulation(network)
    started = time.perf_counter()
    q.simulate_until_max_time(calls / rate)
    seconds = time.perf_counter() - started
    records = q.get_all_records()
    served = [r for r in records if r.record_type == "service"]
    reneged = sum(1 for r in records if r.record_type == "renege")
    n = len(served) + reneged
    return BenchResult(
        f"ciw {ciw.__version__}",
        n,
        seconds,
        n / seconds,
        None,
        sum(1 for r in served if r.waiting_time <= TARGET_WAIT) / n if n else 1.0,
        reneged / n if n else 0.0,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="frontdesk bench-sim", description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=1_000_000, help="callers for the simulator (default 10^6)")
    p.add_argument("--ciw-calls", type=int, help="callers for Ciw (default: the same, at most 200000)")
    p.add_argument("--agents", type=int, default=50)
    p.add_argument("--load", type=float, default=0.9, help="offered load per agent (default 0.9)")
    p.add_argument("--aht", type=float, default=180.0, help="mean handle time, seconds")
    p.add_argument("--patience", type=float, default=120.0, help="callers' mean patience, seconds")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--jobs", "-j", type=int, default=1, help="split the calls into replications run in parallel")
    p.add_argument("--no-ciw", action="store_true", help="skip Ciw")
    p.add_argument(
        "--overloaded-calls", type=int, help="callers for the overloaded model (default: as --calls, at most 200000)"
    )
    p.add_argument("--no-overloaded", action="store_true", help="skip the overloaded model")
    p.add_argument("--no-engine", action="store_true", help="skip the engine-alone measures")
    p.add_argument(
        "--line-lengths",
        default=",".join(str(n) for n in LINE_LENGTHS),
        help="callers in line for the engine's cost table, comma-separated ('' for none; default %(default)s)",
    )
    p.add_argument("--quick", action="store_true", help="20000 calls each (a smoke run)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _lengths(text: str) -> list[int] | None:
    try:
        lengths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        return None
    return lengths if all(n >= 0 for n in lengths) else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(cli_args(argv))
    calls = 20_000 if args.quick else args.calls
    ciw_calls = 20_000 if args.quick else (args.ciw_calls or min(calls, 200_000))
    over_calls = 20_000 if args.quick else (args.overloaded_calls or min(calls, 200_000))
    engine_calls = 20_000 if args.quick else min(calls, ENGINE_CALLS)
    rounds = 2_000 if args.quick else LINE_ROUNDS
    lengths = _lengths(args.line_lengths)
    if calls < 1 or args.agents < 1 or not 0 < args.load or args.aht <= 0 or args.patience <= 0 or over_calls < 1:
        return refuse("bench-sim", "need --calls >= 1, --agents >= 1, --load > 0, --aht > 0, --patience > 0")
    if lengths is None:
        return refuse("bench-sim", f"--line-lengths: comma-separated whole numbers >= 0, not {args.line_lengths!r}")
    jobs = max(1, args.jobs)
    rate = args.load * args.agents / args.aht
    erlang = evaluate("a", rate, args.aht, args.agents, patience=args.patience, target_wait=TARGET_WAIT)
    model = f"M/M/{args.agents}+M, load {args.load:g}, AHT {args.aht:g} s, patience {args.patience:g} s"
    o_agents, o_load, o_patience, o_line = OVERLOAD
    o_model = (
        f"M/M/{o_agents}+M, load {o_load:g}, AHT {args.aht:g} s, patience {o_patience:g} s, line capped at {o_line:,}"
    )
    say = (lambda text: None) if args.json else (lambda text: print(text, flush=True))
    say(f"bench-sim: {model}; Erlang A: service level {erlang.service_level:.1%}, abandoned {erlang.p_abandon:.1%}")
    say(f"queue engine and simulator loop: {native_status()}")
    results = [run_frontdesk(calls, args.agents, args.load, args.aht, args.patience, args.seed, jobs)]
    if not args.json:
        _print(results[-1])
    if not args.no_ciw:
        try:
            results.append(run_ciw(ciw_calls, args.agents, args.load, args.aht, args.patience, args.seed))
        except ImportError:
            log("bench-sim: Ciw is not installed (pip install -e '.[test]'); skipped")
        else:
            if not args.json:
                _print(results[-1])
    ours = results[0]
    million = 1_000_000 / ours.calls_per_second
    to_ciw = ratio(ours.calls_per_second, results[1].calls_per_second if len(results) > 1 else None)
    say(f"10^6 calls would take {million:.1f} s (goal {GOAL_SECONDS:g} s: {_verdict(million <= GOAL_SECONDS)})")
    if to_ciw is not None:
        say(f"frontdesk / Ciw speed: {to_ciw:.2f}")
    overloaded: BenchResult | None = None
    to_steady: float | None = None
    if not args.no_overloaded:
        say(f"overloaded: {o_model}")
        overloaded = run_frontdesk(over_calls, o_agents, o_load, args.aht, o_patience, args.seed, jobs, o_line)
        if not args.json:
            _print(overloaded)
        to_steady = ratio(overloaded.calls_per_second, ours.calls_per_second)
        assert to_steady is not None
        met = _verdict(to_steady >= OVERLOAD_GOAL)
        say(f"overloaded / steady speed: {to_steady:.2f} (goal >= {OVERLOAD_GOAL:g}: {met})")
    engine: dict[str, dict] = {}
    if not args.no_engine:
        engine["steady"] = engine_alone(engine_calls, args.agents, args.load, args.aht, args.patience, args.seed)
        if not args.no_overloaded:
            engine["overloaded"] = engine_alone(engine_calls, o_agents, o_load, args.aht, o_patience, args.seed, o_line)
        say("engine alone, one process (a run's events replayed to a fresh engine):")
        for name, e in engine.items():
            say(
                f"  {name:<11} {e['events_per_second']:>9,.0f} events/s, {e['decisions_per_second']:>9,.0f} decisions/s"
                f" ({e['events']:,} events)"
            )
    table = []
    if lengths:
        say(f"engine cost vs line length ({o_agents} agents all busy; {rounds:,} rounds of 6 events):")
        base: float | None = None
        for n in lengths:
            cost = line_cost(n, rounds, agents=o_agents, seed=args.seed)
            base = base or cost.events_per_second
            row = {"waiting": n, "events_per_second": cost.events_per_second, "to_first": cost.events_per_second / base}
            table.append(row)
            say(f"  {n:>7,} in line: {cost.events_per_second:>9,.0f} events/s ({row['to_first']:.2f} of the first row)")
    if args.json:
        print(
            json.dumps(
                {
                    "model": model,
                    "native": native_status(),
                    "erlang_a": {"service_level": erlang.service_level, "p_abandon": erlang.p_abandon},
                    "results": [asdict(r) for r in results],
                    "seconds_per_million_calls": million,
                    "goal_seconds": GOAL_SECONDS,
                    "goal_met": million <= GOAL_SECONDS,
                    "ratio_to_ciw": to_ciw,
                    "overloaded": None
                    if overloaded is None
                    else {
                        "model": o_model,
                        "result": asdict(overloaded),
                        "ratio_to_steady": to_steady,
                        "goal": OVERLOAD_GOAL,
                    },
                    "engine": engine,
                    "line_cost": table,
                },
                indent=1,
            )
        )
    return 0


def _verdict(met: bool) -> str:
    return "met" if met else "missed"


def _print(r: BenchResult) -> None:
    events = f", {r.events_per_second:,.0f} events/s" if r.events_per_second else ""
    line = ""
    if r.mean_line is not None and r.longest_line is not None:
        line = f"; line {r.mean_line:,.0f} on average, {r.longest_line:,} at most"
    print(
        f"  {r.simulator:<12} {r.calls:>9,} calls in {r.seconds:7.2f} s: {r.calls_per_second:>9,.0f} calls/s{events}; "
        f"service level {r.service_level:.1%}, abandoned {r.abandon_rate:.1%}{line}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
