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
test can seed it; by default it is the kernel's CSPRNG read 4 KiB at a time
(:class:`UrandomPool`), one ``getrandom`` call per thousand ports rather
than one per port as ``random.SystemRandom`` makes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Protocol

RANDOM_DRAWS = 8  # random tries before the shell walks the range from a random start
POOL_BYTES = 4096  # bytes of os.urandom read at a time: 1,024 draws
_WORD = 1 << 32


class PortDraws(Protocol):
    """What the allocator draws with: ``random.Random`` (seeded in tests) or :class:`UrandomPool`."""

    def randrange(self, n: int, /) -> int: ...


class UrandomPool:
    """Uniform draws below ``n`` from the kernel's CSPRNG, read ``POOL_BYTES`` at a time.

    Each draw takes one 32-bit word and rejects the few words at the top that
    would bias ``word % n`` (rejection sampling), so every port of the range
    is equally likely. The bytes come from ``os.urandom`` as ``SystemRandom``'s
    do; only the reads are batched.
    """

    __slots__ = ("buf", "pos")

    def __init__(self) -> None:
        self.buf = b""
        self.pos = 0

    def randrange(self, n: int, /) -> int:
        if n <= 0:
            raise ValueError("empty range for randrange()")
        limit = _WORD - _WORD % n  # words at or above it would make low values likelier
        while True:
            pos = self.pos
            if pos + 4 > len(self.buf):
                self.buf = os.urandom(POOL_BYTES)
                pos = 0
            self.pos = pos + 4
            word = int.from_bytes(self.buf[pos : pos + 4], "little")
            if word < limit:
                return word % n


class RtpPortAllocator:
    """Random even ports of ``[port_min, port_max]`` whose RTCP port (+1) fits too."""

    __slots__ = ("first", "last", "rng")

    def __init__(self, port_min: int, port_max: int, rng: PortDraws | None = None) -> None:
        self.first = port_min + (port_min & 1)
        self.last = (port_max - 1) & ~1  # the RTCP port (+1) stays within the range too
        if self.last < self.first:
            raise ValueError(f"no even RTP port with its RTCP port in {port_min}-{port_max}")
        self.rng: PortDraws = rng if rng is not None else UrandomPool()

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
