"""Replications: N independent runs of a plan, with means and 95 % confidence intervals.

Run i uses seed ``plan.seed + i``, so a replication set is reproducible and two
variants of a plan (the what-ifs) see the same callers run for run (common
random numbers). The interval is Student's t over the runs:
mean +- t(0.975, n-1) * sd / sqrt(n).
"""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from queueing.model import OVERFLOW_TARGETS
from sim.plan import Plan
from sim.simulation import RunResult, Simulation, derive

# Student's t, 97.5 % quantile, by degrees of freedom (beyond 120: the normal 1.960)
_T975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
    11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086,
    21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042,
    40: 2.021, 50: 2.009, 60: 2.000, 80: 1.990, 100: 1.984, 120: 1.980,
}  # fmt: skip


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (linear in 1/df between table rows)."""
    if df < 1:
        return math.nan
    if df in _T975:
        return _T975[df]
    if df > 120:
        return 1.960 + (1.980 - 1.960) * 120 / df
    lo = max(k for k in _T975 if k < df)
    hi = min(k for k in _T975 if k > df)
    w = (1 / df - 1 / hi) / (1 / lo - 1 / hi)
    return _T975[hi] + w * (_T975[lo] - _T975[hi])


@dataclass(frozen=True, slots=True)
class Estimate:
    mean: float
    ci95: float  # half-width; nan with one run
    low: float  # smallest run
    high: float  # largest run

    @staticmethod
    def of(values: Sequence[float]) -> Estimate:
        n = len(values)
        mean = sum(values) / n
        if n < 2:
            return Estimate(mean, math.nan, mean, mean)
        var = sum((v - mean) ** 2 for v in values) / (n - 1)
        return Estimate(mean, t975(n - 1) * math.sqrt(var / n), min(values), max(values))

    def contains(self, value: float) -> bool:
        return self.mean - self.ci95 <= value <= self.mean + self.ci95


# counts and figures of a block or a day that get a mean and an interval
BLOCK_METRICS = (
    "calls",
    "redials",
    "diverted_notice",
    "diverted_hotkey",
    "diverted_self_service",
    "offered",
    "answered",
    "answered_within_t",
    "abandoned",
    "overflowed",
    *(f"overflow_{t}" for t in OVERFLOW_TARGETS),
    "service_level",
    "asa_s",
    "abandon_rate",
    "queue_length_mean",
    "queue_length_max",
    "agents_mean",
    "agents_planned",
    "agents_rostered",
    "capacity",
    "reserves_online",
    "surge_share",
    "surge_changes",
    "callbacks_booked",
    "callbacks_served",
    "callbacks_expired",
    "callbacks_failed",
    "callback_no_answer",
    "promises_missed",
    "callbacks_owed",
)
TOTAL_METRICS = (
    "calls",
    "redials",
    "diverted",
    "offered",
    "answered",
    "abandoned",
    "overflowed",
    *(f"overflow_{t}" for t in OVERFLOW_TARGETS),
    "service_level",
    "asa_s",
    "abandon_rate",
    "queue_length_max",
    "surge_share",
    "surge_changes",
    "reserve_activations",
    "callbacks_booked",
    "callbacks_served",
    "callbacks_expired",
    "callbacks_failed",
    "callback_no_answer",
    "callbacks_closed_reached_agent",
    "promises_missed",
    "callbacks_owed_at_end",
    "waiting_at_end",
)


@dataclass(slots=True)
class Summary:
    plan: Plan
    runs: list[RunResult]
    blocks: list[dict[str, Estimate]]  # per block, per metric
    totals: dict[str, Estimate]  # the day after the warm-up blocks
    queues: dict[str, dict[str, Estimate]]  # per queue totals
    seconds: float  # wall time of the runs
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def replications(self) -> int:
        return len(self.runs)


def run_totals(run: RunResult, plan: Plan) -> dict[str, float]:
    """One run's day (blocks after the warm-up) as counts and rates with the engine's definitions."""
    blocks = run.blocks[plan.warmup_blocks :] or run.blocks
    keys = [k for k in blocks[0] if k not in ("service_level", "asa_s", "abandon_rate", "block")]
    row = {k: sum(b[k] for b in blocks) for k in keys}
    derive(row)
    for q in run.queues:
        sub = {k: row[f"{q}.{k}"] for k in ("answered", "abandoned", "overflowed", "abandoned_short", "offered")}
        sub["answered_within_t"] = row[f"{q}.answered_within_t"]
        sub["answer_wait_total"] = row[f"{q}.answer_wait_total"]
        derive(sub)
        for k in ("service_level", "asa_s", "abandon_rate"):
            row[f"{q}.{k}"] = sub[k]
    row["diverted"] = row["diverted_notice"] + row["diverted_hotkey"] + row["diverted_self_service"]
    row["queue_length_max"] = max(b["queue_length_max"] for b in blocks)
    row["surge_share"] = sum(b["surge_share"] for b in blocks) / len(blocks)
    row["callbacks_owed_at_end"] = float(run.owed_at_end)
    row["waiting_at_end"] = float(run.waiting_at_end)
    return row


def summarize(plan: Plan, runs: list[RunResult], seconds: float = 0.0) -> Summary:
    handle = plan.mean_handle() + plan.ring_delay.expected
    for run in runs:
        for b in run.blocks:
            b["capacity"] = b["agents_mean"] * plan.block_seconds / handle if handle > 0 else 0.0
    blocks = [
        {m: Estimate.of([run.blocks[i][m] for run in runs]) for m in BLOCK_METRICS} for i in range(len(runs[0].blocks))
    ]
    totals_by_run = [run_totals(run, plan) for run in runs]
    totals = {m: Estimate.of([t[m] for t in totals_by_run]) for m in TOTAL_METRICS}
    queues = {
        q: {
            m: Estimate.of([t[f"{q}.{m}"] for t in totals_by_run])
            for m in ("offered", "answered", "abandoned", "overflowed", "service_level", "asa_s", "abandon_rate")
        }
        for q in runs[0].queues
    }
    return Summary(plan, runs, blocks, totals, queues, seconds)


Progress = Callable[[int, int], None]


def replicate(
    plan: Plan,
    replications: int | None = None,
    *,
    seed: int | None = None,
    progress: Progress | None = None,
    jobs: int = 1,
) -> Summary:
    """Run the plan ``replications`` times (seeds ``seed``, ``seed`` + 1, ...) and summarize."""
    n = replications or plan.replications
    first = plan.seed if seed is None else seed
    seeds = [first + i for i in range(n)]
    started = time.perf_counter()
    runs: list[RunResult] = []
    if progress:
        progress(0, n)
    if jobs > 1 and n > 1:
        ctx = multiprocessing.get_context("fork")  # the plan reaches the workers by fork, not by pickling
        global _PLAN
        _PLAN = plan
        try:
            with ctx.Pool(min(jobs, n)) as pool:
                for run in pool.imap(_run_seed, seeds):
                    runs.append(run)
                    if progress:
                        progress(len(runs), n)
        finally:
            _PLAN = None
    else:
        for s in seeds:
            runs.append(Simulation(plan, s).run())
            if progress:
                progress(len(runs), n)
    return summarize(plan, runs, time.perf_counter() - started)


_PLAN: Plan | None = None


def _run_seed(seed: int) -> RunResult:
    assert _PLAN is not None
    return Simulation(_PLAN, seed).run()
