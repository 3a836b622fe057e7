"""SDP offer/answer (RFC 4566, RFC 3264) for audio calls, pure code.

We speak G.711 u-law (PCMU, payload type 0), G.711 A-law (PCMA, 8) and
RFC 4733 telephone-event/8000 for keys. An offer is answered with the first
of our codecs the offer lists, in the offerer's order, plus telephone-event
when offered; an offer with no codec in common is refused (488).

The media address is checked here, at the offer, so that nothing past the
SIP layer ever holds an address a socket cannot take:
the connection address must be an IP literal (a host name would need a DNS
lookup, and none ever runs on the event loop) and the port 1-65535, else the
INVITE, re-INVITE or answer is refused with 488.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from types import FunctionType
from typing import Final

from ivr.sip.message import is_digits, parse_decimal

# Static payload types we accept, name -> pt (RFC 3551 table 4).
STATIC_CODECS = {0: "PCMU", 8: "PCMA"}
SUPPORTED = ("PCMU", "PCMA")

# The values made for every offer write their constructor out: mypyc compiles it, while the one @dataclass
# generates stays interpreted. Compiled, a frozen one stores its fields directly (the frozen guard is a __setattr__
# for Python callers, which compiled code does not go through); pure, it sets them as the generated constructor does.
_set = object.__setattr__


def _probe() -> None:
    pass


COMPILED: Final = not isinstance(_probe, FunctionType)  # whether this module runs compiled (mypyc)


class SdpError(Exception):
    """The body is not an SDP we can use; ``status`` is the SIP answer."""

    def __init__(self, reason: str, status: int = 488) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(slots=True)
class MediaOffer:
    """The audio stream of an SDP: where to send RTP and what it carries."""

    address: str
    port: int
    payloads: list[int]
    rtpmap: dict[int, str] = field(default_factory=dict)  # pt -> "name/rate"
    direction: str = "sendrecv"

    def __init__(
        self,
        address: str,
        port: int,
        payloads: list[int],
        rtpmap: dict[int, str] | None = None,
        direction: str = "sendrecv",
    ) -> None:
        self.address = address
        self.port = port
        self.payloads = payloads
        self.rtpmap = {} if rtpmap is None else rtpmap
        self.direction = direction

    def codec_name(self, pt: int) -> str:
        if pt in self.rtpmap:
            return self.rtpmap[pt].split("/")[0].upper()
        return STATIC_CODECS.get(pt, "")


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What both ends agreed: the codec, its payload type, the DTMF payload type."""

    codec: str
    payload_type: int
    dtmf_payload_type: int | None
    remote_address: str
    remote_port: int
    direction: str

    def __init__(
        self,
        codec: str,
        payload_type: int,
        dtmf_payload_type: int | None,
        remote_address: str,
        remote_port: int,
        direction: str,
    ) -> None:
        if COMPILED:
            self.codec = codec  # type: ignore[misc]
            self.payload_type = payload_type  # type: ignore[misc]
            self.dtmf_payload_type = dtmf_payload_type  # type: ignore[misc]
            self.remote_address = remote_address  # type: ignore[misc]
            self.remote_port = remote_port  # type: ignore[misc]
            self.direction = direction  # type: ignore[misc]
        else:
            _set(self, "codec", codec)
            _set(self, "payload_type", payload_type)
            _set(self, "dtmf_payload_type", dtmf_payload_type)
            _set(self, "remote_address", remote_address)
            _set(self, "remote_port", remote_port)
            _set(self, "direction", direction)


def parse_sdp(body: bytes) -> MediaOffer:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SdpError("SDP is not UTF-8", 400) from None
    session_addr = ""
    media: MediaOffer | None = None
    seen_audio = False
    direction = "sendrecv"
    for raw in text.splitlines():
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:]
        if kind == "c":
            parts = value.split()
            if len(parts) < 3 or parts[0] != "IN":
                raise SdpError(f"malformed c= line {value[:40]!r}", 400)
            addr = parts[2].split("/")[0]
            if media is None and not seen_audio:
                session_addr = addr
            elif media is not None:
                media.address = addr
        elif kind == "m":
            if media is not None:
                break  # only the first audio stream is used
            parts = value.split()
            if len(parts) < 4:
                raise SdpError(f"malformed m= line {value[:40]!r}", 400)
            if parts[0] != "audio":
                continue
            seen_audio = True
            port_text = parts[1].split("/")[0]
            if not is_digits(port_text):
                raise SdpError(f"malformed m= port {parts[1][:20]!r}", 400)
            port = parse_decimal(port_text, 65535)
            if port is None or port == 0:
                raise SdpError(f"m= port out of range {parts[1][:20]!r}")
            # payload types are 0-127 (RFC 3551); the length check comes before int()
            pts = [pt for p in parts[3:] if (pt := parse_decimal(p, 127)) is not None]
            media = MediaOffer(session_addr, port, pts, direction=direction)
        elif kind == "a" and media is not None:
            if value.startswith("rtpmap:"):
                pt_text, _, enc = value[7:].partition(" ")
                pt = parse_decimal(pt_text, 127)
                if pt is not None:
                    media.rtpmap[pt] = enc.strip()
            elif value in ("sendrecv", "sendonly", "recvonly", "inactive"):
                media.direction = value
        elif kind == "a" and value in ("sendrecv", "sendonly", "recvonly", "inactive"):
            direction = value
    if media is None:
        raise SdpError("no audio stream offered")
    if not media.address:
        raise SdpError("no connection address for the audio stream", 400)
    media.address = _ip_literal(media.address)
    return media


_IP_LITERALS: dict[str, str] = {}  # address as written -> as ipaddress writes it: most calls come from a few hosts


def _ip_literal(address: str) -> str:
    """The connection address as an IP literal, else 488: never a name to look up in DNS."""
    known = _IP_LITERALS.get(address)
    if known is not None:
        return known
    try:
        literal = str(ipaddress.ip_address(address))
    except ValueError:
        raise SdpError(f"connection address {address[:40]!r} is not an IP address") from None
    if len(_IP_LITERALS) < 4096:  # bounded: addresses come off the wire
        _IP_LITERALS[address] = literal
    return literal


_ANSWER_DIRECTION = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}


def negotiate(offer: MediaOffer) -> Negotiated:
    codec_pt: int | None = None
    codec = ""
    dtmf_pt: int | None = None
    for pt in offer.payloads:
        name = offer.codec_name(pt)
        if codec_pt is None and name in SUPPORTED:
            rate = offer.rtpmap.get(pt, f"{name}/8000").split("/")
            if len(rate) < 2 or rate[1] == "8000":
                codec_pt, codec = pt, name
        elif name == "TELEPHONE-EVENT" and offer.rtpmap.get(pt, "").endswith("/8000"):
            dtmf_pt = pt
    if codec_pt is None:
        raise SdpError("no common codec (we offer PCMU, PCMA)")
    return Negotiated(codec, codec_pt, dtmf_pt, offer.address, offer.port, _ANSWER_DIRECTION[offer.direction])


def build_sdp(
    address: str,
    port: int,
    *,
    session_id: int,
    version: int = 1,
    negotiated: Negotiated | None = None,
    direction: str = "sendrecv",
) -> bytes:
    """Our SDP: an answer for ``negotiated``, or an offer of all we support."""
    if negotiated is not None:
        pts = [(negotiated.payload_type, negotiated.codec)]
        dtmf = negotiated.dtmf_payload_type
        direction = negotiated.direction
    else:
        pts = [(0, "PCMU"), (8, "PCMA")]
        dtmf = 101
    ip_kind = "IP6" if ":" in address else "IP4"
    fmt = " ".join(str(pt) for pt, _ in pts) + (f" {dtmf}" if dtmf is not None else "")
    lines = [
        "v=0",
        f"o=frontdesk {session_id} {version} IN {ip_kind} {address}",
        "s=frontdesk",
        f"c=IN {ip_kind} {address}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {fmt}",
    ]
    lines += [f"a=rtpmap:{pt} {name}/8000" for pt, name in pts]
    if dtmf is not None:
        lines += [f"a=rtpmap:{dtmf} telephone-event/8000", f"a=fmtp:{dtmf} 0-16"]
    lines += ["a=ptime:20", f"a={direction}"]
    return ("\r\n".join(lines) + "\r\n").encode()
