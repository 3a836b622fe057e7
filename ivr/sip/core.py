"""What both dialog sides of the user agent share: the config, the outputs, the transaction table, our identity.

``inbound.py`` (calls to us) and ``outbound.py`` (calls we place) each hold a
:class:`UaCore` and write through it: datagrams to send, events for the
transaction user, transactions and timers, counters. ``ua.py`` drains it.
Nothing here reads a clock or touches a socket.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

from ivr.media.ports import RtpPortAllocator
from ivr.sip.events import Event
from ivr.sip.message import REASON_PHRASES, Request, build_response
from ivr.sip.stats import ALLOWED_METHODS, SipStats
from ivr.sip.transaction import Peer, TimerValues
from ivr.sip.txtable import ServerTransaction, TransactionTable

ALLOW_HEADER = ", ".join(ALLOWED_METHODS)
MAGIC_COOKIE = "z9hG4bK"  # RFC 3261 branches start with it; others are RFC 2543 peers


@dataclass(frozen=True, slots=True)
class UaConfig:
    host: str = "127.0.0.1"  # address written in Via, Contact and SDP
    port: int = 5060
    media_host: str | None = None  # address written in SDP instead of ``host`` (a cluster node's advertised RTP)
    user_agent: str = "frontdesk"
    timers: TimerValues = field(default_factory=TimerValues)
    max_calls: int = 20000  # beyond this, new INVITEs get 503
    max_transactions: int = 200_000  # server transactions held at once; beyond, new requests are dropped
    rtp_port_min: int = 20000
    rtp_port_max: int = 30000


def sdp_host(config: UaConfig) -> str:
    """The address our SDP offers and answers name for our RTP."""
    return config.media_host or config.host


class UaCore:
    """The user agent's shared state and the few writes both dialog sides make."""

    def __init__(self, config: UaConfig, rng: random.Random) -> None:
        self.config = config
        self.tv = config.timers
        self.stats = SipStats()
        self.rng = rng
        self.table = TransactionTable()
        self.rtp_ports = RtpPortAllocator(config.rtp_port_min, config.rtp_port_max)
        self.out: list[tuple[bytes, Peer]] = []
        self.events: list[Event] = []
        self._contact = self._contact_tcp = ""
        self._set_contacts()

    def set_local_port(self, port: int) -> None:
        self.config = dataclasses.replace(self.config, port=port)
        self._set_contacts()

    def _set_contacts(self) -> None:
        host, port = self.config.host, self.config.port
        self._contact = f"<sip:frontdesk@{host}:{port}>"
        self._contact_tcp = f"<sip:frontdesk@{host}:{port};transport=tcp>"

    def contact(self, peer: Peer) -> str:
        """Our Contact for a dialog with ``peer``: on TCP the peer must come back over TCP."""
        return self._contact_tcp if peer[0] == "tcp" else self._contact

    def token(self) -> str:
        """A tag, branch or Call-ID part: 64 random bits in hex."""
        return f"{self.rng.getrandbits(64):016x}"

    def new_branch(self) -> str:
        return MAGIC_COOKIE + self.token()

    def via(self, peer: Peer, branch: str) -> str:
        return f"SIP/2.0/{peer[0].upper()} {self.config.host}:{self.config.port};branch={branch};rport"

    def send(self, data: bytes, peer: Peer) -> None:
        self.out.append((data, peer))

    def respond(
        self,
        tx: ServerTransaction,
        req: Request,
        status: int,
        now: float,
        *,
        to_tag: str | None = None,
        extra: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
        reason: str | None = None,
    ) -> None:
        """Answer ``req`` through the server transaction that owns it (copies then get the same bytes)."""
        peer = tx.peer
        if to_tag is None and status > 100 and not req.to.tag:
            to_tag = self.token()  # RFC 3261 8.2.6.2: every response but 100 carries a To tag
        headers = (*extra, ("Server", self.config.user_agent))
        if body:
            headers = (*headers, ("Content-Type", "application/sdp"))
        rport = received = None
        if peer[0] == "udp":
            received, rport = peer[1], peer[2]
        resp = build_response(
            req, status, reason, to_tag=to_tag, extra=headers, body=body, received=received, rport=rport
        )
        send = tx.send_response(resp.to_bytes(), status, now)
        if send is not None:
            self.out.append((send, peer))
            self.stats.count_response(req.method, status)
        self.table.schedule(tx)


def reason(status: int, detail: str) -> str:
    """A reason phrase that says what was wrong, e.g. ``Not Acceptable Here (no common codec)``."""
    return f"{REASON_PHRASES.get(status, 'Error')} ({detail})"


def contact_uri(value: str) -> str:
    """The URI of a Contact or Route value, with or without angle brackets."""
    value = value.strip()
    lt = value.find("<")
    if lt >= 0:
        gt = value.find(">", lt)
        return value[lt + 1 : gt] if gt > lt else ""  # unterminated: no URI (find's -1 would cut one off)
    return value.split(";", 1)[0]
