"""The RTP port allocator, pure: which even port of the configured range a new stream gets.

One allocator for the whole server: the RTP shell (ivr/transport/rtp.py)
takes its ports from it when it binds, and the user agent (ivr/sip/ua.py)
when a caller of ``answer`` or ``place_call`` names no port. RTP uses an
even port and RTCP the odd one above it (RFC 3550 11), so a port is handed
out only when both fit in ``[port_min, port_max]``. Ports go round the range
in order; a port that turns out to be taken is the shell's to skip.
"""

from __future__ import annotations


class RtpPortAllocator:
    """Even ports of ``[port_min, port_max]`` in turn, wrapping round at the top."""

    __slots__ = ("_next", "first", "last")

    def __init__(self, port_min: int, port_max: int) -> None:
        self.first = port_min + (port_min & 1)
        self.last = (port_max - 1) & ~1  # the RTCP port (+1) stays within the range too
        if self.last < self.first:
            raise ValueError(f"no even RTP port with its RTCP port in {port_min}-{port_max}")
        self._next = self.first

    @property
    def span(self) -> int:
        """How many ports the range holds: a full round of :meth:`next`."""
        return (self.last - self.first) // 2 + 1

    def next(self) -> int:
        port = self._next
        self._next = port + 2 if port < self.last else self.first
        return port
