"""Parity: the same scripted callers through the live queues (ivr/calls/queues.py ``LiveQueues`` on a fake
clock, loop, SIP user agent and media) and through the simulator feed the engine the same events and get the
same decisions, one for one."""

from __future__ import annotations

import functools
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pytest

from ivr.calls.queues import LiveQueues, Ring
from ivr.sip.ua import OutAnswered, OutCall, OutEnded, OutFailed
from queueing.engine import Engine
from queueing.events import Decision, Event
from queueing.model import Limit, Model, QueueSpec, SurgeSpec, Tier
from sim.plan import NEVER, Plan, RateStep, ScriptedCall, Source, SurgeCommand, Team, agent_specs, constant
from sim.simulation import Simulation

RING_DELAY = 2.0

# ------------------------------------------------------------------ fakes around LiveQueues


class FakeLoop:
    """``loop.call_at`` on a virtual clock: callbacks run in time order, then in the order they were set."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None], list[bool]]] = []
        self._seq = 0

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> Any:
        self._seq += 1
        cancelled = [False]
        heapq.heappush(self._heap, (when, self._seq, callback, cancelled))

        class Handle:
            def cancel(self) -> None:
                cancelled[0] = True

        return Handle()

    def run(self) -> None:
        while self._heap:
            when, _, callback, cancelled = heapq.heappop(self._heap)
            if cancelled[0]:
                continue
            self.now = max(self.now, when)
            callback()


@dataclass
class FakeBinding:
    contact: str
    peer: tuple[str, str, int] = ("udp", "127.0.0.1", 5062)


class FakeRegistrar:
    def lookup(self, agent: str, now: float) -> list[FakeBinding]:
        return [FakeBinding(f"sip:{agent}@127.0.0.1:5062")]


class FakeStream:
    local_port = 20000

    def use_answer(self, *args: Any) -> None:
        pass

    def bridge(self, other: Any) -> None:
        pass

    def unbridge(self) -> None:
        pass


class FakeMedia:
    def open(self, *args: Any, **kwargs: Any) -> FakeStream:
        return FakeStream()

    def close(self, stream: Any) -> None:
        pass


@dataclass(eq=False)
class FakePhone:
    """An agent's phone: answers ``RING_DELAY`` after the INVITE; the agent hangs up after the caller's talk time."""

    world: LiveWorld
    agent: str
    out: OutCall
    answered: bool = False
    over: bool = False


class FakeUA:
    def __init__(self, world: LiveWorld) -> None:
        self.world = world
        self.registrar = FakeRegistrar()
        self._n = 0

    def place_call(self, target: str, peer: Any, rtp_port: int, now: float, **kw: Any) -> OutCall:
        self._n += 1
        out = OutCall(call_id=f"out{self._n}", peer=peer, target=target, local_tag="t")
        phone = FakePhone(self.world, target.split(":")[1].split("@")[0], out)
        self.world.phones[out.call_id] = phone
        self.world.loop.call_at(now + RING_DELAY, lambda: self.world.phone_answers(phone))
        return out

    def update_connected(self, call: Any, display: str, user: str, now: float) -> bool:
        return False  # the callers here are no phones: nobody to tell who answered

    def drop(self, out: OutCall, now: float) -> None:
        phone = self.world.phones[out.call_id]
        if phone.over:
            return
        phone.over = True
        if phone.answered:
            out.ended_by = "local"
            self.world.loop.call_at(now, lambda: self.world.queues.on_sip_event(OutEnded(out)))
        else:
            self.world.loop.call_at(now, lambda: self.world.queues.on_sip_event(OutFailed(out, 487)))

    def hangup(self, call: Any, now: float) -> None:
        pass


@dataclass
class CallerLeg:
    call_id: str
    caller: str = "+15550100"


@dataclass(eq=False)
class FakeIvr:
    """The caller's side of the queue node."""

    call: CallerLeg
    script: ScriptedCall
    stream: FakeStream = field(default_factory=FakeStream)
    in_queue: bool = True

    def announce(self, prompts: tuple[str, ...], now: float) -> None:
        pass

    def connected(self, now: float) -> None:
        self.in_queue = False

    def leave_queue(self, target: str, now: float) -> None:
        self.in_queue = False


class TracedEngine:
    """The engine with every (event, decisions) recorded (a wrapper: a compiled Engine's methods are read-only)."""

    def __init__(self, engine: Engine, trace: list[tuple[Event, list[Decision]]]) -> None:
        self._engine = engine
        self._trace = trace

    def handle(self, event: Event) -> list[Decision]:
        out = self._engine.handle(event)
        self._trace.append((event, out))
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


class LiveWorld:
    def __init__(self, model: Model, tiers: dict[tuple[str, str | None], tuple[str, bool]]) -> None:
        self.loop = FakeLoop()
        self.phones: dict[str, FakePhone] = {}
        self.trace: list[tuple[Event, list[Decision]]] = []
        self.queues = LiveQueues(
            TracedEngine(Engine(model), self.trace),  # type: ignore[arg-type]
            FakeUA(self),  # type: ignore[arg-type]
            FakeMedia(),  # type: ignore[arg-type]
            self.loop.time,
            self.loop,  # type: ignore[arg-type]
            lambda queue, groups: tiers[(queue, next(iter(groups), None))],
        )
        self.talk: dict[str, float] = {}

    def phone_answers(self, phone: FakePhone) -> None:
        if phone.over:
            return
        phone.answered = True
        ring = phone.out.owner
        assert isinstance(ring, Ring)
        self.queues.on_sip_event(OutAnswered(phone.out))
        queued = self.queues.calls.get(ring.call_id)
        if queued is not None and queued.talking is not None and queued.talking.out is phone.out:
            talk = self.talk[ring.call_id]
            self.loop.call_at(self.loop.now + talk, lambda: self.agent_hangs_up(phone))

    def agent_hangs_up(self, phone: FakePhone) -> None:
        if phone.over:
            return
        phone.over = True
        phone.out.ended_by = "remote"
        self.queues.on_sip_event(OutEnded(phone.out))

    def arrive(self, call_id: str, script: ScriptedCall) -> None:
        ivr = FakeIvr(CallerLeg(call_id), script)
        self.talk[call_id] = script.handle
        groups = frozenset({script.group}) if script.group else frozenset()
        self.queues.enqueue(ivr, script.queue, groups, self.loop.now)  # type: ignore[arg-type]
        if script.patience != float("inf"):
            self.loop.call_at(self.loop.now + script.patience, lambda: self.hang_up(ivr))

    def hang_up(self, ivr: FakeIvr) -> None:
        if ivr.in_queue:
            ivr.in_queue = False
            self.queues.caller_gone(ivr.call.call_id, self.loop.now)


# ------------------------------------------------------------------ the same day both ways


def _model(team: Team) -> Model:
    queue = QueueSpec(
        name="general",
        tiers=(Tier("special", 3), Tier("ordinary", 1)),
        announce_every=Limit(30, 20),
        max_wait=Limit(90, 45),
        max_length=Limit(8, 4),
        overflow="message",
        surge_overflow="callback",
        ring_timeout=12.0,
        wrap_up=10.0,
    )
    surge = SurgeSpec(auto=True, ewt_on=150, ewt_off=60, min_dwell=120, peak_shaving_ewt=400, notice=True)
    return Model(queues=(queue,), agents=agent_specs((team,), ()), surge=surge)


def _script(seed: int, hours: float, rate: float) -> list[ScriptedCall]:
    rng = random.Random(seed)
    calls: list[ScriptedCall] = []
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= hours * 3600:
            return calls
        group = "vip" if rng.random() < 0.1 else None
        calls.append(ScriptedCall(t, "general", rng.expovariate(1 / 170), rng.expovariate(1 / 100), group))


@pytest.mark.parametrize("seed", [1, 2])
def test_live_adapter_and_simulator_take_the_same_decisions(seed: int) -> None:
    hours, agents = 2.0, 6
    team = Team("desk", MappingProxyType({}), (agents,) * 4, (agents,) * 4)
    model = _model(team)
    tiers = {("general", None): ("ordinary", False), ("general", "vip"): ("special", False)}
    script = _script(seed, hours, rate=agents / 170 * 1.15)  # a little over capacity: waits, overflow, surge
    switch_at = 3000.5
    plan = Plan(
        name="parity",
        model=model,
        block_seconds=1800,
        blocks=4,
        sources=(Source("none", (RateStep(0, 7200, 0.0),)),),
        queue_mix=(("general", 1.0),),
        handle_time=MappingProxyType({"general": constant(170)}),
        patience=NEVER,
        tiers=MappingProxyType(tiers),
        ring_delay=constant(RING_DELAY),
        callbacks=None,
        teams=(team,),
        surge_commands=(SurgeCommand(switch_at, True, "manual"), SurgeCommand(switch_at + 1200, None, "manual")),
    )
    sim_trace: list[tuple[Event, list[Decision]]] = []
    Simulation(plan, seed, trace=sim_trace, script=script).run()

    world = LiveWorld(model, tiers)
    for agent in [a.id for a in model.agents]:
        world.queues.agent_event(agent, "login")
    for i, call in enumerate(script, start=1):
        world.loop.call_at(call.at, functools.partial(world.arrive, str(i), call))
    world.loop.call_at(switch_at, lambda: world.queues.surge_switch(True, "manual"))
    world.loop.call_at(switch_at + 1200, lambda: world.queues.surge_switch(None, "manual"))
    world.loop.call_at(7200.0, lambda: None)
    world.loop.run()
    live_trace = [(e, d) for e, d in world.trace if e.now < 7200.0]
    sim_trace = [(e, d) for e, d in sim_trace if e.now < 7200.0]

    # what happened is rich enough to mean something
    decisions = [type(d).__name__ for _, ds in sim_trace for d in ds]
    for kind in ("RingAgent", "Connect", "Overflow", "PlayAnnouncement", "SurgeChanged", "CancelRing"):
        assert kind in decisions, kind
    assert any(type(e).__name__ == "CallerHungUp" for e, _ in sim_trace)
    # and it is the same, event for event, decision for decision
    assert len(live_trace) == len(sim_trace)
    for i, (live, sim) in enumerate(zip(live_trace, sim_trace, strict=True)):
        assert live == sim, f"step {i}: live {live} != simulated {sim}"
