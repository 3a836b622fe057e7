"""ivr/cluster/coordinator.py: the replicated decider, against a plain engine, its own replicas and scripted cases."""

from __future__ import annotations

import pickle
from types import MappingProxyType

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from support.models import STATEFUL_MODEL, skills

from ivr.cluster.coordinator import (
    UNREGISTERED,
    Applied,
    Coordinator,
    NodeJoined,
    NodeLost,
    PhoneBindings,
    Routed,
    fingerprint,
    model_differences,
)
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
    ResumeOutbound,
    RingAgent,
    SetTimer,
    SurgeChanged,
    SurgeSwitch,
    TimerFired,
)
from queueing.line import QueuedCallState
from queueing.model import AgentSpec, Limit, Model, QueueSpec, SurgeSpec

NODES = ("n1", "n2", "n3")
QUEUES = ("sales", "billing")
AGENTS = ("a1", "a2", "a3", "a4")
BROADCAST = (SurgeChanged, PauseOutbound, ResumeOutbound)
PEER = ("udp", "127.0.0.1", 5062)


# the model of the engine's own property test (tests/support/models.py): two queues, skills, ring-all, auto surge
MODEL = STATEFUL_MODEL


def simple(agents: int = 3, **queue: object) -> Model:
    return Model(
        queues=(QueueSpec("sales", **queue),),  # type: ignore[arg-type]
        agents=tuple(AgentSpec(f"a{i}") for i in range(1, agents + 1)),
        surge=SurgeSpec(auto=False),
    )


def arrived(call: str, now: float, queue: str = "sales") -> CallArrived:
    return CallArrived(call_id=call, queue=queue, tier="ordinary", now=now)


def phones(node: str, agent: str, now: float, *contacts: tuple[str, float]) -> PhoneBindings:
    return PhoneBindings(node, agent, tuple((contact, PEER, expires) for contact, expires in contacts), now)


def decisions(applied: Applied, kind: type | None = None) -> list[Decision]:
    return [r.decision for r in applied.routed if kind is None or isinstance(r.decision, kind)]


def without_timers(out: list[Decision]) -> list[Decision]:
    return [d for d in out if not isinstance(d, SetTimer)]


def same_state(a: Coordinator, b: Coordinator) -> None:
    """Two replicas hold the same state, as everyone reads it."""
    assert a.engine.snapshot() == b.engine.snapshot()
    assert a.engine.agents == b.engine.agents
    assert a.engine.stats == b.engine.stats
    assert a.engine.next_timer() == b.engine.next_timer()
    assert a.next_timer() == b.next_timer()
    assert a.now == b.now
    assert a.lost == b.lost
    assert {c: a.owner(c) for c in a.engine.calls} == {c: b.owner(c) for c in b.engine.calls}
    now = a.now or 0.0
    for agent in AGENTS:
        assert a.lookup(agent, now) == b.lookup(agent, now)


# ----------------------------------------------------------------- a plain engine and two replicas


class ClusterMachine(RuleBasedStateMachine):
    """Events from several nodes into a Coordinator, a plain Engine and a replica that is sometimes pickled.

    The Coordinator must make exactly the engine's decisions (SetTimer aside), each routed to the node of
    its caller's CallArrived (None for the broadcast kinds), and the replica must decide identically.
    """

    def __init__(self) -> None:
        super().__init__()
        self.engine = Engine(MODEL)
        self.coord = Coordinator(MODEL)
        self.replica = Coordinator(MODEL)
        self.now = 0.0  # the latest time any node sent
        self.serial = 0
        self.origin_of: dict[str, str] = {}

    # -- feeding

    def _at(self, dt: float) -> float:
        # never step over a timer, so everything in one step happens at one instant (as the engine's own test does)
        nxt = self.engine.next_timer()
        target = self.now + dt
        if nxt is not None and nxt < target:
            target = max(nxt, self.now)
        self.now = target
        return target

    def _route(self, out: list[Decision]) -> list[tuple[str | None, Decision]]:
        return [
            (None if isinstance(d, BROADCAST) else self.origin_of[d.call], d)  # type: ignore[union-attr]
            for d in without_timers(out)
        ]

    def _both(self, origin: str, event: Event | NodeLost | NodeJoined, expected: list[Decision], error: str | None):
        applied = self.coord.apply(origin, event)
        assert applied.error == error
        assert [(r.node, r.decision) for r in applied.routed] == self._route(expected)
        assert self.replica.apply(origin, event) == applied

    def _feed(self, origin: str, event: Event, *, sent_at: float | None = None) -> None:
        """``event`` as the engine gets it; the nodes may send it with an earlier time (``sent_at``)."""
        try:
            expected, error = self.engine.handle(event), None
        except PolicyError as exc:
            expected, error = [], str(exc)
        if isinstance(event, CallArrived) and error is None:
            self.origin_of[event.call_id] = origin
        sent = event if sent_at is None else type(event)(**{**_fields(event), "now": sent_at})
        self._both(origin, sent, expected, error)

    # -- rules

    @rule(
        origin=st.sampled_from(NODES),
        queue=st.sampled_from(QUEUES),
        tier=st.sampled_from(["ordinary", "senior", "special", "vip?"]),
        fr=st.booleans(),
        urgent=st.booleans(),
        dt=st.floats(0, 10),
    )
    def arrive(self, origin: str, queue: str, tier: str, fr: bool, urgent: bool, dt: float) -> None:
        self.serial += 1
        call = f"c{self.serial}"
        extra = frozenset({"fr"}) if fr else frozenset()
        now = self._at(dt)
        self._feed(origin, CallArrived(call_id=call, queue=queue, tier=tier, skills=extra, urgent=urgent, now=now))

    @precondition(lambda self: self.engine.calls)
    @rule(data=st.data(), origin=st.sampled_from(NODES))
    def arrive_again(self, data: st.DataObject, origin: str) -> None:
        """Another node sends a CallArrived for a caller in the books: refused, and the owner stays."""
        call = data.draw(st.sampled_from(sorted(self.engine.calls)))
        self._feed(origin, CallArrived(call_id=call, queue="sales", tier="ordinary", now=self._at(0)))

    @rule(
        origin=st.sampled_from(NODES),
        agent=st.sampled_from([*AGENTS, "nobody"]),
        what=st.sampled_from(["in", "ready", "not_ready", "out"]),
        dt=st.floats(0, 5),
    )
    def agent_button(self, origin: str, agent: str, what: str, dt: float) -> None:
        now = self._at(dt)
        event: dict[str, Event] = {
            "in": AgentLoggedIn(agent=agent, now=now),
            "ready": AgentReady(agent=agent, now=now),
            "not_ready": AgentNotReady(agent=agent, reason="break", now=now),
            "out": AgentLoggedOut(agent=agent, now=now),
        }
        self._feed(origin, event[what])

    def _ringing(self) -> list[str]:
        return sorted(a.id for a in self.engine.agents.values() if a.state is AgentState.RINGING)

    @precondition(lambda self: self._ringing())
    @rule(data=st.data(), dt=st.floats(0, 8), answer=st.booleans())
    def phone_answers_or_refuses(self, data: st.DataObject, dt: float, answer: bool) -> None:
        agent = data.draw(st.sampled_from(self._ringing()))
        call = self.engine.agents[agent].call
        assert call is not None
        now = self._at(dt)
        kind = AgentAnswered if answer else AgentNoAnswer
        self._feed(self.origin_of[call], kind(agent=agent, call=call, now=now))

    @precondition(lambda self: self.engine.calls)
    @rule(data=st.data(), dt=st.floats(0, 30), hang_up=st.booleans())
    def end(self, data: st.DataObject, dt: float, hang_up: bool) -> None:
        call = data.draw(st.sampled_from(sorted(self.engine.calls)))
        now = self._at(dt)
        self._feed(self.origin_of[call], CallerHungUp(call=call, now=now) if hang_up else CallEnded(call=call, now=now))

    @rule(origin=st.sampled_from(NODES), dt=st.floats(0, 40))
    def timekeeper_tick(self, origin: str, dt: float) -> None:
        self._feed(origin, TimerFired(kind="tick", id="", now=self._at(dt)))

    @rule(origin=st.sampled_from(NODES), on=st.sampled_from([True, False, None]), dt=st.floats(0, 5))
    def ops_switch(self, origin: str, on: bool | None, dt: float) -> None:
        self._feed(origin, SurgeSwitch(on=on, cause="manual", now=self._at(dt)))

    @precondition(lambda self: self.coord.now is not None)
    @rule(origin=st.sampled_from(NODES), back=st.floats(0.001, 50))
    def clock_behind(self, origin: str, back: float) -> None:
        """A node whose clock is behind: its entry counts at the latest time so far, on every replica."""
        self._feed(origin, TimerFired(kind="tick", id="", now=self._at(0)), sent_at=self.now - back)

    @rule(origin=st.sampled_from(NODES), node=st.sampled_from(NODES), joined=st.booleans(), dt=st.floats(0, 5))
    def node_goes(self, origin: str, node: str, joined: bool, dt: float) -> None:
        """The node's callers leave as if they had hung up: waiting ones first, then ringing, then talking."""
        now = self._at(dt)
        engine = self.engine
        expected: list[Decision] = []
        owned = [c for c in engine.calls if self.origin_of[c] == node]
        if owned:
            due = engine.next_timer()
            if due is not None and due <= now:
                expected += engine.handle(TimerFired(kind="tick", id="", now=now))
            rank = {QueuedCallState.WAITING: 0, QueuedCallState.RINGING: 1, QueuedCallState.TALKING: 2}
            owned = sorted((c for c in owned if c in engine.calls), key=lambda c: rank[engine.calls[c].state])
            for call in owned:
                if call in engine.calls:
                    talking = engine.calls[call].state is QueuedCallState.TALKING
                    gone = CallEnded(call=call, now=now) if talking else CallerHungUp(call=call, now=now)
                    expected += engine.handle(gone)
        self._both(origin, (NodeJoined if joined else NodeLost)(node=node, now=now), expected, None)
        assert self.coord.calls_of(node) == []

    @rule()
    def checkpoint(self) -> None:
        self.replica = pickle.loads(pickle.dumps(self.replica))

    # -- invariants

    @invariant()
    def every_caller_has_its_node(self) -> None:
        calls = self.coord.engine.calls
        assert set(calls) == set(self.engine.calls)
        assert {c: self.coord.owner(c) for c in calls} == {c: self.origin_of[c] for c in calls}
        assert sorted(c for n in NODES for c in self.coord.calls_of(n)) == sorted(calls)

    @invariant()
    def replicas_agree(self) -> None:
        same_state(self.coord, self.replica)
        assert self.coord.engine.snapshot() == self.engine.snapshot()


def _fields(event: Event) -> dict[str, object]:
    return {name: getattr(event, name) for name in event.__dataclass_fields__}


ClusterMachine.TestCase.settings = settings(
    max_examples=120, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestClusterMachine = ClusterMachine.TestCase


# ----------------------------------------------------------------- phones on several nodes


class PhonesMachine(RuleBasedStateMachine):
    """Phones come and go on several nodes; an agent is registered while any node holds a live binding."""

    def __init__(self) -> None:
        super().__init__()
        self.coord = Coordinator(MODEL)
        self.replica = Coordinator(MODEL)
        self.now = 0.0
        self.held: dict[tuple[str, str], dict[str, float]] = {}  # (node, agent) -> contact -> expires_at
        self.serial = 0
        self.before: dict[str, tuple[bool, AgentState]] = {}

    def _registered(self, agent: str) -> bool:
        return any(at > self.now for (_, a), held in self.held.items() if a == agent for at in held.values())

    def _apply(self, origin: str, event: Event | PhoneBindings | NodeLost) -> None:
        self.before = {a: (self._registered(a), self.coord.engine.agents[a].state) for a in AGENTS}
        if isinstance(event, PhoneBindings) and event.agent in AGENTS:
            self.held[(event.node, event.agent)] = {c: at for c, _, at in event.bindings if at > event.now}
        applied = self.coord.apply(origin, event)
        assert self.replica.apply(origin, event) == applied

    @rule(
        node=st.sampled_from(NODES),
        agent=st.sampled_from([*AGENTS, "stranger"]),
        contacts=st.lists(st.tuples(st.sampled_from(["x", "y", "z"]), st.floats(-5, 60)), max_size=3),
        dt=st.floats(0, 10),
    )
    def publish(self, node: str, agent: str, contacts: list[tuple[str, float]], dt: float) -> None:
        self.now += dt
        unique = {f"sip:{agent}-{c}@{node}": self.now + ttl for c, ttl in contacts}
        self._apply(node, phones(node, agent, self.now, *unique.items()))

    @rule(dt=st.floats(0, 40))
    def tick(self, dt: float) -> None:
        self.now += dt
        self._apply("n1", TimerFired(kind="tick", id="", now=self.now))

    @rule(agent=st.sampled_from(AGENTS), what=st.sampled_from(["in", "ready", "out"]))
    def button(self, agent: str, what: str) -> None:
        kinds = {"in": AgentLoggedIn, "ready": AgentReady, "out": AgentLoggedOut}
        self._apply("n2", kinds[what](agent=agent, now=self.now))

    @rule(origin=st.sampled_from(NODES))
    def caller(self, origin: str) -> None:
        self.serial += 1
        self._apply(origin, arrived(f"c{self.serial}", self.now))

    @rule(data=st.data())
    def answer(self, data: st.DataObject) -> None:
        ringing = sorted(a.id for a in self.coord.engine.agents.values() if a.state is AgentState.RINGING)
        if ringing:
            agent = data.draw(st.sampled_from(ringing))
            call = self.coord.engine.agents[agent].call
            assert call is not None
            self._apply("n1", AgentAnswered(agent=agent, call=call, now=self.now))

    @rule(node=st.sampled_from(NODES))
    def node_lost(self, node: str) -> None:
        self._apply("n1", NodeLost(node, self.now))  # phones stay: they are reachable from any node

    @rule()
    def checkpoint(self) -> None:
        self.replica = pickle.loads(pickle.dumps(self.replica))

    @invariant()
    def registered_while_any_node_holds_a_live_binding(self) -> None:
        for agent in AGENTS:
            assert self.coord.registered(agent, self.now) == self._registered(agent)
            live = {c for (_, a), held in self.held.items() if a == agent for c, at in held.items() if at > self.now}
            assert {contact for contact, _ in self.coord.lookup(agent, self.now)} == live
        assert self.coord.lookup("stranger", self.now) == []

    @invariant()
    def first_binding_logs_in_and_last_gone_logs_out(self) -> None:
        for agent, (was, state) in self.before.items():
            now = self.coord.engine.agents[agent]
            if not was and self._registered(agent) and state is AgentState.LOGGED_OUT:
                assert now.state is not AgentState.LOGGED_OUT
            if was and not self._registered(agent):
                assert now.state is AgentState.LOGGED_OUT or (
                    now.state is AgentState.TALKING and now.pending_not_ready == UNREGISTERED
                )

    @invariant()
    def replicas_agree(self) -> None:
        same_state(self.coord, self.replica)
        at = self.coord.next_timer()
        live = [at_ for held in self.held.values() for at_ in held.values() if at_ > self.now]
        if live:
            assert at is not None and at <= min(live)


PhonesMachine.TestCase.settings = settings(
    max_examples=80, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestPhonesMachine = PhonesMachine.TestCase


# ----------------------------------------------------------------- routing


def test_decisions_go_to_the_callers_node_and_the_surge_switch_to_every_node() -> None:
    coord = Coordinator(simple(agents=1, announce_every=Limit(30.0, 20.0)))
    assert coord.apply("n2", AgentLoggedIn(agent="a1", now=0.0)) == Applied([], None)
    first = coord.apply("n1", arrived("c1", 1.0))
    assert first.routed == [Routed("n1", RingAgent("a1", "c1", 12.0))]
    second = coord.apply("n2", arrived("c2", 2.0))
    assert second.routed == [Routed("n2", PlayAnnouncement("c2", "position_ewt", 1, 180.0))]
    assert coord.owner("c1") == "n1" and coord.owner("c2") == "n2"
    assert coord.calls_of("n1") == ["c1"] and coord.calls_of("n2") == ["c2"]
    answered = coord.apply("n3", AgentAnswered(agent="a1", call="c1", now=3.0))  # any node may report it
    assert answered.routed == [Routed("n1", Connect("a1", "c1"))]
    surge = coord.apply("n3", SurgeSwitch(on=True, cause="manual", now=4.0))
    assert [r for r in surge.routed if r.node is None] == [
        Routed(None, SurgeChanged(True, "manual")),
        Routed(None, PauseOutbound()),
    ]
    assert not any(isinstance(r.decision, SetTimer) for r in [*first.routed, *second.routed, *surge.routed])
    coord.apply("n1", CallEnded(call="c1", now=5.0))
    assert coord.owner("c1") is None  # the engine forgot the caller: so does the coordinator
    overflowed = coord.apply("n1", TimerFired(kind="tick", id="", now=100.0))
    assert Routed("n2", Overflow("c2", "callback", "max_wait")) in overflowed.routed
    assert coord.owner("c2") is None and coord.calls_of("n2") == []
    back = coord.apply("n1", SurgeSwitch(on=None, cause="manual", now=101.0))
    assert Routed(None, ResumeOutbound()) in back.routed


def test_a_refused_event_reports_the_engine_error_and_changes_nothing() -> None:
    coord = Coordinator(simple())
    coord.apply("n1", arrived("c1", 1.0))
    again = coord.apply("n2", arrived("c1", 2.0))
    assert again == Applied([], "call 'c1' is already in the books")
    assert coord.owner("c1") == "n1"
    assert coord.apply("n2", arrived("c9", 2.0, queue="nowhere")).error == "unknown queue 'nowhere'"
    assert coord.owner("c9") is None
    assert (
        coord.apply("n1", AgentReady(agent="a1", now=3.0)).error == "agent a1: AgentReady is illegal while logged_out"
    )


def test_time_going_backwards_in_the_log_is_clamped_the_same_on_every_replica() -> None:
    log: list[tuple[str, Event | NodeLost]] = [
        ("n1", AgentLoggedIn(agent="a1", now=10.0)),
        ("n2", arrived("c1", 4.0)),  # n2's clock is behind: the caller arrives at 10, not 4
        ("n2", arrived("c2", 11.0)),
        ("n1", AgentNoAnswer(agent="a1", call="c1", now=float("nan"))),  # no time at all: the time so far
        ("n3", TimerFired(kind="tick", id="", now=-1e9)),
    ]
    a, b = Coordinator(simple()), Coordinator(simple())
    for origin, event in log:
        assert a.apply(origin, event) == b.apply(origin, event)
    assert a.now == 11.0 and a.engine.now == 11.0
    assert a.engine.calls["c1"].arrived == 10.0
    same_state(a, b)


# ----------------------------------------------------------------- nodes lost and joined


def _three_callers_on_n1_two_on_n2(coord: Coordinator, reference: Engine) -> None:
    """a1 talks with c1 (n1); a2 rings for c2 (n1), a3 for c3 (n2); c4 (n1) and c5 (n2) wait."""
    script: list[tuple[str, Event]] = [
        ("n2", AgentLoggedIn(agent="a1", now=0.0)),
        ("n1", arrived("c1", 1.0)),
        ("n1", AgentAnswered(agent="a1", call="c1", now=2.0)),
        ("n2", AgentLoggedIn(agent="a2", now=3.0)),
        ("n1", arrived("c2", 4.0)),
        ("n2", AgentLoggedIn(agent="a3", now=5.0)),
        ("n2", arrived("c3", 6.0)),
        ("n1", arrived("c4", 7.0)),
        ("n2", arrived("c5", 8.0)),
    ]
    for origin, event in script:
        assert without_timers(reference.handle(event)) == decisions(coord.apply(origin, event))
    states = {c: q.state for c, q in coord.engine.calls.items()}
    assert states == {"c1": "talking", "c2": "ringing", "c3": "ringing", "c4": "waiting", "c5": "waiting"}
    assert {a: coord.engine.agents[a].call for a in ("a1", "a2", "a3")} == {"a1": "c1", "a2": "c2", "a3": "c3"}


@pytest.mark.parametrize("kind", [NodeLost, NodeJoined])
def test_a_lost_node_takes_its_callers_out_and_leaves_the_other_nodes_callers_alone(kind: type) -> None:
    coord, reference = Coordinator(simple()), Engine(simple())
    _three_callers_on_n1_two_on_n2(coord, reference)
    gone = coord.apply("n2", kind("n1", 9.0))
    assert gone.error is None
    assert gone.routed == [
        Routed("n1", CancelRing("a2", "c2")),  # to the dead node: nobody carries it out
        Routed("n2", RingAgent("a2", "c5", 12.0)),  # the freed agent takes n2's waiting caller
    ]
    # the same decisions as if n1's callers had hung up (waiting, then ringing, then talking)
    expected = [reference.handle(e) for e in (CallerHungUp(call="c4", now=9.0), CallerHungUp(call="c2", now=9.0))]
    expected.append(reference.handle(CallEnded(call="c1", now=9.0)))
    assert decisions(gone) == without_timers([d for out in expected for d in out])
    assert coord.engine.snapshot() == reference.snapshot()
    assert sorted(coord.engine.calls) == ["c3", "c5"] and coord.calls_of("n1") == []
    assert coord.engine.agents["a1"].state is AgentState.WRAP_UP  # its talk ended with the node
    assert coord.engine.agents["a3"].call == "c3"  # n2's ring goes on
    assert coord.lost == {("n1", "sales"): 2}  # the waiting and the ringing caller; a talk is not a lost caller
    assert coord.engine.stats["sales"].abandoned == 2
    answered = coord.apply("n2", AgentAnswered(agent="a3", call="c3", now=10.0))
    assert answered.routed == [Routed("n2", Connect("a3", "c3"))]
    assert coord.apply("n2", kind("n1", 11.0)) == Applied([], None)  # nothing left to take out
    assert coord.lost == {("n1", "sales"): 2}


def test_a_lost_node_keeps_its_phone_bindings_until_they_expire() -> None:
    coord = Coordinator(simple())
    coord.apply("n1", phones("n1", "a1", 0.0, ("sip:a1@phone", 60.0)))
    assert coord.engine.agents["a1"].state is AgentState.READY
    coord.apply("n2", NodeLost("n1", 5.0))
    assert coord.lookup("a1", 5.0) == [("sip:a1@phone", PEER)]  # the phone is reachable from any node
    assert coord.engine.agents["a1"].state is AgentState.READY
    coord.apply("n2", TimerFired(kind="tick", id="", now=61.0))
    assert coord.engine.agents["a1"].state is AgentState.LOGGED_OUT


# ----------------------------------------------------------------- phones


def test_the_first_binding_anywhere_logs_in_and_the_last_one_gone_logs_out() -> None:
    coord = Coordinator(simple())
    first = coord.apply("n1", phones("n1", "a1", 1.0, ("sip:a1@desk", 100.0)))
    assert first.error is None and coord.engine.agents["a1"].state is AgentState.READY
    coord.apply("n1", AgentNotReady(agent="a1", reason="lunch", now=2.0))
    # a second phone on another node is not a first binding: the agent is not logged in (made ready) again
    coord.apply("n2", phones("n2", "a1", 3.0, ("sip:a1@mobile", 100.0)))
    assert coord.engine.agents["a1"].state is AgentState.NOT_READY
    assert coord.engine.agents["a1"].reason == "lunch"
    coord.apply("n1", phones("n1", "a1", 4.0))  # the desk phone goes; the mobile one is still there
    assert coord.engine.agents["a1"].state is AgentState.NOT_READY
    assert coord.registered("a1", 4.0)
    coord.apply("n2", phones("n2", "a1", 5.0))  # the last one goes
    assert coord.engine.agents["a1"].state is AgentState.LOGGED_OUT
    assert not coord.registered("a1", 5.0) and coord.lookup("a1", 5.0) == []
    coord.apply("n2", phones("n2", "a1", 6.0, ("sip:a1@mobile", 100.0)))
    assert coord.engine.agents["a1"].state is AgentState.READY


def test_a_phone_on_a_second_node_is_no_first_binding_for_an_agent_who_logged_out() -> None:
    coord = Coordinator(simple())
    coord.apply("n1", phones("n1", "a1", 1.0, ("sip:a1@desk", 100.0)))
    coord.apply("n1", AgentLoggedOut(agent="a1", now=2.0))  # by the button: the desk phone stays registered
    coord.apply("n2", phones("n2", "a1", 3.0, ("sip:a1@mobile", 100.0)))  # n2's first, not the cluster's
    assert coord.engine.agents["a1"].state is AgentState.LOGGED_OUT
    coord.apply("n1", phones("n1", "a1", 4.0))
    coord.apply("n2", phones("n2", "a1", 5.0))
    coord.apply("n1", phones("n1", "a1", 6.0, ("sip:a1@desk", 100.0)))  # now it is the first again
    assert coord.engine.agents["a1"].state is AgentState.READY


def test_an_agent_whose_last_phone_goes_while_talking_is_not_ready_after_the_talk() -> None:
    coord = Coordinator(simple(agents=1, wrap_up=5.0))
    coord.apply("n1", phones("n1", "a1", 0.0, ("sip:a1@desk", 100.0)))
    coord.apply("n2", arrived("c1", 1.0))
    coord.apply("n1", AgentAnswered(agent="a1", call="c1", now=2.0))
    gone = coord.apply("n1", phones("n1", "a1", 3.0))
    assert gone.error is None
    agent = coord.engine.agents["a1"]
    assert agent.state is AgentState.TALKING and agent.pending_not_ready == UNREGISTERED
    coord.apply("n2", CallEnded(call="c1", now=4.0))
    coord.apply("n1", TimerFired(kind="tick", id="", now=9.0))
    assert agent.state is AgentState.NOT_READY and agent.reason == UNREGISTERED


def test_a_ringing_agent_whose_phone_goes_sends_the_caller_back_to_the_line() -> None:
    coord = Coordinator(simple(agents=1))
    coord.apply("n1", phones("n1", "a1", 0.0, ("sip:a1@desk", 100.0)))
    rung = coord.apply("n2", arrived("c1", 1.0))
    assert decisions(rung, RingAgent) == [RingAgent("a1", "c1", 12.0)]
    gone = coord.apply("n1", phones("n1", "a1", 2.0))
    assert gone.routed[0] == Routed("n2", CancelRing("a1", "c1"))
    assert coord.engine.agents["a1"].state is AgentState.LOGGED_OUT
    assert coord.engine.calls["c1"].state is QueuedCallState.WAITING


def test_bindings_expire_at_the_first_entry_past_their_time_and_next_timer_knows_when() -> None:
    coord = Coordinator(simple())
    coord.apply("n1", phones("n1", "a1", 0.0, ("sip:a1@desk", 30.0), ("sip:a1@soft", 50.0)))
    coord.apply("n2", phones("n2", "a2", 0.0, ("sip:a2@desk", 40.0)))
    assert coord.next_timer() == 30.0  # no engine timer yet: the earliest phone's expiry
    coord.apply("n1", arrived("c1", 1.0))  # a1 rings (longest idle); its ring timer is due at 13
    assert coord.next_timer() == 13.0
    coord.apply("n1", AgentNoAnswer(agent="a1", call="c1", now=2.0))
    coord.apply("n1", CallerHungUp(call="c1", now=3.0))
    assert coord.next_timer() == 30.0
    coord.apply("n1", TimerFired(kind="tick", id="", now=29.0))  # not yet
    assert coord.lookup("a1", 29.0) == [("sip:a1@desk", PEER), ("sip:a1@soft", PEER)]  # as the node listed them
    coord.apply("n1", TimerFired(kind="tick", id="", now=30.0))  # at expires_at: gone
    assert coord.lookup("a1", 30.0) == [("sip:a1@soft", PEER)]
    assert coord.engine.agents["a1"].state is AgentState.READY  # its other phone is still there
    assert coord.next_timer() == 40.0
    coord.apply("n3", TimerFired(kind="tick", id="", now=45.0))  # late: a2 leaves at its phone's own time
    assert coord.engine.agents["a2"].state is AgentState.LOGGED_OUT
    assert coord.next_timer() == 50.0
    coord.apply("n2", arrived("c2", 70.0))  # any entry past the time expires the binding
    assert coord.engine.agents["a1"].state is AgentState.LOGGED_OUT
    assert coord.next_timer() != 50.0


def test_a_binding_published_already_expired_or_refreshed_keeps_the_books_right() -> None:
    coord = Coordinator(simple())
    coord.apply("n1", phones("n1", "a1", 10.0, ("sip:a1@old", 5.0)))  # expired when it arrives
    assert coord.engine.agents["a1"].state is AgentState.LOGGED_OUT and coord.next_timer() is None
    coord.apply("n1", phones("n1", "a1", 10.0, ("sip:a1@desk", 20.0)))
    coord.apply("n1", phones("n1", "a1", 15.0, ("sip:a1@desk", 40.0)))  # refreshed: the old expiry does not count
    coord.apply("n1", TimerFired(kind="tick", id="", now=25.0))
    assert coord.engine.agents["a1"].state is AgentState.READY
    assert coord.next_timer() == 40.0


def test_phones_of_agents_the_model_does_not_know_are_ignored() -> None:
    coord = Coordinator(simple())
    assert coord.apply("n1", phones("n1", "stranger", 1.0, ("sip:x@y", 100.0))) == Applied([], None)
    assert coord.lookup("stranger", 1.0) == [] and not coord.registered("stranger", 1.0)
    assert coord.next_timer() is None


def test_lookup_lists_the_newest_registration_first_and_never_an_expired_one() -> None:
    coord = Coordinator(simple())
    coord.apply("n2", phones("n2", "a1", 1.0, ("sip:a1@first", 100.0)))
    coord.apply("n1", phones("n1", "a1", 2.0, ("sip:a1@second", 50.0)))
    coord.apply("n2", phones("n2", "a1", 3.0, ("sip:a1@third", 80.0), ("sip:a1@first", 120.0)))  # first: refreshed
    assert [c for c, _ in coord.lookup("a1", 3.0)] == ["sip:a1@third", "sip:a1@second", "sip:a1@first"]
    assert [c for c, _ in coord.lookup("a1", 60.0)] == ["sip:a1@third", "sip:a1@first"]  # second expired at 50
    assert [c for c, _ in coord.lookup("a1", 100.0)] == ["sip:a1@first"]
    assert coord.lookup("a1", 120.0) == []


# ----------------------------------------------------------------- checkpoints and the model's identity


def test_a_pickled_replica_decides_identically_afterwards() -> None:
    model = MODEL
    coord = Coordinator(model)
    coord.apply("n1", phones("n1", "a2", 0.0, ("sip:a2@desk", 300.0)))
    coord.apply("n1", AgentLoggedIn(agent="a3", now=0.5))
    coord.apply("n1", CallArrived(call_id="c1", queue="billing", tier="senior", now=1.0))
    coord.apply("n2", CallArrived(call_id="c2", queue="sales", tier="ordinary", skills=frozenset({"fr"}), now=2.0))
    copy = pickle.loads(pickle.dumps(coord))
    assert copy.fingerprint() == coord.fingerprint()
    same_state(copy, coord)
    rest: list[tuple[str, Event | NodeLost]] = [
        ("n1", AgentAnswered(agent="a3", call="c1", now=3.0)),
        ("n2", AgentLoggedIn(agent="a4", now=4.0)),
        ("n3", TimerFired(kind="tick", id="", now=20.0)),
        ("n3", NodeLost("n2", 21.0)),
        ("n1", TimerFired(kind="tick", id="", now=400.0)),
    ]
    for origin, event in rest:
        assert copy.apply(origin, event) == coord.apply(origin, event)
        same_state(copy, coord)


def test_the_fingerprint_names_the_model_and_the_differences_say_how_two_differ() -> None:
    same = Model(
        queues=(QueueSpec("billing", skills=skills(billing=1)), QueueSpec("sales")),
        agents=(AgentSpec("a1", skills=MappingProxyType({"fr": 1, "billing": 2})),),
    )
    reordered = Model(
        queues=(QueueSpec("billing", skills=skills(billing=1)), QueueSpec("sales")),
        agents=(AgentSpec("a1", skills=MappingProxyType({"billing": 2, "fr": 1})),),
    )
    assert fingerprint(same) == fingerprint(reordered) == Coordinator(same).fingerprint()
    assert model_differences(same, reordered) == []
    other = Model(
        queues=(QueueSpec("sales", ring_timeout=5.0), QueueSpec("vip")),
        agents=(AgentSpec("a1", skills=skills(billing=2, fr=1)), AgentSpec("a2")),
        surge=SurgeSpec(auto=False),
    )
    assert fingerprint(other) != fingerprint(same)
    assert model_differences(same, other) == [
        "queues only here: billing",
        "queues only in the cluster: vip",
        "queue sales: ring_timeout differ",
        "agents only in the cluster: a2",
        "surge: auto differ",
    ]
    swapped = Model(queues=(QueueSpec("sales"), QueueSpec("billing", skills=skills(billing=1))), agents=same.agents)
    assert model_differences(same, swapped) == ["the order of queues or agents differs"]
