"""What the simulator's parts share: the clock, the event heap, the policy engine and the counters.

``sim.simulation.Simulation`` is the one ``World``; the parts that play the
people around the engine (``sim/customers.py``, ``sim/roster.py``,
``sim/callbacks.py``) see it only through this Protocol, so none of them
imports the loop that drives them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

from queueing.engine import Engine
from queueing.events import Event
from sim.plan import Plan, Sampler


class Kind(IntEnum):
    """What a heap entry ``(time, seq, kind, payload)`` is; ``seq`` orders ties, so the values are only names."""

    ARRIVAL = 0
    ANSWER = 1
    END = 2
    HANGUP = 3
    BLOCK = 4
    SAMPLE = 5
    REDIAL = 6
    CB_ROUND = 7
    CB_END = 8
    SURGE = 9
    RESERVE = 10
    SCRIPT = 11
    STOP = 12


@dataclass(frozen=True, slots=True)
class Draws:
    """The run's random streams and the samplers the parts share (one stream each, drawn in event order).

    Separate streams so that what-ifs of one seed share their callers (common
    random numbers); one sampler per distribution, shared by whoever draws from it.
    """

    arrive: random.Random  # arrival instants
    caller: random.Random  # a caller's queue, group, handle time, patience
    agent: random.Random  # ring delays, whether a phone answers
    choice: random.Random  # diversions, callback take-up, redials, customers answering a callback
    handle: dict[str, Sampler]  # handle time by queue
    ring_delay: Sampler

    @classmethod
    def for_run(cls, plan: Plan, rng: random.Random) -> Draws:
        """The streams seeded from ``rng`` in a fixed order, and the plan's samplers."""
        arrive, caller, agent, choice = (random.Random(rng.getrandbits(64)) for _ in range(4))
        return cls(
            arrive,
            caller,
            agent,
            choice,
            {q: d.sampler() for q, d in plan.handle_time.items()},
            plan.ring_delay.sampler(),
        )


class World(Protocol):
    plan: Plan
    engine: Engine
    now: float
    counts: dict[str, float]  # what the engine does not count (docs/sim.md)

    def push(self, t: float, kind: Kind, payload: Any) -> None:
        """Schedule ``payload`` of ``kind`` at time ``t``."""

    def feed(self, event: Event) -> None:
        """Hand the engine one event now and carry out its decisions."""

    def block_sl_so_far(self) -> tuple[float, float]:
        """(decided, answered within T) of the current block so far."""
