"""Flood control in front of the transaction layer: which datagrams the SIP core gets to parse at all.

Theory of operation
-------------------
Every UDP datagram is asked about twice, before any parse beyond its first
line, in the manner of Kamailio's pike and htable modules:

1. :meth:`Admission.blocked` -- is the source in the block list? A dict
   lookup on the source (an IPv4 address, or the /64 an IPv6 address lies
   in: one host's whole prefix counts as one source). A blocked source's
   datagrams are dropped unread.
2. :meth:`Admission.check` -- the datagram is counted against its source's
   rate in the current one-second window. Past ``requests_per_second`` the
   source is blocked for ``block_seconds``. The first line and, for an
   INVITE, a search for a To tag (:func:`classify`) tell a *new call* from
   an *in-dialog* request (ACK, BYE, CANCEL, PRACK, UPDATE, INFO, or an
   INVITE whose To has a tag: a re-INVITE) and from everything else; a
   source's new calls past ``new_calls_per_second`` are refused, and so are
   new calls past ``new_calls_per_network`` from the source's network (the
   IPv4 /24, the IPv6 /48): the prefix above the host, where an attacker
   rotating addresses within its network is still one.

New calls that pass are not handed on at once: the transport serves the
rest of what it read in that wake-up first (in-dialog requests before new
INVITEs, so an overloaded server keeps its calls alive and hangs them up),
and then asks :meth:`Admission.take_new_call` for each against one budget
for all untrusted sources together, ``max_new_calls_per_second``. A refused new call gets a
cheap ``503`` with ``Retry-After`` built from its raw header lines
(:meth:`Admission.refusal`, no larger than those lines), or nothing, as
``over_limit`` says. Sources in the trusted networks are never blocked,
capped or refused, and do not spend the global budget.

Both tables are bounded: the per-window counts by ``max_sources`` (new
sources past it share one overflow count, which is never blocked, only held
to the rate), the block list by ``max_blocked``. Counts start afresh each
window; expired blocks are swept when a window rolls over. Sans-IO: bytes,
the source address and ``now`` in; verdicts and counters out.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

WINDOW = 1.0  # seconds per counting window
OVERFLOW = "*"  # the shared count of sources beyond max_sources
TRUST_CACHE = 4096  # trust decisions and IPv6 prefixes remembered (an ipaddress parse each otherwise)
REASONS = ("blocked", "rate", "new_calls", "network", "overload")

# A To (or compact t) header with a tag parameter: the cheapest reliable mark of an in-dialog INVITE.
_TO_TAG = re.compile(rb"\n(?:to|t)[ \t]*:[^\n]*;[ \t]*tag[ \t]*=", re.IGNORECASE)
_IN_DIALOG = (b"ACK ", b"BYE ", b"CANCEL ", b"PRACK ", b"UPDATE ", b"INFO ")
# The header lines a response copies from its request (RFC 3261 8.2.6.2), with their compact forms.
_COPIED = {b"via": b"Via", b"v": b"Via", b"from": b"From", b"f": b"From", b"to": b"To", b"t": b"To",
           b"call-id": b"Call-ID", b"i": b"Call-ID", b"cseq": b"CSeq"}  # fmt: skip


class Traffic(enum.Enum):
    NEW_CALL = "new_call"  # an INVITE without a To tag
    IN_DIALOG = "in_dialog"  # ACK, BYE, CANCEL, PRACK, UPDATE, INFO, re-INVITE
    OTHER = "other"  # REGISTER, OPTIONS, responses, keep-alives, junk: the parser decides


class Verdict(enum.Enum):
    ADMIT = "admit"  # hand it to the core now
    NEW_CALL = "new_call"  # hand it on after the in-dialog traffic, if take_new_call() agrees
    DROP = "drop"  # ignore it
    REFUSE = "refuse"  # answer refusal(data) if it gives one, else ignore


def classify(data: bytes) -> Traffic:
    """New call, in-dialog or other, from the first line (and an INVITE's To header) only."""
    if data.startswith(b"INVITE "):
        end = data.find(b"\r\n\r\n")
        return Traffic.IN_DIALOG if _TO_TAG.search(data, 0, end if end >= 0 else len(data)) else Traffic.NEW_CALL
    if data.startswith(_IN_DIALOG):
        return Traffic.IN_DIALOG
    return Traffic.OTHER


def network_key(host: str) -> str:
    """The network above a source: the /24 of an IPv4 address, the /48 of an IPv6 address."""
    if ":" not in host:
        return host.rpartition(".")[0] + ".0/24"
    try:
        return ipaddress.IPv6Address(host).packed[:6].hex() + "::/48"
    except ValueError:
        return host


def source_key(host: str) -> str:
    """The unit a rate is counted for: an IPv4 address, or the /64 of an IPv6 address."""
    if ":" not in host:
        return host
    try:
        return ipaddress.IPv6Address(host).packed[:8].hex() + "::/64"
    except ValueError:
        return host


@dataclass(frozen=True)
class AdmissionLimits:
    """The numbers of ``security.flood`` (ivr/settings/flood.py)."""

    requests_per_second: int = 400
    new_calls_per_second: int = 100
    new_calls_per_network: int = 200  # 0: no cap per network
    block_seconds: float = 60.0
    max_new_calls_per_second: int = 400  # 0: no global cap
    over_limit: str = "reply"  # "reply" (503) or "drop"
    retry_after: int = 5
    max_sources: int = 65536
    max_blocked: int = 65536


class Admission:
    """Per-source rate, block list and new-call budgets; counters for the metrics."""

    def __init__(self, limits: AdmissionLimits, trusts: Callable[[str], bool], tag: str) -> None:
        self.limits = limits
        self._trusts = trusts
        self._tag = tag.encode("ascii")
        self._window_end = float("-inf")
        self._requests: dict[str, int] = {}
        self._calls: dict[str, int] = {}
        self._net_calls: dict[str, int] = {}
        self._new_calls = 0  # admitted this window, all sources
        self._blocked: dict[str, float] = {}  # source -> end of its block
        self._trust_cache: dict[str, bool] = {}
        self._v6_keys: dict[str, str] = {}  # IPv6 address -> its /64 (an ipaddress parse each otherwise)
        self.rejected: dict[tuple[str, str], int] = {(r, a): 0 for r in REASONS for a in ("drop", "reply")}
        self.blocks = 0  # blocks imposed since start

    # -- the two questions -------------------------------------------------------------------------
    def blocked(self, host: str, now: float) -> bool:
        """Whether ``host``'s datagrams are to be dropped unread (counted as ``blocked``)."""
        if now >= self._window_end:
            self._roll(now)
        if not self._blocked:
            return False
        key = self._key(host)
        until = self._blocked.get(key)
        if until is None:
            return False
        if now < until:
            self.rejected["blocked", "drop"] += 1
            return True
        del self._blocked[key]
        return False

    def check(self, data: bytes, host: str, now: float) -> Verdict:
        """Count one datagram from ``host`` (asked :meth:`blocked` first) and say what to do with it."""
        if now >= self._window_end:
            self._roll(now)
        key = self._key(host)
        counts = self._requests
        n = counts.get(key)
        if n is None:
            if len(counts) >= self.limits.max_sources:
                key = OVERFLOW
                n = counts.get(OVERFLOW, 0)
            else:
                n = 0
        n += 1
        counts[key] = n
        if n > self.limits.requests_per_second and not self.trusted(host):
            if key != OVERFLOW and len(self._blocked) < self.limits.max_blocked:
                self._blocked[key] = now + self.limits.block_seconds
                self.blocks += 1
            self.rejected["rate", "drop"] += 1
            return Verdict.DROP
        kind = classify(data)
        if kind is not Traffic.NEW_CALL:
            return Verdict.ADMIT
        calls = self._calls.get(key, 0) + 1
        self._calls[key] = calls
        if calls > self.limits.new_calls_per_second and not self.trusted(host):
            return self._over("new_calls")
        if self.limits.new_calls_per_network:
            net = self._network(host) if key != OVERFLOW else OVERFLOW
            nets = self._net_calls
            if net not in nets and len(nets) >= self.limits.max_sources:
                net = OVERFLOW
            calls = nets[net] = nets.get(net, 0) + 1
            if calls > self.limits.new_calls_per_network and not self.trusted(host):
                return self._over("network")
        return Verdict.NEW_CALL

    def take_new_call(self, host: str, now: float) -> Verdict:
        """A new call from ``host`` that passed :meth:`check`, served after the in-dialog traffic: ADMIT or refuse.

        The budget is for everyone but the trusted networks together: a trunk's calls neither spend it nor
        are refused by it.
        """
        if now >= self._window_end:
            self._roll(now)
        cap = self.limits.max_new_calls_per_second
        if not cap or self.trusted(host):
            return Verdict.ADMIT
        if self._new_calls >= cap:
            return self._over("overload")
        self._new_calls += 1
        return Verdict.ADMIT

    def _over(self, reason: str) -> Verdict:
        if self.limits.over_limit == "drop":
            self.rejected[reason, "drop"] += 1
            return Verdict.DROP
        self.rejected[reason, "reply"] += 1
        return Verdict.REFUSE

    # -- state ----------------------------------------------------------------------------------------
    def _network(self, host: str) -> str:
        if ":" not in host:
            return host.rpartition(".")[0] + ".0/24"
        cache = self._v6_keys
        net = cache.get("/" + host)
        if net is None:
            if len(cache) >= TRUST_CACHE:
                cache.clear()
            net = cache["/" + host] = network_key(host)
        return net

    def _key(self, host: str) -> str:
        if ":" not in host:
            return host
        cache = self._v6_keys
        key = cache.get(host)
        if key is None:
            if len(cache) >= TRUST_CACHE:
                cache.clear()
            key = cache[host] = source_key(host)
        return key

    def trusted(self, host: str) -> bool:
        cache = self._trust_cache
        hit = cache.get(host)
        if hit is None:
            if len(cache) >= TRUST_CACHE:
                cache.clear()
            hit = cache[host] = self._trusts(host)
        return hit

    def _roll(self, now: float) -> None:
        self._window_end = now + WINDOW
        self._requests = {}
        self._calls = {}
        self._net_calls = {}
        self._new_calls = 0
        if self._blocked:
            self._blocked = {k: until for k, until in self._blocked.items() if until > now}

    def expire(self, now: float) -> None:
        """Drop the blocks that have run out (a window roll does it too)."""
        if now >= self._window_end:
            self._roll(now)

    @property
    def blocked_sources(self) -> int:
        return len(self._blocked)

    @property
    def tracked_sources(self) -> int:
        """Sources counted in the current window (bounded by ``max_sources`` + 1)."""
        return len(self._requests)

    # -- the cheap answer -------------------------------------------------------------------------------
    def refusal(self, data: bytes) -> bytes | None:
        """``503 Service Unavailable`` with Retry-After for a request, from its raw header lines; None if it lacks them.

        Only Via, From, To, Call-ID and CSeq are copied (folded lines joined),
        so the answer is about the size of those lines: no amplification.
        """
        end = data.find(b"\r\n\r\n")
        head = data if end < 0 else data[:end]
        out: list[bytes] = [b"SIP/2.0 503 Service Unavailable"]
        seen: set[bytes] = set()
        copying = False
        for raw in head.split(b"\n")[1:]:
            line = raw.rstrip(b"\r")
            if line[:1] in (b" ", b"\t"):
                if copying:
                    out[-1] += b" " + line.strip()
                continue
            name, colon, value = line.partition(b":")
            canonical = _COPIED.get(name.strip().lower()) if colon else None
            copying = canonical is not None
            if canonical is not None:
                out.append(canonical + b": " + value.strip())
                seen.add(canonical)
        if len(seen) < 5:
            return None
        for i, line in enumerate(out):
            if line.startswith(b"To: ") and not re.search(rb";[ \t]*tag[ \t]*=", line, re.IGNORECASE):
                out[i] = line + b";tag=" + self._tag
        out.append(b"Retry-After: %d" % self.limits.retry_after)
        out.append(b"Content-Length: 0")
        return b"\r\n".join(out) + b"\r\n\r\n"
