"""The contract between the IVR flow interpreter and the call that runs it.

The interpreter is pure: ``step(state, event, now) -> (state, actions)``.
Events say what happened on the call; actions say what the call must do.
The per-call executor (ivr/calls/ivrcall.py) carries actions out and feeds the
resulting events back. Nothing here does I/O.

Timing rules the executor follows:
- ``Play`` replaces whatever is playing; when the last prompt of the list has
  been sent, the executor feeds ``PlaybackDone(play_id)``. With
  ``barge_in=True`` a key pressed during playback stops it (the key is still
  delivered as ``Digit``).
- ``StartTimer(name, seconds)`` replaces a timer of the same name; when it
  fires the executor feeds ``TimerExpired(name)``. ``CancelTimer`` disarms it.
- ``Record`` starts recording the caller; the executor feeds
  ``RecordingDone`` when it stops (max length, silence, '#', or hang-up).
  When the caller hangs up during a recording, feed ``RecordingDone``
  (reason "hangup") before ``HungUp``: events after the end are ignored, and
  the message would be lost.
- ``Hangup`` ends the call (BYE); no event follows. ``Transfer`` does too,
  after the referral; the outcome is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ivr.flow.frozen import copyable

if TYPE_CHECKING:
    from ivr.flow.program import Flow


# -- events (what happened) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallInfo:
    """What is known when the call is answered."""

    caller: str  # caller's number (From user part)
    called: str  # dialled number (Request-URI user part); selects the flow
    groups: frozenset[str]  # caller groups the number belongs to (R6)
    notices: tuple[str, ...]  # prompt ids of the notices published now for those groups, in order
    surge: bool  # the surge switch is on
    local_time_minutes: int  # minutes since local midnight, for time-of-day branches
    weekday: int  # 0 = Monday
    queues: bool = False  # live queues: a queue node waits for QueueLeft instead of going on after its prompt
    callbacks: bool = False  # live callbacks: a callback node waits for CallbackDone


@dataclass(frozen=True, slots=True)
class Started:
    info: CallInfo


@dataclass(frozen=True, slots=True)
class PlaybackDone:
    play_id: int


@dataclass(frozen=True, slots=True)
class Digit:
    key: str  # one of 0-9 * # A-D


@dataclass(frozen=True, slots=True)
class TimerExpired:
    name: str


@dataclass(frozen=True, slots=True)
class RecordingDone:
    path: str
    seconds: float
    reason: str  # "max_length" | "silence" | "key" | "hangup"


@dataclass(frozen=True, slots=True)
class HungUp:
    """The caller hung up (the interpreter only records where)."""


@dataclass(frozen=True, slots=True)
class QueueLeft:
    """The caller left the queue: ``"connected"`` to an agent, or an overflow target (callback, message, ...)."""

    how: str


@dataclass(frozen=True, slots=True)
class CallbackDone:
    """The callback store's answer: ``booked`` (committed), ``exists``, ``cancelled``, ``none`` or ``failed``."""

    result: str
    minutes: int | None = None  # booked: how long until the promised time, rounded up


FlowEvent = Started | PlaybackDone | Digit | TimerExpired | RecordingDone | HungUp | QueueLeft | CallbackDone


# -- actions (what to do) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Play:
    prompts: tuple[str, ...]  # prompt ids; say-digits/numbers expand to digit/number prompt ids
    play_id: int
    barge_in: bool = False


@dataclass(frozen=True, slots=True)
class StopPlayback:
    pass


@dataclass(frozen=True, slots=True)
class StartTimer:
    name: str
    seconds: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    name: str


@dataclass(frozen=True, slots=True)
class Record:
    kind: str  # "message" (R14) | "callback" (name for the callback booking)
    max_seconds: float
    silence_seconds: float  # stop after this long without voice
    stop_key: str = "#"


@dataclass(frozen=True, slots=True)
class SendText:
    """A text message (SMS) to the caller's number, through the outbox."""

    to: str
    body: str
    reason: str  # "hotkey" | "self_service" | "callback" | ... (metric label)


@dataclass(frozen=True, slots=True)
class Transfer:
    uri: str


@dataclass(frozen=True, slots=True)
class Hangup:
    pass


@dataclass(frozen=True, slots=True)
class QueueRequest:
    """The caller asked for an agent in ``queue``; the executor answers with ``QueueLeft`` when live queues run."""

    queue: str


@dataclass(frozen=True, slots=True)
class CallbackRequest:
    """Book a callback to ``number`` in ``queue`` (or cancel the active one); answered with ``CallbackDone``."""

    queue: str
    number: str
    slot: str = "asap"
    cancel: bool = False


@dataclass(frozen=True, slots=True)
class Note:
    """Something for the call record and metrics (R4).

    ``kind``: "node" (a node was entered; ``value`` is its id), "key" (a key
    pressed), "notice" (a notice played; value = notice id), "hotkey",
    "self_service", "screened", "complaint" (value = category), "message"
    (value = recording path), "transfer" (value = URI), "outcome" (value =
    how the IVR part ended).
    """

    kind: str
    value: str = ""


FlowAction = (
    Play
    | StopPlayback
    | StartTimer
    | CancelTimer
    | Record
    | SendText
    | Transfer
    | Hangup
    | QueueRequest
    | CallbackRequest
    | Note
)


@dataclass
class FlowState:
    """Where a call is in its flow. Opaque to the executor; owned by the interpreter."""

    flow: str
    node: str = ""
    info: CallInfo | None = None
    play_id: int = 0
    attempts: int = 0  # menu/collect retries used at this node
    digits: str = ""  # keys collected so far at this node
    vars: dict[str, str] = field(default_factory=dict)  # collected values by name
    pending: list[str] = field(default_factory=list)  # notices still to play before the flow starts
    finished: bool = False
    # added by the interpreter: the compiled flow, so that step() needs only the state
    program: Flow | None = field(default=None, repr=False, compare=False)
    waiting: str = ""  # what the current node waits for: "playback" | "input" | "recording" | ""
    outcome: str = ""  # the last outcome noted (the call record's IVR outcome)

    def copied(self) -> FlowState:
        """A copy whose ``vars`` and ``pending`` are its own (written out: ``dataclasses.replace`` is slower)."""
        return FlowState(
            self.flow,
            self.node,
            self.info,
            self.play_id,
            self.attempts,
            self.digits,
            dict(self.vars),
            list(self.pending),
            self.finished,
            self.program,
            self.waiting,
            self.outcome,
        )


copyable(
    CallInfo,
    Started,
    PlaybackDone,
    Digit,
    TimerExpired,
    RecordingDone,
    HungUp,
    QueueLeft,
    CallbackDone,
    Play,
    StopPlayback,
    StartTimer,
    CancelTimer,
    Record,
    SendText,
    Transfer,
    Hangup,
    QueueRequest,
    CallbackRequest,
    Note,
)
