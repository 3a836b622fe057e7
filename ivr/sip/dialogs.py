"""What the user agent holds about each call: the two dialog records and their states, plain data.

:class:`InboundCall` is a call someone placed to us (we are the UAS);
:class:`OutCall` is one we place, e.g. ringing an agent's phone (we are the
UAC). Their transitions live in ``inbound.py`` and ``outbound.py``; the
records sit apart so that the events (``events.py``) and the timer heap
(``txtable.py``) can name them without importing the state machines.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ivr.sip.message import Request
from ivr.sip.sdp import Negotiated
from ivr.sip.transaction import ClientInviteTransaction, Peer, ServerInviteTransaction


class InboundState(enum.Enum):
    RINGING = "ringing"
    ANSWERED = "answered"
    CONFIRMED = "confirmed"
    ENDED = "ended"


class Outcome(enum.StrEnum):
    """How a call ended, as stored in the call record."""

    COMPLETED = "completed"  # answered, then BYE from either side
    CANCELLED = "cancelled"  # caller gave up before the answer
    REJECTED = "rejected"  # we refused it (4xx/5xx/6xx)
    NO_ACK = "no_ack"  # answered, the caller never acknowledged
    FAILED = "failed"  # transport or transaction timeout
    MEDIA_TIMEOUT = "media_timeout"  # the caller's RTP stopped; we hung up
    TRANSFERRED = "transferred"  # handed on with REFER


@dataclass(slots=True, eq=False)
class InboundCall:
    """One inbound call (the dialog we hold as UAS)."""

    call_id: str
    peer: Peer
    caller: str  # From user part (or whole URI when there is none)
    called: str  # Request-URI user part
    remote_tag: str
    local_tag: str
    t_invite: float
    invite_tx: ServerInviteTransaction
    invite: Request
    remote_target: str
    route_set: list[str]
    remote_cseq: int
    local_cseq: int = 0
    state: InboundState = InboundState.RINGING
    t_answer: float | None = None
    t_end: float | None = None
    outcome: Outcome | None = None
    hangup_by: str | None = None  # "caller" | "frontdesk"
    end_status: int | None = None  # final status for rejected calls
    negotiated: Negotiated | None = None
    remote_offer_pending: bool = False  # we sent the offer in 200, answer due in ACK
    local_sdp: bytes = b""
    sdp_version: int = 1
    rtp_port: int = 0
    pending_bye: bool = False
    timers: dict[str, float] = field(default_factory=dict)

    # written out: mypyc compiles it, the one @dataclass generates stays interpreted (one call each per INVITE)
    def __init__(
        self,
        call_id: str,
        peer: Peer,
        caller: str,
        called: str,
        remote_tag: str,
        local_tag: str,
        t_invite: float,
        invite_tx: ServerInviteTransaction,
        invite: Request,
        remote_target: str,
        route_set: list[str],
        remote_cseq: int,
        local_cseq: int = 0,
        state: InboundState = InboundState.RINGING,
        t_answer: float | None = None,
        t_end: float | None = None,
        outcome: Outcome | None = None,
        hangup_by: str | None = None,
        end_status: int | None = None,
        negotiated: Negotiated | None = None,
        remote_offer_pending: bool = False,
        local_sdp: bytes = b"",
        sdp_version: int = 1,
        rtp_port: int = 0,
        pending_bye: bool = False,
        timers: dict[str, float] | None = None,
    ) -> None:
        self.call_id = call_id
        self.peer = peer
        self.caller = caller
        self.called = called
        self.remote_tag = remote_tag
        self.local_tag = local_tag
        self.t_invite = t_invite
        self.invite_tx = invite_tx
        self.invite = invite
        self.remote_target = remote_target
        self.route_set = route_set
        self.remote_cseq = remote_cseq
        self.local_cseq = local_cseq
        self.state = state
        self.t_answer = t_answer
        self.t_end = t_end
        self.outcome = outcome
        self.hangup_by = hangup_by
        self.end_status = end_status
        self.negotiated = negotiated
        self.remote_offer_pending = remote_offer_pending
        self.local_sdp = local_sdp
        self.sdp_version = sdp_version
        self.rtp_port = rtp_port
        self.pending_bye = pending_bye
        self.timers = {} if timers is None else timers

    @property
    def ended(self) -> bool:
        return self.state is InboundState.ENDED


class OutState(enum.Enum):
    CALLING = "calling"  # INVITE sent, nothing or only 100 Trying back
    RINGING = "ringing"  # a 1xx above 100 arrived
    ANSWERED = "answered"  # 2xx received and acknowledged
    ENDED = "ended"


@dataclass(slots=True, eq=False)
class OutCall:
    """One call we place (the dialog we hold as UAC), e.g. ringing an agent's phone."""

    call_id: str
    peer: Peer  # where requests go: (transport, host, port)
    target: str  # request URI (the agent's contact)
    local_tag: str
    remote_tag: str = ""  # from the To of the first response with a tag / the 2xx
    local_cseq: int = 1
    state: OutState = OutState.CALLING
    t_start: float = 0.0
    t_answer: float | None = None
    t_end: float | None = None
    negotiated: Negotiated | None = None  # from the SDP answer in the 2xx
    end_status: int | None = None  # final status when it failed (486, 487, 408 for timeout, 480...)
    ended_by: str | None = None  # "remote" | "local"
    rtp_port: int = 0
    owner: object | None = None  # for the router (the "| None": mypyc cannot name a bare object in a dataclass)
    # the dialog
    from_value: str = ""  # our From header, with our tag
    to_value: str = ""  # the To header of the INVITE (no tag)
    remote_target: str = ""  # Contact of the 2xx (the target until then)
    route_set: list[str] = field(default_factory=list)  # Record-Route of the 2xx, reversed
    remote_cseq: int = 0  # last CSeq of a request from the peer in this dialog
    # the INVITE and its client transaction
    invite_cseq: int = 1
    branch: str = ""
    via: str = ""  # the INVITE's Via value (CANCEL and a non-2xx ACK reuse it)
    invite_tx: ClientInviteTransaction | None = None
    provisional: bool = False  # any 1xx arrived: CANCEL may be sent (RFC 3261 9.1)
    want_cancel: bool = False  # drop() asked for a CANCEL
    cancel_sent: bool = False
    ack: bytes | None = None  # our ACK for the 2xx, resent for each copy of the 2xx
    local_sdp: bytes = b""
    sdp_version: int = 1
    reinvite_tx: ServerInviteTransaction | None = None  # the peer's last re-INVITE
    remote_offer_pending: bool = False  # we offered in a 200 to a re-INVITE, answer due in ACK
    timers: dict[str, float] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        return self.state is OutState.ENDED
