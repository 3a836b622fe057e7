"""Media at the edge: hostile SDP and RTP cost the other calls nothing; strict latching keeps a call's audio its own.

Three layers, as the defences sit: the SDP checks at the offer
(ivr/sip/sdp.py, a refused offer is a 488), strict latching on pure streams
(ivr/media/latch.py, ivr/media/stream.py, no sockets), and the RTP shell on
loopback (ivr/transport/rtp.py: one stream's failure ends that stream, the
shared tick goes on). Then the running server: a SIPp caller keeps hearing
RTP at the normal rate while hostile INVITEs get 488, and an SDP naming a
third host gets no RTP until RTP comes from there (at once when the
signalling source is trusted).
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.callers import caller_media
from support.media import Recorder, UdpPhone
from support.ports import free_port, port_range, release
from support.rtpsend import batch_sender_type, send_path  # noqa: F401  (fixtures)
from support.server import Server
from support.sip import Caller, Harness, responses, sdp_offer
from support.sipp import UdpSipClient, new_token, run_sipp
from support.waiting import wait_until, wait_until_async

from ivr.calls.ivrcall import MediaEventSink
from ivr.calls.legs import OutboundLeg
from ivr.calls.router import RouterSettings
from ivr.media import g711
from ivr.media.dtmf import TelephoneEvent
from ivr.media.latch import SSRC_GAP
from ivr.media.rtp import RtpPacket
from ivr.media.stream import KeyPressed, MediaEvent, MediaStream, PlaybackFinished
from ivr.sip.dialogs import OutCall
from ivr.sip.sdp import SdpError, parse_sdp
from ivr.transport.rtp import MediaShell

CALLER_HOST = "203.0.113.5"  # the caller's SIP comes from here, and so does its RTP
CALLER = (CALLER_HOST, 4000)
STRANGER = ("198.51.100.9", 5000)  # a third party that guessed the call's port
VOICE = b"\x11" * 160


def rtp(ssrc: int = 0x1234, seq: int = 1, payload: bytes = VOICE, pt: int = 0) -> bytes:
    return RtpPacket(pt, seq, seq * 160, ssrc, payload).serialize()


def key_packets(key_event: int, ssrc: int = 0x1234) -> list[bytes]:
    """An RFC 4733 key: two packets of the event, the second its end."""
    return [
        RtpPacket(
            101, 900 + n, 77_000, ssrc, TelephoneEvent(key_event, n == 1, 10, 400 * (n + 1)).serialize()
        ).serialize()
        for n in range(2)
    ]


def leg(remote: tuple[str, int] = CALLER, signalling: str | None = CALLER_HOST, trusted: bool = False) -> MediaStream:
    return MediaStream(
        10000, remote, g711.PCMU, 0, 101, ssrc=0x5555, seq=1, timestamp=1, now=0.0,
        signalling_host=signalling, trusted=trusted,
    )  # fmt: skip


# -- the SDP checks at the offer ---------------------------------------------------------------


def offer(c_line: str = "c=IN IP4 127.0.0.1", m_line: str = "m=audio 4000 RTP/AVP 0") -> bytes:
    return f"v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\n{c_line}\r\nt=0 0\r\n{m_line}\r\n".encode()


@pytest.mark.parametrize(
    "body",
    [
        offer(m_line="m=audio 99999 RTP/AVP 0"),
        offer(m_line="m=audio 65536 RTP/AVP 0"),
        offer(m_line="m=audio 0 RTP/AVP 0"),
        offer(m_line="m=audio " + "9" * 5000 + " RTP/AVP 0"),
        offer(c_line="c=IN IP4 127.0.0.1\x00"),
        offer(c_line="c=IN IP4 127.0.0.1\x00.evil.example"),
        offer(c_line="c=IN IP4 media.evil.example"),
        offer(c_line="c=IN IP4 localhost"),
        offer(c_line="c=IN IP4 127.000.000.001"),
        offer(c_line="c=IN IP4 " + "1" * 5000),
    ],
    ids=["port-99999", "port-65536", "port-0", "port-5000-digits", "nul", "nul-name", "name", "localhost",
         "leading-zeros", "5000-digits"],
)  # fmt: skip
def test_an_offer_with_a_bad_media_port_or_a_non_ip_address_is_refused_with_488(
    body: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_dns(*args: object, **kw: object) -> None:
        raise AssertionError("a DNS lookup while checking an SDP")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(socket, "gethostbyname", no_dns)
    with pytest.raises(SdpError) as err:
        parse_sdp(body)
    assert err.value.status == 488


def test_ip_literals_and_ports_at_the_ends_of_the_range_are_accepted() -> None:
    assert (parse_sdp(offer(m_line="m=audio 1 RTP/AVP 0")).port, parse_sdp(offer()).address) == (1, "127.0.0.1")
    assert parse_sdp(offer(m_line="m=audio 65535 RTP/AVP 0")).port == 65535
    assert parse_sdp(offer(c_line="c=IN IP6 ::1")).address == "::1"


def test_the_user_agent_answers_a_hostile_invite_and_re_invite_with_488() -> None:
    h = Harness(RouterSettings(hold_time=100.0))
    bad = sdp_offer().replace(b"c=IN IP4 127.0.0.1", b"c=IN IP4 127.0.0.1\x00")
    got = responses(h.deliver(Caller(call_id="bad-1@x", branch="z9hG4bK-bad-1").invite(bad)))
    assert [r.status for r in got] == [488]
    caller = Caller()
    for r in responses(h.deliver(caller.invite())):
        caller.learn(r)
    assert h.deliver(caller.ack_2xx()) == []
    reinvite = caller.request("INVITE", to_tag=caller.to_tag, cseq=2, body=sdp_offer(port=99999))
    assert [r.status for r in responses(h.deliver(reinvite))] == [488]
    assert list(h.ua.calls) == [caller.call_id]  # the call goes on with its old media


# -- strict latching, pure ------------------------------------------------------------------------


def test_the_first_packet_latches_and_a_stranger_is_dropped_not_heard() -> None:
    a = leg()
    a.receive(rtp(seq=1), CALLER, 0.0)
    assert a.latched and a.send_to == CALLER
    for n in range(10):
        a.receive(rtp(ssrc=0x1234, seq=2 + n), STRANGER, 0.01 * n)  # even with the caller's own SSRC
    for pkt in key_packets(5):
        a.receive(pkt, STRANGER, 0.2)
    a.receive(rtp(seq=3), (CALLER_HOST, 4001), 0.3)  # the caller's host, another port: not the latched source
    assert a.drain_events() == []  # no key from the stranger
    assert a.dropped == {"source": 13} and a.packets_in == 1
    assert a.send_to == CALLER  # our audio still goes to the caller only


def test_while_learning_only_the_signalling_host_or_the_sdps_host_can_latch() -> None:
    a = leg()
    for pkt in key_packets(3):
        a.receive(pkt, STRANGER, 0.0)  # first, but from nowhere the call named
    assert not a.latched and a.dropped == {"learning": 2} and a.drain_events() == []
    for pkt in key_packets(4):
        a.receive(pkt, CALLER, 0.1)
    assert a.latched and a.drain_events() == [KeyPressed("4")]


def test_a_trusted_signalling_source_may_have_its_media_latch_from_anywhere() -> None:
    a = leg(trusted=True)
    a.receive(rtp(), STRANGER, 0.0)  # a trunk's media gateway is often another host
    assert a.latched and a.send_to == STRANGER


def test_a_new_ssrc_from_the_latched_source_is_taken_only_after_a_pause() -> None:
    a = leg()
    a.receive(rtp(ssrc=1, seq=1), CALLER, 0.0)
    a.receive(rtp(ssrc=2, seq=2), CALLER, 0.02)  # while the first stream talks: an injection
    assert a.dropped == {"ssrc": 1}
    a.receive(rtp(ssrc=1, seq=3), CALLER, 0.04)
    assert a.packets_in == 2
    a.receive(rtp(ssrc=2, seq=4), CALLER, 0.04 + SSRC_GAP + 0.01)  # the phone restarted its stream
    a.receive(rtp(ssrc=1, seq=5), CALLER, 0.04 + SSRC_GAP + 0.02)  # and the old one is now the stranger
    assert a.packets_in == 3 and a.dropped == {"ssrc": 2}


def test_keys_may_have_an_ssrc_of_their_own_latched_apart_from_the_voice() -> None:
    a = leg()
    a.receive(rtp(ssrc=1, seq=1), CALLER, 0.0)
    for pkt in key_packets(6, ssrc=0x7007):  # a phone whose RFC 4733 events carry another SSRC
        a.receive(pkt, CALLER, 0.02)
    assert a.drain_events() == [KeyPressed("6")]
    assert (a.latch.ssrc(), a.latch.ssrc(event=True)) == (1, 0x7007)
    for pkt in key_packets(9, ssrc=0x6666):  # a second key SSRC while the first is still in use: injected
        a.receive(pkt, CALLER, 0.04)
    assert a.drain_events() == [] and a.dropped == {"ssrc": 2}


def test_an_sdp_naming_another_host_gets_nothing_until_rtp_comes_from_it() -> None:
    victim = ("192.0.2.77", 7078)
    a = leg(remote=victim)
    assert a.send_to is None  # the caller's SIP came from CALLER_HOST: do not believe its SDP yet
    a.next_packet()
    a.receive(rtp(), victim, 0.1)  # the SDP's host really sends: it wants the media
    assert a.send_to == victim
    b = leg(remote=victim)
    b.receive(rtp(), CALLER, 0.1)  # or the caller's RTP came from its signalling host (NAT)
    assert b.send_to == CALLER
    assert leg(remote=victim, trusted=True).send_to == victim  # a trunk's SDP is believed at once
    assert leg(remote=(CALLER_HOST, 7078)).send_to == (CALLER_HOST, 7078)  # the SDP names the caller itself
    assert leg(remote=victim, signalling=None).send_to == victim  # a stream opened without a signalling source


def test_an_answer_naming_another_host_is_held_too() -> None:
    a = leg(remote=(CALLER_HOST, 9))  # an agent leg before the answer: the discard port of its SIP host
    assert a.send_to == (CALLER_HOST, 9)
    a.use_answer(("192.0.2.77", 7078), g711.PCMU, 0, 101)
    assert a.send_to is None
    a.receive(rtp(), ("192.0.2.77", 7078), 0.1)
    assert a.send_to == ("192.0.2.77", 7078)


def test_both_legs_of_a_bridge_latch_and_a_stranger_is_not_relayed() -> None:
    phone_b_host = "203.0.113.80"
    a, b = leg(), leg(remote=(phone_b_host, 6000), signalling=phone_b_host)
    a.bridge(b)
    a.receive(rtp(seq=1, payload=b"\x22" * 160), CALLER, 0.0)
    b.receive(rtp(seq=1, ssrc=0x99, payload=b"\x33" * 160), (phone_b_host, 6000), 0.0)
    assert a.latched and b.latched
    for n in range(5):
        a.receive(rtp(seq=2 + n, payload=b"\x44" * 160), STRANGER, 0.01)  # into the caller's leg
        b.receive(rtp(seq=2 + n, ssrc=0x99, payload=b"\x44" * 160), (phone_b_host, 6001), 0.01)
    heard_by_b = [RtpPacket.parse(b.next_packet()).payload for _ in range(3)]
    heard_by_a = [RtpPacket.parse(a.next_packet()).payload for _ in range(3)]
    assert b"\x44" * 160 not in heard_by_b + heard_by_a
    assert heard_by_b[0] == b"\x22" * 160 and heard_by_a[0] == b"\x33" * 160
    assert (a.relayed_in, b.relayed_in) == (1, 1)
    assert a.dropped == {"source": 5} and b.dropped == {"source": 5}


# -- the RTP shell on loopback ----------------------------------------------------------------------


class FailureRecorder(Recorder):
    """The shell's callbacks; ``on_events`` raises for the streams in :attr:`explode`."""

    def __init__(self) -> None:
        super().__init__()
        self.failures: list[MediaStream] = []
        self.explode: set[MediaStream] = set()

    def on_events(self, stream: MediaStream, events: list[MediaEvent]) -> None:
        if stream in self.explode:
            raise RuntimeError("the IVR call's own bug")
        super().on_events(stream, events)

    def on_failure(self, stream: MediaStream) -> None:
        self.failures.append(stream)


@contextmanager
def udp_socket(host: str) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def drain(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            sock.recvfrom(2048)
        except BlockingIOError:
            return n
        n += 1


def new_shell(rec: FailureRecorder, trusts: Callable[[str], bool] | None = None) -> MediaShell:
    ports = port_range(20)
    return MediaShell(
        "127.0.0.1",
        ports.start,
        ports[-1],
        rec.on_events,
        rec.on_timeout,
        0.0,
        trusts=trusts,
        on_failure=rec.on_failure,
    )


class BrokenCodec(g711.Codec):
    """PCMU that raises on decode: a stand-in for a bug in a stream's receive path (compiled or not)."""

    def __init__(self) -> None:
        base = g711.PCMU
        super().__init__(base.name, base.payload_type, base._to_lin, base._from_lin)

    def decode(self, data: bytes) -> bytes:
        raise ValueError("a bug in the receive path")


async def packets_in(phone: UdpPhone, seconds: float) -> int:
    """How many packets the phone hears in the next ``seconds`` (the loop runs meanwhile)."""
    phone.drain()
    start = len(phone.received)
    await asyncio.sleep(seconds)
    phone.drain()
    return len(phone.received) - start


@pytest.mark.usefixtures("send_path")  # the sendto path and the batch sender
async def test_one_failing_stream_ends_alone_and_every_other_call_keeps_its_20_ms() -> None:
    rec = FailureRecorder()
    shell = new_shell(rec)
    phone = UdpPhone()
    try:
        good = shell.open(phone.addr, "PCMU", 0, 101)
        assert await packets_in(phone, 1.0) >= 40  # 50 a second; a loaded machine may lose a few ticks
        bad_port = shell.open(("127.0.0.1", 99999), "PCMU", 0, 101)  # what an unchecked SDP would hand us
        bad_nul = shell.open(("127.0.0.1\x00", 4000), "PCMU", 0, 101)
        bad_events = shell.open(("127.0.0.1", 9), "PCMU", 0, 101)
        rec.explode.add(bad_events)
        bad_events.play([[bad_events.silence]], play_id=1)  # one frame: its PlaybackFinished goes to on_events
        bad_rx = shell.open(("127.0.0.1", 9), "PCMU", 0, 101)

        bad_rx.codec = BrokenCodec()  # a bug in the receive path: decoding what a recording keeps raises
        bad_rx.start_recording(max_seconds=10.0, silence_seconds=10.0)
        phone.sock.sendto(rtp(), ("127.0.0.1", bad_rx.local_port))
        assert await packets_in(phone, 1.0) >= 40  # during: still 50 a second
        assert set(rec.failures) == {bad_port, bad_nul, bad_events, bad_rx}
        assert shell.stats.stream_failures == {"send": 2, "events": 1, "receive": 1, "timeout": 0}
        assert shell.active == 1
        good.play([[b"\x01" * 160] * 5], play_id=2)
        await wait_until_async("the good call's prompt", lambda: _async_true(PlaybackFinished(2) in rec.events))
        assert await packets_in(phone, 1.0) >= 40  # after: the tick was never left disarmed
    finally:
        shell.close_all()
        phone.close()


async def _async_true(value: bool) -> bool:
    return value


def test_a_failed_stream_ends_the_leg_we_placed_that_owns_it() -> None:
    dropped: list[tuple[object, float]] = []
    sink = MediaEventSink(lambda: 5.0, lambda: None, drop=lambda out, now: dropped.append((out, now)))
    stream = leg()
    out = OutCall(call_id="out1", peer=("udp", "127.0.0.1", 5062), target="sip:8001@127.0.0.1:5062", local_tag="t")
    OutboundLeg(stream, out)
    sink.on_failure(stream)
    assert dropped == [(out, 5.0)]
    sink.on_failure(leg())  # a stream nobody owns: nothing to end
    assert len(dropped) == 1


@pytest.mark.usefixtures("send_path")  # the sendto path and the batch sender
async def test_a_stranger_sending_rtp_and_keys_to_a_calls_port_is_not_heard_and_hears_nothing() -> None:
    rec = FailureRecorder()
    shell = new_shell(rec)
    caller, stranger = UdpPhone(), UdpPhone()  # same host, another port: only latching tells them apart
    try:
        call = shell.open(caller.addr, "PCMU", 0, 101, signalling_host="127.0.0.1")
        caller.sock.sendto(rtp(seq=1), ("127.0.0.1", call.local_port))
        await wait_until_async("the caller's packet", lambda: _async_true(call.latched))
        for pkt in key_packets(7) + [rtp(seq=n) for n in range(2, 20)]:
            stranger.sock.sendto(pkt, ("127.0.0.1", call.local_port))
        await wait_until_async("the stranger's packets", lambda: _async_true(shell.dropped()["source"] == 20))
        assert [e for e in rec.events if isinstance(e, KeyPressed)] == []
        assert await packets_in(stranger, 0.3) == 0
        assert await packets_in(caller, 0.3) > 5 and call.remote == caller.addr
        shell.close(call)
        assert shell.dropped() == {"learning": 0, "source": 20, "ssrc": 0}  # kept once the stream is closed
    finally:
        shell.close_all()
        caller.close()
        stranger.close()


@pytest.mark.usefixtures("send_path")  # the sendto path and the batch sender
@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted", "trusted"])
async def test_the_shell_sends_nothing_to_a_third_host_the_sdp_names_until_its_rtp_arrives(trusted: bool) -> None:
    rec = FailureRecorder()
    shell = new_shell(rec, trusts=lambda host: trusted and host == "127.0.0.1")
    with udp_socket("127.0.0.2") as victim, udp_socket("127.0.0.3") as stranger:
        try:
            call = shell.open(victim.getsockname(), "PCMU", 0, 101, signalling_host="127.0.0.1")
            await asyncio.sleep(0.5)
            if trusted:
                assert drain(victim) >= 15  # a trunk's SDP is believed at once
                return
            assert drain(victim) == 0 and call.packets_out == 0
            stranger.sendto(rtp(), ("127.0.0.1", call.local_port))  # a third host cannot claim the stream
            await asyncio.sleep(0.1)
            assert not call.latched and shell.dropped()["learning"] == 1 and drain(stranger) == 0
            victim.sendto(rtp(), ("127.0.0.1", call.local_port))  # the SDP's host sends: it wants the media
            await asyncio.sleep(0.5)
            assert drain(victim) >= 15 and call.latched
        finally:
            shell.close_all()


# -- the running server -------------------------------------------------------------------------------


def arrivals_between(times: list[float], start: float, end: float) -> int:
    return sum(1 for t in times if start <= t < end)


def hostile_invites(server: Server) -> list[int]:
    """One INVITE of each hostile SDP, from a fresh source; the final status each got."""
    bad = [
        offer(m_line="m=audio 99999 RTP/AVP 0"),
        offer(c_line="c=IN IP4 127.0.0.1\x00"),
        offer(c_line="c=IN IP4 media.evil.example"),
        offer(m_line="m=audio " + "7" * 5000 + " RTP/AVP 0"),
    ]
    statuses = []
    with UdpSipClient(server.sip_port) as client:
        for body in bad:
            client.send(client.build("INVITE", body=body))
            statuses.append(client.final_reply(timeout=3.0).status)
    return statuses


@pytest.mark.sipp
def test_a_call_keeps_hearing_rtp_at_the_normal_rate_while_hostile_invites_get_488(
    server_factory: Callable[..., Server], sipp: str, tmp_path: Path
) -> None:
    server = server_factory({"sip": {"hold_time": 20.0}})
    workdir = tmp_path / "listener"
    workdir.mkdir()
    with caller_media(1, tone_hz=1000) as [media], ThreadPoolExecutor(1) as pool:
        (workdir / "callers.csv").write_text(f"SEQUENTIAL\n4441001;{media.port};\n")
        run = pool.submit(
            run_sipp, sipp, server.sip_target, workdir, scenario="uac_media_listen.xml", calls=1, timeout=20,
            extra=["-inf", str(workdir / "callers.csv")],
        )  # fmt: skip
        wait_until("the call's RTP", lambda: len(media.received) >= 60, timeout=10)
        t_hostile = time.monotonic()
        statuses = hostile_invites(server)
        t_done = time.monotonic()
        time.sleep(1.5)
        times = [t for t, _ in list(media.received)]
        result = run.result(timeout=30)
    before = arrivals_between(times, t_hostile - 1.0, t_hostile)
    after = arrivals_between(times, t_done + 0.5, t_done + 1.5)
    gaps = [b - a for a, b in itertools.pairwise(times) if t_hostile - 1.0 <= a <= t_done + 1.5]
    assert before >= 40 and after >= 40, (before, after)  # 50 a second, before and after
    assert max(gaps) < 0.25, max(gaps)  # and during: never silent for more than a few ticks
    assert statuses == [488, 488, 488, 488]
    assert result.returncode == 0 and result.successful == 1, result.report()
    assert server.metric("frontdesk_media_stream_failures_total") == 0
    assert "Traceback" not in server.log_path.read_text()


def invite_naming(client: UdpSipClient, host: str, port: int) -> tuple[str, str, str, int]:
    """A call whose SDP names ``host:port``; returns Call-ID, From tag, the 200's To, the server's RTP port."""
    call_id, tag = new_token() + "@127.0.0.1", new_token()
    body = offer(c_line=f"c=IN IP4 {host}", m_line=f"m=audio {port} RTP/AVP 0 101")
    body += b"a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    client.send(client.build("INVITE", call_id=call_id, from_tag=tag, body=body))
    ok = client.final_reply(timeout=5.0)
    while ok.get("call-id") != call_id:  # a late answer for the call before (its BYE's 200)
        ok = client.final_reply(timeout=5.0)
    assert ok.status == 200, ok.raw
    to = ok.get("to")
    assert to is not None
    client.send(client.build("ACK", cseq="1 ACK", call_id=call_id, from_tag=tag, to=to))
    return call_id, tag, to, parse_sdp(ok.body).port


@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted", "trusted"])
def test_the_server_sends_no_rtp_to_a_third_address_in_the_sdp_until_rtp_comes_from_it(
    server_factory: Callable[..., Server], trusted: bool
) -> None:
    security = {"trusted_networks": ["127.0.0.1/32"]} if trusted else {}
    server = server_factory({"sip": {"hold_time": 10.0}, "security": security})
    victim = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    victim.bind(("127.0.0.2", 0))
    victim.settimeout(0.05)
    heard: list[float] = []
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            try:
                victim.recvfrom(2048)
                heard.append(time.monotonic())
            except (TimeoutError, OSError):
                pass

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    try:
        with UdpSipClient(server.sip_port) as client:
            call_id, tag, to, rtp_port = invite_naming(client, "127.0.0.2", victim.getsockname()[1])
            time.sleep(1.5)
            if trusted:
                assert len(heard) >= 40  # a trunk's SDP is believed at once
            else:
                assert heard == []  # one INVITE naming a victim makes nothing go to the victim
                assert server.metric("frontdesk_rtp_packets_total", direction="out") == 0
                t = time.monotonic()
                victim.sendto(rtp(), ("127.0.0.1", rtp_port))  # the SDP's host sends: now it gets media
                wait_until("RTP to the host that sent", lambda: arrivals_between(heard, t, t + 9) >= 20, timeout=3)
            client.send(client.build("BYE", cseq="2 BYE", call_id=call_id, from_tag=tag, to=to))
    finally:
        stop.set()
        listener.join(2)
        victim.close()


def test_the_servers_rtp_ports_are_not_sequential(server_factory: Callable[..., Server]) -> None:
    server = server_factory({"sip": {"hold_time": 10.0}})
    ports = []
    media = free_port()  # the callers' RTP port: named in the SDPs, nothing listens
    try:
        with UdpSipClient(server.sip_port) as client:
            for _ in range(6):
                call_id, tag, to, rtp_port = invite_naming(client, "127.0.0.1", media)
                ports.append(rtp_port)
                client.send(client.build("BYE", cseq="2 BYE", call_id=call_id, from_tag=tag, to=to))
    finally:
        release(media)
    steps = {b - a for a, b in itertools.pairwise(ports)}
    assert steps != {2}, ports  # in sequence, whoever called last would know where the next caller's audio goes
    assert len(set(ports)) >= 5, ports


def test_a_stranger_sending_keys_to_a_live_calls_port_is_not_heard(server_factory: Callable[..., Server]) -> None:
    server = server_factory({"sip": {"hold_time": 10.0}})
    with udp_socket("127.0.0.1") as phone, udp_socket("127.0.0.1") as stranger, UdpSipClient(server.sip_port) as sip:
        call_id, tag, to, rtp_port = invite_naming(sip, "127.0.0.1", phone.getsockname()[1])
        server_rtp = ("127.0.0.1", rtp_port)
        for n in range(5):
            phone.sendto(rtp(seq=n), server_rtp)  # the caller talks first: the stream latches on it
        time.sleep(0.3)
        for _ in range(3):
            for pkt in key_packets(2, ssrc=0x1234):  # the caller's own SSRC, from another port
                stranger.sendto(pkt, server_rtp)
            time.sleep(0.1)
        wait_until(
            "the stranger's packets dropped",
            lambda: server.metric("frontdesk_rtp_packets_dropped_total", reason="source") == 6,
            timeout=3,
        )
        assert server.metric("frontdesk_dtmf_received_total", source="rtp") == 0
        assert drain(stranger) == 0 and drain(phone) > 10  # the stranger hears nothing, the caller does
        for pkt in key_packets(2, ssrc=0x1234):
            phone.sendto(pkt, server_rtp)  # the same key from the caller is heard
        wait_until("the caller's key", lambda: server.metric("frontdesk_dtmf_received_total", source="rtp") == 1, 3)
        sip.send(sip.build("BYE", cseq="2 BYE", call_id=call_id, from_tag=tag, to=to))
