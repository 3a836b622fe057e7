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

Sizing (``--sizing``, and after ``--staffing``): the cluster nodes the
busiest block needs. Per block, the SIP calls begun per second (callers at
the block's busiest arrival step, redials, agents' and callback legs), the
concurrent media streams (the longest line plus two streams per call
talking) and the engine events per second; SIP and media share a node's
capacity, while every node's replica applies every event, so the engine's
share is paid on each node and more nodes do not lower it. Headroom and
spare nodes come on top. docs/sim.md ("Sizing the cluster") gives the
formula and where the default capacities were measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from ivr.settings.base import read_yaml
from queueing.model import Model
from sim.erlang import ErlangError, Metrics, agents_needed
from sim.plan import Callbacks, Plan, Source, SurgeCommand, Team, agent_specs
from sim.scenario_schema import SizingSettings
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


# ------------------------------------------------------------------ sizing


@dataclass(frozen=True, slots=True)
class BlockLoad:
    """What one block asks of the nodes at its peak (cluster-wide figures)."""

    block: int
    calls_per_s: (
        float  # SIP calls begun per second: callers (at the block's busiest step), redials, agents' and callback legs
    )
    streams: float  # concurrent media streams: the longest line plus two per call talking (caller's and agent's leg)
    events_per_s: float  # queue engine events per second, applied by every node's replica


@dataclass(frozen=True, slots=True)
class Sizing:
    """Nodes for the day's most demanding block (docs/sim.md, "Sizing the cluster")."""

    capacities: SizingSettings
    blocks: tuple[BlockLoad, ...]
    peak: BlockLoad  # the block that needs the most nodes
    events_per_call: float
    nodes_for_load: int | None  # None: one log's events alone fill a node (split the queues over several logs)
    nodes: int | None  # with the spare nodes
    limit: str  # "SIP", "media", "engine" or "none" (no traffic)
    shares: Mapping[str, float]  # at the peak block on nodes_for_load nodes: share of one node's capacity used
    logs_needed: int  # logs (groups of queues with their own Redis stream) for the engine's share to fit
    kamailio_workers: int


LIMITS = ("SIP", "media", "engine")


def _ceil(x: float) -> int:
    """``math.ceil`` that does not turn 2.0000000000000004 into 3."""
    return math.ceil(round(x, 9))


def size_blocks(blocks: Sequence[BlockLoad], caps: SizingSettings, events_per_call: float) -> Sizing:
    """Nodes for the most demanding block: SIP and media share each node's capacity, the engine runs on every node.

    On ``n`` nodes one node carries ``calls/s / (n · sip) + streams / (n · media) + events/s / engine`` of its
    capacity, and may carry ``1 - headroom``: so ``n = ceil((calls/s / sip + streams / media) / (1 - headroom -
    events/s / engine))``, at least 1, plus ``spare_nodes``.
    """
    usable = 1.0 - caps.headroom
    best: tuple[int, float, BlockLoad] | None = None
    impossible: BlockLoad | None = None
    for b in blocks:
        work = b.calls_per_s / caps.sip_calls_per_node + b.streams / caps.media_streams_per_node
        room = usable - b.events_per_s / caps.engine_events_per_replica
        if room <= 0:
            if impossible is None or b.events_per_s > impossible.events_per_s:
                impossible = b
            continue
        n = max(1, _ceil(work / room))
        if best is None or (n, work) > (best[0], best[1]):
            best = (n, work, b)
    top_events = max((b.events_per_s for b in blocks), default=0.0)
    logs = max(1, _ceil(top_events / (caps.engine_events_per_replica * usable)))
    top_calls = max((b.calls_per_s for b in blocks), default=0.0)
    workers = max(1, _ceil(top_calls / (caps.kamailio_calls_per_worker * usable)))
    n_load: int | None
    if impossible is not None:
        n_load, peak = None, impossible
    elif best is None:  # no blocks at all
        n_load, peak = 1, BlockLoad(0, 0.0, 0.0, 0.0)
    else:
        n_load, _, peak = best
    on = n_load or 1
    shares = {
        "SIP": peak.calls_per_s / caps.sip_calls_per_node / on,
        "media": peak.streams / caps.media_streams_per_node / on,
        "engine": peak.events_per_s / caps.engine_events_per_replica,
    }
    if n_load is None:
        limit = "engine"
    elif not any(shares.values()):
        limit = "none"
    else:
        limit = max(LIMITS, key=lambda k: shares[k])
    return Sizing(
        capacities=caps,
        blocks=tuple(blocks),
        peak=peak,
        events_per_call=events_per_call,
        nodes_for_load=n_load,
        nodes=None if n_load is None else n_load + caps.spare_nodes,
        limit=limit,
        shares=MappingProxyType(shares),
        logs_needed=logs,
        kamailio_workers=workers,
    )


def peak_arrival_rates(plan: Plan) -> list[float]:
    """Per block, the highest total arrival rate (calls/s reaching the IVR, every source) at any instant of it."""
    b = plan.block_seconds
    out = []
    for i in range(plan.blocks):
        lo, hi = i * b, (i + 1) * b
        instants = {lo} | {s.start for src in plan.sources for s in src.steps if lo < s.start < hi}
        out.append(max(sum(_rate_at(src, t) for src in plan.sources) for t in instants))
    return out


def _rate_at(source: Source, t: float) -> float:
    return sum(s.rate for s in source.steps if s.start <= t < s.end)


def block_loads(summary: Summary, events_per_call: float | None = None) -> tuple[list[BlockLoad], float]:
    """Each block's load from the plan's arrival steps and the replications' means; and the events per call used.

    ``events_per_call`` defaults to the simulation's own: engine events over calls, all runs.
    """
    plan = summary.plan
    runs = summary.runs
    calls = sum(r.calls for r in runs)
    if events_per_call is None:
        events_per_call = sum(r.events for r in runs) / calls if calls else 0.0
    queues = [q.name for q in plan.model.queues]
    talk = {q: plan.handle_time[q].expected for q in queues}
    mix_talk = sum(share * talk[q] for q, share in plan.queue_mix)
    b = plan.block_seconds
    out = []
    for i, arrival in enumerate(peak_arrival_rates(plan)):

        def mean(key: str, i: int = i) -> float:
            return sum(r.blocks[i].get(key, 0.0) for r in runs) / len(runs)

        callers = arrival + mean("redials") / b
        served = mean("callbacks_served")
        legs = mean("answered") + sum(mean(f"{q}.ring_no_answer") for q in queues) + 2 * served
        legs += mean("callback_no_answer")
        talking = (sum(mean(f"{q}.answered") * talk[q] for q in queues) + served * mix_talk) / b
        out.append(
            BlockLoad(
                block=i,
                calls_per_s=callers + legs / b,
                streams=mean("queue_length_max") + 2 * talking,
                events_per_s=events_per_call * callers,
            )
        )
    return out, events_per_call


def sizing(summary: Summary, caps: SizingSettings) -> Sizing:
    """Nodes for a simulated day (``summary``: the scenario's replications, or the staffing roster's)."""
    loads, per_call = block_loads(summary, caps.events_per_call)
    return size_blocks(loads, caps, per_call)


SIZING_FLAGS = (
    "headroom",
    "spare_nodes",
    "sip_calls_per_node",
    "media_streams_per_node",
    "engine_events_per_replica",
    "kamailio_calls_per_worker",
    "events_per_call",
)


class SizingError(Exception):
    """A capacity given on the command line is out of range (the message names the option and the field)."""


def sizing_settings(scenario: str | Path, args: argparse.Namespace | None = None) -> SizingSettings:
    """The scenario's ``sizing`` section with the command line's capacities over it.

    Call it on a scenario that loaded: its own section was checked then (with its line) and cannot fail here.
    """
    path = Path(scenario)
    _, data = read_yaml(path.read_text(encoding="utf-8"), str(path), SizingError)
    fields = dict(data.get("sizing") or {}) if isinstance(data, dict) else {}
    given = {k: getattr(args, k) for k in SIZING_FLAGS if args is not None and getattr(args, k, None) is not None}
    try:
        return SizingSettings.model_validate({**fields, **given})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            where = f"--{field.replace('_', '-')} (sizing.{field})" if field in given else f"{path}: sizing.{field}"
            problems.append(f"{where}: {err['msg']}")
        raise SizingError("sim: " + "; ".join(problems)) from None


def sizing_json(result: Sizing, plan: Plan) -> dict[str, Any]:
    return {
        "capacities": result.capacities.model_dump(),
        "events_per_call": result.events_per_call,
        "nodes_for_load": result.nodes_for_load,
        "nodes": result.nodes,
        "limit": result.limit,
        "shares": dict(result.shares),
        "logs_needed": result.logs_needed,
        "kamailio_workers": result.kamailio_workers,
        "peak_block": {"block": result.peak.block, "start": plan.block_label(result.peak.block)},
        "blocks": [
            {
                "block": b.block,
                "start": plan.block_label(b.block),
                "calls_per_s": b.calls_per_s,
                "streams": b.streams,
                "events_per_s": b.events_per_s,
            }
            for b in result.blocks
        ],
    }
