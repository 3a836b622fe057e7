"""RTP packets (RFC 3550): parse and serialise, pure code.

Only what a G.711 voice path needs: the fixed header, CSRCs, a header
extension and padding are understood on input; we send plain packets.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_HEADER = struct.Struct("!BBHII")
RTP_VERSION = 2


class RtpError(Exception):
    """The datagram is not an RTP packet we can use."""


@dataclass(frozen=True, slots=True)
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        if len(data) < 12:
            raise RtpError("shorter than an RTP header")
        b0, b1, seq, ts, ssrc = _HEADER.unpack_from(data)
        if b0 >> 6 != RTP_VERSION:
            raise RtpError(f"RTP version {b0 >> 6}")
        offset = 12 + 4 * (b0 & 0x0F)
        if b0 & 0x10:  # header extension: 16-bit profile, 16-bit length in words
            if len(data) < offset + 4:
                raise RtpError("truncated header extension")
            (words,) = struct.unpack_from("!H", data, offset + 2)
            offset += 4 + 4 * words
        end = len(data)
        if b0 & 0x20:  # padding: the last byte counts the padding bytes
            pad = data[-1]
            if pad == 0 or pad > end - offset:
                raise RtpError("bad padding")
            end -= pad
        if offset > end:
            raise RtpError("truncated packet")
        return cls(b1 & 0x7F, seq, ts, ssrc, bytes(data[offset:end]), bool(b1 & 0x80))

    def serialize(self) -> bytes:
        b1 = (0x80 if self.marker else 0) | (self.payload_type & 0x7F)
        return _HEADER.pack(0x80, b1, self.sequence & 0xFFFF, self.timestamp & 0xFFFFFFFF, self.ssrc) + self.payload


def is_rtcp(data: bytes) -> bool:
    """RTCP shares the port when rtcp-mux is used: payload types 200-204 (RFC 5761)."""
    return len(data) >= 2 and 200 <= data[1] <= 204
