"""The RTP shell: sockets and the loop timer of the one shared 20 ms clock for every call's audio.

One non-blocking UDP socket per call (even ports from the configured range,
handed out by ivr/media/ports.py), watched for what it reads by
ivr/transport/rtpwatch.py (on Linux an epoll set of the shell's own). All
streams are paced from one tick armed with ``loop.call_at`` at the times
ivr/media/pacing.py computes (``t0 + k * 20 ms``: no drift, one timer for
every call; one task per stream falls over near 1,000 streams). What a
late tick owes, and when media timeouts are checked, is that module's
arithmetic; this one only sends and reads.

The tick's loop over the streams is the server's whole per-call media cost
(250,000 packets a second at 5,000 calls), so it walks a list of (stream,
``sendto``) pairs rebuilt only when a stream opens or closes, and an
on-time tick takes a flat path with no call per stream besides
``next_packet`` and ``sendto``. What is left is mostly the kernel's: one
``sendto`` per packet (each call has its own socket and source port, so
``sendmmsg`` cannot batch them) costs 2-3.5 us on the 2-core machine the
benchmark runs on, about as much as the Python around it.

A tick runs in parts of :data:`TICK_PART` streams, each its own turn of the
event loop, so SIP waits behind one part, not behind a whole tick of 5,000
streams; a part skips the streams closed since its tick began.

So when the batch sender is built (ivr/transport/rtpbatch.py, a small C
extension), the tick only queues each packet (``Sender.add``: copied, its
address parsed) and flushes each part's batch to the extension's own
threads (:data:`SEND_THREADS`), which make the ``sendto`` calls without the
interpreter lock while the loop goes on with SIP. The packets, their order and what a lost
frame means are the same as with ``sendto``; a closed stream's socket stays
open until the batches that may still name it are sent (``_closing``), so
the thread never sends from a closed or reused descriptor. Without the
build, or with ``batch=False``, the tick calls ``sendto`` itself.

One stream's failure stays in that stream: any exception while receiving,
sending or pacing a stream (or in the callbacks its events go to) closes
that stream only, is counted by stage (``frontdesk_media_stream_failures_total``)
and reaches ``on_failure`` so the call is ended cleanly; the shared tick is
re-armed whatever happens. Ports are drawn at random (ivr/media/ports.py),
and each stream latches strictly on its caller's source
(ivr/media/latch.py); what it drops is counted here by reason.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from ivr.media.g711 import get_codec
from ivr.media.latch import DROP_REASONS
from ivr.media.pacing import Pacer, Tick, silent_streams
from ivr.media.ports import RtpPortAllocator
from ivr.media.stream import MediaEvent, MediaStream
from ivr.transport import rtpbatch
from ivr.transport.rtpwatch import StreamWatch

log = logging.getLogger(__name__)

LATENESS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
FAILURE_STAGES = ("receive", "send", "events", "timeout")
# streams sent per part of a tick (about 0.5 ms of the loop's time): each part is its own turn of the event
# loop, so a SIP datagram that arrives during a tick of 5,000 streams waits behind one part, not the whole tick
TICK_PART = 250
# threads of the batch sender: on loopback a packet's sendto also pays for its delivery, about 4 us, so 5,000
# streams (250,000 packets a second) are more than one thread can send; a stream's socket keeps to one thread
SEND_THREADS = 2
_SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)  # Linux; elsewhere setblocking(False) after the bind
_NONBLOCKING_DGRAM = socket.SOCK_DGRAM | _SOCK_NONBLOCK

SendEntry = tuple[MediaStream, Callable[[bytes, tuple[str, int]], int], int]  # a stream, its socket's sendto, fd


@dataclass
class MediaStats:
    packets_in: int = 0
    packets_out: int = 0
    bad_packets: int = 0
    media_timeouts: int = 0
    ticks: int = 0
    frames_skipped: int = 0  # frames a very late tick could not make up
    port_exhausted: int = 0
    lateness_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENESS_BUCKETS) + 1))
    lateness_sum: float = 0.0
    # streams ended by an exception, by stage: receive, send, events, timeout
    stream_failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_STAGES, 0))
    # packets of closed streams not from their latched source, by reason (open streams count their own)
    rtp_dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))

    def observe_lateness(self, value: float) -> None:
        i = 0
        for bound in LATENESS_BUCKETS:
            if value <= bound:
                break
            i += 1
        self.lateness_counts[i] += 1
        self.lateness_sum += value


class MediaShell:
    """Opens and closes call streams; runs the shared pacing tick."""

    def __init__(
        self,
        host: str,
        port_min: int,
        port_max: int,
        on_events: Callable[[MediaStream, list[MediaEvent]], None],
        on_timeout: Callable[[MediaStream], None],
        media_timeout: float,
        rng: random.Random | None = None,
        *,
        trusts: Callable[[str], bool] | None = None,
        on_failure: Callable[[MediaStream], None] | None = None,
        batch: bool | None = None,
        own_poller: bool | None = None,
    ) -> None:
        """``batch``: send through the compiled batch sender (None: when it is built; True: it must be).

        ``own_poller``: watch the streams' sockets with an epoll set of the shell's own (None: where the
        platform has epoll; False: each socket is the loop's ``add_reader``; ivr/transport/rtpwatch.py).
        """
        self.loop = asyncio.get_running_loop()
        self.host = host
        self._family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.ports = RtpPortAllocator(port_min, port_max, rng)  # a seeded rng makes the ports a test's to know
        self.on_events = on_events
        self.on_timeout = on_timeout
        self.on_failure = on_failure or on_timeout  # a failed stream's call ends either way
        self.trusts = trusts or (lambda _host: False)
        self.media_timeout = media_timeout
        self.rng = rng or random.Random()
        self.stats = MediaStats()
        self._streams: dict[MediaStream, socket.socket] = {}
        # what the tick walks: each open stream with its socket's sendto and descriptor, copied again only
        # after an open or close (at most once a tick)
        self._senders: list[SendEntry] | None = None
        self._entries: dict[MediaStream, SendEntry] = {}  # made once per stream: a rebuild copies, creates nothing
        self._closed = 0  # streams closed so far: a tick's later parts skip those closed since it began
        self.batch_sender = self._batch_sender(batch)
        # sockets of closed streams, each with the number of the last batch that may name it: closed once sent
        self._closing: list[tuple[int, socket.socket]] = []
        self._tick_handle: asyncio.TimerHandle | None = None
        self.pacer = Pacer()
        self.watch = StreamWatch(self.loop, self._readable, own_poller)

    @staticmethod
    def _batch_sender(wanted: bool | None) -> rtpbatch.Sender | None:
        if wanted is False:
            return None
        sender_type, why = rtpbatch.load()
        if sender_type is None:
            if wanted:
                raise RuntimeError(f"the RTP batch sender is not available: {why}")
            return None
        return sender_type(threads=max(1, min(SEND_THREADS, os.cpu_count() or 1)))

    @property
    def send_path(self) -> str:
        """How this shell sends: through the batch sender's thread, or ``sendto`` per packet (and why)."""
        if self.batch_sender is not None:
            return rtpbatch.status()
        status = rtpbatch.status()
        return status if status.startswith("socket.sendto") else "socket.sendto per packet (batch=False)"

    @property
    def active(self) -> int:
        return len(self._streams)

    # -- streams ------------------------------------------------------------------
    def open(
        self,
        remote: tuple[str, int],
        codec_name: str,
        payload_type: int,
        dtmf_pt: int | None,
        *,
        signalling_host: str | None = None,
    ) -> MediaStream:
        """Bind a port and start sending (silence until something plays).

        ``signalling_host`` is where the call's SIP came from: unless it is
        trusted, the stream learns only from it or the SDP's host, and sends
        nothing to an SDP host other than it before the caller's RTP came.
        """
        sock, port = self._bind()
        rng = self.rng
        stream = MediaStream(
            port,
            remote,
            get_codec(codec_name),
            payload_type,
            dtmf_pt,
            ssrc=rng.getrandbits(32),
            seq=rng.getrandbits(16),
            timestamp=rng.getrandbits(32),
            now=self.loop.time(),
            signalling_host=signalling_host,
            trusted=signalling_host is not None and self.trusts(signalling_host),
        )
        self._streams[stream] = sock
        self._entries[stream] = (stream, sock.sendto, sock.fileno())
        self._senders = None
        self.watch.watch(stream, sock)
        if self._tick_handle is None:
            self._tick_handle = self.loop.call_at(self.pacer.start(self.loop.time()), self._tick)
        return stream

    def close(self, stream: MediaStream) -> None:
        sock = self._streams.pop(stream, None)
        if sock is None:
            return
        del self._entries[stream]
        self._senders = None
        self._closed += 1
        stream.unbridge()  # the other leg must not relay into a closed stream
        self.watch.unwatch(sock)
        if self.batch_sender is None:
            sock.close()
        else:
            self._closing.append((self.batch_sender.flushed, sock))  # a batch in flight may still send from it
        self.stats.packets_in += stream.packets_in
        self.stats.packets_out += stream.packets_out
        self.stats.bad_packets += stream.bad_packets
        for reason, n in stream.dropped.items():
            self.stats.rtp_dropped[reason] = self.stats.rtp_dropped.get(reason, 0) + n
        if not self._streams and self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        if not self._streams:
            self._close_pending(wait=True)

    def _close_pending(self, *, wait: bool = False) -> None:
        """Close the sockets of closed streams that no batch still to be sent names (all of them: ``wait``)."""
        batch = self.batch_sender
        if not self._closing or batch is None:
            return
        if wait:
            batch.wait()
        done = batch.done
        keep = []
        for last, sock in self._closing:
            if last <= done:
                sock.close()
            else:
                keep.append((last, sock))
        self._closing = keep

    def _stop_batching(self, exc: OSError) -> None:
        """The batch sender cannot run (no thread): send with ``sendto`` from now on."""
        log.warning("RTP batch sender failed (%s): sending with socket.sendto from now on", exc)
        assert self.batch_sender is not None
        self.batch_sender.discard()
        self.batch_sender = None  # with no thread nothing is in flight: every socket waiting may close
        closing, self._closing = self._closing, []
        for _, sock in closing:
            sock.close()

    def close_all(self) -> None:
        for stream in list(self._streams):
            self.close(stream)
        self._close_pending(wait=True)
        if self.batch_sender is not None:
            self.batch_sender.close()  # sends what was flushed and stops its thread (a new stream starts it again)
        self.watch.close()  # a new stream makes another epoll set

    def totals(self) -> tuple[int, int]:
        """Packets in and out, closed streams and open ones together."""
        pin = self.stats.packets_in + sum(s.packets_in for s in self._streams)
        pout = self.stats.packets_out + sum(s.packets_out for s in self._streams)
        return pin, pout

    def dropped(self) -> dict[str, int]:
        """Packets dropped by strict latching, by reason, closed streams and open ones together."""
        out = dict(self.stats.rtp_dropped)
        for stream in self._streams:
            for reason, n in stream.dropped.items():
                out[reason] = out.get(reason, 0) + n
        return out

    def _fail(self, stream: MediaStream, stage: str, exc: BaseException) -> None:
        """One stream raised: count it, close it, and let its owner end the call; nothing else stops."""
        if stream not in self._streams:
            return  # already failed (or closed) earlier in this turn
        self.stats.stream_failures[stage] = self.stats.stream_failures.get(stage, 0) + 1
        # the exception's type only: its text may carry what the remote side sent
        log.warning(
            "RTP stream on port %d failed at %s (%s): stream closed", stream.local_port, stage, type(exc).__name__
        )
        log.debug("RTP stream failure", exc_info=exc)
        self.close(stream)
        try:
            self.on_failure(stream)
        except Exception:  # the owner's own failure must not stop the shell either
            log.exception("ending the call of a failed RTP stream")

    def _bind(self) -> tuple[socket.socket, int]:
        for port in self.ports.candidates():  # a taken port is skipped; every port is tried once at the end
            # non-blocking from the start: one system call fewer per stream than setblocking(False)
            sock = socket.socket(self._family, _NONBLOCKING_DGRAM)
            try:
                sock.bind((self.host, port))
            except OSError:
                sock.close()
                continue
            if not _SOCK_NONBLOCK:
                sock.setblocking(False)
            return sock, port
        self.stats.port_exhausted += 1
        raise OSError("no free RTP port in the configured range")

    # -- receive --------------------------------------------------------------------
    def _readable(self, stream: MediaStream, sock: socket.socket) -> None:
        now = self.loop.time()
        try:
            for _ in range(32):
                try:
                    data, addr = sock.recvfrom(2048)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    continue
                stream.receive(data, (addr[0], addr[1]), now)
        except Exception as exc:  # noqa: BLE001 - one stream's failure ends that stream only
            self._fail(stream, "receive", exc)
            return
        if stream.events:
            try:
                self.on_events(stream, stream.drain_events())
            except Exception as exc:  # noqa: BLE001 - one stream's failure ends that stream only
                self._fail(stream, "events", exc)

    # -- the shared clock -------------------------------------------------------------
    def _tick(self) -> None:
        try:
            self._run_tick()
        finally:  # whatever one stream did, every other call's next frame is still due
            if self._streams:
                self._tick_handle = self.loop.call_at(self.pacer.due, self._tick)
            else:
                self._tick_handle = None

    def _run_tick(self) -> None:
        now = self.loop.time()
        tick = self.pacer.tick(now)
        stats = self.stats
        stats.ticks += 1
        stats.observe_lateness(tick.late)
        stats.frames_skipped += tick.skipped
        senders = self._senders
        if senders is None:
            senders = self._senders = list(self._entries.values())  # a new list: earlier ticks' parts keep theirs
        self._send_part(tick, senders, 0, self._closed)

    def _send_part(self, tick: Tick, senders: list[SendEntry], start: int, closed: int) -> None:
        """Streams ``start`` to ``start + TICK_PART`` of a tick's ``senders``; the next part is queued on the loop.

        ``closed`` is the count of closed streams when the tick began: a part after a close skips the streams
        closed since, whose sockets may already be shut (or, batched, waiting only for batches flushed before).
        """
        stop = start + TICK_PART
        part = senders[start:stop]
        if closed != self._closed:
            streams = self._streams
            part = [entry for entry in part if entry[0] in streams]
        if stop < len(senders):
            # SIP and the other streams' RTP wait behind this part, not behind the whole tick
            self.loop.call_soon(self._send_part, tick, senders, stop, closed)
        frames, skipped = tick.frames, tick.skipped
        fired: list[MediaStream] = []
        failed: list[tuple[MediaStream, Exception]] = []
        batch = self.batch_sender
        if frames == 1 and not skipped:
            # the usual tick, one frame per stream: the loops below are the whole per-call cost of the
            # server's media (at 5,000 calls they run 250,000 times a second), so they are kept flat
            if batch is None:
                for stream, sendto, _fd in part:
                    try:
                        pkt = stream.next_packet()  # made even when held: playback and its events move on
                        remote = stream.send_to
                        if remote is None:
                            stream.packets_out -= 1  # not sent: the caller's RTP has not come from the SDP's host
                        else:
                            sendto(pkt, remote)
                    except OSError:
                        pass  # send buffer full or peer unreachable: a lost frame
                    except Exception as exc:  # noqa: BLE001 - one stream's failure ends that stream only
                        failed.append((stream, exc))
                        continue
                    if stream.events:
                        fired.append(stream)
            else:
                add = batch.add
                for stream, sendto, fd in part:
                    try:
                        pkt = stream.next_packet()  # made even when held: playback and its events move on
                        remote = stream.send_to
                        if remote is None:
                            stream.packets_out -= 1  # not sent: the caller's RTP has not come from the SDP's host
                        elif not add(fd, pkt, remote):  # queued for the sender's thread, unless not a numeric host
                            sendto(pkt, remote)
                    except OSError:
                        pass  # send buffer full or peer unreachable: a lost frame
                    except Exception as exc:  # noqa: BLE001 - one stream's failure ends that stream only
                        failed.append((stream, exc))
                        continue
                    if stream.events:
                        fired.append(stream)
        else:
            for stream, sendto, fd in part:
                try:
                    self._send(stream, sendto, fd, frames, skipped)
                except Exception as exc:  # noqa: BLE001 - one stream's failure ends that stream only
                    failed.append((stream, exc))
                    continue
                if stream.events:
                    fired.append(stream)
        if batch is not None:
            try:
                batch.flush()  # to the sender's thread, at once: it sends this part while the loop goes on
            except OSError as exc:  # its thread could not start: this part's frames are lost
                self._stop_batching(exc)
            if self._closing:
                self._close_pending()
        for stream, error in failed:
            self._fail(stream, "send", error)
        for stream in fired:
            try:
                self.on_events(stream, stream.drain_events())
            except Exception as exc:  # noqa: BLE001 - one stream's failure ends that stream only
                self._fail(stream, "events", exc)
        if tick.check_timeouts and stop >= len(senders):
            now = self.loop.time()
            for stream in silent_streams(self._streams, now, self.media_timeout):
                self.stats.media_timeouts += 1
                try:
                    self.on_timeout(stream)
                except Exception as exc:  # noqa: BLE001 - one stream's failure ends that stream only
                    self._fail(stream, "timeout", exc)

    def _send(
        self,
        stream: MediaStream,
        sendto: Callable[[bytes, tuple[str, int]], int],
        fd: int,
        frames: int,
        skipped: int,
    ) -> None:
        """A late tick's frames for one stream: what it owes, after the RTP time it skipped."""
        if skipped:
            stream.skip(skipped)
        batch = self.batch_sender
        for _ in range(frames):
            pkt = stream.next_packet()  # made even when held: playback and its events move on
            remote = stream.send_to
            if remote is None:
                stream.packets_out -= 1  # not sent: the caller's RTP has not come from the SDP's host yet
                continue
            try:
                if batch is None or not batch.add(fd, pkt, remote):
                    sendto(pkt, remote)
            except OSError:
                pass  # send buffer full or peer unreachable: a lost frame
