"""The SIP user agent core: transactions, dialogs and calls, sans-IO.

Theory of operation
-------------------
Bytes in, bytes and events out, time passed in (STYLE.md, aioquic style)::

    ua.receive(data, peer, now)          # a datagram or a framed TCP message
    ua.datagrams_to_send() -> [(bytes, peer)]
    ua.events() -> [IncomingCall | CallConfirmed | CallTerminated | CallTimer | OutRinging | ...]
    ua.get_timer() -> float | None       # when to call handle_timer next
    ua.handle_timer(now)

The transaction user (the call router) reacts to events by calling
``ring``, ``answer``, ``reject``, ``hangup``, ``set_call_timer``, ``place_call``
and ``drop``; those only queue datagrams and events too. A ``peer`` is
``(transport, host, port)``; the asyncio shell maps it back to a socket or a
TCP connection.

A call's life::

    RINGING --answer--> ANSWERED --ACK--> CONFIRMED --BYE either way--> ENDED
    RINGING --CANCEL / reject / early BYE--> ENDED
    ANSWERED --no ACK by 64*T1--> ENDED (we send BYE)

A call we place (``place_call``, e.g. ringing an agent's phone; we are the UAC)::

    CALLING --1xx > 100--> RINGING (OutRinging) --2xx, we ACK--> ANSWERED (OutAnswered)
    CALLING/RINGING --3xx-6xx, Timer B (408)--> ENDED (OutFailed)
    CALLING/RINGING --drop: CANCEL (after a 1xx), 487--> ENDED (OutFailed 487)
    ANSWERED --BYE either way--> ENDED (OutEnded)

The ACK for a 2xx is ours to send and resend for each copy of the 2xx (the
client INVITE transaction ends at the first one, RFC 3261 13.2.2.4).

Every response we send goes through the server transaction that owns the
request, so request copies are answered with the same bytes and final
responses on UDP are retransmitted until acknowledged (RFC 3261 17.2).
REGISTER is answered by the registrar (``registrar.py``); its bindings
expire on this user agent's timer.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import random
import secrets
from bisect import bisect_left
from dataclasses import dataclass, field

from ivr.sip.message import (
    Request,
    Response,
    SipParseError,
    build_response,
    is_digits,
    parse_headers_only,
    parse_message,
    split_list,
    uri_user,
)
from ivr.sip.registrar import Registrar, RegistrarSettings
from ivr.sip.sdp import Negotiated, SdpError, build_sdp, negotiate, parse_sdp
from ivr.sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    Peer,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    Timeout,
    TimerValues,
    Transaction,
    TxKey,
    TxState,
)

ServerTransaction = ServerInviteTransaction | ServerNonInviteTransaction
ClientTransaction = ClientInviteTransaction | ClientNonInviteTransaction


ALLOWED_METHODS = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "NOTIFY", "REGISTER")
ALLOW_HEADER = ", ".join(ALLOWED_METHODS)
# Methods we know of but do not serve: answered 405 with Allow. Anything
# else is answered 501 (RFC 3261 8.2.1).
KNOWN_NOT_ALLOWED = frozenset({"SUBSCRIBE", "PUBLISH", "MESSAGE", "REFER", "UPDATE", "PRACK"})
SUPPORTED_OPTIONS: frozenset[str] = frozenset()  # option tags for Require
METRIC_METHODS = frozenset(ALLOWED_METHODS) | KNOWN_NOT_ALLOWED
MAGIC_COOKIE = "z9hG4bK"

# Answer latency buckets: SIP answers run to milliseconds, the ring limit to seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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


@dataclass(frozen=True, slots=True)
class UaConfig:
    host: str = "127.0.0.1"  # address written in Via, Contact and SDP
    port: int = 5060
    user_agent: str = "frontdesk"
    timers: TimerValues = field(default_factory=TimerValues)
    max_calls: int = 20000  # beyond this, new INVITEs get 503
    rtp_port_min: int = 20000
    rtp_port_max: int = 30000


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

    @property
    def ended(self) -> bool:
        return self.state is InboundState.ENDED


@dataclass(frozen=True, slots=True)
class IncomingCall:
    call: InboundCall


@dataclass(frozen=True, slots=True)
class CallConfirmed:
    call: InboundCall


@dataclass(frozen=True, slots=True)
class CallTerminated:
    call: InboundCall


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
    owner: object = None  # for the router
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


class LatencyHistogram:
    """Cumulative-ready bucket counts, read by the metrics collector."""

    __slots__ = ("buckets", "count", "counts", "total")

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1


class SipStats:
    """Plain counters kept by the core; exported by ivr.web.metrics at scrape time."""

    def __init__(self) -> None:
        self.requests_received: dict[str, int] = {}
        self.responses_sent: dict[tuple[str, int], int] = {}
        self.requests_sent: dict[str, int] = {}
        self.responses_received: dict[tuple[str, int], int] = {}
        self.retransmissions_sent = 0
        self.retransmissions_received = 0
        self.malformed: dict[str, int] = {"dropped": 0, "answered": 0}
        self.stray_responses = 0
        self.calls_ended: dict[str, int] = {}
        self.answer_latency = LatencyHistogram()
        self.calls_rejected_overload = 0
        # calls we placed, by result: answered, busy, cancelled, timeout, rejected, failed
        self.out_calls: dict[str, int] = {}

    def count_request(self, method: str) -> None:
        m = method if method in METRIC_METHODS else "other"
        self.requests_received[m] = self.requests_received.get(m, 0) + 1

    def count_response(self, method: str, status: int) -> None:
        key = (method if method in METRIC_METHODS else "other", status)
        self.responses_sent[key] = self.responses_sent.get(key, 0) + 1


class UserAgent:
    def __init__(
        self, config: UaConfig = UaConfig(), *, rng: random.Random | None = None, registrar: Registrar | None = None
    ) -> None:
        self.config = config
        self.tv = config.timers
        self.stats = SipStats()
        self._rng = rng or random.Random()
        # REGISTER is served by the registrar; without one given, nobody can log in (401, then 403)
        self.registrar = registrar or Registrar(RegistrarSettings(), {}, secrets.token_bytes(32))
        self._out: list[tuple[bytes, Peer]] = []
        self._events: list[Event] = []
        self._server_tx: dict[TxKey, ServerTransaction] = {}
        self._client_tx: dict[TxKey, ClientTransaction] = {}
        self.calls: dict[str, InboundCall] = {}
        self._refers: dict[tuple[str, str], InboundCall] = {}  # our REFERs awaiting their final response
        self.out_calls: dict[str, OutCall] = {}  # calls we placed, by Call-ID, until they end
        self._out_linger: dict[str, OutCall] = {}  # ended ones whose 2xx may still come again (64*T1)
        self._tx_owner: dict[TxKey, OutCall] = {}  # client INVITE transactions of our calls
        self._heap: list[tuple[float, int, object, str]] = []
        self._seq = 0
        self._next_rtp = config.rtp_port_min
        self._contact = f"<sip:frontdesk@{config.host}:{config.port}>"
        self._contact_tcp = f"<sip:frontdesk@{config.host}:{config.port};transport=tcp>"

    def set_local_port(self, port: int) -> None:
        """The port actually bound (when the config asked for an ephemeral one)."""
        self.config = dataclasses.replace(self.config, port=port)
        self._contact = f"<sip:frontdesk@{self.config.host}:{port}>"
        self._contact_tcp = f"<sip:frontdesk@{self.config.host}:{port};transport=tcp>"

    # -- interface for the shell -------------------------------------------
    def datagrams_to_send(self) -> list[tuple[bytes, Peer]]:
        out, self._out = self._out, []
        return out

    def events(self) -> list[Event]:
        ev, self._events = self._events, []
        return ev

    def get_timer(self) -> float | None:
        heap = self._heap
        at: float | None = None
        while heap:
            first, _, obj, name = heap[0]
            if self._entry_live(first, obj, name):
                at = first
                break
            heapq.heappop(heap)
        expiry = self.registrar.next_expiry()  # registrations run out on the same clock
        if expiry is not None and (at is None or expiry < at):
            return expiry
        return at

    def handle_timer(self, now: float) -> None:
        self.registrar.expire(now)
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, _, obj, name = heapq.heappop(heap)
            if not self._entry_live(at, obj, name):
                continue
            if isinstance(obj, InboundCall):
                del obj.timers[name]
                self._events.append(CallTimer(obj, name))
            elif isinstance(obj, OutCall):
                del obj.timers[name]
                self._on_out_timer(obj, name, now)
            else:
                assert isinstance(obj, Transaction)
                self._fire_tx(obj, now)

    @property
    def transactions_active(self) -> int:
        return len(self._server_tx) + len(self._client_tx)

    # -- timer heap -----------------------------------------------------------
    @staticmethod
    def _entry_live(at: float, obj: object, name: str) -> bool:
        if name:
            if isinstance(obj, OutCall):
                return obj.timers.get(name) == at  # "linger" runs on after the call ended
            assert isinstance(obj, InboundCall)
            return obj.timers.get(name) == at and not obj.ended
        assert isinstance(obj, Transaction)
        return obj.scheduled == at and not obj.terminated

    def _push(self, at: float, obj: object, name: str) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, obj, name))

    def _schedule(self, tx: Transaction) -> None:
        if tx.terminated:
            self._forget_tx(tx)
            return
        d = tx.deadline
        if d != tx.scheduled:
            tx.scheduled = d
            if d != float("inf"):
                self._push(d, tx, "")

    def _forget_tx(self, tx: Transaction) -> None:
        key = tx.key
        if isinstance(tx, (ServerInviteTransaction, ServerNonInviteTransaction)):
            if self._server_tx.get(key) is tx:
                del self._server_tx[key]
        elif self._client_tx.get(key) is tx:
            del self._client_tx[key]
            self._tx_owner.pop(key, None)

    def _fire_tx(self, tx: Transaction, now: float) -> None:
        send, timeout = tx.fire(now)
        if send is not None:
            self._out.append((send, tx.peer))
            self.stats.retransmissions_sent += 1
        if timeout is not None:
            self._on_tx_timeout(tx, timeout, now)
        self._schedule(tx)

    def _on_tx_timeout(self, tx: Transaction, timeout: Timeout, now: float) -> None:
        if isinstance(tx, ServerInviteTransaction):
            call = self._call_for_tx(tx)
            if call is not None and not call.ended:
                if call.state in (InboundState.ANSWERED, InboundState.CONFIRMED) and timeout is Timeout.NO_ACK:
                    # 2xx (to the INVITE or a re-INVITE) never acknowledged:
                    # end the dialog with BYE (RFC 3261 13.3.1.4, 14.2)
                    self._send_bye(call, now)
                    self._end(call, now, Outcome.NO_ACK, "frontdesk")
                else:
                    self._end(call, now, call.outcome or Outcome.FAILED, call.hangup_by)
            elif isinstance(tx.owner, OutCall) and timeout is Timeout.NO_ACK:
                # our 2xx to the peer's re-INVITE was never acknowledged (RFC 3261 14.2)
                dialog = tx.owner
                if dialog.state is OutState.ANSWERED and dialog.reinvite_tx is tx:
                    self._send_out_bye(dialog, now)
                    self._out_finish(dialog, now, "local")
        elif isinstance(tx, ClientInviteTransaction) and timeout is Timeout.NO_RESPONSE:
            out = self._tx_owner.get(tx.key)
            if out is not None and out.invite_tx is tx and not out.ended:
                self._out_fail(out, 408, now, "local", "timeout")  # Timer B

    @staticmethod
    def _call_for_tx(tx: ServerInviteTransaction) -> InboundCall | None:
        owner = tx.owner
        return owner if isinstance(owner, InboundCall) else None

    # -- inbound ---------------------------------------------------------------
    def receive(self, data: bytes, peer: Peer, now: float) -> None:
        try:
            msg = parse_message(data)
        except SipParseError as exc:
            self._on_malformed(data, exc, peer, now)
            return
        if isinstance(msg, Request):
            try:
                self._on_request(msg, peer, now)
            except SipParseError as exc:  # a header parsed lazily was bad
                self._on_malformed(data, exc, peer, now)
        else:
            self._on_response(msg, peer, now)

    def _on_malformed(self, data: bytes, exc: SipParseError, peer: Peer, now: float) -> None:
        req = exc.partial if exc.partial is not None else None
        if exc.status is not None and req is None:
            req = parse_headers_only(data)
        if (
            exc.status is not None
            and req is not None
            and req.method != "ACK"
            and req.get("via") is not None
            and req.get("call-id") is not None
            and req.get("cseq") is not None
            and req.get("from") is not None
            and req.get("to") is not None
        ):
            reason = exc.reason.replace("\r", " ").replace("\n", " ")[:120]
            status = exc.status
            phrase = "Version Not Supported" if status == 505 else f"Bad Request ({reason})"
            extra = (("Server", self.config.user_agent),)
            resp = build_response(req, status, phrase, to_tag=self._token(), extra=extra)
            self._out.append((resp.to_bytes(), peer))
            self.stats.malformed["answered"] += 1
            self.stats.count_response(req.method, status)
        else:
            self.stats.malformed["dropped"] += 1

    def _tx_key(self, req: Request, method: str) -> tuple[str, str, str]:
        via = req.top_via
        branch = via.branch
        if branch.startswith(MAGIC_COOKIE):
            return (branch, via.sent_by, method)
        # RFC 2543 peer: key on the dialog-ish identifiers (17.2.3 fallback)
        return (f"{req.call_id}|{req.from_.tag}|{req.cseq[0]}|{branch}", via.sent_by, method)

    def _on_request(self, req: Request, peer: Peer, now: float) -> None:
        method = req.method
        self.stats.count_request(method)
        if method == "ACK":
            self._on_ack(req, peer, now)
            return
        key = self._tx_key(req, "INVITE" if method == "INVITE" else method)
        tx = self._server_tx.get(key)
        if tx is not None:
            # a copy of a request we already have: resend the last answer
            self.stats.retransmissions_received += 1
            resend = tx.receive_request(now)
            if resend is not None:
                self._out.append((resend, peer))
                self.stats.retransmissions_sent += 1
            return
        reliable = peer[0] != "udp"
        if method == "INVITE":
            itx = ServerInviteTransaction(key, peer, reliable, self.tv)
            self._server_tx[key] = itx
            self._on_invite(req, itx, peer, now)
            return
        ntx = ServerNonInviteTransaction(key, peer, reliable, self.tv)
        self._server_tx[key] = ntx
        if method == "CANCEL":
            self._on_cancel(req, ntx, key, now)
        elif method == "BYE":
            self._on_bye(req, ntx, now)
        elif method == "OPTIONS":
            self._respond(ntx, req, 200, now, extra=self._capabilities())
        elif method == "REGISTER":
            reply = self.registrar.register(req, peer, now)
            self._respond(ntx, req, reply.status, now, extra=reply.headers, reason=reply.reason)
        elif method in ("INFO", "NOTIFY"):
            # INFO carries keys; NOTIFY reports the progress of our REFER (RFC 3515)
            call = self._dialog_for(req)
            found = call is not None or self._out_dialog_for(req) is not None
            self._respond(ntx, req, 200 if found else 481, now)
            if call is not None and method == "INFO" and req.body:
                self._events.append(InfoReceived(call, req.get("content-type") or "", req.body))
        elif method in KNOWN_NOT_ALLOWED:
            self._respond(ntx, req, 405, now, extra=(("Allow", ALLOW_HEADER),))
        else:
            self._respond(ntx, req, 501, now, extra=(("Allow", ALLOW_HEADER),))

    def _capabilities(self) -> tuple[tuple[str, str], ...]:
        return (("Allow", ALLOW_HEADER), ("Accept", "application/sdp"), ("Accept-Language", "en"))

    def _respond(
        self,
        tx: ServerTransaction,
        req: Request,
        status: int,
        now: float,
        *,
        to_tag: str | None = None,
        extra: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
        reason: str | None = None,
    ) -> None:
        peer = tx.peer
        if to_tag is None and status > 100 and not req.to.tag:
            to_tag = self._token()  # RFC 3261 8.2.6.2: every response but 100 carries a To tag
        headers = (*extra, ("Server", self.config.user_agent))
        if body:
            headers = (*headers, ("Content-Type", "application/sdp"))
        rport = received = None
        if peer[0] == "udp":
            received, rport = peer[1], peer[2]
        resp = build_response(
            req, status, reason, to_tag=to_tag, extra=headers, body=body, received=received, rport=rport
        )
        data = resp.to_bytes()
        send = tx.send_response(data, status, now)
        if send is not None:
            self._out.append((send, peer))
            self.stats.count_response(req.method, status)
        self._schedule(tx)

    def _dialog_for(self, req: Request) -> InboundCall | None:
        call = self.calls.get(req.call_id)
        if call is None or call.ended:
            return None
        if req.to.tag != call.local_tag or req.from_.tag != call.remote_tag:
            return None
        return call

    # INVITE ----------------------------------------------------------------------
    def _on_invite(self, req: Request, tx: ServerInviteTransaction, peer: Peer, now: float) -> None:
        if req.to.tag:
            self._on_reinvite(req, tx, now)
            return
        frm = req.from_
        contact = req.get_all("contact")
        call = InboundCall(
            call_id=req.call_id,
            peer=peer,
            caller=uri_user(frm.uri) or frm.uri,
            called=uri_user(req.uri),
            remote_tag=frm.tag,
            local_tag=self._token(),
            t_invite=now,
            invite_tx=tx,
            invite=req,
            remote_target=_contact_uri(contact[0]) if contact else frm.uri,
            route_set=[v for rr in req.get_all("record-route") for v in split_list(rr)],
            remote_cseq=req.cseq[0],
        )
        tx.owner = call
        refusal = self._refuse_new_call(req, call)
        if refusal is not None:
            # refused calls are recorded too (R4): they end at once as rejected
            status, reason, extra = refusal
            self._final(call, status, now, reason, extra)
            self._end(call, now, Outcome.REJECTED, "frontdesk")
            return
        call.remote_offer_pending = call.negotiated is None
        self.calls[call.call_id] = call
        self._respond(tx, req, 100, now)
        self._events.append(IncomingCall(call))

    def _refuse_new_call(
        self, req: Request, call: InboundCall
    ) -> tuple[int, str | None, tuple[tuple[str, str], ...]] | None:
        """Why a new INVITE cannot become a call, as (status, reason, extra headers); None when it can."""
        mf = req.get("max-forwards")
        if mf is not None:
            mf = mf.strip()
            if not is_digits(mf):
                return 400, "Bad Request (malformed Max-Forwards)", ()
            if int(mf) == 0:
                return 483, None, ()
        if req.uri.split(":", 1)[0].lower() not in ("sip", "sips", "tel"):
            return 416, None, ()
        unsupported = [opt for opt in req.get_all("require") if opt.lower() not in SUPPORTED_OPTIONS]
        if unsupported:
            return 420, None, (("Unsupported", ", ".join(unsupported)),)
        if not call.call_id:
            return 400, "Bad Request (empty Call-ID)", ()
        existing = self.calls.get(call.call_id)
        if existing is not None and not existing.ended:
            # same Call-ID and no To tag but another branch: merged request (8.2.2.2)
            return 482, None, ()
        if req.body:
            ctype = (req.get("content-type") or "").split(";")[0].strip().lower()
            if ctype != "application/sdp":
                return 415, None, (("Accept", "application/sdp"),)
            try:
                call.negotiated = negotiate(parse_sdp(req.body))
            except SdpError as exc:
                return exc.status, _reason(exc.status, exc.reason), ()
        if len(self.calls) >= self.config.max_calls:
            self.stats.calls_rejected_overload += 1
            return 503, None, (("Retry-After", "5"),)
        return None

    def _on_reinvite(self, req: Request, tx: ServerInviteTransaction, now: float) -> None:
        call = self._dialog_for(req)
        if call is None:
            out = self._out_dialog_for(req)
            if out is not None:
                self._on_out_reinvite(out, req, tx, now)
            else:
                self._respond(tx, req, 481, now)
            return
        cseq = req.cseq[0]
        if call.invite_tx.state is TxState.PROCEEDING or cseq <= call.remote_cseq:
            self._respond(tx, req, 500, now, extra=(("Retry-After", "1"),))
            return
        # a re-INVITE proves the caller has our earlier 2xx, even if its ACK was lost
        self._acknowledged(call, now)
        call.remote_cseq = cseq
        negotiated = call.negotiated
        if req.body:
            try:
                negotiated = negotiate(parse_sdp(req.body))
            except SdpError as exc:
                self._respond(tx, req, exc.status, now, reason=_reason(exc.status, exc.reason))
                return
        if negotiated != call.negotiated:
            call.negotiated = negotiated
            call.sdp_version += 1
        call.local_sdp = self._local_sdp(call)
        call.remote_offer_pending = not req.body
        call.invite_tx = tx
        tx.owner = call
        self._respond(tx, req, 200, now, to_tag=call.local_tag, extra=self._dialog_headers(call), body=call.local_sdp)

    def _on_ack(self, req: Request, peer: Peer, now: float) -> None:
        key = self._tx_key(req, "INVITE")
        tx = self._server_tx.get(key)
        if isinstance(tx, ServerInviteTransaction) and tx.state in (TxState.COMPLETED, TxState.CONFIRMED):
            # ACK for a non-2xx final response belongs to the transaction
            if not tx.receive_ack(now):
                self.stats.retransmissions_received += 1
            self._schedule(tx)
            return
        call = self._dialog_for(req)
        if call is None:
            out = self._out_dialog_for(req)
            if out is not None:
                self._on_out_ack(out, req, now)
            return  # else a stray ACK: nothing to answer (17.2.3)
        itx = call.invite_tx
        if req.cseq[0] != call.remote_cseq:
            return  # ACK for an older INVITE of this dialog
        if not itx.receive_ack(now):
            self.stats.retransmissions_received += 1
            return
        self._schedule(itx)
        if call.remote_offer_pending and req.body:
            try:
                call.negotiated = negotiate(parse_sdp(req.body))
            except SdpError:
                # the answer we asked for is unusable: end the call (RFC 3261 13.3.1.4)
                self._send_bye(call, now)
                self._end(call, now, Outcome.FAILED, "frontdesk")
                return
            call.remote_offer_pending = False
        if call.state is InboundState.ANSWERED:
            call.state = InboundState.CONFIRMED
            if call.pending_bye:
                self._send_bye(call, now)
                self._end(call, now, Outcome.COMPLETED, "frontdesk")
                return
            self._events.append(CallConfirmed(call))

    def _acknowledged(self, call: InboundCall, now: float) -> None:
        """Stop resending the INVITE's 2xx: the caller's later request shows it arrived."""
        itx = call.invite_tx
        if itx.state is TxState.ACCEPTED and itx.receive_ack(now):
            self._schedule(itx)
            if call.state is InboundState.ANSWERED:
                call.state = InboundState.CONFIRMED
                self._events.append(CallConfirmed(call))

    # CANCEL / BYE -----------------------------------------------------------
    def _on_cancel(self, req: Request, tx: ServerNonInviteTransaction, key: tuple[str, str, str], now: float) -> None:
        itx = self._server_tx.get((key[0], key[1], "INVITE"))
        if not isinstance(itx, ServerInviteTransaction):
            self._respond(tx, req, 481, now)
            return
        call = self._call_for_tx(itx)
        self._respond(tx, req, 200, now, to_tag=call.local_tag if call else None)
        if itx.state is TxState.PROCEEDING and call is not None and call.invite_tx is itx:
            self._final(call, 487, now)
            self._end(call, now, Outcome.CANCELLED, "caller")

    def _on_bye(self, req: Request, tx: ServerNonInviteTransaction, now: float) -> None:
        call = self._dialog_for(req)
        if call is None:
            out = self._out_dialog_for(req)
            if out is not None:
                self._on_out_bye(out, req, tx, now)
            else:
                self._respond(tx, req, 481, now)
            return
        if req.cseq[0] < call.remote_cseq:
            # out of order within the dialog (RFC 3261 12.2.2)
            self._respond(tx, req, 500, now, reason="Server Internal Error (CSeq out of order)")
            return
        self._respond(tx, req, 200, now)
        # a BYE proves the caller has our 2xx even if its ACK was lost
        self._acknowledged(call, now)
        if call.state is InboundState.RINGING:
            self._final(call, 487, now)
            self._end(call, now, Outcome.CANCELLED, "caller")
        else:
            self._end(call, now, Outcome.COMPLETED, "caller")

    # -- responses to our requests -------------------------------------------
    def _on_response(self, resp: Response, peer: Peer, now: float) -> None:
        _num, method = resp.cseq
        key = (resp.top_via.branch, method)
        stats = self.stats
        m = method if method in METRIC_METHODS else "other"
        stats.responses_received[(m, resp.status)] = stats.responses_received.get((m, resp.status), 0) + 1
        tx = self._client_tx.get(key)
        if tx is None:
            if method == "INVITE" and 200 <= resp.status < 300 and self._resend_ack(resp):
                # a copy of the 2xx (its transaction ended with the first one): ACK it again (13.2.2.4)
                stats.retransmissions_received += 1
                return
            stats.stray_responses += 1
            return
        if isinstance(tx, ClientNonInviteTransaction):
            if not tx.receive_response(resp.status, now):
                stats.retransmissions_received += 1
            elif resp.status >= 200 and method == "REFER":
                call = self._refers.pop(key, None)
                if call is not None and not call.ended:
                    self._events.append(ReferAnswered(call, resp.status))
        elif isinstance(tx, ClientInviteTransaction):
            out = self._tx_owner.get(tx.key)
            ack = None
            if out is not None and resp.status >= 300 and tx.state in (TxState.CALLING, TxState.PROCEEDING):
                ack = self._non2xx_ack(out, resp)
            passed, send = tx.receive_response(resp.status, now, ack=ack)
            if send is not None:
                self._out.append((send, tx.peer))
                if passed:
                    stats.requests_sent["ACK"] = stats.requests_sent.get("ACK", 0) + 1
                else:
                    stats.retransmissions_sent += 1
            if not passed:
                stats.retransmissions_received += 1
            elif out is not None and out.invite_tx is tx and not out.ended:
                self._on_out_response(out, resp, now)
        self._schedule(tx)

    # -- commands from the transaction user -----------------------------------
    def ring(self, call: InboundCall, now: float) -> None:
        """Send 180 Ringing (the caller hears ringback)."""
        if call.state is InboundState.RINGING and not call.ended:
            self._respond(
                call.invite_tx, call.invite, 180, now, to_tag=call.local_tag, extra=self._dialog_headers(call)
            )

    def answer(self, call: InboundCall, now: float, rtp_port: int | None = None) -> None:
        """Send 200 OK with our SDP (audio on ``rtp_port``); ANSWERED until the ACK."""
        if call.state is not InboundState.RINGING or call.ended:
            return
        call.rtp_port = rtp_port if rtp_port is not None else self._allocate_rtp_port()
        call.local_sdp = self._local_sdp(call)
        call.state = InboundState.ANSWERED
        call.t_answer = now
        self.stats.answer_latency.observe(max(0.0, now - call.t_invite))
        self._respond(
            call.invite_tx,
            call.invite,
            200,
            now,
            to_tag=call.local_tag,
            extra=self._dialog_headers(call),
            body=call.local_sdp,
        )

    def reject(self, call: InboundCall, status: int, now: float, reason: str | None = None) -> None:
        """Refuse a ringing call with a final error response."""
        if call.state is not InboundState.RINGING or call.ended:
            return
        self._final(call, status, now, reason)
        self._end(call, now, Outcome.REJECTED, "frontdesk")

    def hangup(self, call: InboundCall, now: float, outcome: Outcome = Outcome.COMPLETED) -> None:
        """End the call from our side: BYE when answered, 480 while ringing."""
        if call.ended:
            return
        if call.state is InboundState.RINGING:
            self.reject(call, 480, now)
        elif call.state is InboundState.ANSWERED:
            call.pending_bye = True  # BYE only after the ACK (RFC 3261 15)
        else:
            self._send_bye(call, now)
            self._end(call, now, outcome, "frontdesk")

    def refer(self, call: InboundCall, target: str, now: float) -> None:
        """Blind transfer (RFC 3515): ask the caller's phone to call ``target``.

        The final response comes back as :class:`ReferAnswered`; the router
        hangs up once the transfer is accepted.
        """
        if call.state is not InboundState.CONFIRMED:
            return
        contact = self._contact_tcp if call.peer[0] == "tcp" else self._contact
        branch = self._send_in_dialog(
            call,
            "REFER",
            now,
            (f"Refer-To: <{target}>", f"Referred-By: {contact}", f"Contact: {contact}"),
        )
        self._refers[(branch, "REFER")] = call

    def update_connected(self, call: InboundCall, display: str, user: str, now: float) -> bool:
        """Tell the caller's phone who it is now talking to (connected line).

        An UPDATE (RFC 3311) without a body, carrying the new party in
        P-Asserted-Identity (RFC 3325), as PBXs do when a queue's agent
        answers; the phone shows it, and a load generator learns its caller
        was answered. Sent only to a confirmed call whose INVITE listed
        UPDATE in Allow; returns whether it was sent. The response needs no
        action: a phone that refuses it just shows nothing new.
        """
        if call.state is not InboundState.CONFIRMED or not _allows(call.invite, "UPDATE"):
            return False
        contact = self._contact_tcp if call.peer[0] == "tcp" else self._contact
        name = display.replace("\\", "").replace('"', "")
        identity = f'"{name}" <sip:{user}@{self.config.host}>'
        self._send_in_dialog(call, "UPDATE", now, (f"P-Asserted-Identity: {identity}", f"Contact: {contact}"))
        return True

    def set_call_timer(self, call: InboundCall, name: str, at: float) -> None:
        """Arm (or re-arm) a named timer; fires as a CallTimer event."""
        call.timers[name] = at
        self._push(at, call, name)

    def cancel_call_timer(self, call: InboundCall, name: str) -> None:
        call.timers.pop(name, None)

    # -- calls we place (UAC) ---------------------------------------------------
    def place_call(
        self,
        target: str,
        peer: Peer,
        rtp_port: int,
        now: float,
        *,
        from_user: str = "frontdesk",
        from_display: str | None = None,
        call_id: str | None = None,
        extra_headers: tuple[tuple[str, str], ...] = (),
    ) -> OutCall:
        """Send an INVITE with our SDP offer (audio on ``rtp_port``) to ``target`` via ``peer``.

        The outcome comes back as :class:`OutRinging`, then :class:`OutAnswered`
        or :class:`OutFailed`; an answered call ends with :class:`OutEnded`.
        """
        if ":" not in target or any(c in target for c in "\r\n <>"):
            raise ValueError(f"not a SIP URI: {target!r}")
        for name, value in extra_headers:
            if not name or any(c in name + value for c in "\r\n") or ":" in name:
                raise ValueError(f"bad extra header {name!r}")
        host = self.config.host
        call_id = call_id or f"{self._token()}@{host}"
        if call_id in self.out_calls or call_id in self._out_linger:
            raise ValueError(f"Call-ID {call_id!r} is in use")
        display = ""
        if from_display:
            escaped = from_display.replace("\\", "\\\\").replace('"', '\\"')
            display = f'"{escaped}" '.replace("\r", "").replace("\n", "")
        branch = MAGIC_COOKIE + self._token()
        call = OutCall(
            call_id=call_id,
            peer=peer,
            target=target,
            local_tag=self._token(),
            t_start=now,
            rtp_port=rtp_port or self._allocate_rtp_port(),
            remote_target=target,
            branch=branch,
            via=f"SIP/2.0/{peer[0].upper()} {host}:{self.config.port};branch={branch};rport",
        )
        call.from_value = f"{display}<sip:{from_user}@{host}>;tag={call.local_tag}"
        call.to_value = f"<{target}>"
        call.local_sdp = self._out_sdp(call, None)
        contact = self._contact_tcp if peer[0] == "tcp" else self._contact
        headers = (("Contact", contact), ("Allow", ALLOW_HEADER), *extra_headers, ("Content-Type", "application/sdp"))
        data = self._out_request(
            call, "INVITE", target, call.via, call.to_value, call.invite_cseq, headers, call.local_sdp
        )
        tx = ClientInviteTransaction((branch, "INVITE"), peer, peer[0] != "udp", self.tv, data)
        call.invite_tx = tx
        self._client_tx[tx.key] = tx
        self._tx_owner[tx.key] = call
        self.out_calls[call_id] = call
        self._out.append((tx.start(now), peer))
        self._count_sent("INVITE")
        self._schedule(tx)
        return call

    def drop(self, call: OutCall, now: float) -> None:
        """End a call we placed: CANCEL while it rings (OutFailed 487), BYE once answered (OutEnded)."""
        if call.state is OutState.ANSWERED:
            self._send_out_bye(call, now)
            self._out_finish(call, now, "local")
        elif call.state is not OutState.ENDED and not call.want_cancel:
            call.want_cancel = True
            if call.provisional:
                self._send_cancel(call, now)
            # else: CANCEL only once a provisional response came (RFC 3261 9.1)

    def transport_error(self, peer: Peer, now: float) -> None:
        """The shell could not reach ``peer``: calls we place there and not yet answered fail with 503 (8.1.3.1)."""
        for call in [c for c in self.out_calls.values() if c.peer == peer and c.state is not OutState.ANSWERED]:
            if call.invite_tx is not None:
                self._kill_tx(call.invite_tx)
            self._out_fail(call, 503, now, "local", "failed")

    # -- helpers ----------------------------------------------------------------
    def _final(
        self,
        call: InboundCall,
        status: int,
        now: float,
        reason: str | None = None,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self._respond(call.invite_tx, call.invite, status, now, to_tag=call.local_tag, reason=reason, extra=extra)

    def _end(self, call: InboundCall, now: float, outcome: Outcome, by: str | None) -> None:
        if call.ended:
            return
        call.state = InboundState.ENDED
        call.t_end = now
        call.outcome = outcome
        call.hangup_by = by
        call.end_status = call.invite_tx.last_status if outcome is Outcome.REJECTED else None
        call.timers.clear()
        if self.calls.get(call.call_id) is call:
            del self.calls[call.call_id]
        self.stats.calls_ended[outcome.value] = self.stats.calls_ended.get(outcome.value, 0) + 1
        self._events.append(CallTerminated(call))

    def _dialog_headers(self, call: InboundCall) -> tuple[tuple[str, str], ...]:
        contact = self._contact_tcp if call.peer[0] == "tcp" else self._contact
        headers: tuple[tuple[str, str], ...] = (("Contact", contact), ("Allow", ALLOW_HEADER))
        if call.route_set:
            headers = headers + tuple(("Record-Route", rr) for rr in call.route_set)
        return headers

    def _local_sdp(self, call: InboundCall) -> bytes:
        return build_sdp(
            self.config.host,
            call.rtp_port or self._allocate_rtp_port(),
            session_id=abs(hash(call.call_id)) % 10**9,
            version=call.sdp_version,
            negotiated=call.negotiated,
        )

    def _allocate_rtp_port(self) -> int:
        port = self._next_rtp
        nxt = port + 2
        self._next_rtp = nxt if nxt < self.config.rtp_port_max else self.config.rtp_port_min
        return port

    def _token(self) -> str:
        return f"{self._rng.getrandbits(64):016x}"

    def _send_bye(self, call: InboundCall, now: float) -> None:
        self._send_in_dialog(call, "BYE", now)

    def _send_in_dialog(self, call: InboundCall, method: str, now: float, extra: tuple[str, ...] = ()) -> str:
        """Send a request inside the call's dialog; returns its branch."""
        call.local_cseq += 1
        branch = MAGIC_COOKIE + self._token()
        transport = call.peer[0].upper()
        invite = call.invite
        to_value = invite.get("to") or ""
        if not invite.to.tag:
            to_value = f"{to_value};tag={call.local_tag}"
        lines = [
            f"{method} {call.remote_target} SIP/2.0",
            f"Via: SIP/2.0/{transport} {self.config.host}:{self.config.port};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: {to_value}",
            f"To: {invite.get('from')}",
            f"Call-ID: {call.call_id}",
            f"CSeq: {call.local_cseq} {method}",
            *(f"Route: {r}" for r in call.route_set),
            *extra,
            f"User-Agent: {self.config.user_agent}",
            "Content-Length: 0",
            "",
            "",
        ]
        data = "\r\n".join(lines).encode()
        tx = ClientNonInviteTransaction((branch, method), call.peer, call.peer[0] != "udp", self.tv, data)
        self._client_tx[(branch, method)] = tx
        self._out.append((tx.start(now), call.peer))
        self.stats.requests_sent[method] = self.stats.requests_sent.get(method, 0) + 1
        self._schedule(tx)
        return branch

    # -- calls we place: responses, in-dialog requests, ending --------------------
    def _on_out_response(self, call: OutCall, resp: Response, now: float) -> None:
        status = resp.status
        if status < 200:
            call.provisional = True
            if status > 100 and resp.to.tag and not call.remote_tag:
                call.remote_tag = resp.to.tag  # early dialog
            if call.want_cancel:
                if not call.cancel_sent:
                    self._send_cancel(call, now)
            elif status > 100 and call.state is OutState.CALLING:
                call.state = OutState.RINGING
                self._events.append(OutRinging(call))
            return
        if status >= 300:
            if status == 487 and call.want_cancel:
                self._out_fail(call, 487, now, "local", "cancelled")
            else:
                self._out_fail(call, status, now, "remote", _failure_class(status))
            return
        # 2xx: the dialog is confirmed; the UAC core ACKs it (RFC 3261 13.2.2.4)
        call.remote_tag = resp.to.tag
        contact = resp.get_all("contact")
        if contact:
            call.remote_target = _contact_uri(contact[0])
        call.route_set = [v for rr in reversed(resp.get_all("record-route")) for v in split_list(rr)]
        uri, routes = self._out_route(call)
        branch = MAGIC_COOKIE + self._token()
        via = f"SIP/2.0/{call.peer[0].upper()} {self.config.host}:{self.config.port};branch={branch};rport"
        call.ack = self._out_request(call, "ACK", uri, via, self._remote_to(call), call.invite_cseq, routes)
        self._out.append((call.ack, call.peer))
        self._count_sent("ACK")
        if call.want_cancel:
            # answered while our CANCEL was on its way: hang up at once
            self._send_out_bye(call, now)
            self._out_fail(call, 487, now, "local", "cancelled")
            return
        try:
            if not resp.body:
                raise SdpError("2xx without an SDP answer")
            negotiated = negotiate(parse_sdp(resp.body))
        except SdpError:
            # the answer to our offer is unusable: end the session (RFC 3261 13.2.2.4, 3264)
            self._send_out_bye(call, now)
            self._out_fail(call, 488, now, "local", "failed")
            return
        call.negotiated = negotiated
        call.state = OutState.ANSWERED
        call.t_answer = now
        self._count_out("answered")
        self._events.append(OutAnswered(call))

    def _non2xx_ack(self, call: OutCall, resp: Response) -> bytes:
        """The ACK for a 3xx-6xx: same branch as the INVITE, the response's To (RFC 3261 17.1.1.3)."""
        return self._out_request(
            call, "ACK", call.target, call.via, resp.get("to") or call.to_value, call.invite_cseq, user_agent=False
        )

    def _resend_ack(self, resp: Response) -> bool:
        call = self.out_calls.get(resp.call_id) or self._out_linger.get(resp.call_id)
        if (
            call is None
            or call.ack is None
            or resp.from_.tag != call.local_tag
            or resp.to.tag != call.remote_tag
            or resp.cseq[0] != call.invite_cseq
        ):
            return False
        self._out.append((call.ack, call.peer))
        self.stats.retransmissions_sent += 1
        return True

    def _out_dialog_for(self, req: Request) -> OutCall | None:
        """The answered call we placed that an in-dialog request from the peer belongs to."""
        call = self.out_calls.get(req.call_id)
        if call is None or call.state is not OutState.ANSWERED:
            return None
        if req.to.tag != call.local_tag or req.from_.tag != call.remote_tag:
            return None
        return call

    def _on_out_bye(self, call: OutCall, req: Request, tx: ServerNonInviteTransaction, now: float) -> None:
        if req.cseq[0] < call.remote_cseq:
            self._respond(tx, req, 500, now, reason="Server Internal Error (CSeq out of order)")
            return
        self._respond(tx, req, 200, now)
        self._out_finish(call, now, "remote")

    def _on_out_reinvite(self, call: OutCall, req: Request, tx: ServerInviteTransaction, now: float) -> None:
        """The peer's re-INVITE (hold, new address): answered at once with our SDP on the same port."""
        cseq = req.cseq[0]
        if cseq <= call.remote_cseq:
            self._respond(tx, req, 500, now, extra=(("Retry-After", "1"),))
            return
        if call.remote_offer_pending:
            # our offer in the last 200 still awaits its answer in the ACK (RFC 3261 14.2)
            self._respond(tx, req, 491, now)
            return
        call.remote_cseq = cseq
        negotiated = call.negotiated
        if req.body:
            try:
                negotiated = negotiate(parse_sdp(req.body))
            except SdpError as exc:
                self._respond(tx, req, exc.status, now, reason=_reason(exc.status, exc.reason))
                return
        call.negotiated = negotiated
        call.remote_offer_pending = not req.body  # no offer: ours goes in the 200, the answer in the ACK
        old = call.reinvite_tx
        if old is not None and old.state is TxState.ACCEPTED and old.receive_ack(now):
            self._schedule(old)  # a new re-INVITE proves the last 200 arrived
        call.reinvite_tx = tx
        tx.owner = call
        body = call.local_sdp = self._out_sdp(call, negotiated)
        contact = self._contact_tcp if call.peer[0] == "tcp" else self._contact
        extra = (("Contact", contact), ("Allow", ALLOW_HEADER))
        self._respond(tx, req, 200, now, extra=extra, body=body)

    def _on_out_ack(self, call: OutCall, req: Request, now: float) -> None:
        tx = call.reinvite_tx
        if tx is None or req.cseq[0] != call.remote_cseq:
            return
        if not tx.receive_ack(now):
            self.stats.retransmissions_received += 1
            return
        self._schedule(tx)
        if call.remote_offer_pending:
            call.remote_offer_pending = False
            try:
                call.negotiated = negotiate(parse_sdp(req.body))
            except SdpError:
                self._send_out_bye(call, now)
                self._out_finish(call, now, "local")

    def _on_out_timer(self, call: OutCall, name: str, now: float) -> None:
        if name == "linger":
            if self._out_linger.get(call.call_id) is call:
                del self._out_linger[call.call_id]
        elif name == "cancel" and not call.ended:
            # no final response 64*T1 after our CANCEL: the INVITE counts as cancelled (RFC 3261 9.1)
            if call.invite_tx is not None:
                self._kill_tx(call.invite_tx)
            self._out_fail(call, 487, now, "local", "cancelled")

    def _send_cancel(self, call: OutCall, now: float) -> None:
        """CANCEL: the INVITE's Request-URI, Via (branch), From, To and CSeq number (RFC 3261 9.1)."""
        call.cancel_sent = True
        data = self._out_request(call, "CANCEL", call.target, call.via, call.to_value, call.invite_cseq)
        tx = ClientNonInviteTransaction((call.branch, "CANCEL"), call.peer, call.peer[0] != "udp", self.tv, data)
        self._client_tx[tx.key] = tx
        self._out.append((tx.start(now), call.peer))
        self._count_sent("CANCEL")
        self._schedule(tx)
        at = now + 64 * self.tv.t1
        call.timers["cancel"] = at
        self._push(at, call, "cancel")

    def _send_out_bye(self, call: OutCall, now: float) -> None:
        call.local_cseq += 1
        uri, routes = self._out_route(call)
        branch = MAGIC_COOKIE + self._token()
        via = f"SIP/2.0/{call.peer[0].upper()} {self.config.host}:{self.config.port};branch={branch};rport"
        data = self._out_request(call, "BYE", uri, via, self._remote_to(call), call.local_cseq, routes)
        tx = ClientNonInviteTransaction((branch, "BYE"), call.peer, call.peer[0] != "udp", self.tv, data)
        self._client_tx[tx.key] = tx
        self._out.append((tx.start(now), call.peer))
        self._count_sent("BYE")
        self._schedule(tx)

    def _out_route(self, call: OutCall) -> tuple[str, tuple[tuple[str, str], ...]]:
        """Request-URI and Route headers of an in-dialog request (RFC 3261 12.2.1.1)."""
        routes = call.route_set
        if routes and not _loose_route(routes[0]):
            # strict router: it becomes the Request-URI, the remote target the last Route
            return _contact_uri(routes[0]), (
                *(("Route", r) for r in routes[1:]),
                ("Route", f"<{call.remote_target}>"),
            )
        return call.remote_target, tuple(("Route", r) for r in routes)

    @staticmethod
    def _remote_to(call: OutCall) -> str:
        return f"{call.to_value};tag={call.remote_tag}" if call.remote_tag else call.to_value

    def _out_request(
        self,
        call: OutCall,
        method: str,
        uri: str,
        via: str,
        to_value: str,
        cseq: int,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
        *,
        user_agent: bool = True,
    ) -> bytes:
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: {via}",
            "Max-Forwards: 70",
            f"From: {call.from_value}",
            f"To: {to_value}",
            f"Call-ID: {call.call_id}",
            f"CSeq: {cseq} {method}",
            *(f"{name}: {value}" for name, value in headers),
        ]
        if user_agent:
            lines.append(f"User-Agent: {self.config.user_agent}")
        lines += [f"Content-Length: {len(body)}", "", ""]
        return "\r\n".join(lines).encode() + body

    def _out_sdp(self, call: OutCall, negotiated: Negotiated | None) -> bytes:
        """Our SDP (an offer when ``negotiated`` is None); the o= version goes up when it changes."""

        def build() -> bytes:
            return build_sdp(
                self.config.host,
                call.rtp_port,
                session_id=abs(hash(call.call_id)) % 10**9,
                version=call.sdp_version,
                negotiated=negotiated,
            )

        sdp = build()
        if call.local_sdp and sdp != call.local_sdp:
            call.sdp_version += 1
            sdp = build()
        return sdp

    def _out_fail(self, call: OutCall, status: int, now: float, by: str, result: str) -> None:
        if call.ended:
            return
        call.end_status = status
        self._out_close(call, now, by)
        self._count_out(result)
        self._events.append(OutFailed(call, status))

    def _out_finish(self, call: OutCall, now: float, by: str) -> None:
        """An answered call we placed ended by BYE."""
        if call.ended:
            return
        tx = call.reinvite_tx
        if tx is not None and tx.state is TxState.ACCEPTED and tx.receive_ack(now):
            self._schedule(tx)  # the BYE proves our 200 to the re-INVITE arrived: stop resending it
        self._out_close(call, now, by)
        self._events.append(OutEnded(call))

    def _out_close(self, call: OutCall, now: float, by: str) -> None:
        call.state = OutState.ENDED
        call.t_end = now
        call.ended_by = by
        call.timers.clear()
        if self.out_calls.get(call.call_id) is call:
            del self.out_calls[call.call_id]
        if call.ack is not None:
            # copies of the 2xx may still come: keep the ACK for them a while (RFC 3261 13.2.2.4)
            self._out_linger[call.call_id] = call
            at = now + 64 * self.tv.t1
            call.timers["linger"] = at
            self._push(at, call, "linger")

    def _kill_tx(self, tx: Transaction) -> None:
        """Abandon a transaction (no more resends or timeouts)."""
        tx._terminate()
        self._forget_tx(tx)

    def _count_sent(self, method: str) -> None:
        self.stats.requests_sent[method] = self.stats.requests_sent.get(method, 0) + 1

    def _count_out(self, result: str) -> None:
        self.stats.out_calls[result] = self.stats.out_calls.get(result, 0) + 1


def _failure_class(status: int) -> str:
    """How a final non-2xx response from the called party is counted in ``stats.out_calls``."""
    if status in (486, 600):
        return "busy"
    if status == 408:
        return "timeout"
    return "rejected"


def _allows(req: Request, method: str) -> bool:
    """Whether the request's Allow header lists ``method``."""
    return method in (m.strip().upper() for m in req.get_all("allow"))  # Allow is a list header: already split


def _loose_route(value: str) -> bool:
    uri = _contact_uri(value)
    return any(p.split("=", 1)[0].strip().lower() == "lr" for p in uri.split(";")[1:])


def _contact_uri(value: str) -> str:
    value = value.strip()
    lt = value.find("<")
    if lt >= 0:
        return value[lt + 1 : value.find(">", lt)]
    return value.split(";", 1)[0]


def _reason(status: int, detail: str) -> str:
    from ivr.sip.message import REASON_PHRASES

    return f"{REASON_PHRASES.get(status, 'Error')} ({detail})"
