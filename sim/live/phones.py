"""Agents' phones for the live load path: pyVoIP (an independent SIP/RTP stack) with its 1.6.8 workarounds.

pyVoIP is imported only when a phone is made (it is the optional
``frontdesk[load]`` dependency). What pyVoIP 1.6.8 does and how it is dealt
with is written up in tests/test_pyvoip.py; the two workarounds every phone
needs live here:

- its ACK to a 200 OK carries a fresh random To tag, so it matches no dialog:
  :func:`ack_with_the_dialogs_to_tag` makes it copy the 200's tag;
- its threads are not daemons: :func:`stop_phone` stops every one of them,
  whatever state the phone is in.

Its ports: a phone binds its SIP port at registration and an RTP port only
when a call comes, so each phone gets a block of its own from
:class:`PortBlocks`, carved from a range outside the kernel's ephemeral ports
(:func:`outside_ephemeral_ports`), where no socket bound to port 0 lands.
"""

from __future__ import annotations

import re
import socket
import threading
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def import_pyvoip() -> Any:
    """The ``pyVoIP.VoIP`` module, or ImportError with what to install."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # pyVoIP imports audioop (deprecated in 3.11)
            from pyVoIP import VoIP
    except ImportError as exc:
        raise ImportError("the agents' phones need pyVoIP: pip install 'frontdesk[load]'") from exc
    return VoIP


def ack_with_the_dialogs_to_tag(phone: Any) -> None:
    """Make pyVoIP's ACK carry the To tag of the 200 OK it acknowledges."""
    sip = phone.sip
    original = sip.gen_ack

    def gen_ack(response: Any) -> str:
        ack: str = original(response)
        tag = response.headers["To"]["tag"]
        return re.sub(r"^(To: [^\r\n]*?);tag=[^\r\n;]*", rf"\1;tag={tag}", ack, count=1, flags=re.M)

    sip.gen_ack = gen_ack


def stop_phone(phone: Any) -> None:
    """pyVoIP runs non-daemon threads: whatever happens, none may outlive its phone."""
    try:
        phone.stop()
    finally:
        halt_threads(phone)


def halt_threads(phone: Any) -> None:
    """Tell every loop of a phone's threads to end (SIP, registration, RTP), without waiting for the server."""
    sip = phone.sip
    sip.NSD = False
    if sip.registerThread is not None:
        sip.registerThread.cancel()
    for call in list(phone.calls.values()):
        for rtp in call.RTPClients:
            rtp.NSD = False
    phone.NSD = False


EPHEMERAL_FALLBACK = (32768, 60999)  # Linux's default, when /proc cannot be read
SERVER_RTP_DEFAULT = (20000, 30000)  # the server's default media range (ivr/settings/server.py)


@dataclass(frozen=True)
class PortRange:
    """Ports ``low`` to ``high``, both included."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not 1024 <= self.low <= self.high <= 65535:
            raise ValueError(f"not a port range within 1024-65535: {self.low}-{self.high}")

    @classmethod
    def parse(cls, text: str) -> PortRange:
        """``LOW-HIGH``, as the command line takes it."""
        low, sep, high = text.partition("-")
        if not sep or not low.strip().isdigit() or not high.strip().isdigit():
            raise ValueError(f"give LOW-HIGH, not {text!r}")
        return cls(int(low), int(high))

    def __len__(self) -> int:
        return self.high - self.low + 1

    def overlaps(self, other: PortRange) -> bool:
        return self.low <= other.high and other.low <= self.high

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"


def ephemeral_ports() -> PortRange:
    """The kernel's ephemeral range: where a socket bound to port 0 (or a TCP connect) may land at any time."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = EPHEMERAL_FALLBACK
    return PortRange(max(low, 1024), high)


def outside_ephemeral_ports(size: int = 2000) -> PortRange | None:
    """``size`` ports or more where no socket bound to port 0 can land, clear of the server's default RTP range.

    Above the ephemeral range first, else between the server's default RTP
    range and the ephemeral range; None when neither has room.
    """
    eph = ephemeral_ports()
    if eph.high + size <= 65535:
        return PortRange(eph.high + 1, 65535)
    if eph.low - 1 - SERVER_RTP_DEFAULT[1] >= size:
        return PortRange(SERVER_RTP_DEFAULT[1] + 1, eph.low - 1)
    return None


def bindable(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``port`` can be bound on ``host`` now, for UDP and for TCP."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(family, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


class PortBlocks:
    """Disjoint blocks of ``size`` consecutive ports carved from one range: one per phone (its SIP port, then RTP).

    Theory of operation: block k is ports ``low + k * size`` onwards, so two
    blocks never share a port, whatever was bound or freed in between. A
    phone binds its RTP ports only when a call comes, long after the check
    that they are free; ports picked at random and checked free (the old way)
    let two phones get overlapping ranges, and the second to answer on a
    shared port failed with EADDRINUSE. A block is handed out only when every
    port in it binds now; a block given back is handed out again only after
    every block never used (its phone's sockets have long been closed then).
    Thread-safe: phones are stopped from pyVoIP's threads.
    """

    def __init__(self, ports: PortRange, size: int, host: str = "127.0.0.1") -> None:
        if size < 1 or len(ports) < size:
            raise ValueError(f"{ports} holds no block of {size} ports")
        self.ports, self.size, self.host = ports, size, host
        self._fresh = iter(range(ports.low, ports.high - size + 2, size))
        self._returned: deque[int] = deque()
        self._lock = threading.Lock()

    def take(self) -> range:
        """A block whose every port binds now; RuntimeError when the range has none left."""
        with self._lock:
            for start in self._fresh:  # a block busy now (another program's socket) is skipped for good
                block = range(start, start + self.size)
                if all(bindable(port, self.host) for port in block):
                    return block
            for _ in range(len(self._returned)):
                start = self._returned.popleft()
                block = range(start, start + self.size)
                if all(bindable(port, self.host) for port in block):
                    return block
                self._returned.append(block.start)
        raise RuntimeError(f"no block of {self.size} free ports left in {self.ports}")

    def give_back(self, block: range) -> None:
        with self._lock:
            self._returned.append(block.start)
