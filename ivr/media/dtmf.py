"""Keys from callers: RFC 4733 telephone-event packets and SIP INFO bodies.

:class:`DtmfReceiver` turns a stream of telephone-event payloads into key
presses. A key is reported once, when its first end-of-event packet arrives
(senders repeat the end packet three times, RFC 4733 section 2.5.1.4); a
key whose end packets were all lost is reported when a new event starts.
Events are told apart by their RTP timestamp (the event's start).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

EVENT_KEYS = "0123456789*#ABCD"


class DtmfError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    event: int
    end: bool
    volume: int
    duration: int

    @property
    def key(self) -> str | None:
        return EVENT_KEYS[self.event] if self.event < len(EVENT_KEYS) else None

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        if len(payload) < 4:
            raise DtmfError("telephone-event payload shorter than 4 bytes")
        event, flags, duration = struct.unpack_from("!BBH", payload)
        return cls(event, bool(flags & 0x80), flags & 0x3F, duration)

    def serialize(self) -> bytes:
        return struct.pack("!BBH", self.event, (0x80 if self.end else 0) | (self.volume & 0x3F), self.duration)


class DtmfReceiver:
    def __init__(self) -> None:
        self._current_ts: int | None = None
        self._current_key: str | None = None
        self._reported: set[int] = set()  # timestamps whose key was reported (recent)

    def feed(self, timestamp: int, payload: bytes) -> list[str]:
        """Keys completed by this packet (usually none or one)."""
        ev = TelephoneEvent.parse(payload)
        key = ev.key
        out: list[str] = []
        if timestamp != self._current_ts:
            # a new event: report the previous one if its end never came
            if self._current_ts is not None and self._current_ts not in self._reported and self._current_key:
                out.append(self._current_key)
                self._remember(self._current_ts)
            self._current_ts = timestamp
            self._current_key = key
        if ev.end and timestamp not in self._reported and key is not None:
            out.append(key)
            self._remember(timestamp)
        return out

    def _remember(self, ts: int) -> None:
        self._reported.add(ts)
        if len(self._reported) > 64:
            # keep the set small; only the last few events can still repeat
            self._reported = {t for t in self._reported if t == self._current_ts}
            self._reported.add(ts)


def parse_dtmf_info(content_type: str, body: bytes) -> str | None:
    """The key in a SIP INFO body (application/dtmf-relay or application/dtmf)."""
    ctype = content_type.split(";")[0].strip().lower()
    text = body.decode("utf-8", "replace")
    if ctype == "application/dtmf-relay":
        for line in text.splitlines():
            name, _, value = line.partition("=")
            if name.strip().lower() == "signal":
                key = value.strip().upper()
                return key if len(key) == 1 and key in EVENT_KEYS else None
        return None
    if ctype == "application/dtmf":
        key = text.strip().upper()
        # ASCII digits only (str.isdigit alone takes superscripts, which int() refuses), and at most two
        # of them before int(): a long run from the wire would raise (int_max_str_digits) or cost time
        if len(key) <= 2 and key.isascii() and key.isdigit() and int(key) < len(EVENT_KEYS):
            return EVENT_KEYS[int(key)]
        return key if len(key) == 1 and key in EVENT_KEYS else None
    return None
