"""The parser contract (only SipParseError leaves parsing) through the whole user agent, and the fuzz benchmark.

A short run of ``frontdesk bench-fuzz`` (ivr/fuzz/run.py) must find no escaped exception and leave no state;
the benchmark itself must notice an escape and leftover state (so this test can fail); hypothesis drives the
user agent with seeds and with arbitrary bytes. Then one regression test for each kind of escape the fuzzer
found: numbers longer than int() takes in Max-Forwards, Expires, SDP ports and payload types, INFO keys and
caller numbers said as a number; non-UTF-8 bytes in a caller's From copied into our BYE; a Contact that
cannot be a Request-URI.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.sip import PEER, Caller, Harness, responses, sdp_offer, statuses

from ivr import cli
from ivr.calls.router import RouterSettings
from ivr.flow.actions import CallInfo, Play
from ivr.flow.interpreter import start
from ivr.flow.program import compile_ivr, digit_prompts
from ivr.fuzz import run as fuzz_run
from ivr.fuzz.mutate import AGENT, PASSWORD, REALM, Dialog, mutate
from ivr.fuzz.run import FuzzDriver, run
from ivr.media.dtmf import parse_dtmf_info
from ivr.settings.config import parse_config
from ivr.sip.message import Request, build_response, parse_message
from ivr.sip.registrar import Credential, Registrar, RegistrarSettings, ha1
from ivr.sip.sdp import SdpError, parse_sdp
from ivr.sip.ua import UaConfig, UserAgent

LONG = "9" * 4301  # one digit past int()'s limit: int(LONG) raises ValueError


# ---------------------------------------------------------------------------
# the benchmark


def test_twenty_thousand_mutated_datagrams_escape_nothing_and_leave_no_state() -> None:
    report = run(20_000, seed=13)
    assert report.mutated >= 20_000
    assert dict(report.escapes) == {}, report.tracebacks
    assert {k: v for k, v in report.leftover.items() if v} == {}
    # the run reached deep: calls were answered and ended, malformed requests answered and dropped
    assert report.calls > 1000 and report.records > 1000
    assert report.answered_400 > 1000 and report.dropped > 1000


def test_the_command_reports_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench-fuzz", "--count", "300", "--seed", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True and out["escaped"] == 0 and out["mutated"] >= 300
    assert out["datagrams_per_second"] > 0


def test_the_benchmark_counts_an_escape_and_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = fuzz_run.UserAgent.receive

    def leaky(self: UserAgent, data: bytes, peer: tuple[str, str, int], now: float) -> None:
        if b"\x00" in data:
            raise ValueError("a parser that breaks its contract")
        real(self, data, peer, now)

    monkeypatch.setattr(fuzz_run.UserAgent, "receive", leaky)
    report = run(3000, seed=5)
    assert not report.ok
    assert report.escapes and all(k.startswith("ValueError") for k in report.escapes)
    assert cli.main(["bench-fuzz", "--count", "3000", "--seed", "5"]) == 1
    assert "escaped exceptions:" in capsys.readouterr().out


def test_the_benchmark_counts_state_left_behind() -> None:
    driver = FuzzDriver(seed=1)
    # calls held for longer than the drain outlive it: state left, and the benchmark says so
    driver.router.settings = RouterSettings(ring_limit=2.0, answer_delay=0.0, hold_time=10 * fuzz_run.DRAIN)
    d = driver.dialogs[0] = Dialog(0)
    driver._deliver(d.invite(), ("udp", "127.0.0.1", d.port), mutated=False)
    assert d.to_tag  # learned from our 180
    driver._deliver(d.ack(), ("udp", "127.0.0.1", d.port), mutated=False)
    report = driver.finish()
    assert not report.ok
    assert report.leftover["inbound_calls"] >= 1


def test_a_seed_replays_a_run_exactly() -> None:
    a, b = run(500, seed=9), run(500, seed=9)
    assert a.as_dict() == b.as_dict()


def test_mutations_push_numbers_past_the_digit_limit() -> None:
    rng = random.Random(1)
    base = Dialog(1).invite()
    longest = max(max((len(m) for m in re.findall(rb"[0-9]+", mutate(rng, base))), default=0) for _ in range(2000))
    assert longest > 4300


# ---------------------------------------------------------------------------
# hypothesis on the user agent


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1))
def test_any_seed_escapes_nothing_and_leaves_no_state(seed: int) -> None:
    report = run(150, seed=seed)
    assert report.ok, (report.escapes, report.leftover, report.tracebacks)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(st.binary(max_size=300), st.builds(lambda r: mutate(r, Dialog(0).invite()), st.randoms())),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from(["udp", "tcp"]),
)
def test_arbitrary_datagrams_in_a_live_call_escape_nothing_and_leave_no_state(
    datagrams: list[bytes], transport: str
) -> None:
    driver = FuzzDriver(seed=0)
    driver.caller(mutation_rate=0.0)  # a live call for the datagrams to land in
    d = driver.dialogs[0]
    for data in datagrams:
        driver._deliver(data, (transport, "127.0.0.1", d.port), mutated=True)
        driver.advance(driver.now + 0.5)
    report = driver.finish()
    assert report.ok, (report.escapes, report.leftover, report.tracebacks)


# ---------------------------------------------------------------------------
# regressions: one per kind of escape found


def drained(h: Harness) -> None:
    h.advance(h.now + 120.0)
    assert h.ua.calls == {}
    assert h.ua.transactions_active == 0


def test_max_forwards_too_long_for_int_gets_400_not_a_leaked_transaction() -> None:
    h = Harness()
    got = responses(h.deliver(Caller().invite(max_forwards=LONG)))
    assert [r.status for r in got] == [400]
    assert "Max-Forwards" in got[0].reason
    drained(h)


@pytest.mark.parametrize(
    ("label", "offer", "status"),
    [
        ("m= port too long for int", sdp_offer().replace(b"m=audio 4000", f"m=audio {LONG}".encode()), 488),
        (
            "m= port of 5,000 zeros and 4000",
            sdp_offer().replace(b"m=audio 4000", b"m=audio " + b"0" * 5000 + b"4000"),
            200,
        ),
        ("payload type too long for int", sdp_offer(payloads=f"{LONG} 0 101"), 200),
        ("rtpmap too long for int", sdp_offer(extra=f"a=rtpmap:{LONG} PCMU/8000\r\n"), 200),
    ],
)
def test_sdp_numbers_too_long_for_int(label: str, offer: bytes, status: int) -> None:
    h = Harness()
    c = Caller()
    got = responses(h.deliver(c.invite(body=offer)))
    assert got[-1].status == status, label
    for r in got:
        c.learn(r)
    if status == 200:
        assert h.deliver(c.ack_2xx()) == []
    drained(h)


def test_parse_sdp_refuses_a_port_too_long_for_int() -> None:
    with pytest.raises(SdpError) as exc:
        parse_sdp(sdp_offer().replace(b"m=audio 4000", f"m=audio {LONG}".encode()))
    assert exc.value.status == 488
    assert len(exc.value.reason) < 80


def test_register_expires_too_long_for_int_is_clamped() -> None:
    registrar = Registrar(
        RegistrarSettings(realm=REALM, max_expires=3600), {AGENT: Credential(ha1(AGENT, REALM, PASSWORD))}, b"k" * 32
    )
    ua = UserAgent(UaConfig(), rng=random.Random(1), registrar=registrar)
    nonce = re.search(r'nonce="([^"]+)"', registrar.challenge(0.0).headers[0][1])
    assert nonce is not None
    data = Dialog(1).register(nonce.group(1), random.Random(2))
    data = re.sub(rb"Expires: \d+", f"Expires: {LONG}".encode(), data)
    data = re.sub(rb";expires=\d+", f";expires={LONG}".encode(), data)
    ua.receive(data, PEER, 0.0)
    (reply,) = [parse_message(d) for d, _ in ua.datagrams_to_send()]
    assert reply.status == 200, reply  # type: ignore[union-attr]
    assert "expires=3600" in (reply.get("contact") or "")


@pytest.mark.parametrize(
    ("ctype", "body"),
    [("application/dtmf", LONG.encode()), ("application/dtmf", b"0" * 5000 + b"5"), ("application/dtmf-relay", b"")],
)
def test_info_keys_too_long_for_int_are_no_key(ctype: str, body: bytes) -> None:
    assert parse_dtmf_info(ctype, body) is None


def test_info_key_in_a_call_with_a_body_too_long_for_int() -> None:
    h = Harness()
    c = Caller()
    for r in responses(h.deliver(c.invite())):
        c.learn(r)
    h.deliver(c.ack_2xx())
    body = LONG.encode()
    assert statuses(h.deliver(c.request("INFO", to_tag=c.to_tag, cseq=2, body=body, content_type="application/dtmf")))
    drained(h)


SAY = """\
ivr:
  prompts: {hello: {text: hello}}
  default_flow: main
  flows:
    main:
      start: n
      screen: end
      nodes:
        n: {type: say_number, value: caller, next: end}
        end: {type: hangup}
"""


@pytest.mark.parametrize(
    ("caller", "expected"),
    [
        (LONG, digit_prompts(LONG)),
        ("0" * 5000 + "12", None),  # leading zeros: "twelve"
        ("\u00b2\u00b2", ()),  # superscripts are not digits to say
        ("+1 (555) 0100", digit_prompts("15550100")),
    ],
)
def test_say_number_of_a_caller_number_too_long_for_int(caller: str, expected: tuple[str, ...] | None) -> None:
    program = compile_ivr(parse_config(SAY, "say.yaml").ivr)
    _, actions = start(program, CallInfo(caller, "100", frozenset(), (), False, 600, 0), 0.0)
    plays = [a for a in actions if isinstance(a, Play)]
    said = plays[0].prompts if plays else ()
    if expected is None:
        assert said and "num_12" in said
    else:
        assert said == expected


def test_non_utf8_bytes_in_the_callers_from_are_copied_into_our_bye() -> None:
    h = Harness(RouterSettings(hold_time=1.0))
    c = Caller()
    invite = c.invite().replace(b'"Caller"', b'"Caf\xe9 \xff"')
    for r in responses(h.deliver(invite)):
        c.learn(r)
    h.deliver(c.ack_2xx())
    out = h.advance(h.now + 2.0)
    byes = [d for d in out if d.startswith(b"BYE ")]
    assert byes and b'To: "Caf\xe9 \xff"' in byes[0]
    drained(h)


@pytest.mark.parametrize(
    "contact",
    ["<sip:5551234@127.0.0.1:5070 X-Injected: 1>", "<sip:a\x01b@127.0.0.1>", "<sip:5551234@127.0.0.1:5070"],
)
def test_a_contact_that_cannot_be_a_request_uri_gets_400(contact: str) -> None:
    h = Harness()
    invite = Caller().invite().replace(b"Contact: <sip:5551234@127.0.0.1:5070>", f"Contact: {contact}".encode())
    got = responses(h.deliver(invite))
    assert [r.status for r in got] == [400]
    assert "Contact" in got[0].reason
    drained(h)


# ---------------------------------------------------------------------------
# coverage-guided (atheris)


@pytest.mark.slow
def test_a_coverage_guided_run_finds_nothing(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    # libFuzzer exits the process when done, so it runs in a child; crash-* files would land in tmp_path
    done = subprocess.run(
        [sys.executable, "-m", "ivr.fuzz.guided", "-runs=20000", "-seed=1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Done 20000 runs" in done.stderr
    assert not list(tmp_path.glob("crash-*"))


def test_the_coverage_guided_target_raises_on_an_escape(monkeypatch: pytest.MonkeyPatch) -> None:
    from ivr.fuzz.guided import GuidedTarget

    target = GuidedTarget()
    target.feed(b"OPTIONS sip:x SIP/2.0\r\n\r\n")  # malformed, answered or dropped: no escape
    monkeypatch.setattr(fuzz_run.UserAgent, "receive", lambda *a: 1 / 0)
    with pytest.raises(AssertionError, match="ZeroDivisionError"):
        target.feed(b"anything")


@pytest.mark.parametrize("nonce", ["1.1.\u00e9", "\u00ff.1.abc"], ids=["non-ASCII MAC", "non-UTF-8 byte in stamp"])
def test_a_right_digest_over_a_nonce_that_is_not_ascii_is_challenged_not_raised(nonce: str) -> None:
    registrar = Registrar(RegistrarSettings(realm=REALM), {AGENT: Credential(ha1(AGENT, REALM, PASSWORD))}, b"k" * 32)
    ua = UserAgent(UaConfig(), rng=random.Random(1), registrar=registrar)
    data = Dialog(1).register("NONCE", random.Random(2))
    # the digest is computed over the nonce's bytes, as an agent who knows the password could
    raw = nonce.encode("latin-1") if nonce.startswith("\u00ff") else nonce.encode()
    text = data.decode()
    response = re.search(r'response="([0-9a-f]+)"', text)
    cnonce = re.search(r'cnonce="([0-9a-f]+)"', text)
    assert response and cnonce
    ha2 = hashlib.md5(b"REGISTER:sip:127.0.0.1").hexdigest()
    right = hashlib.md5(
        ha1(AGENT, REALM, PASSWORD).encode() + b":" + raw + f":00000001:{cnonce.group(1)}:auth:{ha2}".encode()
    ).hexdigest()
    data = data.replace(b'nonce="NONCE"', b'nonce="' + raw + b'"').replace(response.group(1).encode(), right.encode())
    ua.receive(data, PEER, 0.0)
    (reply,) = [parse_message(d) for d, _ in ua.datagrams_to_send()]
    assert reply.status == 401  # type: ignore[union-attr]


def test_a_2xx_contact_that_cannot_be_a_request_uri_keeps_the_target_we_called() -> None:
    ua = UserAgent(UaConfig(), rng=random.Random(1))
    phone = ("udp", "127.0.0.1", 5090)
    ua.place_call("sip:1001@127.0.0.1:5090", phone, 40000, 0.0)
    (invite_bytes, _), *_ = ua.datagrams_to_send()
    invite = parse_message(invite_bytes)
    assert isinstance(invite, Request)
    ok = build_response(
        invite,
        200,
        to_tag="phone-1",
        extra=(("Contact", "<sip:1001@127.0.0.1:5090 X-Injected: 1>"), ("Content-Type", "application/sdp")),
        body=sdp_offer("0 101"),
    )
    ua.receive(ok.to_bytes(), phone, 0.1)
    acks = [d for d, _ in ua.datagrams_to_send() if d.startswith(b"ACK ")]
    assert acks and acks[0].startswith(b"ACK sip:1001@127.0.0.1:5090 SIP/2.0\r\n")
