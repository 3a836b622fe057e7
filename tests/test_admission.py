"""Flood control before parsing (ivr/sip/admission.py), sans-IO, with a stepped clock: rates, blocks, caps, 503s."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivr.settings.config import Config
from ivr.sip.admission import (
    OVERFLOW,
    Admission,
    AdmissionLimits,
    Traffic,
    Verdict,
    classify,
    network_key,
    source_key,
)
from ivr.sip.message import Response, parse_message
from ivr.web.flood import admission_for

ATTACKER = "192.0.2.66"
CALLER = "198.51.100.7"
TRUNK = "203.0.113.5"


def invite(call_id: str = "a1@x", to_tag: str | None = None, compact: bool = False) -> bytes:
    to = "t" if compact else "To"
    tag = f";tag={to_tag}" if to_tag else ""
    return (
        "INVITE sip:service@192.0.2.1 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.66:5060;branch=z9hG4bKabc;rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:bot@192.0.2.66>;tag=f1\r\n"
        f"{to}: <sip:service@192.0.2.1>{tag}\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 INVITE\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def admission(**limits: object) -> Admission:
    return Admission(AdmissionLimits(**limits), lambda host: host == TRUNK, tag="feedface")  # type: ignore[arg-type]


def offer(adm: Admission, data: bytes, host: str, now: float) -> Verdict:
    """What the UDP shell does with one datagram: block check, count, then the global budget for new calls."""
    if adm.blocked(host, now):
        return Verdict.DROP
    verdict = adm.check(data, host, now)
    return adm.take_new_call(host, now) if verdict is Verdict.NEW_CALL else verdict


def test_classify_tells_new_calls_from_in_dialog_requests_by_first_line_and_to_tag() -> None:
    assert classify(invite()) is Traffic.NEW_CALL
    assert classify(invite(to_tag="x9")) is Traffic.IN_DIALOG  # a re-INVITE
    assert classify(invite(to_tag="x9", compact=True)) is Traffic.IN_DIALOG
    assert classify(invite(compact=True)) is Traffic.NEW_CALL
    for method in ("ACK", "BYE", "CANCEL", "PRACK", "UPDATE", "INFO"):
        assert classify(method.encode() + b" sip:a@b SIP/2.0\r\n\r\n") is Traffic.IN_DIALOG
    assert classify(b"REGISTER sip:b SIP/2.0\r\n\r\n") is Traffic.OTHER
    assert classify(b"SIP/2.0 200 OK\r\n\r\n") is Traffic.OTHER
    assert classify(b"\r\n\r\n") is Traffic.OTHER
    # a tag in the body (after the blank line) does not make a new call in-dialog
    assert classify(invite() + b"\r\nTo: <sip:x>;tag=1\r\n") is Traffic.NEW_CALL


def test_a_source_over_the_request_rate_is_blocked_for_the_block_period_and_then_served_again() -> None:
    adm = admission(requests_per_second=10, new_calls_per_second=100, block_seconds=30.0)
    now = 100.0
    bye = b"BYE sip:a@b SIP/2.0\r\n\r\n"
    verdicts = [offer(adm, bye, ATTACKER, now) for _ in range(15)]
    assert verdicts[:10] == [Verdict.ADMIT] * 10
    assert verdicts[10:] == [Verdict.DROP] * 5
    assert adm.blocked_sources == 1 and adm.blocks == 1
    assert adm.rejected["rate", "drop"] == 1 and adm.rejected["blocked", "drop"] == 4
    # another source is not touched
    assert offer(adm, bye, CALLER, now) is Verdict.ADMIT
    # still blocked in a later window, free after the block period
    assert offer(adm, bye, ATTACKER, now + 29.0) is Verdict.DROP
    assert offer(adm, bye, ATTACKER, now + 30.5) is Verdict.ADMIT
    assert adm.blocked_sources == 0


def test_new_calls_past_the_per_source_cap_get_a_503_and_in_dialog_requests_still_pass() -> None:
    adm = admission(requests_per_second=1000, new_calls_per_second=3, max_new_calls_per_second=0)
    now = 5.0
    got = [offer(adm, invite(f"c{i}"), CALLER, now) for i in range(5)]
    assert got == [Verdict.ADMIT] * 3 + [Verdict.REFUSE] * 2
    assert offer(adm, invite("c0", to_tag="t"), CALLER, now) is Verdict.ADMIT  # re-INVITE
    assert offer(adm, b"ACK sip:a@b SIP/2.0\r\n\r\n", CALLER, now) is Verdict.ADMIT
    assert adm.rejected["new_calls", "reply"] == 2
    assert adm.blocked_sources == 0  # a cap refuses; only the request rate blocks
    assert offer(adm, invite("next"), CALLER, now + 1.0) is Verdict.ADMIT  # a new window


def test_new_calls_from_hosts_rotating_within_one_network_are_capped_per_network() -> None:
    adm = admission(new_calls_per_second=2, new_calls_per_network=5, max_new_calls_per_second=0)
    got = [offer(adm, invite(f"n{i}"), f"192.0.2.{i + 1}", 0.0) for i in range(8)]  # one call per host
    assert got == [Verdict.ADMIT] * 5 + [Verdict.REFUSE] * 3
    assert adm.rejected["network", "reply"] == 3
    assert offer(adm, invite("other"), "198.51.100.1", 0.0) is Verdict.ADMIT  # another /24
    v6 = [offer(adm, invite(f"v{i}"), f"2001:db8:7:{i:x}::1", 0.0) for i in range(7)]  # seven /64s in one /48
    assert v6 == [Verdict.ADMIT] * 5 + [Verdict.REFUSE] * 2
    assert offer(adm, invite("trunk"), TRUNK, 0.0) is Verdict.ADMIT
    assert offer(adm, invite("later"), "192.0.2.99", 1.0) is Verdict.ADMIT  # a new window
    assert network_key("192.0.2.7") == "192.0.2.0/24" and network_key("2001:db8:7:1::1") == network_key("2001:db8:7::9")


def test_over_limit_drop_answers_nothing() -> None:
    adm = admission(new_calls_per_second=1, over_limit="drop")
    assert offer(adm, invite("1"), CALLER, 0.0) is Verdict.ADMIT
    assert offer(adm, invite("2"), CALLER, 0.0) is Verdict.DROP
    assert adm.rejected["new_calls", "drop"] == 1


def test_the_global_new_call_budget_refuses_new_calls_from_everyone_once_spent() -> None:
    adm = admission(max_new_calls_per_second=4)
    sources = [f"10.0.0.{i}" for i in range(8)]
    got = [offer(adm, invite(f"c{i}"), src, 0.0) for i, src in enumerate(sources)]
    assert got.count(Verdict.ADMIT) == 4 and got.count(Verdict.REFUSE) == 4
    assert adm.rejected["overload", "reply"] == 4
    assert offer(adm, b"BYE sip:a@b SIP/2.0\r\n\r\n", sources[7], 0.0) is Verdict.ADMIT


def test_trusted_sources_are_never_blocked_capped_nor_refused_and_spend_no_budget() -> None:
    adm = admission(requests_per_second=5, new_calls_per_second=2, max_new_calls_per_second=3)
    got = [offer(adm, invite(f"t{i}"), TRUNK, 0.0) for i in range(50)]
    assert got == [Verdict.ADMIT] * 50
    assert adm.blocked_sources == 0 and not any(adm.rejected.values())
    # the untrusted still have the whole budget
    got = [offer(adm, invite(f"u{i}"), f"10.0.0.{i}", 0.0) for i in range(4)]
    assert got == [Verdict.ADMIT] * 3 + [Verdict.REFUSE]


def test_the_tables_are_bounded_and_sources_past_the_cap_share_one_count_that_is_never_blocked() -> None:
    adm = admission(requests_per_second=3, max_sources=16, max_blocked=16, new_calls_per_second=100)
    bye = b"BYE sip:a@b SIP/2.0\r\n\r\n"
    for i in range(100):
        offer(adm, bye, f"10.1.{i}.1", 0.0)
    assert adm.tracked_sources == 17  # 16 sources and the overflow count
    assert offer(adm, bye, "10.9.9.9", 0.0) is Verdict.DROP  # the shared count is over the rate
    assert OVERFLOW not in adm._blocked
    # fill the block list: it stops at max_blocked, the rate still holds the rest back
    for i in range(40):
        for _ in range(5):
            offer(adm, bye, f"10.2.{i}.1", 10.0)
    assert adm.blocked_sources == 16
    assert offer(adm, bye, "10.2.39.1", 10.0) is Verdict.DROP


def test_an_ipv6_host_counts_with_its_whole_slash_64() -> None:
    assert source_key("2001:db8:1:2::1") == source_key("2001:db8:1:2:ffff::9")
    assert source_key("2001:db8:1:2::1") != source_key("2001:db8:1:3::1")
    adm = admission(requests_per_second=4)
    bye = b"BYE sip:a@b SIP/2.0\r\n\r\n"
    for i in range(6):
        offer(adm, bye, f"2001:db8:1:2::{i + 1:x}", 0.0)
    assert adm.blocked("2001:db8:1:2::abcd", 0.5)
    assert not adm.blocked("2001:db8:1:3::1", 0.5)


def test_the_refusal_is_a_valid_503_to_the_request_with_retry_after_and_no_bigger_than_it() -> None:
    adm = admission(retry_after=7)
    req = invite("refused@x")
    data = adm.refusal(req)
    assert data is not None and len(data) <= len(req) + 64
    resp = parse_message(data)
    assert isinstance(resp, Response) and resp.status == 503
    assert resp.get("retry-after") == "7"
    assert resp.call_id == "refused@x"
    assert resp.to.tag == "feedface"
    assert resp.get("via") is not None and resp.get("cseq") == "1 INVITE"
    # compact headers and a folded To are copied too; a To tag is kept
    compact = invite(to_tag="keep", compact=True).replace(b"To: ", b"t:").replace(b"Call-ID:", b"i:")
    again = adm.refusal(compact)
    assert again is not None and b";tag=keep" in again and b"feedface" not in again
    # without the headers a response needs there is nothing to answer
    assert adm.refusal(b"INVITE sip:a SIP/2.0\r\nVia: x\r\n\r\n") is None
    assert adm.refusal(b"") is None


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600), host=st.sampled_from([ATTACKER, CALLER, TRUNK, "::1", "fe80::1%lo", "junk"]))
def test_any_bytes_from_any_source_get_a_verdict_and_never_an_exception(data: bytes, host: str) -> None:
    adm = admission(requests_per_second=3)
    for i in range(5):
        offer(adm, data, host, float(i) * 0.1)
        out = adm.refusal(data)
        assert out is None or out.startswith(b"SIP/2.0 503 ")


def test_settings_reach_the_admission_and_it_can_be_turned_off() -> None:
    config = Config.model_validate(
        {"security": {"trusted_networks": ["203.0.113.0/24"], "flood": {"requests_per_second": 7}}}
    )
    adm = admission_for(config.security)
    assert adm is not None and adm.limits.requests_per_second == 7 and adm.trusted(TRUNK)
    off = Config.model_validate({"security": {"flood": {"enabled": False}}})
    assert admission_for(off.security) is None
    with pytest.raises(ValueError):
        Config.model_validate({"security": {"flood": {"over_limit": "maybe"}}})
