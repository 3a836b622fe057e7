"""Calls to us: the inbound dialog state machine (we are the UAS), sans-IO.

Theory of operation
-------------------
A new INVITE becomes an :class:`InboundCall` (or is refused at once: 400,
415, 416, 420, 482, 483, 488, 503 at the call limit or while draining, and
recorded as rejected). The transaction user then rings, answers, rejects or
hangs up; the caller's ACK, CANCEL and BYE move the call on::

    RINGING --answer--> ANSWERED --ACK--> CONFIRMED --BYE either way--> ENDED
    RINGING --CANCEL / reject / early BYE--> ENDED
    ANSWERED --no ACK by 64*T1--> ENDED (we send BYE)

A hangup while ANSWERED waits for the ACK before its BYE (RFC 3261 15). A
re-INVITE, a BYE or the caller's REFER progress proves our 2xx arrived even
when its ACK was lost. Every response goes through the server transaction
that owns the request (``UaCore.respond``), so copies of a request get the
same bytes. The user agent (``ua.py``) routes each message here or to
``outbound.py`` by its dialog's tags.
"""

from __future__ import annotations

from ivr.sip.core import ALLOW_HEADER, UaCore, contact_uri, reason, sdp_host
from ivr.sip.dialogs import InboundCall, InboundState, Outcome
from ivr.sip.events import CallConfirmed, CallTerminated, CallTimer, IncomingCall, ReferAnswered
from ivr.sip.message import Request, parse_decimal, split_list, uri_user, usable_target
from ivr.sip.sdp import SdpError, build_sdp, negotiate, parse_sdp
from ivr.sip.transaction import (
    ClientNonInviteTransaction,
    Peer,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    Timeout,
    TxKey,
    TxState,
)

SUPPORTED_OPTIONS: frozenset[str] = frozenset()  # option tags for Require
DRAIN_RETRY_AFTER = 5  # seconds, in the 503 a draining user agent gives a new call: the next node takes it


class InboundDialogs:
    """The calls placed to us, by Call-ID, and what the transaction user may do with them."""

    def __init__(self, core: UaCore) -> None:
        self.core = core
        self.calls: dict[str, InboundCall] = {}
        self._refers: dict[TxKey, InboundCall] = {}  # our REFERs awaiting their final response
        self.draining = False  # set by UserAgent.drain: new INVITEs get 503

    def dialog_for(self, req: Request) -> InboundCall | None:
        """The live call an in-dialog request belongs to (Call-ID and both tags match)."""
        call = self.calls.get(req.call_id)
        if call is None or call.ended:
            return None
        if req.to.tag != call.local_tag or req.from_.tag != call.remote_tag:
            return None
        return call

    # -- requests from the caller ----------------------------------------------------
    def on_invite(self, req: Request, tx: ServerInviteTransaction, peer: Peer, now: float) -> None:
        """A new INVITE (no To tag): a call, or a refusal recorded as a rejected call."""
        frm = req.from_
        contact = req.get_all("contact")
        call = InboundCall(
            call_id=req.call_id,
            peer=peer,
            caller=uri_user(frm.uri) or frm.uri,
            called=uri_user(req.uri),
            remote_tag=frm.tag,
            local_tag=self.core.token(),
            t_invite=now,
            invite_tx=tx,
            invite=req,
            remote_target=contact_uri(contact[0]) if contact else frm.uri,
            route_set=[v for rr in req.get_all("record-route") for v in split_list(rr)],
            remote_cseq=req.cseq[0],
        )
        tx.owner = call
        refusal = self._refuse_new_call(req, call)
        if refusal is not None:
            # refused calls are recorded too (R4): they end at once as rejected
            status, why, extra = refusal
            self._final(call, status, now, why, extra)
            self._end(call, now, Outcome.REJECTED, "frontdesk")
            return
        call.remote_offer_pending = call.negotiated is None
        self.calls[call.call_id] = call
        self.core.respond(tx, req, 100, now)
        self.core.events.append(IncomingCall(call))

    def _refuse_new_call(
        self, req: Request, call: InboundCall
    ) -> tuple[int, str | None, tuple[tuple[str, str], ...]] | None:
        """Why a new INVITE cannot become a call, as (status, reason, extra headers); None when it can."""
        mf = req.get("max-forwards")
        if mf is not None:
            hops = parse_decimal(mf.strip(), 2**31 - 1)
            if hops is None:
                return 400, "Bad Request (malformed Max-Forwards)", ()
            if hops == 0:
                return 483, None, ()
        if req.uri.split(":", 1)[0].lower() not in ("sip", "sips", "tel"):
            return 416, None, ()
        unsupported = [opt for opt in req.get_all("require") if opt.lower() not in SUPPORTED_OPTIONS]
        if unsupported:
            return 420, None, (("Unsupported", ", ".join(unsupported)),)
        if not call.call_id:
            return 400, "Bad Request (empty Call-ID)", ()
        if not usable_target(call.remote_target):
            # our BYE and REFER go there: a URI with spaces or control characters cannot be a Request-URI
            return 400, "Bad Request (malformed Contact)", ()
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
                return exc.status, reason(exc.status, exc.reason), ()
        if self.draining:
            # shutting down: a proxy in front tries its next node (its failure route takes any 5xx)
            return 503, None, (("Retry-After", str(DRAIN_RETRY_AFTER)),)
        if len(self.calls) >= self.core.config.max_calls:
            self.core.stats.calls_rejected_overload += 1
            return 503, None, (("Retry-After", "5"),)
        return None

    def on_reinvite(self, call: InboundCall, req: Request, tx: ServerInviteTransaction, now: float) -> None:
        core = self.core
        cseq = req.cseq[0]
        if call.invite_tx.state is TxState.PROCEEDING or cseq <= call.remote_cseq:
            core.respond(tx, req, 500, now, extra=(("Retry-After", "1"),))
            return
        # a re-INVITE proves the caller has our earlier 2xx, even if its ACK was lost
        self.acknowledged(call, now)
        call.remote_cseq = cseq
        negotiated = call.negotiated
        if req.body:
            try:
                negotiated = negotiate(parse_sdp(req.body))
            except SdpError as exc:
                core.respond(tx, req, exc.status, now, reason=reason(exc.status, exc.reason))
                return
        if negotiated != call.negotiated:
            call.negotiated = negotiated
            call.sdp_version += 1
        call.local_sdp = self._local_sdp(call)
        call.remote_offer_pending = not req.body
        call.invite_tx = tx
        tx.owner = call
        core.respond(tx, req, 200, now, to_tag=call.local_tag, extra=self._dialog_headers(call), body=call.local_sdp)

    def on_ack(self, call: InboundCall, req: Request, now: float) -> None:
        """An ACK in the call's dialog: for our 2xx to its INVITE or to a re-INVITE."""
        itx = call.invite_tx
        if req.cseq[0] != call.remote_cseq:
            return  # ACK for an older INVITE of this dialog
        if not itx.receive_ack(now):
            self.core.stats.retransmissions_received += 1
            return
        self.core.table.schedule(itx)
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
            self.core.events.append(CallConfirmed(call))

    def acknowledged(self, call: InboundCall, now: float) -> None:
        """Stop resending the INVITE's 2xx: the caller's later request shows it arrived."""
        itx = call.invite_tx
        if itx.state is TxState.ACCEPTED and itx.receive_ack(now):
            self.core.table.schedule(itx)
            if call.state is InboundState.ANSWERED:
                call.state = InboundState.CONFIRMED
                self.core.events.append(CallConfirmed(call))

    def on_cancel(self, req: Request, tx: ServerNonInviteTransaction, key: TxKey, now: float) -> None:
        core = self.core
        itx = core.table.server.get((key[0], key[1], "INVITE"))
        if not isinstance(itx, ServerInviteTransaction):
            core.respond(tx, req, 481, now)
            return
        call = itx.owner if isinstance(itx.owner, InboundCall) else None
        core.respond(tx, req, 200, now, to_tag=call.local_tag if call else itx.to_tag or None)
        if itx.state is TxState.PROCEEDING and call is not None and call.invite_tx is itx:
            self._final(call, 487, now)
            self._end(call, now, Outcome.CANCELLED, "caller")

    def on_bye(self, call: InboundCall, req: Request, tx: ServerNonInviteTransaction, now: float) -> None:
        if req.cseq[0] < call.remote_cseq:
            # out of order within the dialog (RFC 3261 12.2.2)
            self.core.respond(tx, req, 500, now, reason="Server Internal Error (CSeq out of order)")
            return
        self.core.respond(tx, req, 200, now)
        # a BYE proves the caller has our 2xx even if its ACK was lost
        self.acknowledged(call, now)
        if call.state is InboundState.RINGING:
            self._final(call, 487, now)
            self._end(call, now, Outcome.CANCELLED, "caller")
        else:
            self._end(call, now, Outcome.COMPLETED, "caller")

    # -- timers and responses ---------------------------------------------------------
    def on_invite_timeout(self, call: InboundCall, timeout: Timeout, now: float) -> None:
        """The server INVITE transaction of ``call`` gave up."""
        if call.ended:
            return
        if call.state in (InboundState.ANSWERED, InboundState.CONFIRMED) and timeout is Timeout.NO_ACK:
            # 2xx (to the INVITE or a re-INVITE) never acknowledged:
            # end the dialog with BYE (RFC 3261 13.3.1.4, 14.2)
            self._send_bye(call, now)
            self._end(call, now, Outcome.NO_ACK, "frontdesk")
        else:
            self._end(call, now, call.outcome or Outcome.FAILED, call.hangup_by)

    def on_timer(self, call: InboundCall, name: str) -> None:
        self.core.events.append(CallTimer(call, name))

    def on_refer_response(self, key: TxKey, status: int) -> None:
        """The final response to one of our REFERs."""
        call = self._refers.pop(key, None)
        if call is not None and not call.ended:
            self.core.events.append(ReferAnswered(call, status))

    # -- commands from the transaction user ---------------------------------------------
    def ring(self, call: InboundCall, now: float) -> None:
        if call.state is InboundState.RINGING and not call.ended:
            self.core.respond(
                call.invite_tx, call.invite, 180, now, to_tag=call.local_tag, extra=self._dialog_headers(call)
            )

    def answer(self, call: InboundCall, now: float, rtp_port: int | None = None) -> None:
        if call.state is not InboundState.RINGING or call.ended:
            return
        call.rtp_port = rtp_port if rtp_port is not None else self.core.rtp_ports.next()
        call.local_sdp = self._local_sdp(call)
        call.state = InboundState.ANSWERED
        call.t_answer = now
        self.core.stats.answer_latency.observe(max(0.0, now - call.t_invite))
        self.core.respond(
            call.invite_tx,
            call.invite,
            200,
            now,
            to_tag=call.local_tag,
            extra=self._dialog_headers(call),
            body=call.local_sdp,
        )

    def reject(self, call: InboundCall, status: int, now: float, why: str | None = None) -> None:
        if call.state is not InboundState.RINGING or call.ended:
            return
        self._final(call, status, now, why)
        self._end(call, now, Outcome.REJECTED, "frontdesk")

    def hangup(self, call: InboundCall, now: float, outcome: Outcome) -> None:
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
        if call.state is not InboundState.CONFIRMED:
            return
        contact = self.core.contact(call.peer)
        key = self._send_in_dialog(
            call,
            "REFER",
            now,
            (f"Refer-To: <{target}>", f"Referred-By: {contact}", f"Contact: {contact}"),
        )
        self._refers[key] = call

    def update_connected(self, call: InboundCall, display: str, user: str, now: float) -> bool:
        if call.state is not InboundState.CONFIRMED or not _allows(call.invite, "UPDATE"):
            return False
        contact = self.core.contact(call.peer)
        name = display.replace("\\", "").replace('"', "")
        identity = f'"{name}" <sip:{user}@{self.core.config.host}>'
        self._send_in_dialog(call, "UPDATE", now, (f"P-Asserted-Identity: {identity}", f"Contact: {contact}"))
        return True

    # -- helpers ------------------------------------------------------------------------
    def _final(
        self,
        call: InboundCall,
        status: int,
        now: float,
        why: str | None = None,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.core.respond(call.invite_tx, call.invite, status, now, to_tag=call.local_tag, reason=why, extra=extra)

    def _end(self, call: InboundCall, now: float, outcome: Outcome, by: str | None) -> None:
        if call.ended:
            return
        call.state = InboundState.ENDED
        call.t_end = now
        call.outcome = outcome
        call.hangup_by = by
        call.end_status = call.invite_tx.last_status if outcome is Outcome.REJECTED else None
        self.core.table.disarm_all(call)
        if self.calls.get(call.call_id) is call:
            del self.calls[call.call_id]
        itx = call.invite_tx
        if itx.owner is call and itx.state is not TxState.PROCEEDING:
            # the transaction lives on for up to 64*T1 to absorb copies; the call (its INVITE, SDP,
            # dialog) is the TU's business now, not the collector's for 32 s at every call rate
            itx.to_tag = call.local_tag
            itx.owner = None
        self.core.stats.count_ended(outcome.value)
        self.core.events.append(CallTerminated(call))

    def _dialog_headers(self, call: InboundCall) -> tuple[tuple[str, str], ...]:
        headers: tuple[tuple[str, str], ...] = (("Contact", self.core.contact(call.peer)), ("Allow", ALLOW_HEADER))
        if call.route_set:
            headers = headers + tuple(("Record-Route", rr) for rr in call.route_set)
        return headers

    def _local_sdp(self, call: InboundCall) -> bytes:
        return build_sdp(
            sdp_host(self.core.config),
            call.rtp_port or self.core.rtp_ports.next(),
            session_id=abs(hash(call.call_id)) % 10**9,
            version=call.sdp_version,
            negotiated=call.negotiated,
        )

    def _send_bye(self, call: InboundCall, now: float) -> None:
        self._send_in_dialog(call, "BYE", now)

    def _send_in_dialog(self, call: InboundCall, method: str, now: float, extra: tuple[str, ...] = ()) -> TxKey:
        """Send a request inside the call's dialog (we are its UAS: From and To swap); returns its key."""
        core = self.core
        call.local_cseq += 1
        branch = core.new_branch()
        invite = call.invite
        to_value = invite.get("to") or ""
        if not invite.to.tag:
            to_value = f"{to_value};tag={call.local_tag}"
        lines = [
            f"{method} {call.remote_target} SIP/2.0",
            f"Via: {core.via(call.peer, branch)}",
            "Max-Forwards: 70",
            f"From: {to_value}",
            f"To: {invite.get('from')}",
            f"Call-ID: {call.call_id}",
            f"CSeq: {call.local_cseq} {method}",
            *(f"Route: {r}" for r in call.route_set),
            *extra,
            f"User-Agent: {core.config.user_agent}",
            "Content-Length: 0",
            "",
            "",
        ]
        data = "\r\n".join(lines).encode("utf-8", "surrogateescape")  # the caller's From/To bytes as they came
        tx = ClientNonInviteTransaction((branch, method), call.peer, call.peer[0] != "udp", core.tv, data)
        core.table.add_client(tx)
        core.send(tx.start(now), call.peer)
        core.stats.count_sent(method)
        core.table.schedule(tx)
        return tx.key


def _allows(req: Request, method: str) -> bool:
    """Whether the request's Allow header lists ``method``."""
    return method in (m.strip().upper() for m in req.get_all("allow"))  # Allow is a list header: already split
