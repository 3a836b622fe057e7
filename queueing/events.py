"""Events in and decisions out of the queueing engine (queueing.engine.Engine).

Every event carries ``now``: the time it happened, in seconds on whatever clock
the caller runs (the live server's loop clock or the simulator's virtual clock).
The engine never reads a clock; it only knows the times it is given.

Decisions are what the shell (live server or simulator) must do. They carry no
time of their own: they apply at the ``now`` of the event that produced them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from queueing.model import OverflowTarget, QueueSpec, SurgeSpec

SurgeCause = Literal["manual", "schedule", "auto"]
AnnouncementKind = Literal["position_ewt", "peak_shaving", "notice"]


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


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentNoAnswer:
    """The agent's phone refused or stopped ringing before the ring timeout."""

    agent: str
    call: str
    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CallEnded:
    """Talk ended (either side hung up after connect); the agent goes to wrap-up."""

    call: str
    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CallerHungUp:
    """The caller hung up while queued or ringing (an abandon); while talking it is a CallEnded."""

    call: str
    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerFired:
    """A timer the engine asked for (SetTimer) is due. Stale or unknown timers are ignored."""

    kind: str
    id: str
    now: float


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


@dataclass(frozen=True, slots=True)
class CancelRing:
    """Stop ringing ``agent`` for ``call`` (caller hung up, or another agent answered a ring-all)."""

    agent: str
    call: str


@dataclass(frozen=True, slots=True)
class Connect:
    """Bridge caller and agent: the agent answered."""

    agent: str
    call: str


@dataclass(frozen=True, slots=True)
class Overflow:
    """Take the caller out of the queue into ``target`` (callback offer, message, self-service, peak shaving)."""

    call: str
    target: OverflowTarget
    reason: str  # "max_length", "max_wait", "peak_shaving", "ewt" (callback offered for a long wait)


@dataclass(frozen=True, slots=True)
class PlayAnnouncement:
    """Play to a waiting caller. ``ewt`` is None for peak shaving and notices (R8: never promise a time)."""

    call: str
    kind: AnnouncementKind
    position: int | None = None
    ewt: float | None = None


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Deliver TimerFired(kind, id) at time ``at``. Re-arming the same (kind, id) replaces it."""

    kind: str
    id: str
    at: float


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
