"""Every port a test binds comes from here: SIP and HTTP of servers, SIPp, phones, Prometheus, PostgreSQL.

Theory of operation
-------------------
The ports a test uses must not be taken by anything else between the moment
they are chosen and the moment they are bound, which for a pyVoIP phone's
RTP range or SIPp's media ports can be many seconds later. So:

1. **The region** is the ports from 10000 up, minus the kernel's ephemeral
   range (``/proc/sys/net/ipv4/ip_local_port_range``: where every socket
   bound to port 0 and every TCP connect lands) and minus the server's
   default RTP range (20000-30000, where a server binds a port per call).
   Nothing in this machine picks a port there by itself.
2. **Blocks**: the region is cut into fixed blocks of :data:`BLOCK` ports.
   A session leases a block by taking an exclusive ``flock`` on a lock file
   of its own (``$TMPDIR/frontdesk-test-ports/<first port>.lock``), held until
   the process ends: two test runs on one machine never share a block, and
   a lock left by a killed run goes with its process.
3. **Ranges**: :meth:`PortAllocator.take` hands out ``n`` consecutive ports
   from the leased blocks, every one checked bindable now for UDP and TCP.
   It walks forward (next fit) and leases a new block when the leased ones
   ahead have no room; it goes round again only once it holds
   :data:`ROUND_BLOCKS` blocks, so a released port is handed out again only
   about a thousand ports later, long after the test that used it ended. A
   range bigger than a block gets consecutive blocks of its own.
   :meth:`PortAllocator.release` gives a range back to this session.

This is what makes the clash of `make test` in tests/test_sim_load.py
impossible: pyVoIP phones' RTP ranges were random blocks above the ephemeral
ports, checked free but not bound until a call came, so two phones could get
overlapping ranges, and the second to answer on a shared port failed with
EADDRINUSE. Here every range is disjoint from every other by construction.
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
import threading
import warnings
from pathlib import Path

from sim.live.phones import SERVER_RTP_DEFAULT, ephemeral_ports

BLOCK = 100
ROUND_BLOCKS = 10  # blocks a session leases before it hands out released ports again
REGION_START = 10000  # below: well-known and registered services (5060, 5432, 6000, 8080, 9090, ...)
LOCK_DIR = Path(tempfile.gettempdir()) / "frontdesk-test-ports"


def region() -> list[range]:
    """The ports outside the ephemeral range and the server's default RTP range, as whole blocks."""
    eph = ephemeral_ports()
    rtp_low, rtp_high = SERVER_RTP_DEFAULT
    spans = [(REGION_START, 65535)]
    for low, high in ((eph.low, eph.high), (rtp_low, rtp_high)):
        cut = []
        for a, b in spans:
            if b < low or a > high:
                cut.append((a, b))
                continue
            if a < low:
                cut.append((a, low - 1))
            if b > high:
                cut.append((high + 1, b))
        spans = cut
    blocks = []
    for a, b in spans:
        first = -(-a // BLOCK) * BLOCK  # blocks start at multiples of BLOCK: the same cut in every process
        blocks += [range(s, s + BLOCK) for s in range(first, b - BLOCK + 2, BLOCK)]
    return blocks


def bindable(port: int) -> bool:
    """Free on 127.0.0.1 for UDP and TCP now (no SO_REUSEADDR: a TCP TIME_WAIT counts as taken)."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


class PortAllocator:
    """Ranges of ports leased to this process for its whole life (see the module's docstring)."""

    def __init__(self, blocks: list[range] | None = None, lock_dir: Path = LOCK_DIR) -> None:
        self._all = blocks if blocks is not None else region()
        if not self._all:
            raise RuntimeError(
                f"no ports outside the kernel's ephemeral range {ephemeral_ports()} and the server's RTP "
                f"range {SERVER_RTP_DEFAULT}: narrow net.ipv4.ip_local_port_range (e.g. 32768 60999)"
            )
        self._lock_dir = lock_dir
        self._held: dict[int, int] = {}  # block start -> lock file descriptor
        self._order: list[range] = []  # leased blocks, in the order they were leased
        self._in_use: set[int] = set()
        self._cursor = (0, 0)  # (index in _order, offset in that block)
        self._mutex = threading.Lock()

    # -- leasing blocks

    def _lease(self, block: range) -> bool:
        if block.start in self._held:
            return False
        self._lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_dir / f"{block.start}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False  # another test run holds it
        self._held[block.start] = fd
        return True

    def _lease_next(self) -> range:
        for block in self._all:
            if self._lease(block):
                self._order.append(block)
                return block
        raise RuntimeError(f"every block of test ports is leased ({len(self._all)} blocks): too many runs at once")

    def _lease_run(self, n: int) -> range:
        """``n`` consecutive bindable ports in consecutive blocks leased together for them."""
        count = -(-n // BLOCK)
        for i in range(len(self._all) - count + 1):
            run = self._all[i : i + count]
            if run[-1].stop - run[0].start != count * BLOCK or any(b.start in self._held for b in run):
                continue  # not contiguous, or partly ours already
            leased = []
            for block in run:
                if not self._lease(block):
                    break
                leased.append(block)
            else:
                ports = range(run[0].start, run[0].start + n)
                busy = [p for p in ports if not bindable(p)]
                if not busy:
                    return ports
                warnings.warn(f"test ports {busy[:10]} are bound by another program: skipped", stacklevel=3)
            for block in leased:  # another run's, or some ports bound: give these back to the pool
                os.close(self._held.pop(block.start))
        raise RuntimeError(f"no {n} consecutive free test ports")

    # -- ranges

    def take(self, n: int = 1) -> range:
        """``n`` consecutive ports, each bindable now and handed to no one else until released."""
        if n < 1:
            raise ValueError("n must be at least 1")
        with self._mutex:
            if n > BLOCK:
                ports = self._lease_run(n)
                self._in_use.update(ports)
                return ports
            found = self._find(n)
            while found is None:
                block = self._lease_next()
                self._cursor = (len(self._order) - 1, 0)
                found = self._find(n, only=block)
            self._in_use.update(found)
            return found

    def _find(self, n: int, only: range | None = None) -> range | None:
        """Next fit from the cursor over the leased blocks (or in ``only``); moves the cursor past it.

        The walk goes back to the first block only once the session holds
        :data:`ROUND_BLOCKS` blocks: a released port waits that long to be reused.
        """
        if only is not None:
            candidates = [(self._order.index(only), 0)]
        else:
            index, offset = self._cursor
            count = len(self._order)
            candidates = [(index, offset)] + [(i, 0) for i in range(index + 1, count)] if count else []
            if count >= ROUND_BLOCKS:
                candidates += [(i, 0) for i in range(index + 1)]
        for index, offset in candidates:
            block = self._order[index]
            start = block.start + offset
            while start + n <= block.stop:
                ports = range(start, start + n)
                busy = [p for p in ports if p in self._in_use or not bindable(p)]
                if not busy:
                    self._cursor = (index, ports.stop - block.start)
                    return ports
                start = busy[-1] + 1
        return None

    def release(self, ports: range) -> None:
        """Give ``ports`` back to this session (the next fit reaches them again only after a round)."""
        with self._mutex:
            self._in_use.difference_update(ports)


_allocator: PortAllocator | None = None
_allocator_lock = threading.Lock()


def allocator() -> PortAllocator:
    """The allocator of this process, made on first use."""
    global _allocator
    with _allocator_lock:
        if _allocator is None:
            _allocator = PortAllocator()
        return _allocator


def free_port() -> int:
    """One port, free for UDP and TCP on 127.0.0.1, reserved for this session."""
    return allocator().take(1).start


def port_range(n: int) -> range:
    """``n`` consecutive ports (a pyVoIP phone's RTP range, SIPp's media ports), reserved for this session."""
    return allocator().take(n)


def release(ports: range | int) -> None:
    allocator().release(range(ports, ports + 1) if isinstance(ports, int) else ports)
