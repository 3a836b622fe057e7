"""The asyncio shell around the sans-IO SIP core: UDP and TCP listeners.

The only SIP module that imports asyncio. It feeds ``loop.time()`` and the
bytes it receives into :class:`UserAgent`, hands the core's events to the
transaction user, sends what the core wants sent and arms one
``loop.call_at`` from ``get_timer()``.

UDP uses a plain non-blocking socket watched with ``loop.add_reader``: each
wake-up reads every queued datagram (up to ``UDP_BATCH``) and sends with
``sendto`` directly, which costs far less per message than a datagram
transport and protocol callback.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import cast

from ivr.sip.message import SipParseError, StreamFramer
from ivr.sip.ua import Event, Peer, UserAgent

log = logging.getLogger(__name__)

UDP_BATCH = 64  # datagrams read per wake-up
UDP_BUFFER = 4 * 1024 * 1024  # bytes: rides out a burst instead of dropping it


def _udp_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, UDP_BUFFER)
            except OSError:
                pass  # the kernel caps it (net.core.rmem_max); the default still works
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


EventHandler = Callable[[list[Event], float], None]


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, shell: SipShell) -> None:
        self.shell = shell
        self.framer = StreamFramer()
        self.peer: Peer | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass
        self.transport = cast(asyncio.Transport, transport)
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = ("tcp", host, port)
        self.shell.tcp_connections[self.peer] = self.transport

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None and self.transport is not None
        try:
            frames = self.framer.feed(data)
        except SipParseError as exc:
            # the stream cannot be re-synchronised: count it and close
            log.info("closing TCP connection from %s:%s: %s", self.peer[1], self.peer[2], exc.reason)
            self.shell.ua.stats.malformed["dropped"] += 1
            self.transport.close()
            return
        for frame in frames:
            self.shell.receive(frame, self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.shell.tcp_connections.get(self.peer) is self.transport:
            del self.shell.tcp_connections[self.peer]


class SipShell:
    """Runs a :class:`UserAgent` on the event loop."""

    def __init__(self, ua: UserAgent, on_events: EventHandler) -> None:
        self.ua = ua
        self.on_events = on_events
        self.loop = asyncio.get_running_loop()
        self.udp: socket.socket | None = None
        self.tcp_server: asyncio.Server | None = None
        self.tcp_connections: dict[Peer, asyncio.Transport] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self.send_errors = 0

    async def start(self, host: str, port: int, transports: list[str]) -> None:
        if "udp" in transports:
            self.udp = _udp_socket(host, port)
            port = self.udp.getsockname()[1]
            self.loop.add_reader(self.udp.fileno(), self._udp_readable)
        if "tcp" in transports:
            self.tcp_server = await self.loop.create_server(lambda: _TcpProtocol(self), host, port, reuse_address=True)

    @property
    def udp_port(self) -> int | None:
        return int(self.udp.getsockname()[1]) if self.udp else None

    def _udp_readable(self) -> None:
        # Drain what the kernel holds in one wake-up: one event-loop turn per
        # burst instead of per datagram. Bounded so TCP and timers get a turn.
        sock = self.udp
        assert sock is not None
        ua = self.ua
        loop_time = self.loop.time
        for _ in range(UDP_BATCH):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP port unreachable reported on the socket
                log.debug("UDP receive error: %s", exc)
                continue
            ua.receive(data, ("udp", addr[0], addr[1]), loop_time())
            # events are handled at once: an INVITE is answered before the next datagram is read
            self.pump()

    @property
    def tcp_port(self) -> int | None:
        if self.tcp_server is None:
            return None
        return int(self.tcp_server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.udp is not None:
            self.loop.remove_reader(self.udp.fileno())
            self.udp.close()
        if self.tcp_server is not None:
            self.tcp_server.close()
            for tr in list(self.tcp_connections.values()):
                tr.close()
            await self.tcp_server.wait_closed()

    def receive(self, data: bytes, peer: Peer) -> None:
        self.ua.receive(data, peer, self.loop.time())
        self.pump()

    def pump(self) -> None:
        """Hand events to the transaction user, send what is due, re-arm the timer."""
        ua = self.ua
        events = ua.events()
        while events:
            self.on_events(events, self.loop.time())
            events = ua.events()
        out = ua.datagrams_to_send()
        if out:
            udp = self.udp
            for data, peer in out:
                if peer[0] == "udp":
                    if udp is not None:
                        try:
                            udp.sendto(data, (peer[1], peer[2]))
                        except OSError:
                            # send buffer full or peer gone: SIP retransmission recovers
                            self.send_errors += 1
                else:
                    tr = self.tcp_connections.get(peer)
                    if tr is not None and not tr.is_closing():
                        tr.write(data)
                    else:
                        self.send_errors += 1
        at = ua.get_timer()
        if at is not None and at < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = at
            self._timer = self.loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        # uvloop rounds timers to the millisecond and may wake a hair early
        now = max(self.loop.time(), self._timer_at)
        self._timer = None
        self._timer_at = float("inf")
        self.ua.handle_timer(now)
        self.pump()
