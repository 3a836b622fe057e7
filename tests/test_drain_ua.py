"""A draining user agent (``UserAgent.drain``): no new dialog, everything inside the dialogs it has goes on.

Sans-IO, on the stepped clock of tests/support/sip.py: OPTIONS and new INVITEs
get 503 with Retry-After (a proxy's probe takes the node out, its failure route
tries the next node), while ACK, BYE, re-INVITE, INFO and CANCEL of the calls
in progress are served as before. REGISTER is served unless the drain refuses
it (cluster mode: the proxy takes the phone to another node).
"""

from __future__ import annotations

from support.sip import Caller, Harness, responses, sdp_offer, statuses

from ivr.calls.router import RouterSettings
from ivr.sip.ua import CallTerminated, InboundState, Outcome


def caller_with_a_call(h: Harness, call_id: str = "before@127.0.0.1", *, ack: bool = True) -> Caller:
    caller = Caller(call_id=call_id, branch=f"z9hG4bK-{call_id.split('@')[0]}")
    got = responses(h.deliver(caller.invite()))
    assert [r.status for r in got] == [100, 200]
    caller.learn(got[-1])
    if ack:
        assert h.deliver(caller.ack_2xx()) == []
    return caller


def register(cseq: int = 1, branch: str = "z9hG4bK-reg-1") -> bytes:
    lines = [
        "REGISTER sip:127.0.0.1:5060 SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch};rport",
        "Max-Forwards: 70",
        "From: <sip:8001@127.0.0.1>;tag=reg-tag",
        "To: <sip:8001@127.0.0.1>",
        "Call-ID: reg-1@127.0.0.1",
        f"CSeq: {cseq} REGISTER",
        "Contact: <sip:8001@127.0.0.1:5070>",
        "Expires: 120",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def test_a_draining_ua_answers_options_503_with_retry_after_and_200_before() -> None:
    h = Harness()
    assert h.ua.draining is False
    assert statuses(h.deliver(Caller().request("OPTIONS", body=b""))) == [200]
    h.ua.drain()
    assert h.ua.draining is True
    got = responses(h.deliver(Caller(call_id="probe-2@x").request("OPTIONS", body=b"")))
    assert [r.status for r in got] == [503]
    assert got[0].get("retry-after") == "5"
    assert got[0].to.tag != ""


def test_a_draining_ua_refuses_a_new_invite_with_503_and_records_it_rejected() -> None:
    h = Harness(RouterSettings(hold_time=100.0))
    h.ua.drain()
    caller = Caller(call_id="new@127.0.0.1", branch="z9hG4bK-new")
    got = responses(h.deliver(caller.invite()))
    assert [r.status for r in got] == [503]
    assert got[0].get("retry-after") == "5"
    assert h.ua.calls == {}
    # its ACK ends the transaction; the refusal is a rejected call, not an overload
    assert h.deliver(caller.ack_non_2xx(got[0].to.tag)) == []
    assert h.ua.stats.calls_rejected_overload == 0
    [ended] = h.events_of(CallTerminated)
    assert ended.call.outcome is Outcome.REJECTED and ended.call.end_status == 503
    assert [r.outcome for r in h.records] == ["rejected"]


def test_a_draining_ua_serves_the_dialogs_it_has_bye_reinvite_info() -> None:
    h = Harness(RouterSettings(hold_time=100.0))
    talking = caller_with_a_call(h, "talking@127.0.0.1")
    unacked = caller_with_a_call(h, "unacked@127.0.0.1", ack=False)
    h.ua.drain()
    # the ACK of an answer sent before the drain confirms that call
    assert h.deliver(unacked.ack_2xx()) == []
    assert h.ua.calls[unacked.call_id].state is InboundState.CONFIRMED
    # a re-INVITE in a dialog is answered 200, and its ACK taken
    reinvite = talking.request("INVITE", to_tag=talking.to_tag, cseq=2, body=sdp_offer("8 101", port=4002))
    assert statuses(h.deliver(reinvite)) == [200]
    assert h.deliver(talking.ack_2xx(cseq=2)) == []
    # INFO (a key) in the dialog
    assert statuses(h.deliver(talking.request("INFO", to_tag=talking.to_tag, cseq=3, body=b""))) == [200]
    # BYE ends the calls as always
    assert statuses(h.deliver(talking.bye(cseq=4))) == [200]
    assert statuses(h.deliver(unacked.bye(cseq=2))) == [200]
    assert h.ua.calls == {}
    assert [e.call.outcome for e in h.events_of(CallTerminated)] == [Outcome.COMPLETED, Outcome.COMPLETED]


def test_a_caller_ringing_when_the_drain_starts_can_still_cancel() -> None:
    h = Harness(RouterSettings(answer_delay=5.0, ring_limit=10.0))
    caller = Caller(call_id="ringing@127.0.0.1", branch="z9hG4bK-ringing")
    assert statuses(h.deliver(caller.invite())) == [100, 180]
    h.ua.drain()
    assert sorted(statuses(h.deliver(caller.cancel()))) == [200, 487]
    assert h.events_of(CallTerminated)[0].call.outcome is Outcome.CANCELLED


def test_register_while_draining_is_served_on_one_node_and_refused_503_in_a_cluster() -> None:
    served = Harness()
    served.ua.drain()
    # no agents configured: the registrar challenges (401), which is the registrar still serving
    assert statuses(served.deliver(register())) == [401]
    refused = Harness()
    refused.ua.drain(refuse_register=True)
    got = responses(refused.deliver(register()))
    assert [r.status for r in got] == [503]
    assert got[0].get("retry-after") == "5"
    assert refused.ua.stats.responses_sent[("REGISTER", 503)] == 1
