"""The RTP shell's compiled batch sender (ivr/transport/rtpsend.c) against its ``socket.sendto`` path.

Both paths run on real loopback sockets. The shells are seeded alike and
paced without skipping frames, so the n-th packet a phone hears is the same
whatever the scheduling: the batch path must send exactly the bytes the
``sendto`` path sends, from the stream's own port, and nothing to a stream
that waits for its caller's RTP. The build under test is compiled from the
source now (tests/support/rtpsend.py).
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import socket
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from support.media import Recorder
from support.ports import port_range
from support.rtpsend import batch_sender_type, send_path  # noqa: F401  (fixtures)
from support.waiting import wait_until_async

from ivr.calls.ivrcall import IvrMetrics
from ivr.media.pacing import Pacer
from ivr.media.stream import MediaStream
from ivr.transport import rtpbatch
from ivr.transport.rtp import MediaShell
from ivr.web.metrics import IvrCollector

PACKETS = 40  # per phone: a 12-frame prompt, then silence


class RawPhone:
    """A loopback UDP socket keeping each datagram's bytes and source."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.addr: tuple[str, int] = self.sock.getsockname()
        self.got: list[tuple[bytes, int]] = []

    def drain(self) -> int:
        while True:
            try:
                data, addr = self.sock.recvfrom(2048)
            except BlockingIOError:
                return len(self.got)
            self.got.append((data, addr[1]))

    def close(self) -> None:
        self.sock.close()


async def _heard(phones: list[RawPhone], n: int) -> bool:
    return all(p.drain() >= n for p in phones)


async def _true(value: bool) -> bool:
    return value


async def capture(batch: bool, ports: range) -> tuple[list[list[bytes]], list[bool], int, str]:
    """What each phone heard from a shell on one path: packets, whether each came from its stream's port."""
    rec = Recorder()
    shell = MediaShell(
        "127.0.0.1", ports.start, ports[-1], rec.on_events, rec.on_timeout, 0.0, random.Random(7), batch=batch
    )
    shell.pacer = Pacer(max_catch_up=10**6)  # a late tick owes every frame: no RTP time is skipped
    phones = [RawPhone() for _ in range(12)]
    waiting = RawPhone()
    try:
        streams: list[MediaStream] = []
        for i, phone in enumerate(phones):
            # one phone by name: the batch path hands a non-numeric host back to socket.sendto
            remote = ("localhost", phone.addr[1]) if i == 3 else phone.addr
            s = shell.open(remote, "PCMA" if i % 2 else "PCMU", 8 if i % 2 else 0, 101)
            s.play([[bytes([i, f]) * 80 for f in range(12)]], play_id=i)
            streams.append(s)
        # SDP names a host other than the untrusted signalling source: nothing goes out until its RTP comes
        shell.open(waiting.addr, "PCMU", 0, 101, signalling_host="127.0.0.9")
        await wait_until_async("every phone's packets", lambda: _heard(phones, PACKETS), timeout=10.0)
        heard = [[data for data, _ in p.got[:PACKETS]] for p in phones]
        from_own_port = [all(port == s.local_port for _, port in p.got) for p, s in zip(phones, streams, strict=True)]
        return heard, from_own_port, waiting.drain(), shell.send_path
    finally:
        shell.close_all()
        for p in [*phones, waiting]:
            p.close()


async def test_the_batch_path_sends_the_bytes_the_sendto_path_sends(
    batch_sender_type: rtpbatch.SenderType,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rtpbatch, "_loaded", (batch_sender_type, "batched in C (test build)"))
    ports = port_range(40)
    plain, plain_ports, plain_waiting, plain_path = await capture(False, ports)
    batched, batched_ports, batched_waiting, batched_path = await capture(True, ports)
    assert plain_path.startswith("socket.sendto") and batched_path.startswith("batched in C")
    assert len(batched) == len(plain) == 12
    for i, (a, b) in enumerate(zip(plain, batched, strict=True)):
        assert len(a) == len(b) == PACKETS, i
        assert a == b, f"phone {i}: the two paths sent different packets"
    assert plain[0][0][1] & 0x80 and not plain[0][1][1] & 0x80  # the marker opens the talkspurt only
    assert plain_ports == batched_ports == [True] * 12
    assert plain_waiting == batched_waiting == 0


def test_add_checks_its_input_and_hands_back_names_it_cannot_send(
    batch_sender_type: rtpbatch.SenderType,  # noqa: F811
) -> None:
    sender = batch_sender_type()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fd = sock.fileno()
        assert sender.add(fd, b"x", ("localhost", 4000)) is False  # socket.sendto resolves names itself
        assert sender.add(fd, b"x", ("fe80::1%eth0", 4000)) is False
        with pytest.raises(OverflowError):
            sender.add(fd, b"x", ("127.0.0.1", 99999))
        with pytest.raises(ValueError, match="null"):
            sender.add(fd, b"x", ("127.0.0.1\x00", 4000))
        with pytest.raises(TypeError):
            sender.add(fd, b"x", "127.0.0.1:4000")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            sender.add(fd, "x", ("127.0.0.1", 4000))  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            sender.add(-1, b"x", ("127.0.0.1", 4000))
        assert sender.queued == 0
        assert sender.flush() == 0


def test_a_packet_the_kernel_refuses_is_a_lost_frame_and_the_others_go_out(
    batch_sender_type: rtpbatch.SenderType,  # noqa: F811
) -> None:
    sender = batch_sender_type()
    phone = RawPhone()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            assert sender.add(sock.fileno(), b"first", phone.addr)
            assert sender.add(sock.fileno(), b"lost", ("127.0.0.1", 0))  # port 0: EINVAL from sendto
            assert sender.add(sock.fileno(), b"last", phone.addr)
            assert sender.flush() == 3
            sender.wait()
            assert (sender.flushed, sender.done) == (1, 1)
            assert sender.counts()[:2] == (2, 1)
            assert sender.counts()[3] == errno.EINVAL
            phone.drain()
            assert [data for data, _ in phone.got] == [b"first", b"last"]
            sender.close()
            assert sender.add(sock.fileno(), b"again", phone.addr)
            assert sender.flush() == 1  # a closed sender starts its thread again
            sender.wait()
            assert sender.counts()[0] == 3
    finally:
        sender.close()
        phone.close()


def test_batches_flushed_back_to_back_go_out_whole_and_in_order(
    batch_sender_type: rtpbatch.SenderType,  # noqa: F811
) -> None:
    sender = batch_sender_type()
    phone = RawPhone()
    phone.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for b in range(20):  # faster than the thread sends: each flush joins the batch waiting for it
                for i in range(200):
                    assert sender.add(sock.fileno(), b"%d.%d" % (b, i), phone.addr)
                assert sender.flush() == 200
            assert sender.counts()[2] == 0  # no flush waited for the thread
            sender.wait()
            assert (sender.flushed, sender.done) == (20, 20)
            assert sender.counts()[:2] == (4000, 0)
            phone.drain()
            assert [data for data, _ in phone.got] == [b"%d.%d" % (b, i) for b in range(20) for i in range(200)]
    finally:
        sender.close()
        phone.close()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def test_a_closed_streams_socket_is_closed_once_no_batch_can_name_it(
    send_path: str,  # noqa: F811
) -> None:
    rec = Recorder()
    ports = port_range(20)
    shell = MediaShell("127.0.0.1", ports.start, ports[-1], rec.on_events, rec.on_timeout, 0.0)
    assert shell.send_path.startswith("batched" if send_path == "batched" else "socket.sendto")
    phone = RawPhone()
    try:
        keep = shell.open(phone.addr, "PCMU", 0, 101)
        gone = shell.open(phone.addr, "PCMU", 0, 101)
        await wait_until_async("packets", lambda: _true(phone.drain() >= 10))
        shell.close(gone)
        await wait_until_async("the closed stream's port free", lambda: _true(_bindable(gone.local_port)))
        assert shell.active == 1
        phone.drain()
        heard = len(phone.got)
        await wait_until_async("the other stream's packets", lambda: _true(phone.drain() >= heard + 10))
        assert {port for _, port in phone.got[heard:]} == {keep.local_port}
        shell.close(keep)  # the last one: its socket closes at once, there is no next tick
        assert _bindable(keep.local_port)
    finally:
        shell.close_all()
        phone.close()


def test_the_build_is_used_only_while_it_matches_the_source(
    batch_sender_type: rtpbatch.SenderType,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FRONTDESK_PURE", raising=False)
    monkeypatch.delenv("FRONTDESK_RTP_SENDTO", raising=False)
    assert rtpbatch.check(tmp_path)[1].endswith(f"(no compiled batch sender; {rtpbatch.REBUILD} makes one)")
    built = tmp_path_factory.getbasetemp() / "rtp-build0"
    build = tmp_path / "build"
    shutil.copytree(built, build)
    binary, why = rtpbatch.check(build)
    assert binary is not None and why.startswith("batched in C")
    manifest = json.loads((build / rtpbatch.MANIFEST).read_text())
    (build / rtpbatch.MANIFEST).write_text(json.dumps({**manifest, "sha256": "0" * 64}))
    assert rtpbatch.check(build) == (
        None,
        f"socket.sendto per packet (rtpsend.c changed since the build; rebuild with {rtpbatch.REBUILD})",
    )
    (build / rtpbatch.MANIFEST).write_text(json.dumps({**manifest, "tag": "another-python"}))
    assert "for another Python" in rtpbatch.check(build)[1]
    (build / rtpbatch.MANIFEST).write_text("{")
    assert "unreadable" in rtpbatch.check(build)[1]
    (build / rtpbatch.MANIFEST).write_text(json.dumps(manifest))
    (build / manifest["binary"]).unlink()
    assert "is missing" in rtpbatch.check(build)[1]
    monkeypatch.setenv("FRONTDESK_RTP_SENDTO", "1")
    assert rtpbatch.check(built) == (None, "socket.sendto per packet (FRONTDESK_RTP_SENDTO is set)")
    assert rtpbatch.check(built, obey_pure=False)[0] is not None
    monkeypatch.setenv("FRONTDESK_PURE", "1")
    assert rtpbatch.check(built) == (None, "socket.sendto per packet (FRONTDESK_PURE is set)")


def test_a_shell_that_must_batch_says_why_it_cannot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rtpbatch, "_loaded", (None, "socket.sendto per packet (test)"))

    async def build() -> None:
        MediaShell("127.0.0.1", 20000, 20010, lambda s, e: None, lambda s: None, 0.0, batch=True)

    import asyncio

    with pytest.raises(RuntimeError, match=r"not available: socket.sendto per packet \(test\)"):
        asyncio.run(build())


def test_two_sending_threads_keep_each_streams_order_and_send_every_packet(
    batch_sender_type: rtpbatch.SenderType,  # noqa: F811
) -> None:
    with pytest.raises(ValueError, match="threads must be 1 to 8"):
        batch_sender_type(threads=0)
    sender = batch_sender_type(threads=2)
    phones = [RawPhone() for _ in range(6)]
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(6)]
    try:
        for phone in phones:
            phone.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        assert {s.fileno() % 2 for s in socks} == {0, 1}  # both threads have streams to send
        for tick in range(50):  # batches flushed faster than sent, appended to the one waiting
            for i, (sock, phone) in enumerate(zip(socks, phones, strict=True)):
                for frame in range(1 + i % 3):  # streams of different sizes: the threads' shares differ
                    assert sender.add(sock.fileno(), b"%d.%d.%d" % (i, tick, frame), phone.addr)
            sender.flush()
        sender.wait()
        assert sender.threads == 2
        assert (sender.flushed, sender.done) == (50, 50)
        assert sender.counts()[:2] == (50 * 12, 0)  # 1, 2 and 3 frames a tick for each of two rounds of streams
        for i, (sock, phone) in enumerate(zip(socks, phones, strict=True)):
            phone.drain()
            expected = [b"%d.%d.%d" % (i, t, f) for t in range(50) for f in range(1 + i % 3)]
            assert [data for data, _ in phone.got] == expected  # every packet, in the order added
            assert {port for _, port in phone.got} == {sock.getsockname()[1]}
    finally:
        sender.close()
        for sock in socks:
            sock.close()
        for phone in phones:
            phone.close()


async def test_the_metrics_say_how_the_shell_sends_and_from_how_many_threads(send_path: str) -> None:  # noqa: F811
    ports = port_range(4)
    shell = MediaShell("127.0.0.1", ports.start, ports[-1], lambda s, e: None, lambda s: None, 0.0)
    registry = CollectorRegistry()
    registry.register(IvrCollector(IvrMetrics(), shell))
    try:
        batched = registry.get_sample_value("frontdesk_rtp_send_batched")
        threads = registry.get_sample_value("frontdesk_rtp_send_threads")
        if send_path == "batched":
            assert (batched, threads) == (1.0, float(min(2, os.cpu_count() or 1)))
            assert registry.get_sample_value("frontdesk_rtp_batch_waits_total") == 0.0
        else:
            assert (batched, threads) == (0.0, None)  # no sender, no threads
    finally:
        shell.close_all()
