"""The callers the engine holds: waiting in line, ringing an agent, or talking.

A caller's place is ``QueuedCall.key``: tier priority first (higher first),
then callers sent back after an unanswered ring, then arrival. Each queue's
waiting callers are a ``Line``, kept in that order as callers come and go, so
the head, a caller's place and the back of the line cost O(log n) however long
the line is (docs/queueing.md, "The line").
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sortedcontainers import SortedList

from queueing.model import QueueSpec
from queueing.pickling import reduce_fields


class QueuedCallState(StrEnum):
    WAITING = "waiting"
    RINGING = "ringing"
    TALKING = "talking"


@dataclass(slots=True)
class QueuedCall:
    id: str
    queue: QueueSpec
    tier: str
    priority: int
    required: Mapping[str, int]
    urgent: bool
    arrived: float
    order: int
    state: QueuedCallState = QueuedCallState.WAITING
    requeued: bool = False
    agents: set[str] = field(default_factory=set)
    predicted_ewt: float = 0.0
    extra_skills: frozenset[str] = frozenset()

    def __init__(  # written out: mypyc compiles it (the one @dataclass generates stays interpreted)
        self,
        id: str,
        queue: QueueSpec,
        tier: str,
        priority: int,
        required: Mapping[str, int],
        urgent: bool,
        arrived: float,
        order: int,
        state: QueuedCallState = QueuedCallState.WAITING,
        requeued: bool = False,
        agents: set[str] | None = None,
        predicted_ewt: float = 0.0,
        extra_skills: frozenset[str] = frozenset(),
    ) -> None:
        self.id = id
        self.queue = queue
        self.tier = tier
        self.priority = priority
        self.required = required
        self.urgent = urgent
        self.arrived = arrived
        self.order = order
        self.state = state
        self.requeued = requeued
        self.agents = set() if agents is None else agents
        self.predicted_ewt = predicted_ewt
        self.extra_skills = extra_skills

    def __reduce__(self) -> tuple[Any, ...]:
        return reduce_fields(self)

    @property
    def key(self) -> tuple[int, int, int]:
        """Sort key of the line: tier first, then callers sent back after a missed ring, then arrival."""
        return (-self.priority, 0 if self.requeued else 1, self.order)

    @property
    def protected(self) -> bool:
        """Never peak-shaved (R8): urgent, or in the queue's top tier."""
        return self.urgent or self.priority >= self.queue.top_priority


def required_skills(spec: QueueSpec, extra: frozenset[str]) -> dict[str, int]:
    """The queue's skills, plus the caller's own ``extra`` skills at level 1 or more."""
    required = dict(spec.skills)
    for skill in extra:
        required[skill] = max(required.get(skill, 1), 1)
    return required


def call_key(call: QueuedCall) -> tuple[int, int, int]:
    return call.key


class Line:
    """One queue's waiting callers in the order of ``QueuedCall.key``: O(log n) add, remove and place in line.

    The entries are ``(*key, call)`` tuples in a ``SortedList``; keys are
    unique (``order`` is), so a caller is never compared with another. A
    caller's key must not change while it is in the line: take it out, change
    it, put it back (the engine does, on reconfiguration).
    """

    __slots__ = ("_sorted", "calls")

    def __init__(self) -> None:
        self.calls: dict[str, QueuedCall] = {}  # by id, for membership
        self._sorted: SortedList = SortedList()

    def __len__(self) -> int:
        return len(self.calls)

    def __iter__(self) -> Iterator[QueuedCall]:
        """The callers from the head of the line to its back."""
        return (entry[3] for entry in self._sorted)

    def add(self, call: QueuedCall) -> None:
        self.calls[call.id] = call
        self._sorted.add((-call.priority, 0 if call.requeued else 1, call.order, call))

    def discard(self, call: QueuedCall) -> bool:
        """Take ``call`` out of the line; False when it was not in it."""
        if self.calls.pop(call.id, None) is None:
            return False
        self._sorted.remove((-call.priority, 0 if call.requeued else 1, call.order, call))
        return True

    def reorder(self) -> None:
        """Sort the line afresh after its callers' keys changed (a queue's tiers were reconfigured)."""
        self._sorted = SortedList((-c.priority, 0 if c.requeued else 1, c.order, c) for c in self.calls.values())

    def ahead_of(self, call: QueuedCall) -> int:
        """How many callers in line are ahead of ``call`` (its 0-based place if it is in line)."""
        return self._sorted.bisect_left((-call.priority, 0 if call.requeued else 1, call.order))

    def at(self, index: int) -> QueuedCall:
        """The caller at 0-based place ``index``."""
        entry: tuple[int, int, int, QueuedCall] = self._sorted[index]
        return entry[3]

    def key_at(self, index: int) -> tuple[int, int, int]:
        entry = self._sorted[index]
        return entry[0], entry[1], entry[2]

    def beyond(self, length: int) -> list[QueuedCall]:
        """The callers past the first ``length``, from the back of the line forwards."""
        return [entry[3] for entry in reversed(self._sorted[length:])]

    def entries(self) -> list[tuple[int, int, int, QueuedCall]]:
        """The line as sorted ``(*key, call)`` tuples (for merging the lines of several queues)."""
        return list(self._sorted)
