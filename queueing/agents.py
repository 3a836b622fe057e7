"""Agents as the engine sees them: their states, the table of legal moves, and the routing strategies.

An agent's state changes only by a trigger listed in ``TRANSITIONS``
(``(state, trigger) -> next state``); anything else is illegal and the engine
refuses the event with ``PolicyError`` before it changes anything. The
strategies are plain functions of the ready agents who can take a caller
(like Ciw's ``disciplines.py``): the engine hands them the candidates and rings
whom they pick.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from queueing.events import PolicyError
from queueing.model import AgentSpec, Strategy


class AgentState(StrEnum):
    LOGGED_OUT = "logged_out"
    READY = "ready"
    RINGING = "ringing"
    TALKING = "talking"
    WRAP_UP = "wrap_up"
    NOT_READY = "not_ready"


_A = AgentState
# (state, trigger) -> next state. Anything not listed is illegal.
TRANSITIONS: Mapping[tuple[AgentState, str], AgentState] = {
    (_A.LOGGED_OUT, "login"): _A.READY,
    (_A.READY, "ready"): _A.READY,
    (_A.READY, "not_ready"): _A.NOT_READY,
    (_A.READY, "logout"): _A.LOGGED_OUT,
    (_A.READY, "ring"): _A.RINGING,
    (_A.RINGING, "answer"): _A.TALKING,
    (_A.RINGING, "miss"): _A.READY,
    (_A.RINGING, "miss_limit"): _A.NOT_READY,  # N misses in a row: not ready "no answer"
    (_A.RINGING, "cancel"): _A.READY,  # caller hung up, or another agent answered a ring-all
    (_A.RINGING, "not_ready"): _A.NOT_READY,  # the caller goes back to the head of the queue
    (_A.RINGING, "logout"): _A.LOGGED_OUT,  # same
    (_A.TALKING, "end"): _A.WRAP_UP,
    (_A.TALKING, "not_ready"): _A.TALKING,  # remembered; applied when wrap-up ends
    (_A.WRAP_UP, "wrap_done"): _A.READY,
    (_A.WRAP_UP, "ready"): _A.READY,  # the agent cuts wrap-up short
    (_A.WRAP_UP, "not_ready"): _A.NOT_READY,
    (_A.WRAP_UP, "logout"): _A.LOGGED_OUT,
    (_A.NOT_READY, "ready"): _A.READY,
    (_A.NOT_READY, "not_ready"): _A.NOT_READY,  # a new reason
    (_A.NOT_READY, "logout"): _A.LOGGED_OUT,
}
NO_ANSWER = "no answer"
OFF_DUTY = frozenset({_A.LOGGED_OUT, _A.NOT_READY})  # states that do not serve a queue (not in EWT's N)


@dataclass(slots=True)
class Agent:
    spec: AgentSpec
    state: AgentState = AgentState.LOGGED_OUT
    reason: str | None = None  # why not ready
    call: str | None = None  # the one call this agent rings or talks with
    idle_since: float = 0.0
    answered: int = 0  # since login (fewest_calls)
    misses: int = 0  # ring-no-answers in a row
    pending_not_ready: str | None = None
    talk_started: float = 0.0
    handled_queue: str | None = None  # queue of the call being wrapped up
    id: str = field(init=False)  # the spec's id, read often enough to keep at hand

    def __post_init__(self) -> None:
        self.id = self.spec.id

    def move(self, trigger: str) -> AgentState:
        """Take the move ``trigger`` by the table; PolicyError (and no change) when it is not listed."""
        try:
            self.state = state = TRANSITIONS[(self.state, trigger)]
        except KeyError:
            raise PolicyError(f"agent {self.id}: {trigger} is illegal while {self.state}") from None
        return state


@dataclass(slots=True)
class Staffing:
    """One queue's agents as its EWT counts them (queueing/ewt.py): ``serving`` (N) and ``idle`` (ready).

    The engine keeps these up to date as agents move, so reading them costs
    nothing however many agents there are.
    """

    serving: int = 0
    idle: int = 0


# ---------------------------------------------------------------- routing
# Plain policy functions: given the ready agents that can take the caller, pick one.


def pick_longest_idle(free: list[Agent]) -> Agent:
    """The least ``(idle_since, id)`` (a plain loop: routing runs at every event with ready agents)."""
    best = free[0]
    for a in free:
        if a.idle_since < best.idle_since or (a.idle_since == best.idle_since and a.id < best.id):
            best = a
    return best


def pick_fewest_calls(free: list[Agent]) -> Agent:
    return min(free, key=lambda a: (a.answered, a.idle_since, a.id))


def pick_round_robin(free: list[Agent], last: str | None) -> Agent:
    ordered = sorted(free, key=lambda a: a.id)
    if last is not None:
        for agent in ordered:
            if agent.id > last:
                return agent
    return ordered[0]


def choose(strategy: Strategy, free: list[Agent], last: str | None) -> list[Agent]:
    """The agents to ring for one caller by the queue's ``strategy`` (``last``: the round robin's previous pick)."""
    if strategy == "ring_all":
        return sorted(free, key=lambda a: a.id)
    if strategy == "round_robin":
        return [pick_round_robin(free, last)]
    if strategy == "fewest_calls":
        return [pick_fewest_calls(free)]
    return [pick_longest_idle(free)]
