"""The callers the engine holds: waiting in line, ringing an agent, or talking.

A caller's place is ``QueuedCall.key``: tier priority first (higher first),
then callers sent back after an unanswered ring, then arrival. The engine keeps
each queue's waiting callers unsorted and sorts by this key when it needs the
order (docs/queueing.md, "The line").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from queueing.model import QueueSpec


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
