"""The RTP port allocator, pure: which even port of the configured range a new stream gets.

One allocator for the whole server: the RTP shell (ivr/transport/rtp.py)
takes its ports from it when it binds, and the user agent (ivr/sip/ua.py)
when a caller of ``answer`` or ``place_call`` names no port. RTP uses an
even port and RTCP the odd one above it (RFC 3550 11), so a port is handed
out only when both fit in ``[port_min, port_max]``.

Ports are drawn at random from the range, as rtpengine and Asterisk do: a
port handed out in sequence tells whoever made the last call where the next
caller's audio will be, and strict latching (ivr/media/latch.py) only helps
if the third party cannot be there first. A port that turns out to be taken
is the shell's to skip; :meth:`RtpPortAllocator.candidates` gives it a few
random draws and then one full round from a random start, so a nearly full
range still finds its last free port. The random source is injected, so a
test can seed it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

RANDOM_DRAWS = 8  # random tries before the shell walks the range from a random start


class RtpPortAllocator:
    """Random even ports of ``[port_min, port_max]`` whose RTCP port (+1) fits too."""

    __slots__ = ("first", "last", "rng")

    def __init__(self, port_min: int, port_max: int, rng: random.Random | None = None) -> None:
        self.first = port_min + (port_min & 1)
        self.last = (port_max - 1) & ~1  # the RTCP port (+1) stays within the range too
        if self.last < self.first:
            raise ValueError(f"no even RTP port with its RTCP port in {port_min}-{port_max}")
        self.rng = rng if rng is not None else random.SystemRandom()

    @property
    def span(self) -> int:
        """How many ports the range holds."""
        return (self.last - self.first) // 2 + 1

    def next(self) -> int:
        """One port of the range, drawn at random."""
        return self.first + 2 * self.rng.randrange(self.span)

    def candidates(self) -> Iterator[int]:
        """Ports to try binding, in order: a few random ones, then every port once from a random start."""
        span = self.span
        for _ in range(min(RANDOM_DRAWS, span)):
            yield self.next()
        start = self.rng.randrange(span)
        for i in range(span):
            yield self.first + 2 * ((start + i) % span)
