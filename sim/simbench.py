"""Simulator speed: simulated calls per second of wall time, ``frontdesk bench-sim`` (or ``python -m sim.simbench``).

One queue, N agents, Poisson callers, exponential handle times and
exponential patience (M/M/N+M, the Erlang A model): the simulator
(``sim.simulation.Simulation`` driving ``queueing.engine.Engine``) runs
``--calls`` callers, and Ciw (https://ciw.readthedocs.io, an independent
discrete-event simulator from PyPI) runs the same model in the same process
for the ratio. Both answer at once (no ring delay, no wrap-up); the simulator
still runs every policy step the live server runs (tiers, EWT announcements,
limits, timers), which Ciw has no notion of.

Printed: calls, wall seconds, calls per second and engine events per second,
the service level (answered within 20 s over answered and abandoned) and the
abandonment of each, beside Erlang A; and whether 10^6 calls fit in the goal
(30 s). ``--jobs N`` splits the simulator's calls into N replications run
side by side in processes (the wall time then covers them all, process
start included). ``--json`` prints the same as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from dataclasses import asdict, dataclass

from sim.benchkit import cli_args, log, ratio, refuse
from sim.erlang import evaluate
from sim.plan import single_queue_plan
from sim.simulation import Simulation

GOAL_SECONDS = 30.0  # for 10^6 calls (issue 7)
TARGET_WAIT = 20.0


@dataclass(frozen=True)
class BenchResult:
    simulator: str
    calls: int
    seconds: float
    calls_per_second: float
    events_per_second: float | None
    service_level: float
    abandon_rate: float


def _one_run(args: tuple[int, int, float, float, float, int]) -> tuple[int, int, float, int, int, int]:
    """One replication: (calls, engine events, seconds, answered within T, decided, abandoned)."""
    calls, agents, load, aht, patience, seed = args
    rate = load * agents / aht
    hours = calls / rate / 3600
    plan = single_queue_plan(
        arrival_rate=rate, aht=aht, agents=agents, patience=patience, hours=hours, block_seconds=3600, seed=seed
    ).with_changes(sample_every=3600.0)
    sim = Simulation(plan, seed)
    started = time.perf_counter()
    result = sim.run()
    seconds = time.perf_counter() - started
    stats = sim.engine.stats["general"]
    decided = stats.answered + stats.abandoned + stats.overflowed_total - stats.abandoned_short
    return result.calls, result.events, seconds, stats.answered_within_t, decided, stats.abandoned


def run_frontdesk(
    calls: int, agents: int, load: float, aht: float, patience: float, seed: int, jobs: int = 1
) -> BenchResult:
    """The calls in ``jobs`` replications (seeds seed, seed+1, ...) side by side in processes; wall time of all."""
    parts = [(calls // jobs + (i < calls % jobs), agents, load, aht, patience, seed + i) for i in range(jobs)]
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
    )


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
    p.add_argument("--quick", action="store_true", help="20000 calls each (a smoke run)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(cli_args(argv))
    calls = 20_000 if args.quick else args.calls
    ciw_calls = 20_000 if args.quick else (args.ciw_calls or min(calls, 200_000))
    if calls < 1 or args.agents < 1 or not 0 < args.load or args.aht <= 0 or args.patience <= 0:
        return refuse("bench-sim", "need --calls >= 1, --agents >= 1, --load > 0, --aht > 0, --patience > 0")
    rate = args.load * args.agents / args.aht
    erlang = evaluate("a", rate, args.aht, args.agents, patience=args.patience, target_wait=TARGET_WAIT)
    model = f"M/M/{args.agents}+M, load {args.load:g}, AHT {args.aht:g} s, patience {args.patience:g} s"
    if not args.json:
        print(
            f"bench-sim: {model}; Erlang A: service level {erlang.service_level:.1%}, abandoned {erlang.p_abandon:.1%}",
            flush=True,
        )
    results = [run_frontdesk(calls, args.agents, args.load, args.aht, args.patience, args.seed, max(1, args.jobs))]
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
    if args.json:
        print(
            json.dumps(
                {
                    "model": model,
                    "erlang_a": {"service_level": erlang.service_level, "p_abandon": erlang.p_abandon},
                    "results": [asdict(r) for r in results],
                    "seconds_per_million_calls": million,
                    "goal_seconds": GOAL_SECONDS,
                    "goal_met": million <= GOAL_SECONDS,
                    "ratio_to_ciw": to_ciw,
                },
                indent=1,
            )
        )
    else:
        verdict = "met" if million <= GOAL_SECONDS else "missed"
        print(f"10^6 calls would take {million:.1f} s (goal {GOAL_SECONDS:g} s: {verdict})")
        if to_ciw is not None:
            print(f"frontdesk / Ciw speed: {to_ciw:.2f}")
    return 0


def _print(r: BenchResult) -> None:
    events = f", {r.events_per_second:,.0f} events/s" if r.events_per_second else ""
    print(
        f"  {r.simulator:<12} {r.calls:>9,} calls in {r.seconds:7.2f} s: {r.calls_per_second:>9,.0f} calls/s{events}; "
        f"service level {r.service_level:.1%}, abandoned {r.abandon_rate:.1%}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
