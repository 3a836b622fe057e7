"""The policy engine alone, for ``frontdesk bench-sim``: decisions per second, and cost against the line's length.

In cluster mode one engine decides for every node, so what one engine handles
per second in one process is the cluster's ceiling. Two measures:

- ``replay``: the events a simulated run fed the engine (``EventRecorder``), fed
  again to a fresh engine with nothing around it; events and decisions per
  second of the engine only.
- ``line_cost``: every agent busy and ``length`` callers in line; then a fixed
  round of six events over and over (a caller joins, a random waiting caller
  hangs up, another joins, a talk ends, the wrap-up timer frees the agent, who
  is rung for the head of the line and answers), so the line stays at
  ``length`` and every round inserts at the back, removes from the middle and
  takes the head. Events per second by length: flat when the cost per event
  does not grow with the line.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from types import MappingProxyType

from queueing.engine import Engine
from queueing.events import (
    AgentAnswered,
    AgentLoggedIn,
    CallArrived,
    CallEnded,
    CallerHungUp,
    Decision,
    Event,
    RingAgent,
    TimerFired,
)
from queueing.model import AgentSpec, Limit, Model, QueueSpec, SurgeSpec

LINE_LENGTHS = (0, 100, 1000, 5000)


class EventRecorder:
    """A ``Simulation`` trace that keeps only the events (decisions are only counted), to replay them cheaply."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.decisions = 0

    def append(self, item: tuple[Event, list[Decision]]) -> None:
        self.events.append(item[0])
        self.decisions += len(item[1])


@dataclass(frozen=True)
class EngineRate:
    events: int
    decisions: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def decisions_per_second(self) -> float:
        return self.decisions / self.seconds if self.seconds > 0 else 0.0


def replay(model: Model, events: list[Event]) -> EngineRate:
    """Feed ``events`` to a fresh engine of ``model``; the engine's own time (it decides the same again)."""
    engine = Engine(model)
    handle = engine.handle
    decisions = 0
    started = time.perf_counter()
    for event in events:
        decisions += len(handle(event))
    return EngineRate(len(events), decisions, time.perf_counter() - started)


def line_model(agents: int) -> Model:
    spec = QueueSpec(
        name="line",
        max_wait=Limit(1e12, 1e12),
        max_length=Limit(10**9, 10**9),
        announce_every=Limit(1e12, 1e12),
        ring_timeout=1e12,
        wrap_up=0.0,
    )
    return Model(
        queues=(spec,),
        agents=tuple(AgentSpec(f"a{i}", MappingProxyType({})) for i in range(agents)),
        surge=SurgeSpec(auto=False, peak_shaving_ewt=None),
    )


def line_cost(length: int, rounds: int, agents: int = 100, seed: int = 1) -> EngineRate:
    """Events per second of the engine with ``length`` callers in line and every agent busy (module docstring)."""
    engine = Engine(line_model(agents))
    rng = random.Random(seed)
    now = 0.0
    serial = 0
    talking: list[str] = []  # calls being talked, oldest first
    waiting: list[str] = []  # calls in line, in no order (a random one hangs up)
    where: dict[str, int] = {}  # call -> its index in ``waiting``

    def leave_line(index: int) -> str:
        call, last = waiting[index], waiting[-1]
        waiting[index] = last
        where[last] = index
        waiting.pop()
        del where[call]
        return call

    for i in range(agents):
        engine.handle(AgentLoggedIn(agent=f"a{i}", now=now))
    for _ in range(agents + length):  # the first ``agents`` are rung at once; the rest wait
        now += 0.001
        serial += 1
        call = f"c{serial}"
        out = engine.handle(CallArrived(call_id=call, queue="line", tier="ordinary", now=now))
        rung = [d for d in out if type(d) is RingAgent]
        if rung:
            engine.handle(AgentAnswered(agent=rung[0].agent, call=call, now=now))
            talking.append(call)
        else:
            where[call] = len(waiting)
            waiting.append(call)
    assert len(waiting) == length and len(talking) == agents
    events = decisions = 0
    head = 0  # next talking call to end
    rung_agent = rung_call = ""
    started = time.perf_counter()
    for _ in range(rounds):
        now += 1.0
        for step in range(6):
            if step == 0 or step == 2:
                serial += 1
                call = f"c{serial}"
                where[call] = len(waiting)
                waiting.append(call)
                out = engine.handle(CallArrived(call_id=call, queue="line", tier="ordinary", now=now))
            elif step == 1:
                out = engine.handle(CallerHungUp(call=leave_line(rng.randrange(len(waiting))), now=now))
            elif step == 3:
                out = engine.handle(CallEnded(call=talking[head], now=now))
                head += 1
            elif step == 4:
                out = engine.handle(TimerFired(kind="tick", id="", now=now))
                for d in out:
                    if type(d) is RingAgent:
                        leave_line(where[d.call])
                        rung_agent, rung_call = d.agent, d.call
            else:
                out = engine.handle(AgentAnswered(agent=rung_agent, call=rung_call, now=now))
                talking.append(rung_call)
            events += 1
            decisions += len(out)
    seconds = time.perf_counter() - started
    assert len(waiting) == length == engine.waiting, (len(waiting), length, engine.waiting)
    return EngineRate(events, decisions, seconds)
