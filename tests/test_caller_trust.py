"""Caller-ID trust and the per-number text cap (ivr/calls/trust.py), without a server.

Whose number is believed: only a trusted peer's, and then P-Asserted-Identity
before From. How often one number is texted: at most ``texts_per_number``
within the window, the table of numbers capped; a flood of distinct numbers
stays within that cap. The same against the running server:
tests/test_caller_trust_live.py.
"""

from __future__ import annotations

import pytest

from callback import logmask
from ivr.calls.trust import TextGate, identify
from ivr.settings.security import SecuritySettings
from ivr.sip.dialogs import InboundCall
from ivr.sip.message import Request, parse_message
from ivr.sip.transaction import ServerInviteTransaction, TimerValues

TRUNK = "192.0.2.10"
STRANGER = "198.51.100.7"


def invite(frm: str = "4445001", *extra: str) -> Request:
    lines = [
        "INVITE sip:100@192.0.2.1 SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-1",
        "Max-Forwards: 70",
        f"From: <sip:{frm}@192.0.2.10>;tag=a",
        "To: <sip:100@192.0.2.1>",
        "Call-ID: c1",
        "CSeq: 1 INVITE",
        *extra,
        "Content-Length: 0",
        "",
        "",
    ]
    msg = parse_message("\r\n".join(lines).encode())
    assert isinstance(msg, Request)
    return msg


def call_from(host: str, req: Request) -> InboundCall:
    return InboundCall(
        call_id=req.call_id,
        peer=("udp", host, 5060),
        caller=req.from_.uri.split(":", 1)[1].split("@", 1)[0],
        called="100",
        remote_tag="a",
        local_tag="b",
        t_invite=0.0,
        invite_tx=ServerInviteTransaction(("z9hG4bKa", host, "INVITE"), ("udp", host, 5060), False, TimerValues()),
        invite=req,
        remote_target=req.from_.uri,
        route_set=[],
        remote_cseq=1,
    )


SECURITY = SecuritySettings.model_validate({"trusted_networks": ["192.0.2.0/24"]})


def test_a_number_from_an_untrusted_peer_is_served_but_not_believed() -> None:
    who = identify(call_from(STRANGER, invite("4445001", "P-Asserted-Identity: <sip:4449999@x>")), SECURITY)
    assert (who.number, who.trusted) == ("4445001", False)  # its PAI is no more believed than its From


@pytest.mark.parametrize(
    ("pai", "number"),
    [
        ("<sip:+4930123@trunk.example>", "+4930123"),
        ('"Ann" <sip:4447001@trunk;user=phone>', "4447001"),
        ("<tel:+4930999;cpc=ordinary>", "+4930999"),
        ("<tel:+111>, <sip:+222@x>", "+111"),  # the first of two (RFC 3325 allows a sip and a tel URI)
        ("<sip:broken", "4445001"),  # unreadable: From's number
        ("", "4445001"),
    ],
)
def test_a_trusted_peer_is_believed_and_its_asserted_identity_preferred(pai: str, number: str) -> None:
    extra = (f"P-Asserted-Identity: {pai}",) if pai else ()
    who = identify(call_from(TRUNK, invite("4445001", *extra)), SECURITY)
    assert (who.number, who.trusted) == (number, True)


def test_asserted_identity_can_be_ignored_by_setting() -> None:
    security = SecuritySettings.model_validate(
        {"trusted_networks": ["192.0.2.0/24"], "caller_id": {"use_asserted_identity": False}}
    )
    who = identify(call_from(TRUNK, invite("4445001", "P-Asserted-Identity: <sip:4449999@x>")), security)
    assert (who.number, who.trusted) == ("4445001", True)


@pytest.mark.parametrize(
    ("extra", "number", "trusted"),
    [
        (("P-Asserted-Identity: <sip:+4930123@trunk.example>",), "+4930123", True),  # a trunk's call, asserted
        ((), "4445001", False),  # anyone else relayed by the proxy: its From is only a claim
        (("P-Asserted-Identity: <sip:broken",), "4445001", False),
    ],
)
def test_behind_a_proxy_only_an_asserted_identity_is_believed(
    extra: tuple[str, ...], number: str, trusted: bool
) -> None:
    security = SecuritySettings.model_validate(
        {"trusted_networks": ["192.0.2.0/24"], "caller_id": {"require_asserted_identity": True}}
    )
    who = identify(call_from(TRUNK, invite("4445001", *extra)), security)
    assert (who.number, who.trusted) == (number, trusted)
    # from an untrusted peer nothing changes: served, not believed
    assert identify(call_from(STRANGER, invite("4445001", *extra)), security).trusted is False


def test_nobody_is_trusted_by_default() -> None:
    who = identify(call_from("127.0.0.1", invite()), SecuritySettings())
    assert who.trusted is False


def test_trust_verdicts_from_a_flood_of_sources_stay_bounded_and_right() -> None:
    """Every datagram's source is asked about: spoofed sources must not grow the remembered verdicts."""
    security = SecuritySettings.model_validate({"trusted_networks": ["10.0.0.0/16"]})
    for i in range(10_000):
        assert security.trusts(f"10.0.{i // 256 % 256}.{i % 256}") is True
        assert security.trusts(f"192.0.{i // 256 % 256}.{i % 256}") is False
        assert security.trusts(f"not-an-address-{i}") is False
    assert len(security._verdicts) <= 4096
    assert security.trusts("10.0.255.1") is True and security.trusts("10.1.0.1") is False


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gate(per_number: int = 2, window: float = 3600.0, max_numbers: int = 100) -> tuple[TextGate, list[str], Clock]:
    sent: list[str] = []
    clock = Clock()
    return TextGate(lambda to, body, reason: sent.append(to), per_number, window, max_numbers, clock), sent, clock


def test_one_number_gets_at_most_the_cap_within_the_window() -> None:
    g, sent, clock = gate(per_number=2, window=3600)
    for _ in range(5):
        g.send("4445001", "hello", "hotkey")
        clock.now += 60
    assert sent == ["4445001"] * 2
    assert g.counters.texts_refused["per_number_cap"] == 3
    g.send("4445002", "hello", "hotkey")  # another number has a cap of its own
    assert sent[-1] == "4445002"
    clock.now = 1000.0 + 3600 + 1  # the first text has left the window: one more may go
    g.send("4445001", "hello", "hotkey")
    assert sent.count("4445001") == 3
    g.send("4445001", "hello", "hotkey")  # the second (at 1060) is still inside it
    assert sent.count("4445001") == 3


def test_a_flood_of_distinct_numbers_stays_within_the_table_cap() -> None:
    g, sent, clock = gate(per_number=1, max_numbers=100)
    for i in range(10_000):
        g.send(f"+49{i:08d}", "hello", "callback")
        assert g.size <= 100
    assert len(sent) == 100
    assert g.counters.texts_refused["table_full"] == 9_900
    # a refusal never resets a cap: the numbers texted are still remembered
    g.send("+4900000000", "again", "callback")
    assert len(sent) == 100
    clock.now += 3601  # once their window has passed they are forgotten, and new numbers fit again
    g.send("+4999999999", "hello", "callback")
    assert g.size == 1 and sent[-1] == "+4999999999"


def test_a_cap_of_zero_sends_nothing_and_remembers_nothing() -> None:
    g, sent, _ = gate(per_number=0)
    g.send("4445001", "hello", "hotkey")
    assert sent == [] and g.size == 0 and g.counters.texts_refused["per_number_cap"] == 1


def test_an_overlong_number_never_becomes_a_key() -> None:
    g, sent, _ = gate()
    g.send("9" * 5000, "hello", "hotkey")  # the outbox refuses it with its own word
    assert g.size == 0 and len(sent) == 1


def test_numbers_are_masked_in_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    g, _, _ = gate(per_number=0)
    g.send("4445001", "hello", "hotkey")
    assert "4445001" not in caplog.text and str(logmask.number("4445001")) in caplog.text
