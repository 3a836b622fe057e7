"""queueing/: the pure decision engine, on scripted events with explicit times and a stateful hypothesis model."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from support.models import STATEFUL_MODEL, skills

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
from queueing.line import QueuedCallState
from queueing.model import AgentSpec, Limit, Model, ModelError, QueueSpec, SurgeSpec
from queueing.surge import SurgeControl
from queueing.timers import Timers


def make(
    *,
    agents: int = 1,
    strategy: str = "longest_idle",
    surge: SurgeSpec | None = None,
    **queue: object,
) -> Engine:
    spec = QueueSpec(name="sales", strategy=strategy, **queue)  # type: ignore[arg-type]
    model = Model(
        queues=(spec,),
        agents=tuple(AgentSpec(f"a{i}", max_misses=2) for i in range(1, agents + 1)),
        surge=surge or SurgeSpec(auto=False),
    )
    return Engine(model)


def arrive(engine: Engine, call: str, now: float, tier: str = "ordinary", **kw: object) -> list[Decision]:
    return engine.handle(CallArrived(call_id=call, queue=kw.pop("queue", "sales"), tier=tier, now=now, **kw))  # type: ignore[arg-type]


def tick(engine: Engine, now: float) -> list[Decision]:
    return engine.handle(TimerFired(kind="tick", id="", now=now))


def of(kind: type, decisions: list[Decision]) -> list[Decision]:
    return [d for d in decisions if isinstance(d, kind)]


# ------------------------------------------------------------------ scripted


def test_a_call_is_rung_answered_wrapped_up_and_counted() -> None:
    e = make()
    e.handle(AgentLoggedIn(agent="a1", now=0.0))
    out = arrive(e, "c1", 1.0)
    assert RingAgent("a1", "c1", 12.0) in out
    assert SetTimer("ring", "c1", 13.0) in out
    assert of(PlayAnnouncement, out) == []  # rung at once: nothing to announce
    assert e.handle(AgentAnswered(agent="a1", call="c1", now=4.0)) == [Connect("a1", "c1")]
    assert e.agents["a1"].state is AgentState.TALKING
    out = e.handle(CallEnded(call="c1", now=64.0))
    assert out == [SetTimer("wrap_up", "a1", 74.0)]
    assert e.agents["a1"].state is AgentState.WRAP_UP
    assert e.next_timer() == 74.0
    tick(e, 74.0)
    assert e.agents["a1"].state is AgentState.READY
    s = e.stats["sales"]
    assert (s.offered, s.answered, s.answered_within_t) == (1, 1, 1)
    assert s.asa == pytest.approx(3.0)
    assert s.service_level == 1.0
    # AHT moved from 180 towards the 73 s this call took (talk 60 + wrap-up 10 + ... from answer at 4)
    assert e.snapshot().queues["sales"].aht == pytest.approx(0.2 * 70.0 + 0.8 * 180.0)


def test_higher_tier_first_then_longest_waiting() -> None:
    e = make()
    arrive(e, "ord1", 0.0)
    arrive(e, "ord2", 1.0)
    arrive(e, "spec", 2.0, tier="special")
    arrive(e, "sen", 3.0, tier="senior")
    assert [e.position(c) for c in ("spec", "sen", "ord1", "ord2")] == [1, 2, 3, 4]
    out = e.handle(AgentLoggedIn(agent="a1", now=4.0))
    assert of(RingAgent, out) == [RingAgent("a1", "spec", 12.0)]


def test_waiting_caller_hears_position_and_ewt() -> None:
    e = make(agents=2)
    e.handle(AgentLoggedIn(agent="a1", now=0.0))
    e.handle(AgentLoggedIn(agent="a2", now=0.0))
    arrive(e, "c1", 0.0)
    arrive(e, "c2", 0.0)
    out = arrive(e, "c3", 0.0)
    # both agents ringing, none idle: EWT(1) = 1 * 180 / 2
    assert PlayAnnouncement("c3", "position_ewt", 1, 90.0) in out
    assert SetTimer("announce", "c3", 30.0) in out
    out = tick(e, 30.0)
    # nobody answered: c1 and c2 went back ahead of c3 at 12 s and 24 s, both agents are now
    # not ready "no answer", so nobody serves the queue and the wait cannot be estimated
    assert of(PlayAnnouncement, out) == [PlayAnnouncement("c3", "position_ewt", 3, math.inf)]


def test_ring_timeout_sends_caller_back_to_head_and_agent_not_ready_after_n_misses() -> None:
    e = make(agents=2)
    e.handle(AgentLoggedIn(agent="a1", now=0.0))
    arrive(e, "c1", 0.0)
    arrive(e, "c2", 1.0)
    # a1 never answers; c1 keeps its place ahead of c2
    out = tick(e, 12.0)
    assert of(CancelRing, out) == [CancelRing("a1", "c1")]  # the phone stops ringing
    assert of(RingAgent, out) == [RingAgent("a1", "c1", 12.0)]
    assert out.index(CancelRing("a1", "c1")) < out.index(RingAgent("a1", "c1", 12.0))
    assert e.stats["sales"].ring_no_answer == 1
    out = tick(e, 24.0)
    assert of(CancelRing, out) == [CancelRing("a1", "c1")]
    assert e.agents["a1"].state is AgentState.NOT_READY
    assert e.agents["a1"].reason == "no answer"
    assert of(RingAgent, out) == []
    assert e.position("c1") == 1 and e.position("c2") == 2
    out = e.handle(AgentLoggedIn(agent="a2", now=25.0))
    assert of(RingAgent, out) == [RingAgent("a2", "c1", 12.0)]


def test_agent_reported_no_answer_and_caller_hangup_while_ringing() -> None:
    e = make(agents=2)
    e.handle(AgentLoggedIn(agent="a1", now=0.0))
    e.handle(AgentLoggedIn(agent="a2", now=1.0))
    out = arrive(e, "c1", 2.0)
    assert of(RingAgent, out) == [RingAgent("a1", "c1", 12.0)]  # longest idle
    out = e.handle(AgentNoAnswer(agent="a1", call="c1", now=5.0))
    assert of(RingAgent, out) == [RingAgent("a2", "c1", 12.0)]
    out = e.handle(CallerHungUp(call="c1", now=6.0))
    assert out == [CancelRing("a2", "c1")]
    assert e.agents["a2"].state is AgentState.READY
    assert e.stats["sales"].abandoned == 1
    assert e.stats["sales"].abandoned_short == 1  # waited 4 s, within the 5 s grace
    # stale answer after the hang-up is ignored
    assert e.handle(AgentAnswered(agent="a2", call="c1", now=7.0)) == []


def test_short_abandon_is_left_out_of_service_level() -> None:
    e = make()
    arrive(e, "c1", 0.0)
    e.handle(CallerHungUp(call="c1", now=2.0))
    arrive(e, "c2", 3.0)
    e.handle(CallerHungUp(call="c2", now=30.0))
    s = e.stats["sales"]
    assert (s.abandoned, s.abandoned_short) == (2, 1)
    assert s.service_level == 0.0
    assert s.longest_wait == 27.0


def test_max_wait_overflows_normally_and_shorter_in_surge() -> None:
    e = make(surge=SurgeSpec(auto=False, peak_shaving_ewt=None))
    arrive(e, "c1", 0.0)
    assert e.next_timer() == 30.0  # announcement before the 60 s limit
    out = tick(e, 60.0)
    assert Overflow("c1", "message", "max_wait") in out
    assert "c1" not in e.calls
    out = e.handle(SurgeSwitch(on=True, cause="manual", now=61.0))
    assert out == [SurgeChanged(True, "manual"), PauseOutbound()]
    arrive(e, "c2", 62.0)
    out = tick(e, 102.0)
    assert Overflow("c2", "callback", "max_wait") in out
    assert e.stats["sales"].overflowed == {"message": 1, "callback": 1}


def test_surge_switch_shortens_the_wait_of_callers_already_in_line() -> None:
    e = make(surge=SurgeSpec(auto=False, peak_shaving_ewt=None))
    arrive(e, "c1", 0.0)
    arrive(e, "c2", 30.0)
    out = e.handle(SurgeSwitch(on=True, cause="manual", now=45.0))
    assert Overflow("c1", "callback", "max_wait") in out  # waited 45 s > 40 s
    assert SetTimer("max_wait", "c2", 70.0) in out
    out = e.handle(SurgeSwitch(on=None, cause="manual", now=50.0))
    assert out[:2] == [SurgeChanged(False, "auto"), ResumeOutbound()]
    assert SetTimer("max_wait", "c2", 90.0) in out


def test_runtime_reconfiguration_applies_new_limits_to_callers_already_in_line() -> None:
    e = make(surge=SurgeSpec(auto=False, peak_shaving_ewt=None))
    for i, t in enumerate((0.0, 10.0, 20.0)):
        arrive(e, f"c{i}", t)
    spec = dataclasses.replace(
        e.queues["sales"], max_wait=Limit(25.0, 15.0), max_length=Limit(1, 1), overflow="self_service"
    )
    out = e.handle(QueueReconfigured(spec=spec, now=26.0))
    # c0 waited 26 s > 25 s; of c1 and c2 only one place is left: the later caller leaves
    assert of(Overflow, out) == [
        Overflow("c0", "self_service", "max_wait"),
        Overflow("c2", "self_service", "max_length"),
    ]
    assert SetTimer("max_wait", "c1", 35.0) in out
    assert e.calls["c1"].queue is spec
    with pytest.raises(PolicyError):
        e.handle(QueueReconfigured(spec=QueueSpec(name="nope"), now=27.0))
    e.handle(SurgeReconfigured(spec=SurgeSpec(auto=True, ewt_on=1.0, ewt_off=0.5, min_dwell=0.0), now=28.0))
    assert e.surge  # c1 is still waiting with nobody serving: EWT is infinite


def test_a_long_estimated_wait_is_offered_a_callback_at_once() -> None:
    e = make(agents=1, callback_ewt=300.0, initial_aht=200.0)
    e.handle(AgentLoggedIn(agent="a1", now=0.0))
    arrive(e, "c1", 1.0)  # rung at once
    out = arrive(e, "c2", 2.0)  # EWT 1 * 200 / 1 = 200 s: waits
    assert of(Overflow, out) == [] and e.position("c2") == 1
    out = arrive(e, "c3", 3.0)  # EWT 2 * 200 = 400 s > 300 s: a callback instead
    assert of(Overflow, out) == [Overflow("c3", "callback", "ewt")]
    assert "c3" not in e.calls and e.stats["sales"].overflowed == {"callback": 1}
    with pytest.raises(ModelError):
        QueueSpec(name="q", callback_ewt=0.0)


def test_max_length_overflows_the_back_of_the_line_not_the_key_tier() -> None:
    e = make(max_length=Limit(2, 1))
    arrive(e, "o1", 0.0)
    arrive(e, "o2", 1.0)
    out = arrive(e, "s1", 2.0, tier="special")
    assert of(Overflow, out) == [Overflow("o2", "message", "max_length")]
    assert e.position("s1") == 1


def test_ring_all_rings_everyone_and_cancels_the_others_on_answer() -> None:
    e = make(agents=3, strategy="ring_all")
    for a in ("a1", "a2", "a3"):
        e.handle(AgentLoggedIn(agent=a, now=0.0))
    e.handle(AgentNotReady(agent="a3", reason="lunch", now=0.0))
    out = arrive(e, "c1", 1.0)
    assert of(RingAgent, out) == [RingAgent("a1", "c1", 12.0), RingAgent("a2", "c1", 12.0)]
    out = e.handle(AgentAnswered(agent="a2", call="c1", now=3.0))
    assert out == [CancelRing("a1", "c1"), Connect("a2", "c1")]
    assert e.agents["a1"].state is AgentState.READY


def test_round_robin_and_fewest_calls() -> None:
    e = make(agents=3, strategy="round_robin")
    for a in ("a1", "a2", "a3"):
        e.handle(AgentLoggedIn(agent=a, now=0.0))
    rung = []
    for i in range(4):
        out = arrive(e, f"c{i}", 1.0 + i)
        (ring,) = of(RingAgent, out)
        rung.append(ring.agent)  # type: ignore[union-attr]
        e.handle(CallerHungUp(call=f"c{i}", now=1.5 + i))
    assert rung == ["a1", "a2", "a3", "a1"]

    e = make(agents=2, strategy="fewest_calls", wrap_up=0.0)
    e.handle(AgentLoggedIn(agent="a2", now=0.0))
    e.handle(AgentLoggedIn(agent="a1", now=1.0))
    arrive(e, "c1", 2.0)  # a2 has been idle longest
    e.handle(AgentAnswered(agent="a2", call="c1", now=3.0))
    e.handle(CallEnded(call="c1", now=4.0))
    tick(e, 4.0)
    out = arrive(e, "c2", 5.0)
    assert of(RingAgent, out) == [RingAgent("a1", "c2", 12.0)]  # a1 took fewer calls


def test_skills_and_levels_decide_who_may_take_a_caller() -> None:
    model = Model(
        queues=(QueueSpec("billing", skills=skills(billing=2)),),
        agents=(AgentSpec("junior", skills=skills(billing=1)), AgentSpec("senior", skills=skills(billing=3, fr=1))),
    )
    e = Engine(model)
    e.handle(AgentLoggedIn(agent="senior", now=0.0))
    e.handle(AgentNotReady(agent="senior", reason="meeting", now=0.0))
    e.handle(AgentLoggedIn(agent="junior", now=0.0))
    out = arrive(e, "c1", 1.0, queue="billing")
    assert of(RingAgent, out) == []
    out = e.handle(AgentReady(agent="senior", now=2.0))
    assert of(RingAgent, out) == [RingAgent("senior", "c1", 12.0)]
    e.handle(AgentNotReady(agent="senior", reason="meeting", now=3.0))  # caller back in line, no miss
    assert e.calls["c1"].state is QueuedCallState.WAITING
    assert e.agents["senior"].misses == 0
    # a caller who needs French: only "senior" fits even for a queue junior would otherwise take
    e2 = Engine(Model(queues=(QueueSpec("info"),), agents=model.agents))
    e2.handle(AgentLoggedIn(agent="junior", now=0.0))
    out = arrive(e2, "c2", 1.0, queue="info", skills=frozenset({"fr"}))
    assert of(RingAgent, out) == []


def test_agent_state_table_rejects_illegal_input_without_changing_anything() -> None:
    e = make()
    with pytest.raises(PolicyError):
        e.handle(AgentReady(agent="a1", now=0.0))  # logged out
    with pytest.raises(PolicyError):
        e.handle(AgentReady(agent="nobody", now=0.0))
    e.handle(AgentLoggedIn(agent="a1", now=0.0))
    arrive(e, "c1", 0.0)
    e.handle(AgentAnswered(agent="a1", call="c1", now=1.0))
    with pytest.raises(PolicyError):
        e.handle(AgentLoggedOut(agent="a1", now=2.0))
    with pytest.raises(PolicyError):
        e.handle(AgentReady(agent="a1", now=2.0))
    # not-ready while talking is remembered for after wrap-up
    e.handle(AgentNotReady(agent="a1", reason="break", now=2.0))
    e.handle(CallEnded(call="c1", now=3.0))
    tick(e, 13.0)
    assert (e.agents["a1"].state, e.agents["a1"].reason) == (AgentState.NOT_READY, "break")
    with pytest.raises(PolicyError):
        tick(e, 1.0)  # time never goes back


def test_auto_surge_with_hysteresis_and_dwell() -> None:
    surge = SurgeSpec(auto=True, ewt_on=100.0, ewt_off=50.0, min_dwell=60.0, peak_shaving_ewt=None)
    e = make(surge=surge, max_wait=Limit(600.0, 600.0), announce_every=Limit(600.0, 600.0))
    e.handle(AgentLoggedIn(agent="a1", now=0.0))
    arrive(e, "c0", 0.0)  # a1 rings c0
    out = arrive(e, "c1", 1.0)  # EWT of the line: 1 * 180 / 1 >= 100
    assert SurgeChanged(True, "auto") in out
    assert e.surge
    e.handle(CallerHungUp(call="c1", now=2.0))  # line empty: EWT 0, but the dwell holds surge on
    assert e.surge
    assert e.next_timer() == 12.0  # the ring timeout; the dwell timer comes after
    e.handle(CallerHungUp(call="c0", now=3.0))
    assert e.next_timer() == 61.0
    out = tick(e, 61.0)
    assert SurgeChanged(False, "auto") in out
    assert e.surge_changes == {"manual": 0, "schedule": 0, "auto": 2}


def test_scheduled_surge_window() -> None:
    e = make(surge=SurgeSpec(auto=False, schedule=((100.0, 200.0),)))
    out = tick(e, 0.0)
    assert SetTimer("schedule", "0:start", 100.0) in out
    out = tick(e, 100.0)
    assert SurgeChanged(True, "schedule") in out
    out = tick(e, 200.0)
    assert SurgeChanged(False, "auto") in out


def test_peak_shaving_only_long_waits_never_top_tier_or_urgent() -> None:
    surge = SurgeSpec(auto=False, peak_shaving_ewt=300.0)
    e = make(surge=surge)
    e.handle(SurgeSwitch(on=True, cause="manual", now=0.0))
    e.handle(AgentLoggedIn(agent="a1", now=0.0))
    arrive(e, "c1", 0.0)  # rung
    arrive(e, "c2", 0.0)  # EWT 180: kept
    out = arrive(e, "c3", 0.0)  # EWT 360 > 300: shaved
    assert of(PlayAnnouncement, out) == [PlayAnnouncement("c3", "peak_shaving")]
    assert of(Overflow, out) == [Overflow("c3", "peak_shaving", "peak_shaving")]
    out = arrive(e, "c4", 0.0, urgent=True)
    assert of(Overflow, out) == []
    out = arrive(e, "c5", 0.0, tier="special")
    assert of(Overflow, out) == []
    assert e.stats["sales"].overflowed == {"peak_shaving": 1}


def test_ewt_error_of_answered_calls() -> None:
    e = make()
    e.handle(AgentLoggedIn(agent="a1", now=0.0))
    arrive(e, "c1", 0.0)
    arrive(e, "c2", 0.0)  # told 180 s
    e.handle(AgentAnswered(agent="a1", call="c1", now=1.0))
    e.handle(CallEnded(call="c1", now=20.0))
    tick(e, 30.0)  # wrap-up ends: a1 rings c2
    e.handle(AgentAnswered(agent="a1", call="c2", now=32.0))
    s = e.stats["sales"]
    assert s.ewt_samples == 2
    # c1 told 0 waited 1; c2 told 180 waited 32
    assert s.ewt_error_mean == pytest.approx((1.0 + (32.0 - 180.0)) / 2)
    assert s.ewt_abs_error_mean == pytest.approx((1.0 + 148.0) / 2)


def test_timers_rearm_replaces_and_disarm_forgets() -> None:
    t = Timers()
    t.arm("ring", "c1", 10.0)
    t.arm("ring", "c1", 5.0)  # re-armed earlier: only the new time counts
    t.arm("wrap_up", "a1", 7.0)
    t.arm("announce", "c2", 6.0)
    t.disarm("announce", "c2")
    assert t.next() == 5.0 and t.pop() == ("ring", "c1")
    assert t.next() == 7.0 and t.armed("wrap_up", "a1") and not t.armed("ring", "c1")
    assert t.pop() == ("wrap_up", "a1")
    assert t.next() is None  # the stale 10.0 and the disarmed 6.0 are dropped, never fired


def test_surge_control_hysteresis_and_precedence() -> None:
    c = SurgeControl(SurgeSpec(ewt_on=100.0, ewt_off=40.0, min_dwell=30.0))
    c.observe(0.0, ewt_now=120.0, length=0)
    assert c.auto and c.wanted() == (True, "auto")
    assert c.dwell_end(10.0) == 30.0  # no change before min_dwell
    c.observe(30.0, ewt_now=60.0, length=0)
    assert c.auto  # between ewt_off and ewt_on: stays on
    c.observe(31.0, ewt_now=40.0, length=0)
    assert not c.auto
    c.switch(True, "schedule", 32.0)
    assert c.wanted() == (True, "schedule")
    c.switch(False, "manual", 33.0)
    assert c.wanted() == (False, "manual")  # manual beats the schedule
    c.switch(None, "manual", 34.0)
    assert c.wanted() == (True, "schedule")


def test_ewt_formula_and_moving_aht() -> None:
    assert ewt(1, serving=2, idle=1, aht=100.0) == 0.0
    assert ewt(3, serving=2, idle=1, aht=100.0) == 100.0
    assert ewt(1, serving=0, idle=0, aht=100.0) == math.inf
    aht = MovingAht(100.0, 0.5)
    aht.add(200.0)
    assert aht.value == 150.0
    with pytest.raises(ValueError):
        ewt(0, 1, 0, 1.0)


def test_model_is_validated() -> None:
    with pytest.raises(ModelError):
        QueueSpec("q", strategy="random")  # type: ignore[arg-type]
    with pytest.raises(ModelError):
        SurgeSpec(ewt_on=10.0, ewt_off=20.0)
    with pytest.raises(ModelError):
        Model(queues=(QueueSpec("q"), QueueSpec("q")), agents=())


# ----------------------------------------------------------------- stateful

QUEUES = ("sales", "billing")
AGENTS = ("a1", "a2", "a3", "a4")
MODEL = STATEFUL_MODEL


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = Engine(MODEL)
        self.now = 0.0
        self.serial = 0
        self.last: list[Decision] = []

    def _at(self, dt: float) -> float:
        # never step over a timer, so everything in one step happens at one instant
        nxt = self.engine.next_timer()
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

    @rule(
        queue=st.sampled_from(QUEUES),
        tier=st.sampled_from(["ordinary", "senior", "special", "vip?"]),
        fr=st.booleans(),
        urgent=st.booleans(),
        dt=st.floats(0, 10),
    )
    def arrive(self, queue: str, tier: str, fr: bool, urgent: bool, dt: float) -> None:
        self.serial += 1
        skills_ = frozenset({"fr"}) if fr else frozenset()
        self._feed(
            CallArrived(
                call_id=f"c{self.serial}", queue=queue, tier=tier, skills=skills_, urgent=urgent, now=self._at(dt)
            )
        )

    @rule(agent=st.sampled_from(AGENTS), what=st.sampled_from(["in", "ready", "not_ready", "out"]), dt=st.floats(0, 5))
    def agent_button(self, agent: str, what: str, dt: float) -> None:
        now = self._at(dt)
        event: dict[str, Event] = {
            "in": AgentLoggedIn(agent=agent, now=now),
            "ready": AgentReady(agent=agent, now=now),
            "not_ready": AgentNotReady(agent=agent, reason="break", now=now),
            "out": AgentLoggedOut(agent=agent, now=now),
        }
        self._feed(event[what])

    @rule(data=st.data(), dt=st.floats(0, 8))
    def answer(self, data: st.DataObject, dt: float) -> None:
        ringing = sorted(a.id for a in self.engine.agents.values() if a.state is AgentState.RINGING)
        if ringing:
            agent = data.draw(st.sampled_from(ringing))
            call = self.engine.agents[agent].call
            assert call is not None
            self._feed(AgentAnswered(agent=agent, call=call, now=self._at(dt)))

    @rule(data=st.data(), dt=st.floats(0, 8))
    def refuse(self, data: st.DataObject, dt: float) -> None:
        ringing = sorted(a.id for a in self.engine.agents.values() if a.state is AgentState.RINGING)
        if ringing:
            agent = data.draw(st.sampled_from(ringing))
            call = self.engine.agents[agent].call
            assert call is not None
            self._feed(AgentNoAnswer(agent=agent, call=call, now=self._at(dt)))

    @rule(data=st.data(), dt=st.floats(0, 30), hang_up=st.booleans())
    def end(self, data: st.DataObject, dt: float, hang_up: bool) -> None:
        if self.engine.calls:
            call = data.draw(st.sampled_from(sorted(self.engine.calls)))
            now = self._at(dt)
            self._feed(CallerHungUp(call=call, now=now) if hang_up else CallEnded(call=call, now=now))

    @rule(dt=st.floats(0, 40))
    def wait(self, dt: float) -> None:
        self._feed(TimerFired(kind="tick", id="", now=self._at(dt)))

    @rule(on=st.sampled_from([True, False, None]), dt=st.floats(0, 5))
    def ops_switch(self, on: bool | None, dt: float) -> None:
        self._feed(SurgeSwitch(on=on, cause="manual", now=self._at(dt)))

    @invariant()
    def caller_with_at_most_one_agent_and_agent_with_at_most_one_call(self) -> None:
        e = self.engine
        for call in e.calls.values():
            if call.state is QueuedCallState.TALKING:
                assert len(call.agents) == 1
            if call.state is QueuedCallState.WAITING:
                assert not call.agents
            for agent_id in call.agents:
                assert e.agents[agent_id].call == call.id
        talking = [a.call for a in e.agents.values() if a.state is AgentState.TALKING]
        assert len(talking) == len(set(talking))
        for agent in e.agents.values():
            if agent.state in (AgentState.RINGING, AgentState.TALKING):
                assert agent.call is not None and agent.id in e.calls[agent.call].agents
                want = QueuedCallState.RINGING if agent.state is AgentState.RINGING else QueuedCallState.TALKING
                assert e.calls[agent.call].state is want
            else:
                assert agent.call is None

    @invariant()
    def nobody_waits_past_max_wait(self) -> None:
        e = self.engine
        for call in e.calls.values():
            if call.state is QueuedCallState.WAITING:
                assert self.now - call.arrived <= e.max_wait(call.queue.name) + 1e-6

    @invariant()
    def higher_tiers_are_never_passed_over(self) -> None:
        e = self.engine
        waiting = [c for c in e.calls.values() if c.state is QueuedCallState.WAITING]
        for decision in self.last:
            if isinstance(decision, RingAgent) and decision.call in e.calls:
                rung = e.calls[decision.call]
                spec = e.agents[decision.agent].spec
                for other in waiting:
                    if spec.can_take(other.required):
                        assert other.priority <= rung.priority, (other, rung)
        # and a ready agent never idles next to a caller it could take
        for agent in e.agents.values():
            if agent.state is AgentState.READY:
                assert not any(agent.spec.can_take(c.required) for c in waiting)

    @invariant()
    def the_lines_kept_for_speed_are_the_waiting_callers(self) -> None:
        e = self.engine
        for name in e.queues:
            waiting = {c.id for c in e.calls.values() if c.queue.name == name and c.state is QueuedCallState.WAITING}
            assert set(e._waiting[name]) == waiting
        assert set(e._ready) == {a.id for a in e.agents.values() if a.state is AgentState.READY}

    @invariant()
    def no_call_is_lost_from_the_books(self) -> None:
        e = self.engine
        for name, s in e.stats.items():
            waiting = sum(1 for c in e.calls.values() if c.queue.name == name and c.state is QueuedCallState.WAITING)
            ringing = sum(1 for c in e.calls.values() if c.queue.name == name and c.state is QueuedCallState.RINGING)
            assert s.offered == s.answered + s.abandoned + s.overflowed_total + waiting + ringing
        # every arrival was offered (ids are unique, so none is rejected)
        assert sum(s.offered for s in e.stats.values()) == self.serial


EngineMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestEngineMachine = EngineMachine.TestCase
