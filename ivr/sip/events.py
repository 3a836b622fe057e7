"""What the user agent tells the transaction user (the call router): one small frozen dataclass per happening.

Drained with ``UserAgent.events()``. Inbound calls (we are the UAS) give
IncomingCall, CallConfirmed, CallTerminated, CallTimer, InfoReceived and
ReferAnswered; calls we place give OutRinging, then OutAnswered or
OutFailed, and an answered one ends with OutEnded.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import FunctionType
from typing import Final

from ivr.sip.dialogs import InboundCall, OutCall

# The three events every call makes write their constructor out: mypyc compiles it, while the one @dataclass
# generates stays interpreted. Compiled, it stores the field directly (the frozen guard is a __setattr__ for Python
# callers, which compiled code does not go through); pure, it sets it as the generated constructor does.
_set = object.__setattr__


def _probe() -> None:
    pass


COMPILED: Final = not isinstance(_probe, FunctionType)  # whether this module runs compiled (mypyc)


@dataclass(frozen=True, slots=True)
class IncomingCall:
    call: InboundCall

    def __init__(self, call: InboundCall) -> None:
        if COMPILED:
            self.call = call  # type: ignore[misc]
        else:
            _set(self, "call", call)


@dataclass(frozen=True, slots=True)
class CallConfirmed:
    call: InboundCall

    def __init__(self, call: InboundCall) -> None:
        if COMPILED:
            self.call = call  # type: ignore[misc]
        else:
            _set(self, "call", call)


@dataclass(frozen=True, slots=True)
class CallTerminated:
    call: InboundCall

    def __init__(self, call: InboundCall) -> None:
        if COMPILED:
            self.call = call  # type: ignore[misc]
        else:
            _set(self, "call", call)


@dataclass(frozen=True, slots=True)
class CallTimer:
    call: InboundCall
    name: str


@dataclass(frozen=True, slots=True)
class InfoReceived:
    """An in-dialog INFO (keys as application/dtmf-relay)."""

    call: InboundCall
    content_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class ReferAnswered:
    """The final response to our REFER (2xx: the caller's phone takes the transfer)."""

    call: InboundCall
    status: int


@dataclass(frozen=True, slots=True)
class OutRinging:
    """The first 1xx above 100 (180 Ringing, 183 Session Progress) to a call we placed."""

    call: OutCall


@dataclass(frozen=True, slots=True)
class OutAnswered:
    """A 2xx to a call we placed; the ACK is already sent and ``call.negotiated`` set."""

    call: OutCall


@dataclass(frozen=True, slots=True)
class OutFailed:
    """A call we placed ended unanswered: the final status (408 Timer B, 503 transport, 487 after CANCEL)."""

    call: OutCall
    status: int


@dataclass(frozen=True, slots=True)
class OutEnded:
    """An answered call we placed ended by BYE (``call.ended_by`` says whose)."""

    call: OutCall


Event = (
    IncomingCall
    | CallConfirmed
    | CallTerminated
    | CallTimer
    | InfoReceived
    | ReferAnswered
    | OutRinging
    | OutAnswered
    | OutFailed
    | OutEnded
)
