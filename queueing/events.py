"""Events in and decisions out of the queueing engine (queueing.engine.Engine).

Every event carries ``now``: the time it happened, in seconds on whatever clock
the caller runs (the live server's loop clock or the simulator's virtual clock).
The engine never reads a clock; it only knows the times it is given.

Decisions are what the shell (live server or simulator) must do. They carry no
time of their own: they apply at the ``now`` of the event that produced them.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import FunctionType
from typing import Final, Literal

from queueing.model import OverflowTarget, QueueSpec, SurgeSpec

SurgeCause = Literal["manual", "schedule", "auto"]
AnnouncementKind = Literal["position_ewt", "peak_shaving", "notice"]


# The events and decisions made for every call write their constructor out: mypyc compiles it, while the one
# @dataclass generates stays interpreted. Compiled, it stores the fields directly (the frozen guard is a
# __setattr__ for Python callers, which compiled code does not go through; object.__setattr__ costs several
# times more); pure, it sets them as the generated constructor of a frozen dataclass does. Equality, hashing,
# repr and replace() are still the generated ones.
_set = object.__setattr__


def _probe() -> None:
    pass


COMPILED: Final = not isinstance(_probe, FunctionType)  # whether this module runs compiled (mypyc)


class PolicyError(ValueError):
    """An event that is illegal in the current state (``Engine.handle`` raised it); nothing was changed."""


# ---------------------------------------------------------------- events in


@dataclass(frozen=True, slots=True, kw_only=True)
class CallArrived:
    """A caller enters ``queue`` (after the IVR chose it)."""

    call_id: str
    queue: str
    tier: str
    skills: frozenset[str] = frozenset()  # skills this caller needs on top of the queue's
    urgent: bool = False
    now: float

    def __init__(
        self,
        *,
        call_id: str,
        queue: str,
        tier: str,
        skills: frozenset[str] = frozenset(),
        urgent: bool = False,
        now: float,
    ) -> None:
        if COMPILED:
            self.call_id = call_id  # type: ignore[misc]
            self.queue = queue  # type: ignore[misc]
            self.tier = tier  # type: ignore[misc]
            self.skills = skills  # type: ignore[misc]
            self.urgent = urgent  # type: ignore[misc]
            self.now = now  # type: ignore[misc]
        else:
            _set(self, "call_id", call_id)
            _set(self, "queue", queue)
            _set(self, "tier", tier)
            _set(self, "skills", skills)
            _set(self, "urgent", urgent)
            _set(self, "now", now)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentLoggedIn:
    agent: str
    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentReady:
    agent: str
    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentNotReady:
    agent: str
    reason: str
    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentLoggedOut:
    agent: str
    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentAnswered:
    agent: str
    call: str
    now: float

    def __init__(self, *, agent: str, call: str, now: float) -> None:
        if COMPILED:
            self.agent = agent  # type: ignore[misc]
            self.call = call  # type: ignore[misc]
            self.now = now  # type: ignore[misc]
        else:
            _set(self, "agent", agent)
            _set(self, "call", call)
            _set(self, "now", now)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentNoAnswer:
    """The agent's phone refused or stopped ringing before the ring timeout."""

    agent: str
    call: str
    now: float

    def __init__(self, *, agent: str, call: str, now: float) -> None:
        if COMPILED:
            self.agent = agent  # type: ignore[misc]
            self.call = call  # type: ignore[misc]
            self.now = now  # type: ignore[misc]
        else:
            _set(self, "agent", agent)
            _set(self, "call", call)
            _set(self, "now", now)


@dataclass(frozen=True, slots=True, kw_only=True)
class CallEnded:
    """Talk ended (either side hung up after connect); the agent goes to wrap-up."""

    call: str
    now: float

    def __init__(self, *, call: str, now: float) -> None:
        if COMPILED:
            self.call = call  # type: ignore[misc]
            self.now = now  # type: ignore[misc]
        else:
            _set(self, "call", call)
            _set(self, "now", now)


@dataclass(frozen=True, slots=True, kw_only=True)
class CallerHungUp:
    """The caller hung up while queued or ringing (an abandon); while talking it is a CallEnded."""

    call: str
    now: float

    def __init__(self, *, call: str, now: float) -> None:
        if COMPILED:
            self.call = call  # type: ignore[misc]
            self.now = now  # type: ignore[misc]
        else:
            _set(self, "call", call)
            _set(self, "now", now)


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerFired:
    """A timer the engine asked for (SetTimer) is due. Stale or unknown timers are ignored."""

    kind: str
    id: str
    now: float

    def __init__(self, *, kind: str, id: str, now: float) -> None:
        if COMPILED:
            self.kind = kind  # type: ignore[misc]
            self.id = id  # type: ignore[misc]
            self.now = now  # type: ignore[misc]
        else:
            _set(self, "kind", kind)
            _set(self, "id", id)
            _set(self, "now", now)


@dataclass(frozen=True, slots=True, kw_only=True)
class SurgeSwitch:
    """Ops or a schedule flips the surge switch.

    ``cause="manual"`` with ``on=None`` releases the manual override (back to
    schedule and automatic thresholds).
    """

    on: bool | None
    cause: SurgeCause
    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueReconfigured:
    """Ops changed a queue's settings at runtime (limits, strategy, targets); the queue keeps its name and callers."""

    spec: QueueSpec
    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SurgeReconfigured:
    """Ops changed the surge thresholds or what surge does, at runtime."""

    spec: SurgeSpec
    now: float


Event = (
    CallArrived
    | AgentLoggedIn
    | AgentReady
    | AgentNotReady
    | AgentLoggedOut
    | AgentAnswered
    | AgentNoAnswer
    | CallEnded
    | CallerHungUp
    | TimerFired
    | SurgeSwitch
    | QueueReconfigured
    | SurgeReconfigured
)


# ------------------------------------------------------------- decisions out


@dataclass(frozen=True, slots=True)
class RingAgent:
    agent: str
    call: str
    timeout: float

    def __init__(self, agent: str, call: str, timeout: float) -> None:
        if COMPILED:
            self.agent = agent  # type: ignore[misc]
            self.call = call  # type: ignore[misc]
            self.timeout = timeout  # type: ignore[misc]
        else:
            _set(self, "agent", agent)
            _set(self, "call", call)
            _set(self, "timeout", timeout)


@dataclass(frozen=True, slots=True)
class CancelRing:
    """Stop ringing ``agent`` for ``call`` (caller hung up, or another agent answered a ring-all)."""

    agent: str
    call: str

    def __init__(self, agent: str, call: str) -> None:
        if COMPILED:
            self.agent = agent  # type: ignore[misc]
            self.call = call  # type: ignore[misc]
        else:
            _set(self, "agent", agent)
            _set(self, "call", call)


@dataclass(frozen=True, slots=True)
class Connect:
    """Bridge caller and agent: the agent answered."""

    agent: str
    call: str

    def __init__(self, agent: str, call: str) -> None:
        if COMPILED:
            self.agent = agent  # type: ignore[misc]
            self.call = call  # type: ignore[misc]
        else:
            _set(self, "agent", agent)
            _set(self, "call", call)


@dataclass(frozen=True, slots=True)
class Overflow:
    """Take the caller out of the queue into ``target`` (callback offer, message, self-service, peak shaving)."""

    call: str
    target: OverflowTarget
    reason: str  # "max_length", "max_wait", "peak_shaving", "ewt" (callback offered for a long wait)

    def __init__(self, call: str, target: OverflowTarget, reason: str) -> None:
        if COMPILED:
            self.call = call  # type: ignore[misc]
            self.target = target  # type: ignore[misc]
            self.reason = reason  # type: ignore[misc]
        else:
            _set(self, "call", call)
            _set(self, "target", target)
            _set(self, "reason", reason)


@dataclass(frozen=True, slots=True)
class PlayAnnouncement:
    """Play to a waiting caller. ``ewt`` is None for peak shaving and notices (R8: never promise a time)."""

    call: str
    kind: AnnouncementKind
    position: int | None = None
    ewt: float | None = None

    def __init__(
        self, call: str, kind: AnnouncementKind, position: int | None = None, ewt: float | None = None
    ) -> None:
        if COMPILED:
            self.call = call  # type: ignore[misc]
            self.kind = kind  # type: ignore[misc]
            self.position = position  # type: ignore[misc]
            self.ewt = ewt  # type: ignore[misc]
        else:
            _set(self, "call", call)
            _set(self, "kind", kind)
            _set(self, "position", position)
            _set(self, "ewt", ewt)


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Deliver TimerFired(kind, id) at time ``at``. Re-arming the same (kind, id) replaces it."""

    kind: str
    id: str
    at: float

    def __init__(self, kind: str, id: str, at: float) -> None:
        if COMPILED:
            self.kind = kind  # type: ignore[misc]
            self.id = id  # type: ignore[misc]
            self.at = at  # type: ignore[misc]
        else:
            _set(self, "kind", kind)
            _set(self, "id", id)
            _set(self, "at", at)


@dataclass(frozen=True, slots=True)
class SurgeChanged:
    on: bool
    cause: SurgeCause


@dataclass(frozen=True, slots=True)
class PauseOutbound:
    """R15: stop outbound callbacks and marketing, every agent on inbound."""


@dataclass(frozen=True, slots=True)
class ResumeOutbound:
    pass


Decision = (
    RingAgent
    | CancelRing
    | Connect
    | Overflow
    | PlayAnnouncement
    | SetTimer
    | SurgeChanged
    | PauseOutbound
    | ResumeOutbound
)
