"""Every table keyed by remote input stays within its cap under a flood of distinct keys.

The SIP core's server transactions (``security.limits.sip_transactions``), the
registrar's expiry heap (rebuilt once it doubles), the callbacks API's
logged-out sessions (``security.limits.revoked_sessions``), and the gauges
that show them (ivr/web/mapmetrics.py). The text cap's table of numbers is
tests/test_caller_trust.py's.
"""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry

from ivr.calls.trust import TextGate
from ivr.sip.message import Request, parse_message
from ivr.sip.registrar import Credential, Registrar, RegistrarSettings
from ivr.sip.ua import UaConfig, UserAgent
from ivr.web.mapmetrics import TablesCollector, session_table, sip_tables
from ivr.web.sessions import Sessions

PEER = ("udp", "127.0.0.1", 5062)


def options(branch: str) -> bytes:
    return (
        f"OPTIONS sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-{branch}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:scan@127.0.0.1>;tag=t\r\nTo: <sip:100@127.0.0.1>\r\n"
        f"Call-ID: {branch}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_a_flood_of_distinct_transactions_stays_within_the_cap() -> None:
    ua = UserAgent(UaConfig(max_transactions=100), rng=random.Random(1))
    for i in range(5_000):
        ua.receive(options(f"b{i}"), PEER, 0.0)
        assert ua.server_transactions <= 100
    answered = ua.datagrams_to_send()
    assert len(answered) == 100 and ua.stats.transactions_refused == 4_900
    ua.receive(options("b7"), PEER, 0.1)  # a copy of a held one is still answered
    assert len(ua.datagrams_to_send()) == 1
    ua.handle_timer(40.0)  # Timer J (32 s) has run: the table empties and new requests are served again
    assert ua.server_transactions == 0
    ua.receive(options("after"), PEER, 40.0)
    assert len(ua.datagrams_to_send()) == 1


REALM = "frontdesk"


def register(nonce: str, nc: int, now: float, reg: Registrar) -> int:
    ha1 = hashlib.md5(f"alice:{REALM}:pw".encode()).hexdigest()
    ha2 = hashlib.md5(b"REGISTER:sip:127.0.0.1").hexdigest()
    response = hashlib.md5(f"{ha1}:{nonce}:{nc:08x}:c:auth:{ha2}".encode()).hexdigest()
    auth = (
        f'Digest username="alice", realm="{REALM}", nonce="{nonce}", uri="sip:127.0.0.1", '
        f'response="{response}", algorithm=MD5, qop=auth, nc={nc:08x}, cnonce="c"'
    )
    msg = parse_message(
        (
            "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-r\r\n"
            "From: <sip:alice@127.0.0.1>;tag=p\r\nTo: <sip:alice@127.0.0.1>\r\nCall-ID: reg\r\n"
            f"CSeq: {nc} REGISTER\r\nContact: <sip:alice@127.0.0.1:5062>\r\nExpires: 3600\r\n"
            f"Authorization: {auth}\r\nContent-Length: 0\r\n\r\n"
        ).encode()
    )
    assert isinstance(msg, Request)
    return reg.register(msg, PEER, now).status


def test_a_phone_refreshing_its_registration_without_end_keeps_the_expiry_heap_small() -> None:
    reg = Registrar(
        RegistrarSettings(realm=REALM),
        {"alice": Credential(hashlib.md5(f"alice:{REALM}:pw".encode()).hexdigest())},
        b"0123456789abcdef0123",
    )
    nonce = dict(p.split("=", 1) for p in reg.challenge(0.0).headers[0][1][7:].replace('"', "").split(", "))["nonce"]
    for nc in range(1, 5_001):
        assert register(nonce, nc, nc * 0.01, reg) == 200
        assert reg.expiry_entries <= reg.expiry_limit
    assert reg.active == 1 and reg.expiry_entries <= 2 + 1024
    assert reg.next_expiry() == 50.0 + 3600  # the live binding's own expiry survived the rebuilds
    assert [b.username for b in reg.expire(50.0 + 3600)] == ["alice"]


NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_a_flood_of_logouts_stays_within_the_cap_and_no_logged_out_token_comes_back() -> None:
    sessions = Sessions(b"0123456789abcdef0123", timedelta(hours=8), max_revoked=50)
    out: list[str] = []
    for i in range(500):
        token, _ = sessions.issue("1001", NOW + timedelta(seconds=i))
        sessions.revoke(token, NOW + timedelta(seconds=i))
        out.append(token)
        assert sessions.revoked <= 50
    assert sessions.revoked_forgotten == 450
    later = NOW + timedelta(seconds=600)
    assert all(sessions.check(t, later) is None for t in out)  # forgotten ones are refused by the agent's floor
    fresh, _ = sessions.issue("1001", later)  # a session begun after them lives on
    other, _ = sessions.issue("1002", NOW)  # and so does another agent's
    assert sessions.check(fresh, later) == "1001" and sessions.check(other, later) == "1002"
    sessions.revoke(fresh, NOW + timedelta(hours=8, minutes=9))  # the old ones would be dead: all forgotten
    assert sessions.revoked == 1 and sessions.check(fresh, NOW + timedelta(hours=8, minutes=9)) is None


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_the_tables_are_gauged_with_their_caps() -> None:
    ua = UserAgent(UaConfig(max_transactions=100), rng=random.Random(1))
    for i in range(150):
        ua.receive(options(f"b{i}"), PEER, 0.0)
    gate = TextGate(lambda to, body, reason: None, 1, 3600, 10, lambda: 0.0)
    for i in range(12):
        gate.send(f"+49{i}", "x", "hotkey")
    sessions = Sessions(b"0123456789abcdef0123", timedelta(hours=8), max_revoked=7)
    registry = CollectorRegistry()
    registry.register(TablesCollector(gate, [*sip_tables(ua), session_table(sessions)]))
    assert value(registry, "frontdesk_bounded_map_entries", map="sip_transactions") == 100
    assert value(registry, "frontdesk_bounded_map_limit", map="sip_transactions") == 100
    assert value(registry, "frontdesk_bounded_map_refused_total", map="sip_transactions") == 50
    assert value(registry, "frontdesk_bounded_map_entries", map="text_numbers") == 10
    assert value(registry, "frontdesk_bounded_map_refused_total", map="text_numbers") == 2
    assert value(registry, "frontdesk_texts_refused_total", reason="table_full") == 2
    assert value(registry, "frontdesk_bounded_map_limit", map="revoked_sessions") == 7
    assert value(registry, "frontdesk_bounded_map_entries", map="registrar_expiry_heap") == 0
    assert value(registry, "frontdesk_untrusted_caller_id_total", action="text") == 0
