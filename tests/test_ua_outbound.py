"""Calls the user agent places (UAC dialogs) against an in-memory agent phone, on a stepped virtual clock.

No sockets and no sleeps: the test plays the called phone, building its
responses and requests as raw SIP bytes from the INVITE the user agent sent.
"""

from __future__ import annotations

import random
import re
from typing import TypeVar

import pytest
from support.sip import SteppedUa

from ivr.sip.message import Request, Response, parse_message
from ivr.sip.sdp import parse_sdp
from ivr.sip.ua import (
    CallConfirmed,
    CallTerminated,
    Event,
    IncomingCall,
    OutAnswered,
    OutCall,
    OutEnded,
    OutFailed,
    OutRinging,
    OutState,
    UaConfig,
    UserAgent,
)

E = TypeVar("E")
TICK = 1 / 64
T1 = 0.5
AGENT = ("udp", "10.0.0.5", 5062)
AGENT_TCP = ("tcp", "10.0.0.5", 5062)
TARGET = "sip:agent7@10.0.0.5:5062;transport=udp"
PHONE_CONTACT = "sip:agent7@10.0.0.5:5062;ob"
PHONE_TAG = "phone-tag-1"
RR = ("<sip:proxy1.example.com;lr>", "<sip:proxy2.example.com;lr>")  # as the phone's 2xx lists them
BRANCH_RE = re.compile(r"^SIP/2\.0/(UDP|TCP) 127\.0\.0\.1:5060;branch=(z9hG4bK[0-9a-f]{16});rport$")
REASONS = {100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK", 486: "Busy Here"}


def sdp_answer(payloads: str = "8 101", port: int = 7078, direction: str = "sendrecv") -> bytes:
    lines = [
        "v=0",
        "o=phone 7 7 IN IP4 10.0.0.5",
        "s=-",
        "c=IN IP4 10.0.0.5",
        "t=0 0",
        f"m=audio {port} RTP/AVP {payloads}",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:101 telephone-event/8000",
        f"a={direction}",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


class Net(SteppedUa):
    """One UserAgent and the phone it calls, on a stepped virtual clock."""

    def __init__(self, seed: int = 11) -> None:
        self.ua = UserAgent(UaConfig(), rng=random.Random(seed))
        self.now = 0.0
        self.events: list[Event] = []
        self.sent: list[tuple[float, bytes]] = []

    def collect(self) -> list[bytes]:
        self.events.extend(self.ua.events())
        out = [data for data, _ in self.ua.datagrams_to_send()]
        self.sent.extend((self.now, d) for d in out)
        return out

    def deliver(self, data: bytes, peer: tuple[str, str, int] = AGENT) -> list[bytes]:
        self.ua.receive(data, peer, self.now)
        return self.collect()

    def flush(self) -> list[bytes]:
        return self.collect()

    def place(self, peer: tuple[str, str, int] = AGENT, **kw: object) -> tuple[OutCall, Request]:
        call = self.ua.place_call(TARGET, peer, 40000, self.now, **kw)  # type: ignore[arg-type]
        out = self.collect()
        assert len(out) == 1
        return call, request(out[0])

    def events_of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    def drained(self) -> bool:
        ua = self.ua
        return ua.transactions_active == 0 and ua.get_timer() is None and not ua.out_calls


def request(data: bytes) -> Request:
    msg = parse_message(data)
    assert isinstance(msg, Request), data
    return msg


def response(data: bytes) -> Response:
    msg = parse_message(data)
    assert isinstance(msg, Response), data
    return msg


def header_lines(data: bytes) -> list[str]:
    """The start line and header lines, as sent."""
    return data.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")


def reply(
    req: Request,
    status: int,
    *,
    tag: str | None = PHONE_TAG,
    body: bytes = b"",
    contact: str | None = PHONE_CONTACT,
    record_route: tuple[str, ...] = (),
) -> bytes:
    """The phone's response to a request we sent (Via, From, To, Call-ID, CSeq copied)."""
    to = req.get("to") or ""
    if tag and status != 100 and not req.to.tag:
        to += f";tag={tag}"
    lines = [f"SIP/2.0 {status} {REASONS.get(status, 'Whatever')}"]
    lines += [f"Via: {v}" for v in req.get_all("via")]
    lines += [f"From: {req.get('from')}", f"To: {to}", f"Call-ID: {req.call_id}", f"CSeq: {req.get('cseq')}"]
    lines += [f"Record-Route: {rr}" for rr in record_route]
    if contact and 100 < status < 300:
        lines.append(f"Contact: <{contact}>")
    if body:
        lines.append("Content-Type: application/sdp")
    lines += [f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


def phone_request(invite: Request, method: str, cseq: int, branch: str, body: bytes = b"") -> bytes:
    """A request of the phone inside the dialog of our INVITE (From/To swapped, tags of both ends)."""
    lines = [
        f"{method} sip:frontdesk@127.0.0.1:5060 SIP/2.0",
        f"Via: SIP/2.0/UDP 10.0.0.5:5062;branch={branch};rport",
        "Max-Forwards: 70",
        f"From: {invite.get('to')};tag={PHONE_TAG}",
        f"To: {invite.get('from')}",
        f"Call-ID: {invite.call_id}",
        f"CSeq: {cseq} {method}",
        f"Contact: <{PHONE_CONTACT}>",
    ]
    if body:
        lines.append("Content-Type: application/sdp")
    lines += [f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


def answered(net: Net, record_route: tuple[str, ...] = RR) -> tuple[OutCall, Request, Request]:
    """Place a call, ring it and answer it; returns the call, our INVITE and our ACK."""
    call, invite = net.place()
    assert net.deliver(reply(invite, 180)) == []
    out = net.deliver(reply(invite, 200, body=sdp_answer(), record_route=record_route))
    assert len(out) == 1
    assert call.state is OutState.ANSWERED
    return call, invite, request(out[0])


# ---------------------------------------------------------------------------
# INVITE, ringing, answer


def test_invite_has_the_exact_headers_and_our_sdp_offer() -> None:
    net = Net()
    call, invite = net.place(from_display='Front "Desk"', extra_headers=(("X-Queue", "sales"),))
    lines = header_lines(net.sent[0][1])
    assert lines[0] == f"INVITE {TARGET} SIP/2.0"
    via = BRANCH_RE.match(lines[1].removeprefix("Via: "))
    assert via is not None and via.group(1) == "UDP"
    assert via.group(2) == call.branch == invite.top_via.branch
    assert lines[2:] == [
        "Max-Forwards: 70",
        f'From: "Front \\"Desk\\"" <sip:frontdesk@127.0.0.1>;tag={call.local_tag}',
        f"To: <{TARGET}>",
        f"Call-ID: {call.call_id}",
        "CSeq: 1 INVITE",
        "Contact: <sip:frontdesk@127.0.0.1:5060>",
        "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, NOTIFY, REGISTER",
        "X-Queue: sales",
        "Content-Type: application/sdp",
        "User-Agent: frontdesk",
        f"Content-Length: {len(invite.body)}",
    ]
    assert re.fullmatch(r"[0-9a-f]{16}@127\.0\.0\.1", call.call_id)
    assert re.fullmatch(r"[0-9a-f]{16}", call.local_tag)
    offer = parse_sdp(invite.body)
    assert (offer.address, offer.port, offer.payloads) == ("127.0.0.1", 40000, [0, 8, 101])
    assert offer.rtpmap[101] == "telephone-event/8000"
    assert (call.state, call.t_start, call.rtp_port) == (OutState.CALLING, 0.0, 40000)
    assert net.ua.out_calls == {call.call_id: call}
    assert net.ua.stats.requests_sent == {"INVITE": 1}


def test_invite_over_tcp_uses_the_tcp_contact_and_given_call_id() -> None:
    net = Net()
    call, invite = net.place(AGENT_TCP, call_id="agent-leg-1@frontdesk", from_user="queue")
    assert invite.top_via.transport == "TCP"
    assert invite.get("contact") == "<sip:frontdesk@127.0.0.1:5060;transport=tcp>"
    assert invite.get("from") == f"<sip:queue@127.0.0.1>;tag={call.local_tag}"
    assert invite.call_id == call.call_id == "agent-leg-1@frontdesk"
    with pytest.raises(ValueError):
        net.ua.place_call(TARGET, AGENT, 40002, 0.0, call_id="agent-leg-1@frontdesk")


def test_ring_then_answer_sends_the_ack_and_reports_the_negotiated_media() -> None:
    net = Net()
    call, invite = net.place()
    assert net.deliver(reply(invite, 100)) == []
    assert call.state is OutState.CALLING
    assert net.events == []
    net.now = 1.0
    assert net.deliver(reply(invite, 180)) == []
    assert call.state is OutState.RINGING
    assert call.remote_tag == PHONE_TAG  # early dialog
    assert [type(e) for e in net.events] == [OutRinging]
    assert net.deliver(reply(invite, 180)) == []  # a copy: no second event
    assert net.deliver(reply(invite, 183)) == []
    assert len(net.events_of(OutRinging)) == 1
    net.now = 3.0
    out = net.deliver(reply(invite, 200, body=sdp_answer("8 101", port=7078), record_route=RR))
    assert len(out) == 1
    lines = header_lines(out[0])
    assert lines[0] == f"ACK {PHONE_CONTACT} SIP/2.0"  # the remote target: Contact of the 2xx
    via = BRANCH_RE.match(lines[1].removeprefix("Via: "))
    assert via is not None and via.group(2) != invite.top_via.branch  # a new transaction
    assert lines[2:] == [
        "Max-Forwards: 70",
        f"From: {invite.get('from')}",
        f"To: <{TARGET}>;tag={PHONE_TAG}",
        f"Call-ID: {call.call_id}",
        "CSeq: 1 ACK",
        "Route: <sip:proxy2.example.com;lr>",  # the Record-Route of the 2xx, reversed
        "Route: <sip:proxy1.example.com;lr>",
        "User-Agent: frontdesk",
        "Content-Length: 0",
    ]
    assert net.events_of(OutAnswered) == [OutAnswered(call)]
    assert call.state is OutState.ANSWERED
    assert call.t_answer == 3.0
    neg = call.negotiated
    assert neg is not None
    assert (neg.codec, neg.payload_type, neg.dtmf_payload_type) == ("PCMA", 8, 101)
    assert (neg.remote_address, neg.remote_port) == ("10.0.0.5", 7078)
    assert call.remote_target == PHONE_CONTACT
    assert call.route_set == ["<sip:proxy2.example.com;lr>", "<sip:proxy1.example.com;lr>"]
    stats = net.ua.stats
    assert stats.requests_sent == {"INVITE": 1, "ACK": 1}
    assert stats.out_calls == {"answered": 1}
    assert stats.stray_responses == 0
    assert stats.calls_ended == {}  # inbound calls only
    # the client INVITE transaction ended with the 2xx: no more INVITEs, no timers
    assert net.advance(40.0) == []
    assert net.ua.transactions_active == 0
    assert net.ua.get_timer() is None
    assert net.ua.out_calls == {call.call_id: call}


def test_2xx_copies_get_the_same_ack_again_not_counted_as_stray() -> None:
    net = Net()
    call, invite, _ack = answered(net)
    ok = reply(invite, 200, body=sdp_answer(), record_route=RR)
    first_ack = net.sent[-1][1]
    net.now = 0.5
    assert net.deliver(ok) == [first_ack]
    net.now = 1.5
    assert net.deliver(ok) == [first_ack]
    assert len(net.events_of(OutAnswered)) == 1
    stats = net.ua.stats
    assert stats.stray_responses == 0
    assert stats.retransmissions_received == 2
    assert stats.requests_sent == {"INVITE": 1, "ACK": 1}
    assert stats.responses_received == {("INVITE", 180): 1, ("INVITE", 200): 3}
    # a 2xx of another Call-ID is a stray response
    other = reply(invite, 200, body=sdp_answer()).replace(call.call_id.encode(), b"other@10.0.0.5")
    assert net.deliver(other) == []
    assert stats.stray_responses == 1
    # after we hang up, a late copy of the 2xx is still acknowledged for 64*T1, then forgotten
    net.ua.drop(call, net.now)
    net.collect()
    assert net.deliver(ok) == [first_ack]
    net.advance(net.now + 64 * T1)
    assert net.deliver(ok) == []
    assert stats.stray_responses == 2


def test_busy_is_acked_on_the_invite_branch_and_fails_with_486() -> None:
    net = Net()
    call, invite = net.place()
    net.deliver(reply(invite, 180))
    net.now = 2.0
    busy = reply(invite, 486, tag="busy-tag")
    out = net.deliver(busy)
    assert len(out) == 1
    assert header_lines(out[0]) == [
        f"ACK {TARGET} SIP/2.0",
        f"Via: {invite.get('via')}",  # the INVITE's branch (17.1.1.3)
        "Max-Forwards: 70",
        f"From: {invite.get('from')}",
        f"To: <{TARGET}>;tag=busy-tag",  # the To of the response
        f"Call-ID: {call.call_id}",
        "CSeq: 1 ACK",
        "Content-Length: 0",
    ]
    assert net.events_of(OutFailed) == [OutFailed(call, 486)]
    assert (call.state, call.end_status, call.ended_by, call.t_end) == (OutState.ENDED, 486, "remote", 2.0)
    assert net.ua.out_calls == {}
    # a copy of the 486 gets the same ACK from the transaction, and no second event
    assert net.deliver(busy) == out
    assert len(net.events_of(OutFailed)) == 1
    assert net.ua.stats.out_calls == {"busy": 1}
    assert net.ua.stats.requests_sent == {"INVITE": 1, "ACK": 1}
    net.advance(2.0 + 32.0)  # Timer D
    assert net.drained()


@pytest.mark.parametrize(("status", "result"), [(480, "rejected"), (603, "rejected"), (600, "busy"), (408, "timeout")])
def test_other_final_statuses_are_counted_by_class(status: int, result: str) -> None:
    net = Net()
    call, invite = net.place()
    out = net.deliver(reply(invite, status))
    assert [request(d).method for d in out] == ["ACK"]
    assert net.events_of(OutFailed) == [OutFailed(call, status)]
    assert net.ua.stats.out_calls == {result: 1}


def test_invite_is_retransmitted_by_timer_a_then_timer_b_fails_it_with_408() -> None:
    net = Net()
    call, _invite = net.place()
    first = net.sent[0][1]
    resent = net.advance(31.9)
    assert resent == [first] * 6
    assert [t for t, _ in net.sent[1:]] == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # T1, doubling
    assert net.events == []
    net.advance(32.0)  # Timer B = 64*T1
    assert net.events_of(OutFailed) == [OutFailed(call, 408)]
    assert (call.state, call.end_status, call.ended_by, call.t_end) == (OutState.ENDED, 408, "local", 32.0)
    assert net.ua.stats.out_calls == {"timeout": 1}
    assert net.ua.stats.retransmissions_sent == 6
    assert net.drained()


def test_tcp_invite_is_not_retransmitted_and_still_times_out() -> None:
    net = Net()
    call, _invite = net.place(AGENT_TCP)
    assert net.advance(31.9) == []
    net.advance(32.0)
    assert net.events_of(OutFailed) == [OutFailed(call, 408)]
    assert net.drained()


def test_a_provisional_response_stops_timer_a_and_timer_b() -> None:
    net = Net()
    call, invite = net.place()
    net.now = 0.25
    net.deliver(reply(invite, 100))
    assert net.advance(100.0) == []
    assert call.state is OutState.CALLING and net.events == []  # the router's ring limit ends this


# ---------------------------------------------------------------------------
# CANCEL


def test_drop_while_ringing_sends_cancel_and_487_ends_it() -> None:
    net = Net()
    call, invite = net.place()
    net.deliver(reply(invite, 180))
    net.now = 4.0
    net.ua.drop(call, net.now)
    out = net.collect()
    assert len(out) == 1
    assert header_lines(out[0]) == [
        f"CANCEL {TARGET} SIP/2.0",
        f"Via: {invite.get('via')}",  # the INVITE's branch (9.1)
        "Max-Forwards: 70",
        f"From: {invite.get('from')}",
        f"To: <{TARGET}>",  # as in the INVITE: no tag
        f"Call-ID: {call.call_id}",
        "CSeq: 1 CANCEL",
        "User-Agent: frontdesk",
        "Content-Length: 0",
    ]
    assert call.cancel_sent and call.state is OutState.RINGING
    net.ua.drop(call, net.now)  # twice: nothing more
    assert net.collect() == []
    cancel = request(out[0])
    assert net.deliver(reply(cancel, 200)) == []
    net.now = 4.25
    acks = net.deliver(reply(invite, 487))
    assert [first for first, *_ in map(header_lines, acks)] == [f"ACK {TARGET} SIP/2.0"]
    ack = request(acks[0])
    assert ack.top_via.branch == invite.top_via.branch
    assert ack.to.tag == PHONE_TAG
    assert ack.cseq == (1, "ACK")
    assert net.events_of(OutFailed) == [OutFailed(call, 487)]
    assert (call.state, call.end_status, call.ended_by) == (OutState.ENDED, 487, "local")
    assert net.ua.stats.out_calls == {"cancelled": 1}
    assert net.ua.stats.requests_sent == {"INVITE": 1, "CANCEL": 1, "ACK": 1}
    net.advance(4.25 + 32.0)
    assert net.drained()


def test_drop_before_any_provisional_defers_the_cancel_until_the_180() -> None:
    net = Net()
    call, invite = net.place()
    net.ua.drop(call, 0.0)
    assert net.collect() == []  # no CANCEL before a provisional response (RFC 3261 9.1)
    assert call.want_cancel and not call.cancel_sent
    net.now = 0.25
    out = net.deliver(reply(invite, 180))
    assert len(out) == 1
    cancel = request(out[0])
    assert cancel.method == "CANCEL"
    assert cancel.top_via.branch == invite.top_via.branch
    assert cancel.cseq == (1, "CANCEL")
    assert net.events_of(OutRinging) == []  # the router already gave up on it
    assert net.advance(2.0) == [out[0]] * 2  # CANCEL resent by Timer E at 0.75, 1.75 ...
    assert [t for t, d in net.sent if d.startswith(b"INVITE")] == [0.0]  # ... the INVITE no more
    net.deliver(reply(cancel, 200))
    net.deliver(reply(invite, 487))
    assert net.events_of(OutFailed) == [OutFailed(call, 487)]
    net.advance(40.0)
    assert net.drained()


def test_200_after_our_cancel_is_acked_and_hung_up_with_bye() -> None:
    net = Net()
    call, invite = net.place()
    net.ua.drop(call, 0.0)
    net.deliver(reply(invite, 100))  # 100 Trying counts as provisional: the CANCEL goes now
    assert [request(d).method for _, d in net.sent] == ["INVITE", "CANCEL"]
    net.now = 0.5
    out = net.deliver(reply(invite, 200, body=sdp_answer(), record_route=RR))
    ack, bye = map(request, out)
    assert (ack.method, ack.uri, ack.cseq, ack.to.tag) == ("ACK", PHONE_CONTACT, (1, "ACK"), PHONE_TAG)
    assert (bye.method, bye.uri, bye.cseq) == ("BYE", PHONE_CONTACT, (2, "BYE"))
    assert (bye.from_.tag, bye.to.tag) == (call.local_tag, PHONE_TAG)
    assert bye.get_all("route") == ["<sip:proxy2.example.com;lr>", "<sip:proxy1.example.com;lr>"]
    assert net.events_of(OutFailed) == [OutFailed(call, 487)]
    assert net.events_of(OutAnswered) == []
    assert net.ua.stats.out_calls == {"cancelled": 1}
    net.deliver(reply(bye, 200))
    net.advance(40.0)
    assert net.drained()


def test_no_final_response_64_t1_after_the_cancel_ends_it_as_cancelled() -> None:
    net = Net()
    call, invite = net.place()
    net.deliver(reply(invite, 180))
    net.now = 1.0
    net.ua.drop(call, net.now)
    cancel = request(net.collect()[0])
    net.deliver(reply(cancel, 200))
    net.advance(1.0 + 64 * T1 - TICK)
    assert net.events_of(OutFailed) == []
    net.advance(1.0 + 64 * T1)
    assert net.events_of(OutFailed) == [OutFailed(call, 487)]
    assert net.drained()
    assert net.deliver(reply(invite, 487)) == []  # too late: a stray response
    assert net.ua.stats.stray_responses == 1


# ---------------------------------------------------------------------------
# the answered dialog


def test_bye_from_the_phone_gets_200_and_ends_the_call_remote() -> None:
    net = Net()
    call, invite, _ack = answered(net)
    net.now = 10.0
    out = net.deliver(phone_request(invite, "BYE", 1, "z9hG4bK-phone-bye-1"))
    assert len(out) == 1
    ok = response(out[0])
    assert (ok.status, ok.cseq, ok.call_id) == (200, (1, "BYE"), call.call_id)
    assert (ok.from_.tag, ok.to.tag) == (PHONE_TAG, call.local_tag)
    assert net.events_of(OutEnded) == [OutEnded(call)]
    assert (call.state, call.ended_by, call.t_end, call.end_status) == (OutState.ENDED, "remote", 10.0, None)
    assert net.ua.out_calls == {}
    assert net.ua.stats.calls_ended == {}
    # a copy of the BYE gets the same 200 from the transaction; a BYE of an ended dialog 481
    assert net.deliver(phone_request(invite, "BYE", 1, "z9hG4bK-phone-bye-1")) == out
    assert response(net.deliver(phone_request(invite, "BYE", 2, "z9hG4bK-phone-bye-2"))[0]).status == 481
    net.advance(10.0 + 64 * T1)
    assert net.drained()


def test_requests_with_the_wrong_tags_do_not_reach_the_call() -> None:
    net = Net()
    call, invite, _ack = answered(net)
    bad = phone_request(invite, "BYE", 1, "z9hG4bK-bad-1").replace(PHONE_TAG.encode(), b"someone-else")
    assert response(net.deliver(bad)[0]).status == 481
    assert call.state is OutState.ANSWERED
    assert net.events_of(OutEnded) == []


def test_drop_after_answer_sends_bye_with_the_dialog_tags_and_route() -> None:
    net = Net()
    call, _invite, _ack = answered(net)
    net.now = 20.0
    net.ua.drop(call, net.now)
    out = net.collect()
    assert len(out) == 1
    lines = header_lines(out[0])
    assert lines[0] == f"BYE {PHONE_CONTACT} SIP/2.0"
    assert BRANCH_RE.match(lines[1].removeprefix("Via: "))
    assert lines[2:] == [
        "Max-Forwards: 70",
        f"From: <sip:frontdesk@127.0.0.1>;tag={call.local_tag}",
        f"To: <{TARGET}>;tag={PHONE_TAG}",
        f"Call-ID: {call.call_id}",
        "CSeq: 2 BYE",
        "Route: <sip:proxy2.example.com;lr>",
        "Route: <sip:proxy1.example.com;lr>",
        "User-Agent: frontdesk",
        "Content-Length: 0",
    ]
    assert net.events_of(OutEnded) == [OutEnded(call)]
    assert (call.state, call.ended_by, call.t_end) == (OutState.ENDED, "local", 20.0)
    assert net.ua.out_calls == {}
    net.ua.drop(call, net.now)  # ended: nothing
    assert net.collect() == []
    assert net.advance(20.5) == out  # Timer E until the phone answers
    net.deliver(reply(request(out[0]), 200))
    net.advance(20.5 + 64 * T1)
    assert net.drained()
    assert net.ua.stats.requests_sent == {"INVITE": 1, "ACK": 1, "BYE": 1}


def test_bye_to_a_strict_router_puts_the_remote_target_last() -> None:
    net = Net()
    call, _invite, ack = answered(net, record_route=("<sip:strict.example.com>",))
    assert ack.uri == "sip:strict.example.com"
    assert ack.get_all("route") == [f"<{PHONE_CONTACT}>"]
    net.ua.drop(call, 1.0)
    bye = request(net.collect()[0])
    assert bye.uri == "sip:strict.example.com"
    assert bye.get_all("route") == [f"<{PHONE_CONTACT}>"]


@pytest.mark.parametrize("body", [sdp_answer("9"), b""], ids=["no-common-codec", "no-sdp"])
def test_unusable_sdp_answer_is_acked_then_hung_up_and_fails_with_488(body: bytes) -> None:
    net = Net()
    call, invite = net.place()
    out = net.deliver(reply(invite, 200, body=body))
    ack, bye = map(request, out)
    assert (ack.method, ack.cseq, ack.to.tag, ack.uri) == ("ACK", (1, "ACK"), PHONE_TAG, PHONE_CONTACT)
    assert (bye.method, bye.cseq, bye.to.tag, bye.from_.tag) == ("BYE", (2, "BYE"), PHONE_TAG, call.local_tag)
    assert net.events_of(OutFailed) == [OutFailed(call, 488)]
    assert net.events_of(OutAnswered) == []
    assert (call.state, call.end_status, call.negotiated) == (OutState.ENDED, 488, None)
    assert net.ua.stats.out_calls == {"failed": 1}
    net.deliver(reply(bye, 200))
    net.advance(40.0)
    assert net.drained()


def test_info_and_notify_in_the_dialog_get_200() -> None:
    net = Net()
    call, invite, _ack = answered(net)
    assert response(net.deliver(phone_request(invite, "INFO", 1, "z9hG4bK-info-1"))[0]).status == 200
    assert response(net.deliver(phone_request(invite, "NOTIFY", 2, "z9hG4bK-notify-1"))[0]).status == 200
    assert call.state is OutState.ANSWERED


def test_reinvite_from_the_phone_is_answered_with_our_sdp_and_its_ack_absorbed() -> None:
    net = Net()
    call, invite, _ack = answered(net)
    net.now = 5.0
    hold = sdp_answer("0 8 101", port=7080, direction="sendonly")
    out = net.deliver(phone_request(invite, "INVITE", 1, "z9hG4bK-reinv-1", hold))
    assert len(out) == 1
    ok = response(out[0])
    assert (ok.status, ok.cseq, ok.to.tag, ok.from_.tag) == (200, (1, "INVITE"), call.local_tag, PHONE_TAG)
    assert ok.get("contact") == "<sip:frontdesk@127.0.0.1:5060>"
    ours = parse_sdp(ok.body)
    assert (ours.port, ours.payloads, ours.direction) == (40000, [0, 101], "recvonly")
    assert b" 2 IN IP4 " in ok.body.split(b"\r\n")[1]  # o= version up: the SDP changed
    neg = call.negotiated
    assert neg is not None and (neg.codec, neg.remote_port, neg.direction) == ("PCMU", 7080, "recvonly")
    # the 200 is resent until the phone's ACK, which the dialog absorbs
    assert net.advance(5.5) == out
    ack = phone_request(invite, "ACK", 1, "z9hG4bK-reinv-ack-1")
    assert net.deliver(ack) == []
    assert net.advance(40.0) == []
    assert net.events_of(CallConfirmed) == [] and net.events_of(OutEnded) == []
    assert call.state is OutState.ANSWERED
    assert net.ua.transactions_active == 0
    # an offer we cannot take is refused and the call goes on
    out = net.deliver(phone_request(invite, "INVITE", 2, "z9hG4bK-reinv-2", sdp_answer("9")))
    assert response(out[0]).status == 488
    assert call.state is OutState.ANSWERED and call.negotiated == neg


def test_reinvite_whose_200_is_never_acked_ends_the_call_with_bye() -> None:
    net = Net()
    call, invite, _ack = answered(net)
    net.deliver(phone_request(invite, "INVITE", 1, "z9hG4bK-reinv-1", sdp_answer()))
    net.advance(64 * T1)
    assert net.events_of(OutEnded) == [OutEnded(call)]
    assert call.ended_by == "local"
    assert any(d.startswith(b"BYE ") for _, d in net.sent)


def test_transport_error_fails_unanswered_calls_with_503() -> None:
    net = Net()
    call, _invite = net.place()
    net.ua.transport_error(AGENT, 0.25)
    assert net.collect() == []
    assert net.events_of(OutFailed) == [OutFailed(call, 503)]
    assert net.ua.stats.out_calls == {"failed": 1}
    assert net.advance(40.0) == []  # no INVITE resent
    assert net.drained()


# ---------------------------------------------------------------------------
# both roles on one user agent


def test_a_call_to_ourselves_runs_both_dialogs_by_their_tags() -> None:
    net = Net()
    me = ("udp", "127.0.0.1", 5060)
    ua = net.ua
    call = ua.place_call("sip:100@127.0.0.1:5060", me, 40000, 0.0)
    invite = net.collect()
    out = net.deliver(invite[0], me)  # our INVITE arrives at our UAS: 100 Trying
    assert [response(d).status for d in out] == [100]
    (incoming,) = net.events_of(IncomingCall)
    inbound = incoming.call
    assert inbound.remote_tag == call.local_tag
    for d in out:
        net.deliver(d, me)
    ua.ring(inbound, 0.0)
    ua.answer(inbound, 0.0, rtp_port=40002)
    for d in net.collect():  # 180 and 200 come back to our UAC: it sends the ACK
        acks = net.deliver(d, me)
    (ack,) = acks
    assert net.deliver(ack, me) == []  # the ACK confirms the inbound call
    assert net.events_of(CallConfirmed) == [CallConfirmed(inbound)]
    assert net.events_of(OutRinging) == [OutRinging(call)]
    assert net.events_of(OutAnswered) == [OutAnswered(call)]
    assert call.negotiated is not None and call.negotiated.remote_port == 40002
    net.ua.drop(call, 1.0)  # our UAC hangs up; the BYE ends the inbound call
    (bye,) = net.collect()
    (ok,) = net.deliver(bye, me)
    net.deliver(ok, me)
    assert net.events_of(CallTerminated) == [CallTerminated(inbound)]
    assert inbound.hangup_by == "caller"
    assert net.events_of(OutEnded) == [OutEnded(call)]
    net.advance(60.0)
    assert ua.calls == {} and net.drained()
