"""Strict RTP latching, pure: which source a stream takes packets from, and whether it may send yet.

What rtpengine calls strict source and Asterisk ``strictrtp``: a stream
learns its caller's RTP source once and then takes packets from that
address:port and SSRC only, so whoever guesses a call's port can neither hear
it (we answer only the latched source) nor inject audio or keys into it.

The rules, as :class:`SourceLatch` applies them:

- **Learning** lasts until the first valid RTP packet from an acceptable
  host; that one packet latches the stream (its address:port and SSRC). A
  longer window (Asterisk learns from a few packets in a row) would only
  widen the time a flooding third party can win the race; what narrows the
  race instead is who may be learned at all. When the stream knows the
  SIP signalling source and that source is not trusted, only packets from
  the signalling host or the host the SDP named are acceptable: a third
  party elsewhere on the internet cannot latch a stream even while it is
  learning. A trusted signalling source (a trunk, the load balancer:
  ``security.trusted_networks``) may have its media come from anywhere, so
  its streams learn from the first valid packet, as do streams opened
  without a signalling source (tests).
- **Once latched**, a packet from any other address:port is dropped
  (reason ``source``). From the latched source, the first voice packet
  latches the voice SSRC and the first telephone-event packet the keys'
  SSRC (many phones and gateways send RFC 4733 events with an SSRC of their
  own). A packet of either kind with another SSRC is dropped (reason
  ``ssrc``) unless that kind's SSRC has been silent for :data:`SSRC_GAP`
  seconds: a phone that restarts its stream (after hold, or a capture played
  after another) starts a new SSRC after a pause, while a stream that is
  talking keeps the one it has.
- **Sending**: while the SDP names a host other than the signalling source
  (and that source is not trusted), nothing is sent until the caller's RTP
  has arrived (from the SDP's host or the signalling host), then only to the
  latched source. One INVITE naming a victim's address therefore makes no
  media go to the victim.
"""

from __future__ import annotations

from collections.abc import Iterable

Address = tuple[str, int]

SSRC_GAP = 0.2  # seconds the latched SSRC must be silent before another one from the same source is taken
DROP_REASONS = ("learning", "source", "ssrc")  # a packet's reason to be dropped, one label value each


class SourceLatch:
    """The learning and strict-source state of one stream."""

    __slots__ = ("_hosts", "_last", "_ssrcs", "signalling_host", "source", "trusted")

    def __init__(self, signalling_host: str | None = None, trusted: bool = False) -> None:
        self.signalling_host = signalling_host
        self.trusted = trusted
        self.source: Address | None = None
        self._ssrcs: dict[bool, int] = {}  # the latched SSRC of voice (False) and of telephone-events (True)
        self._last: dict[bool, float] = {}  # when a packet of that kind was last taken
        self._hosts: frozenset[str] | None = None  # acceptable hosts while learning; None: any

    @property
    def latched(self) -> bool:
        return self.source is not None

    @property
    def strict_hosts(self) -> bool:
        """Whether learning is limited to the signalling host and the SDP's host."""
        return self.signalling_host is not None and not self.trusted

    def expect(self, sdp_hosts: Iterable[str]) -> None:
        """The host(s) the SDP named: acceptable while learning, besides the signalling host."""
        if self.strict_hosts:
            assert self.signalling_host is not None
            self._hosts = frozenset((self.signalling_host, *sdp_hosts))

    def may_send_to(self, sdp_host: str) -> bool:
        """Whether media may go to the SDP's host before the caller's RTP has arrived."""
        return not self.strict_hosts or sdp_host == self.signalling_host

    def ssrc(self, event: bool = False) -> int | None:
        """The latched SSRC of voice packets (or of telephone-events), None before the first one."""
        return self._ssrcs.get(event)

    def admit(self, addr: Address, ssrc: int, now: float, event: bool = False) -> str | None:
        """None when the packet is the stream's (latching on it if still learning), else the drop reason.

        ``event``: the packet is a telephone-event (a key), whose SSRC is latched apart from the voice's.
        """
        source = self.source
        if source is None:
            hosts = self._hosts
            if hosts is not None and addr[0] not in hosts:
                return "learning"
            self.source = addr
        elif addr != source:
            return "source"
        latched = self._ssrcs.get(event)
        if latched is not None and ssrc != latched and now - self._last[event] < SSRC_GAP:
            return "ssrc"
        self._ssrcs[event] = ssrc  # the first of its kind, or the phone restarted its stream after a pause
        self._last[event] = now
        return None
