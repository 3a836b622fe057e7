"""The discrete-event simulator: the very same policy engine (queueing/) on a virtual clock.

Theory of operation
-------------------
A :class:`Simulation` runs one :class:`sim.plan.Plan` with its own
``random.Random(seed)``. Its clock jumps from event to event (a heap of
``(time, seq, kind, payload)``; ``seq`` keeps ties in the order they were
scheduled). It plays the part of everything around the engine that the live
router (``ivr/calls/queues.py``) connects to the engine, and feeds the engine
exactly the events the live server feeds it:

=========================  =========================================================
live server                simulator
=========================  =========================================================
IVR queue node             ``CallArrived`` (tier and urgent mark from the caller's
                           group, as ``ivr.settings.queues.tier_of``)
agent's phone answers      ``AgentAnswered`` ``ring_delay`` after ``RingAgent``,
                           unless the ring was cancelled meanwhile (stale rings are
                           dropped, as the live server drops late answers)
talk ends                  ``CallEnded`` a drawn handle time after ``Connect``
caller hangs up on hold    ``CallerHungUp`` when the caller's patience runs out
``loop.call_at``           ``TimerFired(kind="tick")`` at ``engine.next_timer()``
agent logs in/out          ``AgentLoggedIn`` / ``AgentLoggedOut`` per roster block
                           (a busy agent finishes the call first: ``AgentNotReady``)
callback dispatcher        ``AgentNotReady(reason="callback")`` and ``AgentReady``
ops / daily windows        ``SurgeSwitch`` (manual or schedule)
=========================  =========================================================

Everything is counted by the engine's own ``stats`` (the live metrics'
definitions, docs/queueing.md); per block the simulator takes the
difference of the counters at the block's edges, as ``increase()`` does over
a window. What the engine does not see (callers who left at the IVR,
redials, the callback list) the simulator counts itself.

The decisions are carried out as the live server does: ``Overflow`` to
``callback`` or ``message`` books a callback with the scenario's take-up,
``peak_shaving`` and declined offers may redial, ``PauseOutbound`` pauses the
callback dispatcher (R15).

This module is the loop, the blocks and the samples; the people around the
engine are in their own modules, each seeing the loop as a ``sim.world.World``:
the callers and the agents' phones (``sim/customers.py``), the roster and the
reserves (``sim/roster.py``), the callback desk (``sim/callbacks.py``).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from queueing.agents import AgentState
from queueing.engine import Engine
from queueing.events import (
    CancelRing,
    Connect,
    Decision,
    Event,
    Overflow,
    PauseOutbound,
    ResumeOutbound,
    RingAgent,
    SetTimer,
    SurgeChanged,
    SurgeSwitch,
    TimerFired,
)
from queueing.model import OVERFLOW_TARGETS
from sim.callbacks import Booking, SimulatedDesk
from sim.customers import Customers
from sim.plan import Plan, ScriptedCall, SurgeCommand
from sim.roster import Roster
from sim.world import Draws, Kind

Trace = list[tuple[Event, list[Decision]]]


class TraceSink(Protocol):
    """Where ``Simulation`` puts every (event, decisions) of the engine: a ``Trace`` list, or anything that appends.

    A Protocol, not ``list``: compiled code appends to a real list directly, past an ``append`` a subclass overrides.
    """

    def append(self, item: tuple[Event, list[Decision]], /) -> None: ...


@dataclass(slots=True)
class Sample:
    """The state every ``sample_every`` seconds: for the time-averages and the plots."""

    t: float
    waiting: int
    agents: int
    surge: bool
    owed: int


@dataclass(slots=True)
class RunResult:
    """One replication: a row of counters per block, the samples, and the state at the end."""

    seed: int
    blocks: list[dict[str, float]]
    samples: list[Sample]
    surge_changes: list[tuple[float, bool, str]]
    waiting_at_end: int
    owed_at_end: int
    events: int
    calls: int
    queues: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


class Simulation:
    def __init__(
        self,
        plan: Plan,
        seed: int | None = None,
        *,
        trace: TraceSink | None = None,
        script: list[ScriptedCall] | None = None,
    ) -> None:
        """``trace`` collects every (event, decisions) of the engine; ``script`` replaces the plan's arrivals."""
        self.plan = plan
        self.script = script
        self.seed = plan.seed if seed is None else seed
        self.rng = random.Random(self.seed)
        draws = Draws.for_run(plan, self.rng)  # seeded before anything else draws from rng
        self.engine = Engine(plan.model)
        self.trace = trace
        self.now = 0.0
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self._events = 0
        # counters the engine does not keep
        self.counts: dict[str, float] = dict.fromkeys(SIM_COUNTERS, 0.0)
        # the people around the engine
        jobs: dict[str, Booking] = {}  # agent -> callback in progress
        self.roster = Roster(self, jobs)
        self.desk = SimulatedDesk(self, self.roster, jobs, draws)
        self.customers = Customers(self, self.desk, draws)
        # blocks and samples
        self.samples: list[Sample] = []
        self.surge_log: list[tuple[float, bool, str]] = []
        self.blocks: list[dict[str, float]] = []
        self._mark: dict[str, float] | None = None  # the counters at the start of the block
        self._block_samples: list[Sample] = []
        self._block = 0

    # ------------------------------------------------------------------ running

    def run(self) -> RunResult:
        plan = self.plan
        customers, desk, roster = self.customers, self.desk, self.roster
        end = plan.duration
        self.push(0.0, Kind.BLOCK, 0)
        for cmd in plan.surge_commands:
            if 0 <= cmd.at < end:
                self.push(cmd.at, Kind.SURGE, cmd)
        if self.script is not None:
            for call in self.script:
                self.push(call.at, Kind.SCRIPT, call)
        else:
            for i in range(len(plan.sources)):
                customers.schedule_arrival(i, 0.0)
        self.push(plan.sample_every, Kind.SAMPLE, None)
        for b in range(1, plan.blocks):
            self.push(b * plan.block_seconds, Kind.BLOCK, b)
        self.push(end, Kind.STOP, None)
        heap = self._heap
        engine = self.engine
        handlers: dict[Kind, Callable[[Any], None]] = {
            Kind.ARRIVAL: customers.on_arrival,
            Kind.ANSWER: customers.on_answer,
            Kind.END: customers.on_end,
            Kind.HANGUP: customers.on_hangup,
            Kind.BLOCK: self._on_block,
            Kind.SAMPLE: self._on_sample,
            Kind.REDIAL: customers.on_redial,
            Kind.CB_ROUND: desk.on_round,
            Kind.CB_END: desk.on_end,
            Kind.SURGE: self._on_surge,
            Kind.RESERVE: roster.on_reserve,
            Kind.SCRIPT: customers.on_script,
        }
        by_index = [handlers[k] for k in sorted(handlers)]  # a list is the quickest lookup in the hot loop
        pop = heapq.heappop
        next_timer = engine.next_timer
        while heap:
            t = heap[0][0]
            due = next_timer()
            if due is not None and due <= t:
                self.now = due
                self.feed(TimerFired(kind="tick", id="", now=due))
                continue
            t, _, kind, payload = pop(heap)
            self.now = t
            if kind == Kind.STOP:
                self._close_block()
                break
            by_index[kind](payload)
        waiting = engine.waiting
        return RunResult(
            seed=self.seed,
            blocks=self.blocks,
            samples=self.samples,
            surge_changes=self.surge_log,
            waiting_at_end=waiting,
            owed_at_end=desk.owed_count,
            events=self._events,
            calls=customers.calls,
            queues=tuple(q.name for q in plan.model.queues),
        )

    def push(self, t: float, kind: Kind, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, payload))

    # ------------------------------------------------------------ the engine

    def feed(self, event: Event) -> None:
        out = self.engine.handle(event)
        self._events += 1
        if self.trace is not None:
            self.trace.append((event, out))
        customers = self.customers
        for d in out:
            t = type(d)
            if t is SetTimer:
                continue  # next_timer() says when
            if t is RingAgent:
                customers.ring(d)  # type: ignore[arg-type]
            elif t is Connect:
                customers.connect(d)  # type: ignore[arg-type]
            elif t is CancelRing:
                customers.rings.pop((d.agent, d.call), None)  # type: ignore[union-attr]
            elif t is Overflow:
                customers.overflow(d)  # type: ignore[arg-type]
            elif t is SurgeChanged:
                self.surge_log.append((self.now, d.on, d.cause))  # type: ignore[union-attr]
            elif t is PauseOutbound:
                self.desk.pause()
            elif t is ResumeOutbound:
                self.desk.resume()
            # PlayAnnouncement: callers hear it and hold on
        roster = self.roster
        if (roster.leaving or roster.returning) and not roster.settling:
            roster.settle_leavers()

    def _on_surge(self, cmd: SurgeCommand) -> None:
        self.feed(SurgeSwitch(on=cmd.on, cause=cmd.cause, now=self.now))

    # ------------------------------------------------------- blocks and samples

    def _on_block(self, block: int) -> None:
        if block > 0:
            self._close_block()
        self._block = block
        self.roster.on_block(block)

    def _on_sample(self, _: None) -> None:
        engine = self.engine
        logged_in = sum(1 for a in engine.agents.values() if a.state is not AgentState.LOGGED_OUT)
        sample = Sample(self.now, engine.waiting, logged_in, engine.surge, self.desk.owed_count)
        self.samples.append(sample)
        self._block_samples.append(sample)
        if self.plan.reserves:
            snap = engine.snapshot()
            ewt_now = max((q.ewt for q in snap.queues.values() if q.waiting), default=0.0)
            self.roster.check_reserves(ewt_now, max((q.waiting for q in snap.queues.values()), default=0))
        if self.now + self.plan.sample_every <= self.plan.duration:
            self.push(self.now + self.plan.sample_every, Kind.SAMPLE, None)

    def block_sl_so_far(self) -> tuple[float, float]:
        """(decided, answered within T) of the block so far."""
        c = self.counters()
        m = self._mark or dict.fromkeys(c, 0.0)
        decided = c["answered"] + c["abandoned"] + c["overflowed"] - c["abandoned_short"]
        decided -= m["answered"] + m["abandoned"] + m["overflowed"] - m["abandoned_short"]
        return decided, c["answered_within_t"] - m["answered_within_t"]

    def counters(self) -> dict[str, float]:
        """Cumulative counters: the engine's (summed over queues, and per queue) and the simulator's own."""
        out: dict[str, float] = dict(self.counts)
        totals = dict.fromkeys(ENGINE_COUNTERS, 0.0)
        for name, s in self.engine.stats.items():
            row = {
                "offered": s.offered,
                "answered": s.answered,
                "answered_within_t": s.answered_within_t,
                "abandoned": s.abandoned,
                "abandoned_short": s.abandoned_short,
                "answer_wait_total": s.answer_wait_total,
                "ring_no_answer": s.ring_no_answer,
                "overflowed": s.overflowed_total,
            }
            for target in OVERFLOW_TARGETS:
                row[f"overflow_{target}"] = s.overflowed.get(target, 0)
            for k, v in row.items():
                totals[k] += v
                out[f"{name}.{k}"] = float(v)
        out.update(totals)
        out["surge_changes"] = float(sum(self.engine.surge_changes.values()))
        return out

    def _close_block(self) -> None:
        now_counts = self.counters()
        prev = self._mark or {}
        block = {k: v - prev.get(k, 0.0) for k, v in now_counts.items()}
        samples = self._block_samples
        plan = self.plan
        block["block"] = float(self._block)
        block["queue_length_mean"] = sum(s.waiting for s in samples) / len(samples) if samples else 0.0
        # exact, not sampled: the engine's running maximum over every instant of the block
        block["queue_length_max"] = float(self.engine.peak_waiting)
        self.engine.reset_peak_waiting()
        block["agents_mean"] = sum(s.agents for s in samples) / len(samples) if samples else 0.0
        block["surge_share"] = sum(s.surge for s in samples) / len(samples) if samples else float(self.engine.surge)
        block["surge_at_end"] = float(self.engine.surge)
        block["callbacks_owed"] = float(self.desk.owed_count)
        block["agents_rostered"] = float(sum(t.rostered[self._block] for t in plan.teams))
        block["agents_planned"] = float(sum(t.on_phones[self._block] for t in plan.teams))
        block["reserves_online"] = float(sum(1 for s in self.roster.reserve_state if s is not None))
        derive(block)
        self.blocks.append(block)
        self._block_samples = []
        self._mark = now_counts


ENGINE_COUNTERS = (
    "offered",
    "answered",
    "answered_within_t",
    "abandoned",
    "abandoned_short",
    "answer_wait_total",
    "ring_no_answer",
    "overflowed",
    *(f"overflow_{t}" for t in OVERFLOW_TARGETS),
)
SIM_COUNTERS = (
    "calls",
    "redials",
    "diverted_notice",
    "diverted_hotkey",
    "diverted_self_service",
    "callbacks_booked",
    "callbacks_served",
    "callbacks_expired",
    "callbacks_failed",
    "callback_no_answer",
    "promises_missed",
    "callbacks_closed_reached_agent",
    "reserve_activations",
)


def derive(row: dict[str, float]) -> None:
    """Rates from counts, with the engine's definitions (docs/queueing.md), in place."""
    decided = row["answered"] + row["abandoned"] + row["overflowed"] - row["abandoned_short"]
    row["service_level"] = row["answered_within_t"] / decided if decided else 1.0
    row["asa_s"] = row["answer_wait_total"] / row["answered"] if row["answered"] else 0.0
    row["abandon_rate"] = row["abandoned"] / row["offered"] if row["offered"] else 0.0


def run_once(plan: Plan, seed: int | None = None) -> RunResult:
    return Simulation(plan, seed).run()
