"""One call's audio stream, pure: what to send each 20 ms, what came in.

The engine (ivr/media/engine.py) owns sockets and the clock; it calls
:meth:`MediaStream.next_packet` once per 20 ms tick and
:meth:`MediaStream.receive` for each datagram, passing ``now``. The stream
answers with bytes to send and :data:`MediaEvent` values: a prompt list
finished, a key was pressed, a recording stopped.

Symmetric RTP (RFC 4961): we send to the address the SDP named until the
first packet arrives from the caller, then to wherever the caller's packets
come from, which is what works through NAT.
"""

from __future__ import annotations

import array
import math
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from .dtmf import DtmfError, DtmfReceiver
from .g711 import FRAME_SAMPLES, SAMPLE_RATE, Codec
from .rtp import RtpError, RtpPacket, is_rtcp

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
    ) -> None:
        self.local_port = local_port
        self.remote = remote
        self.latched = False
        self.codec = codec
        self.payload_type = payload_type
        self.dtmf_payload_type = dtmf_payload_type
        self.ssrc = ssrc
        self.seq = seq & 0xFFFF
        self.timestamp = timestamp & 0xFFFFFFFF
        self.silence = bytes([codec.silence]) * FRAME_SAMPLES
        self._queue: list[Sequence[bytes]] = []
        self._frame_index = 0
        self.play_id = 0
        self._marker = True  # first packet of a talkspurt
        self.last_rx = now
        self.packets_in = 0
        self.packets_out = 0
        self.bad_packets = 0
        self._dtmf = DtmfReceiver()
        self._recording: _Recording | None = None
        self.events: list[MediaEvent] = []
        self.owner: object = None  # whatever the engine's user attaches (the call)

    # -- playback -------------------------------------------------------------------
    def play(self, prompts: Sequence[Sequence[bytes]], play_id: int) -> None:
        """Replace what is playing with these prompts (each a sequence of frames)."""
        self._queue = [p for p in prompts if len(p)]
        self._frame_index = 0
        self.play_id = play_id
        self._marker = True
        if not self._queue:
            self.events.append(PlaybackFinished(play_id))

    def stop_playback(self) -> None:
        self._queue = []
        self._frame_index = 0

    @property
    def playing(self) -> bool:
        return bool(self._queue)

    def next_packet(self) -> bytes:
        """The next 20 ms packet: prompt audio, or silence when nothing plays."""
        queue = self._queue
        if queue:
            frames = queue[0]
            payload = frames[self._frame_index]
            self._frame_index += 1
            if self._frame_index >= len(frames):
                queue.pop(0)
                self._frame_index = 0
                if not queue:
                    self.events.append(PlaybackFinished(self.play_id))
        else:
            payload = self.silence
        b1 = self.payload_type | (0x80 if self._marker else 0)
        self._marker = False
        # the RTP header packed directly: this runs 50 times a second per call
        pkt = _RTP_HEADER.pack(0x80, b1, self.seq, self.timestamp, self.ssrc) + payload
        self.seq = (self.seq + 1) & 0xFFFF
        self.timestamp = (self.timestamp + FRAME_SAMPLES) & 0xFFFFFFFF
        self.packets_out += 1
        return pkt

    def skip(self, frames: int) -> None:
        """Frames the engine could not send in time: RTP time moves on, a new talkspurt starts."""
        self.timestamp = (self.timestamp + frames * FRAME_SAMPLES) & 0xFFFFFFFF
        self._marker = True

    # -- receiving -------------------------------------------------------------------
    def receive(self, data: bytes, addr: Address, now: float) -> None:
        if is_rtcp(data):
            return
        try:
            pkt = RtpPacket.parse(data)
        except RtpError:
            self.bad_packets += 1
            return
        self.packets_in += 1
        self.last_rx = now
        if not self.latched or addr != self.remote:
            self.remote = addr  # symmetric RTP: answer where the caller sends from
            self.latched = True
        pt = pkt.payload_type
        if pt == self.dtmf_payload_type:
            try:
                keys = self._dtmf.feed(pkt.timestamp, pkt.payload)
            except DtmfError:
                self.bad_packets += 1
                return
            for key in keys:
                self.key(key)
        elif pt == self.payload_type and self._recording is not None:
            self._record(self.codec.decode(pkt.payload))

    def key(self, key: str) -> None:
        """A key pressed (from RTP or SIP INFO)."""
        rec = self._recording
        if rec is not None and key == rec.stop_key:
            self._finish_recording("key", key)
            return
        self.events.append(KeyPressed(key))

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
