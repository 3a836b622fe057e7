"""G.711 u-law (PCMU) and A-law (PCMA) codecs, pure code, 8 kHz mono.

Frames are 20 ms: 160 samples, 160 bytes of G.711, 320 bytes of 16-bit
little-endian PCM. Decoding is a table lookup; encoding uses a table over
all 65,536 16-bit sample values built once at import.
"""

from __future__ import annotations

import array
import sys

SAMPLE_RATE = 8000
FRAME_SAMPLES = 160  # 20 ms
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE


def _ulaw_decode(b: int) -> int:
    b = ~b & 0xFF
    sign = b & 0x80
    exponent = (b >> 4) & 0x07
    mantissa = b & 0x0F
    sample = ((mantissa << 3) + 0x84) << exponent
    sample -= 0x84
    return -sample if sign else sample


def _alaw_decode(b: int) -> int:
    b ^= 0x55
    sign = b & 0x80
    exponent = (b >> 4) & 0x07
    mantissa = b & 0x0F
    if exponent == 0:
        sample = (mantissa << 4) + 8
    else:
        sample = ((mantissa << 4) + 0x108) << (exponent - 1)
    return sample if sign else -sample


_SEG_UEND = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
_SEG_AEND = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def _segment(value: int, table: tuple[int, ...]) -> int:
    for i, end in enumerate(table):
        if value <= end:
            return i
    return len(table)


def _ulaw_encode(sample: int) -> int:
    """16-bit sample -> u-law, the ITU-T G.711 reference rounding (14-bit input)."""
    value = sample >> 2
    if value < 0:
        value, mask = -value, 0x7F
    else:
        mask = 0xFF
    value = min(value, 8159) + (0x84 >> 2)
    seg = _segment(value, _SEG_UEND)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((value >> (seg + 1)) & 0x0F)) ^ mask


def _alaw_encode(sample: int) -> int:
    """16-bit sample -> A-law, the ITU-T G.711 reference rounding (13-bit input)."""
    value = sample >> 3
    if value >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        value = -value - 1
    seg = _segment(value, _SEG_AEND)
    if seg >= 8:
        return 0x7F ^ mask
    quant = (value >> 1) if seg < 2 else (value >> seg)
    return ((seg << 4) | (quant & 0x0F)) ^ mask


_ULAW_TO_LIN = array.array("h", [_ulaw_decode(i) for i in range(256)])
_ALAW_TO_LIN = array.array("h", [_alaw_decode(i) for i in range(256)])
# index by the unsigned 16-bit view of the sample
_LIN_TO_ULAW = bytes(_ulaw_encode(i - 65536 if i >= 32768 else i) for i in range(65536))
_LIN_TO_ALAW = bytes(_alaw_encode(i - 65536 if i >= 32768 else i) for i in range(65536))


def _to_pcm(table: array.array, data: bytes) -> bytes:
    out = array.array("h", [table[b] for b in data])
    if sys.byteorder != "little":
        out.byteswap()
    return out.tobytes()


def _from_pcm(table: bytes, pcm: bytes) -> bytes:
    samples = array.array("H")
    samples.frombytes(pcm[: len(pcm) & ~1])
    if sys.byteorder != "little":
        samples.byteswap()
    return bytes([table[s] for s in samples])


class Codec:
    """A G.711 codec looked up by its SDP name (aiortc style)."""

    def __init__(self, name: str, payload_type: int, to_lin: array.array, from_lin: bytes) -> None:
        self.name = name
        self.payload_type = payload_type
        self._to_lin = to_lin
        self._from_lin = from_lin
        self.silence = from_lin[0] if from_lin else 0

    def decode(self, data: bytes) -> bytes:
        """G.711 bytes -> 16-bit little-endian PCM."""
        return _to_pcm(self._to_lin, data)

    def encode(self, pcm: bytes) -> bytes:
        """16-bit little-endian PCM -> G.711 bytes."""
        return _from_pcm(self._from_lin, pcm)


PCMU = Codec("PCMU", 0, _ULAW_TO_LIN, _LIN_TO_ULAW)
PCMA = Codec("PCMA", 8, _ALAW_TO_LIN, _LIN_TO_ALAW)
CODECS = {"PCMU": PCMU, "PCMA": PCMA}


def get_codec(name: str) -> Codec:
    try:
        return CODECS[name.upper()]
    except KeyError:
        raise ValueError(f"unsupported codec {name!r}") from None
