"""SIP message parsing, serialising, stream framing and response building.

Real-world shapes come from RFC 4475 (torture tests) and RFC 3261 section 7:
compact names, folding, LWS around colons, repeated and comma-joined Via,
bodies framed by Content-Length, bare LF. Properties: generated messages
survive a round trip, arbitrary or mutated bytes raise nothing but
SipParseError, and the TCP framer cuts a stream split anywhere into the same
messages.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ivr.sip.message import (
    COMPACT_FORMS,
    MAX_MESSAGE_SIZE,
    Request,
    Response,
    SipParseError,
    StreamFramer,
    build_response,
    canonical_name,
    parse_decimal,
    parse_message,
    split_list,
    uri_host_port,
    usable_target,
)


def sip(text: str) -> bytes:
    """Test messages are written with LF; the wire uses CRLF."""
    return text.replace("\n", "\r\n").encode("utf-8")


def parse_request(data: bytes) -> Request:
    msg = parse_message(data)
    assert isinstance(msg, Request)
    return msg


def parse_response(data: bytes) -> Response:
    msg = parse_message(data)
    assert isinstance(msg, Response)
    return msg


def parse_error(data: bytes) -> SipParseError:
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    return info.value


OPTIONS = """\
OPTIONS sip:user@example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKopt1
Max-Forwards: 70
From: <sip:caller@example.org>;tag=a1
To: <sip:user@example.com>
Call-ID: opt1@192.0.2.1
CSeq: 7 OPTIONS
Content-Length: 0

"""


# ---------------------------------------------------------------------------
# real-world parsing


def test_plain_request_fields() -> None:
    req = parse_request(sip(OPTIONS))
    assert (req.method, req.uri, req.bad_version) == ("OPTIONS", "sip:user@example.com", False)
    assert req.cseq == (7, "OPTIONS")
    assert req.call_id == "opt1@192.0.2.1"
    assert req.from_.uri == "sip:caller@example.org"
    assert req.from_.tag == "a1"
    assert req.to.tag == ""
    via = req.top_via
    assert (via.transport, via.host, via.port, via.branch) == ("UDP", "192.0.2.1", 5060, "z9hG4bKopt1")
    assert req.body == b""
    assert [k for k, _ in req.headers] == ["via", "max-forwards", "from", "to", "call-id", "cseq", "content-length"]


def test_compact_forms_expand_to_full_names() -> None:
    data = sip(
        """\
INVITE sip:bob@example.com SIP/2.0
v: SIP/2.0/UDP pc33.example.com;branch=z9hG4bKcompact
f: "Alice" <sip:alice@example.com>;tag=88
t: Bob <sip:bob@example.com>
i: compact.1@pc33.example.com
CSeq: 1 INVITE
m: <sip:alice@pc33.example.com>
k: timer, 100rel
s: hello
o: presence
c: application/sdp
l: 4

abcdTRAILING
"""
    )
    req = parse_request(data)
    assert req.get("via") == req.get("v") == req.get("VIA") == "SIP/2.0/UDP pc33.example.com;branch=z9hG4bKcompact"
    assert req.from_.display == "Alice"
    assert req.from_.tag == "88"
    assert req.to.display == "Bob"
    assert req.call_id == "compact.1@pc33.example.com"
    assert req.get("contact") == "<sip:alice@pc33.example.com>"
    assert req.get_all("supported") == ["timer", "100rel"]
    assert req.get("subject") == "hello"
    assert req.get("event") == "presence"
    assert req.get("content-type") == "application/sdp"
    assert req.get("content-length") == "4"
    # the body is cut at Content-Length; trailing octets are noise (RFC 3261 18.3)
    assert req.body == b"abcd"
    names = [k for k, _ in req.headers]
    assert names == [
        "via",
        "from",
        "to",
        "call-id",
        "cseq",
        "contact",
        "supported",
        "subject",
        "event",
        "content-type",
        "content-length",
    ]


@pytest.mark.parametrize(("short", "full"), sorted(COMPACT_FORMS.items()))
def test_every_compact_form_is_case_insensitive(short: str, full: str) -> None:
    assert canonical_name(short) == full
    assert canonical_name(short.upper()) == full
    assert canonical_name(f" {short} ") == full


def test_case_insensitive_names_and_lws_around_colon() -> None:
    data = sip(
        """\
OPTIONS sip:user@example.com SIP/2.0
vIA   :   SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKlws
MaX-fOrWaRdS: 0068
fROM:<sip:caller@example.org>;tag=a1
TO	: <sip:user@example.com>
cAlL-iD :lws@192.0.2.1
CSEQ   :   12   OPTIONS
content-LENGTH :  0

"""
    )
    req = parse_request(data)
    assert req.get("Max-Forwards") == "0068"
    assert req.get("via") == "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKlws"
    assert req.call_id == "lws@192.0.2.1"
    assert req.cseq == (12, "OPTIONS")
    assert req.from_.tag == "a1"
    assert req.top_via.port is None
    assert req.top_via.sent_by == "192.0.2.1"


def test_folded_header_lines_are_joined_with_one_space() -> None:
    data = sip(
        """\
INVITE sip:bob@example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.2;branch=z9hG4bKfold
TO :
 sip:bob@example.com ;   tag    = 1918181833n
from   : "J Rosenberg \\\\\\"" <sip:jdrosen@example.com>
  ;
  tag = 98asjd8
Call-ID: fold.1@192.0.2.2
cseq: 0009
  INVITE
NewFangledHeader:   newfangled value
 continued newfangled value
\tand a tab-folded line
UnknownHeaderWithUnusualValue: ;;,,;;,;
Content-Length: 0

"""
    )
    req = parse_request(data)
    assert req.cseq == (9, "INVITE")
    assert req.get("newfangledheader") == "newfangled value continued newfangled value and a tab-folded line"
    assert req.get("unknownheaderwithunusualvalue") == ";;,,;;,;"
    assert req.to.uri == "sip:bob@example.com"
    assert req.to.tag == "1918181833n"
    assert req.from_.uri == "sip:jdrosen@example.com"
    assert req.from_.tag == "98asjd8"


def test_many_via_headers_and_comma_joined_values_keep_their_order() -> None:
    data = sip(
        """\
OPTIONS sip:user@example.com SIP/2.0
Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKone, SIP/2.0/SCTP t2.example.com;branch=z9hG4bKtwo
v: SIP/2.0/TLS t3.example.com:5061;branch=z9hG4bKthree
Max-Forwards: 70
VIA: SIP/2.0/UDP [2001:db8::9]:5070;branch=z9hG4bKfour;received=192.0.2.9,
 SIP/2.0/TCP t5.example.com;branch=z9hG4bKfive
From: <sip:caller@example.org>;tag=a1
To: <sip:user@example.com>
Call-ID: vias@192.0.2.1
CSeq: 1 OPTIONS
Content-Length: 0

"""
    )
    req = parse_request(data)
    vias = req.get_all("via")
    assert [v.split(";")[0] for v in vias] == [
        "SIP/2.0/UDP t1.example.com",
        "SIP/2.0/SCTP t2.example.com",
        "SIP/2.0/TLS t3.example.com:5061",
        "SIP/2.0/UDP [2001:db8::9]:5070",
        "SIP/2.0/TCP t5.example.com",
    ]
    top = req.top_via
    assert (top.transport, top.host, top.branch) == ("UDP", "t1.example.com", "z9hG4bKone")
    # get() is the first raw value, unsplit
    assert (
        req.get("via") == "SIP/2.0/UDP t1.example.com;branch=z9hG4bKone, SIP/2.0/SCTP t2.example.com;branch=z9hG4bKtwo"
    )


def test_split_list_ignores_commas_in_quotes_and_angle_brackets() -> None:
    value = '"Doe, John" <sip:j@x.com;a=1,2>;q=0.5 , <sip:k@y.com> ,, "a\\",b" <sip:z@z>'
    assert split_list(value) == ['"Doe, John" <sip:j@x.com;a=1,2>;q=0.5', "<sip:k@y.com>", '"a\\",b" <sip:z@z>']
    assert split_list("  one  ") == ["one"]


def test_non_list_headers_are_not_split() -> None:
    data = sip(OPTIONS).replace(b"Content-Length", b'WWW-Authenticate: Digest realm="a", nonce="b"\r\nContent-Length')
    req = parse_request(data)
    assert req.get_all("www-authenticate") == ['Digest realm="a", nonce="b"']


def test_body_with_content_length_and_extra_octets_in_the_datagram() -> None:
    body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
    head = sip(OPTIONS.replace("Content-Length: 0\n\n", "")).replace(b"OPTIONS", b"INVITE")
    data = head + b"Content-Type: application/sdp\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    # RFC 4475 3.1.1.8: a second request after the body is noise to discard
    req = parse_request(data + sip("INVITE sip:joe@example.com SIP/2.0\nCall-ID: other\n\n"))
    assert req.body == body
    assert req.call_id == "opt1@192.0.2.1"


def test_udp_body_without_content_length_runs_to_the_end() -> None:
    data = sip(OPTIONS.replace("Content-Length: 0\n", "")) + b"hello"
    assert parse_request(data).body == b"hello"


def test_bare_lf_line_endings() -> None:
    data = OPTIONS.replace("Content-Length: 0", "Content-Length: 5").encode() + b"ab\ncd"
    assert b"\r" not in data
    req = parse_request(data)
    assert req.cseq == (7, "OPTIONS")
    assert req.body == b"ab\ncd"


def test_leading_blank_lines_before_the_start_line_are_ignored() -> None:
    req = parse_request(b"\r\n\r\n\n" + sip(OPTIONS))
    assert req.method == "OPTIONS"


def test_message_without_final_empty_line() -> None:
    data = sip(OPTIONS).rstrip(b"\r\n")
    assert parse_request(data).get("content-length") == "0"


def test_response_parsing_with_utf8_reason_and_empty_reason() -> None:
    head = """\
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKresp
From: <sip:caller@example.org>;tag=a1
To: <sip:user@example.com>;tag=b2
Call-ID: resp@192.0.2.1
CSeq: 7 OPTIONS
Content-Length: 0

"""
    resp = parse_response(sip("SIP/2.0 200 = 2**3 * 5**2 <Hundert Hundert>\n" + head))
    assert (resp.status, resp.reason) == (200, "= 2**3 * 5**2 <Hundert Hundert>")
    resp = parse_response(sip("SIP/2.0 200 \u041e\u041a \u2713\n" + head))
    assert resp.reason == "\u041e\u041a \u2713"
    resp = parse_response(sip("SIP/2.0 100 \n" + head))
    assert (resp.status, resp.reason) == (100, "")
    assert resp.to.tag == "b2"


def test_extension_method_with_unusual_characters() -> None:
    """RFC 4475 3.1.1.2 (intmeth): methods are case-sensitive tokens.

    The request is valid: the parser must accept it so the UA can answer it
    501 Not Implemented.
    """
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    uri = "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com"
    from_params = "fromParam''~+*_!.-%=\"\u0440\u0430\u0431\";tag=_token~1'+`*%!-."
    data = sip(
        f"""\
{method} {uri} SIP/2.0
Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~
To: "BEL:\x07 DEL:\x7f" <sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com>
From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;{from_params}
Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/"][?}}{{
CSeq: 139122385 {method}
Max-Forwards: 255
extensionHeader-!.%*+_`'~:\ufeff\u5927\u505c\u96fb
Content-Length: 0

"""
    )
    req = parse_request(data)
    assert req.method == method
    assert req.cseq == (139122385, method)
    assert req.from_.tag == "_token~1'+`*%!-."
    assert req.get("extensionheader-!.%*+_`'~") == "\ufeff\u5927\u505c\u96fb"


def test_mixed_case_method_matches_its_cseq() -> None:
    """Methods are case-sensitive (RFC 3261 7.1): `fooBar` with CSeq `1 fooBar` is consistent."""
    data = sip(OPTIONS.replace("OPTIONS sip", "fooBar sip").replace("7 OPTIONS", "7 fooBar"))
    req = parse_request(data)
    assert req.method == "fooBar"
    assert req.cseq == (7, "fooBar")


def test_lower_case_sip_version_is_accepted() -> None:
    """RFC 3261 7.1: "The SIP-Version string is case-insensitive"."""
    data = sip(OPTIONS.replace("SIP/2.0\n", "sip/2.0\n", 1))
    req = parse_request(data)
    assert req.bad_version is False
    assert req.method == "OPTIONS"


def test_lws_inside_via_sent_protocol() -> None:
    """RFC 3261 25.1: SLASH = SWS "/" SWS, so `SIP / 2.0 / UDP` is a valid Via (RFC 4475 3.1.1.1)."""
    data = sip(
        OPTIONS.replace(
            "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKopt1",
            "Via  : SIP  /   2.0\n /UDP\n    192.0.2.1:5060;branch=z9hG4bKopt1",
        )
    )
    via = parse_request(data).top_via
    assert (via.transport, via.host, via.port, via.branch) == ("UDP", "192.0.2.1", 5060, "z9hG4bKopt1")


WSINV = """\
INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0
TO :
 sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n
from   : "J Rosenberg \\\\\\"" <sip:jdrosen@example.com>
  ;
  tag = 98asjd8
MaX-fOrWaRdS: 0068
Call-ID: wsinv.ndaksdj@192.0.2.1
Content-Length   : {length}
cseq: 0009
  INVITE
Via  : SIP  /   2.0
 /UDP
    192.0.2.2;branch=390skdjuw
s :
NewFangledHeader:   newfangled value
 continued newfangled value
UnknownHeaderWithUnusualValue: ;;,,;;,;
Content-Type: application/sdp
Route:
 <sip:services.example.com;lr;unknownwith=value;unknown-no-value>
v:  SIP  / 2.0  / TCP     spindle.example.com   ;
  branch  =   z9hG4bK9ikj8  ,
 SIP  /    2.0   / UDP  192.168.255.111   ; branch=
 z9hG4bK30239
m:"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam =
      newvalue ;
  secondparam ; q = 0.33

"""

WSINV_BODY = (
    "v=0\no=mhandley 29739 7272939 IN IP4 192.0.2.3\ns=-\nc=IN IP4 192.0.2.4\nt=0 0\nm=audio 49217 RTP/AVP 0 12\n"
)


def test_short_tortuous_invite() -> None:
    """RFC 4475 3.1.1.1 (wsinv): a valid INVITE that uses every kind of LWS the grammar allows."""
    body = sip(WSINV_BODY)
    data = sip(WSINV.format(length=len(body))) + body
    req = parse_request(data)
    assert req.uri == "sip:vivekg@chair-dnrc.example.com;unknownparam"
    assert req.cseq == (9, "INVITE")
    assert req.to.tag == "1918181833n"
    assert req.from_.tag == "98asjd8"
    assert req.get("subject") == ""
    assert len(req.get_all("via")) == 3
    via = req.top_via
    assert (via.transport, via.host, via.branch) == ("UDP", "192.0.2.2", "390skdjuw")
    assert req.body == body


# ---------------------------------------------------------------------------
# malformed input: statuses


def _base_invite(**replace: str) -> str:
    text = OPTIONS.replace("OPTIONS", "INVITE")
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize(
    ("label", "text", "status"),
    [
        ("no Call-ID", OPTIONS.replace("Call-ID: opt1@192.0.2.1\n", ""), 400),
        ("no CSeq", OPTIONS.replace("CSeq: 7 OPTIONS\n", ""), 400),
        ("no Via", OPTIONS.replace("Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKopt1\n", ""), 400),
        ("no From", OPTIONS.replace("From: <sip:caller@example.org>;tag=a1\n", ""), 400),
        ("no To", OPTIONS.replace("To: <sip:user@example.com>\n", ""), 400),
        ("CSeq not a number", OPTIONS.replace("CSeq: 7", "CSeq: seven"), 400),
        ("CSeq negative", OPTIONS.replace("CSeq: 7", "CSeq: -3"), 400),
        ("CSeq too large", OPTIONS.replace("CSeq: 7", "CSeq: 36893488147419103232"), 400),
        ("CSeq method mismatch", OPTIONS.replace("CSeq: 7 OPTIONS", "CSeq: 7 INVITE"), 400),
        ("CSeq without method", OPTIONS.replace("CSeq: 7 OPTIONS", "CSeq: 7"), 400),
        ("Content-Length negative", OPTIONS.replace("Content-Length: 0", "Content-Length: -999"), 400),
        ("Content-Length not a number", OPTIONS.replace("Content-Length: 0", "Content-Length: zero"), 400),
        ("body shorter than Content-Length", OPTIONS.replace("Content-Length: 0", "Content-Length: 9999"), 400),
        ("header without colon", OPTIONS.replace("Max-Forwards: 70", "Max-Forwards 70"), 400),
        ("header name with space", OPTIONS.replace("Max-Forwards: 70", "Max Forwards: 70"), 400),
        ("Via bad protocol", OPTIONS.replace("SIP/2.0/UDP", "HTTP/1.1/UDP"), 400),
        ("Via bad port", OPTIONS.replace("192.0.2.1:5060", "192.0.2.1:99999"), 400),
        ("Via no sent-by", OPTIONS.replace("SIP/2.0/UDP 192.0.2.1:5060;branch", "SIP/2.0/UDP ;branch"), 400),
        ("From unterminated <", OPTIONS.replace("<sip:caller@example.org>", "<sip:caller@example.org"), 400),
        ("To without URI", OPTIONS.replace("To: <sip:user@example.com>", "To: nobody"), 400),
        ("unsupported version", OPTIONS.replace("SIP/2.0\n", "SIP/7.0\n", 1), 505),
        ("SIP/3.0", _base_invite(**{"SIP/2.0\n": "SIP/3.0\n"}), 505),
    ],
)
def test_malformed_requests_carry_the_status_to_answer(label: str, text: str, status: int) -> None:
    exc = parse_error(sip(text))
    assert exc.status == status, label
    assert isinstance(exc.partial, Request), label
    assert exc.reason


@pytest.mark.parametrize(
    ("label", "data"),
    [
        ("empty", b""),
        ("only line ends", b"\r\n\r\n"),
        ("junk", b"\x00\xff\xfe garbage"),
        ("two-word start line", b"INVITE sip:bob@example.com\r\n\r\n"),
        ("no colon in Request-URI", sip(OPTIONS.replace("sip:user@example.com SIP", "user SIP", 1))),
        ("bad method characters", sip(OPTIONS.replace("OPTIONS sip", "OPT(IONS sip", 1))),
        ("HTTP request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("response with bad version", sip("SIP/3.0 200 OK\nContent-Length: 0\n\n")),
        ("response with big code", sip("SIP/2.0 4294967301 better not break the receiver\n\n")),
        ("response code out of range", sip("SIP/2.0 099 Low\n\n")),
        ("response without CSeq", sip("SIP/2.0 200 OK\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\nContent-Length: 0\n\n")),
        ("ACK with bad version", sip(OPTIONS.replace("OPTIONS", "ACK").replace("SIP/2.0\n", "SIP/3.0\n", 1))),
        ("ACK without Call-ID", sip(OPTIONS.replace("OPTIONS", "ACK").replace("Call-ID: opt1@192.0.2.1\n", ""))),
        ("too large", sip(OPTIONS) + b"x" * MAX_MESSAGE_SIZE),
    ],
)
def test_unanswerable_input_is_dropped(label: str, data: bytes) -> None:
    exc = parse_error(data)
    assert exc.status is None, label


@pytest.mark.parametrize(
    ("label", "old", "new"),
    [
        # U+00B2 SUPERSCRIPT TWO: str.isdigit() is True, int() refuses it
        ("Content-Length", "Content-Length: 0", "Content-Length: \u00b2"),
        ("CSeq number", "CSeq: 7 OPTIONS", "CSeq: \u00b2 OPTIONS"),
        ("Via port", "192.0.2.1:5060", "192.0.2.1:\u00b2"),
    ],
)
def test_unicode_digits_raise_only_sip_parse_error(label: str, old: str, new: str) -> None:
    exc = parse_error(sip(OPTIONS.replace(old, new)))
    assert exc.status == 400, label


def test_unicode_digits_in_status_code_raise_only_sip_parse_error() -> None:
    exc = parse_error(sip("SIP/2.0 \u00b200 OK\nContent-Length: 0\n\n"))
    assert exc.status is None


LONG = "9" * 4301  # one digit past int()'s limit: int(LONG) raises ValueError


@pytest.mark.parametrize(
    ("label", "old", "new"),
    [
        ("Content-Length", "Content-Length: 0", f"Content-Length: {LONG}"),
        ("CSeq number", "CSeq: 7 OPTIONS", f"CSeq: {LONG} OPTIONS"),
        ("Via port", "192.0.2.1:5060", f"192.0.2.1:{LONG}"),
        ("Via port of zeros", "192.0.2.1:5060", "192.0.2.1:" + "0" * 5000),
        ("Via port above 65535", "192.0.2.1:5060", "192.0.2.1:65536"),
    ],
)
def test_numbers_too_long_for_int_raise_only_sip_parse_error_with_400(label: str, old: str, new: str) -> None:
    exc = parse_error(sip(OPTIONS.replace(old, new)))
    assert exc.status == 400, label
    assert len(exc.reason) < 100, label  # the reason quotes a short prefix, not 4,301 digits


def test_leading_zeros_are_read_without_converting_the_whole_run() -> None:
    req = parse_request(sip(OPTIONS.replace("192.0.2.1:5060", "192.0.2.1:" + "0" * 5000 + "5060")))
    assert req.top_via.port == 5060
    req = parse_request(sip(OPTIONS.replace("CSeq: 7", "CSeq: " + "0" * 5000 + "7")))
    assert req.cseq == (7, "OPTIONS")


@pytest.mark.parametrize(
    ("text", "maximum", "clamp", "expected"),
    [
        ("0", 10, False, 0),
        ("10", 10, False, 10),
        ("11", 10, False, None),
        ("11", 10, True, 10),
        (LONG, 2**32 - 1, False, None),
        (LONG, 2**32 - 1, True, 2**32 - 1),
        ("0" * 5000 + "42", 100, False, 42),
        ("", 10, False, None),
        ("-1", 10, False, None),
        ("+1", 10, False, None),
        (" 1", 10, False, None),
        ("\u00b2", 10, False, None),
        ("\u0663", 10, False, None),  # int() would take an Arabic-Indic three; the wire is ASCII
    ],
)
def test_parse_decimal(text: str, maximum: int, clamp: bool, expected: int | None) -> None:
    assert parse_decimal(text, maximum, clamp=clamp) == expected


def test_uri_host_port_with_a_port_too_long_for_int() -> None:
    assert uri_host_port(f"sip:bob@example.com:{LONG}") == ("example.com", None)
    assert uri_host_port("sip:bob@example.com:70000") == ("example.com", None)
    assert uri_host_port("sip:bob@[2001:db8::1]:5062;transport=tcp") == ("[2001:db8::1]", 5062)


def test_a_quoted_comma_in_the_top_via_is_stamped_without_endless_recursion() -> None:
    # found by the coverage-guided run (ivr/fuzz/guided.py): split_list keeps a quoted comma, so the one
    # "part" still held a comma and _stamp_via called itself on it until RecursionError
    req = parse_request(sip(OPTIONS.replace(";branch=z9hG4bKopt1", ';x="a,b";branch=z9hG4bKopt1')))
    resp = build_response(req, 200, received="198.51.100.7", rport=5062)
    via = resp.get("via") or ""
    assert via.startswith('SIP/2.0/UDP 192.0.2.1:5060;x="a,b";branch=z9hG4bKopt1')
    assert via.endswith(";received=198.51.100.7")


@pytest.mark.parametrize(
    ("uri", "usable"),
    [
        ("sip:5551234@192.0.2.1:5070", True),
        ("sips:bob@example.com;transport=tcp", True),
        ("tel:+15551234", True),
        ("sip:a b@example.com", False),  # a space would split our start line
        ("sip:bob@example.com\r\nX-Injected: 1", False),
        ("sip:bob@example.com\x00", False),
        ("sip:b\udcffb@example.com", False),  # a non-UTF-8 byte, surrogate-escaped
        ("sip:bob@example.com>", False),
        ("bob@example.com", False),
        ("", False),
    ],
)
def test_usable_target(uri: str, usable: bool) -> None:
    assert usable_target(uri) is usable


# ---------------------------------------------------------------------------
# generated messages: round trip and robustness

TOKEN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
tokens = st.text(TOKEN, min_size=1, max_size=12)
hosts = st.sampled_from(["example.com", "192.0.2.1", "[2001:db8::1]"]) | st.builds(
    "{}.{}".format,
    st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8),
    st.sampled_from(["com", "net"]),
)
ports = st.none() | st.integers(1, 65535)
methods = st.sampled_from(["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "REGISTER"]) | st.text(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=10
)
# header values: no control characters, no surrounding whitespace (the parser strips it)
values = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")),
    max_size=30,
).map(str.strip)
# the transaction headers are drawn on their own; generated extras must not shadow them
extra_names = tokens.map(canonical_name).filter(
    lambda n: n not in ("content-length", "via", "from", "to", "call-id", "cseq")
)


@st.composite
def headers_for(draw: st.DrawFn, method: str) -> list[tuple[str, str]]:
    def hostport() -> str:
        port = draw(ports)
        host = draw(hosts)
        return f"{host}:{port}" if port else host

    vias = [
        f"SIP/2.0/{draw(st.sampled_from(['UDP', 'TCP', 'TLS']))} {hostport()};branch=z9hG4bK{draw(tokens)}"
        for _ in range(draw(st.integers(1, 3)))
    ]
    if len(vias) > 1 and draw(st.booleans()):
        vias = [", ".join(vias)]
    headers = [("via", v) for v in vias]
    headers.append(("from", f"<sip:{draw(tokens)}@{draw(hosts)}>;tag={draw(tokens)}"))
    to_tag = draw(st.none() | tokens)
    headers.append(("to", f"<sip:{draw(tokens)}@{draw(hosts)}>" + (f";tag={to_tag}" if to_tag else "")))
    headers.append(("call-id", draw(tokens) + "@" + draw(hosts)))
    headers.append(("cseq", f"{draw(st.integers(0, 2**31 - 1))} {method}"))
    headers.extend(draw(st.lists(st.tuples(extra_names, values), max_size=5)))
    headers = draw(st.permutations(headers))
    return headers


@st.composite
def requests(draw: st.DrawFn) -> Request:
    method = draw(methods)
    headers = draw(headers_for(method))
    body = draw(st.binary(max_size=200))
    headers.append(("content-length", str(len(body))))
    uri = f"sip:{draw(tokens)}@{draw(hosts)}"
    return Request(headers=headers, body=body, method=method, uri=uri)


@st.composite
def responses(draw: st.DrawFn) -> Response:
    method = draw(methods)
    headers = draw(headers_for(method))
    body = draw(st.binary(max_size=200))
    headers.append(("content-length", str(len(body))))
    reason = draw(st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=20))
    return Response(headers=headers, body=body, status=draw(st.integers(100, 699)), reason=reason)


messages = requests() | responses()


@given(messages)
def test_round_trip(msg: Request | Response) -> None:
    wire = msg.to_bytes()
    again = parse_message(wire)
    assert again == msg
    assert again.to_bytes() == wire


@given(requests())
def test_round_trip_keeps_transaction_headers(req: Request) -> None:
    again = parse_request(req.to_bytes())
    assert again.cseq == req.cseq
    assert again.top_via == req.top_via
    assert again.from_ == req.from_
    assert again.to == req.to
    assert again.get_all("via") == req.get_all("via")


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_sip_parse_error(data: bytes) -> None:
    try:
        parse_message(data)
    except SipParseError:
        pass


@settings(max_examples=300)
@given(st.binary(max_size=200).map(lambda b: b"INVITE sip:a@b SIP/2.0\r\n" + b))
def test_arbitrary_headers_raise_only_sip_parse_error(data: bytes) -> None:
    try:
        parse_message(data)
    except SipParseError:
        pass


# fragments that tend to break parsers: separators, numbers, digits int() refuses
FRAGMENTS = [
    b"\r\n",
    b"\n",
    b"\r\n ",
    b"\r\n\r\n",
    b":",
    b";",
    b",",
    b" ",
    b"\t",
    b"<",
    b">",
    b'"',
    b"\\",
    b"/",
    b"=",
    b"[",
    b"]",
    b"\x00",
    b"\xff",
    b"0",
    b"-1",
    b"99999999999",
    b"SIP/2.0",
    b"z9hG4bK",
    b"tag=",
    "\u00b2".encode(),
    "\u0663".encode(),
    "\u2028".encode(),
    b"Content-Length: 5",
    b"l:",
    b"v:",
]
NUMBERS = [b"", b"-1", b"+1", b" 1", b"1.5", b"0x10", b"99999999999", "\u00b2".encode(), "\u0663".encode(), b"\xff"]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(messages).to_bytes())
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["number", "number", "insert", "delete", "replace", "truncate"]))
        digits = [m.span() for m in re.finditer(rb"(?<=[: ])[0-9]+", bytes(data))]
        if kind == "number" and digits:
            # numbers are where parsers convert text: Content-Length, CSeq, ports, status
            start, end = draw(st.sampled_from(digits))
            data[start:end] = draw(st.sampled_from(NUMBERS))
        elif kind == "insert":
            data[pos:pos] = draw(st.sampled_from(FRAGMENTS) | st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif kind == "replace":
            end = pos + draw(st.integers(1, 6))
            data[pos:end] = draw(st.sampled_from(FRAGMENTS))
        else:
            del data[pos:]
    return bytes(data)


# derandomized so every run tries the same inputs; no shrinking, which can take
# half a minute on these inputs, so a failure reports the raw mutated message
@settings(
    max_examples=300,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
@given(mutated())
def test_mutated_messages_raise_only_sip_parse_error(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except SipParseError as exc:
        assert exc.status in (None, 400, 505)
        assert exc.partial is None or isinstance(exc.partial, Request)
        return
    # what parses is routable: the transaction headers are there and valid
    assert msg.cseq[0] >= 0
    assert msg.top_via.sent_by
    assert msg.from_.uri
    assert msg.to.uri


# ---------------------------------------------------------------------------
# TCP stream framing


@st.composite
def cut_stream(draw: st.DrawFn) -> tuple[list[bytes], list[bytes]]:
    frames = [m.to_bytes() for m in draw(st.lists(messages, min_size=1, max_size=4))]
    stream = b""
    for f in frames:
        # RFC 5626 keep-alives between messages are skipped
        stream += draw(st.sampled_from([b"", b"\r\n", b"\r\n\r\n"])) + f
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    return frames, pieces


@settings(max_examples=60)
@given(cut_stream())
def test_stream_framer_cuts_a_stream_split_anywhere_into_the_same_messages(
    case: tuple[list[bytes], list[bytes]],
) -> None:
    frames, pieces = case
    framer = StreamFramer()
    got: list[bytes] = []
    for piece in pieces:
        got.extend(framer.feed(piece))
    assert got == frames
    assert [parse_message(f) for f in got] == [parse_message(f) for f in frames]


def test_stream_framer_byte_at_a_time() -> None:
    body = b"v=0\r\n"
    one = sip(OPTIONS.replace("Content-Length: 0", f"Content-Length: {len(body)}")) + body
    two = sip(OPTIONS.replace("opt1@", "opt2@"))
    framer = StreamFramer()
    got: list[bytes] = []
    for i, byte in enumerate(one + b"\r\n\r\n" + two):
        got.extend(framer.feed(bytes([byte])))
        if i < len(one) - 1:
            assert got == []
    assert got == [one, two]


def test_stream_framer_finds_content_length_anywhere_in_the_head() -> None:
    """Content-Length need not be the last header; compact `l` counts too."""
    body = b"hello"
    text = OPTIONS.replace("Content-Length: 0\n", "").replace("Max-Forwards: 70\n", "Max-Forwards: 70\nl: 5\n")
    one = sip(text) + body
    two = sip(OPTIONS.replace("Content-Length: 0\n", "").replace("CSeq: 7", "Content-Length: 0\nCSeq: 8"))
    assert StreamFramer().feed(one + two) == [one, two]


def test_stream_framer_without_content_length_raises() -> None:
    framer = StreamFramer()
    with pytest.raises(SipParseError) as info:
        framer.feed(sip(OPTIONS.replace("Content-Length: 0\n", "")))
    assert info.value.status is None


def test_stream_framer_refuses_an_endless_header_block() -> None:
    framer = StreamFramer()
    with pytest.raises(SipParseError):
        framer.feed(b"INVITE sip:a@b SIP/2.0\r\n" + b"X: y\r\n" * 4000)


def test_stream_framer_waits_for_the_whole_body() -> None:
    data = sip(OPTIONS.replace("Content-Length: 0", "Content-Length: 10")) + b"0123456789"
    framer = StreamFramer()
    assert framer.feed(data[:-1]) == []
    assert framer.feed(data[-1:]) == [data]
    assert framer.feed(b"\r\n\r\n") == []


# ---------------------------------------------------------------------------
# building responses

INVITE_FOR_RESPONSE = """\
INVITE sip:bob@example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKtop;rport
Via: SIP/2.0/TCP proxy1.example.com;branch=z9hG4bKp1, SIP/2.0/UDP proxy2.example.com;branch=z9hG4bKp2
Max-Forwards: 68
From: "Alice" <sip:alice@example.org>;tag=from1
To: Bob <sip:bob@example.com>
Call-ID: br@192.0.2.10
CSeq: 314159 INVITE
Contact: <sip:alice@192.0.2.10:5070>
Subject: lunch
Content-Length: 0

"""


def test_build_response_copies_the_transaction_headers_and_adds_the_to_tag() -> None:
    req = parse_request(sip(INVITE_FOR_RESPONSE))
    resp = build_response(req, 180, to_tag="ours", extra=(("Contact", "<sip:fd@127.0.0.1>"),))
    assert (resp.status, resp.reason) == (180, "Ringing")
    assert resp.get_all("via") == req.get_all("via")
    assert [v for k, v in resp.headers if k == "via"] == [v for k, v in req.headers if k == "via"]
    assert resp.get("from") == req.get("from")
    assert resp.get("to") == "Bob <sip:bob@example.com>;tag=ours"
    assert resp.to.tag == "ours"
    assert resp.call_id == req.call_id
    assert resp.cseq == (314159, "INVITE")
    assert resp.get("contact") == "<sip:fd@127.0.0.1>"
    # request-only headers stay behind
    assert resp.get("max-forwards") is None
    assert resp.get("subject") is None
    again = parse_response(resp.to_bytes())
    assert again.headers == [*resp.headers, ("content-length", "0")]


def test_build_response_100_gets_no_tag_and_existing_tag_is_kept() -> None:
    req = parse_request(sip(INVITE_FOR_RESPONSE))
    assert build_response(req, 100, to_tag="ours").to.tag == ""
    tagged = parse_request(
        sip(INVITE_FOR_RESPONSE.replace("To: Bob <sip:bob@example.com>", "To: <sip:b@x>;TAG=theirs"))
    )
    resp = build_response(tagged, 200, to_tag="ours")
    assert resp.get("to") == "<sip:b@x>;TAG=theirs"
    assert resp.to.tag == "theirs"


def test_build_response_keeps_a_to_tag_written_with_lws() -> None:
    """`To: <sip:b@x> ; tag=theirs` already has a tag (SEMI = SWS ";" SWS): no second one."""
    req = parse_request(sip(INVITE_FOR_RESPONSE.replace("To: Bob <sip:bob@example.com>", "To: <sip:b@x> ; tag=theirs")))
    resp = build_response(req, 200, to_tag="ours")
    assert resp.to.tag == "theirs"
    assert "ours" not in (resp.get("to") or "")


def test_build_response_reason_phrases() -> None:
    req = parse_request(sip(INVITE_FOR_RESPONSE))
    assert build_response(req, 487).reason == "Request Terminated"
    assert build_response(req, 299).reason == "Unknown"
    assert build_response(req, 400, "Bad Request (why)").reason == "Bad Request (why)"


def test_build_response_stamps_received_and_rport() -> None:
    req = parse_request(sip(INVITE_FOR_RESPONSE))
    resp = build_response(req, 200, received="192.0.2.10", rport=5070)
    # RFC 3581: rport asked for, so both are filled in even when the host matches
    assert resp.get_all("via")[0] == "SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKtop;rport=5070;received=192.0.2.10"
    assert resp.get_all("via")[1:] == req.get_all("via")[1:]

    no_rport = parse_request(sip(INVITE_FOR_RESPONSE.replace(";rport", "")))
    same = build_response(no_rport, 200, received="192.0.2.10", rport=5070)
    assert same.get_all("via")[0] == "SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKtop"
    # RFC 3261 18.2.1: sent-by differs from the source address
    natted = build_response(no_rport, 200, received="198.51.100.7", rport=40000)
    assert natted.get_all("via")[0] == "SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKtop;received=198.51.100.7"


def test_build_response_stamps_the_first_of_comma_joined_vias() -> None:
    text = INVITE_FOR_RESPONSE.replace(
        "Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKtop;rport\nVia: ",
        "Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKtop;rport;received=1.2.3.4, ",
    )
    req = parse_request(sip(text))
    resp = build_response(req, 200, received="192.0.2.10", rport=5071)
    vias = resp.get_all("via")
    assert vias[0] == "SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKtop;rport=5071;received=192.0.2.10"
    assert vias[1:] == req.get_all("via")[1:]
