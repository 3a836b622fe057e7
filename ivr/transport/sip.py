"""The asyncio shell around the sans-IO SIP core: UDP and TCP listeners.

The only SIP module that imports asyncio. It feeds ``loop.time()`` and the
bytes it receives into :class:`UserAgent`, hands the core's events to the
transaction user, sends what the core wants sent and arms one
``loop.call_at`` from ``get_timer()``.

UDP uses a plain non-blocking socket watched with ``loop.add_reader``: each
wake-up reads every queued datagram (up to ``UDP_BATCH``) and sends with
``sendto`` directly, which costs far less per message than a datagram
transport and protocol callback. With ``security.flood`` on, every datagram
and TCP message is first put to :class:`ivr.sip.admission.Admission`
(source blocked? over its rate? a new call over a cap?) before the core
parses it, and a wake-up's new calls wait until its other datagrams are
served.

This module runs compiled with the SIP core when the build is current
(docs/queueing.md, "Compiled build"): what it takes from outside is typed by
shape (:class:`SipCore`) or left untyped where a library's stubs say less
than it returns.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any, Protocol

from ivr.settings.tcp import TcpSettings
from ivr.sip.admission import Admission, Verdict
from ivr.sip.ua import Event, Peer, SipStats
from ivr.transport.tcp import TcpGuard

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


class SipCore(Protocol):
    """What the shell asks of :class:`ivr.sip.ua.UserAgent`: typed by shape, so that a stand-in fits too (compiled,
    a parameter typed with a class accepts that class only)."""

    stats: SipStats

    def receive(self, data: bytes, peer: Peer, now: float) -> None: ...

    def events(self) -> list[Event]: ...

    def datagrams_to_send(self) -> list[tuple[bytes, Peer]]: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


class SipShell:
    """Runs a :class:`ivr.sip.ua.UserAgent` on the event loop."""

    def __init__(
        self,
        ua: SipCore,
        on_events: EventHandler,
        tcp: TcpSettings | None = None,
        trusts: Callable[[str], bool] = lambda address: False,
        admission: Admission | None = None,
    ) -> None:
        self.ua = ua
        self.on_events = on_events
        self.admission = admission  # security.flood: asked about each UDP datagram before the core parses it
        self._rx = bytearray(65535)  # one receive buffer: a datagram dropped unread costs no allocation
        self.loop = asyncio.get_running_loop()
        self.udp: socket.socket | None = None
        self.tcp_server: asyncio.Server | None = None
        # SIP over TCP within security.tcp's limits (ivr/transport/tcp.py)
        self.tcp = TcpGuard(tcp or TcpSettings(), trusts, self.receive, self._tcp_malformed)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self.send_errors = 0

    async def start(self, host: str, port: int, transports: list[str]) -> None:
        if "udp" in transports:
            self.udp = _udp_socket(host, port)
            port = self.udp.getsockname()[1]
            self.loop.add_reader(self.udp.fileno(), self._udp_readable)
        if "tcp" in transports:
            self.tcp_server = await self.loop.create_server(self.tcp.protocol, host, port, reuse_address=True)

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
        adm = self.admission
        rx = self._rx
        view = memoryview(rx)
        now = loop_time()
        new_calls: list[tuple[bytes, Peer]] = []
        served = 0
        # datagrams dropped unread are cheap: read more of them per wake-up, a flood drains fast
        for _ in range(UDP_BATCH * 8):
            try:
                n, addr = sock.recvfrom_into(rx)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP port unreachable reported on the socket
                log.debug("UDP receive error: %s", exc)
                continue
            if adm is not None and adm.blocked(addr[0], now):
                continue
            data = bytes(view[:n])
            peer: Peer = ("udp", addr[0], addr[1])
            if adm is not None:
                verdict = adm.check(data, addr[0], now)
                if verdict is Verdict.NEW_CALL:
                    new_calls.append((data, peer))  # served after this wake-up's in-dialog traffic
                    continue
                if verdict is not Verdict.ADMIT:
                    self._refuse(data, peer, verdict)
                    continue
            ua.receive(data, peer, loop_time())
            # events are handled at once: an INVITE is answered before the next datagram is read
            self.pump()
            served += 1
            if served + len(new_calls) >= UDP_BATCH:
                break
        for data, peer in new_calls:
            assert adm is not None
            verdict = adm.take_new_call(peer[1], loop_time())
            if verdict is Verdict.ADMIT:
                ua.receive(data, peer, loop_time())
                self.pump()
            else:
                self._refuse(data, peer, verdict)

    def _refuse(self, data: bytes, peer: Peer, verdict: Verdict) -> None:
        """A datagram admission turned away: a cheap 503 when the verdict and the request allow one."""
        answer = self.admission.refusal(data) if verdict is Verdict.REFUSE and self.admission is not None else None
        if answer is None:
            return
        if peer[0] != "udp":
            if not self.tcp.write(peer, answer):
                self.send_errors += 1
        elif self.udp is not None:
            try:
                self.udp.sendto(answer, (peer[1], peer[2]))
            except OSError:
                self.send_errors += 1

    @property
    def tcp_port(self) -> int | None:
        if self.tcp_server is None:
            return None
        # untyped on purpose: uvloop's server holds a list where the stubs say tuple, and compiled code checks
        server: Any = self.tcp_server
        return int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.udp is not None:
            self.loop.remove_reader(self.udp.fileno())
            self.udp.close()
        if self.tcp_server is not None:
            self.tcp_server.close()
            self.tcp.close_all()
            await self.tcp_server.wait_closed()

    def _tcp_malformed(self) -> None:
        self.ua.stats.malformed["dropped"] += 1

    def receive(self, data: bytes, peer: Peer) -> None:
        """One framed TCP message (or a test's datagram): through admission, then to the core."""
        adm = self.admission
        if adm is not None:
            now = self.loop.time()
            if adm.blocked(peer[1], now):
                return
            verdict = adm.check(data, peer[1], now)
            if verdict is Verdict.NEW_CALL:
                verdict = adm.take_new_call(peer[1], now)
            if verdict is not Verdict.ADMIT:
                self._refuse(data, peer, verdict)
                return
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
                elif not self.tcp.write(peer, data):
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
