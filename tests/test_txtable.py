"""The transaction table's one timer heap: a call's far timers wait off it, so an ended call is not held."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry
from support.sip import PEER, Caller, Harness, responses, statuses

from ivr.calls.router import RouterSettings
from ivr.sip.dialogs import InboundCall
from ivr.sip.txtable import FAR
from ivr.sip.ua import CallTimer
from ivr.web.metrics import SipCollector


def confirmed(h: Harness, n: int) -> tuple[Caller, InboundCall]:
    caller = Caller(call_id=f"call-{n}@127.0.0.1", from_tag=f"tag-{n}", branch=f"z9hG4bK-inv-{n}")
    for r in responses(h.deliver(caller.invite(), PEER)):
        caller.learn(r)
    assert h.deliver(caller.ack_2xx(), PEER) == []
    (call,) = [c for c in h.ua.calls.values() if c.call_id == caller.call_id]
    return caller, call


def test_a_far_timer_waits_off_the_heap_and_fires_on_time_once() -> None:
    h = Harness(RouterSettings(hold_time=3 * FAR + 0.5))
    _, call = confirmed(h, 1)
    table = h.ua._core.table
    assert (call, "hold") in table._far
    assert all(entry[2] is not call for entry in table._heap)
    h.advance(3 * FAR + 0.5)  # the stepped clock asserts it never runs past a due timer
    fired = [(t, e.name) for t, e in h.events if isinstance(e, CallTimer)]
    assert fired == [(3 * FAR + 0.5, "hold")]
    assert table._far == {}


def test_re_arming_and_cancelling_a_far_timer_leave_nothing_behind() -> None:
    h = Harness(RouterSettings(hold_time=1000.0))
    _, call = confirmed(h, 1)
    table = h.ua._core.table
    h.ua.set_call_timer(call, "hold", 5.0)  # brought near: onto the heap, the far entry gone
    assert table._far == {}
    h.ua.set_call_timer(call, "hold", 500.0)  # far again
    h.ua.set_call_timer(call, "extra", 700.0)
    h.ua.cancel_call_timer(call, "extra")
    assert list(table._far) == [(call, "hold")]
    h.advance(500.0)
    assert [(t, e.name) for t, e in h.events if isinstance(e, CallTimer)] == [(500.0, "hold")]


def test_ended_calls_are_let_go_while_their_hold_timers_are_an_hour_away() -> None:
    """A surge's ended calls do not pile up behind timers an hour ahead, nor behind their transactions."""
    h = Harness(RouterSettings(hold_time=3600.0))  # the server's default
    calls = 2000
    for n in range(calls):
        caller = confirmed(h, n)[0]  # (not the call: a local would hold the last one)
        assert statuses(h.deliver(caller.bye())) == [200]
        h.events.clear()  # the harness would hold every call through its CallTerminated
        h.records.clear()
        if n % 50 == 49:
            h.advance(h.now + 1.0)  # 50 calls/s: Timer L and J end each call's transactions 32 s on
    assert h.ua.calls == {}
    assert h.ua._core.table._far == {}
    alive = sum(isinstance(o, InboundCall) for o in gc.get_objects())
    assert alive == 0, f"{alive} of {calls} ended calls still alive"
    assert h.ua.timer_entries <= 2 * 32 * 50 + 100  # each call's two transactions for 32 s, and no more
    registry = CollectorRegistry()
    registry.register(SipCollector(h.ua))
    assert registry.get_sample_value("frontdesk_sip_timer_entries") == h.ua.timer_entries
