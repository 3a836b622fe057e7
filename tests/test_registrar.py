"""The registrar on a virtual clock: digest challenge and response, bindings, expiry.

Every digest response here is computed in the test with hashlib from the
RFC 2617 formulas, not with the registrar's own helpers, so the two are
independent. The last tests run REGISTER through :class:`UserAgent` (its
server transaction, response headers and timers) with test_ua's harness.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry
from support.sip import Harness, responses

from ivr import cli
from ivr.settings.config import ConfigError, parse_config
from ivr.sip.message import Request, Response, parse_message
from ivr.sip.registrar import Binding, Credential, Registrar, RegistrarSettings, Reply, parse_credentials
from ivr.sip.throttle import AuthThrottle, ThrottleSettings
from ivr.sip.ua import UaConfig, UserAgent
from ivr.web.app import registrar_for
from ivr.web.mapmetrics import sip_tables
from ivr.web.metrics import SipCollector

REALM = "frontdesk"
SECRET = b"test-secret-0123456789abcdef"
PEER = ("udp", "127.0.0.1", 5062)


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


PASSWORDS = {"alice": "wonderland", "1001": "s3cret, with comma"}
AGENTS = {name: Credential(md5(f"{name}:{REALM}:{pw}")) for name, pw in PASSWORDS.items()}


def registrar(throttle_settings: ThrottleSettings | None = None, **settings: object) -> Registrar:
    throttle = AuthThrottle(throttle_settings or ThrottleSettings())
    return Registrar(RegistrarSettings(realm=REALM, **settings), AGENTS, SECRET, throttle=throttle)  # type: ignore[arg-type]


def request(
    user: str = "alice",
    *,
    call_id: str = "reg-1@phone",
    cseq: int = 1,
    contacts: tuple[str, ...] | None = None,
    expires: int | str | None = None,
    auth: str | None = None,
    uri: str = "sip:127.0.0.1",
    to_user: str | None = None,
    extra: tuple[str, ...] = (),
) -> Request:
    if contacts is None:
        contacts = (f"<sip:{user}@127.0.0.1:5062>",)
    lines = [
        f"REGISTER {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-{call_id}-{cseq};rport",
        "Max-Forwards: 70",
        f"From: <sip:{user}@127.0.0.1>;tag=phone-tag",
        f"To: <sip:{to_user or user}@127.0.0.1>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        *(f"Contact: {c}" for c in contacts),
        *([f"Expires: {expires}"] if expires is not None else []),
        *([f"Authorization: {auth}"] if auth is not None else []),
        *extra,
        "Content-Length: 0",
        "",
        "",
    ]
    msg = parse_message("\r\n".join(lines).encode())
    assert isinstance(msg, Request)
    return msg


def challenge_of(reply: Reply | Response) -> dict[str, str]:
    """WWW-Authenticate parameters, read with a regex of the test's own."""
    headers = reply.headers if isinstance(reply, Reply) else [(k, v) for k, v in reply.headers]
    values = [v for k, v in headers if k.lower() == "www-authenticate"]
    assert len(values) == 1, headers
    assert values[0].startswith("Digest ")
    return {m[0].lower(): m[1] if m[1] else m[2] for m in re.findall(r'(\w+)=(?:"([^"]*)"|([^\s,]+))', values[0])}


def authorization(
    user: str,
    password: str,
    nonce: str,
    *,
    uri: str = "sip:127.0.0.1",
    qop: bool = True,
    nc: int = 1,
    cnonce: str = "0a4f113b",
    realm: str = REALM,
    method: str = "REGISTER",
) -> str:
    ha1 = md5(f"{user}:{realm}:{password}")
    ha2 = md5(f"{method}:{uri}")
    if qop:
        response = md5(f"{ha1}:{nonce}:{nc:08x}:{cnonce}:auth:{ha2}")
        return (
            f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm=MD5, qop=auth, nc={nc:08x}, cnonce="{cnonce}"'
        )
    response = md5(f"{ha1}:{nonce}:{ha2}")
    return f'Digest username="{user}",realm="{realm}",nonce="{nonce}",uri="{uri}",response="{response}",algorithm=MD5'


def contacts_of(reply: Reply) -> list[str]:
    return [v for k, v in reply.headers if k == "Contact"]


@dataclass
class Phone:
    """A registering phone: challenge, answer, keep its Call-ID and CSeq."""

    user: str = "alice"
    password: str | None = None
    call_id: str = "reg-1@phone"
    cseq: int = 0
    qop: bool = True
    nc: int = 0
    nonce: str = ""
    peer: tuple[str, str, int] = PEER
    log: list[Reply] = field(default_factory=list)

    def send(self, reg: Registrar, now: float, auth: str | None = None, **kw: object) -> Reply:
        self.cseq += 1
        reply = reg.register(request(self.user, call_id=self.call_id, cseq=self.cseq, auth=auth, **kw), self.peer, now)  # type: ignore[arg-type]
        self.log.append(reply)
        return reply

    def register(self, reg: Registrar, now: float, **kw: object) -> Reply:
        """REGISTER, answer the 401 with credentials, return the final reply."""
        first = self.send(reg, now, **kw)
        assert first.status == 401, first
        self.nonce = challenge_of(first)["nonce"]
        self.nc = 0
        return self.again(reg, now, **kw)

    def again(self, reg: Registrar, now: float, **kw: object) -> Reply:
        """A further REGISTER with the nonce we hold (next nonce count)."""
        self.nc += 1
        password = self.password if self.password is not None else PASSWORDS.get(self.user, "x")
        auth = authorization(self.user, password, self.nonce, qop=self.qop, nc=self.nc)
        return self.send(reg, now, auth=auth, **kw)


# ---------------------------------------------------------------------------
# challenge and response


def test_register_without_credentials_is_challenged() -> None:
    reg = registrar()
    reply = reg.register(request(), PEER, 10.0)
    assert reply.status == 401
    ch = challenge_of(reply)
    assert ch["realm"] == REALM
    assert ch["algorithm"] == "MD5"
    assert ch["qop"] == "auth"
    assert "stale" not in ch
    assert ch["nonce"]
    assert reg.lookup("alice") == [] and reg.active == 0
    assert reg.requests == {"ok": 0, "challenged": 1, "rejected": 0}
    # every challenge has its own nonce
    assert challenge_of(reg.register(request(), PEER, 10.0))["nonce"] != ch["nonce"]


def test_qop_auth_response_registers_the_contact() -> None:
    reg = registrar()
    reply = Phone().register(reg, 5.0, expires=600)
    assert reply.status == 200
    assert contacts_of(reply) == ["<sip:alice@127.0.0.1:5062>;expires=600"]
    [b] = reg.lookup("alice")
    assert b == Binding(
        username="alice",
        contact="sip:alice@127.0.0.1:5062",
        peer=PEER,
        expires_at=605.0,
        call_id="reg-1@phone",
        cseq=2,
        registered_at=5.0,
    )
    assert reg.active == 1
    assert reg.requests == {"ok": 1, "challenged": 1, "rejected": 0}


def test_old_client_without_qop_registers() -> None:
    """RFC 2069 style, as pyVoIP does it: no qop/nc/cnonce, and the digest uri carries ;transport=UDP."""
    reg = registrar()
    nonce = challenge_of(reg.register(request(), PEER, 0.0))["nonce"]
    auth = authorization("alice", "wonderland", nonce, qop=False, uri="sip:127.0.0.1;transport=UDP")
    reply = reg.register(request(cseq=2, auth=auth, expires=120), PEER, 0.5)
    assert reply.status == 200
    assert [b.contact for b in reg.lookup("alice")] == ["sip:alice@127.0.0.1:5062"]


def test_wrong_password_and_unknown_user_get_the_same_403() -> None:
    reg = registrar()
    wrong = Phone(password="guess")
    first = wrong.send(reg, 0.0)
    wrong.nonce = challenge_of(first)["nonce"]
    denied = wrong.again(reg, 0.0)
    stranger = Phone(user="mallory", password="whatever")
    stranger.send(reg, 0.0)
    stranger.nonce = challenge_of(stranger.log[-1])["nonce"]
    unknown = stranger.again(reg, 0.0)
    assert (denied.status, denied.reason) == (403, "Forbidden (wrong username or password)")
    assert (unknown.status, unknown.reason, unknown.headers) == (denied.status, denied.reason, denied.headers)
    assert reg.active == 0
    assert reg.requests == {"ok": 0, "challenged": 2, "rejected": 2}


ATTACKER = ("udp", "127.0.0.1", 40000)
ELSEWHERE = ("udp", "127.0.0.2", 5062)


def guess(reg: Registrar, user: str, password: str, now: float, peer: tuple[str, str, int] = ATTACKER) -> Reply:
    """One svcrack round: REGISTER, then the challenge answered with ``password``."""
    phone = Phone(user=user, password=password, peer=peer, call_id=f"guess-{password}@{peer[1]}")
    return phone.register(reg, now)


def test_password_guessing_is_blocked_per_name_and_source_with_growing_back_off() -> None:
    reg = registrar()
    assert [guess(reg, "alice", f"guess{i}", 0.0).status for i in range(5)] == [403] * 5
    # blocked: even the right password gets the very answer of a wrong one, so a lucky guess is lost
    blocked = guess(reg, "alice", "wonderland", 1.0)
    assert (blocked.status, blocked.reason) == (403, "Forbidden (wrong username or password)")
    assert reg.active == 0
    # the real agent at another address registers all the same
    assert guess(reg, "alice", "wonderland", 2.0, ELSEWHERE).status == 200
    # after the first block (60 s) the guesser gets 5 more tries, then a block twice as long
    assert [guess(reg, "alice", f"again{i}", 61.0).status for i in range(5)] == [403] * 5
    assert guess(reg, "alice", "wonderland", 61.0 + 119.0).status == 403
    assert guess(reg, "alice", "wonderland", 61.0 + 121.0).status == 200
    assert reg.throttle.failures["register"] == 10 and reg.throttle.throttled["register"] == 2
    registry = CollectorRegistry()
    registry.register(SipCollector(UserAgent(UaConfig(), registrar=reg)))
    assert registry.get_sample_value("frontdesk_auth_throttled_total", {"door": "register"}) == 2
    assert registry.get_sample_value("frontdesk_auth_failures_total", {"door": "register"}) == 10
    assert registry.get_sample_value("frontdesk_auth_throttled_total", {"door": "login"}) == 0
    (table,) = [read() for read in sip_tables(UserAgent(UaConfig(), registrar=reg)) if read().name == "auth_throttle"]
    assert (table.entries, table.limit) == (2, 100_000)  # the source and the name; the pair went with the password


def test_unknown_names_are_challenged_and_throttled_like_known_ones() -> None:
    known, unknown = registrar(), registrar()
    seen_known = [guess(known, "alice", f"pw{i}", 0.0) for i in range(7)]
    seen_unknown = [guess(unknown, "mallory", f"pw{i}", 0.0) for i in range(7)]
    assert [(r.status, r.reason) for r in seen_known] == [(r.status, r.reason) for r in seen_unknown]
    assert known.throttle.throttled == unknown.throttle.throttled == {"register": 2, "basic": 0, "login": 0}
    # the challenge itself does not look at the name
    assert known.register(request("nobody"), ATTACKER, 1.0).status == 401


def test_many_names_from_one_source_block_the_source() -> None:
    reg = registrar()
    for i in range(20):  # svwar-found names, 4 guesses each: under the per-name limit every time
        assert guess(reg, f"user{i // 4}", f"pw{i}", 0.0).status == 403
    assert reg.throttle.wait("alice", "127.0.0.1", 0.0) == 60.0  # every name from that address now
    assert guess(reg, "alice", "wonderland", 1.0).status == 403
    assert guess(reg, "alice", "wonderland", 1.0, ELSEWHERE).status == 200


def test_a_name_guessed_from_many_sources_gives_each_new_source_one_try() -> None:
    reg = registrar(throttle_settings=ThrottleSettings(name_under_attack=10))
    for i in range(10):  # a botnet: 10 addresses, one guess each
        assert guess(reg, "alice", f"pw{i}", 0.0, ("udp", f"10.0.0.{i}", 5060)).status == 403
    # the name is under attack: a further address is blocked at its first wrong password, not its fifth
    bot = ("udp", "10.0.1.1", 5060)
    assert guess(reg, "alice", "pw-x", 0.0, bot).status == 403
    assert guess(reg, "alice", "wonderland", 0.0, bot).status == 403
    # an address that has not failed is never refused: the real agent still registers
    assert guess(reg, "alice", "wonderland", 0.0, ELSEWHERE).status == 200


def test_trusted_sources_are_never_throttled() -> None:
    throttle = AuthThrottle(ThrottleSettings(), trusted=lambda address: address == "192.0.2.10")
    reg = Registrar(RegistrarSettings(realm=REALM), AGENTS, SECRET, throttle=throttle)
    trunk = ("udp", "192.0.2.10", 5060)
    assert [guess(reg, "alice", f"pw{i}", 0.0, trunk).status for i in range(30)] == [403] * 30
    assert guess(reg, "alice", "wonderland", 0.0, trunk).status == 200
    assert len(throttle) == 0 and throttle.failures["register"] == 30


def test_a_password_with_a_comma_works() -> None:
    reg = registrar()
    assert Phone(user="1001").register(reg, 0.0).status == 200


def test_stale_nonce_is_challenged_again_with_stale_true() -> None:
    reg = registrar(nonce_lifetime=300.0)
    phone = Phone()
    assert phone.register(reg, 0.0, expires=3600).status == 200
    # a refresh with the same nonce inside its lifetime needs no new challenge
    assert phone.again(reg, 299.0, expires=3600).status == 200
    stale = phone.again(reg, 301.0, expires=3600)
    assert stale.status == 401
    ch = challenge_of(stale)
    assert ch["stale"] == "true"
    phone.nonce, phone.nc = ch["nonce"], 0
    assert phone.again(reg, 301.5, expires=3600).status == 200
    assert reg.lookup("alice")[0].expires_at == 301.5 + 3600


def test_nonce_from_before_a_restart_is_stale_not_forbidden() -> None:
    before = registrar()
    nonce = challenge_of(before.register(request(), PEER, 0.0))["nonce"]
    after = Registrar(RegistrarSettings(realm=REALM), AGENTS, b"another-secret-after-restart")
    reply = after.register(request(cseq=2, auth=authorization("alice", "wonderland", nonce)), PEER, 1.0)
    assert reply.status == 401 and challenge_of(reply)["stale"] == "true"
    # a nonce we never issued with a right digest: stale too; with a wrong one: 403
    forged = "5.1." + "0" * 32
    assert after.register(request(cseq=3, auth=authorization("alice", "wonderland", forged)), PEER, 1.0).status == 401
    assert after.register(request(cseq=4, auth=authorization("alice", "nope", forged)), PEER, 1.0).status == 403
    assert after.active == 0


def test_a_replayed_request_is_not_accepted() -> None:
    reg = registrar()
    nonce = challenge_of(reg.register(request(), PEER, 0.0))["nonce"]
    auth = authorization("alice", "wonderland", nonce, nc=1)
    assert reg.register(request(cseq=2, auth=auth), PEER, 0.1).status == 200
    # the same nonce count again, e.g. captured and sent with another Contact
    hijack = request(cseq=3, auth=auth, contacts=("<sip:alice@198.51.100.7:5060>",))
    replayed = reg.register(hijack, ("udp", "198.51.100.7", 5060), 0.2)
    assert replayed.status == 401 and challenge_of(replayed)["stale"] == "true"
    assert [b.contact for b in reg.lookup("alice")] == ["sip:alice@127.0.0.1:5062"]
    # the next nonce count is fine
    next_count = request(cseq=4, auth=authorization("alice", "wonderland", nonce, nc=2))
    assert reg.register(next_count, PEER, 0.3).status == 200


def test_without_qop_a_nonce_is_good_once() -> None:
    reg = registrar()
    phone = Phone(qop=False)
    assert phone.register(reg, 0.0).status == 200
    again = phone.again(reg, 1.0)
    assert again.status == 401 and challenge_of(again)["stale"] == "true"


@pytest.mark.parametrize(
    ("auth", "detail"),
    [
        ('Digest username="alice", realm="frontdesk"', "Authorization without nonce"),
        ('Digest username="alice, realm="frontdesk"', "malformed Authorization"),
        ("Digest", "malformed Authorization"),
        ('Digest username="alice" realm="frontdesk"', "malformed Authorization"),
        ('Digest username="alice", username="bob", realm="frontdesk"', "malformed Authorization"),
        (
            'Digest username="alice", realm="frontdesk", nonce="n", uri="sip:127.0.0.1", response="zz"',
            "malformed digest response",
        ),
        (
            f'Digest username="alice", realm="frontdesk", nonce="n", uri="sip:127.0.0.1", response="{"a" * 32}", '
            'qop=auth, cnonce="c"',
            "qop=auth needs cnonce",
        ),
        (
            f'Digest username="alice", realm="frontdesk", nonce="n", uri="sip:10.9.9.9", response="{"a" * 32}"',
            "digest uri is not the Request-URI",
        ),
    ],
)
def test_malformed_authorization_gets_400(auth: str, detail: str) -> None:
    reg = registrar()
    reply = reg.register(request(auth=auth), PEER, 0.0)
    assert reply.status == 400
    assert reply.reason is not None and reply.reason.startswith(f"Bad Request ({detail}")
    assert reg.requests["rejected"] == 1


@pytest.mark.parametrize(
    "auth",
    [
        "Basic YWxpY2U6d29uZGVybGFuZA==",
        'Digest username="alice", realm="elsewhere", nonce="n", uri="sip:127.0.0.1", response="x"',
        f'Digest username="alice", realm="frontdesk", nonce="n", uri="sip:127.0.0.1", response="{"a" * 32}", '
        "algorithm=SHA-512-256",
        f'Digest username="alice", realm="frontdesk", nonce="n", uri="sip:127.0.0.1", response="{"a" * 32}", '
        'qop=auth-int, nc=00000001, cnonce="c"',
    ],
)
def test_credentials_we_did_not_ask_for_get_a_new_challenge(auth: str) -> None:
    reply = registrar().register(request(auth=auth), PEER, 0.0)
    assert reply.status == 401
    assert "stale" not in challenge_of(reply)


def test_parse_credentials_reads_quoted_strings() -> None:
    scheme, params = parse_credentials('Digest  USERNAME="a\\"b", realm="x, y",nc=00000001 ,  qop=auth')
    assert scheme == "Digest"
    assert params == {"username": 'a"b', "realm": "x, y", "nc": "00000001", "qop": "auth"}


def test_to_must_be_the_authenticated_users_address() -> None:
    reg = registrar()
    reply = Phone().register(reg, 0.0, to_user="bob")
    assert (reply.status, reply.reason) == (403, "Forbidden (To is not your address)")
    assert reg.active == 0


def test_unsupported_require_gets_420() -> None:
    reply = registrar().register(request(extra=("Require: path",)), PEER, 0.0)
    assert reply.status == 420
    assert ("Unsupported", "path") in reply.headers


# ---------------------------------------------------------------------------
# bindings: expiry, refresh, removal


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({}, 600),  # default_expires
        ({"expires": 120}, 120),
        ({"expires": 600, "contacts": ("<sip:alice@127.0.0.1:5062>;expires=90",)}, 90),  # the param wins
        ({"expires": 5000}, 3600),  # shortened to max_expires
        ({"expires": 2**40}, 3600),
        ({"contacts": ("sip:alice@127.0.0.1:5062;expires=61",)}, 61),  # addr-spec form: params are the header's
    ],
)
def test_expiry_comes_from_contact_param_expires_header_or_default(kw: dict[str, object], expected: int) -> None:
    reg = registrar()
    reply = Phone().register(reg, 100.0, **kw)
    assert reply.status == 200
    assert contacts_of(reply) == [f"<sip:alice@127.0.0.1:5062>;expires={expected}"]
    assert reg.lookup("alice")[0].expires_at == 100.0 + expected


@pytest.mark.parametrize(
    "kw", [{"expires": 59}, {"expires": 1}, {"contacts": ("<sip:alice@127.0.0.1:5062>;expires=30",)}]
)
def test_too_brief_gets_423_with_min_expires(kw: dict[str, object]) -> None:
    reg = registrar()
    reply = Phone().register(reg, 0.0, **kw)
    assert (reply.status, reply.reason) == (423, "Interval Too Brief")
    assert ("Min-Expires", "60") in reply.headers
    assert reg.active == 0
    assert reg.requests["rejected"] == 1


def test_binding_expires_on_time() -> None:
    reg = registrar()
    Phone().register(reg, 10.0, expires=60)
    assert reg.next_expiry() == 70.0
    assert reg.expire(69.9) == []
    assert reg.lookup("alice", now=69.9) != []
    assert reg.lookup("alice", now=70.0) == []  # past its time even before expire() runs
    [gone] = reg.expire(70.0)
    assert gone.contact == "sip:alice@127.0.0.1:5062"
    assert reg.active == 0 and reg.lookup("alice") == [] and reg.next_expiry() is None


def test_refresh_extends_the_binding_and_keeps_its_first_time() -> None:
    reg = registrar()
    phone = Phone()
    phone.register(reg, 0.0, expires=120)
    phone.peer = ("udp", "127.0.0.1", 40000)  # the NAT mapping changed
    reply = phone.again(reg, 100.0, expires=120)
    assert contacts_of(reply) == ["<sip:alice@127.0.0.1:5062>;expires=120"]
    [b] = reg.lookup("alice")
    assert (b.expires_at, b.registered_at, b.cseq, b.peer) == (220.0, 0.0, 3, ("udp", "127.0.0.1", 40000))
    assert reg.expire(130.0) == []  # the first expiry time no longer counts
    assert reg.next_expiry() == 220.0
    assert reg.active == 1


def test_expires_zero_removes_one_contact() -> None:
    reg = registrar()
    phone = Phone()
    phone.register(reg, 0.0, contacts=("<sip:alice@127.0.0.1:5062>", "<sip:alice@10.0.0.2:5060;transport=tcp>"))
    assert reg.active == 2
    reply = phone.again(reg, 1.0, contacts=("<sip:alice@127.0.0.1:5062>;expires=0",))
    assert reply.status == 200
    assert contacts_of(reply) == ["<sip:alice@10.0.0.2:5060;transport=tcp>;expires=599"]
    reply = phone.again(reg, 2.0, contacts=("<sip:alice@10.0.0.2:5060;transport=tcp>",), expires=0)
    assert reply.status == 200 and contacts_of(reply) == []
    assert reg.active == 0 and reg.next_expiry() is None


def test_wildcard_removes_every_contact() -> None:
    reg = registrar()
    a, b = Phone(call_id="a@phone"), Phone(call_id="b@phone")
    a.register(reg, 0.0, contacts=("<sip:alice@127.0.0.1:5062>",))
    b.register(reg, 0.0, contacts=("<sip:alice@127.0.0.1:5064>",))
    assert reg.active == 2
    # '*' needs Expires: 0 and no other contact
    assert a.again(reg, 1.0, contacts=("*",), expires=600).status == 400
    assert a.again(reg, 1.0, contacts=("*", "<sip:alice@127.0.0.1:5062>"), expires=0).status == 400
    assert a.again(reg, 1.0, contacts=("*",)).status == 400
    reply = a.again(reg, 1.0, contacts=("*",), expires=0)
    assert reply.status == 200 and contacts_of(reply) == []
    assert reg.active == 0 and reg.lookup("alice") == []


def test_register_without_contact_lists_the_bindings() -> None:
    reg = registrar()
    Phone(call_id="a@phone").register(reg, 0.0, contacts=("<sip:alice@127.0.0.1:5062>",), expires=300)
    Phone(call_id="b@phone").register(reg, 50.0, contacts=("<sip:alice@127.0.0.1:5064>",), expires=300)
    reply = Phone(call_id="c@phone").register(reg, 100.0, contacts=())
    assert reply.status == 200
    assert contacts_of(reply) == ["<sip:alice@127.0.0.1:5062>;expires=200", "<sip:alice@127.0.0.1:5064>;expires=250"]
    # lookup: the most recent first
    assert [b.contact for b in reg.lookup("alice")] == ["sip:alice@127.0.0.1:5064", "sip:alice@127.0.0.1:5062"]


def test_older_request_of_the_same_call_id_is_refused() -> None:
    reg = registrar()
    phone = Phone()
    phone.register(reg, 0.0, expires=600)  # CSeq 2
    nonce = phone.nonce
    late = request(cseq=1, auth=authorization("alice", "wonderland", nonce, nc=5), expires=0)
    reply = reg.register(late, PEER, 1.0)
    assert (reply.status, reply.reason) == (500, "Server Internal Error (CSeq out of order)")
    assert reg.active == 1
    # another Call-ID (another phone session) may update it whatever its CSeq
    other = request(call_id="other@phone", cseq=1, auth=authorization("alice", "wonderland", nonce, nc=6), expires=0)
    assert reg.register(other, PEER, 2.0).status == 200
    assert reg.active == 0


def test_contacts_are_matched_by_address_not_by_spelling() -> None:
    reg = registrar()
    phone = Phone()
    phone.register(reg, 0.0, contacts=("<sip:alice@127.0.0.1:5062;transport=UDP;ob>",))
    phone.again(reg, 1.0, contacts=('"Alice" <SIP:alice@127.0.0.1:5062;transport=udp>',))
    assert reg.active == 1


def test_too_many_contacts_are_refused() -> None:
    reg = registrar(max_contacts=2)
    phone = Phone()
    phone.register(reg, 0.0, contacts=("<sip:alice@127.0.0.1:1>", "<sip:alice@127.0.0.1:2>"))
    reply = phone.again(reg, 1.0, contacts=("<sip:alice@127.0.0.1:3>",))
    assert reply.status == 403
    assert reg.active == 2


@pytest.mark.parametrize(
    ("kw", "detail"),
    [
        ({"expires": "soon"}, "malformed Expires"),
        ({"contacts": ("<sip:alice@127.0.0.1:5062>;expires=ten",)}, "malformed Contact expires"),
        ({"contacts": ("<tel:+15551234>",)}, "Contact is not a sip: or sips: URI"),
        ({"contacts": ("<sip:alice@127.0.0.1:5062",)}, "malformed Contact"),
    ],
)
def test_malformed_contact_or_expires_gets_400(kw: dict[str, object], detail: str) -> None:
    reg = registrar()
    reply = Phone().register(reg, 0.0, **kw)
    assert reply.status == 400
    assert reply.reason is not None and reply.reason.startswith(f"Bad Request ({detail}")
    assert reg.active == 0


# ---------------------------------------------------------------------------
# through the user agent: transaction, headers, timers, metrics


def ua_harness() -> Harness:
    h = Harness()
    h.ua = UserAgent(UaConfig(), rng=random.Random(7), registrar=registrar())
    h.router.ua = h.ua
    return h


def register_bytes(branch: str, cseq: int, auth: str | None = None, expires: int = 120) -> bytes:
    req = request(cseq=cseq, auth=auth, expires=expires, uri="sip:127.0.0.1:5060")
    req.set("via", f"SIP/2.0/UDP 127.0.0.1:5062;branch={branch};rport")
    return req.to_bytes()


def test_register_through_the_user_agent() -> None:
    h = ua_harness()
    first = register_bytes("z9hG4bK-r1", 1)
    [challenge] = responses(h.deliver(first, PEER))
    assert challenge.status == 401
    assert challenge.to.tag != ""
    assert challenge.top_via.params["received"] == "127.0.0.1" and challenge.top_via.params["rport"] == "5062"
    ch = challenge_of(challenge)
    # a copy of the request (UDP retransmission) gets the same answer, not a new nonce
    assert h.deliver(first, PEER) == [h.sent[0][1]]

    auth = authorization("alice", "wonderland", ch["nonce"], uri="sip:127.0.0.1:5060")
    [ok] = responses(h.deliver(register_bytes("z9hG4bK-r2", 2, auth), PEER))
    assert ok.status == 200
    assert ok.get_all("contact") == ["<sip:alice@127.0.0.1:5062>;expires=120"]
    assert h.ua.registrar.lookup("alice")[0].peer == PEER
    assert h.events == []  # registrations are not calls

    registry = CollectorRegistry()
    registry.register(SipCollector(h.ua))
    assert registry.get_sample_value("frontdesk_registrations_active") == 1
    for result, n in (("ok", 1), ("challenged", 1), ("rejected", 0)):
        assert registry.get_sample_value("frontdesk_register_requests_total", {"result": result}) == n
    assert registry.get_sample_value("frontdesk_sip_requests_received_total", {"method": "REGISTER"}) == 3

    # the user agent's timer runs the expiry: gone 120 s later
    assert h.ua.get_timer() is not None
    h.advance(119.0)
    assert h.ua.registrar.active == 1
    h.advance(121.0)
    assert h.ua.registrar.active == 0
    assert registry.get_sample_value("frontdesk_registrations_active") == 0
    assert h.ua.get_timer() is None


def test_user_agent_without_agents_refuses_every_login() -> None:
    h = Harness()  # UserAgent(UaConfig()): no registrar given, no agents
    [challenge] = responses(h.deliver(register_bytes("z9hG4bK-x1", 1), PEER))
    assert challenge.status == 401
    auth = authorization("alice", "wonderland", challenge_of(challenge)["nonce"], uri="sip:127.0.0.1:5060")
    assert [r.status for r in responses(h.deliver(register_bytes("z9hG4bK-x2", 2, auth), PEER))] == [403]


# ---------------------------------------------------------------------------
# config and command line


def test_hash_password_prints_a_config_line_that_logs_in(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("wonderland\n"))
    assert cli.main(["hash-password", "alice", "--realm", REALM]) == 0
    line = capsys.readouterr().out
    assert line == f"  'alice': {{ha1: {md5('alice:frontdesk:wonderland')}}}\n"
    config = parse_config("agents:\n" + line, "cfg.yaml")
    reg = registrar_for(config)
    assert reg.settings == RegistrarSettings(realm="frontdesk", min_expires=60, max_expires=3600, default_expires=600)
    assert Phone().register(reg, 0.0).status == 200


@pytest.mark.parametrize(("stdin", "name"), [("\n", "alice"), ("pw\n", "not a name")])
def test_hash_password_refuses_an_empty_password_or_a_bad_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stdin: str, name: str
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert cli.main(["hash-password", name]) == 2
    assert capsys.readouterr().out == ""


def test_config_sets_realm_expiry_and_agents() -> None:
    config = parse_config(
        "sip:\n  realm: example.org\n"
        "registrar:\n  min_expires: 30\n  max_expires: 900\n  default_expires: 300\n  nonce_lifetime: 60\n"
        f"agents:\n  '1001': {{ha1: {md5('1001:example.org:pw').upper()}, display_name: Alice}}\n",
        "cfg.yaml",
    )
    reg = registrar_for(config)
    assert reg.settings == RegistrarSettings("example.org", 30, 900, 300, 60.0)
    assert reg.credentials == {"1001": Credential(md5("1001:example.org:pw"), "Alice")}


def test_config_sets_the_login_throttle_and_trusts_its_networks() -> None:
    config = parse_config(
        "security:\n  trusted_networks: [192.0.2.0/24]\n"
        "  auth: {per_name: 2, per_source: 9, block: 30, max_block: 90, max_entries: 500}\n",
        "cfg.yaml",
    )
    throttle = registrar_for(config).throttle
    assert throttle.settings == ThrottleSettings(per_source=9, per_name=2, block=30.0, max_block=90.0, max_entries=500)
    for source in ("192.0.2.7", "198.51.100.7"):
        for _ in range(2):
            throttle.failed("register", "1001", source, 0.0)
    assert throttle.wait("1001", "192.0.2.7", 0.0) == 0.0 and throttle.wait("1001", "198.51.100.7", 0.0) == 30.0
    with pytest.raises(ConfigError, match=r"cfg.yaml:2: security.auth: .*block must not exceed max_block"):
        parse_config("security:\n  auth: {block: 100, max_block: 50}\n", "cfg.yaml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("agents:\n  1001: {ha1: " + "a" * 32 + "}\n", "cfg.yaml:2: agents.1001.[key]: write agent names in quotes"),
        ("agents:\n  alice: {ha1: secret}\n", "cfg.yaml:2: agents.alice.ha1: ha1 must be 32 hex digits"),
        ("agents:\n  alice: {password: x}\n", "cfg.yaml:2: agents.alice.ha1: Field required"),
        ("registrar:\n  min_expires: 600\n  max_expires: 60\n", "cfg.yaml:3: registrar.max_expires: max_expires (60"),
        ("registrar:\n  default_expires: 7200\n", "cfg.yaml:2: registrar.default_expires: default_expires (7200 s)"),
        ('sip:\n  realm: "a,b"\n', "cfg.yaml:2: sip.realm: use 1-100 printable characters"),
    ],
)
def test_config_errors_name_file_line_and_field(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "cfg.yaml")
    assert str(info.value).startswith(expected), str(info.value)
