"""SIP messages: parse bytes into requests/responses and serialise them back.

Pure code (no sockets, no clock). The parser accepts what RFC 3261 section 7
allows: compact header names, folded header lines, repeated and comma-joined
header values, case-insensitive names, bodies framed by Content-Length.

Whatever bytes come in, the only exception that leaves this module is
:class:`SipParseError`; it carries the status to answer with when the message
got far enough to be answered (it is a request with the headers a response
needs), otherwise ``status`` is ``None`` and the message is to be dropped.

Headers are kept as a list of ``(canonical name, raw value)`` pairs, in wire
order, and parsed further only on demand: the hot path of a call touches
Via, From, To, Call-ID and CSeq and nothing else.

The module is long because it is the whole network-facing parser
(header tables, header values, messages, TCP framing, responses). Kept in
one file, the promise above (only :class:`SipParseError` leaves, whatever
the bytes) can be checked by reading one file, and the fuzz tests in
tests/test_message.py, tests/test_ua.py and tests/test_fuzz.py (with the
benchmark of ivr/fuzz/run.py, ``frontdesk bench-fuzz``) cover all of it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import FunctionType
from typing import Final

SIP_VERSION = "SIP/2.0"

# RFC 3261 section 7.3.3 compact forms (plus RFC 3515/3891/4028 ones in use).
COMPACT_FORMS = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}

# How a lower-case header name is written on the wire when we serialise it.
_PRETTY = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
}

# Headers whose values may be joined with commas (RFC 3261 section 7.3.1).
# The others (e.g. WWW-Authenticate, Date) contain commas of their own.
LIST_HEADERS = frozenset(
    {
        "via",
        "route",
        "record-route",
        "contact",
        "allow",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "accept",
        "accept-encoding",
        "accept-language",
        "content-encoding",
        "allow-events",
        "in-reply-to",
    }
)

METHOD_RE = re.compile(r"^[A-Za-z0-9.!%*_+`'~-]+$")
MAX_MESSAGE_SIZE = 65535

REASON_PHRASES = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "Version Not Supported",
    603: "Decline",
}


# The values made for every message write their constructor out: mypyc compiles it, while the one @dataclass
# generates stays interpreted. Compiled, a frozen one stores its fields directly (the frozen guard is a __setattr__
# for Python callers, which compiled code does not go through); pure, it sets them as the generated constructor of a
# frozen dataclass does. Equality, hashing and repr are still the generated ones.
_set = object.__setattr__


def _probe() -> None:
    pass


COMPILED: Final = not isinstance(_probe, FunctionType)  # whether this module runs compiled (mypyc)


def is_digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts e.g. superscripts, which int() refuses."""
    return text.isascii() and text.isdigit()


def parse_decimal(text: str, maximum: int, *, clamp: bool = False) -> int | None:
    """The value of a run of ASCII digits from the wire, or None when it is not one or is above ``maximum``.

    The length is checked before ``int()``: more than 4,300 digits make ``int()`` raise ValueError (Python's
    int_max_str_digits), and converting a long run costs quadratic time. Leading zeros are allowed.
    With ``clamp``, a value above ``maximum`` (however many digits) gives ``maximum`` instead of None
    (RFC 3261 20.19: a too-large Expires counts as the largest).
    """
    if not is_digits(text):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(maximum)):
        return maximum if clamp else None
    value = int(digits)
    if value > maximum:
        return maximum if clamp else None
    return value


class SipParseError(Exception):
    """The bytes are not a usable SIP message.

    ``status`` is the response to send back (400, 505, ...) when the message
    is a request that can be answered; ``None`` means drop it.
    """

    def __init__(self, reason: str, status: int | None = None, partial: Request | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.partial = partial


_CANON_CACHE: dict[str, str] = {}
_PRETTY_CACHE: dict[str, str] = {}


def canonical_name(name: str) -> str:
    """Lower-case header name with compact forms expanded (memoised)."""
    try:
        return _CANON_CACHE[name]
    except KeyError:
        pass
    low = name.strip().lower()
    low = COMPACT_FORMS.get(low, low)
    if len(_CANON_CACHE) < 4096:  # bounded: names come off the wire
        _CANON_CACHE[name] = low
    return low


def pretty_name(low: str) -> str:
    try:
        return _PRETTY_CACHE[low]
    except KeyError:
        pass
    pretty = _PRETTY.get(low) or "-".join(part.capitalize() for part in low.split("-"))
    if len(_PRETTY_CACHE) < 4096:
        _PRETTY_CACHE[low] = pretty
    return pretty


def split_list(value: str) -> list[str]:
    """Split a comma-joined header value, ignoring commas in quotes and <>."""
    if "," not in value:
        return [value.strip()]
    out: list[str] = []
    depth = 0
    quoted = False
    start = 0
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            part = value[start:i].strip()
            if part:
                out.append(part)
            start = i + 1
        i += 1
    part = value[start:].strip()
    if part:
        out.append(part)
    return out


def parse_params(text: str) -> dict[str, str]:
    """``;a=1;b`` -> {"a": "1", "b": ""} (names lower-cased)."""
    params: dict[str, str] = {}
    for item in text.split(";"):
        item = item.strip()
        if not item:
            continue
        name, _, val = item.partition("=")
        params[name.strip().lower()] = val.strip().strip('"')
    return params


@dataclass(frozen=True, slots=True)
class Via:
    transport: str
    host: str
    port: int | None
    params: dict[str, str]

    def __init__(self, transport: str, host: str, port: int | None, params: dict[str, str]) -> None:
        if COMPILED:
            self.transport = transport  # type: ignore[misc]
            self.host = host  # type: ignore[misc]
            self.port = port  # type: ignore[misc]
            self.params = params  # type: ignore[misc]
        else:
            _set(self, "transport", transport)
            _set(self, "host", host)
            _set(self, "port", port)
            _set(self, "params", params)

    @property
    def branch(self) -> str:
        return self.params.get("branch", "")

    @property
    def sent_by(self) -> str:
        return f"{self.host}:{self.port}" if self.port else self.host


_VIA_PROTO_RE = re.compile(r"^\s*([^/\s]+)\s*/\s*([^/\s]+)\s*/\s*([^\s;]+)\s*(.*)$", re.DOTALL)


def parse_via(value: str) -> Via:
    """Parse one Via value (``SIP/2.0/UDP host:port;branch=...``, LWS allowed around '/')."""
    m = _VIA_PROTO_RE.match(value)
    if m is None or m.group(1).upper() != "SIP":
        raise SipParseError(f"malformed Via {value[:60]!r}", 400)
    transport, rest = m.group(3), m.group(4)
    rest = rest.strip()
    sent_by, _, ptext = rest.partition(";")
    sent_by = sent_by.strip()
    if not sent_by:
        raise SipParseError("Via without sent-by", 400)
    if sent_by.startswith("["):
        end = sent_by.find("]")
        if end < 0:
            raise SipParseError("malformed Via IPv6 host", 400)
        host = sent_by[: end + 1]
        port_text = sent_by[end + 2 :] if sent_by[end + 1 : end + 2] == ":" else ""
    else:
        host, _, port_text = sent_by.partition(":")
    port: int | None = None
    if port_text:
        port = parse_decimal(port_text, 65535)
        if not port:  # None (not digits, too long, too large) or 0
            raise SipParseError(f"malformed Via port {port_text[:20]!r}", 400)
    return Via(transport.upper(), host, port, parse_params(ptext))


@dataclass(frozen=True, slots=True)
class NameAddr:
    """From/To/Contact value: display name, URI, header parameters."""

    display: str
    uri: str
    params: dict[str, str]

    def __init__(self, display: str, uri: str, params: dict[str, str]) -> None:
        if COMPILED:
            self.display = display  # type: ignore[misc]
            self.uri = uri  # type: ignore[misc]
            self.params = params  # type: ignore[misc]
        else:
            _set(self, "display", display)
            _set(self, "uri", uri)
            _set(self, "params", params)

    @property
    def tag(self) -> str:
        return self.params.get("tag", "")


def parse_name_addr(value: str) -> NameAddr:
    value = value.strip()
    lt = value.find("<")
    if lt >= 0:
        gt = value.find(">", lt)
        if gt < 0:
            raise SipParseError("unterminated <URI>", 400)
        display = value[:lt].strip().strip('"')
        uri = value[lt + 1 : gt].strip()
        ptext = value[gt + 1 :]
    else:
        # addr-spec form: parameters after the URI belong to the header.
        display = ""
        uri, _, ptext = value.partition(";")
        uri = uri.strip()
    if not uri or ":" not in uri:
        raise SipParseError(f"malformed URI {uri!r}", 400)
    return NameAddr(display, uri, parse_params(ptext))


def uri_user(uri: str) -> str:
    """The user part of ``sip:user@host;params`` ('' when there is none)."""
    _, _, rest = uri.partition(":")
    if "@" not in rest:
        return ""
    return rest.split("@", 1)[0].split(";", 1)[0]


_TARGET_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s<>\"\x00-\x1f\x7f]+$")


def usable_target(uri: str) -> bool:
    """Whether a URI from the wire (a Contact, a From) can be the Request-URI of a request we send.

    A scheme, then ASCII without whitespace, control characters, quotes or angle brackets: anything else
    would break (or inject into) the start line of our BYE, REFER or UPDATE.
    """
    return uri.isascii() and _TARGET_RE.match(uri) is not None


def uri_host_port(uri: str) -> tuple[str, int | None]:
    _, _, rest = uri.partition(":")
    rest = rest.split("@", 1)[-1]
    rest = rest.split(";", 1)[0].split("?", 1)[0]
    if rest.startswith("["):
        end = rest.find("]")
        host = rest[: end + 1]
        port = rest[end + 2 :] if end >= 0 and rest[end + 1 : end + 2] == ":" else ""
    else:
        host, _, port = rest.partition(":")
    return host, parse_decimal(port, 65535)


@dataclass(slots=True)
class Message:
    """Headers in wire order as ``(canonical name, raw value)`` and a body.

    Change headers through :meth:`set`, :meth:`add` and :meth:`remove`: they
    keep the lookup index and the parsed Via/From/To/CSeq caches true.
    """

    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    _first: dict[str, str] | None = field(default=None, repr=False, compare=False)
    _parsed: dict[str, object] = field(default_factory=dict, repr=False, compare=False)

    def __init__(
        self,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        _first: dict[str, str] | None = None,
        _parsed: dict[str, object] | None = None,
    ) -> None:
        self.headers = [] if headers is None else headers
        self.body = body
        self._first = _first
        self._parsed = {} if _parsed is None else _parsed

    def _index(self) -> dict[str, str]:
        # read backwards, so that the first value of a repeated header is the one kept
        first = dict(reversed(self.headers))
        self._first = first
        return first

    def _changed(self) -> None:
        self._first = None
        self._parsed.clear()

    # -- header access ---------------------------------------------------
    def get(self, name: str, default: str | None = None) -> str | None:
        """First value of a header (raw, comma-joined values not split)."""
        first = self._first
        if first is None:
            first = self._index()
        value = first.get(canonical_name(name))
        return default if value is None else value

    def get_all(self, name: str) -> list[str]:
        """Every value of a header, comma-joined lists split for list headers."""
        low = canonical_name(name)
        values = [v for k, v in self.headers if k == low]
        if low in LIST_HEADERS:
            out: list[str] = []
            for v in values:
                out.extend(split_list(v))
            return out
        return values

    def set(self, name: str, value: str) -> None:
        """Replace every value of a header with one value."""
        low = canonical_name(name)
        self.headers = [(k, v) for k, v in self.headers if k != low]
        self.headers.append((low, value))
        self._changed()

    def add(self, name: str, value: str) -> None:
        self.headers.append((canonical_name(name), value))
        self._changed()

    def remove(self, name: str) -> None:
        low = canonical_name(name)
        self.headers = [(k, v) for k, v in self.headers if k != low]
        self._changed()

    # -- the headers every transaction needs (parsed once, then cached) ----
    @property
    def call_id(self) -> str:
        return self.get("call-id") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        cached = self._parsed.get("cseq")
        if cached is not None:
            return cached  # type: ignore[return-value]
        raw = self.get("cseq")
        if raw is None:
            raise SipParseError("missing CSeq", 400)
        num, _, method = raw.strip().partition(" ")
        method = method.strip()
        # the number is below 2**31 (RFC 3261 8.1.1.5); parse_decimal keeps out
        # Unicode digits and runs too long for int()
        number = parse_decimal(num, 2**31 - 1)
        if number is None:
            raise SipParseError(f"malformed CSeq {raw[:40]!r}", 400)
        if not method or not METHOD_RE.match(method):
            raise SipParseError(f"malformed CSeq {raw[:40]!r}", 400)
        value = (number, method)  # methods are case-sensitive (RFC 3261 7.1)
        self._parsed["cseq"] = value
        return value

    @property
    def top_via(self) -> Via:
        cached = self._parsed.get("via")
        if cached is not None:
            return cached  # type: ignore[return-value]
        raw = self.get("via")
        if raw is None:
            raise SipParseError("missing Via", 400)
        first = raw if "," not in raw else split_list(raw)[0]
        via = parse_via(first)
        self._parsed["via"] = via
        return via

    @property
    def from_(self) -> NameAddr:
        cached = self._parsed.get("from")
        if cached is not None:
            return cached  # type: ignore[return-value]
        raw = self.get("from")
        if raw is None:
            raise SipParseError("missing From", 400)
        value = parse_name_addr(raw)
        self._parsed["from"] = value
        return value

    @property
    def to(self) -> NameAddr:
        cached = self._parsed.get("to")
        if cached is not None:
            return cached  # type: ignore[return-value]
        raw = self.get("to")
        if raw is None:
            raise SipParseError("missing To", 400)
        value = parse_name_addr(raw)
        self._parsed["to"] = value
        return value

    def _serialise(self, first_line: str) -> bytes:
        lines = [first_line]
        for key, value in self.headers:
            if key != "content-length":
                lines.append(f"{pretty_name(key)}: {value}")
        lines.append(f"Content-Length: {len(self.body)}")
        lines.append("")
        lines.append("")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + self.body


@dataclass(slots=True)
class Request(Message):
    method: str = ""
    uri: str = ""
    bad_version: bool = False

    def __init__(
        self,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        _first: dict[str, str] | None = None,
        _parsed: dict[str, object] | None = None,
        method: str = "",
        uri: str = "",
        bad_version: bool = False,
    ) -> None:
        self.headers = [] if headers is None else headers
        self.body = body
        self._first = _first
        self._parsed = {} if _parsed is None else _parsed
        self.method = method
        self.uri = uri
        self.bad_version = bad_version

    def to_bytes(self) -> bytes:
        return self._serialise(f"{self.method} {self.uri} {SIP_VERSION}")


@dataclass(slots=True)
class Response(Message):
    status: int = 0
    reason: str = ""

    def __init__(
        self,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        _first: dict[str, str] | None = None,
        _parsed: dict[str, object] | None = None,
        status: int = 0,
        reason: str = "",
    ) -> None:
        self.headers = [] if headers is None else headers
        self.body = body
        self._first = _first
        self._parsed = {} if _parsed is None else _parsed
        self.status = status
        self.reason = reason

    def to_bytes(self) -> bytes:
        return self._serialise(f"{SIP_VERSION} {self.status} {self.reason}")


# ---------------------------------------------------------------------------
# parsing

_REQUIRED = ("via", "from", "to", "call-id", "cseq")


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    idx = data.find(b"\r\n\r\n")
    if idx >= 0:
        return data[:idx], data[idx + 4 :]
    idx = data.find(b"\n\n")  # bare LF line endings are tolerated
    if idx >= 0:
        return data[:idx], data[idx + 2 :]
    # a message with no body may lack the final empty line on UDP
    return data.rstrip(b"\r\n"), b""


def parse_message(data: bytes) -> Request | Response:
    """Parse one whole message (a datagram, or a frame cut by :class:`StreamFramer`)."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise SipParseError("message too large", None)
    # RFC 3261 section 7.5: ignore empty lines before the start line.
    data = data.lstrip(b"\r\n")
    if not data:
        raise SipParseError("empty message", None)
    head, body = _split_head(data)
    text = head.decode("utf-8", "surrogateescape")
    lines = text.replace("\r\n", "\n").split("\n")
    start = lines[0]
    if start.startswith("SIP/"):
        msg: Request | Response = _parse_status_line(start)
    else:
        msg = _parse_request_line(start)

    headers = msg.headers
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            # folded continuation of the previous header (RFC 3261 7.3.1)
            if not headers:
                raise SipParseError("continuation line before any header", _status_for(msg))
            key, value = headers[-1]
            headers[-1] = (key, value + " " + line.strip())
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise SipParseError(f"header line without colon: {line[:40]!r}", _status_for(msg), _partial(msg))
        low = _CANON_CACHE.get(name)
        if low is None:
            stripped = name.strip()
            if not stripped or not METHOD_RE.match(stripped):
                raise SipParseError(f"malformed header name {stripped[:40]!r}", _status_for(msg), _partial(msg))
            low = canonical_name(name)
        headers.append((low, value.strip()))

    first = msg._index()  # the lookup index, built once here for every later get()
    # Content-Length framing: a datagram may carry trailing junk, never less.
    clen = first.get("content-length")
    if clen is not None:
        clen = clen.strip()
        n = parse_decimal(clen, MAX_MESSAGE_SIZE)
        if n is None:
            raise SipParseError(f"malformed Content-Length {clen[:20]!r}", _status_for(msg), _partial(msg))
        if n > len(body):
            raise SipParseError("body shorter than Content-Length", _status_for(msg), _partial(msg))
        body = body[:n]
    msg.body = body

    if isinstance(msg, Request) and msg.bad_version:
        raise SipParseError("unsupported SIP version", 505 if msg.method != "ACK" else None, msg)
    for req in _REQUIRED:
        if req not in first:
            raise SipParseError(f"missing {pretty_name(req)} header", _status_for(msg), _partial(msg))
    # validate the headers every transaction depends on, so that a message
    # that leaves this function can be routed without further checks
    try:
        num_method = msg.cseq
        _ = (msg.top_via, msg.from_, msg.to)
    except SipParseError as exc:
        raise SipParseError(exc.reason, _status_for(msg), _partial(msg)) from None
    if isinstance(msg, Request) and num_method[1] != msg.method and msg.method not in ("ACK", "CANCEL"):
        raise SipParseError("CSeq method does not match request method", 400, msg)
    return msg


def _status_for(msg: Request | Response) -> int | None:
    # responses are never answered; ACKs neither
    if isinstance(msg, Request) and msg.method != "ACK":
        return 400
    return None


def _partial(msg: Request | Response) -> Request | None:
    return msg if isinstance(msg, Request) else None


def _parse_request_line(line: str) -> Request:
    parts = line.split(" ")
    if len(parts) != 3:
        raise SipParseError(f"malformed request line {line[:60]!r}", None)
    method, uri, version = parts
    if not METHOD_RE.match(method):
        raise SipParseError(f"malformed method {method[:20]!r}", None)
    if ":" not in uri:
        raise SipParseError(f"malformed Request-URI {uri[:60]!r}", None)
    if not version.upper().startswith("SIP/"):
        raise SipParseError(f"malformed request line {line[:60]!r}", None)
    # an unsupported version is answered 505 once the headers are read
    return Request(method=method, uri=uri, bad_version=version.upper() != SIP_VERSION)


def _parse_status_line(line: str) -> Response:
    parts = line.split(" ", 2)
    if len(parts) < 2 or parts[0] != SIP_VERSION:
        raise SipParseError(f"malformed status line {line[:60]!r}", None)
    code = parts[1]
    if len(code) != 3 or not is_digits(code) or not 100 <= int(code) <= 699:
        raise SipParseError(f"malformed status code {code!r}", None)
    return Response(status=int(code), reason=parts[2] if len(parts) > 2 else "")


def parse_headers_only(data: bytes) -> Request | None:
    """Best effort: a request's start line and headers, used to answer a
    malformed request with 400. Never raises."""
    try:
        head, _ = _split_head(data.lstrip(b"\r\n"))
        lines = head.decode("utf-8", "surrogateescape").replace("\r\n", "\n").split("\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not METHOD_RE.match(parts[0]) or parts[0] == "ACK":
            return None
        req = Request(method=parts[0], uri=parts[1])
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            low = name.strip().lower()
            if colon and low:
                req.headers.append((COMPACT_FORMS.get(low, low), value.strip()))
        return req
    except Exception:  # noqa: BLE001 - by contract this helper never raises
        return None


class StreamFramer:
    """Cuts a TCP byte stream into messages by Content-Length (RFC 3261 18.3).

    ``feed`` returns whole messages; keep-alive CRLFs between messages are
    skipped. A header block without a valid Content-Length cannot be framed:
    :class:`SipParseError` is raised and the connection should be closed.
    """

    MAX_HEAD = 16384

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished message held (0 between messages): what the TCP shell caps and times."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        buf = self._buf
        while True:
            # skip keep-alives (RFC 5626 double CRLF) and stray line ends
            i = 0
            while i < len(buf) and buf[i] in (13, 10):
                i += 1
            if i:
                del buf[:i]
            if not buf:
                break
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.MAX_HEAD:
                    raise SipParseError("header block too large", None)
                break
            head = bytes(buf[:end])
            length = _content_length(head)
            total = end + 4 + length
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        return out


_CLEN_RE = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\S*)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)


def _content_length(head: bytes) -> int:
    m = _CLEN_RE.search(head)
    if m is None:
        raise SipParseError("stream message without Content-Length", None)
    raw = m.group(1)
    if not raw.isdigit() or len(raw) > 6:
        raise SipParseError("malformed Content-Length", None)
    n = int(raw)
    if n > MAX_MESSAGE_SIZE:
        raise SipParseError("body too large", None)
    return n


# ---------------------------------------------------------------------------
# building responses


def build_response(
    req: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    extra: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    received: str | None = None,
    rport: int | None = None,
) -> Response:
    """A response to ``req`` per RFC 3261 section 8.2.6.

    Copies Via (all of them, in order), From, To (adding ``to_tag`` when the
    To has none), Call-ID and CSeq. ``received``/``rport`` fill in the top
    Via per RFC 3261 18.2.1 and RFC 3581.
    """
    headers: list[tuple[str, str]] = []
    first_via = True
    if received or rport:
        via = req.top_via
        # stamp only when RFC 3261 18.2.1 / RFC 3581 ask for it
        if "rport" not in via.params and via.host == received:
            received = rport = None
    for key, value in req.headers:
        if key == "via":
            if first_via and (received or rport):
                value = _stamp_via(value, received, rport)
            first_via = False
            headers.append((key, value))
        elif key in ("from", "call-id", "cseq"):
            headers.append((key, value))
        elif key == "to":
            if to_tag and status != 100 and not _tag_or_unparseable(req):
                value = f"{value};tag={to_tag}"
            headers.append((key, value))
    headers.extend((canonical_name(k), v) for k, v in extra)
    return Response(
        headers=headers,
        body=body,
        status=status,
        reason=reason or REASON_PHRASES.get(status, "Unknown"),
    )


def _tag_or_unparseable(req: Request) -> str:
    """The To tag; a To we cannot parse (a request answered 400) counts as tagged."""
    try:
        return req.to.tag
    except SipParseError:
        return "?"


def _stamp_via(value: str, received: str | None, rport: int | None) -> str:
    if "," in value:
        parts = split_list(value)
        if len(parts) > 1:  # a comma inside quotes leaves one part, still with its comma: no recursion then
            return ", ".join([_stamp_via(parts[0], received, rport), *parts[1:]])
    head, sep, ptext = value.partition(";")
    items = [p for p in ptext.split(";") if p.strip()] if sep else []
    out: list[str] = []
    has_rport = False
    for p in items:
        name = p.split("=", 1)[0].strip().lower()
        if name == "rport":
            has_rport = True
            out.append(f"rport={rport}" if rport else p)
        elif name == "received":
            continue
        else:
            out.append(p)
    if received and (has_rport or received != parse_via(value).host):
        out.append(f"received={received}")
    return ";".join([head, *out])
