"""Valid SIP datagrams of one caller's dialog and the mutations the fuzz benchmark applies to them, pure.

:class:`Dialog` builds the bytes a well-behaved phone would send in one call (INVITE, ACK, BYE, CANCEL,
INFO, OPTIONS, a re-INVITE, REGISTER with a digest that is right, responses to our requests), so that a
mutation of one of them reaches as deep as the part it breaks. :func:`mutate` applies one to three of the
mutations the issue names: byte flips, insertions, deletions, truncation, duplicated, dropped and swapped
lines, header values replaced, and numbers pushed to extremes, including runs of more than 4,300 digits
(Python's ``int()`` refuses those with ValueError unless the length is checked first).

Everything random comes from the ``random.Random`` passed in, so a seed replays a run exactly.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from ivr.sip.message import Request, build_response

REALM = "frontdesk"
AGENT, PASSWORD = "1001", "fuzz-secret"
SERVER = "127.0.0.1:5060"

FRAGMENTS = [
    b"\r\n",
    b"\r\n ",
    b"\r\n\r\n",
    b"\n",
    b":",
    b";",
    b",",
    b" ",
    b"\t",
    b"<",
    b">",
    b'"',
    b"\\",
    b"=",
    b"@",
    b"[",
    b"]",
    b"/",
    b"%",
    b"\x00",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b";tag=",
    b";branch=",
    b";rport",
    b';x="a,b"',  # a quoted comma: list splitting must keep it, and nothing may recurse on it
    b";expires=",
    b"sip:",
    b"SIP/2.0",
]
# numbers pushed to the extremes: around every limit the parser checks, and past int()'s digit limit
EXTREME_NUMBERS = [
    b"",
    b"0",
    b"00",
    b"-1",
    b"+1",
    b"1e9",
    b"0x10",
    b"127",
    b"128",
    b"255",
    b"256",
    b"65535",
    b"65536",
    b"99999",
    b"2147483647",
    b"2147483648",
    b"4294967295",
    b"4294967296",
    b"18446744073709551616",
    b"9" * 4301,
    b"1" * 6000,
    b"0" * 4400 + b"7",
    "\u00b2".encode(),  # superscript two: str.isdigit() says yes, int() says no
    "\u0663".encode(),  # Arabic-Indic three: int() takes it
    "\uff11".encode(),  # full-width one
]
JUNK_VALUES = [
    b"",
    b" ",
    b"x",
    b"<sip:a",
    b"<>",
    b"sip:",
    b"nobody",
    b"1",
    b";tag=",
    b'"unterminated',
    b"SIP/2.0/UDP",
    b"SIP/2.0/UDP [::1",
    b"SIP/2.0/UDP 127.0.0.1:" + b"9" * 4400,
    b"Digest ",
    b'Digest username="1001", realm="frontdesk"',
    b"\x00\x00",
    b"\xff\xfe",
    b"a" * 300,
]
EXTRA_HEADERS = [
    b"Max-Forwards: 0",
    b"Max-Forwards: " + b"9" * 4400,
    b"Expires: " + b"9" * 4400,
    b"Content-Length: " + b"9" * 4400,
    b"l: 7",
    b"Require: 100rel",
    b"Route: <sip:127.0.0.1;lr>",
    b"Record-Route: <sip:127.0.0.1;lr>, <sip:127.0.0.2",
    b"Via: SIP/2.0/UDP 127.0.0.1:" + b"9" * 4400 + b";branch=z9hG4bK-x",
    b"Contact: *",
    b"Contact: <sip:1001@127.0.0.1:" + b"9" * 4400 + b">;expires=" + b"9" * 4400,
    b"Content-Type: application/dtmf-relay",
    b"Content-Type: application/dtmf",
    b"Authorization: Digest ,,,",
    b" folded continuation",
]
DIGIT_RUN = re.compile(rb"[0-9]+")


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def sdp_offer(port: int = 4000, payloads: str = "0 8 101") -> bytes:
    lines = [
        "v=0",
        "o=caller 1 1 IN IP4 127.0.0.1",
        "s=-",
        "c=IN IP4 127.0.0.1",
        "t=0 0",
        f"m=audio {port} RTP/AVP {payloads}",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=sendrecv",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


@dataclass
class Dialog:
    """One caller's call: the identifiers its requests carry, and what it has learned from our responses."""

    n: int  # tells the callers apart
    transport: str = "UDP"
    port: int = 5070
    to_tag: str = ""  # from our 180/200
    cseq: int = 1
    branches: int = 0

    @property
    def call_id(self) -> str:
        return f"fuzz-{self.n}@127.0.0.1"

    @property
    def from_tag(self) -> str:
        return f"ft-{self.n}"

    @property
    def invite_branch(self) -> str:
        return f"z9hG4bK-fz{self.n}-0"

    def new_branch(self) -> str:
        self.branches += 1
        return f"z9hG4bK-fz{self.n}-{self.branches}"

    def request(
        self,
        method: str,
        *,
        branch: str | None = None,
        cseq: int | None = None,
        to_tag: str | None = None,
        headers: tuple[str, ...] = (),
        body: bytes = b"",
        content_type: str = "application/sdp",
        uri: str = f"sip:100@{SERVER}",
    ) -> bytes:
        tag = self.to_tag if to_tag is None else to_tag
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/{self.transport} 127.0.0.1:{self.port};branch={branch or self.new_branch()};rport",
            "Max-Forwards: 70",
            f'From: "Caller {self.n}" <sip:555{self.n % 10000:04d}@127.0.0.1:{self.port}>;tag={self.from_tag}',
            f"To: <sip:100@{SERVER}>" + (f";tag={tag}" if tag else ""),
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq if cseq is None else cseq} {method}",
            f"Contact: <sip:555{self.n % 10000:04d}@127.0.0.1:{self.port}>",
            "Allow: INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE",
            "User-Agent: fuzz-phone/1.0",
            *headers,
        ]
        if body:
            lines.append(f"Content-Type: {content_type}")
        lines += [f"Content-Length: {len(body)}", "", ""]
        return "\r\n".join(lines).encode() + body

    # -- the requests of one call ------------------------------------------------------------
    def invite(self) -> bytes:
        return self.request(
            "INVITE", branch=self.invite_branch, cseq=1, to_tag="", body=sdp_offer(4000 + self.n % 1000)
        )

    def ack(self) -> bytes:
        return self.request("ACK", cseq=1)

    def ack_non_2xx(self) -> bytes:
        return self.request("ACK", branch=self.invite_branch, cseq=1)

    def cancel(self) -> bytes:
        return self.request("CANCEL", branch=self.invite_branch, cseq=1, to_tag="")

    def _next_cseq(self) -> int:
        self.cseq += 1
        return self.cseq

    def bye(self) -> bytes:
        return self.request("BYE", cseq=self._next_cseq())

    def reinvite(self) -> bytes:
        return self.request("INVITE", cseq=self._next_cseq(), body=sdp_offer(5000 + self.n % 1000, "8 0 101"))

    def info(self, rng: random.Random) -> bytes:
        key = rng.choice("0123456789*#")
        if rng.random() < 0.5:
            return self.request(
                "INFO",
                cseq=self._next_cseq(),
                body=f"Signal={key}\r\nDuration=160\r\n".encode(),
                content_type="application/dtmf-relay",
            )
        return self.request("INFO", cseq=self._next_cseq(), body=key.encode(), content_type="application/dtmf")

    def options(self) -> bytes:
        return self.request("OPTIONS", to_tag="", cseq=1)

    def register(self, nonce: str, rng: random.Random) -> bytes:
        """A REGISTER whose digest is right (a fresh cnonce each time, so the replay check passes).

        Now and then the nonce is mutated first and the digest computed over the mutated bytes, as an
        agent who knows the password could: so the nonce check itself meets hostile bytes.
        """
        uri = "sip:127.0.0.1"
        cnonce = f"{rng.getrandbits(32):08x}"
        raw = nonce.encode()
        if rng.random() < 0.1:
            raw = mutate(rng, raw)
        ha1 = _md5(f"{AGENT}:{REALM}:{PASSWORD}")
        ha2 = _md5(f"REGISTER:{uri}")
        response = hashlib.md5(f"{ha1}:".encode() + raw + f":00000001:{cnonce}:auth:{ha2}".encode()).hexdigest()
        auth = (
            f'Digest username="{AGENT}", realm="{REALM}", nonce="\x00NONCE\x00", uri="{uri}", '
            f'response="{response}", algorithm=MD5, qop=auth, nc=00000001, cnonce="{cnonce}"'
        )
        lines = [
            f"REGISTER {uri} SIP/2.0",
            f"Via: SIP/2.0/{self.transport} 127.0.0.1:{self.port};branch={self.new_branch()};rport",
            "Max-Forwards: 70",
            f"From: <sip:{AGENT}@127.0.0.1>;tag={self.from_tag}",
            f"To: <sip:{AGENT}@127.0.0.1>",
            f"Call-ID: reg-{self.call_id}",
            f"CSeq: {self._next_cseq()} REGISTER",
            f"Contact: <sip:{AGENT}@127.0.0.1:{self.port}>;expires={rng.choice((0, 60, 120, 3600))}",
            f"Expires: {rng.choice((0, 60, 300))}",
            f"Authorization: {auth}",
            "Content-Length: 0",
            "",
            "",
        ]
        return "\r\n".join(lines).encode().replace(b"\x00NONCE\x00", raw)


def response_to(req: Request, status: int) -> bytes:
    """The phone's answer to a request we sent it (our BYE, REFER, UPDATE)."""
    return build_response(req, status, to_tag=None).to_bytes()


# -- mutations ---------------------------------------------------------------------------------


def _pos(rng: random.Random, data: bytearray) -> int:
    return rng.randrange(len(data) + 1)


def _flip(rng: random.Random, data: bytearray) -> bytearray:
    for _ in range(rng.randint(1, 4)):
        if data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return data


def _random_byte(rng: random.Random, data: bytearray) -> bytearray:
    if data:
        data[rng.randrange(len(data))] = rng.randrange(256)
    return data


def _insert(rng: random.Random, data: bytearray) -> bytearray:
    pos = _pos(rng, data)
    data[pos:pos] = rng.choice(FRAGMENTS) if rng.random() < 0.8 else rng.randbytes(rng.randint(1, 16))
    return data


def _delete(rng: random.Random, data: bytearray) -> bytearray:
    pos = _pos(rng, data)
    del data[pos : pos + rng.randint(1, 16)]
    return data


def _truncate(rng: random.Random, data: bytearray) -> bytearray:
    return data[: _pos(rng, data)]


def _lines(data: bytearray) -> tuple[list[bytes], bytes]:
    head, sep, body = bytes(data).partition(b"\r\n\r\n")
    return head.split(b"\r\n"), sep + body


def _duplicate_line(rng: random.Random, data: bytearray) -> bytearray:
    lines, rest = _lines(data)
    i = rng.randrange(len(lines))
    lines.insert(rng.randrange(len(lines) + 1), lines[i])
    return bytearray(b"\r\n".join(lines) + rest)


def _drop_line(rng: random.Random, data: bytearray) -> bytearray:
    lines, rest = _lines(data)
    del lines[rng.randrange(len(lines))]
    return bytearray(b"\r\n".join(lines) + rest)


def _swap_lines(rng: random.Random, data: bytearray) -> bytearray:
    lines, rest = _lines(data)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return bytearray(b"\r\n".join(lines) + rest)


def _number(rng: random.Random, data: bytearray) -> bytearray:
    runs = [m.span() for m in DIGIT_RUN.finditer(data)]
    if not runs:
        return _insert(rng, data)
    for _ in range(rng.randint(1, 2)):
        start, end = rng.choice(runs)
        data[start:end] = rng.choice(EXTREME_NUMBERS)
        runs = [m.span() for m in DIGIT_RUN.finditer(data)]
        if not runs:
            break
    return data


def _header_value(rng: random.Random, data: bytearray) -> bytearray:
    lines, rest = _lines(data)
    i = rng.randrange(len(lines))
    name = lines[i].split(b":", 1)[0] if i else lines[i]
    lines[i] = name + b": " + rng.choice(JUNK_VALUES) if i else name + b" " + rng.choice(JUNK_VALUES)
    return bytearray(b"\r\n".join(lines) + rest)


def _extra_header(rng: random.Random, data: bytearray) -> bytearray:
    lines, rest = _lines(data)
    lines.insert(rng.randint(1, len(lines)), rng.choice(EXTRA_HEADERS))
    return bytearray(b"\r\n".join(lines) + rest)


MUTATIONS = {
    "flip": _flip,
    "byte": _random_byte,
    "insert": _insert,
    "delete": _delete,
    "truncate": _truncate,
    "duplicate_line": _duplicate_line,
    "drop_line": _drop_line,
    "swap_lines": _swap_lines,
    "number": _number,
    "header_value": _header_value,
    "extra_header": _extra_header,
}
_KINDS = list(MUTATIONS.values())
# numbers and line-level changes reach the header parsers; byte-level ones the tokenizer
_WEIGHTS = [1.0, 0.5, 1.0, 0.7, 0.4, 0.6, 0.6, 0.3, 2.0, 1.0, 0.8]


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to three mutations of ``data``."""
    buf = bytearray(data)
    for fn in rng.choices(_KINDS, _WEIGHTS, k=rng.randint(1, 3)):
        buf = fn(rng, buf)
    return bytes(buf)
