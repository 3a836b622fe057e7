"""Calls we place, one shared way: open the leg's RTP stream, place the call, follow the answer's SDP.

Two parts of live call handling place calls: the live queues ring an
agent's phone for a waiting caller (``ivr/calls/queues.py``), and the
callback dialer rings the agent and then the customer
(``ivr/calls/dialer.py``). Each leg is an :class:`OutboundLeg` (a ``Ring``
or a callback ``Leg``) owning its stream and its dialog, so the SIP events of
the dialog (``OutAnswered``, ``OutFailed``, ...) find it through
``OutCall.owner``. Once answered, the two sides' streams are bridged: we relay
the audio ourselves (see ``ivr/calls/queues.py`` for why).
"""

from __future__ import annotations

from dataclasses import dataclass

from ivr.media.g711 import get_codec
from ivr.media.stream import MediaStream
from ivr.sip.ua import InboundCall, OutCall, Peer, UserAgent
from ivr.transport.rtp import MediaShell

# Until the answer's SDP says where the phone wants its media, the leg's RTP goes to the far host's discard port.
DISCARD_PORT = 9
OFFER = ("PCMU", 0, 101)  # codec, payload type, telephone-event payload type of our offer


@dataclass(eq=False)
class OutboundLeg:
    """One call we placed and its RTP stream; built right after :func:`dial`, it owns both."""

    stream: MediaStream
    out: OutCall

    def __post_init__(self) -> None:
        # the SIP core's events and the RTP shell's name the dialog and the stream: both lead back here
        self.stream.owner = self
        self.out.owner = self

    def use_answer(self) -> None:
        """The far end answered: send where and how its SDP answer says."""
        use_answer(self.stream, self.out)


def dial(
    ua: UserAgent,
    media: MediaShell,
    target: str,
    peer: Peer,
    now: float,
    *,
    from_user: str = "frontdesk",
    from_display: str | None = None,
) -> tuple[MediaStream, OutCall]:
    """Open a stream and send the INVITE offering it to ``target`` via ``peer``; OSError when no RTP port is free."""
    # the phone's SIP host is its signalling source: strict latching (ivr/media/latch.py) learns only from it
    # or the host its SDP answer names, and sends to another host only once the phone's RTP came from there
    stream = media.open((peer[1], DISCARD_PORT), *OFFER, signalling_host=peer[1])
    out = ua.place_call(target, peer, stream.local_port, now, from_user=from_user, from_display=from_display)
    return stream, out


def use_answer(stream: MediaStream, dialog: InboundCall | OutCall) -> None:
    """Follow the negotiated SDP of ``dialog`` (an agent's answer, or a caller's offer answered in the ACK)."""
    neg = dialog.negotiated
    if neg is not None:
        stream.use_answer(
            (neg.remote_address, neg.remote_port), get_codec(neg.codec), neg.payload_type, neg.dtmf_payload_type
        )


__all__ = ["DISCARD_PORT", "OutboundLeg", "dial", "use_answer"]
