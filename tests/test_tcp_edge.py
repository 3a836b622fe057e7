"""SIP over TCP that a slowloris cannot exhaust (ivr/transport/tcp.py, settings in ivr/settings/tcp.py).

First the guard on its own, on a real asyncio listener on loopback with short
configured timeouts (the deadlines run on the loop's clock): the total and
per-source caps, eviction of connections that never sent a whole message,
trusted sources, the header and idle timeouts, the input cap and write
backpressure. Then the running server: more idle connections than its cap
while a new call over UDP and one over TCP still complete, and a slowloris
closed after the header timeout.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from pydantic import ValidationError
from support.ports import free_port, release
from support.server import Server
from support.sipp import run_sipp
from support.waiting import wait_until, wait_until_async

from ivr.settings.security import SecuritySettings
from ivr.settings.tcp import TcpSettings
from ivr.sip.ua import Peer
from ivr.transport.tcp import SipTcpConnection, TcpGuard

ServerFactory = Callable[..., Server]


def options(port: int, n: int = 1) -> bytes:
    return (
        f"OPTIONS sip:service@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-tcp-{n}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:tester@127.0.0.1>;tag=t{n}\r\n"
        f"To: <sip:service@127.0.0.1:{port}>\r\n"
        f"Call-ID: tcp-edge-{n}@127.0.0.1\r\n"
        f"CSeq: {n} OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


# -- the guard on its own ------------------------------------------------------------------------


class Listener:
    """A TcpGuard on a real loopback listener; ``got`` collects the framed messages."""

    def __init__(self, guard: TcpGuard, server: asyncio.Server, port: int) -> None:
        self.guard = guard
        self.server = server
        self.port = port

    async def connect(self, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port, local_addr=(source, 0))


@asynccontextmanager
async def listener(
    settings: TcpSettings,
    trusted: str | None = None,
    on_message: Callable[[TcpGuard, bytes, Peer], None] | None = None,
) -> AsyncIterator[tuple[Listener, list[bytes]]]:
    got: list[bytes] = []
    security = SecuritySettings.model_validate({"trusted_networks": [trusted] if trusted else []})
    guard: TcpGuard

    def deliver(data: bytes, peer: Peer) -> None:
        got.append(data)
        if on_message is not None:
            on_message(guard, data, peer)

    guard = TcpGuard(settings, security.trusts, deliver, lambda: None)
    port = free_port()
    server = await asyncio.get_running_loop().create_server(guard.protocol, "127.0.0.1", port)
    try:
        yield Listener(guard, server, port), got
    finally:
        guard.close_all()
        server.close()
        await server.wait_closed()
        release(port)


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 2.0) -> bool:
    """True once the server has closed (EOF or reset); False if it is still open after ``timeout``."""
    try:
        while await asyncio.wait_for(reader.read(65536), timeout):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def settle(guard: TcpGuard, connections: int) -> None:
    async def check() -> bool:
        return guard.open == connections

    await wait_until_async(f"{connections} open connections (now {guard.open})", check, timeout=3)


def test_caps_eviction_and_trusted_sources() -> None:
    async def run() -> None:
        settings = TcpSettings(max_connections=4, max_connections_per_source=2, header_timeout=30, idle_timeout=60)
        async with listener(settings, trusted="127.0.0.9/32") as (ln, got):
            g = ln.guard
            a1 = await ln.connect("127.0.0.2")
            a2 = await ln.connect("127.0.0.2")
            a3 = await ln.connect("127.0.0.2")  # over the per-source cap: closed at once
            assert await closed_by_server(a3[0])
            assert g.refused["source_cap"] == 1
            b1 = await ln.connect("127.0.0.3")
            b2 = await ln.connect("127.0.0.3")
            await settle(g, 4)
            # the two from .3 send a whole message: proven, never evicted
            for i, (_, w) in enumerate((b1, b2)):
                w.write(options(ln.port, i))
            await wait_until_async("two messages", lambda: asyncio.sleep(0.01, len(got) == 2), timeout=3)
            # at the total cap a newcomer makes room: the oldest connection without a whole message goes
            c1 = await ln.connect("127.0.0.4")
            assert await closed_by_server(a1[0])
            assert not await closed_by_server(a2[0], timeout=0.2)
            assert g.closed["evicted"] == 1
            c2 = await ln.connect("127.0.0.5")
            assert await closed_by_server(a2[0])
            await settle(g, 4)
            assert g.closed["evicted"] == 2
            # c1 and c2 prove themselves: now every slot is proven, a newcomer is refused
            for i, (_, w) in enumerate((c1, c2)):
                w.write(options(ln.port, 10 + i))
            await wait_until_async("four messages", lambda: asyncio.sleep(0.01, len(got) == 4), timeout=3)
            d = await ln.connect("127.0.0.6")
            assert await closed_by_server(d[0])
            assert g.refused["total_cap"] == 1
            # a trusted peer is exempt from the per-source cap and let in above the total
            trusted = [await ln.connect("127.0.0.9") for _ in range(3)]
            await settle(g, 7)
            assert g.per_source == {"127.0.0.3": 2, "127.0.0.4": 1, "127.0.0.5": 1, "127.0.0.9": 3}
            # and never evicted: though they sent nothing, a newcomer finds no room
            e = await ln.connect("127.0.0.7")
            assert await closed_by_server(e[0])
            assert g.refused["total_cap"] == 2 and g.closed["evicted"] == 2
            for _, w in [a1, a2, a3, b1, b2, c1, c2, d, e, *trusted]:
                w.close()
            await settle(g, 0)
            assert g.per_source == {}

    asyncio.run(run())


def test_header_and_idle_timeouts_on_the_loop_clock() -> None:
    async def run() -> None:
        settings = TcpSettings(header_timeout=0.3, idle_timeout=0.6)
        async with listener(settings) as (ln, got):
            loop = asyncio.get_running_loop()
            g = ln.guard
            # a slowloris: one byte every 50 ms, never a whole header block
            r, w = await ln.connect()
            start = loop.time()
            for byte in b"OPTIONS sip:service@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP x\r\n":
                if r.at_eof() or w.is_closing():
                    break
                try:
                    w.write(bytes([byte]))
                    await w.drain()
                except ConnectionError:
                    break
                await asyncio.sleep(0.05)
                if g.closed["header_timeout"]:
                    break
            assert await closed_by_server(r)
            took = loop.time() - start
            assert 0.25 <= took < 1.0, took
            assert g.closed["header_timeout"] == 1
            # a connection that never sends a byte gets the same deadline for its first message
            r, w = await ln.connect()
            start = loop.time()
            assert await closed_by_server(r)
            assert 0.25 <= loop.time() - start < 1.0
            assert g.closed["header_timeout"] == 2
            # a whole message, then silence: closed for idleness, not before idle_timeout
            r, w = await ln.connect()
            w.write(options(ln.port))
            start = loop.time()
            assert await closed_by_server(r)
            assert 0.55 <= loop.time() - start < 1.2
            assert g.closed["idle_timeout"] == 1 and len(got) == 1
            # keep-alive CRLFs (RFC 5626) count as life, and do not start a message
            r, w = await ln.connect()
            w.write(options(ln.port, 2))
            for _ in range(8):
                await asyncio.sleep(0.15)
                w.write(b"\r\n\r\n")
            assert not r.at_eof() and g.open == 1 and g.closed["idle_timeout"] == 1
            w.close()
            await settle(g, 0)

    asyncio.run(run())


def test_unfinished_input_is_capped() -> None:
    async def run() -> None:
        async with listener(TcpSettings(max_buffered=1024)) as (ln, got):
            r, w = await ln.connect()
            w.write(b"OPTIONS sip:x SIP/2.0\r\n" + b"X-Pad: " + b"a" * 2000)
            assert await closed_by_server(r)
            assert ln.guard.closed["buffer"] == 1 and got == []
            # a message that does not frame (no Content-Length) closes too, counted apart
            r, w = await ln.connect()
            w.write(b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP x\r\n\r\n")
            assert await closed_by_server(r)
            assert ln.guard.closed["malformed"] == 1

    asyncio.run(run())


def test_a_peer_that_does_not_read_is_disconnected() -> None:
    async def run() -> None:
        def answer(guard: TcpGuard, data: bytes, peer: Peer) -> None:
            guard.write(peer, b"x" * 8 * 1024 * 1024)  # far more than the kernel's buffers take

        async with listener(TcpSettings(write_high_water=4096), on_message=answer) as (ln, _):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", ln.port))
            _, w = await asyncio.open_connection(sock=sock)
            w.write(options(ln.port))
            await wait_until_async(
                "a closure", lambda: asyncio.sleep(0.01, ln.guard.closed["write_backlog"]), timeout=3
            )
            await settle(ln.guard, 0)
            w.close()

    asyncio.run(run())


class FakeTransport:
    def __init__(self) -> None:
        self.reading = True
        self.aborted = False

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else None

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        self.limits = (high, low)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def abort(self) -> None:
        self.aborted = True


def test_backpressure_pauses_reading_until_the_peer_reads() -> None:
    async def run() -> None:
        guard = TcpGuard(TcpSettings(write_high_water=2048), lambda a: False, lambda d, p: None, lambda: None)
        conn = SipTcpConnection(guard)
        tr = FakeTransport()
        conn.connection_made(tr)  # type: ignore[arg-type]
        assert tr.limits == (2048, 1024) and guard.open == 1
        conn.pause_writing()  # the transport's buffer passed the high-water mark
        assert not tr.reading and guard.read_pauses == 1
        conn.resume_writing()
        assert tr.reading
        conn.close("idle_timeout")
        assert tr.aborted and guard.open == 0

    asyncio.run(run())


def test_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="must not be shorter than header_timeout"):
        TcpSettings(header_timeout=10, idle_timeout=5)
    with pytest.raises(ValidationError):
        TcpSettings(max_connections=0)
    assert SecuritySettings().tcp == TcpSettings()


def test_the_file_limit_is_raised_to_the_hard_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 512:
        pytest.skip(f"hard file limit {hard}: nothing to raise")
    low = 256
    code = (
        "import resource, sys; from ivr.transport.tcp import raise_file_limit;"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({low}, resource.getrlimit(resource.RLIMIT_NOFILE)[1]));"
        "before, after = raise_file_limit(16);"
        "print(before, after, resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    before, after, now = map(int, out.stdout.split())
    assert before == low and after == now > low


# -- the running server --------------------------------------------------------------------------


def hold_idle(port: int, sources: list[str], per_source: int) -> list[socket.socket]:
    held = []
    for src in sources:
        for _ in range(per_source):
            s = socket.socket()
            s.bind((src, 0))
            s.settimeout(2)
            try:
                s.connect(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            held.append(s)
    return held


def test_idle_connections_beyond_the_cap_leave_room_for_new_calls(
    server_factory: ServerFactory, sipp: str, tmp_path: Path
) -> None:
    tcp = {"max_connections": 50, "max_connections_per_source": 8, "header_timeout": 30, "idle_timeout": 60}
    server = server_factory({"security": {"tcp": tcp}})
    assert "file limit (RLIMIT_NOFILE)" in server.log_path.read_text()
    # 80 idle connections from ten loopback addresses, plus one over the per-source cap
    held = hold_idle(server.sip_port, [f"127.0.0.{i}" for i in range(2, 12)], 8)
    held += hold_idle(server.sip_port, ["127.0.0.11"], 1)  # its eight are the newest: none was evicted
    try:
        assert len(held) == 81
        wait_until(
            "the connection cap to be reached",
            lambda: (
                server.metric("frontdesk_sip_tcp_connections") == 50
                and server.metric("frontdesk_sip_tcp_connections_closed_total", reason="evicted") == 30
                and server.metric("frontdesk_sip_tcp_connections_refused_total", reason="source_cap") == 1
            ),
            timeout=10,
        )
        for transport in ("t1", "u1"):
            run = run_sipp(
                sipp, server.sip_target, tmp_path / f"sipp-{transport}", sn="uac", calls=2, rate=5, transport=transport
            )
            assert run.returncode == 0 and run.successful == 2, run.report()
        assert server.metric("frontdesk_sip_responses_sent_total", method="INVITE", status="200") == 4
        assert server.metric("frontdesk_sip_tcp_connections") <= 50
    finally:
        for s in held:
            s.close()
    wait_until("the held connections gone", lambda: server.metric("frontdesk_sip_tcp_connections") == 0, timeout=10)


def test_the_server_closes_a_slowloris_after_the_header_timeout(server_factory: ServerFactory) -> None:
    server = server_factory({"security": {"tcp": {"header_timeout": 1.0, "idle_timeout": 2.0}}})
    s = socket.create_connection(("127.0.0.1", server.sip_port), timeout=5)
    start = time.monotonic()
    closed_at = None
    try:
        for byte in options(server.sip_port)[:-4]:  # never the blank line that ends the headers
            try:
                s.send(bytes([byte]))
            except OSError:
                closed_at = time.monotonic()
                break
            s.settimeout(0.1)
            try:
                if s.recv(1024) == b"":
                    closed_at = time.monotonic()
                    break
            except TimeoutError:
                pass
            except OSError:
                closed_at = time.monotonic()
                break
            if time.monotonic() - start > 5:
                break
    finally:
        s.close()
    assert closed_at is not None, "the slowloris was never closed"
    assert 0.9 <= closed_at - start < 3.0, closed_at - start
    assert server.metric("frontdesk_sip_tcp_connections_closed_total", reason="header_timeout") == 1
    # an honest client over TCP is answered, then closed once idle
    s = socket.create_connection(("127.0.0.1", server.sip_port), timeout=5)
    try:
        s.sendall(options(server.sip_port, 2))
        assert s.recv(65536).startswith(b"SIP/2.0 200")
        start = time.monotonic()
        s.settimeout(5)
        assert s.recv(1024) == b""
        assert 1.8 <= time.monotonic() - start < 4.0
    finally:
        s.close()
    assert server.metric("frontdesk_sip_tcp_connections_closed_total", reason="idle_timeout") == 1
    assert server.metric("frontdesk_sip_tcp_connections") == 0


def test_the_server_stops_reading_a_peer_that_does_not_read(server_factory: ServerFactory) -> None:
    server = server_factory({"security": {"tcp": {"write_high_water": 1024}}})
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window the server fills
    s.connect(("127.0.0.1", server.sip_port))
    s.settimeout(0.5)
    try:
        # pipeline OPTIONS and never read the answers
        for n in range(3000):
            try:
                s.sendall(options(server.sip_port, n))
            except (TimeoutError, OSError):
                break  # the server no longer reads us: our send buffer is full
        wait_until(
            "the server to stop reading or to close",
            lambda: (
                server.metric("frontdesk_sip_tcp_read_pauses_total")
                + server.metric("frontdesk_sip_tcp_connections_closed_total", reason="write_backlog")
            ),
            timeout=10,
        )
        assert server.metric("frontdesk_sip_tcp_read_pauses_total") >= 1
        # what the server holds for us is bounded: it read and answered far fewer than we sent
        answered = server.metric("frontdesk_sip_responses_sent_total", method="OPTIONS")
        assert 0 < answered < 3000, answered
    finally:
        s.close()
    wait_until("the connection gone", lambda: server.metric("frontdesk_sip_tcp_connections") == 0, timeout=10)
