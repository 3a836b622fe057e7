"""The user agent and the call router against an in-memory caller, on a stepped virtual clock.

No sockets and no sleeps: the caller and the harness (tests/support/sip.py)
build request bytes, hand them to :class:`UserAgent` with ``now``, run the
router on the events and collect what the user agent sends back.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from support.sip import PEER, TICK, Caller, Harness, responses, sdp_offer, statuses

from ivr.calls.router import CallRouter, RouterSettings
from ivr.sip.message import Request, Response, parse_message
from ivr.sip.sdp import parse_sdp
from ivr.sip.ua import (
    CallConfirmed,
    CallTerminated,
    CallTimer,
    InboundState,
    IncomingCall,
    Outcome,
    UaConfig,
    UserAgent,
)

T1, T2, T4 = 0.5, 4.0, 5.0
TCP_PEER = ("tcp", "127.0.0.1", 5070)


def first_line(data: bytes) -> bytes:
    return data.split(b"\r\n", 1)[0]


def answered_call(h: Harness, caller: Caller, *, ack: bool = True, peer: tuple[str, str, int] = PEER) -> list[Response]:
    got = responses(h.deliver(caller.invite(), peer))
    for r in got:
        caller.learn(r)
    if ack:
        assert h.deliver(caller.ack_2xx(), peer) == []
    return got


# ---------------------------------------------------------------------------
# a call from INVITE to BYE


@pytest.mark.parametrize(
    ("offer", "codec", "pt"),
    [("0 8 101", "PCMU", 0), ("8 0 101", "PCMA", 8), ("18 8 101", "PCMA", 8)],
)
def test_invite_answered_at_once_gets_100_and_200_with_an_sdp_answer(offer: str, codec: str, pt: int) -> None:
    h = Harness()
    caller = Caller()
    got = responses(h.deliver(caller.invite(sdp_offer(offer))))
    # answered in the turn that read the INVITE: no 180 (a phone would never show it)
    assert [r.status for r in got] == [100, 200]
    trying, ok = got
    assert trying.to.tag == "" and ok.to.tag != ""
    for r in got:
        assert r.call_id == caller.call_id
        assert r.cseq == (1, "INVITE")
        assert r.from_.tag == caller.from_tag
        # RFC 3581: rport and received filled in on the top Via
        assert r.get_all("via") == [f"SIP/2.0/UDP 127.0.0.1:5070;branch={caller.branch};rport=5070;received=127.0.0.1"]
    assert ok.get("contact") == "<sip:frontdesk@127.0.0.1:5060>"
    assert ok.get("content-type") == "application/sdp"
    answer = parse_sdp(ok.body)
    assert answer.payloads == [pt, 101]
    assert answer.codec_name(pt) == codec
    assert answer.rtpmap[101] == "telephone-event/8000"
    assert answer.address == "127.0.0.1"
    assert 20000 <= answer.port <= 30000 and answer.port % 2 == 0
    assert answer.direction == "sendrecv"
    incoming = h.events_of(IncomingCall)
    assert len(incoming) == 1
    call = incoming[0].call
    assert call.caller == "5551234"
    assert call.called == "100"
    assert call.state is InboundState.ANSWERED
    assert call.negotiated is not None
    assert (call.negotiated.codec, call.negotiated.payload_type) == (codec, pt)
    assert (call.negotiated.dtmf_payload_type, call.negotiated.remote_port) == (101, 4000)


def test_offer_without_telephone_event_is_answered_without_it() -> None:
    h = Harness()
    caller = Caller()
    ok = responses(h.deliver(caller.invite(sdp_offer("8"))))[-1]
    assert ok.status == 200
    answer = parse_sdp(ok.body)
    assert answer.payloads == [8]
    assert 101 not in answer.rtpmap


def test_ack_confirms_the_call_and_stops_200_retransmissions() -> None:
    h = Harness(RouterSettings(hold_time=100.0))
    caller = Caller()
    answered_call(h, caller, ack=False)
    retrans = h.advance(2.0)
    assert [first_line(d) for d in retrans] == [b"SIP/2.0 200 OK"] * 2  # at 0.5 and 1.5
    assert [t for t, _ in h.sent_between(0.1, 2.0)] == [0.5, 1.5]
    assert h.events_of(CallConfirmed) == []
    assert h.deliver(caller.ack_2xx()) == []
    confirmed = h.events_of(CallConfirmed)
    assert len(confirmed) == 1
    call = confirmed[0].call
    assert call.state is InboundState.CONFIRMED
    # the router arms the hold timer from the confirmation
    assert call.timers == {"hold": 2.0 + 100.0}
    assert h.advance(60.0) == []
    assert h.events_of(CallTerminated) == []
    assert h.ua.calls == {caller.call_id: call}
    # the INVITE transaction ended by Timer L (32 s after the 200)
    assert h.ua.transactions_active == 0


def test_caller_bye_gets_200_and_ends_the_call() -> None:
    h = Harness()
    caller = Caller()
    answered_call(h, caller)
    h.advance(3.0)
    got = responses(h.deliver(caller.bye()))
    assert [r.status for r in got] == [200]
    assert got[0].cseq == (2, "BYE")
    assert got[0].to.tag == caller.to_tag
    ended = h.events_of(CallTerminated)
    assert len(ended) == 1
    call = ended[0].call
    assert call.outcome is Outcome.COMPLETED
    assert call.hangup_by == "caller"
    assert call.t_end == 3.0
    assert h.ua.calls == {}
    assert len(h.records) == 1
    rec = h.records[0]
    assert (rec.outcome, rec.hangup_by, rec.caller, rec.called) == ("completed", "caller", "5551234", "100")
    assert (rec.invite_at, rec.answer_at, rec.end_at) == (0.0, 0.0, 3.0)
    # a copy of the BYE gets the same 200; a BYE after the end gets 481
    assert h.deliver(caller.bye(branch=caller_branch_of(got[0]))) == [h.sent[-1][1]]
    assert statuses(h.deliver(caller.bye(cseq=3))) == [481]


def ok_for(req: Request) -> bytes:
    """The caller's 200 to a request we sent (it copies Via, From, To, Call-ID, CSeq)."""
    headers = [(k, v) for k, v in req.headers if k in ("via", "from", "to", "call-id", "cseq")]
    return Response(headers=headers, status=200, reason="OK").to_bytes()


def caller_branch_of(resp: Response) -> str:
    return resp.top_via.branch


def test_connected_line_update_goes_only_to_a_phone_that_allows_update() -> None:
    """When a queue's agent answers, the caller's phone is told who: UPDATE + P-Asserted-Identity."""
    h = Harness(RouterSettings(hold_time=100.0))
    caller = Caller()
    got = responses(h.deliver(caller.invite(headers=("Allow: INVITE, ACK, BYE, CANCEL, update",))))
    for r in got:
        caller.learn(r)
    call = h.ua.calls[caller.call_id]
    assert not h.ua.update_connected(call, "a01 (general)", "a01", h.now)  # not before the ACK
    assert h.ua.datagrams_to_send() == []
    assert h.deliver(caller.ack_2xx()) == []
    h.now = 2.0
    assert h.ua.update_connected(call, 'a01 "the" (general)', "a01", h.now)
    sent = h.ua.datagrams_to_send()
    assert len(sent) == 1
    update = parse_message(sent[0][0])
    assert isinstance(update, Request)
    assert (update.method, update.uri, update.cseq) == ("UPDATE", "sip:5551234@127.0.0.1:5070", (1, "UPDATE"))
    assert (update.from_.tag, update.to.tag) == (caller.to_tag, caller.from_tag)
    assert update.get("p-asserted-identity") == '"a01 the (general)" <sip:a01@127.0.0.1>'
    assert update.get("contact") == "<sip:frontdesk@127.0.0.1:5060>"
    assert update.body == b""
    assert h.deliver(ok_for(update)) == []
    assert h.advance(40.0) == []  # answered: no retransmission; the call goes on
    assert h.ua.stats.responses_received == {("UPDATE", 200): 1}
    assert h.ua.calls[caller.call_id].state is InboundState.CONFIRMED
    # a phone that did not list UPDATE hears nothing new
    other = Caller(call_id="call-2@127.0.0.1", from_tag="caller-tag-2", branch="z9hG4bK-invite-2")
    answered_call(h, other)
    assert not h.ua.update_connected(h.ua.calls[other.call_id], "a01 (general)", "a01", h.now)
    assert h.ua.datagrams_to_send() == []


def test_hold_time_ends_the_call_with_bye_retransmitted_until_200() -> None:
    h = Harness(RouterSettings(hold_time=5.0))
    caller = Caller()
    answered_call(h, caller)
    assert h.advance(4.5) == []
    sent = h.advance(5.0)
    assert len(sent) == 1
    bye = parse_message(sent[0])
    assert isinstance(bye, Request)
    assert bye.method == "BYE"
    assert bye.uri == "sip:5551234@127.0.0.1:5070"  # the caller's Contact
    assert bye.call_id == caller.call_id
    assert bye.from_.tag == caller.to_tag  # our tag
    assert bye.to.tag == caller.from_tag
    assert bye.cseq == (1, "BYE")
    assert bye.top_via.branch.startswith("z9hG4bK")
    ended = h.events_of(CallTerminated)
    assert len(ended) == 1
    call = ended[0].call
    assert (call.outcome, call.hangup_by, call.t_end) == (Outcome.COMPLETED, "frontdesk", 5.0)
    # Timer E: 5.5, 6.5, 8.5 (T1, 2T1, 4T1) until the caller answers
    retrans = h.advance(9.0)
    assert retrans == [sent[0]] * 3
    assert [t for t, _ in h.sent_between(5.25, 9.0)] == [5.5, 6.5, 8.5]
    assert h.deliver(ok_for(bye)) == []
    assert h.advance(40.0) == []
    assert h.ua.stats.responses_received == {("BYE", 200): 1}
    assert h.ua.transactions_active == 0
    assert h.ua.get_timer() is None


def test_hold_time_bye_without_any_answer_gives_up_after_64_t1() -> None:
    h = Harness(RouterSettings(hold_time=5.0))
    caller = Caller()
    answered_call(h, caller)
    h.advance(100.0)
    byes = [(t, d) for t, d, _ in h.sent if d.startswith(b"BYE ")]
    assert [t for t, _ in byes] == [5.0, 5.5, 6.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5, 32.5, 36.5]
    assert h.ua.transactions_active == 0
    assert h.ua.get_timer() is None


# ---------------------------------------------------------------------------
# CANCEL, retransmissions, missing ACK


def test_cancel_before_answer_gets_200_and_487_and_the_ack_stops_timer_g() -> None:
    h = Harness(RouterSettings(answer_delay=2.0, ring_limit=10.0))
    caller = Caller()
    got = responses(h.deliver(caller.invite()))
    assert [r.status for r in got] == [100, 180]
    h.advance(1.0)
    got = responses(h.deliver(caller.cancel()))
    assert [(r.status, r.cseq[1]) for r in got] == [(200, "CANCEL"), (487, "INVITE")]
    cancel_ok, terminated = got
    assert terminated.to.tag == responses([h.sent[1][1]])[0].to.tag  # same tag as the 180
    assert cancel_ok.to.tag == terminated.to.tag
    ended = h.events_of(CallTerminated)
    assert len(ended) == 1
    call = ended[0].call
    assert (call.outcome, call.hangup_by, call.t_end) == (Outcome.CANCELLED, "caller", 1.0)
    assert h.ua.calls == {}
    # Timer G: 487 again at 1.5 and 2.5; the answer timer at 2.0 must not answer
    retrans = h.advance(3.0)
    assert [first_line(d) for d in retrans] == [b"SIP/2.0 487 Request Terminated"] * 2
    assert [t for t, _ in h.sent_between(1.25, 3.0)] == [1.5, 2.5]
    assert h.deliver(caller.ack_non_2xx(terminated.to.tag)) == []
    assert h.advance(60.0) == []
    assert h.ua.transactions_active == 0
    assert h.ua.get_timer() is None
    sent = responses([d for _, d, _ in h.sent])
    finals = [(r.status, r.cseq[1]) for r in sent if r.status >= 200]
    # never a 200 for the INVITE: the 487 at 1.0 and its two copies only
    assert finals == [(200, "CANCEL"), (487, "INVITE"), (487, "INVITE"), (487, "INVITE")]


def test_cancel_after_answer_gets_200_and_changes_nothing() -> None:
    h = Harness(RouterSettings(hold_time=100.0))
    caller = Caller()
    answered_call(h, caller)
    got = responses(h.deliver(caller.cancel()))
    assert [(r.status, r.cseq[1]) for r in got] == [(200, "CANCEL")]
    assert h.events_of(CallTerminated) == []
    assert len(h.ua.calls) == 1


def test_cancel_after_the_call_ended_gets_200_with_the_calls_to_tag() -> None:
    """The INVITE transaction outlives its call by Timer L, holding only the To tag its CANCEL answer needs."""
    h = Harness()
    caller = Caller()
    ok = answered_call(h, caller)[-1]
    assert statuses(h.deliver(caller.bye())) == [200]
    (ended,) = h.events_of(CallTerminated)
    assert ended.call.invite_tx.owner is None  # the ended call is not held for 32 s by its transaction
    got = responses(h.deliver(caller.cancel()))
    assert [(r.status, r.cseq[1], r.to.tag) for r in got] == [(200, "CANCEL", ok.to.tag)]
    assert h.events_of(CallTerminated) == [ended]


def test_cancel_for_an_unknown_invite_gets_481() -> None:
    h = Harness()
    assert statuses(h.deliver(Caller(branch="z9hG4bK-nothing").cancel())) == [481]


def test_invite_retransmission_gets_the_same_bytes_and_no_second_incoming_call() -> None:
    h = Harness(RouterSettings(answer_delay=2.0, ring_limit=10.0))
    caller = Caller()
    first = h.deliver(caller.invite())
    assert statuses(first) == [100, 180]
    h.advance(0.5)
    assert h.deliver(caller.invite()) == [first[1]]  # the 180, byte for byte
    sent = h.advance(2.0)
    assert statuses(sent) == [200]
    assert h.deliver(caller.invite()) == sent
    assert len(h.events_of(IncomingCall)) == 1
    assert h.ua.stats.retransmissions_received == 2


def test_tcp_invite_has_no_200_retransmissions() -> None:
    h = Harness(RouterSettings(hold_time=100.0))
    caller = Caller(transport="TCP")
    got = answered_call(h, caller, ack=False, peer=TCP_PEER)
    assert [r.status for r in got] == [100, 200]
    assert got[-1].get("contact") == "<sip:frontdesk@127.0.0.1:5060;transport=tcp>"
    # no rport/received stamping for a connection-oriented transport
    assert got[-1].get_all("via")[0].endswith(";rport")
    assert h.advance(10.0) == []
    h.deliver(caller.ack_2xx(), TCP_PEER)
    assert len(h.events_of(CallConfirmed)) == 1


def test_200_retransmitted_until_64_t1_then_missing_ack_ends_the_call_with_bye() -> None:
    h = Harness()
    caller = Caller()
    answered_call(h, caller, ack=False)
    out = h.advance(32.25)
    times = [t for t, _ in h.sent_between(0.25, 32.25)]
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5, 32.0]
    assert [first_line(d) for d in out[:-1]] == [b"SIP/2.0 200 OK"] * 10
    bye = parse_message(out[-1])
    assert isinstance(bye, Request) and bye.method == "BYE"
    ended = h.events_of(CallTerminated)
    assert len(ended) == 1
    call = ended[0].call
    assert (call.outcome, call.hangup_by, call.t_end) == (Outcome.NO_ACK, "frontdesk", 32.0)
    assert h.records[0].outcome == "no_ack"
    assert h.ua.calls == {}


def test_ack_copies_and_stray_acks_are_ignored() -> None:
    h = Harness(RouterSettings(hold_time=100.0))
    caller = Caller()
    answered_call(h, caller)
    assert h.deliver(caller.ack_2xx()) == []
    assert len(h.events_of(CallConfirmed)) == 1
    assert h.deliver(Caller(call_id="nobody@x").ack_2xx()) == []
    assert h.ua.stats.malformed == {"dropped": 0, "answered": 0}


def test_reinvite_keeps_the_call() -> None:
    h = Harness(RouterSettings(hold_time=100.0))
    caller = Caller()
    first = answered_call(h, caller)[-1]
    first_sdp = parse_sdp(first.body)
    call = h.events_of(IncomingCall)[0].call
    h.advance(5.0)
    reinvite = caller.request("INVITE", to_tag=caller.to_tag, cseq=2, body=sdp_offer("8 101", port=4002))
    got = responses(h.deliver(reinvite))
    assert [r.status for r in got] == [200]
    ok = got[0]
    assert ok.to.tag == caller.to_tag
    assert ok.cseq == (2, "INVITE")
    answer = parse_sdp(ok.body)
    assert answer.payloads == [8, 101]
    assert answer.port == first_sdp.port  # same media port
    assert b"o=frontdesk " in ok.body and b" 2 IN IP4" in ok.body  # session version bumped
    assert call.negotiated is not None
    assert (call.negotiated.codec, call.negotiated.remote_port) == ("PCMA", 4002)
    assert h.deliver(caller.ack_2xx(cseq=2)) == []
    assert h.ua.calls == {caller.call_id: call}
    assert call.state is InboundState.CONFIRMED
    assert len(h.events_of(IncomingCall)) == 1
    assert len(h.events_of(CallConfirmed)) == 1
    assert h.events_of(CallTerminated) == []
    assert h.advance(50.0) == []  # the re-INVITE's 200 was acknowledged
    assert h.events_of(CallTerminated) == []


def test_reinvite_whose_200_is_never_acked_ends_the_session_with_bye() -> None:
    """RFC 3261 14.2 / 13.3.1.4: 2xx unacknowledged for 64*T1: the session SHOULD be ended with BYE."""
    h = Harness(RouterSettings(hold_time=1000.0))
    caller = Caller()
    answered_call(h, caller)
    h.advance(5.0)
    reinvite = caller.request("INVITE", to_tag=caller.to_tag, cseq=2, body=sdp_offer())
    assert statuses(h.deliver(reinvite)) == [200]
    out = h.advance(40.0)
    byes = {d for d in out if d.startswith(b"BYE ")}  # retransmissions are the same bytes
    assert len(byes) == 1, "no BYE sent for the unacknowledged re-INVITE 2xx"
    ended = h.events_of(CallTerminated)
    assert len(ended) == 1
    call = ended[0].call
    assert call.hangup_by == "frontdesk"
    assert call.outcome is Outcome.NO_ACK


def test_reinvite_before_the_ringing_invite_is_answered_gets_500_with_retry_after() -> None:
    """RFC 3261 14.2: a second INVITE before the final response to the first: 500 + Retry-After."""
    h = Harness(RouterSettings(answer_delay=3.0, ring_limit=10.0))
    caller = Caller()
    for r in responses(h.deliver(caller.invite())):
        caller.learn(r)
    assert caller.to_tag  # early dialog from the 180
    got = responses(h.deliver(caller.request("INVITE", to_tag=caller.to_tag, cseq=2, body=sdp_offer())))
    assert [r.status for r in got] == [500]
    assert got[0].get("retry-after") is not None
    assert 0 <= int(got[0].get("retry-after") or "-1") <= 10
    assert statuses(h.advance(3.0))[-1] == 200  # the call goes on


def test_reinvite_with_an_old_cseq_gets_500() -> None:
    h = Harness(RouterSettings(hold_time=100.0))
    caller = Caller()
    answered_call(h, caller)
    assert statuses(h.deliver(caller.request("INVITE", to_tag=caller.to_tag, cseq=1, body=sdp_offer()))) == [500]
    assert len(h.ua.calls) == 1


def test_lost_ack_then_reinvite_does_not_end_the_call() -> None:
    """The caller's ACK for our first 200 is lost and it sends a re-INVITE at once.

    Its ACK copies for CSeq 1 (sent on each 200 retransmission) and the
    re-INVITE itself show it has the 200: the call must not be torn down
    with BYE when the first INVITE's Timer L ends.
    """
    h = Harness(RouterSettings(hold_time=1000.0))
    caller = Caller()
    answered_call(h, caller, ack=False)  # the ACK for CSeq 1 is lost
    h.advance(0.25)
    got = responses(h.deliver(caller.request("INVITE", to_tag=caller.to_tag, cseq=2, body=sdp_offer())))
    assert [r.status for r in got] == [200]
    h.deliver(caller.ack_2xx(cseq=2))
    assert len(h.events_of(CallConfirmed)) == 1
    # the 200 for CSeq 1 comes again; the caller acknowledges each copy
    for _ in range(3):
        resent = h.advance(h.now + 4.0)
        if any(r.cseq == (1, "INVITE") for r in responses([d for d in resent if d.startswith(b"SIP/")])):
            h.deliver(caller.ack_2xx(cseq=1))
    out = h.advance(60.0)
    assert [d for d in out if d.startswith(b"BYE ")] == []
    assert h.events_of(CallTerminated) == []
    assert len(h.ua.calls) == 1


def test_bye_with_a_cseq_below_the_last_reinvite_gets_500() -> None:
    """RFC 3261 12.2.2: an in-dialog request with a CSeq lower than the remote sequence number is refused 500."""
    h = Harness(RouterSettings(hold_time=100.0))
    caller = Caller()
    answered_call(h, caller)
    assert statuses(h.deliver(caller.request("INVITE", to_tag=caller.to_tag, cseq=5, body=sdp_offer()))) == [200]
    h.deliver(caller.ack_2xx(cseq=5))
    assert statuses(h.deliver(caller.bye(cseq=3))) == [500]
    assert h.events_of(CallTerminated) == []
    assert statuses(h.deliver(caller.bye(cseq=6))) == [200]
    assert len(h.events_of(CallTerminated)) == 1


def test_bye_before_the_ack_ends_the_call_and_stops_the_200() -> None:
    h = Harness()
    caller = Caller()
    answered_call(h, caller, ack=False)
    h.advance(1.0)
    assert [t for t, _ in h.sent_between(0.25, 1.0)] == [0.5]
    assert statuses(h.deliver(caller.bye())) == [200]
    ended = h.events_of(CallTerminated)
    assert len(ended) == 1
    assert ended[0].call.outcome is Outcome.COMPLETED
    # the BYE shows the caller has our 2xx: no more 200 retransmissions, no BYE of ours
    assert h.advance(60.0) == []
    assert h.ua.transactions_active == 0


def test_second_invite_with_the_same_call_id_and_another_branch_gets_482() -> None:
    h = Harness(RouterSettings(hold_time=100.0))
    caller = Caller()
    answered_call(h, caller)
    got = responses(h.deliver(Caller(branch="z9hG4bK-merged").invite()))
    assert [r.status for r in got] == [482]
    assert len(h.events_of(IncomingCall)) == 1
    assert list(h.ua.calls) == [caller.call_id]
    assert h.ua.calls[caller.call_id].state is InboundState.CONFIRMED


def test_calls_beyond_max_calls_get_503_with_retry_after() -> None:
    ua_config = UaConfig(max_calls=1)
    h = Harness(RouterSettings(hold_time=100.0))
    h.ua = UserAgent(ua_config, rng=random.Random(1))
    h.router = CallRouter(h.ua, RouterSettings(hold_time=100.0), on_record=h.records.append)
    assert statuses(h.deliver(Caller().invite())) == [100, 200]
    got = responses(h.deliver(Caller(call_id="second@127.0.0.1", branch="z9hG4bK-second").invite()))
    assert [r.status for r in got] == [503]
    assert got[0].get("retry-after") == "5"
    assert h.ua.stats.calls_rejected_overload == 1
    assert list(h.ua.calls) == ["call-1@127.0.0.1"]


def test_info_in_and_out_of_a_dialog() -> None:
    h = Harness(RouterSettings(hold_time=100.0))
    caller = Caller()
    answered_call(h, caller)
    assert statuses(h.deliver(caller.request("INFO", to_tag=caller.to_tag, cseq=2, body=b""))) == [200]
    assert statuses(h.deliver(Caller(call_id="other@x").request("INFO", to_tag="t", body=b""))) == [481]


# ---------------------------------------------------------------------------
# other requests


def test_options_gets_200_with_allow() -> None:
    h = Harness()
    got = responses(h.deliver(Caller().request("OPTIONS", body=b"")))
    assert [r.status for r in got] == [200]
    allow = got[0].get_all("allow")
    assert {"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS"} <= set(allow)
    assert got[0].get("accept") == "application/sdp"
    # RFC 3261 8.2.6.2: every response but 100 carries a To tag
    assert got[0].to.tag != ""
    assert h.events_of(IncomingCall) == []


def test_bye_for_an_unknown_dialog_gets_481() -> None:
    h = Harness()
    got = responses(h.deliver(Caller().request("BYE", to_tag="nope", body=b"")))
    assert [r.status for r in got] == [481]
    assert got[0].reason == "Call/Transaction Does Not Exist"
    assert got[0].to.tag == "nope"  # the request's own tag is kept


def test_bye_with_the_wrong_tags_gets_481_and_keeps_the_call() -> None:
    h = Harness(RouterSettings(hold_time=100.0))
    caller = Caller()
    answered_call(h, caller)
    assert statuses(h.deliver(caller.request("BYE", to_tag="someone-else", cseq=2))) == [481]
    assert statuses(h.deliver(Caller(from_tag="other").request("BYE", to_tag=caller.to_tag, cseq=2))) == [481]
    assert len(h.ua.calls) == 1


def test_unknown_method_gets_501() -> None:
    h = Harness()
    got = responses(h.deliver(Caller().request("FOO", body=b"")))
    assert [r.status for r in got] == [501]
    assert got[0].cseq == (1, "FOO")
    assert got[0].to.tag != ""


def test_mixed_case_extension_method_gets_501() -> None:
    """Methods are case-sensitive: `fooBar` is a method we do not know, not a malformed request."""
    h = Harness()
    got = responses(h.deliver(Caller().request("fooBar", body=b"")))
    assert [r.status for r in got] == [501]
    assert got[0].cseq == (1, "fooBar")


def test_register_goes_to_the_registrar() -> None:
    """REGISTER is served (challenged for digest credentials); tests/test_registrar.py has the rest."""
    h = Harness()
    got = responses(h.deliver(Caller().request("REGISTER", body=b"", uri="sip:127.0.0.1")))
    assert [r.status for r in got] == [401]
    assert (got[0].get("www-authenticate") or "").startswith('Digest realm="frontdesk", nonce="')
    assert got[0].to.tag != ""


def test_known_method_we_do_not_serve_gets_405_with_allow() -> None:
    h = Harness()
    got = responses(h.deliver(Caller().request("SUBSCRIBE", body=b"", uri="sip:127.0.0.1")))
    assert [r.status for r in got] == [405]
    allow = got[0].get_all("allow")
    assert "INVITE" in allow and "REGISTER" in allow and "SUBSCRIBE" not in allow


def test_max_forwards_zero_gets_483() -> None:
    h = Harness()
    caller = Caller()
    got = responses(h.deliver(caller.invite(max_forwards="0")))
    assert [r.status for r in got] == [483]
    assert got[0].to.tag != ""
    assert h.events_of(IncomingCall) == []
    # the final response is retransmitted until the ACK (Timer G)
    assert statuses(h.advance(0.5)) == [483]
    h.deliver(caller.ack_non_2xx(got[0].to.tag or None))
    assert h.advance(40.0) == []
    assert h.ua.transactions_active == 0


def test_no_common_codec_gets_488() -> None:
    h = Harness()
    got = responses(h.deliver(Caller().invite(sdp_offer("18 3"))))
    assert [r.status for r in got] == [488]
    assert got[0].reason.startswith("Not Acceptable Here")
    assert h.events_of(IncomingCall) == []
    # refused calls are recorded too (R4)
    assert [(r.outcome, r.hangup_by, r.end_status) for r in h.records] == [("rejected", "frontdesk", 488)]


def test_non_sdp_body_gets_415() -> None:
    h = Harness()
    got = responses(h.deliver(Caller().invite(b"hello", content_type="text/plain")))
    assert [r.status for r in got] == [415]
    assert got[0].get("accept") == "application/sdp"
    assert h.events_of(IncomingCall) == []


def test_unknown_uri_scheme_gets_416_and_require_gets_420() -> None:
    h = Harness()
    assert statuses(h.deliver(Caller().invite(uri="http://example.com/"))) == [416]
    got = responses(h.deliver(Caller(branch="z9hG4bK-req").invite(headers=("Require: foo",))))
    assert [r.status for r in got] == [420]
    assert got[0].get("unsupported") == "foo"


def test_malformed_request_gets_400_with_the_reason() -> None:
    h = Harness()
    bad = Caller().invite().replace(b"CSeq: 1 INVITE", b"CSeq: 1 OPTIONS")
    got = responses(h.deliver(bad))
    assert [r.status for r in got] == [400]
    assert got[0].reason == "Bad Request (CSeq method does not match request method)"
    assert got[0].call_id == "call-1@127.0.0.1"
    assert got[0].cseq == (1, "OPTIONS")
    assert h.ua.stats.malformed == {"dropped": 0, "answered": 1}
    assert h.events_of(IncomingCall) == []


def test_request_with_a_broken_cseq_gets_400_copying_it() -> None:
    h = Harness()
    out = h.deliver(Caller().invite().replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE"))
    assert len(out) == 1
    assert first_line(out[0]) == b"SIP/2.0 400 Bad Request (malformed CSeq 'one INVITE')"
    assert b"\r\nCSeq: one INVITE\r\n" in out[0]
    assert b"\r\nCall-ID: call-1@127.0.0.1\r\n" in out[0]
    assert h.ua.stats.malformed == {"dropped": 0, "answered": 1}


def test_malformed_content_length_gets_400() -> None:
    h = Harness()
    got = responses(h.deliver(Caller().invite().replace(b"Content-Length: ", b"Content-Length: x")))
    assert [r.status for r in got] == [400]
    assert got[0].reason.startswith("Bad Request (malformed Content-Length")


def test_sip_3_0_request_gets_505() -> None:
    h = Harness()
    got = responses(h.deliver(Caller().invite().replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1)))
    assert [r.status for r in got] == [505]


def test_malformed_max_forwards_gets_400() -> None:
    h = Harness()
    got = responses(h.deliver(Caller().invite(max_forwards="many")))
    assert [r.status for r in got] == [400]


@pytest.mark.parametrize(
    ("label", "old", "new"),
    [
        ("To without URI", b"To: <sip:100@127.0.0.1:5060>", b"To: nobody"),
        ("To with unterminated <", b"To: <sip:100@127.0.0.1:5060>", b"To: <sip:100@127.0.0.1:5060"),
        ("From without URI", b'From: "Caller" <sip:5551234@127.0.0.1:5070>', b"From: nobody"),
        ("Via with bad port", b"127.0.0.1:5070;branch", b"127.0.0.1:99999;branch"),
    ],
)
def test_request_with_a_malformed_transaction_header_gets_400_and_receive_does_not_raise(
    label: str, old: bytes, new: bytes
) -> None:
    h = Harness()
    data = Caller().invite().replace(old, new)
    assert data != Caller().invite()
    out = h.deliver(data)  # must not raise: the shell calls receive() from protocol callbacks
    assert [first_line(d)[:15] for d in out] == [b"SIP/2.0 400 Bad"], label
    assert h.ua.stats.malformed == {"dropped": 0, "answered": 1}
    assert h.events == []


@pytest.mark.parametrize(
    "junk",
    [
        b"\x00\x01\x02garbage",
        b"",
        b"\r\n\r\n",
        b"SIP/2.0 200 OK\r\n\r\n",  # a response without the transaction headers
        b"HELLO WORLD\r\n\r\n",
    ],
)
def test_unparseable_junk_is_dropped_and_counted(junk: bytes) -> None:
    h = Harness()
    assert h.deliver(junk) == []
    assert h.ua.stats.malformed == {"dropped": 1, "answered": 0}
    assert h.events == []


@pytest.mark.parametrize(
    ("label", "old", "new"),
    [
        ("Max-Forwards", b"Max-Forwards: 70", "Max-Forwards: \u00b2".encode()),
        ("SDP m= port", b"m=audio 4000", "m=audio \u00b2".encode()),
    ],
)
def test_unicode_digits_in_an_invite_are_answered_not_raised(label: str, old: bytes, new: bytes) -> None:
    """U+00B2 passes str.isdigit() but int() refuses it: receive() must not raise."""
    h = Harness()
    data = Caller().invite()
    if label == "SDP m= port":
        body = sdp_offer().replace(old, new)
        data = Caller().invite(body)
    else:
        data = data.replace(old, new)
    got = responses(h.deliver(data))
    assert [r.status for r in got] == [400], label


# ---------------------------------------------------------------------------
# router timers


def test_router_answers_at_answer_delay_and_arms_a_ring_limit_timer() -> None:
    h = Harness(RouterSettings(answer_delay=3.0, ring_limit=10.0, hold_time=100.0))
    caller = Caller()
    assert statuses(h.deliver(caller.invite())) == [100, 180]
    call = h.events_of(IncomingCall)[0].call
    assert call.timers == {"answer": 3.0, "ring_limit": 10.0}
    assert h.ua.get_timer() == 3.0
    assert h.advance(3.0 - TICK) == []
    out = h.advance(3.0)
    assert statuses(out) == [200]
    assert h.sent[-1][0] == 3.0
    assert call.t_answer == 3.0
    assert call.state is InboundState.ANSWERED
    # the ring limit timer is still armed and is harmless once answered
    assert call.timers == {"ring_limit": 10.0}
    caller.learn(responses(out)[0])
    h.deliver(caller.ack_2xx())
    h.advance(12.0)
    timers = [(t, e.name) for t, e in h.events if isinstance(e, CallTimer)]
    assert timers == [(3.0, "answer"), (10.0, "ring_limit")]
    assert call.state is InboundState.CONFIRMED
    assert h.records == []


def test_ring_limit_answers_a_call_still_ringing() -> None:
    h = Harness(RouterSettings(answer_delay=3.0, ring_limit=10.0))
    caller = Caller()
    h.deliver(caller.invite())
    call = h.events_of(IncomingCall)[0].call
    h.ua.cancel_call_timer(call, "answer")  # as if the answer were held back
    assert statuses(h.advance(10.0)) == [200]
    assert call.t_answer == 10.0


# ---------------------------------------------------------------------------
# mutated requests against the whole core

MUTATION_FRAGMENTS = [b"\r\n", b"\r\n ", b":", b";", b",", b" ", b"<", b">", b'"', b"\x00", b"\xff", b"0", b"-1"]
MUTATION_NUMBERS = [b"", b"-1", b"99999999999", "\u00b2".encode(), b"0", b"70000"]


@st.composite
def mutated_requests(draw: st.DrawFn) -> list[bytes]:
    caller = Caller()
    invite = caller.invite()
    base = draw(
        st.sampled_from(
            [
                invite,
                caller.request("OPTIONS", body=b""),
                caller.request("BYE", to_tag="x", body=b""),
                caller.cancel(),
                caller.request("ACK", branch=caller.branch, to_tag="x"),
                caller.request("INVITE", to_tag="x", cseq=2, body=sdp_offer()),
            ]
        )
    )
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "number", "header"]))
        if kind == "insert":
            data[pos:pos] = draw(st.sampled_from(MUTATION_FRAGMENTS))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 12))]
        elif kind == "replace":
            data[pos : pos + draw(st.integers(1, 6))] = draw(st.sampled_from(MUTATION_FRAGMENTS))
        elif kind == "number":
            runs = [m.span() for m in re.finditer(rb"(?<=[: ])[0-9]+", bytes(data))]
            if runs:
                start, end = draw(st.sampled_from(runs))
                data[start:end] = draw(st.sampled_from(MUTATION_NUMBERS))
        else:
            # replace one header value wholesale
            lines = bytes(data).split(b"\r\n")
            i = draw(st.integers(1, max(1, len(lines) - 1)))
            name = lines[i].split(b":", 1)[0]
            lines[i] = name + b": " + draw(st.sampled_from([b"", b"x", b"<sip:a", b"nobody", b"1", b";tag="]))
            data = bytearray(b"\r\n".join(lines))
    # the good INVITE first, so in-dialog mutations can hit a live call
    return [invite, bytes(data)]


@settings(
    max_examples=300,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
@given(mutated_requests())
def test_mutated_requests_never_make_receive_raise(datagrams: list[bytes]) -> None:
    h = Harness(RouterSettings(answer_delay=1.0, ring_limit=10.0, hold_time=5.0))
    for data in datagrams:
        for peer in (PEER, TCP_PEER):
            h.deliver(data, peer)
    h.advance(80.0)
    assert h.ua.calls == {}
    assert h.ua.transactions_active == 0


# ---------------------------------------------------------------------------
# random interleavings

ACTIONS = ["retransmit_invite", "ack", "ack_copy", "bye", "cancel", "options", "answer_bye", "reinvite", "wait"]
HOLD_TIMES = [6.0, 40.0]  # 40 s outlives Timer L, so an unacknowledged re-INVITE 2xx shows
DRAIN = max(HOLD_TIMES) + 2 * 64 * T1 + T4 + 60.0


@dataclass
class Sim:
    h: Harness
    callers: list[Caller]
    finals: dict[str, Response] = field(default_factory=dict)  # to the first INVITE
    acks: dict[str, bytes] = field(default_factory=dict)  # ACK for the latest final to an INVITE
    next_cseq: dict[str, int] = field(default_factory=dict)

    def cseq(self, c: Caller) -> int:
        n = self.next_cseq.get(c.call_id, 2)
        self.next_cseq[c.call_id] = n + 1
        return n

    def route(self, out: list[bytes]) -> None:
        """Let the callers learn tags and final statuses from what the UA sent."""
        for data in out:
            msg = parse_message(data)
            if not isinstance(msg, Response):
                continue
            for c in self.callers:
                if msg.call_id != c.call_id:
                    continue
                c.learn(msg)
                num, method = msg.cseq
                if method != "INVITE" or msg.status < 200:
                    continue
                if num == 1:
                    self.finals.setdefault(c.call_id, msg)
                if msg.status < 300:
                    self.acks[c.call_id] = c.ack_2xx(cseq=num)
                else:
                    # ACK for a non-2xx: the INVITE's branch, the response's To
                    self.acks[c.call_id] = c.request("ACK", branch=msg.top_via.branch, to_tag=msg.to.tag, cseq=num)

    @staticmethod
    def answer_byes(out: list[bytes]) -> list[bytes]:
        replies = []
        for data in out:
            msg = parse_message(data)
            if isinstance(msg, Request) and msg.method == "BYE":
                replies.append(ok_for(msg))
        return replies


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    answer_delay=st.sampled_from([0.0, 1.0, 4.0]),
    hold_time=st.sampled_from(HOLD_TIMES),
    ncalls=st.integers(1, 3),
    auto_answer_bye=st.booleans(),
    steps=st.lists(
        st.tuples(st.sampled_from(ACTIONS), st.integers(0, 2), st.sampled_from([0.0, TICK, 0.25, 0.5, 1.0, 3.0, 8.0])),
        max_size=25,
    ),
)
def test_random_interleavings_end_every_call_and_drain_every_transaction(
    seed: int,
    answer_delay: float,
    hold_time: float,
    ncalls: int,
    auto_answer_bye: bool,
    steps: list[tuple[str, int, float]],
) -> None:
    h = Harness(RouterSettings(answer_delay=answer_delay, ring_limit=10.0, hold_time=hold_time), seed=seed)
    callers = [Caller(call_id=f"r{i}@127.0.0.1", from_tag=f"ft{i}", branch=f"z9hG4bK-inv-r{i}") for i in range(ncalls)]
    sim = Sim(h, callers)
    for c in callers:
        sim.route(h.deliver(c.invite()))

    def settle(out: list[bytes]) -> None:
        while out:
            sim.route(out)
            replies = sim.answer_byes(out) if auto_answer_bye else []
            out = [d for r in replies for d in h.deliver(r)]

    for action, idx, dt in steps:
        c = callers[idx % ncalls]
        final = sim.finals.get(c.call_id)
        if action == "retransmit_invite" and final is None:
            # a caller retransmits only until it hears a final response
            settle(h.deliver(c.invite()))
        elif action in ("ack", "ack_copy") and c.call_id in sim.acks:
            data = sim.acks[c.call_id]
            settle(h.deliver(data))
            if action == "ack_copy":
                settle(h.deliver(data))
        elif action == "bye" and c.to_tag:
            settle(h.deliver(c.bye(cseq=sim.cseq(c))))
        elif action == "reinvite" and c.to_tag and final is not None and final.status < 300:
            settle(h.deliver(c.request("INVITE", to_tag=c.to_tag, cseq=sim.cseq(c), body=sdp_offer("8 0 101"))))
        elif action == "cancel":
            settle(h.deliver(c.cancel()))
        elif action == "options":
            settle(h.deliver(c.request("OPTIONS", body=b"")))
        elif action == "answer_bye":
            # the caller answers (late, or again) the last BYE we sent
            for reply in sim.answer_byes([d for _, d, _ in h.sent if d.startswith(b"BYE ")][-1:]):
                settle(h.deliver(reply))
        settle(h.advance(h.now + dt))

    settle(h.advance(h.now + DRAIN))

    incoming = [e.call for e in h.events_of(IncomingCall)]
    ended = [e.call for e in h.events_of(CallTerminated)]
    assert len(incoming) == ncalls
    assert sorted(map(id, incoming)) == sorted(map(id, ended))  # each call ended exactly once
    for call in incoming:
        assert call.state is InboundState.ENDED
        assert call.outcome in (Outcome.COMPLETED, Outcome.CANCELLED, Outcome.NO_ACK)
        assert call.hangup_by in ("caller", "frontdesk")
        if call.outcome is Outcome.COMPLETED:
            assert call.t_answer is not None
        event(f"outcome {call.outcome} by {call.hangup_by}")
    assert len(h.records) == ncalls
    assert h.ua.calls == {}
    assert h.ua.transactions_active == 0
    assert h.ua.get_timer() is None
    assert h.ua.stats.malformed == {"dropped": 0, "answered": 0}
