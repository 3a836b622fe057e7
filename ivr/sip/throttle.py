"""Throttling of failed logins on every door (REGISTER digest, HTTP Basic, the web login), sans-IO.

Theory of operation
-------------------
Every password check reports to one :class:`AuthThrottle`, whichever door it
came through, so a guesser gains nothing by switching doors::

    throttle.wait(name, source, now) -> float   # seconds still blocked; 0 = go ahead and check
    throttle.failed(door, name, source, now)    # a wrong password (or an unknown name)
    throttle.succeeded(name, source)            # the right one: that pair starts afresh
    throttle.refused(door)                      # count one attempt turned away while blocked

Failures are counted in three kinds of entry, each within ``window`` seconds
of its first failure:

============  ======================================  ===============================================
entry         blocked after                           why
============  ======================================  ===============================================
source        ``per_source`` failures (any names)     one address trying many names (svwar + svcrack)
name, source  ``per_name`` failures                   one address guessing one agent's password
name          ``name_under_attack`` failures (any     many addresses guessing one name: from then on
              address)                                each (name, source) is blocked at its *first*
                                                      failure, for the rest of the name's window
============  ======================================  ===============================================

A block lasts ``block`` seconds, doubling at each further block of the same
entry up to ``max_block``: the growing back-off. Nothing ever blocks a name
as such: a source that has not failed is never refused, so an attacker
guessing an agent's name from one address cannot lock the real agent out
from another. Unknown names are counted exactly like known ones (the check
itself costs the same, see ``Registrar``), so neither the answer nor its
timing says which names exist. Sources in the trusted networks are neither
counted nor blocked. IPv6 sources count by their /64, which one host holds.

The entries live in one insertion-ordered dict, oldest touched first: an
entry idle for ``window + 2 * max_block`` is forgotten (its block is over and
its count has aged out), and at ``max_entries`` the oldest is dropped, so the
table stays bounded whatever names and addresses a flood makes up.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

DOORS = ("register", "basic", "login")  # the metric's label values: REGISTER digest, HTTP Basic, POST login
NAME_KEY_MAX = 64  # longer names cannot be agents (ivr.sip.registrar.USERNAME_RE): cut, so keys stay small


@dataclass(frozen=True, slots=True)
class ThrottleSettings:
    per_source: int = 20  # failures from one address, any names, before it is blocked
    per_name: int = 5  # failures for one name from one address before that pair is blocked
    name_under_attack: int = 100  # failures for one name from all addresses before each pair gets one try
    window: float = 600.0  # seconds within which failures add up
    block: float = 60.0  # the first block; each further block of the same entry doubles it
    max_block: float = 3600.0  # the longest block
    max_entries: int = 100_000  # entries held at most (sources, names and pairs together)


@dataclass(slots=True)
class _Entry:
    touched: float  # the last failure; the table is kept in this order
    window_start: float
    failures: int = 0
    blocked_until: float = 0.0
    blocks: int = 0  # blocks so far: the next lasts block * 2**blocks


def source_key(address: str) -> str:
    """The address failures are counted by: an IPv4 address itself, an IPv6 address's /64."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address[:64]  # not an IP literal (a test's fake peer): counted as given
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)  # ::ffff:192.0.2.7 is that IPv4 host
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


@dataclass
class AuthThrottle:
    """Failed logins per source, per (name, source) and per name, with growing blocks; see the module's docs."""

    settings: ThrottleSettings = field(default_factory=ThrottleSettings)
    trusted: Callable[[str], bool] = lambda _address: False
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DOORS, 0))  # wrong passwords by door
    throttled: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DOORS, 0))  # refused while blocked
    evicted: int = 0  # entries dropped at max_entries before they aged out
    _entries: dict[tuple[str, ...], _Entry] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._entries)

    def wait(self, name: str, source: str, now: float) -> float:
        """Seconds until ``name`` may be tried from ``source`` again; 0 when it may be now."""
        self._forget_idle(now)
        if self.trusted(source):
            return 0.0
        src = source_key(source)
        until = 0.0
        for key in (("s", src), ("p", name[:NAME_KEY_MAX], src)):
            entry = self._entries.get(key)
            if entry is not None:
                until = max(until, entry.blocked_until)
        return max(0.0, until - now)

    def refused(self, door: str) -> None:
        self.throttled[door] = self.throttled.get(door, 0) + 1

    def failed(self, door: str, name: str, source: str, now: float) -> None:
        self.failures[door] = self.failures.get(door, 0) + 1
        if self.trusted(source):
            return
        s = self.settings
        src, name = source_key(source), name[:NAME_KEY_MAX]
        under_attack = self._count(("n", name), s.name_under_attack, now, block=False)
        self._count(("s", src), s.per_source, now)
        self._count(("p", name, src), 1 if under_attack else s.per_name, now)

    def succeeded(self, name: str, source: str) -> None:
        """The right password: this pair's count and back-off start afresh (the source's and the name's do not)."""
        self._entries.pop(("p", name[:NAME_KEY_MAX], source_key(source)), None)

    def _count(self, key: tuple[str, ...], limit: int, now: float, block: bool = True) -> bool:
        """One more failure for ``key``; whether it has reached ``limit`` within the window."""
        s = self.settings
        entry = self._entries.pop(key, None)  # popped and put back: the dict stays in order of touch
        if entry is None:
            entry = _Entry(now, now)
            while len(self._entries) >= s.max_entries:
                del self._entries[next(iter(self._entries))]
                self.evicted += 1
        elif now - entry.window_start >= s.window:
            entry.window_start, entry.failures = now, 0
        entry.touched = now
        entry.failures += 1
        self._entries[key] = entry
        reached = entry.failures >= limit
        if reached and block and entry.blocked_until <= now:
            entry.blocked_until = now + min(s.block * 2**entry.blocks, s.max_block)
            entry.blocks = min(entry.blocks + 1, 32)
            entry.window_start, entry.failures = now, 0  # after the block, a fresh count of tries
        return reached

    def _forget_idle(self, now: float) -> None:
        idle = self.settings.window + 2 * self.settings.max_block
        entries = self._entries
        while entries:
            key = next(iter(entries))
            if now - entries[key].touched < idle:
                return
            del entries[key]
