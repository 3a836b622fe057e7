"""The SIP user agent, sans-IO: one facade over transactions, inbound and outbound dialogs.

Bytes in, bytes and events out, time passed in::

    ua.receive(data, peer, now)          # a datagram or a framed TCP message
    ua.datagrams_to_send() -> [(bytes, peer)]
    ua.events() -> [IncomingCall | CallConfirmed | CallTerminated | CallTimer | OutRinging | ...]
    ua.get_timer() -> float | None       # when to call handle_timer next
    ua.handle_timer(now)

The transaction user (the call router) reacts to events by calling
``ring``, ``answer``, ``reject``, ``hangup``, ``set_call_timer``, ``place_call``
and ``drop``; those only queue datagrams and events too. ``drain`` stops it
taking new dialogs (503 to OPTIONS and new INVITEs) while the ones it has go on. A ``peer`` is
``(transport, host, port)``; the asyncio shell (ivr/transport/sip.py) maps
it back to a socket or a TCP connection.

This module parses, matches a message to its transaction (RFC 3261 17) and
routes it by method and dialog tags. What happens next lives beside it:

- ``inbound.py``: calls to us and their state machine (we are the UAS);
- ``outbound.py``: calls we place and theirs (we are the UAC);
- ``transaction.py``: the four transaction machines and their timers;
- ``txtable.py``: the transaction table and the one timer heap;
- ``events.py``, ``dialogs.py``, ``stats.py``: the events, the dialog records, the counters;
- ``registrar.py``: REGISTER, whose bindings expire on this user agent's timer.

The names callers use are re-exported here, so ``from ivr.sip.ua import ...``
keeps working for the router, the shell and the tests.
"""

from __future__ import annotations

import random
import secrets

from ivr.sip.core import ALLOW_HEADER, MAGIC_COOKIE, UaConfig, UaCore
from ivr.sip.dialogs import InboundCall, InboundState, OutCall, Outcome, OutState
from ivr.sip.events import (
    CallConfirmed,
    CallTerminated,
    CallTimer,
    Event,
    IncomingCall,
    InfoReceived,
    OutAnswered,
    OutEnded,
    OutFailed,
    OutRinging,
    ReferAnswered,
)
from ivr.sip.inbound import DRAIN_RETRY_AFTER, InboundDialogs
from ivr.sip.message import Request, Response, SipParseError, build_response, parse_headers_only, parse_message
from ivr.sip.outbound import OutboundDialogs
from ivr.sip.registrar import Registrar, RegistrarSettings
from ivr.sip.stats import KNOWN_NOT_ALLOWED, LatencyHistogram, SipStats
from ivr.sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    Peer,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    Timeout,
    Transaction,
    TxState,
)

__all__ = [
    "CallConfirmed",
    "CallTerminated",
    "CallTimer",
    "Event",
    "InboundCall",
    "InboundState",
    "IncomingCall",
    "InfoReceived",
    "LatencyHistogram",
    "OutAnswered",
    "OutCall",
    "OutEnded",
    "OutFailed",
    "OutRinging",
    "OutState",
    "Outcome",
    "Peer",
    "ReferAnswered",
    "SipStats",
    "UaConfig",
    "UserAgent",
]


class UserAgent:
    """One SIP endpoint: feed it what arrives and the time, send what it queues, act on its events."""

    def __init__(
        self, config: UaConfig | None = None, *, rng: random.Random | None = None, registrar: Registrar | None = None
    ) -> None:
        self._core = core = UaCore(config or UaConfig(), rng or random.Random())
        self.stats: SipStats = core.stats
        # REGISTER is served by the registrar; without one given, nobody can log in (401, then 403)
        self.registrar = registrar or Registrar(RegistrarSettings(), {}, secrets.token_bytes(32))
        self._inbound = InboundDialogs(core)
        self._outbound = OutboundDialogs(core)
        self.calls: dict[str, InboundCall] = self._inbound.calls  # live inbound calls by Call-ID
        self.out_calls: dict[str, OutCall] = self._outbound.calls  # calls we placed, by Call-ID, until they end
        self._refuse_register = False  # while draining in a cluster: REGISTER goes to another node

    @property
    def config(self) -> UaConfig:
        return self._core.config

    @property
    def draining(self) -> bool:
        """Whether :meth:`drain` was called: no new dialog is taken."""
        return self._inbound.draining

    def drain(self, *, refuse_register: bool = False) -> None:
        """Take no new call: OPTIONS and dialog-creating INVITEs get 503 with Retry-After.

        Requests inside a dialog (ACK, BYE, re-INVITE, INFO, CANCEL) and the
        calls we place go on as before. With ``refuse_register`` a REGISTER
        gets 503 too, so that a proxy in front takes the phone to another
        node; without it the registrar keeps serving, and agents stay
        reachable for the callers still waiting here.
        """
        self._inbound.draining = True
        self._refuse_register = refuse_register

    def set_local_port(self, port: int) -> None:
        """The port actually bound (when the config asked for an ephemeral one)."""
        self._core.set_local_port(port)

    # -- interface for the shell -------------------------------------------
    def datagrams_to_send(self) -> list[tuple[bytes, Peer]]:
        core = self._core
        out, core.out = core.out, []
        return out

    def events(self) -> list[Event]:
        core = self._core
        ev, core.events = core.events, []
        return ev

    def get_timer(self) -> float | None:
        at = self._core.table.next_at()
        expiry = self.registrar.next_expiry()  # registrations run out on the same clock
        if expiry is not None and (at is None or expiry < at):
            return expiry
        return at

    def handle_timer(self, now: float) -> None:
        self.registrar.expire(now)
        for owner, name in self._core.table.due(now):
            if isinstance(owner, InboundCall):
                self._inbound.on_timer(owner, name)
            elif isinstance(owner, OutCall):
                self._outbound.on_timer(owner, name, now)
            else:
                self._fire_tx(owner, now)

    @property
    def transactions_active(self) -> int:
        return self._core.table.active

    @property
    def timer_entries(self) -> int:
        """Timer entries held: on the heap (stale ones, re-armed or cancelled, included) and far ones off it."""
        return self._core.table.entries

    @property
    def server_transactions(self) -> int:
        """Server transactions held (capped by ``UaConfig.max_transactions``)."""
        return len(self._core.table.server)

    def _fire_tx(self, tx: Transaction, now: float) -> None:
        core = self._core
        send, timeout = tx.fire(now)
        if send is not None:
            core.send(send, tx.peer)
            core.stats.retransmissions_sent += 1
        if timeout is not None:
            self._on_tx_timeout(tx, timeout, now)
        core.table.schedule(tx)

    def _on_tx_timeout(self, tx: Transaction, timeout: Timeout, now: float) -> None:
        if isinstance(tx, ServerInviteTransaction):
            owner = tx.owner
            if isinstance(owner, InboundCall):
                self._inbound.on_invite_timeout(owner, timeout, now)
            elif isinstance(owner, OutCall) and timeout is Timeout.NO_ACK:
                self._outbound.on_reinvite_timeout(owner, tx, now)
        elif isinstance(tx, ClientInviteTransaction) and timeout is Timeout.NO_RESPONSE:
            self._outbound.on_invite_timeout(tx, now)  # Timer B

    # -- what arrives ------------------------------------------------------------
    def receive(self, data: bytes, peer: Peer, now: float) -> None:
        self._core.table.now = now
        try:
            msg = parse_message(data)
        except SipParseError as exc:
            self._on_malformed(data, exc, peer)
            return
        if isinstance(msg, Request):
            try:
                self._on_request(msg, peer, now)
            except SipParseError as exc:  # a header parsed lazily was bad
                self._on_malformed(data, exc, peer)
        else:
            self._on_response(msg, now)

    def _on_malformed(self, data: bytes, exc: SipParseError, peer: Peer) -> None:
        """Answer a bad request with the status its error carries when it has what a response needs; else drop it."""
        core = self._core
        req = exc.partial if exc.partial is not None else None
        if exc.status is not None and req is None:
            req = parse_headers_only(data)
        if (
            exc.status is not None
            and req is not None
            and req.method != "ACK"
            and all(req.get(h) is not None for h in ("via", "call-id", "cseq", "from", "to"))
        ):
            why = exc.reason.replace("\r", " ").replace("\n", " ")[:120]
            status = exc.status
            phrase = "Version Not Supported" if status == 505 else f"Bad Request ({why})"
            extra = (("Server", core.config.user_agent),)
            resp = build_response(req, status, phrase, to_tag=core.token(), extra=extra)
            core.send(resp.to_bytes(), peer)
            core.stats.malformed["answered"] += 1
            core.stats.count_response(req.method, status)
        else:
            core.stats.malformed["dropped"] += 1

    @staticmethod
    def _tx_key(req: Request, method: str) -> tuple[str, str, str]:
        via = req.top_via
        branch = via.branch
        if branch.startswith(MAGIC_COOKIE):
            return (branch, via.sent_by, method)
        # RFC 2543 peer: key on the dialog-ish identifiers (17.2.3 fallback)
        return (f"{req.call_id}|{req.from_.tag}|{req.cseq[0]}|{branch}", via.sent_by, method)

    def _on_request(self, req: Request, peer: Peer, now: float) -> None:
        core, inbound, outbound = self._core, self._inbound, self._outbound
        method = req.method
        core.stats.count_request(method)
        if method == "ACK":
            self._on_ack(req, now)
            return
        key = self._tx_key(req, "INVITE" if method == "INVITE" else method)
        tx = core.table.server.get(key)
        if tx is not None:
            # a copy of a request we already have: resend the last answer
            core.stats.retransmissions_received += 1
            resend = tx.receive_request(now)
            if resend is not None:
                core.send(resend, peer)
                core.stats.retransmissions_sent += 1
            return
        if len(core.table.server) >= core.config.max_transactions:
            # distinct branches by the hundred thousand: memory stays bounded, copies of held ones still answered
            core.stats.transactions_refused += 1
            return
        reliable = peer[0] != "udp"
        if method == "INVITE":
            itx = ServerInviteTransaction(key, peer, reliable, core.tv)
            core.table.server[key] = itx
            if not req.to.tag:
                inbound.on_invite(req, itx, peer, now)
            elif (call := inbound.dialog_for(req)) is not None:
                inbound.on_reinvite(call, req, itx, now)
            elif (out := outbound.dialog_for(req)) is not None:
                outbound.on_reinvite(out, req, itx, now)
            else:
                core.respond(itx, req, 481, now)
            return
        ntx = ServerNonInviteTransaction(key, peer, reliable, core.tv)
        core.table.server[key] = ntx
        if method == "CANCEL":
            inbound.on_cancel(req, ntx, key, now)
        elif method == "BYE":
            if (call := inbound.dialog_for(req)) is not None:
                inbound.on_bye(call, req, ntx, now)
            elif (out := outbound.dialog_for(req)) is not None:
                outbound.on_bye(out, req, ntx, now)
            else:
                core.respond(ntx, req, 481, now)
        elif method == "OPTIONS":
            if inbound.draining:
                # a proxy's probe: out of its rotation until this process is gone (and its successor answers 200)
                core.respond(ntx, req, 503, now, extra=_DRAINING)
            else:
                core.respond(ntx, req, 200, now, extra=_CAPABILITIES)
        elif method == "REGISTER" and self._refuse_register:
            core.respond(ntx, req, 503, now, extra=_DRAINING)
        elif method == "REGISTER":
            reply = self.registrar.register(req, peer, now)
            core.respond(ntx, req, reply.status, now, extra=reply.headers, reason=reply.reason)
        elif method in ("INFO", "NOTIFY"):
            # INFO carries keys; NOTIFY reports the progress of our REFER (RFC 3515)
            call = inbound.dialog_for(req)
            found = call is not None or outbound.dialog_for(req) is not None
            core.respond(ntx, req, 200 if found else 481, now)
            if call is not None and method == "INFO" and req.body:
                core.events.append(InfoReceived(call, req.get("content-type") or "", req.body))
        elif method in KNOWN_NOT_ALLOWED:
            core.respond(ntx, req, 405, now, extra=(("Allow", ALLOW_HEADER),))
        else:
            core.respond(ntx, req, 501, now, extra=(("Allow", ALLOW_HEADER),))

    def _on_ack(self, req: Request, now: float) -> None:
        tx = self._core.table.server.get(self._tx_key(req, "INVITE"))
        if isinstance(tx, ServerInviteTransaction) and tx.state in (TxState.COMPLETED, TxState.CONFIRMED):
            # ACK for a non-2xx final response belongs to the transaction
            if not tx.receive_ack(now):
                self.stats.retransmissions_received += 1
            self._core.table.schedule(tx)
        elif (call := self._inbound.dialog_for(req)) is not None:
            self._inbound.on_ack(call, req, now)
        elif (out := self._outbound.dialog_for(req)) is not None:
            self._outbound.on_ack(out, req, now)
        # else a stray ACK: nothing to answer (17.2.3)

    def _on_response(self, resp: Response, now: float) -> None:
        core = self._core
        stats = core.stats
        _num, method = resp.cseq
        key = (resp.top_via.branch, method)
        stats.count_response_received(method, resp.status)
        tx = core.table.client.get(key)
        if tx is None:
            if method == "INVITE" and 200 <= resp.status < 300 and self._outbound.resend_ack(resp):
                # a copy of the 2xx (its transaction ended with the first one): ACK it again (13.2.2.4)
                stats.retransmissions_received += 1
                return
            stats.stray_responses += 1
            return
        if isinstance(tx, ClientNonInviteTransaction):
            if not tx.receive_response(resp.status, now):
                stats.retransmissions_received += 1
            elif resp.status >= 200 and method == "REFER":
                self._inbound.on_refer_response(key, resp.status)
        else:
            self._outbound.on_invite_response(tx, resp, now)
        core.table.schedule(tx)

    # -- commands for calls to us ---------------------------------------------------
    def ring(self, call: InboundCall, now: float) -> None:
        """Send 180 Ringing (the caller hears ringback)."""
        self._inbound.ring(call, now)

    def answer(self, call: InboundCall, now: float, rtp_port: int | None = None) -> None:
        """Send 200 OK with our SDP (audio on ``rtp_port``); ANSWERED until the ACK."""
        self._inbound.answer(call, now, rtp_port)

    def reject(self, call: InboundCall, status: int, now: float, reason: str | None = None) -> None:
        """Refuse a ringing call with a final error response."""
        self._inbound.reject(call, status, now, reason)

    def hangup(self, call: InboundCall, now: float, outcome: Outcome = Outcome.COMPLETED) -> None:
        """End the call from our side: BYE when answered, 480 while ringing."""
        self._inbound.hangup(call, now, outcome)

    def refer(self, call: InboundCall, target: str, now: float) -> None:
        """Blind transfer (RFC 3515): ask the caller's phone to call ``target``.

        The final response comes back as :class:`ReferAnswered`; the router
        hangs up once the transfer is accepted.
        """
        self._inbound.refer(call, target, now)

    def update_connected(self, call: InboundCall, display: str, user: str, now: float) -> bool:
        """Tell the caller's phone who it is now talking to (connected line).

        An UPDATE (RFC 3311) without a body, carrying the new party in
        P-Asserted-Identity (RFC 3325), as PBXs do when a queue's agent
        answers; the phone shows it, and a load generator learns its caller
        was answered. Sent only to a confirmed call whose INVITE listed
        UPDATE in Allow; returns whether it was sent. The response needs no
        action: a phone that refuses it just shows nothing new.
        """
        return self._inbound.update_connected(call, display, user, now)

    def set_call_timer(self, call: InboundCall, name: str, at: float) -> None:
        """Arm (or re-arm) a named timer; fires as a CallTimer event."""
        self._core.table.arm(call, name, at)

    def cancel_call_timer(self, call: InboundCall, name: str) -> None:
        self._core.table.disarm(call, name)

    # -- commands for calls we place (UAC) ---------------------------------------------
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
        return self._outbound.place_call(
            target,
            peer,
            rtp_port,
            now,
            from_user=from_user,
            from_display=from_display,
            call_id=call_id,
            extra_headers=extra_headers,
        )

    def drop(self, call: OutCall, now: float) -> None:
        """End a call we placed: CANCEL while it rings (OutFailed 487), BYE once answered (OutEnded)."""
        self._outbound.drop(call, now)

    def transport_error(self, peer: Peer, now: float) -> None:
        """The shell could not reach ``peer``: calls we place there and not yet answered fail with 503 (8.1.3.1)."""
        self._outbound.transport_error(peer, now)


_CAPABILITIES = (("Allow", ALLOW_HEADER), ("Accept", "application/sdp"), ("Accept-Language", "en"))
_DRAINING = (("Retry-After", str(DRAIN_RETRY_AFTER)),)
