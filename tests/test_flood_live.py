"""Flood control on the running server and in the UDP shell: a flooding source is refused, then blocked, and
in-dialog requests are served before new calls; legitimate callers from other addresses are answered meanwhile.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from support.ports import free_port, release
from support.server import start_server
from support.sipp import UdpSipClient, new_token, parse_reply, sdp_offer
from support.waiting import wait_until

from ivr.sip.admission import Admission, AdmissionLimits
from ivr.transport.sip import SipShell

FLOODER = "127.0.0.2"


def flood_invite(server_port: int, local_port: int, host: str = FLOODER, to_tag: str = "") -> bytes:
    tag = f";tag={to_tag}" if to_tag else ""
    return (
        f"INVITE sip:service@127.0.0.1:{server_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{local_port};branch=z9hG4bK{new_token()};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:bot@{host}:{local_port}>;tag={new_token()}\r\n"
        f"To: <sip:service@127.0.0.1:{server_port}>{tag}\r\n"
        f"Call-ID: {new_token()}@{host}\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <sip:bot@{host}:{local_port}>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def bound_socket(host: str) -> tuple[socket.socket, int]:
    port = free_port()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    return sock, port


def statuses(sock: socket.socket, seconds: float) -> list[int]:
    out: list[int] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(65535)
        except TimeoutError:
            break
        out.append(parse_reply(data).status)
    return out


def place_call(server_port: int) -> int:
    """One call from 127.0.0.1 to the answer, ACK and BYE; the INVITE's final status."""
    with UdpSipClient(server_port) as ua:
        call_id, from_tag, branch = new_token() + "@127.0.0.1", new_token(), "z9hG4bK" + new_token()
        ua.send(ua.build("INVITE", call_id=call_id, from_tag=from_tag, branch=branch, body=sdp_offer("0", ())))
        reply = ua.final_reply(timeout=8.0)
        if reply.status == 200:
            to = reply.get("to") or ""
            ua.send(ua.build("ACK", cseq="1 ACK", call_id=call_id, from_tag=from_tag, to=to))
            ua.send(ua.build("BYE", cseq="2 BYE", call_id=call_id, from_tag=from_tag, to=to))
            assert ua.final_reply(timeout=4.0).status == 200
        return reply.status


@pytest.mark.sipp
def test_a_flooding_source_is_refused_then_blocked_while_another_callers_call_is_answered(tmp_path: Path) -> None:
    flood = {"requests_per_second": 60, "new_calls_per_second": 10, "block_seconds": 3.0, "retry_after": 9}
    server = start_server(tmp_path, {"security": {"flood": flood}})
    sock, port = bound_socket(FLOODER)
    try:
        for _ in range(300):  # far more than 60 in well under a second
            sock.sendto(flood_invite(server.sip_port, port), ("127.0.0.1", server.sip_port))
        got = statuses(sock, 1.5)
        # 10 calls admitted (100 Trying, maybe 180/200), the next 50 of the 60 refused with a cheap 503, then nothing
        assert got.count(503) == 50, got
        assert got.count(100) == 10, got
        assert server.metric("frontdesk_sip_flood_rejected_total", reason="new_calls", action="reply") == 50
        assert server.metric("frontdesk_sip_flood_rejected_total", reason="rate", action="drop") == 1
        assert server.metric("frontdesk_sip_flood_rejected_total", reason="blocked", action="drop") == 239
        assert server.metric("frontdesk_sip_flood_blocked_sources") == 1
        assert server.metric("frontdesk_sip_flood_blocks_total") == 1
        # the flooder is blocked; a caller from 127.0.0.1 is answered meanwhile
        assert place_call(server.sip_port) == 200
        sock.sendto(flood_invite(server.sip_port, port), ("127.0.0.1", server.sip_port))
        # nothing answers it (the 200s are the admitted calls' own retransmissions: the flooder never ACKs)
        assert [s for s in statuses(sock, 0.5) if s != 200] == []
        # after the block period the source is served again, and the gauge is back to 0
        wait_until("the block to end", lambda: server.metric("frontdesk_sip_flood_blocked_sources") == 0, timeout=6)
        sock.sendto(flood_invite(server.sip_port, port), ("127.0.0.1", server.sip_port))
        assert 100 in statuses(sock, 1.0)
    finally:
        sock.close()
        release(port)
        server.stop()


class _RecordingUa:
    """Just enough of a UserAgent for the shell: remembers the order it was handed datagrams in."""

    def __init__(self) -> None:
        self.order: list[str] = []

    def receive(self, data: bytes, peer: Any, now: float) -> None:
        to_tag = re.search(rb"\nTo:[^\r\n]*;tag=", data) is not None
        self.order.append(data.split(b" ", 1)[0].decode() + ("+tag" if to_tag else ""))

    def events(self) -> list[Any]:
        return []

    def datagrams_to_send(self) -> list[Any]:
        return []

    def get_timer(self) -> float | None:
        return None


def test_the_shell_serves_in_dialog_requests_before_new_calls_and_refuses_those_past_the_budget() -> None:
    async def scenario() -> tuple[list[str], list[int]]:
        ua = _RecordingUa()
        limits = AdmissionLimits(max_new_calls_per_second=3, new_calls_per_second=100)
        shell = SipShell(ua, lambda events, now: None, admission=Admission(limits, lambda h: False, "t"))  # type: ignore[arg-type]
        server_port = free_port()
        client, client_port = bound_socket("127.0.0.1")
        try:
            await shell.start("127.0.0.1", server_port, ["udp"])
            # one burst, in the kernel's buffer before the shell reads: new calls first, in-dialog last
            shell.loop.remove_reader(shell.udp.fileno())  # type: ignore[union-attr]
            for _ in range(8):
                client.sendto(flood_invite(server_port, client_port, "127.0.0.1"), ("127.0.0.1", server_port))
            client.sendto(flood_invite(server_port, client_port, "127.0.0.1", to_tag="x"), ("127.0.0.1", server_port))
            client.sendto(b"BYE sip:a@127.0.0.1 SIP/2.0\r\n\r\n", ("127.0.0.1", server_port))
            await asyncio.sleep(0.05)
            shell._udp_readable()
            got = await asyncio.to_thread(statuses, client, 0.5)
            return ua.order, got
        finally:
            await shell.stop()
            client.close()
            release(server_port)
            release(client_port)

    order, got = asyncio.run(scenario())
    assert order == ["INVITE+tag", "BYE", "INVITE", "INVITE", "INVITE"]
    assert got == [503] * 5


@pytest.mark.sipp
def test_new_calls_over_tcp_past_the_cap_get_a_503_on_their_connection(tmp_path: Path) -> None:
    flood = {"requests_per_second": 1000, "new_calls_per_second": 3, "max_new_calls_per_second": 0}
    server = start_server(tmp_path, {"security": {"flood": flood}})
    try:
        with socket.create_connection(("127.0.0.1", server.sip_port), timeout=5) as conn:
            port = conn.getsockname()[1]
            conn.sendall(b"".join(flood_invite(server.sip_port, port, "127.0.0.1") for _ in range(6)))
            got = b""
            deadline = time.monotonic() + 3
            while got.count(b"SIP/2.0 503 ") < 3 and time.monotonic() < deadline:
                conn.settimeout(max(deadline - time.monotonic(), 0.01))
                try:
                    got += conn.recv(65535)
                except TimeoutError:
                    break
        assert got.count(b"SIP/2.0 503 ") == 3, got
        assert got.count(b"SIP/2.0 100 ") == 3, got
        assert server.metric("frontdesk_sip_flood_rejected_total", reason="new_calls", action="reply") == 3
    finally:
        server.stop()


@pytest.mark.sipp
def test_a_trusted_source_over_every_limit_is_neither_blocked_nor_refused(tmp_path: Path) -> None:
    flood = {"requests_per_second": 30, "new_calls_per_second": 5, "block_seconds": 60.0}
    trunk = "127.0.0.3"
    server = start_server(tmp_path, {"security": {"trusted_networks": [f"{trunk}/32"], "flood": flood}})
    sock, port = bound_socket(trunk)
    try:
        for _ in range(100):
            sock.sendto(flood_invite(server.sip_port, port, trunk), ("127.0.0.1", server.sip_port))
        got = statuses(sock, 2.0)
        assert got.count(100) == 100 and 503 not in got, got
        assert server.metric("frontdesk_sip_flood_blocked_sources") == 0
        assert server.metric("frontdesk_sip_flood_rejected_total") == 0
    finally:
        sock.close()
        release(port)
        server.stop()
