"""Planning questions on top of the simulator: what-if comparisons of policies, and staffing per block.

What-ifs (``--what-if``) run the same replications (same seeds, so the same
callers) under variants of the plan: the surge switch never on / on all day,
peak shaving off or on, the callback offer off or on; one of each pair is
usually the scenario itself.

Staffing (``--staffing``): for every block and queue, the fewest agents
that meet the queue's service-level target (and an abandonment cap) by
Erlang A (Erlang C when callers never give up), from the expected calls of
the block. Then the simulator runs that roster (one team per queue with the
queue's skills, no reserves) with the scenario's own policies and callers;
every block and queue whose replications are clearly short of its target (the whole 95 % interval below the
service-level target, or above the abandonment cap) gets one more agent, and
it runs again, up to ``rounds`` times.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from types import MappingProxyType

from queueing.model import Model
from sim.erlang import ErlangError, Metrics, agents_needed
from sim.plan import Callbacks, Plan, SurgeCommand, Team, agent_specs
from sim.stats import Estimate, Progress, Summary, replicate

# ------------------------------------------------------------------ what-ifs


def what_if_variants(plan: Plan) -> list[tuple[str, Plan]]:
    """(label, plan) of the scenario and its policy variants, without duplicates."""
    model = plan.model
    surge = model.surge
    no_commands = tuple(c for c in plan.surge_commands if c.cause not in ("manual", "schedule"))
    shaving = surge.peak_shaving_ewt if surge.peak_shaving_ewt is not None else 300.0
    offer = plan.callbacks or Callbacks()

    def with_surge(**changes: object) -> Model:
        return dataclasses.replace(model, surge=dataclasses.replace(surge, **changes))  # type: ignore[arg-type]

    variants: list[tuple[str, Plan]] = [
        ("scenario", plan),
        ("surge off", plan.with_changes(model=with_surge(auto=False), surge_commands=no_commands)),
        ("surge on all day", plan.with_changes(surge_commands=(SurgeCommand(0.0, True, "manual"),))),
    ]
    if surge.peak_shaving_ewt is not None:
        variants.append(("peak shaving off", plan.with_changes(model=with_surge(peak_shaving_ewt=None))))
    else:
        variants.append(
            (f"peak shaving on ({shaving:g} s)", plan.with_changes(model=with_surge(peak_shaving_ewt=shaving)))
        )
    if plan.callbacks is not None and plan.callbacks.take_up > 0:
        variants.append(("callback offer off", plan.with_changes(callbacks=None)))
    else:
        variants.append(
            (f"callback offer on ({offer.take_up:.0%})", plan.with_changes(callbacks=dataclasses.replace(offer)))
        )
    return variants


def what_if(
    plan: Plan, replications: int | None = None, *, progress: Progress | None = None, jobs: int = 1
) -> list[tuple[str, Summary]]:
    """Every variant, with the same seeds."""
    return [
        (label, replicate(variant, replications, progress=progress, jobs=jobs))
        for label, variant in what_if_variants(plan)
    ]


# ------------------------------------------------------------------ staffing


@dataclass(slots=True)
class BlockStaffing:
    block: int
    queue: str
    calls: float  # expected calls joining the queue in the block (no redials)
    erlang_agents: int
    erlang: Metrics | None
    agents: int = 0  # after the simulation rounds
    simulated_service_level: Estimate | None = None
    simulated_abandon_rate: Estimate | None = None

    @property
    def rostered(self) -> int:
        return self.agents


@dataclass(slots=True)
class StaffingResult:
    plan: Plan  # the roster that was simulated last
    rows: list[BlockStaffing]
    rounds: int
    met: bool
    summary: Summary
    shrinkage: float
    max_abandon: float | None = None


def expected_calls(plan: Plan) -> dict[str, list[float]]:
    """Calls expected to join each queue per block: the sources, less the IVR's diversions (not in surge only)."""
    out = {q.name: [0.0] * plan.blocks for q in plan.model.queues}
    b = plan.block_seconds
    always = plan.diversion.when == "always"
    keep = 1 - (plan.diversion.hotkey + plan.diversion.self_service) if always else 1.0
    for source in plan.sources:
        for i in range(plan.blocks):
            n = source.expected_calls(i * b, (i + 1) * b) * (1 - source.notice_resolves) * keep
            if source.queue is not None:
                out[source.queue][i] += n
            else:
                for q, share in plan.queue_mix:
                    out[q][i] += n * share
    return out


def staffing(
    plan: Plan,
    *,
    max_abandon: float | None = 0.05,
    replications: int | None = None,
    rounds: int = 4,
    shrinkage: float | None = None,
    progress: Progress | None = None,
    jobs: int = 1,
) -> StaffingResult:
    shrinkage = plan.shrinkage if shrinkage is None else shrinkage
    calls = expected_calls(plan)
    specs = {q.name: q for q in plan.model.queues}
    handle_extra = plan.ring_delay.expected
    patience = plan.patience.expected
    rows: list[BlockStaffing] = []
    for q, per_block in calls.items():
        spec = specs[q]
        aht = plan.handle_time[q].expected + spec.wrap_up + handle_extra
        for i, n in enumerate(per_block):
            try:
                agents, metrics = agents_needed(
                    n / plan.block_seconds,
                    aht,
                    target_wait=spec.service_level_t,
                    service_level=spec.service_level_target,
                    max_abandon=max_abandon if math.isfinite(patience) else None,
                    patience=patience if math.isfinite(patience) else None,
                )
            except ErlangError:
                agents, metrics = 10_000, None
            rows.append(BlockStaffing(i, q, n, agents, metrics, agents))
    n_reps = replications or plan.replications
    summary: Summary | None = None
    met = False
    current = plan
    done = 0
    for _ in range(rounds):
        done += 1
        current = roster_plan(plan, rows, shrinkage)
        summary = replicate(current, n_reps, progress=progress, jobs=jobs)
        missing = 0
        for row in rows:
            sl, ab = _queue_block(summary, row.queue, row.block)
            row.simulated_service_level, row.simulated_abandon_rate = sl, ab
            if row.calls > 0 and _short(sl, ab, specs[row.queue].service_level_target, max_abandon):
                row.agents += 1
                missing += 1
        if not missing:
            met = True
            break
    assert summary is not None
    if not met:  # the last bump was not simulated: undo it, report what was run
        for row in rows:
            last_sl, last_ab = row.simulated_service_level, row.simulated_abandon_rate
            if last_sl is not None and last_ab is not None and row.calls > 0:
                row.agents -= _short(last_sl, last_ab, specs[row.queue].service_level_target, max_abandon)
    return StaffingResult(current, rows, done, met, summary, shrinkage, max_abandon)


def roster_plan(plan: Plan, rows: list[BlockStaffing], shrinkage: float = 0.0) -> Plan:
    """The plan with one team per queue, staffed as ``rows`` say (agents on the phones), and no reserves."""
    by_queue: dict[str, list[int]] = {}
    for row in rows:
        by_queue.setdefault(row.queue, [0] * plan.blocks)[row.block] = row.agents
    teams = []
    specs = {q.name: q for q in plan.model.queues}
    for q, on in by_queue.items():
        rostered = tuple(math.ceil(n / (1 - shrinkage)) if n else 0 for n in on)
        teams.append(Team(f"staff_{q}", MappingProxyType(dict(specs[q].skills)), rostered, tuple(on)))
    model = dataclasses.replace(plan.model, agents=agent_specs(tuple(teams), ()))
    return plan.with_changes(model=model, teams=tuple(teams), reserves=())


def _short(sl: Estimate, ab: Estimate, target: float, max_abandon: float | None) -> bool:
    """Clearly short of the target: the whole 95 % interval is on the wrong side (the mean, with one run)."""
    sl_ci = 0.0 if math.isnan(sl.ci95) else sl.ci95
    ab_ci = 0.0 if math.isnan(ab.ci95) else ab.ci95
    return sl.mean + sl_ci < target or (max_abandon is not None and ab.mean - ab_ci > max_abandon)


def _queue_block(summary: Summary, queue: str, block: int) -> tuple[Estimate, Estimate]:
    levels, rates = [], []
    for run in summary.runs:
        b = run.blocks[block]
        decided = b[f"{queue}.answered"] + b[f"{queue}.abandoned"] + b[f"{queue}.overflowed"]
        decided -= b[f"{queue}.abandoned_short"]
        levels.append(b[f"{queue}.answered_within_t"] / decided if decided else 1.0)
        offered = b[f"{queue}.offered"]
        rates.append(b[f"{queue}.abandoned"] / offered if offered else 0.0)
    return Estimate.of(levels), Estimate.of(rates)
