"""The user agent against an in-memory caller on a stepped virtual clock (h11's ConnectionPair idea).

No sockets and no sleeps: :class:`Caller` builds request bytes, :class:`Harness`
hands them to :class:`UserAgent` with ``now``, runs the call router on the
events and collects what the user agent sends back. Used by tests/test_ua.py
and tests/test_registrar.py.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TypeVar

from ivr.calls.router import CallRouter, RouterSettings
from ivr.sip.message import Response, parse_message
from ivr.sip.ua import Event, UaConfig, UserAgent
from ivr.storage.records import CallSummary

E = TypeVar("E")
TICK = 1 / 64  # the stepped clock's step: finer than any SIP timer
PEER = ("udp", "127.0.0.1", 5070)  # the caller, as the user agent sees it


def sdp_offer(payloads: str = "0 8 101", port: int = 4000, extra: str = "") -> bytes:
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
    ]
    return ("\r\n".join(lines) + "\r\n" + extra).encode()


@dataclass
class Caller:
    """A tiny UAC: builds INVITE/ACK/BYE/CANCEL bytes for one call."""

    call_id: str = "call-1@127.0.0.1"
    from_tag: str = "caller-tag-1"
    transport: str = "UDP"
    port: int = 5070
    branch: str = "z9hG4bK-invite-1"
    cseq: int = 1
    to_tag: str | None = None  # learned from the dialog-forming responses
    _n: int = field(default=0, repr=False)

    def _new_branch(self) -> str:
        self._n += 1
        return f"z9hG4bK-{self.call_id.split('@')[0]}-{self._n}"

    def request(
        self,
        method: str,
        *,
        branch: str | None = None,
        cseq: int | None = None,
        cseq_method: str | None = None,
        to_tag: str | None = None,
        headers: tuple[str, ...] = (),
        body: bytes = b"",
        content_type: str | None = "application/sdp",
        uri: str = "sip:100@127.0.0.1:5060",
        max_forwards: str | None = "70",
    ) -> bytes:
        to = "<sip:100@127.0.0.1:5060>" + (f";tag={to_tag}" if to_tag else "")
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/{self.transport} 127.0.0.1:{self.port};branch={branch or self._new_branch()};rport",
        ]
        if max_forwards is not None:
            lines.append(f"Max-Forwards: {max_forwards}")
        lines += [
            f'From: "Caller" <sip:5551234@127.0.0.1:{self.port}>;tag={self.from_tag}',
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq if cseq is None else cseq} {cseq_method or method}",
            f"Contact: <sip:5551234@127.0.0.1:{self.port}>",
            *headers,
        ]
        if body and content_type:
            lines.append(f"Content-Type: {content_type}")
        lines += [f"Content-Length: {len(body)}", "", ""]
        return "\r\n".join(lines).encode() + body

    def invite(self, body: bytes | None = None, **kw: object) -> bytes:
        return self.request("INVITE", branch=self.branch, body=sdp_offer() if body is None else body, **kw)  # type: ignore[arg-type]

    def ack_2xx(self, cseq: int | None = None) -> bytes:
        """ACK for a 2xx: a new transaction (new branch), in the dialog."""
        return self.request("ACK", to_tag=self.to_tag, cseq=cseq)

    def ack_non_2xx(self, to_tag: str | None) -> bytes:
        """ACK for a non-2xx final: same branch as the INVITE, To tag of the response."""
        return self.request("ACK", branch=self.branch, to_tag=to_tag)

    def bye(self, cseq: int = 2, branch: str | None = None) -> bytes:
        return self.request("BYE", to_tag=self.to_tag, cseq=cseq, branch=branch)

    def cancel(self) -> bytes:
        return self.request("CANCEL", branch=self.branch)

    def learn(self, resp: Response) -> None:
        if resp.call_id == self.call_id and resp.cseq[1] == "INVITE" and resp.to.tag and resp.status < 300:
            self.to_tag = resp.to.tag


class SteppedUa:
    """A UserAgent on a stepped virtual clock; ``flush`` says what a harness does with the core's output."""

    ua: UserAgent
    now: float

    def flush(self) -> list[bytes]:
        raise NotImplementedError

    def advance(self, until: float) -> list[bytes]:
        """Step ``now += TICK`` up to ``until``, running due timers; returns what was sent."""
        out: list[bytes] = []
        while True:
            t = self.ua.get_timer()
            if t is not None and t <= self.now:
                assert self.now - t < TICK, "the stepped clock ran past a timer"
                self.ua.handle_timer(self.now)
                out += self.flush()
                continue
            if self.now >= until:
                return out
            self.now += TICK


class Harness(SteppedUa):
    """UserAgent + CallRouter on a stepped virtual clock."""

    def __init__(self, router_settings: RouterSettings | None = None, seed: int = 7) -> None:
        self.ua = UserAgent(UaConfig(), rng=random.Random(seed))
        self.records: list[CallSummary] = []
        self.router = CallRouter(self.ua, router_settings or RouterSettings(), on_record=self.records.append)
        self.now = 0.0
        self.events: list[tuple[float, Event]] = []
        self.sent: list[tuple[float, bytes, tuple[str, str, int]]] = []

    def pump(self) -> list[bytes]:
        """Hand the core's events to the router until it is quiet; collect what it sent."""
        while True:
            evs = self.ua.events()
            if not evs:
                break
            self.events.extend((self.now, e) for e in evs)
            self.router.handle(evs, self.now)
        out = self.ua.datagrams_to_send()
        self.sent.extend((self.now, data, peer) for data, peer in out)
        return [data for data, _ in out]

    def flush(self) -> list[bytes]:
        return self.pump()

    def deliver(self, data: bytes, peer: tuple[str, str, int] = PEER) -> list[bytes]:
        self.ua.receive(data, peer, self.now)
        return self.pump()

    def events_of(self, kind: type[E]) -> list[E]:
        return [e for _, e in self.events if isinstance(e, kind)]

    def sent_between(self, start: float, end: float) -> list[tuple[float, bytes]]:
        return [(t, d) for t, d, _ in self.sent if start <= t <= end]


def responses(datagrams: list[bytes]) -> list[Response]:
    out = []
    for d in datagrams:
        msg = parse_message(d)
        assert isinstance(msg, Response), d
        out.append(msg)
    return out


def statuses(datagrams: list[bytes]) -> list[int]:
    return [r.status for r in responses(datagrams)]
