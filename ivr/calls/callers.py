"""What the live queues and the callback dialer need of a caller, as small Protocols.

The IVR call (``ivr/calls/ivrcall.py``) hands itself to the live queues
(``ivr/calls/queues.py``) when its flow reaches a queue node, and to the
callback dialer (``ivr/calls/dialer.py``) when it books a callback; both call
it back. Typing those callers against these Protocols rather than against
``IvrCall`` keeps the imports one way (``ivrcall -> queues, dialer -> callers``)
and lets the parity test (``tests/test_sim_parity.py``) queue plain fakes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from ivr.flow.actions import FlowEvent
from ivr.media.stream import MediaStream
from ivr.sip.ua import InboundCall


class QueueCaller(Protocol):
    """A caller in a live queue, from the queue node to the end of the talk with an agent."""

    call: InboundCall
    stream: MediaStream
    agent_hung_up: bool  # set when the agent ended the talk (the call record says so)

    def announce(self, prompt_ids: tuple[str, ...], now: float) -> None:
        """Play a queue announcement (position, wait, busy notice) before the hold music goes on."""

    def connected(self, now: float) -> None:
        """An agent answered: the caller's flow leaves the queue node; the queues bridge the audio."""

    def leave_queue(self, target: str, now: float) -> None:
        """The queue gave the caller up: the flow goes on at ``target`` (an overflow target)."""


class BookingCaller(Protocol):
    """A caller asking the callback dialer for a booking; told the result as a flow event."""

    call: InboundCall
    queue_entered_at: datetime | None  # the caller's place in line, kept by the booking (R10)
    recording: str | None  # a message the caller left, kept with the booking

    def feed(self, event: FlowEvent, now: float) -> None:
        """Hand the booking's result (``CallbackDone``) to the caller's flow."""

    def unverified(self, number: str) -> bool:
        """Whether ``number`` is the caller's own, claimed by an untrusted peer (ivr/calls/trust.py)."""
