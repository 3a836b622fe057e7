"""The decision engine: events with timestamps in, decisions out.

Theory of operation
-------------------
One ``Engine`` holds the whole call center described by a ``Model``: waiting
callers, agents and their states, pending timers, the surge switch and the
counters. ``handle(event)`` first fires every timer that is due at or before
``event.now`` (in time order, one instant at a time), then applies the event,
re-evaluates the surge switch, routes waiting callers to ready agents once,
enforces the queue length limits, and returns the decisions. ``next_timer()``
says when the shell must call back (with ``TimerFired``) at the latest; a late
or stale ``TimerFired`` is harmless because timers are kept here, not trusted
from outside. The engine never reads a clock and does no I/O, so the live
router and the simulator drive the very same code.

Callers: waiting -> ringing -> talking -> (gone), or leave as abandoned or
overflowed. Priority is by tier (higher first), then by place in line: a
caller whose ring was not answered goes back to the head of its tier, then by
arrival (``queueing/line.py``). Each queue's line is kept in that order and each
queue's serving and idle agents are counted as agents move, so no step sorts
or scans every caller or every agent: the cost of an event does not grow with
the length of the line (docs/queueing.md, "The line"). Agents move by the table ``TRANSITIONS`` of
``queueing/agents.py``, which also holds the routing strategies.

Illegal agent input (say ``AgentReady`` while talking, or an unknown agent)
raises ``PolicyError`` before anything changes. Stale call input (an answer for
a caller who already hung up) is ignored: it is a normal race on a phone line.

Beside this module: the counters and snapshots (``queueing/stats.py``), the
surge switch and its hysteresis (``queueing/surge.py``) and the timer table
(``queueing/timers.py``). The module is long because what stays here is the
one thing that decides: each step reads the line, the agents and the switch together
and applies the rules R1..R19 in their order, so splitting it further would
scatter one sequence of decisions over files.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from queueing.agents import NO_ANSWER, OFF_DUTY, TRANSITIONS, Agent, AgentState, Staffing, choose
from queueing.events import (
    AgentAnswered,
    AgentLoggedIn,
    AgentLoggedOut,
    AgentNoAnswer,
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
    PlayAnnouncement,
    PolicyError,
    QueueReconfigured,
    ResumeOutbound,
    RingAgent,
    SetTimer,
    SurgeChanged,
    SurgeReconfigured,
    SurgeSwitch,
    TimerFired,
)
from queueing.ewt import MovingAht, ewt
from queueing.line import Line, QueuedCall, QueuedCallState, required_skills
from queueing.model import Model, OverflowTarget, QueueSpec
from queueing.pickling import reduce_state
from queueing.stats import QueueSnapshot, QueueStats, Snapshot
from queueing.surge import SurgeControl
from queueing.timers import Timers

_EPS = 1e-9
_UNCHECKED = frozenset({CallEnded, CallerHungUp, TimerFired, SurgeReconfigured})  # nothing to validate
_TRIGGERS: dict[type, str] = {
    AgentLoggedIn: "login",
    AgentReady: "ready",
    AgentNotReady: "not_ready",
    AgentLoggedOut: "logout",
}


class Engine:
    def __init__(self, model: Model) -> None:
        self.model = model
        self.queues: dict[str, QueueSpec] = {q.name: q for q in model.queues}
        # Read-only views for the shell and tests; change them only through handle().
        self.agents: dict[str, Agent] = {a.id: Agent(a) for a in model.agents}
        self.calls: dict[str, QueuedCall] = {}
        self.stats: dict[str, QueueStats] = {q.name: QueueStats() for q in model.queues}
        self.now: float | None = None
        self._aht = {q.name: MovingAht(q.initial_aht, q.aht_alpha) for q in model.queues}
        self._timers = Timers()
        self._order = itertools.count()
        self._round_robin: dict[str, str] = {}
        self._surge = SurgeControl(model.surge)
        self._fresh: list[str] = []  # callers who arrived in this event
        self._lines: dict[str, Line] = {q.name: Line() for q in model.queues}
        # the waiting callers of each queue by id (the lines' own dicts: a read-only view)
        self._waiting: dict[str, dict[str, QueuedCall]] = {name: line.calls for name, line in self._lines.items()}
        self._n_waiting = 0  # callers waiting, all queues
        self._peak_waiting = 0  # most callers waiting at once at the end of an instant, since the last reset
        self._ready: dict[str, Agent] = {}  # agents in state READY
        self._staff: dict[str, Staffing] = {}  # queue -> its serving and idle agents
        self._staffed_by: dict[str, list[Staffing]] = {}  # agent -> the Staffing of every queue it can take
        self._count_staff()
        self._limits: dict[bool, int] = {}  # surge on? -> the shortest max_length (worked out when needed)
        # (queue, tier, extra skills) -> (priority, required skills), shared by the callers of that kind
        self._kinds: dict[tuple[str, str, frozenset[str]], tuple[int, Mapping[str, int]]] = {}
        # (queue, extra skills) -> ids of the agents who can take such callers; None: every agent can
        self._takers: dict[tuple[str, frozenset[str]], frozenset[str] | None] = {}

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle (cluster mode checkpoints the engine mid-run): built from the model, then every attribute put back."""
        return reduce_state(self, self.model)

    # ---------------------------------------------------------------- public

    def handle(self, event: Event) -> list[Decision]:
        now = event.now
        if self.now is not None and now < self.now - _EPS:
            raise PolicyError(f"time went backwards: {now} < {self.now}")
        if type(event) not in _UNCHECKED:
            self._validate(event)
        out: list[Decision] = []
        if self.now is None:
            self._start(now, out)
        due = self._timers.next()
        if due is not None and due <= now + _EPS:
            self._fire_timers(now, out)
        if self.now is None or now > self.now:
            self.now = now
        t = type(event)
        if t is AgentAnswered:
            self._answer(event, out)  # type: ignore[arg-type]
        elif t is CallEnded or t is CallerHungUp:
            self._hang_up(event.call, out)  # type: ignore[union-attr]
        elif t is CallArrived:
            self._arrive(event, out)  # type: ignore[arg-type]
        elif t is not TimerFired:  # due timers already fired above
            self._apply(event, out)
        self._settle(out)
        return out

    def next_timer(self) -> float | None:
        return self._timers.next()

    @property
    def surge(self) -> bool:
        """Whether surge mode is on."""
        return self._surge.on

    @property
    def surge_changes(self) -> dict[str, int]:
        """Times surge mode flipped, by the cause that decided it (``manual``, ``schedule``, ``auto``)."""
        return self._surge.changes

    def snapshot(self) -> Snapshot:
        now = self.now if self.now is not None else 0.0
        queues: dict[str, QueueSnapshot] = {}
        ringing = dict.fromkeys(self.queues, 0)
        for c in self.calls.values():
            if c.state is QueuedCallState.RINGING:
                ringing[c.queue.name] += 1
        for name in self.queues:
            line = self._lines[name]
            staff = self._staff[name]
            queues[name] = QueueSnapshot(
                name=name,
                waiting=len(line),
                ringing=ringing[name],
                longest_waiting=max((now - c.arrived for c in line.calls.values()), default=0.0),
                ewt=ewt(len(line) + 1, staff.serving, staff.idle, self._aht[name].value),
                aht=self._aht[name].value,
                serving=staff.serving,
                idle=staff.idle,
            )
        by_state = {s.value: 0 for s in AgentState}
        for agent in self.agents.values():
            by_state[agent.state.value] += 1
        return Snapshot(now=now, surge=self.surge, queues=queues, agents_by_state=by_state)

    def position(self, call_id: str) -> int | None:
        """1-based place in line of a waiting caller, else None."""
        call = self.calls.get(call_id)
        if call is None or call.state is not QueuedCallState.WAITING:
            return None
        return 1 + self._lines[call.queue.name].ahead_of(call)

    def max_wait(self, queue: str) -> float:
        return self.queues[queue].max_wait.value(self.surge)

    @property
    def waiting(self) -> int:
        """Callers waiting in line now, all queues."""
        return self._n_waiting

    @property
    def peak_waiting(self) -> int:
        """The most callers waiting at once (all queues), at the end of any instant since start or the last reset.

        Exact, not sampled: it is updated after every step, so a line that grew
        and shrank between two looks still shows its top.
        """
        return self._peak_waiting

    def reset_peak_waiting(self) -> None:
        """Start a new running maximum (say, per block of a report) from the line as it is now."""
        self._peak_waiting = self._n_waiting

    # ------------------------------------------------------------ validation

    def _agent(self, agent_id: str) -> Agent:
        try:
            return self.agents[agent_id]
        except KeyError:
            raise PolicyError(f"unknown agent {agent_id!r}") from None

    def _validate(self, event: Event) -> None:
        match event:
            case CallArrived():
                if event.queue not in self.queues:
                    raise PolicyError(f"unknown queue {event.queue!r}")
                if event.call_id in self.calls:
                    raise PolicyError(f"call {event.call_id!r} is already in the books")
            case AgentLoggedIn() | AgentReady() | AgentNotReady() | AgentLoggedOut():
                agent = self._agent(event.agent)
                if (agent.state, _TRIGGERS[type(event)]) not in TRANSITIONS:
                    raise PolicyError(f"agent {agent.id}: {type(event).__name__} is illegal while {agent.state}")
                if isinstance(event, AgentLoggedOut) and agent.state is AgentState.TALKING:
                    raise PolicyError(f"agent {agent.id}: cannot log out while talking")
            case AgentAnswered() | AgentNoAnswer():
                self._agent(event.agent)
            case SurgeSwitch():
                if event.on is None and event.cause != "manual":
                    raise PolicyError("only a manual switch can be released (on=None)")
            case QueueReconfigured():
                if event.spec.name not in self.queues:
                    raise PolicyError(f"unknown queue {event.spec.name!r}")
            case _:
                pass

    # ---------------------------------------------------------------- timers

    def _arm(self, kind: str, ident: str, at: float, out: list[Decision]) -> None:
        self._timers.arm(kind, ident, at)
        out.append(SetTimer(kind, ident, at))

    def _disarm(self, kind: str, ident: str) -> None:
        self._timers.disarm(kind, ident)

    def _fire_timers(self, until: float, out: list[Decision]) -> None:
        """Fire due timers in time order; settle after each earlier instant (the event's own instant settles later)."""
        timers = self._timers
        while True:
            at = timers.next()
            if at is None or at > until + _EPS:
                return
            self.now = max(at, self.now if self.now is not None else at)
            while (nxt := timers.next()) is not None and nxt <= at + _EPS:
                kind, ident = timers.pop()
                self._on_timer(kind, ident, out)
            if at < until - _EPS:
                self._settle(out)

    def _on_timer(self, kind: str, ident: str, out: list[Decision]) -> None:
        now = self._now
        if kind == "max_wait":
            call = self.calls.get(ident)
            if call is not None and call.state is QueuedCallState.WAITING:
                self._check_deadline(call, out)
        elif kind == "announce":
            call = self.calls.get(ident)
            if call is not None and call.state is QueuedCallState.WAITING:
                self._announce(call, out)
        elif kind == "ring":
            call = self.calls.get(ident)
            if call is not None and call.state is QueuedCallState.RINGING:
                agents = sorted(call.agents)
                out.extend(CancelRing(agent_id, call.id) for agent_id in agents)  # stop the phones ringing
                self._ring_failed(call, agents, out, miss=True)
        elif kind == "wrap_up":
            agent = self.agents.get(ident)
            if agent is not None and agent.state is AgentState.WRAP_UP:
                self._end_wrap_up(agent)
                if agent.pending_not_ready is not None:
                    self._move(agent, "not_ready")
                    agent.reason, agent.pending_not_ready = agent.pending_not_ready, None
                else:
                    self._move(agent, "wrap_done")
                    agent.idle_since = now
        elif kind == "schedule":
            self._surge.scheduled_window = self._surge.in_window(now + _EPS)
        # "surge" (dwell over) needs nothing here: _settle re-evaluates.

    @property
    def _now(self) -> float:
        assert self.now is not None
        return self.now

    def _start(self, now: float, out: list[Decision]) -> None:
        self.now = now
        for i, (start, end) in enumerate(self.model.surge.schedule):
            if start > now:
                self._arm("schedule", f"{i}:start", start, out)
            if end > now:
                self._arm("schedule", f"{i}:end", end, out)
        self._surge.scheduled_window = self._surge.in_window(now)

    # ---------------------------------------------------------------- events

    def _apply(self, event: Event, out: list[Decision]) -> None:
        match event:
            case CallArrived():
                self._arrive(event, out)
            case AgentLoggedIn():
                agent = self.agents[event.agent]
                self._move(agent, "login")
                agent.idle_since, agent.answered, agent.misses, agent.reason = self._now, 0, 0, None
            case AgentReady():
                agent = self.agents[event.agent]
                if agent.state is AgentState.READY:
                    return
                if agent.state is AgentState.WRAP_UP:
                    self._end_wrap_up(agent)
                self._move(agent, "ready")
                agent.idle_since, agent.misses, agent.reason = self._now, 0, None
            case AgentNotReady():
                self._not_ready(self.agents[event.agent], "not_ready", event.reason, out)
            case AgentLoggedOut():
                self._not_ready(self.agents[event.agent], "logout", None, out)
            case AgentAnswered():
                self._answer(event, out)
            case AgentNoAnswer():
                agent = self.agents[event.agent]
                call = self.calls.get(event.call)
                if agent.state is AgentState.RINGING and agent.call == event.call and call is not None:
                    self._ring_failed(call, [agent.id], out, miss=True)
            case CallEnded() | CallerHungUp():
                self._hang_up(event.call, out)
            case TimerFired():
                pass  # due timers already fired above
            case SurgeSwitch():
                self._surge.switch(event.on, event.cause, self._now)
            case QueueReconfigured():
                self._reconfigure(event.spec, out)
            case SurgeReconfigured():
                self.model = dataclasses.replace(self.model, surge=event.spec)
                self._surge.spec = event.spec

    def _reconfigure(self, spec: QueueSpec, out: list[Decision]) -> None:
        """New settings for a queue: its callers keep their places; new limits apply at once."""
        self.queues[spec.name] = spec
        self.model = dataclasses.replace(self.model, queues=tuple(self.queues.values()))
        aht = self._aht[spec.name]
        aht.alpha = spec.aht_alpha
        line = self._lines[spec.name]
        in_line = list(line)  # in their order before the change
        for call in self.calls.values():
            if call.queue.name == spec.name:
                call.queue = spec
                call.priority = spec.tier_priority(call.tier)
                call.required = required_skills(spec, call.extra_skills)
        line.reorder()  # new tier priorities: new keys
        self._limits.clear()
        self._kinds.clear()
        self._takers.clear()
        self._count_staff()  # the queue's skills may have changed
        for call in in_line:
            self._check_deadline(call, out)

    def _move(self, agent: Agent, trigger: str) -> None:
        before = agent.state
        state = agent.move(trigger)  # PolicyError only through a bug: input is validated first
        if state is AgentState.READY:
            self._ready[agent.id] = agent
        else:
            self._ready.pop(agent.id, None)
        if state is not before:
            serving = (state not in OFF_DUTY) - (before not in OFF_DUTY)
            idle = (state is AgentState.READY) - (before is AgentState.READY)
            if serving or idle:
                for staff in self._staffed_by[agent.id]:
                    staff.serving += serving
                    staff.idle += idle

    def _count_staff(self) -> None:
        """Count every queue's serving and idle agents afresh (at start, and when a queue's skills may change)."""
        staff = {name: Staffing() for name in self.queues}
        by_agent: dict[str, list[Staffing]] = {}
        for agent in self.agents.values():
            takes = [staff[name] for name, spec in self.queues.items() if agent.spec.can_take(spec.skills)]
            by_agent[agent.id] = takes
            if agent.state not in OFF_DUTY:
                for s in takes:
                    s.serving += 1
                    s.idle += agent.state is AgentState.READY
        self._staff, self._staffed_by = staff, by_agent

    def _arrive(self, event: CallArrived, out: list[Decision]) -> None:
        spec = self.queues[event.queue]
        kind = (spec.name, event.tier, event.skills)
        found = self._kinds.get(kind)
        if found is None:  # worked out once per queue, tier and extra skills (until the queue is reconfigured)
            found = self._kinds[kind] = (spec.tier_priority(event.tier), required_skills(spec, event.skills))
        call = QueuedCall(
            id=event.call_id,
            queue=spec,
            tier=event.tier,
            priority=found[0],
            required=found[1],
            urgent=event.urgent,
            arrived=self._now,
            order=next(self._order),
            extra_skills=event.skills,
        )
        self.stats[spec.name].offered += 1
        surge = self.model.surge
        surging = self._surge.on
        if surging and surge.notice:
            out.append(PlayAnnouncement(call.id, "notice"))
        self.calls[call.id] = call
        self._enqueue(call)
        call.predicted_ewt = self._ewt_of(call)
        # R8: peak shaving only in surge, only for a really long wait, never top tier or urgent callers.
        if (
            surging
            and surge.peak_shaving_ewt is not None
            and call.predicted_ewt > surge.peak_shaving_ewt
            and not call.protected
        ):
            out.append(PlayAnnouncement(call.id, "peak_shaving"))
            self._overflow(call, "peak_shaving", "peak_shaving", out)
            return
        # R2: a long wait ahead is offered a callback at once (the caller's arrival is their place)
        if spec.callback_ewt is not None and call.predicted_ewt > spec.callback_ewt:
            self._overflow(call, "callback", "ewt", out)
            return
        self._arm("max_wait", call.id, call.arrived + spec.max_wait.value(surging), out)
        self._fresh.append(call.id)

    def _not_ready(self, agent: Agent, trigger: str, reason: str | None, out: list[Decision]) -> None:
        if agent.state is AgentState.TALKING:  # only "not_ready" gets here (validated)
            agent.pending_not_ready = reason
            return
        if agent.state is AgentState.RINGING and agent.call is not None:
            call = self.calls[agent.call]
            out.append(CancelRing(agent.id, call.id))
            self._ring_failed(call, [agent.id], out, miss=False)
        if agent.state is AgentState.WRAP_UP:
            self._end_wrap_up(agent)
        self._move(agent, trigger)
        agent.reason = reason

    def _answer(self, event: AgentAnswered, out: list[Decision]) -> None:
        agent = self.agents[event.agent]
        call = self.calls.get(event.call)
        if call is None or agent.state is not AgentState.RINGING or agent.call != call.id:
            return  # stale: the caller hung up or the ring was already given up
        now = self._now
        if len(call.agents) > 1:
            for other in sorted(call.agents - {agent.id}):
                out.append(CancelRing(other, call.id))
                self._release(self.agents[other], "cancel")
        self._move(agent, "answer")
        agent.misses = 0
        agent.answered += 1
        agent.talk_started = now
        call.state = QueuedCallState.TALKING
        self._dequeue(call)
        call.agents = {agent.id}
        timers = self._timers
        timers.disarm("ring", call.id)
        timers.disarm("max_wait", call.id)
        timers.disarm("announce", call.id)
        wait = now - call.arrived
        spec = call.queue
        within = wait <= spec.service_level_t + _EPS
        self.stats[spec.name].record_answer(wait, within, call.predicted_ewt)
        self._surge.record(now, within)
        out.append(Connect(agent.id, call.id))

    def _release(self, agent: Agent, trigger: str) -> None:
        self._move(agent, trigger)
        agent.call = None
        agent.idle_since = self._now

    def _ring_failed(self, call: QueuedCall, agent_ids: Iterable[str], out: list[Decision], *, miss: bool) -> None:
        """Some ringing agents gave up; if none is left ringing, the caller goes back to the head of the line."""
        for agent_id in agent_ids:
            agent = self.agents[agent_id]
            call.agents.discard(agent_id)
            if not miss:
                agent.call = None  # the caller of _not_ready moves the agent itself
                continue
            self.stats[call.queue.name].ring_no_answer += 1
            agent.misses += 1
            if agent.misses >= agent.spec.max_misses:
                self._release(agent, "miss_limit")
                agent.reason = NO_ANSWER
            else:
                self._release(agent, "miss")
        if call.agents:
            return
        self._disarm("ring", call.id)
        call.state = QueuedCallState.WAITING
        call.requeued = True  # before joining the line: it is part of the caller's key
        self._enqueue(call)
        self._check_deadline(call, out)
        if call.id in self.calls:  # still in line: announcements go on
            self._arm("announce", call.id, self._now + call.queue.announce_every.value(self.surge), out)

    def _hang_up(self, call_id: str, out: list[Decision]) -> None:
        call = self.calls.get(call_id)
        if call is None:
            return  # stale
        now = self._now
        if call.state is QueuedCallState.TALKING:
            (agent_id,) = call.agents
            agent = self.agents[agent_id]
            self._move(agent, "end")
            agent.call = None
            agent.handled_queue = call.queue.name
            self._arm("wrap_up", agent.id, now + call.queue.wrap_up, out)
            del self.calls[call.id]
            return
        for agent_id in sorted(call.agents):
            out.append(CancelRing(agent_id, call.id))
            self._release(self.agents[agent_id], "cancel")
        if not self.stats[call.queue.name].record_abandon(now - call.arrived, call.queue.abandon_grace):
            self._surge.record(now, False)
        self._forget(call)

    def _end_wrap_up(self, agent: Agent) -> None:
        self._disarm("wrap_up", agent.id)
        if agent.handled_queue is not None:
            self._aht[agent.handled_queue].add(self._now - agent.talk_started)
            agent.handled_queue = None

    def _forget(self, call: QueuedCall) -> None:
        for kind in ("ring", "max_wait", "announce"):
            self._disarm(kind, call.id)
        self.calls.pop(call.id, None)
        self._dequeue(call)

    # --------------------------------------------------------------- the line

    def _enqueue(self, call: QueuedCall) -> None:
        self._lines[call.queue.name].add(call)
        self._n_waiting += 1

    def _dequeue(self, call: QueuedCall) -> None:
        if self._lines[call.queue.name].discard(call):
            self._n_waiting -= 1

    def _in_order(self) -> list[QueuedCall]:
        """Every waiting caller, all queues, in the order of the line (the lines merged, not sorted)."""
        if len(self._lines) == 1:
            return [c for line in self._lines.values() for c in line]
        return [entry[3] for entry in heapq.merge(*(line.entries() for line in self._lines.values()))]

    def _ewt_of(self, call: QueuedCall) -> float:
        name = call.queue.name
        staff = self._staff[name]
        return ewt(1 + self._lines[name].ahead_of(call), staff.serving, staff.idle, self._aht[name].value)

    def _check_deadline(self, call: QueuedCall, out: list[Decision]) -> None:
        deadline = call.arrived + call.queue.max_wait.value(self.surge)
        if self._now >= deadline - _EPS:
            self._overflow(call, self._overflow_target(call), "max_wait", out)
        else:
            self._arm("max_wait", call.id, deadline, out)

    def _overflow_target(self, call: QueuedCall) -> OverflowTarget:
        target = call.queue.surge_overflow if self.surge else call.queue.overflow
        if target == "peak_shaving" and call.protected:
            return "callback"  # R8: never shave top-tier or urgent callers
        return target

    def _overflow(self, call: QueuedCall, target: OverflowTarget, reason: str, out: list[Decision]) -> None:
        self.stats[call.queue.name].record_overflow(target, self._now - call.arrived)
        self._surge.record(self._now, False)
        out.append(Overflow(call.id, target, reason))
        self._forget(call)

    def _announce(self, call: QueuedCall, out: list[Decision]) -> None:
        name = call.queue.name
        position = 1 + self._lines[name].ahead_of(call)
        staff = self._staff[name]
        estimate = ewt(position, staff.serving, staff.idle, self._aht[name].value)
        out.append(PlayAnnouncement(call.id, "position_ewt", position, estimate))
        self._arm("announce", call.id, self._now + call.queue.announce_every.value(self.surge), out)

    # ------------------------------------------------------------ settle

    def _settle(self, out: list[Decision]) -> None:
        """After events at one instant: surge switch, routing, length limits, greetings of new callers."""
        control = self._surge
        if control.spec.auto:
            self._update_auto(out)
        if control.wanted()[0] != control.on:
            self._update_surge(out)
        if self._ready and self._n_waiting:
            self._dispatch(out)
        if self._n_waiting > self._limits.get(control.on, -1):
            self._enforce_lengths(out)
        if self._fresh:
            for call_id in self._fresh:
                call = self.calls.get(call_id)
                if call is not None and call.state is QueuedCallState.WAITING:
                    self._announce(call, out)
            self._fresh.clear()
        if self._n_waiting > self._peak_waiting:
            self._peak_waiting = self._n_waiting

    def _dispatch(self, out: list[Decision]) -> None:
        """Offer the waiting callers, in the order of the line across all queues, to the ready agents.

        The lines are merged head first and the walk stops as soon as nobody is
        ready. A caller whom no ready agent can take is passed over, and so is
        every later caller of the same queue with the same extra skills (the
        ready agents only get fewer during a dispatch); when that happens to a
        caller with no extra skills, the rest of that queue is passed over at
        once (its other callers need the same skills or more).
        """
        ready = self._ready
        if not ready or not self._n_waiting:
            return  # nobody to ring, or nobody to ring for: the usual cases
        lines = self._lines
        heads = [(line.key_at(0), name) for name, line in lines.items() if line]
        heapq.heapify(heads)
        place: dict[str, int] = {}  # queue -> place in its line of the next caller to offer
        passed: dict[str, set[frozenset[str]]] = {}  # queue -> extra skills nobody ready has
        while heads and ready:
            name = heads[0][1]
            line = lines[name]
            i = place.get(name, 0)
            call = line.at(i)
            takers = self._takers_of(call)
            free = list(ready.values()) if takers is None else [a for a in ready.values() if a.spec.id in takers]
            if free:
                self._ring(call, free, out)  # leaves the line: the next caller moves up to place i
            elif not call.extra_skills:
                heapq.heappop(heads)
                continue
            else:
                passed.setdefault(name, set()).add(call.extra_skills)
                i += 1
            skip = passed.get(name)
            if skip:
                n = len(line)
                while i < n and line.at(i).extra_skills in skip:
                    i += 1
            if i < len(line):
                place[name] = i
                heapq.heapreplace(heads, (line.key_at(i), name))
            else:
                heapq.heappop(heads)

    def _takers_of(self, call: QueuedCall) -> frozenset[str] | None:
        """The ids of the agents who can take ``call`` (None: every agent can), worked out once per kind of caller."""
        kind = (call.queue.name, call.extra_skills)
        try:
            return self._takers[kind]
        except KeyError:
            required = call.required
            ids = frozenset(a.id for a in self.agents.values() if a.spec.can_take(required))
            found = self._takers[kind] = None if len(ids) == len(self.agents) else ids
            return found

    def _ring(self, call: QueuedCall, free: list[Agent], out: list[Decision]) -> None:
        spec = call.queue
        chosen = choose(spec.strategy, free, self._round_robin.get(spec.name))
        if spec.strategy == "round_robin":
            self._round_robin[spec.name] = chosen[0].id
        call.state = QueuedCallState.RINGING
        self._dequeue(call)
        self._disarm("announce", call.id)
        for agent in chosen:
            self._move(agent, "ring")
            agent.call = call.id
            call.agents.add(agent.id)
            out.append(RingAgent(agent.id, call.id, spec.ring_timeout))
        self._arm("ring", call.id, self._now + spec.ring_timeout, out)

    def _enforce_lengths(self, out: list[Decision]) -> None:
        """Cut every line to its ``max_length``; remember the shortest limit (while fewer wait in all, none is over)."""
        surge = self.surge
        if surge not in self._limits:
            self._limits[surge] = min((int(q.max_length.value(surge)) for q in self.queues.values()), default=0)
        for name, spec in self.queues.items():
            line = self._lines[name]
            limit = int(spec.max_length.value(surge))
            if len(line) > limit:
                # the surplus at the back of the line (lowest tier, latest) leaves
                for call in line.beyond(limit):
                    self._overflow(call, self._overflow_target(call), "max_length", out)

    # ------------------------------------------------------------------ surge

    def _update_surge(self, out: list[Decision]) -> None:
        control = self._surge
        on, cause = control.wanted()
        if on == control.on:
            return
        control.flip(on, cause)
        out.append(SurgeChanged(on, cause))
        if control.spec.pause_outbound:
            out.append(PauseOutbound() if on else ResumeOutbound())
        # R11: the wait limit changed; callers past the new limit leave now, others get a new deadline.
        for call in self._in_order():
            self._check_deadline(call, out)

    def _update_auto(self, out: list[Decision]) -> None:
        control = self._surge
        if not control.spec.auto:
            return
        now = self._now
        dwell_end = control.dwell_end(now)
        if dwell_end is not None:
            if not self._timers.armed("surge", "dwell"):
                self._arm("surge", "dwell", dwell_end, out)
            return
        ewt_now = 0.0
        length = 0
        for name in self.queues:
            n = len(self._lines[name])
            length = max(length, n)
            if n:
                staff = self._staff[name]
                ewt_now = max(ewt_now, ewt(n, staff.serving, staff.idle, self._aht[name].value))
        control.observe(now, ewt_now, length)
