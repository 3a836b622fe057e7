"""The discrete-event simulator: the very same policy engine (queueing/) on a virtual clock.

Theory of operation
-------------------
A :class:`Simulation` runs one :class:`sim.plan.Plan` with its own
``random.Random(seed)``. Its clock jumps from event to event (a heap of
``(time, seq, kind, payload)``; ``seq`` keeps ties in the order they were
scheduled). It plays the part of everything around the engine that the live
router (``ivr/calls/queues.py``) connects to the engine, and feeds the engine
exactly the events the live router feeds it:

=========================  =========================================================
live router                simulator
=========================  =========================================================
IVR queue node             ``CallArrived`` (tier and urgent mark from the caller's
                           group, as ``ivr.settings.queues.tier_of``)
agent's phone answers      ``AgentAnswered`` ``ring_delay`` after ``RingAgent``,
                           unless the ring was cancelled meanwhile (stale rings are
                           dropped, as the live router drops late answers)
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

The decisions are carried out as the live router does: ``Overflow`` to
``callback`` or ``message`` books a callback with the scenario's take-up,
``peak_shaving`` and declined offers may redial, ``PauseOutbound`` pauses the
callback dispatcher (R15).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from queueing.engine import AgentState, Engine, QueuedCallState
from queueing.events import (
    AgentAnswered,
    AgentLoggedIn,
    AgentLoggedOut,
    AgentNotReady,
    AgentReady,
    CallArrived,
    CallEnded,
    CallerHungUp,
    CancelRing,
    Connect,
    Decision,
    Event,
    Overflow,
    PauseOutbound,
    ResumeOutbound,
    RingAgent,
    SurgeChanged,
    SurgeSwitch,
    TimerFired,
)
from queueing.ewt import ewt
from sim.plan import Plan, Sampler, ScriptedCall, team_agent_ids

# event kinds, in the heap as small ints
(_ARRIVAL, _ANSWER, _END, _HANGUP, _BLOCK, _SAMPLE, _REDIAL, _CB_ROUND, _CB_END, _SURGE, _RESERVE, _SCRIPT,
 _STOP) = range(13)  # fmt: skip

OVERFLOW_TARGETS = ("callback", "message", "self_service", "peak_shaving")
_END_OF_SHIFT = "end of shift"

Trace = list[tuple[Event, list[Decision]]]


class Caller:
    """One call of one caller (a redial is a new Caller with the same ``person``)."""

    __slots__ = ("arrived", "attempt", "call_id", "gone", "group", "handle", "person", "queue", "talking")

    def __init__(
        self, call_id: str, person: int, attempt: int, queue: str, group: str | None, handle: float, arrived: float
    ) -> None:
        self.call_id = call_id
        self.person = person
        self.attempt = attempt
        self.queue = queue
        self.group = group
        self.handle = handle
        self.arrived = arrived
        self.talking = False
        self.gone = False


@dataclass(slots=True)
class Booking:
    """A callback owed to a caller (docs/callbacks.md): kept in the caller's arrival order."""

    id: int
    person: int
    queue: str
    arrived: float  # the caller's place in the list
    booked: float
    promised_by: float
    missed: bool = False
    attempts: int = 0  # dial attempts made
    due: float = 0.0  # not dialled again before this (a retry after no answer)


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
        trace: Trace | None = None,
        script: list[ScriptedCall] | None = None,
    ) -> None:
        """``trace`` collects every (event, decisions) of the engine; ``script`` replaces the plan's arrivals."""
        self.plan = plan
        self.script = script
        self.seed = plan.seed if seed is None else seed
        self.rng = random.Random(self.seed)
        # separate streams so that what-ifs of one seed share their callers (common random numbers)
        self._r_arrive = random.Random(self.rng.getrandbits(64))
        self._r_caller = random.Random(self.rng.getrandbits(64))
        self._r_agent = random.Random(self.rng.getrandbits(64))
        self._r_choice = random.Random(self.rng.getrandbits(64))
        self.engine = Engine(plan.model)
        self.trace = trace
        self.now = 0.0
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self._events = 0
        self._next_call = 0
        self._next_person = 0
        self.callers: dict[str, Caller] = {}
        self._rings: dict[tuple[str, str], int] = {}
        self._ring_token = 0
        # samplers
        self._handle: dict[str, Sampler] = {q: d.sampler() for q, d in plan.handle_time.items()}
        self._patience = plan.patience.sampler()
        self._ring_delay = plan.ring_delay.sampler()
        self._redial_delay = plan.redial.delay.sampler()
        self._mix = _cumulative(plan.queue_mix)
        self._groups = _cumulative(plan.group_shares)
        self._group_total = sum(s for _, s in plan.group_shares)
        self._tiers = plan.tiers
        self._lowest = {q.name: min(q.tiers, key=lambda t: t.priority).name for q in plan.model.queues}
        self._source_step = [0] * len(plan.sources)
        # agents
        self._team_of: dict[str, str] = {}
        self._pool: dict[str, list[str]] = {}  # logged-out agent ids per team, next to use last
        self._active: dict[str, set[str]] = {}  # logged in and staying, per team
        self._leaving: set[str] = set()  # shift over: log out once free
        self._returning: set[str] = set()  # taken back while leaving: ready again once free
        self._settling = False
        for team in plan.teams:
            self._register_team(team.name, team_agent_ids(team.name, max(team.on_phones, default=0)))
        for reserve in plan.reserves:
            self._register_team(reserve.name, team_agent_ids(reserve.name, reserve.agents))
        self._reserve_state: list[float | None] = [None] * len(plan.reserves)  # online since / None
        self._reserve_pending: list[bool] = [False] * len(plan.reserves)
        # callbacks
        self.paused = False
        self._owed: dict[str, deque[Booking]] = {q.name: deque() for q in plan.model.queues}
        self._open: dict[int, Booking] = {}  # by person
        self._jobs: dict[str, Booking] = {}  # agent -> callback in progress
        self._booking_id = 0
        self._cb_round_armed = False
        # counters the engine does not keep
        self.counts: dict[str, float] = dict.fromkeys(SIM_COUNTERS, 0.0)
        self._per_queue_calls: dict[str, float] = {q.name: 0.0 for q in plan.model.queues}
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
        end = plan.duration
        self._push(0.0, _BLOCK, 0)
        for cmd in plan.surge_commands:
            if 0 <= cmd.at < end:
                self._push(cmd.at, _SURGE, cmd)
        if self.script is not None:
            for call in self.script:
                self._push(call.at, _SCRIPT, call)
        else:
            for i in range(len(plan.sources)):
                self._schedule_arrival(i, 0.0)
        self._push(plan.sample_every, _SAMPLE, None)
        for b in range(1, plan.blocks):
            self._push(b * plan.block_seconds, _BLOCK, b)
        self._push(end, _STOP, None)
        heap = self._heap
        engine = self.engine
        handlers: list[Callable[[Any], None]] = [
            self._on_arrival,
            self._on_answer,
            self._on_end,
            self._on_hangup,
            self._on_block,
            self._on_sample,
            self._on_redial,
            self._on_cb_round,
            self._on_cb_end,
            self._on_surge,
            self._on_reserve,
            self._on_script,
        ]
        pop = heapq.heappop
        while heap:
            t = heap[0][0]
            due = engine.next_timer()
            if due is not None and due <= t:
                self.now = due
                self._feed(TimerFired(kind="tick", id="", now=due))
                continue
            t, _, kind, payload = pop(heap)
            self.now = t
            if kind == _STOP:
                self._close_block()
                break
            handlers[kind](payload)
        waiting = sum(1 for c in engine.calls.values() if c.state is QueuedCallState.WAITING)
        return RunResult(
            seed=self.seed,
            blocks=self.blocks,
            samples=self.samples,
            surge_changes=self.surge_log,
            waiting_at_end=waiting,
            owed_at_end=sum(len(d) for d in self._owed.values()),
            events=self._events,
            calls=self._next_call,
            queues=tuple(q.name for q in plan.model.queues),
        )

    def _push(self, t: float, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, payload))

    # ------------------------------------------------------------ the engine

    def _feed(self, event: Event) -> None:
        out = self.engine.handle(event)
        self._events += 1
        if self.trace is not None:
            self.trace.append((event, out))
        for d in out:
            t = type(d)
            if t is RingAgent:
                self._ring(d)  # type: ignore[arg-type]
            elif t is Connect:
                self._connect(d)  # type: ignore[arg-type]
            elif t is CancelRing:
                self._rings.pop((d.agent, d.call), None)  # type: ignore[union-attr]
            elif t is Overflow:
                self._overflow(d)  # type: ignore[arg-type]
            elif t is SurgeChanged:
                self.surge_log.append((self.now, d.on, d.cause))  # type: ignore[union-attr]
            elif t is PauseOutbound:
                self.paused = True
            elif t is ResumeOutbound:
                self.paused = False
                self._arm_cb_round()
            # SetTimer: next_timer() says when; PlayAnnouncement: callers hear it and hold on
        if (self._leaving or self._returning) and not self._settling:
            self._settle_leavers()

    def _ring(self, d: RingAgent) -> None:
        self._ring_token += 1
        key = (d.agent, d.call)
        self._rings[key] = self._ring_token
        if self.plan.answer_probability < 1.0 and self._r_agent.random() >= self.plan.answer_probability:
            return  # the phone rings until the engine's ring timeout
        self._push(self.now + self._ring_delay(self._r_agent), _ANSWER, (d.agent, d.call, self._ring_token))

    def _connect(self, d: Connect) -> None:
        caller = self.callers.get(d.call)
        if caller is None:
            return
        caller.talking = True
        self._push(self.now + caller.handle, _END, caller)
        booking = self._open.get(caller.person)
        if booking is not None:  # R10: got through before the callback: it is closed
            self._close_booking(booking)
            self.counts["callbacks_closed_reached_agent"] += 1

    def _overflow(self, d: Overflow) -> None:
        caller = self.callers.pop(d.call, None)
        if caller is None:
            return
        caller.gone = True
        if d.target in ("callback", "message"):
            cb = self.plan.callbacks
            if cb is not None and self._r_choice.random() < cb.take_up:
                self._book(caller)
                if cb.call_again and self._r_choice.random() < cb.call_again:
                    self._redial(caller)  # booked, and calls again all the same (R10 closes it if they get through)
            else:
                self._maybe_redial(caller, "declined")
        elif d.target == "peak_shaving":
            self._maybe_redial(caller, "peak_shaving")

    # ------------------------------------------------------------- callers

    def _schedule_arrival(self, index: int, t: float) -> None:
        """The next arrival of a piecewise-constant Poisson source after ``t`` (memoryless across steps)."""
        steps = self.plan.sources[index].steps
        i = self._source_step[index]
        rng = self._r_arrive
        while i < len(steps):
            step = steps[i]
            if t < step.start:
                t = step.start
            if step.rate > 0:
                nxt = t + rng.expovariate(step.rate)
                if nxt < step.end:
                    self._source_step[index] = i
                    self._push(nxt, _ARRIVAL, index)
                    return
            t = step.end
            i += 1
        self._source_step[index] = i

    def _on_arrival(self, index: int) -> None:
        source = self.plan.sources[index]
        self._schedule_arrival(index, self.now)
        rng = self._r_caller
        group = source.group
        if group is None and self._groups:
            u = rng.random()
            if u < self._group_total:
                group = _pick(self._groups, u)
        queue = source.queue or (_pick(self._mix, rng.random()) if len(self._mix) > 1 else self._mix[0][1])
        self._next_person += 1
        self.counts["calls"] += 1
        if source.notice_resolves and self._r_choice.random() < source.notice_resolves:
            self.counts["diverted_notice"] += 1
            return
        self._enter(self._next_person, 1, queue, group)

    def _on_script(self, call: ScriptedCall) -> None:
        self._next_person += 1
        self.counts["calls"] += 1
        self._enter(self._next_person, 1, call.queue, call.group, handle=call.handle, patience=call.patience)

    def _enter(
        self,
        person: int,
        attempt: int,
        queue: str,
        group: str | None,
        *,
        handle: float | None = None,
        patience: float | None = None,
    ) -> None:
        """A caller walks the IVR (hot key, self-service) and joins ``queue``."""
        div = self.plan.diversion
        if (div.hotkey or div.self_service) and (div.when == "always" or self.engine.surge):
            u = self._r_choice.random()
            if u < div.hotkey:
                self.counts["diverted_hotkey"] += 1
                return
            if u < div.hotkey + div.self_service:
                self.counts["diverted_self_service"] += 1
                return
        rng = self._r_caller
        if handle is None:
            handle = self._handle[queue](rng)
        if patience is None:
            patience = self._patience(rng)
        self._next_call += 1
        call_id = str(self._next_call)
        caller = Caller(call_id, person, attempt, queue, group, handle, self.now)
        self.callers[call_id] = caller
        tier, urgent = self._tiers.get((queue, group)) or (self._lowest[queue], False)
        if patience != math.inf:
            self._push(self.now + patience, _HANGUP, caller)
        self._feed(CallArrived(call_id=call_id, queue=queue, tier=tier, urgent=urgent, now=self.now))

    def _on_answer(self, payload: tuple[str, str, int]) -> None:
        agent, call, token = payload
        if self._rings.get((agent, call)) != token:
            return  # cancelled meanwhile: the live router drops a late answer too
        del self._rings[(agent, call)]
        self._feed(AgentAnswered(agent=agent, call=call, now=self.now))

    def _on_end(self, caller: Caller) -> None:
        self.callers.pop(caller.call_id, None)
        caller.gone = True
        self._feed(CallEnded(call=caller.call_id, now=self.now))

    def _on_hangup(self, caller: Caller) -> None:
        if caller.talking or caller.gone:
            return
        self.callers.pop(caller.call_id, None)
        caller.gone = True
        self._feed(CallerHungUp(call=caller.call_id, now=self.now))
        self._maybe_redial(caller, "abandoned")

    def _maybe_redial(self, caller: Caller, why: str) -> None:
        redial = self.plan.redial
        if not redial.probability or why not in redial.after or caller.attempt >= redial.max_attempts:
            return
        if self._r_choice.random() < redial.probability:
            self._redial(caller)

    def _redial(self, caller: Caller) -> None:
        if caller.attempt < self.plan.redial.max_attempts:
            self._push(self.now + self._redial_delay(self._r_choice), _REDIAL, caller)

    def _on_redial(self, caller: Caller) -> None:
        self.counts["calls"] += 1
        self.counts["redials"] += 1
        self._enter(caller.person, caller.attempt + 1, caller.queue, caller.group)

    # ------------------------------------------------------------- agents

    def _register_team(self, name: str, ids: list[str]) -> None:
        for a in ids:
            self._team_of[a] = name
        self._pool[name] = list(reversed(ids))
        self._active[name] = set()

    def _staff(self, team: str, wanted: int) -> None:
        """Bring ``team`` to ``wanted`` agents on the phones: take back leavers, log in, or let the surplus go."""
        active = self._active[team]
        agents = self.engine.agents
        while len(active) < wanted:
            leavers = sorted(a for a in self._leaving if self._team_of[a] == team)
            if leavers:  # still logged in, finishing a call: they stay
                agent = leavers[0]
                self._leaving.discard(agent)
                active.add(agent)
                self._returning.add(agent)
                continue
            if not self._pool[team]:
                break
            agent = self._pool[team].pop()
            active.add(agent)
            self._feed(AgentLoggedIn(agent=agent, now=self.now))
        if len(active) > wanted:
            order = {AgentState.READY: 0, AgentState.NOT_READY: 1, AgentState.WRAP_UP: 2}
            surplus = sorted(active, key=lambda a: (a in self._jobs, order.get(agents[a].state, 3), a))
            for agent in surplus[: len(active) - wanted]:
                active.discard(agent)
                self._returning.discard(agent)
                self._leaving.add(agent)
        self._settle_leavers()

    def _settle_leavers(self) -> None:
        """Agents at the end of their shift log out once their call (or callback) is done.

        An agent taken back before that is made ready again once the call's wrap-up is over.
        """
        self._settling = True
        try:
            agents = self.engine.agents
            changed = True
            while changed:
                changed = False
                for agent_id in sorted(self._returning):
                    agent = agents[agent_id]
                    if agent.state is AgentState.NOT_READY and agent.reason == _END_OF_SHIFT:
                        if agent_id not in self._jobs:
                            self._returning.discard(agent_id)
                            self._feed(AgentReady(agent=agent_id, now=self.now))
                            changed = True
                    elif agent.pending_not_ready != _END_OF_SHIFT:
                        self._returning.discard(agent_id)
                for agent_id in sorted(self._leaving):
                    if agent_id in self._jobs:
                        continue
                    agent = agents[agent_id]
                    state = agent.state
                    if state is AgentState.READY or state is AgentState.NOT_READY:
                        self._leaving.discard(agent_id)
                        self._pool[self._team_of[agent_id]].append(agent_id)
                        self._feed(AgentLoggedOut(agent=agent_id, now=self.now))
                        changed = True
                    elif state is AgentState.WRAP_UP or (
                        state is AgentState.TALKING and agent.pending_not_ready is None
                    ):
                        self._feed(AgentNotReady(agent=agent_id, reason=_END_OF_SHIFT, now=self.now))
                        changed = True
        finally:
            self._settling = False

    def _on_block(self, block: int) -> None:
        if block > 0:
            self._close_block()
        self._block = block
        for team in self.plan.teams:
            self._staff(team.name, team.on_phones[block])

    def _on_reserve(self, index: int) -> None:
        """A reserve echelon comes online (its mobilisation delay is over)."""
        self._reserve_pending[index] = False
        self._reserve_state[index] = self.now
        reserve = self.plan.reserves[index]
        self.counts["reserve_activations"] += 1
        self._staff(reserve.name, reserve.agents)

    def _check_reserves(self, ewt_now: float, waiting: int) -> None:
        """R17: call the next echelon in while its trigger holds; release the last one when all is calm."""
        if not self.plan.reserves:
            return
        decided, within = self._block_sl_so_far()
        level = within / decided if decided >= 10 else None
        surge = self.engine.surge
        for i, reserve in enumerate(self.plan.reserves):
            online = self._reserve_state[i] is not None or self._reserve_pending[i]
            if online:
                continue
            if reserve.when.fires(ewt_now, waiting, level, surge):
                earlier_ready = all(self._reserve_state[j] is not None for j in range(i))
                if earlier_ready:
                    self._reserve_pending[i] = True
                    self._push(self.now + reserve.delay, _RESERVE, i)
            break  # one echelon at a time, in order
        for i in range(len(self.plan.reserves) - 1, -1, -1):
            since = self._reserve_state[i]
            if since is None:
                continue
            reserve = self.plan.reserves[i]
            if not reserve.when.fires(ewt_now, waiting, level, surge) and self.now - since >= reserve.min_online:
                self._reserve_state[i] = None
                self._staff(reserve.name, 0)
            break  # release the last echelon first

    # ----------------------------------------------------------- callbacks

    def _book(self, caller: Caller) -> None:
        cb = self.plan.callbacks
        assert cb is not None
        if caller.person in self._open:
            return  # one active callback per number and queue: the caller keeps the one they have
        snap = self.engine.snapshot().queues[caller.queue]
        due = len(self._owed[caller.queue])
        wait = ewt(snap.waiting + snap.ringing + due + 1, snap.serving, snap.idle, snap.aht)
        if not math.isfinite(wait):
            wait = cb.max_age
        self._booking_id += 1
        booking = Booking(
            id=self._booking_id,
            person=caller.person,
            queue=caller.queue,
            arrived=caller.arrived,
            booked=self.now,
            promised_by=self.now + wait + cb.promise_margin,
        )
        owed = self._owed[caller.queue]
        owed.append(booking)
        if len(owed) > 1 and owed[-2].arrived > booking.arrived:  # keeps the caller's place (a redial joined later)
            self._owed[caller.queue] = deque(sorted(owed, key=lambda b: (b.arrived, b.id)))
        self._open[caller.person] = booking
        self.counts["callbacks_booked"] += 1
        self._arm_cb_round()

    def _close_booking(self, booking: Booking) -> None:
        self._open.pop(booking.person, None)
        try:
            self._owed[booking.queue].remove(booking)
        except ValueError:
            pass

    def _arm_cb_round(self) -> None:
        cb = self.plan.callbacks
        if cb is not None and not self._cb_round_armed and any(self._owed.values()):
            self._cb_round_armed = True
            self._push(self.now + cb.dispatch_interval, _CB_ROUND, None)

    def _on_cb_round(self, _: None) -> None:
        """One round of the dispatcher (ivr/calls/dialer.py): expire, count broken promises, dispatch."""
        cb = self.plan.callbacks
        assert cb is not None
        self._cb_round_armed = False
        now = self.now
        for owed in self._owed.values():
            for booking in list(owed):
                if now - booking.booked > cb.max_age:
                    self._close_booking(booking)
                    self.counts["callbacks_expired"] += 1
                elif booking.promised_by < now and not booking.missed:
                    booking.missed = True
                    self.counts["promises_missed"] += 1
        if not self.paused:
            for queue in sorted(self._owed):
                due = next((b for b in self._owed[queue] if b.due <= now), None)
                if due is not None:
                    agent = self._free_agent(queue)
                    if agent is not None:
                        self._start_callback(agent, due)
        self._arm_cb_round()

    def _free_agent(self, queue: str) -> str | None:
        """A ready agent of ``queue`` for a callback, if no inbound caller waits there and inbound keeps its share."""
        engine = self.engine
        spec = engine.queues[queue]
        for call in engine.calls.values():
            if call.queue.name == queue and call.state is QueuedCallState.WAITING:
                return None
        ready = [
            a
            for a in engine.agents.values()
            if a.state is AgentState.READY and a.spec.can_take(spec.skills) and a.id not in self._leaving
        ]
        idle = sum(1 for a in engine.agents.values() if a.state is AgentState.READY and a.spec.can_take(spec.skills))
        assert self.plan.callbacks is not None
        if idle <= self.plan.callbacks.reserve_agents or not ready:
            return None
        return min(ready, key=lambda a: (a.idle_since, a.id)).id

    def _start_callback(self, agent: str, booking: Booking) -> None:
        """The agent's phone rings, then the customer's: a talk, or a no-answer retried later (or failed)."""
        cb = self.plan.callbacks
        assert cb is not None
        self._close_booking(booking)
        self._jobs[agent] = booking
        if booking.promised_by < self.now and not booking.missed:
            booking.missed = True
            self.counts["promises_missed"] += 1
        booking.attempts += 1
        self._feed(AgentNotReady(agent=agent, reason="callback", now=self.now))
        ring = self._ring_delay(self._r_agent)
        if cb.customer_answers >= 1.0 or self._r_choice.random() < cb.customer_answers:
            self.counts["callbacks_served"] += 1
            self._push(self.now + ring + self._handle[booking.queue](self._r_caller), _CB_END, agent)
            return
        self.counts["callback_no_answer"] += 1
        self._push(self.now + ring + cb.customer_ring, _CB_END, agent)
        if booking.attempts >= cb.max_attempts:
            self.counts["callbacks_failed"] += 1
            return
        # due again after the delay, in its old place (the caller keeps their place in line)
        booking.due = self.now + ring + cb.customer_ring + cb.retry_delay
        owed = self._owed[booking.queue]
        owed.append(booking)
        if len(owed) > 1 and (owed[-2].arrived, owed[-2].id) > (booking.arrived, booking.id):
            self._owed[booking.queue] = deque(sorted(owed, key=lambda b: (b.arrived, b.id)))
        self._open[booking.person] = booking

    def _on_cb_end(self, agent: str) -> None:
        self._jobs.pop(agent, None)
        if agent in self._leaving:
            self._settle_leavers()
        else:
            self._returning.discard(agent)
            self._feed(AgentReady(agent=agent, now=self.now))

    # ----------------------------------------------------------- surge switch

    def _on_surge(self, cmd: Any) -> None:
        self._feed(SurgeSwitch(on=cmd.on, cause=cmd.cause, now=self.now))

    # ------------------------------------------------------- blocks and samples

    def _on_sample(self, _: None) -> None:
        engine = self.engine
        waiting: dict[str, int] = {}
        for call in engine.calls.values():
            if call.state is QueuedCallState.WAITING:
                waiting[call.queue.name] = waiting.get(call.queue.name, 0) + 1
        logged_in = sum(1 for a in engine.agents.values() if a.state is not AgentState.LOGGED_OUT)
        owed = sum(len(d) for d in self._owed.values())
        sample = Sample(self.now, sum(waiting.values()), logged_in, engine.surge, owed)
        self.samples.append(sample)
        self._block_samples.append(sample)
        if self.plan.reserves:
            snap = engine.snapshot()
            ewt_now = max((q.ewt for q in snap.queues.values() if q.waiting), default=0.0)
            self._check_reserves(ewt_now, max(waiting.values(), default=0))
        if self.now + self.plan.sample_every <= self.plan.duration:
            self._push(self.now + self.plan.sample_every, _SAMPLE, None)

    def _block_sl_so_far(self) -> tuple[float, float]:
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
        block["queue_length_max"] = float(max((s.waiting for s in samples), default=0))
        block["agents_mean"] = sum(s.agents for s in samples) / len(samples) if samples else 0.0
        block["surge_share"] = sum(s.surge for s in samples) / len(samples) if samples else float(self.engine.surge)
        block["surge_at_end"] = float(self.engine.surge)
        block["callbacks_owed"] = float(sum(len(d) for d in self._owed.values()))
        block["agents_rostered"] = float(sum(t.rostered[self._block] for t in plan.teams))
        block["agents_planned"] = float(sum(t.on_phones[self._block] for t in plan.teams))
        block["reserves_online"] = float(sum(1 for s in self._reserve_state if s is not None))
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


def _cumulative(pairs: tuple[tuple[str, float], ...]) -> list[tuple[float, str]]:
    out: list[tuple[float, str]] = []
    total = 0.0
    for name, share in pairs:
        total += share
        out.append((total, name))
    return out


def _pick(cumulative: list[tuple[float, str]], u: float) -> str:
    for edge, name in cumulative:
        if u < edge:
            return name
    return cumulative[-1][1]


def run_once(plan: Plan, seed: int | None = None) -> RunResult:
    return Simulation(plan, seed).run()
