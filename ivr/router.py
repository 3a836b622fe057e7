"""The call router: the transaction user that decides what happens to a call.

Pure code over :class:`ivr.sip.ua.UserAgent`: it reacts to the core's
events and answers with commands, ``now`` passed in. For now every call is
answered after ``answer_delay`` (ringback) and the router hangs up after
``hold_time``; media, IVR flows and queues plug in here later.

R1: whatever else happens, a call that is still ringing when its ring limit
is reached is answered then; no caller is left ringing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .records import CallSummary
from .sip.ua import Call, CallConfirmed, CallEnded, CallState, CallTimer, Event, IncomingCall, UserAgent


@dataclass(frozen=True, slots=True)
class RouterSettings:
    ring_limit: float = 10.0
    answer_delay: float = 0.0
    hold_time: float = 30.0


class CallRouter:
    def __init__(
        self,
        ua: UserAgent,
        settings: RouterSettings,
        on_record: Callable[[CallSummary], None] | None = None,
        wall_offset: float = 0.0,
    ) -> None:
        self.ua = ua
        self.settings = settings
        self.on_record = on_record
        # loop clock -> wall clock for the records (the core only knows `now`)
        self.wall_offset = wall_offset

    def handle(self, events: list[Event], now: float) -> None:
        ua = self.ua
        s = self.settings
        for ev in events:
            if isinstance(ev, IncomingCall):
                call = ev.call
                ua.ring(call, now)
                if s.answer_delay <= 0:
                    ua.answer(call, now)
                else:
                    ua.set_call_timer(call, "answer", call.t_invite + s.answer_delay)
                    ua.set_call_timer(call, "ring_limit", call.t_invite + s.ring_limit)
            elif isinstance(ev, CallConfirmed):
                ua.set_call_timer(ev.call, "hold", now + s.hold_time)
            elif isinstance(ev, CallTimer):
                self._on_timer(ev.call, ev.name, now)
            elif isinstance(ev, CallEnded):
                self._record(ev.call)

    def _on_timer(self, call: Call, name: str, now: float) -> None:
        if name in ("answer", "ring_limit"):
            if call.state is CallState.RINGING:
                self.ua.answer(call, now)
        elif name == "hold":
            self.ua.hangup(call, now)

    def _record(self, call: Call) -> None:
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
                hangup_by=call.hangup_by,
                end_status=call.end_status,
                transport=call.peer[0],
            )
        )
