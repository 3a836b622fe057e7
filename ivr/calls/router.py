"""The call router: the transaction user that decides what happens to a call.

It reacts to the SIP core's events with commands, ``now`` passed in.
Every call is answered after ``answer_delay`` of ringback. With IVR
services (the server always has them; core tests run without) the answer
opens the call's RTP stream and the ACK starts the IVR flow, which decides
what the caller hears and when the call ends (media events reach the IVR
call through ``ivr.calls.ivrcall.MediaEventSink``). Without them the router
hangs up after ``hold_time``. ``hold_time`` is also the longest any answered
call is kept.

R1: whatever else happens, a call that is still ringing when its ring limit
is reached is answered then; no caller is left ringing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from ivr.calls.dialer import Leg
from ivr.calls.ivrcall import IvrCall, IvrServices
from ivr.calls.legs import use_answer
from ivr.calls.queues import Ring
from ivr.media.dtmf import parse_dtmf_info
from ivr.sip.ua import (
    CallConfirmed,
    CallTerminated,
    CallTimer,
    Event,
    InboundCall,
    InboundState,
    IncomingCall,
    InfoReceived,
    OutAnswered,
    Outcome,
    OutEnded,
    OutFailed,
    OutRinging,
    ReferAnswered,
    UserAgent,
)
from ivr.storage.records import CallSummary

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RouterSettings:
    ring_limit: float = 10.0
    answer_delay: float = 0.0
    hold_time: float = 30.0


class CallRouter:
    """The SIP shell's transaction user: :meth:`handle` takes the core's events for every call."""

    def __init__(
        self,
        ua: UserAgent,
        settings: RouterSettings,
        on_record: Callable[[CallSummary], None] | None = None,
        wall_offset: float = 0.0,
        ivr: IvrServices | None = None,
    ) -> None:
        self.ua = ua
        self.settings = settings
        self.on_record = on_record
        # loop clock -> wall clock for the records (the core only knows `now`)
        self.wall_offset = wall_offset
        self.ivr = ivr
        self.ivr_calls: dict[InboundCall, IvrCall] = {}

    # -- SIP events --------------------------------------------------------------
    def handle(self, events: list[Event], now: float) -> None:
        ua = self.ua
        s = self.settings
        for ev in events:
            if isinstance(ev, IncomingCall):
                call = ev.call
                if s.answer_delay <= 0:
                    self._answer(call, now)  # answered in the same turn: a 180 would never show
                else:
                    ua.ring(call, now)
                    ua.set_call_timer(call, "answer", call.t_invite + s.answer_delay)
                    ua.set_call_timer(call, "ring_limit", call.t_invite + s.ring_limit)
            elif isinstance(ev, CallConfirmed):
                call = ev.call
                ua.set_call_timer(call, "hold", now + s.hold_time)
                ivr = self.ivr_calls.get(call)
                if ivr is not None:
                    use_answer(ivr.stream, call)  # an offer of ours answered in the ACK, if we made one
                    ivr.start(now)
            elif isinstance(ev, CallTimer):
                self._on_timer(ev.call, ev.name, now)
            elif isinstance(ev, InfoReceived):
                ivr = self.ivr_calls.get(ev.call)
                key = parse_dtmf_info(ev.content_type, ev.body)
                if ivr is not None and key is not None:
                    ivr.key(key, "info", now)
            elif isinstance(ev, ReferAnswered):
                # the caller's phone accepted the transfer: our part is done
                outcome = Outcome.TRANSFERRED if 200 <= ev.status < 300 else Outcome.COMPLETED
                ua.hangup(ev.call, now, outcome)
            elif isinstance(ev, CallTerminated):
                self._ended(ev.call, now)
            elif isinstance(ev, (OutRinging, OutAnswered, OutFailed, OutEnded)):
                # calls we placed: rings of the live queues, or legs of a callback
                owner = ev.call.owner
                queues = self.ivr.queues if self.ivr is not None else None
                if isinstance(owner, Ring) and queues is not None:
                    queues.on_sip_event(ev)
                elif isinstance(owner, Leg):
                    owner.on_out_event(ev)
                elif not isinstance(ev, (OutFailed, OutEnded)):
                    ua.drop(ev.call, now)

    def _answer(self, call: InboundCall, now: float) -> None:
        if self.ivr is None:
            self.ua.answer(call, now)
            return
        neg = call.negotiated
        try:
            if neg is not None:
                remote = (neg.remote_address, neg.remote_port)
                stream = self.ivr.media.open(
                    remote, neg.codec, neg.payload_type, neg.dtmf_payload_type, signalling_host=call.peer[1]
                )
            else:
                # no offer in the INVITE: we offer, the answer comes in the ACK
                stream = self.ivr.media.open((call.peer[1], 9), "PCMU", 0, 101, signalling_host=call.peer[1])
        except OSError:
            log.warning("no RTP port free: refusing call %s", call.call_id)
            self.ua.reject(call, 503, now)
            return
        self.ivr_calls[call] = IvrCall(self.ivr, self.ua, call, stream)
        self.ua.answer(call, now, rtp_port=stream.local_port)

    def _on_timer(self, call: InboundCall, name: str, now: float) -> None:
        if name in ("answer", "ring_limit"):
            if call.state is InboundState.RINGING:
                self._answer(call, now)
        elif name == "hold":
            self.ua.hangup(call, now)
        elif name.startswith("ivr:"):
            ivr = self.ivr_calls.get(call)
            if ivr is not None:
                ivr.on_timer(name, now)

    def _ended(self, call: InboundCall, now: float) -> None:
        ivr = self.ivr_calls.pop(call, None)
        if ivr is not None:
            if call.hangup_by == "caller":
                ivr.hung_up(now)
            assert self.ivr is not None
            if self.ivr.queues is not None:
                self.ivr.queues.caller_gone(call.call_id, now)
            self.ivr.media.close(ivr.stream)
            # the stream no longer calls back into its call: call and stream go with their last reference, at
            # once, not with the garbage collector's next walk of every call still held (a reference cycle)
            ivr.stream.owner = None
        self._record(call, ivr)

    # -- records ---------------------------------------------------------------------
    def _record(self, call: InboundCall, ivr: IvrCall | None) -> None:
        if self.on_record is None:
            return
        off = self.wall_offset
        self.on_record(
            CallSummary(
                call_id=call.call_id,
                caller=call.caller,
                called=call.called,
                invite_at=call.t_invite + off,
                answer_at=call.t_answer + off if call.t_answer is not None else None,
                end_at=(call.t_end if call.t_end is not None else call.t_invite) + off,
                outcome=call.outcome.value if call.outcome else "failed",
                hangup_by="agent" if ivr is not None and ivr.agent_hung_up else call.hangup_by,
                end_status=call.end_status,
                transport=call.peer[0],
                complaint=ivr.complaint if ivr else None,
                ivr_path=" ".join(ivr.path) if ivr and ivr.path else None,
                keys="".join(ivr.keys)[:255] if ivr and ivr.keys else None,  # column width
                ivr_outcomes=",".join(ivr.outcomes) if ivr and ivr.outcomes else None,
                recording=ivr.recording if ivr else None,
            )
        )
