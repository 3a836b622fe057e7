"""One call's audio stream, pure: what to send each 20 ms, what came in.

The engine (ivr/transport/rtp.py) owns sockets and the clock; it calls
:meth:`MediaStream.next_packet` once per 20 ms tick and
:meth:`MediaStream.receive` for each datagram, passing ``now``. The stream
answers with bytes to send and :data:`MediaEvent` values: a prompt list
finished, a key was pressed, a recording stopped.

Symmetric RTP (RFC 4961) with strict latching (ivr/media/latch.py): we send
to the address the SDP named until the first packet arrives from the caller,
then only to where the caller's packets come from, which is what works
through NAT; from then on packets from any other source or SSRC are dropped
and counted. An SDP naming a host other than the untrusted signalling
source gets nothing until the caller's RTP has arrived.

Bridging (:meth:`MediaStream.bridge`) relays the voice of one leg to another
through the server: each leg keeps its own SSRC, sequence, timestamps and
pacing on the shared tick, and plays what the other leg sent (transcoded
PCMU<->PCMA when the legs differ) from a small jitter buffer whenever no
prompt is playing. Telephone-events are not relayed: keys stay with us.
"""

from __future__ import annotations

import array
import math
import struct
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from ivr.media.dtmf import DtmfError, DtmfReceiver
from ivr.media.g711 import FRAME_SAMPLES, SAMPLE_RATE, Codec
from ivr.media.latch import SourceLatch
from ivr.media.rtp import RtpError, RtpPacket, is_rtcp

_RTP_HEADER = struct.Struct("!BBHII")

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class PlaybackFinished:
    play_id: int


@dataclass(frozen=True, slots=True)
class KeyPressed:
    key: str


@dataclass(frozen=True, slots=True)
class RecordingStopped:
    pcm: bytes  # 16-bit little-endian mono 8 kHz
    reason: str  # "max_length" | "silence" | "key" | "stopped"
    key: str = ""  # the key that stopped it (reason "key")


MediaEvent = PlaybackFinished | KeyPressed | RecordingStopped

_TRANSCODE: dict[tuple[str, str], bytes] = {}


def _transcode_table(src: Codec, dst: Codec) -> bytes:
    """A bytes.translate table from one G.711 law to the other.

    G.711 codes each sample on its own, so ``dst.encode(src.decode(x))`` is a
    byte-for-byte mapping: built once per pair over all 256 codes.
    """
    key = (src.name, dst.name)
    table = _TRANSCODE.get(key)
    if table is None:
        table = _TRANSCODE[key] = dst.encode(src.decode(bytes(range(256))))
    return table


def frame_rms(pcm: bytes) -> float:
    samples = array.array("h")
    samples.frombytes(pcm[: len(pcm) & ~1])
    if sys.byteorder != "little":
        samples.byteswap()
    if not samples:
        return 0.0
    return math.sqrt(sum(s * s for s in samples) / len(samples))


class _Recording:
    __slots__ = ("chunks", "limit", "max_samples", "samples", "silence_frames", "silence_limit", "stop_key", "voiced")

    def __init__(self, max_seconds: float, silence_seconds: float, stop_key: str) -> None:
        self.chunks: list[bytes] = []
        self.max_samples = int(max_seconds * SAMPLE_RATE)
        self.samples = 0
        self.silence_limit = max(1, int(silence_seconds * SAMPLE_RATE / FRAME_SAMPLES))
        self.silence_frames = 0
        self.stop_key = stop_key
        self.voiced = False
        self.limit = False


class MediaStream:
    """Sender and receiver state of one RTP session (one call leg)."""

    SILENCE_RMS = 300.0  # about -40 dBFS: below this a frame counts as silence
    RELAY_CAP = 5  # frames (100 ms) the bridge's jitter buffer holds before it drops the oldest

    def __init__(
        self,
        local_port: int,
        remote: Address,
        codec: Codec,
        payload_type: int,
        dtmf_payload_type: int | None,
        ssrc: int,
        seq: int,
        timestamp: int,
        now: float,
        *,
        signalling_host: str | None = None,
        trusted: bool = False,
    ) -> None:
        self.local_port = local_port
        self.remote = remote
        self.latch = SourceLatch(signalling_host, trusted)
        self.latch.expect((remote[0],))
        self._held = not self.latch.may_send_to(remote[0])  # nothing goes out until the caller's RTP came
        # where this tick's packet goes; None while sending waits for the caller's RTP (kept up to date
        # where remote or _held change: the tick reads it for every stream, 50 times a second)
        self.send_to: Address | None = None if self._held else remote
        self.dropped: dict[str, int] = {}  # packets not from the latched source, by reason (ivr/media/latch.py)
        self.codec = codec
        self.payload_type = payload_type
        self.dtmf_payload_type = dtmf_payload_type
        self.ssrc = ssrc
        self.seq = seq & 0xFFFF
        self.timestamp = timestamp & 0xFFFFFFFF
        self.silence = bytes([codec.silence]) * FRAME_SAMPLES
        self._queue: list[Sequence[bytes]] = []
        self._frames: Sequence[bytes] = ()  # the prompt playing now (_queue[0]), empty when none
        self._frame_index = 0
        self.play_id = 0
        self._marker = 0x80  # the RTP marker bit: first packet of a talkspurt
        self.last_rx = now
        self.packets_in = 0
        self.packets_out = 0
        self.bad_packets = 0
        self._dtmf = DtmfReceiver()
        self._recording: _Recording | None = None
        self.events: list[MediaEvent] = []
        self.owner: object = None  # whatever the engine's user attaches (the call)
        # bridge: the other leg, and the frames it sent us (in our codec) waiting for a tick
        self.bridged: MediaStream | None = None
        self.relay_cap = self.RELAY_CAP
        self._relay: deque[bytes] = deque()
        self._relay_rest = b""  # bytes short of a 20 ms frame (30 ms phones)
        self._relay_talking = False  # the last packet sent carried relayed audio
        self.relayed_in = 0  # voice packets received on this leg and handed to the other
        self.relay_dropped = 0  # frames this leg's relay buffer dropped (over relay_cap)

    @property
    def latched(self) -> bool:
        """Whether the caller's RTP source has been learned (and is the only one taken from now on)."""
        return self.latch.latched

    def use_answer(self, address: Address, codec: Codec, payload_type: int, dtmf_payload_type: int | None) -> None:
        """The far end's SDP named where and how to send: follow it (unless its RTP already arrived)."""
        if self.latched:
            return
        self.remote = address
        self.latch.expect((address[0],))
        self._held = not self.latch.may_send_to(address[0])
        self.send_to = None if self._held else address
        if payload_type != self.payload_type:
            self.codec = codec
            self.payload_type = payload_type
            self.silence = bytes([codec.silence]) * len(self.silence)
        self.dtmf_payload_type = dtmf_payload_type

    # -- playback -------------------------------------------------------------------
    def play(self, prompts: Sequence[Sequence[bytes]], play_id: int) -> None:
        """Replace what is playing with these prompts (each a sequence of frames)."""
        self._queue = [p for p in prompts if len(p)]
        self._frames = self._queue[0] if self._queue else ()
        self._frame_index = 0
        self.play_id = play_id
        self._marker = 0x80
        if not self._queue:
            self.events.append(PlaybackFinished(play_id))

    def stop_playback(self) -> None:
        self._queue = []
        self._frames = ()
        self._frame_index = 0

    @property
    def playing(self) -> bool:
        return bool(self._queue)

    @property
    def prompts_left(self) -> int:
        """Prompts of the current play not yet finished (the one playing included)."""
        return len(self._queue)

    def next_packet(self) -> bytes:
        """The next 20 ms packet: prompt audio, else the bridged leg's audio, else silence.

        This runs 50 times a second for every call, so the usual cases (a
        prompt frame, silence) take the fewest steps: the prompt playing is
        kept apart from the queue and the header is packed in one call.
        """
        frames = self._frames
        if frames:
            self._relay_talking = False
            i = self._frame_index
            payload = frames[i]
            i += 1
            if i < len(frames):
                self._frame_index = i
            else:
                self._next_prompt()
        elif self._relay:
            payload = self._relay.popleft()
            if not self._relay_talking:
                self._relay_talking = True
                self._marker = 0x80  # relayed talk starts after silence or a prompt
        else:
            payload = self.silence
            self._relay_talking = False
        seq = self.seq
        ts = self.timestamp
        pkt = _RTP_HEADER.pack(0x80, self.payload_type | self._marker, seq, ts, self.ssrc) + payload
        self._marker = 0
        self.seq = (seq + 1) & 0xFFFF
        self.timestamp = (ts + FRAME_SAMPLES) & 0xFFFFFFFF
        self.packets_out += 1
        return pkt

    def _next_prompt(self) -> None:
        """The prompt playing sent its last frame: on to the next one, or the play is finished."""
        queue = self._queue
        queue.pop(0)
        self._frame_index = 0
        if queue:
            self._frames = queue[0]
        else:
            self._frames = ()
            self.events.append(PlaybackFinished(self.play_id))

    def skip(self, frames: int) -> None:
        """Frames the engine could not send in time: RTP time moves on, a new talkspurt starts."""
        self.timestamp = (self.timestamp + frames * FRAME_SAMPLES) & 0xFFFFFFFF
        self._marker = 0x80

    # -- receiving -------------------------------------------------------------------
    def receive(self, data: bytes, addr: Address, now: float) -> None:
        if is_rtcp(data):
            return
        try:
            pkt = RtpPacket.parse(data)
        except RtpError:
            self.bad_packets += 1
            return
        drop = self.latch.admit(addr, pkt.ssrc, now, pkt.payload_type == self.dtmf_payload_type)
        if drop is not None:
            self.dropped[drop] = self.dropped.get(drop, 0) + 1
            return
        self.packets_in += 1
        self.last_rx = now
        if addr != self.remote or self._held:
            self.remote = addr  # symmetric RTP: answer where the caller sends from, and only there
            self._held = False
            self.send_to = addr
        pt = pkt.payload_type
        if pt == self.dtmf_payload_type:
            try:
                keys = self._dtmf.feed(pkt.timestamp, pkt.payload)
            except DtmfError:
                self.bad_packets += 1
                return
            for key in keys:
                self.key(key)
        elif pt == self.payload_type:
            if self._recording is not None:
                self._record(self.codec.decode(pkt.payload))
            other = self.bridged
            if other is not None:
                self._relay_to(other, pkt.payload)

    def key(self, key: str) -> None:
        """A key pressed (from RTP or SIP INFO)."""
        rec = self._recording
        if rec is not None and key == rec.stop_key:
            self._finish_recording("key", key)
            return
        self.events.append(KeyPressed(key))

    # -- bridging ---------------------------------------------------------------------
    def bridge(self, other: MediaStream) -> None:
        """Relay voice both ways between this leg and ``other``.

        Either leg's earlier bridge is undone first; the relay buffers start empty.
        """
        if other is self:
            raise ValueError("a stream cannot be bridged to itself")
        if self.bridged is other:
            return
        self.unbridge()
        other.unbridge()
        self.bridged = other
        other.bridged = self

    def unbridge(self) -> None:
        """Undo the bridge on both legs and drop what was waiting to be relayed."""
        other = self.bridged
        self.bridged = None
        self._clear_relay()
        if other is not None and other.bridged is self:
            other.bridged = None
            other._clear_relay()

    def _clear_relay(self) -> None:
        self._relay.clear()
        self._relay_rest = b""

    def _relay_to(self, other: MediaStream, payload: bytes) -> None:
        """Hand a voice payload received on this leg to the other leg's relay buffer."""
        self.relayed_in += 1
        if other.codec.name != self.codec.name:
            payload = payload.translate(_transcode_table(self.codec, other.codec))
        size = FRAME_SAMPLES  # bytes in a 20 ms frame: G.711 is a byte a sample
        if other._relay_rest:
            payload = other._relay_rest + payload
        buf = other._relay
        end = len(payload) - len(payload) % size
        for i in range(0, end, size):
            buf.append(payload[i : i + size])
        other._relay_rest = payload[end:]
        over = len(buf) - other.relay_cap
        if over > 0:
            for _ in range(over):
                buf.popleft()
            other.relay_dropped += over

    # -- recording -----------------------------------------------------------------------
    def start_recording(self, max_seconds: float, silence_seconds: float, stop_key: str = "#") -> None:
        self._recording = _Recording(max_seconds, silence_seconds, stop_key)

    def stop_recording(self) -> None:
        if self._recording is not None:
            self._finish_recording("stopped")

    @property
    def recording(self) -> bool:
        return self._recording is not None

    def _record(self, pcm: bytes) -> None:
        rec = self._recording
        assert rec is not None
        room = (rec.max_samples - rec.samples) * 2
        if len(pcm) > room:
            pcm = pcm[:room]
        rec.chunks.append(pcm)
        rec.samples += len(pcm) // 2
        if frame_rms(pcm) < self.SILENCE_RMS:
            rec.silence_frames += 1
        else:
            rec.silence_frames = 0
            rec.voiced = True
        if rec.samples >= rec.max_samples:
            self._finish_recording("max_length")
        elif rec.silence_frames >= rec.silence_limit:
            self._finish_recording("silence")

    def _finish_recording(self, reason: str, key: str = "") -> None:
        rec = self._recording
        assert rec is not None
        self._recording = None
        pcm = b"".join(rec.chunks)
        if reason == "silence":
            # keep a short tail, drop the long silence that ended it
            drop = max(0, rec.silence_frames - 10) * FRAME_SAMPLES * 2
            pcm = pcm[: len(pcm) - drop] if drop else pcm
        self.events.append(RecordingStopped(pcm, reason, key))

    def drain_events(self) -> list[MediaEvent]:
        ev, self.events = self.events, []
        return ev
