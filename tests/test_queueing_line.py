"""The engine's ordered line against a plain reference: places, heads and staff counts as a sorted list would give them.

The engine keeps each queue's line ordered as callers come and go and counts
each queue's agents as they move, instead of sorting and scanning; these
tests compare what it says with the straightforward answer worked out from
scratch after every step (a plain ``sorted`` of the waiting callers by key),
over random sequences of arrivals with tiers and skills, answers, refused and
timed-out rings (callers sent back to the head), hang-ups, agents' buttons,
surge switches and queue reconfigurations that change tier priorities.
"""

from __future__ import annotations

import dataclasses
import math
from types import MappingProxyType

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from queueing.agents import AgentState
from queueing.engine import Engine
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
    Decision,
    Event,
    PolicyError,
    QueueReconfigured,
    RingAgent,
    SurgeSwitch,
    TimerFired,
)
from queueing.line import QueuedCall, QueuedCallState
from queueing.model import AgentSpec, Limit, Model, QueueSpec, SurgeSpec, Tier
from queueing.timers import Timers
from sim.plan import ScriptedCall, single_queue_plan
from sim.simulation import Simulation


def levels(**skills: int) -> MappingProxyType[str, int]:
    return MappingProxyType(dict(skills))


LINE_QUEUES = ("sales", "billing")
LINE_AGENTS = ("a1", "a2", "a3", "a4", "a5")
LINE_MODEL = Model(
    queues=(
        QueueSpec("sales", max_length=Limit(12, 6), max_wait=Limit(200, 120), ring_timeout=8.0, wrap_up=3.0),
        QueueSpec(
            "billing",
            skills=levels(billing=1),
            strategy="ring_all",
            max_length=Limit(10, 5),
            max_wait=Limit(150, 90),
            ring_timeout=6.0,
        ),
    ),
    agents=(
        AgentSpec("a1"),
        AgentSpec("a2", skills=levels(billing=1)),
        AgentSpec("a3", skills=levels(billing=2, fr=1), max_misses=1),
        AgentSpec("a4", skills=levels(fr=1)),
        AgentSpec("a5", skills=levels(billing=1, de=1)),
    ),
    surge=SurgeSpec(auto=True, ewt_on=400.0, ewt_off=60.0, queue_length_on=8, queue_length_off=2, min_dwell=20.0),
)


def reference_line(engine: Engine, queue: str | None = None) -> list[QueuedCall]:
    """The waiting callers (of ``queue``, or all) as a plain sort by key gives them."""
    waiting = [
        c
        for c in engine.calls.values()
        if c.state is QueuedCallState.WAITING and (queue is None or c.queue.name == queue)
    ]
    return sorted(waiting, key=lambda c: c.key)


class LineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = Engine(LINE_MODEL)
        self.now = 0.0
        self.serial = 0
        self.last: list[Decision] = []
        self.peak = 0

    def _at(self, dt: float) -> float:
        nxt = self.engine.next_timer()  # never step over a timer: one instant per step
        target = self.now + dt
        if nxt is not None and nxt < target:
            target = max(nxt, self.now)
        self.now = target
        return target

    def _feed(self, event: Event) -> None:
        try:
            self.last = self.engine.handle(event)
        except PolicyError:
            self.last = []
        self.peak = max(self.peak, len(reference_line(self.engine)))

    @rule(
        queue=st.sampled_from(LINE_QUEUES),
        tier=st.sampled_from(["ordinary", "senior", "special", "unknown"]),
        extra=st.sampled_from([frozenset(), frozenset(), frozenset({"fr"}), frozenset({"de"})]),
        dt=st.floats(0, 6),
    )
    def arrive(self, queue: str, tier: str, extra: frozenset[str], dt: float) -> None:
        self.serial += 1
        now = self._at(dt)
        self._feed(CallArrived(call_id=f"c{self.serial}", queue=queue, tier=tier, skills=extra, now=now))

    @rule(
        agent=st.sampled_from(LINE_AGENTS),
        what=st.sampled_from(["in", "ready", "not_ready", "out"]),
        dt=st.floats(0, 4),
    )
    def agent_button(self, agent: str, what: str, dt: float) -> None:
        now = self._at(dt)
        events: dict[str, Event] = {
            "in": AgentLoggedIn(agent=agent, now=now),
            "ready": AgentReady(agent=agent, now=now),
            "not_ready": AgentNotReady(agent=agent, reason="break", now=now),
            "out": AgentLoggedOut(agent=agent, now=now),
        }
        self._feed(events[what])

    @rule(data=st.data(), answer=st.booleans(), dt=st.floats(0, 5))
    def phone(self, data: st.DataObject, answer: bool, dt: float) -> None:
        ringing = sorted(a.id for a in self.engine.agents.values() if a.state is AgentState.RINGING)
        if ringing:
            agent = data.draw(st.sampled_from(ringing))
            call = self.engine.agents[agent].call
            assert call is not None
            now = self._at(dt)
            self._feed(
                AgentAnswered(agent=agent, call=call, now=now)
                if answer
                else AgentNoAnswer(agent=agent, call=call, now=now)  # the caller goes back to the head
            )

    @rule(data=st.data(), hang_up=st.booleans(), dt=st.floats(0, 20))
    def end(self, data: st.DataObject, hang_up: bool, dt: float) -> None:
        if self.engine.calls:
            call = data.draw(st.sampled_from(sorted(self.engine.calls)))
            now = self._at(dt)
            self._feed(CallerHungUp(call=call, now=now) if hang_up else CallEnded(call=call, now=now))

    @rule(dt=st.floats(0, 30))
    def wait(self, dt: float) -> None:
        self._feed(TimerFired(kind="tick", id="", now=self._at(dt)))

    @rule(on=st.sampled_from([True, False, None]), dt=st.floats(0, 5))
    def ops_switch(self, on: bool | None, dt: float) -> None:
        self._feed(SurgeSwitch(on=on, cause="manual", now=self._at(dt)))

    @rule(
        queue=st.sampled_from(LINE_QUEUES),
        priorities=st.lists(st.integers(1, 4), min_size=3, max_size=3),
        length=st.integers(1, 12),
        dt=st.floats(0, 5),
    )
    def reconfigure(self, queue: str, priorities: list[int], length: int, dt: float) -> None:
        spec = self.engine.queues[queue]
        tiers = tuple(Tier(name, p) for name, p in zip(("special", "senior", "ordinary"), priorities, strict=True))
        new = dataclasses.replace(spec, tiers=tiers, max_length=Limit(length, max(1, length // 2)))
        self._feed(QueueReconfigured(spec=new, now=self._at(dt)))

    @invariant()
    def every_place_in_line_is_the_rank_in_a_plain_sort(self) -> None:
        e = self.engine
        for queue in LINE_QUEUES:
            for rank, call in enumerate(reference_line(e, queue), start=1):
                assert e.position(call.id) == rank, (queue, call.id)
        for call in e.calls.values():
            if call.state is not QueuedCallState.WAITING:
                assert e.position(call.id) is None

    @invariant()
    def the_counts_are_what_a_scan_finds(self) -> None:
        e = self.engine
        snap = e.snapshot()
        assert e.waiting == len(reference_line(e))
        for name, spec in e.queues.items():
            skilled = [a for a in e.agents.values() if a.spec.can_take(spec.skills)]
            on = [a for a in skilled if a.state not in (AgentState.LOGGED_OUT, AgentState.NOT_READY)]
            q = snap.queues[name]
            assert (q.serving, q.idle) == (len(on), sum(a.state is AgentState.READY for a in on))
            assert q.waiting == len(reference_line(e, name))
            assert q.waiting <= spec.max_length.value(e.surge)

    @invariant()
    def each_ring_goes_to_the_first_caller_in_the_plain_order_the_agent_could_take(self) -> None:
        e = self.engine
        still_waiting = reference_line(e)
        for d in self.last:
            if isinstance(d, RingAgent) and d.call in e.calls:
                rung = e.calls[d.call]
                spec = e.agents[d.agent].spec
                for other in still_waiting:
                    if other.key < rung.key:
                        assert not spec.can_take(other.required), (other.id, rung.id, d.agent)
        for agent in e.agents.values():  # and no ready agent idles beside a caller it could take
            if agent.state is AgentState.READY:
                assert not any(agent.spec.can_take(c.required) for c in still_waiting)

    @invariant()
    def the_longest_line_is_exact(self) -> None:
        assert self.engine.peak_waiting == self.peak


LineMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestLineMachine = LineMachine.TestCase


def test_a_long_line_is_ordered_by_tier_then_requeue_then_arrival() -> None:
    spec = QueueSpec("q", max_length=Limit(10**6, 10**6), max_wait=Limit(1e9, 1e9), announce_every=Limit(1e9, 1e9))
    engine = Engine(Model(queues=(spec,), agents=(AgentSpec("a"),), surge=SurgeSpec(auto=False)))
    tiers = ("ordinary", "senior", "special")
    for i in range(3000):
        engine.handle(CallArrived(call_id=f"c{i}", queue="q", tier=tiers[(i * 7) % 3], now=float(i)))
    for i in range(0, 3000, 3):
        engine.handle(CallerHungUp(call=f"c{i}", now=3000.0))
    ranks = {c.id: r for r, c in enumerate(reference_line(engine), start=1)}
    assert len(ranks) == engine.waiting == 2000
    assert all(engine.position(cid) == r for cid, r in ranks.items())
    assert engine.snapshot().queues["q"].ewt == math.inf  # nobody logged in: no agent serves


def test_the_longest_line_of_a_block_is_the_true_maximum_not_the_largest_sample() -> None:
    # Five callers arrive together for one agent between two samples (every 600 s) and are all gone
    # by the next one: every sample sees an empty line, the engine's running maximum sees four waiting.
    plan = single_queue_plan(arrival_rate=0.001, aht=10.0, agents=1, hours=1.0, block_seconds=1800.0).with_changes(
        sample_every=600.0
    )
    script = [ScriptedCall(at=100.0 + i * 0.1, queue="general", handle=10.0) for i in range(5)]
    script += [ScriptedCall(at=2000.0, queue="general", handle=10.0)]  # the second block: nobody waits
    result = Simulation(plan, 1, script=script).run()
    first, second = result.blocks
    assert max(s.waiting for s in result.samples) == 0  # the samples miss it
    assert first["queue_length_max"] == 4.0  # the first caller is rung at once, four wait
    assert second["queue_length_max"] == 0.0  # the running maximum starts afresh per block
    assert first["answered"] == 5.0


def test_timers_left_behind_far_in_the_future_do_not_pile_up() -> None:
    # every caller's max_wait timer is disarmed when answered; far-off entries never reach the heap's top
    timers = Timers()
    timers.arm("wrap_up", "a", 5.0)
    for i in range(10_000):
        timers.arm("max_wait", f"c{i}", 1e9 + i)
        timers.arm("max_wait", f"c{i}", 1e9 + i)  # re-armed at the same time: one of the two fires
        timers.disarm("max_wait", f"c{i}")
    timers.arm("max_wait", "kept", 2e9)
    assert len(timers._heap) < 200
    assert timers.next() == 5.0 and timers.pop() == ("wrap_up", "a")
    assert timers.next() == 2e9 and timers.pop() == ("max_wait", "kept")
    assert timers.next() is None
