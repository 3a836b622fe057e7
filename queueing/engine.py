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
arrival (``queueing/line.py``). Agents move by the table ``TRANSITIONS`` of
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
import itertools
from collections.abc import Iterable

from queueing.agents import NO_ANSWER, TRANSITIONS, Agent, AgentState, choose
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
from queueing.line import QueuedCall, QueuedCallState, call_key, required_skills
from queueing.model import Model, OverflowTarget, QueueSpec
from queueing.stats import QueueSnapshot, QueueStats, Snapshot
from queueing.surge import SurgeControl
from queueing.timers import Timers

_EPS = 1e-9


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
        self._skilled_cache: dict[str, tuple[QueueSpec, list[Agent]]] = {}
        self._waiting: dict[str, dict[str, QueuedCall]] = {q.name: {} for q in model.queues}  # the lines, unsorted
        self._ready: dict[str, Agent] = {}  # agents in state READY

    # ---------------------------------------------------------------- public

    def handle(self, event: Event) -> list[Decision]:
        if self.now is not None and event.now < self.now - _EPS:
            raise PolicyError(f"time went backwards: {event.now} < {self.now}")
        self._validate(event)
        out: list[Decision] = []
        if self.now is None:
            self._start(event.now, out)
        self._fire_timers(event.now, out)
        self.now = max(event.now, self.now if self.now is not None else event.now)
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
        for name, spec in self.queues.items():
            line = self._line(name)
            serving, idle = self._serving(spec)
            queues[name] = QueueSnapshot(
                name=name,
                waiting=len(line),
                ringing=sum(
                    1 for c in self.calls.values() if c.queue.name == name and c.state is QueuedCallState.RINGING
                ),
                longest_waiting=max((now - c.arrived for c in line), default=0.0),
                ewt=ewt(len(line) + 1, serving, idle, self._aht[name].value),
                aht=self._aht[name].value,
                serving=serving,
                idle=idle,
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
        return 1 + sum(1 for c in self._line(call.queue.name) if c.key < call.key)

    def max_wait(self, queue: str) -> float:
        return self.queues[queue].max_wait.value(self.surge)

    # ------------------------------------------------------------ validation

    def _agent(self, agent_id: str) -> Agent:
        try:
            return self.agents[agent_id]
        except KeyError:
            raise PolicyError(f"unknown agent {agent_id!r}") from None

    def _validate(self, event: Event) -> None:
        trigger = {AgentLoggedIn: "login", AgentReady: "ready", AgentNotReady: "not_ready", AgentLoggedOut: "logout"}
        match event:
            case CallArrived():
                if event.queue not in self.queues:
                    raise PolicyError(f"unknown queue {event.queue!r}")
                if event.call_id in self.calls:
                    raise PolicyError(f"call {event.call_id!r} is already in the books")
            case AgentLoggedIn() | AgentReady() | AgentNotReady() | AgentLoggedOut():
                agent = self._agent(event.agent)
                if (agent.state, trigger[type(event)]) not in TRANSITIONS:
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
        while True:
            at = self.next_timer()
            if at is None or at > until + _EPS:
                return
            self.now = max(at, self.now if self.now is not None else at)
            while (nxt := self.next_timer()) is not None and nxt <= at + _EPS:
                kind, ident = self._timers.pop()
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
        for call in sorted(self.calls.values(), key=lambda c: c.key):
            if call.queue.name != spec.name:
                continue
            call.queue = spec
            call.priority = spec.tier_priority(call.tier)
            call.required = required_skills(spec, call.extra_skills)
            if call.state is QueuedCallState.WAITING:
                self._check_deadline(call, out)

    def _move(self, agent: Agent, trigger: str) -> None:
        state = agent.move(trigger)  # PolicyError only through a bug: input is validated first
        if state is AgentState.READY:
            self._ready[agent.id] = agent
        else:
            self._ready.pop(agent.id, None)

    def _arrive(self, event: CallArrived, out: list[Decision]) -> None:
        spec = self.queues[event.queue]
        required = required_skills(spec, event.skills)
        call = QueuedCall(
            id=event.call_id,
            queue=spec,
            tier=event.tier,
            priority=spec.tier_priority(event.tier),
            required=required,
            urgent=event.urgent,
            arrived=self._now,
            order=next(self._order),
            extra_skills=event.skills,
        )
        stats = self.stats[spec.name]
        stats.offered += 1
        surge = self.model.surge
        if self.surge and surge.notice:
            out.append(PlayAnnouncement(call.id, "notice"))
        self.calls[call.id] = call
        self._waiting[spec.name][call.id] = call
        call.predicted_ewt = self._ewt_of(call)
        # R8: peak shaving only in surge, only for a really long wait, never top tier or urgent callers.
        if (
            self.surge
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
        self._arm("max_wait", call.id, call.arrived + spec.max_wait.value(self.surge), out)
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
        for other in sorted(call.agents - {agent.id}):
            out.append(CancelRing(other, call.id))
            self._release(self.agents[other], "cancel")
        self._move(agent, "answer")
        agent.misses = 0
        agent.answered += 1
        agent.talk_started = now
        call.state = QueuedCallState.TALKING
        self._waiting[call.queue.name].pop(call.id, None)
        call.agents = {agent.id}
        for kind in ("ring", "max_wait", "announce"):
            self._disarm(kind, call.id)
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
        self._waiting[call.queue.name][call.id] = call
        call.requeued = True
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
        self._waiting[call.queue.name].pop(call.id, None)

    # --------------------------------------------------------------- the line

    def _line(self, queue: str) -> list[QueuedCall]:
        return sorted(self._waiting[queue].values(), key=call_key)

    def _serving(self, spec: QueueSpec) -> tuple[int, int]:
        serving = idle = 0
        off = (AgentState.LOGGED_OUT, AgentState.NOT_READY)
        for agent in self._skilled(spec):
            state = agent.state
            if state not in off:
                serving += 1
                idle += state is AgentState.READY
        return serving, idle

    def _skilled(self, spec: QueueSpec) -> list[Agent]:
        """The agents with the queue's skills (specs are frozen: worked out once per spec)."""
        found = self._skilled_cache.get(spec.name)
        if found is None or found[0] is not spec:
            found = (spec, [a for a in self.agents.values() if a.spec.can_take(spec.skills)])
            self._skilled_cache[spec.name] = found
        return found[1]

    def _ewt_of(self, call: QueuedCall) -> float:
        position = 1 + sum(1 for c in self._line(call.queue.name) if c.key < call.key and c.id != call.id)
        serving, idle = self._serving(call.queue)
        return ewt(position, serving, idle, self._aht[call.queue.name].value)

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
        position = self.position(call.id)
        serving, idle = self._serving(call.queue)
        assert position is not None
        estimate = ewt(position, serving, idle, self._aht[call.queue.name].value)
        out.append(PlayAnnouncement(call.id, "position_ewt", position, estimate))
        self._arm("announce", call.id, self._now + call.queue.announce_every.value(self.surge), out)

    # ------------------------------------------------------------ settle

    def _settle(self, out: list[Decision]) -> None:
        """After events at one instant: surge switch, routing, length limits, greetings of new callers."""
        self._update_surge(out)
        self._dispatch(out)
        self._enforce_lengths(out)
        for call_id in self._fresh:
            call = self.calls.get(call_id)
            if call is not None and call.state is QueuedCallState.WAITING:
                self._announce(call, out)
        self._fresh.clear()

    def _dispatch(self, out: list[Decision]) -> None:
        now = self._now
        ready = list(self._ready.values())
        if not ready:
            return  # nobody to ring: the usual case under load
        waiting = sorted((c for line in self._waiting.values() for c in line.values()), key=call_key)
        for call in waiting:
            free = [a for a in ready if a.state is AgentState.READY and a.spec.can_take(call.required)]
            if not free:
                continue
            spec = call.queue
            chosen = choose(spec.strategy, free, self._round_robin.get(spec.name))
            if spec.strategy == "round_robin":
                self._round_robin[spec.name] = chosen[0].id
            call.state = QueuedCallState.RINGING
            self._waiting[spec.name].pop(call.id, None)
            self._disarm("announce", call.id)
            for agent in chosen:
                self._move(agent, "ring")
                agent.call = call.id
                call.agents.add(agent.id)
                out.append(RingAgent(agent.id, call.id, spec.ring_timeout))
            self._arm("ring", call.id, now + spec.ring_timeout, out)

    def _enforce_lengths(self, out: list[Decision]) -> None:
        for name, spec in self.queues.items():
            line = self._line(name)
            limit = int(spec.max_length.value(self.surge))
            # the surplus at the back of the line (lowest tier, latest) leaves
            for call in line[limit:][::-1]:
                self._overflow(call, self._overflow_target(call), "max_length", out)

    # ------------------------------------------------------------------ surge

    def _update_surge(self, out: list[Decision]) -> None:
        self._update_auto(out)
        control = self._surge
        on, cause = control.wanted()
        if on == control.on:
            return
        control.flip(on, cause)
        out.append(SurgeChanged(on, cause))
        if control.spec.pause_outbound:
            out.append(PauseOutbound() if on else ResumeOutbound())
        # R11: the wait limit changed; callers past the new limit leave now, others get a new deadline.
        for call in sorted(self.calls.values(), key=lambda c: c.key):
            if call.state is QueuedCallState.WAITING:
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
        for name, q in self.queues.items():
            line = self._line(name)
            length = max(length, len(line))
            if line:
                serving, idle = self._serving(q)
                ewt_now = max(ewt_now, ewt(len(line), serving, idle, self._aht[name].value))
        control.observe(now, ewt_now, length)
