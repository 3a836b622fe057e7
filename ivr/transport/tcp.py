"""SIP over TCP that a slowloris cannot exhaust: admission caps, deadlines on the loop's clock, bounded buffers.

:class:`TcpGuard` owns a listener's connections (the shell in
``ivr/transport/sip.py`` sends through it) and enforces ``security.tcp``
(``ivr/settings/tcp.py``):

- **Caps.** At most ``max_connections`` in all and
  ``max_connections_per_source`` per IP address (trusted networks exempt from
  the latter, and let in above the former: trunks are few and must not be
  locked out by an attacker's connections). When the total is reached, the
  oldest connection that has not yet sent a whole message is closed to make
  room (an idle scanner or a slowloris, never a phone in a call nor a trusted
  peer); if there is none, the new connection is refused.
- **Deadlines.** A connection must complete its first message, and every
  message once its first byte came, within ``header_timeout``; it is closed
  after ``idle_timeout`` without a byte. One loop timer per connection, re-armed
  only when the deadline comes nearer: the bytes of a busy connection cost no
  timer operations.
- **Buffers.** Unfinished input is capped at ``max_buffered`` (the framer in
  ``ivr/sip/message.py`` caps one header block and one body on top of that).
  When the peer does not read our output and it passes ``write_high_water``,
  the connection is no longer read from until the peer catches up; four times
  the mark closes it. The kernel's send and receive buffers of a connection
  are set to the same sizes, or they would grow to megabytes each
  (``tcp_wmem``, ``tcp_rmem``) for a peer that never reads.

Every refusal and closure is counted by reason for ``/metrics``. The module
also raises the process's file limit at start (:func:`raise_file_limit`).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
from collections.abc import Callable
from typing import cast

from ivr.settings.tcp import TcpSettings
from ivr.sip.message import SipParseError, StreamFramer
from ivr.sip.ua import Peer

log = logging.getLogger(__name__)

#: why a new connection was refused at once
REFUSALS = ("total_cap", "source_cap")
#: why the server closed an open connection
CLOSURES = ("evicted", "header_timeout", "idle_timeout", "buffer", "write_backlog", "malformed")
BACKLOG_FACTOR = 4  # unsent output past write_high_water x this closes the connection

Deliver = Callable[[bytes, Peer], None]


class TcpGuard:
    """Admits, times and caps the SIP-over-TCP connections of one listener."""

    def __init__(
        self,
        settings: TcpSettings,
        trusts: Callable[[str], bool],
        deliver: Deliver,
        on_malformed: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.trusts = trusts
        self.deliver = deliver
        self.on_malformed = on_malformed
        self.connections: dict[Peer, SipTcpConnection] = {}
        self.per_source: dict[str, int] = {}  # bounded: each entry holds at least one open connection
        self._unproven: dict[SipTcpConnection, None] = {}  # no whole message yet, oldest first
        self.refused = dict.fromkeys(REFUSALS, 0)
        self.closed = dict.fromkeys(CLOSURES, 0)
        self.read_pauses = 0

    def protocol(self) -> SipTcpConnection:
        """The protocol factory for ``loop.create_server``."""
        return SipTcpConnection(self)

    @property
    def open(self) -> int:
        return len(self.connections)

    @property
    def buffered(self) -> int:
        """Bytes of unfinished input held over all connections."""
        return sum(c.framer.buffered for c in self.connections.values())

    def admit(self, conn: SipTcpConnection, host: str) -> bool:
        """Take ``conn`` in, or count why not; may close the oldest unproven connection to make room."""
        trusted = self.trusts(host)
        if not trusted and self.per_source.get(host, 0) >= self.settings.max_connections_per_source:
            self.refused["source_cap"] += 1
            return False
        if len(self.connections) >= self.settings.max_connections and not trusted:
            if not self._unproven:
                self.refused["total_cap"] += 1
                return False
            oldest = next(iter(self._unproven))
            oldest.close("evicted")  # forgotten now: its slot is free before connection_lost comes
        assert conn.peer is not None
        self.connections[conn.peer] = conn
        self.per_source[host] = self.per_source.get(host, 0) + 1
        if not trusted:  # a trunk's connection is never evicted
            self._unproven[conn] = None
        return True

    def proven(self, conn: SipTcpConnection) -> None:
        self._unproven.pop(conn, None)

    def forget(self, conn: SipTcpConnection) -> None:
        """Drop ``conn`` from every table; called once, when it is closed by either side."""
        peer = conn.peer
        if peer is None or self.connections.get(peer) is not conn:
            return
        del self.connections[peer]
        self._unproven.pop(conn, None)
        host = peer[1]
        left = self.per_source.get(host, 1) - 1
        if left > 0:
            self.per_source[host] = left
        else:
            self.per_source.pop(host, None)

    def write(self, peer: Peer, data: bytes) -> bool:
        """Send on ``peer``'s connection; False when there is none (the caller counts a send error)."""
        conn = self.connections.get(peer)
        if conn is None:
            return False
        return conn.write(data)

    def close_all(self) -> None:
        for conn in list(self.connections.values()):
            conn.abort()


class SipTcpConnection(asyncio.Protocol):
    """One SIP-over-TCP connection: frames its bytes into messages and keeps to the guard's limits."""

    def __init__(self, guard: TcpGuard) -> None:
        self.guard = guard
        self.loop = asyncio.get_running_loop()
        self.framer = StreamFramer()
        self.peer: Peer | None = None
        self.transport: asyncio.Transport | None = None
        self.last_input = 0.0
        self.message_since: float | None = None  # when the unfinished message (before the first: the connection) began
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass
        self.transport = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        if not peername:  # reset before we saw it
            self._closed = True
            self.transport.abort()
            return
        host, port = str(peername[0]), int(peername[1])
        self.peer = ("tcp", host, port)
        if not self.guard.admit(self, host):
            self._closed = True
            self.transport.abort()
            return
        settings = self.guard.settings
        high = settings.write_high_water
        self.transport.set_write_buffer_limits(high=high, low=high // 2)
        # the kernel's buffers per connection grow to megabytes by default (tcp_wmem, tcp_rmem): bound them too
        sock = transport.get_extra_info("socket")
        if sock is not None:
            for opt, size in ((socket.SO_SNDBUF, high), (socket.SO_RCVBUF, settings.max_buffered)):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, size)
                except OSError:
                    pass  # the kernel keeps its own: the transport's limits still hold
        now = self.loop.time()
        self.last_input = now
        self.message_since = now
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        assert self.peer is not None
        now = self.loop.time()
        self.last_input = now
        framer = self.framer
        try:
            frames = framer.feed(data)
        except SipParseError as exc:
            # the stream cannot be re-synchronised: count it and close
            log.info("closing TCP connection from %s:%s: %s", self.peer[1], self.peer[2], exc.reason)
            self.guard.on_malformed()
            self.close("malformed")
            return
        if frames:
            self.guard.proven(self)
            self.message_since = now if framer.buffered else None
        elif framer.buffered and self.message_since is None:
            self.message_since = now
        if framer.buffered > self.guard.settings.max_buffered:
            self.close("buffer")
            return
        for frame in frames:
            self.guard.deliver(frame, self.peer)
            if self._closed:  # e.g. our answer overran the write backlog
                return
        self._arm()

    def write(self, data: bytes) -> bool:
        tr = self.transport
        if self._closed or tr is None or tr.is_closing():
            return False
        tr.write(data)
        if tr.get_write_buffer_size() > self.guard.settings.write_high_water * BACKLOG_FACTOR:
            self.close("write_backlog")
        return True

    def pause_writing(self) -> None:
        # the peer does not read what we send: stop taking its requests until it does
        if self.transport is not None and not self._closed:
            self.guard.read_pauses += 1
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self._closed:
            self.transport.resume_reading()

    def close(self, reason: str) -> None:
        """Close at once (nothing more is read or flushed) and count ``reason``."""
        if self._closed:
            return
        self.guard.closed[reason] += 1
        if self.peer is not None:
            log.debug("closing TCP connection from %s:%s: %s", self.peer[1], self.peer[2], reason)
        self.abort()

    def abort(self) -> None:
        self._closed = True
        self._cancel_timer()
        self.guard.forget(self)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._cancel_timer()
        self.guard.forget(self)

    # -- the deadline: one loop timer, moved only when it must come nearer --------------------------
    def _deadline(self) -> float:
        s = self.guard.settings
        at = self.last_input + s.idle_timeout
        if self.message_since is not None:
            at = min(at, self.message_since + s.header_timeout)
        return at

    def _arm(self) -> None:
        at = self._deadline()
        if at >= self._timer_at:
            return  # the armed timer fires first and re-checks
        self._cancel_timer()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = float("inf")

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        if self._closed:
            return
        now = self.loop.time() + 0.001  # uvloop rounds timers to the millisecond and may wake a hair early
        s = self.guard.settings
        if self.message_since is not None and now >= self.message_since + s.header_timeout:
            self.close("header_timeout")
        elif now >= self.last_input + s.idle_timeout:
            self.close("idle_timeout")
        else:
            self._arm()


def raise_file_limit(wanted_connections: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (TCP connections and RTP sockets are descriptors); logged.

    Returns the (before, after) soft limits.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    after = soft
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            after = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the file limit from %d to %d: %s", soft, target, exc)
    log.info("file limit (RLIMIT_NOFILE): %d, was %d", after, soft)
    if after < wanted_connections + 256:
        log.warning(
            "file limit %d leaves little room beside security.tcp.max_connections %d: new calls' RTP needs descriptors",
            after,
            wanted_connections,
        )
    return soft, after
