"""Calls we place: the outbound dialog state machine (we are the UAC), sans-IO.

Theory of operation
-------------------
``place_call`` sends an INVITE with our SDP offer (ringing an agent's phone,
dialling a callback) and returns an :class:`OutCall`; its responses move it
on and each step is an event for the transaction user::

    CALLING --1xx > 100--> RINGING (OutRinging) --2xx, we ACK--> ANSWERED (OutAnswered)
    CALLING/RINGING --3xx-6xx, Timer B (408)--> ENDED (OutFailed)
    CALLING/RINGING --drop: CANCEL (after a 1xx), 487--> ENDED (OutFailed 487)
    ANSWERED --BYE either way--> ENDED (OutEnded)

A CANCEL waits for the first provisional response (RFC 3261 9.1); with no
final response 64*T1 after it, the call counts as cancelled. The ACK for a
2xx is ours to send and to resend for each copy of the 2xx: the client
INVITE transaction ends at the first one (RFC 3261 13.2.2.4), so an ended
call lingers 64*T1 to answer copies. Once answered, the peer may re-INVITE
(hold, a new address): answered at once with our SDP on the same port.
"""

from __future__ import annotations

from ivr.sip.core import ALLOW_HEADER, UaCore, contact_uri, reason, sdp_host
from ivr.sip.dialogs import OutCall, OutState
from ivr.sip.events import OutAnswered, OutEnded, OutFailed, OutRinging
from ivr.sip.message import Request, Response, split_list, usable_target
from ivr.sip.sdp import Negotiated, SdpError, build_sdp, negotiate, parse_sdp
from ivr.sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    Peer,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    TxState,
)


class OutboundDialogs:
    """The calls we place, by Call-ID until they end, and the ended ones still owed an ACK."""

    def __init__(self, core: UaCore) -> None:
        self.core = core
        self.calls: dict[str, OutCall] = {}
        self._linger: dict[str, OutCall] = {}  # ended ones whose 2xx may still come again (64*T1)

    # -- commands from the transaction user ---------------------------------------------
    def place_call(
        self,
        target: str,
        peer: Peer,
        rtp_port: int,
        now: float,
        *,
        from_user: str,
        from_display: str | None,
        call_id: str | None,
        extra_headers: tuple[tuple[str, str], ...],
    ) -> OutCall:
        if ":" not in target or any(c in target for c in "\r\n <>"):
            raise ValueError(f"not a SIP URI: {target!r}")
        for name, value in extra_headers:
            if not name or any(c in name + value for c in "\r\n") or ":" in name:
                raise ValueError(f"bad extra header {name!r}")
        core = self.core
        host = core.config.host
        call_id = call_id or f"{core.token()}@{host}"
        if call_id in self.calls or call_id in self._linger:
            raise ValueError(f"Call-ID {call_id!r} is in use")
        display = ""
        if from_display:
            escaped = from_display.replace("\\", "\\\\").replace('"', '\\"')
            display = f'"{escaped}" '.replace("\r", "").replace("\n", "")
        branch = core.new_branch()
        call = OutCall(
            call_id=call_id,
            peer=peer,
            target=target,
            local_tag=core.token(),
            t_start=now,
            rtp_port=rtp_port or core.rtp_ports.next(),
            remote_target=target,
            branch=branch,
            via=core.via(peer, branch),
        )
        call.from_value = f"{display}<sip:{from_user}@{host}>;tag={call.local_tag}"
        call.to_value = f"<{target}>"
        call.local_sdp = self._sdp(call, None)
        headers = (
            ("Contact", core.contact(peer)),
            ("Allow", ALLOW_HEADER),
            *extra_headers,
            ("Content-Type", "application/sdp"),
        )
        data = self._request(call, "INVITE", target, call.via, call.to_value, call.invite_cseq, headers, call.local_sdp)
        tx = ClientInviteTransaction((branch, "INVITE"), peer, peer[0] != "udp", core.tv, data)
        call.invite_tx = tx
        core.table.add_client(tx, owner=call)
        self.calls[call_id] = call
        core.send(tx.start(now), peer)
        core.stats.count_sent("INVITE")
        core.table.schedule(tx)
        return call

    def drop(self, call: OutCall, now: float) -> None:
        if call.state is OutState.ANSWERED:
            self._send_bye(call, now)
            self._finish(call, now, "local")
        elif call.state is not OutState.ENDED and not call.want_cancel:
            call.want_cancel = True
            if call.provisional:
                self._send_cancel(call, now)
            # else: CANCEL only once a provisional response came (RFC 3261 9.1)

    def transport_error(self, peer: Peer, now: float) -> None:
        for call in [c for c in self.calls.values() if c.peer == peer and c.state is not OutState.ANSWERED]:
            if call.invite_tx is not None:
                self.core.table.kill(call.invite_tx)
            self._fail(call, 503, now, "local", "failed")

    # -- responses to our INVITEs -----------------------------------------------------------
    def on_invite_response(self, tx: ClientInviteTransaction, resp: Response, now: float) -> None:
        """A response to the client INVITE transaction ``tx``; the caller reschedules ``tx``."""
        core = self.core
        stats = core.stats
        call = core.table.invite_owner.get(tx.key)
        ack = None
        if call is not None and resp.status >= 300 and tx.state in (TxState.CALLING, TxState.PROCEEDING):
            ack = self._non2xx_ack(call, resp)
        passed, send = tx.receive_response(resp.status, now, ack=ack)
        if send is not None:
            core.send(send, tx.peer)
            if passed:
                stats.count_sent("ACK")
            else:
                stats.retransmissions_sent += 1
        if not passed:
            stats.retransmissions_received += 1
        elif call is not None and call.invite_tx is tx and not call.ended:
            self._on_response(call, resp, now)

    def _on_response(self, call: OutCall, resp: Response, now: float) -> None:
        core = self.core
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
                core.events.append(OutRinging(call))
            return
        if status >= 300:
            if status == 487 and call.want_cancel:
                self._fail(call, 487, now, "local", "cancelled")
            else:
                self._fail(call, status, now, "remote", _failure_class(status))
            return
        # 2xx: the dialog is confirmed; the UAC core ACKs it (RFC 3261 13.2.2.4)
        call.remote_tag = resp.to.tag
        contact = resp.get_all("contact")
        if contact and usable_target(target := contact_uri(contact[0])):
            # an unusable Contact (spaces, control characters) keeps the target we called
            call.remote_target = target
        call.route_set = [v for rr in reversed(resp.get_all("record-route")) for v in split_list(rr)]
        uri, routes = self._route(call)
        via = core.via(call.peer, core.new_branch())
        call.ack = self._request(call, "ACK", uri, via, _remote_to(call), call.invite_cseq, routes)
        core.send(call.ack, call.peer)
        core.stats.count_sent("ACK")
        if call.want_cancel:
            # answered while our CANCEL was on its way: hang up at once
            self._send_bye(call, now)
            self._fail(call, 487, now, "local", "cancelled")
            return
        try:
            if not resp.body:
                raise SdpError("2xx without an SDP answer")
            negotiated = negotiate(parse_sdp(resp.body))
        except SdpError:
            # the answer to our offer is unusable: end the session (RFC 3261 13.2.2.4, 3264)
            self._send_bye(call, now)
            self._fail(call, 488, now, "local", "failed")
            return
        call.negotiated = negotiated
        call.state = OutState.ANSWERED
        call.t_answer = now
        core.stats.count_out_call("answered")
        core.events.append(OutAnswered(call))

    def _non2xx_ack(self, call: OutCall, resp: Response) -> bytes:
        """The ACK for a 3xx-6xx: same branch as the INVITE, the response's To (RFC 3261 17.1.1.3)."""
        return self._request(
            call, "ACK", call.target, call.via, resp.get("to") or call.to_value, call.invite_cseq, user_agent=False
        )

    def resend_ack(self, resp: Response) -> bool:
        """A copy of a 2xx whose transaction already ended: send our ACK again (13.2.2.4); False if not ours."""
        call = self.calls.get(resp.call_id) or self._linger.get(resp.call_id)
        if (
            call is None
            or call.ack is None
            or resp.from_.tag != call.local_tag
            or resp.to.tag != call.remote_tag
            or resp.cseq[0] != call.invite_cseq
        ):
            return False
        self.core.send(call.ack, call.peer)
        self.core.stats.retransmissions_sent += 1
        return True

    def on_invite_timeout(self, tx: ClientInviteTransaction, now: float) -> None:
        """Timer B: no final response to our INVITE."""
        call = self.core.table.invite_owner.get(tx.key)
        if call is not None and call.invite_tx is tx and not call.ended:
            self._fail(call, 408, now, "local", "timeout")

    # -- requests from the peer in an answered dialog ---------------------------------------
    def dialog_for(self, req: Request) -> OutCall | None:
        """The answered call we placed that an in-dialog request from the peer belongs to."""
        call = self.calls.get(req.call_id)
        if call is None or call.state is not OutState.ANSWERED:
            return None
        if req.to.tag != call.local_tag or req.from_.tag != call.remote_tag:
            return None
        return call

    def on_bye(self, call: OutCall, req: Request, tx: ServerNonInviteTransaction, now: float) -> None:
        if req.cseq[0] < call.remote_cseq:
            self.core.respond(tx, req, 500, now, reason="Server Internal Error (CSeq out of order)")
            return
        self.core.respond(tx, req, 200, now)
        self._finish(call, now, "remote")

    def on_reinvite(self, call: OutCall, req: Request, tx: ServerInviteTransaction, now: float) -> None:
        """The peer's re-INVITE (hold, new address): answered at once with our SDP on the same port."""
        core = self.core
        cseq = req.cseq[0]
        if cseq <= call.remote_cseq:
            core.respond(tx, req, 500, now, extra=(("Retry-After", "1"),))
            return
        if call.remote_offer_pending:
            # our offer in the last 200 still awaits its answer in the ACK (RFC 3261 14.2)
            core.respond(tx, req, 491, now)
            return
        call.remote_cseq = cseq
        negotiated = call.negotiated
        if req.body:
            try:
                negotiated = negotiate(parse_sdp(req.body))
            except SdpError as exc:
                core.respond(tx, req, exc.status, now, reason=reason(exc.status, exc.reason))
                return
        call.negotiated = negotiated
        call.remote_offer_pending = not req.body  # no offer: ours goes in the 200, the answer in the ACK
        old = call.reinvite_tx
        if old is not None and old.state is TxState.ACCEPTED and old.receive_ack(now):
            core.table.schedule(old)  # a new re-INVITE proves the last 200 arrived
        call.reinvite_tx = tx
        tx.owner = call
        body = call.local_sdp = self._sdp(call, negotiated)
        extra = (("Contact", core.contact(call.peer)), ("Allow", ALLOW_HEADER))
        core.respond(tx, req, 200, now, extra=extra, body=body)

    def on_reinvite_timeout(self, call: OutCall, tx: ServerInviteTransaction, now: float) -> None:
        """Our 2xx to the peer's re-INVITE was never acknowledged (RFC 3261 14.2): hang up."""
        if call.state is OutState.ANSWERED and call.reinvite_tx is tx:
            self._send_bye(call, now)
            self._finish(call, now, "local")

    def on_ack(self, call: OutCall, req: Request, now: float) -> None:
        tx = call.reinvite_tx
        if tx is None or req.cseq[0] != call.remote_cseq:
            return
        if not tx.receive_ack(now):
            self.core.stats.retransmissions_received += 1
            return
        self.core.table.schedule(tx)
        if call.remote_offer_pending:
            call.remote_offer_pending = False
            try:
                call.negotiated = negotiate(parse_sdp(req.body))
            except SdpError:
                self._send_bye(call, now)
                self._finish(call, now, "local")

    def on_timer(self, call: OutCall, name: str, now: float) -> None:
        if name == "linger":
            if self._linger.get(call.call_id) is call:
                del self._linger[call.call_id]
        elif name == "cancel" and not call.ended:
            # no final response 64*T1 after our CANCEL: the INVITE counts as cancelled (RFC 3261 9.1)
            if call.invite_tx is not None:
                self.core.table.kill(call.invite_tx)
            self._fail(call, 487, now, "local", "cancelled")

    # -- requests we send ------------------------------------------------------------------
    def _send_cancel(self, call: OutCall, now: float) -> None:
        """CANCEL: the INVITE's Request-URI, Via (branch), From, To and CSeq number (RFC 3261 9.1)."""
        core = self.core
        call.cancel_sent = True
        data = self._request(call, "CANCEL", call.target, call.via, call.to_value, call.invite_cseq)
        tx = ClientNonInviteTransaction((call.branch, "CANCEL"), call.peer, call.peer[0] != "udp", core.tv, data)
        core.table.add_client(tx)
        core.send(tx.start(now), call.peer)
        core.stats.count_sent("CANCEL")
        core.table.schedule(tx)
        core.table.arm(call, "cancel", now + 64 * core.tv.t1)

    def _send_bye(self, call: OutCall, now: float) -> None:
        core = self.core
        call.local_cseq += 1
        uri, routes = self._route(call)
        branch = core.new_branch()
        data = self._request(call, "BYE", uri, core.via(call.peer, branch), _remote_to(call), call.local_cseq, routes)
        tx = ClientNonInviteTransaction((branch, "BYE"), call.peer, call.peer[0] != "udp", core.tv, data)
        core.table.add_client(tx)
        core.send(tx.start(now), call.peer)
        core.stats.count_sent("BYE")
        core.table.schedule(tx)

    @staticmethod
    def _route(call: OutCall) -> tuple[str, tuple[tuple[str, str], ...]]:
        """Request-URI and Route headers of an in-dialog request (RFC 3261 12.2.1.1)."""
        routes = call.route_set
        if routes and not _loose_route(routes[0]):
            # strict router: it becomes the Request-URI, the remote target the last Route
            return contact_uri(routes[0]), (
                *(("Route", r) for r in routes[1:]),
                ("Route", f"<{call.remote_target}>"),
            )
        return call.remote_target, tuple(("Route", r) for r in routes)

    def _request(
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
            lines.append(f"User-Agent: {self.core.config.user_agent}")
        lines += [f"Content-Length: {len(body)}", "", ""]
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + body  # header bytes as they came

    def _sdp(self, call: OutCall, negotiated: Negotiated | None) -> bytes:
        """Our SDP (an offer when ``negotiated`` is None); the o= version goes up when it changes."""

        def build() -> bytes:
            return build_sdp(
                sdp_host(self.core.config),
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

    # -- ending -------------------------------------------------------------------------------
    def _fail(self, call: OutCall, status: int, now: float, by: str, result: str) -> None:
        if call.ended:
            return
        call.end_status = status
        self._close(call, now, by)
        self.core.stats.count_out_call(result)
        self.core.events.append(OutFailed(call, status))

    def _finish(self, call: OutCall, now: float, by: str) -> None:
        """An answered call we placed ended by BYE."""
        if call.ended:
            return
        tx = call.reinvite_tx
        if tx is not None and tx.state is TxState.ACCEPTED and tx.receive_ack(now):
            self.core.table.schedule(tx)  # the BYE proves our 200 to the re-INVITE arrived: stop resending it
        self._close(call, now, by)
        self.core.events.append(OutEnded(call))

    def _close(self, call: OutCall, now: float, by: str) -> None:
        call.state = OutState.ENDED
        call.t_end = now
        call.ended_by = by
        self.core.table.disarm_all(call)
        if self.calls.get(call.call_id) is call:
            del self.calls[call.call_id]
        if call.ack is not None:
            # copies of the 2xx may still come: keep the ACK for them a while (RFC 3261 13.2.2.4)
            self._linger[call.call_id] = call
            self.core.table.arm(call, "linger", now + 64 * self.core.tv.t1)


def _failure_class(status: int) -> str:
    """How a final non-2xx response from the called party is counted in ``stats.out_calls``."""
    if status in (486, 600):
        return "busy"
    if status == 408:
        return "timeout"
    return "rejected"


def _loose_route(value: str) -> bool:
    uri = contact_uri(value)
    return any(p.split("=", 1)[0].strip().lower() == "lr" for p in uri.split(";")[1:])


def _remote_to(call: OutCall) -> str:
    return f"{call.to_value};tag={call.remote_tag}" if call.remote_tag else call.to_value
