"""Carries out what the IVR flow interpreter decides, for one answered call.

The interpreter (ivr/flow/interpreter.py) is pure; an :class:`IvrCall`
owns the call's media stream and turns the interpreter's actions into
effects: prompts on the stream, timers on the SIP core's heap (named
``ivr:<name>``), recordings written to WAV, text messages handed to the
outbox, transfers and hang-ups through the user agent. Media and SIP events
come back as interpreter events. What the caller did (path, keys, notices,
hotkey, self-service, screening, complaint, message) is kept for the call
record (R4). A caller who reaches an agent has their callback for that queue
closed (R10). The caller's number is believed only from a trusted peer
(``ivr/calls/trust.py``): an untrusted caller is served under the number
they claim, but no text goes to it and no callback of it is closed or
cancelled.

The RTP shell's events reach the call through :class:`MediaEventSink`, built
before the shell: they go to the stream's owner, and what the SIP core queued
meanwhile is flushed after.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from callback.base import utcnow
from ivr.calls.dialer import CallbackDesk
from ivr.calls.legs import OutboundLeg
from ivr.calls.queues import LiveQueues
from ivr.calls.trust import CallerIdentity, TrustCounters
from ivr.flow import actions as fa
from ivr.flow.interpreter import start, step
from ivr.flow.program import Program
from ivr.media.prompts import PromptStore, write_wav
from ivr.media.stream import KeyPressed, MediaEvent, MediaStream, PlaybackFinished, RecordingStopped
from ivr.sip.ua import InboundCall, OutCall, Outcome, UserAgent
from ivr.transport.rtp import MediaShell

log = logging.getLogger(__name__)

TIMER_PREFIX = "ivr:"
HOLD_PLAY_ID = -1  # hold music and queue announcements: never a play id of the flow's


@dataclass
class IvrMetrics:
    """Plain counters, exported by ivr.web.metrics at scrape time."""

    node_visits: dict[tuple[str, str], int] = field(default_factory=dict)  # (flow, node)
    notices_played: dict[str, int] = field(default_factory=dict)
    hotkey_uses: int = 0
    self_service: int = 0
    screened: int = 0
    messages_recorded: int = 0
    dtmf_received: dict[str, int] = field(default_factory=dict)  # by source: rtp | info
    transfers: int = 0
    texts_requested: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class IvrServices:
    """What every IVR call shares: built once in create_app, after the live queues and the callback dialer."""

    program: Program
    prompts: PromptStore
    media: MediaShell
    groups_of: Callable[[str], frozenset[str]]
    notices_for: Callable[[frozenset[str]], tuple[str, ...]]
    send_text: Callable[[str, str, str], None]  # (to, body, reason); durable once the outbox commits
    recordings_dir: Path
    surge: Callable[[], bool] = lambda: False
    metrics: IvrMetrics = field(default_factory=IvrMetrics)
    queues: LiveQueues | None = None  # live queues; without them a queue node only plays its prompt
    callbacks: CallbackDesk | None = None  # live callback lists; without them a callback node only plays its prompt
    # whose number a call is (ivr/calls/trust.py identify); without it every caller's From is believed
    identify: Callable[[InboundCall], CallerIdentity] | None = None
    trust: TrustCounters = field(default_factory=TrustCounters)


class IvrCall:
    def __init__(self, services: IvrServices, ua: UserAgent, call: InboundCall, stream: MediaStream) -> None:
        self.services = services
        self.ua = ua
        self.call = call
        self.stream = stream
        self.state: fa.FlowState | None = None
        self.barge_in = False
        self.path: list[str] = []
        self.keys: list[str] = []
        self.outcomes: list[str] = []
        self.complaint: str | None = None
        self.recording: str | None = None
        self.groups: frozenset[str] = frozenset()
        self.queued = False  # handed to the live queues, until connected or overflowed
        self.holding = False  # hold music (and announcements) playing
        self.pending_announcement: tuple[str, ...] = ()
        self.enqueue_to: str | None = None
        self.queue: str | None = None  # the queue the caller joined last
        self.agent_hung_up = False  # the agent ended the talk (the call record says so)
        self.queue_entered_at: datetime | None = None  # the caller's place in line, kept by a callback (R10)
        identify = services.identify
        self.identity = identify(call) if identify is not None else CallerIdentity(call.caller, trusted=True)
        stream.owner = self

    # -- events in ---------------------------------------------------------------
    def start(self, now: float) -> None:
        svc = self.services
        groups = self.groups = svc.groups_of(self.identity.number)
        local = time.localtime()
        info = fa.CallInfo(
            caller=self.identity.number,
            called=self.call.called,
            groups=groups,
            notices=svc.notices_for(groups),
            surge=svc.surge(),
            local_time_minutes=local.tm_hour * 60 + local.tm_min,
            weekday=local.tm_wday,
            queues=svc.queues is not None,
            callbacks=svc.callbacks is not None,
        )
        self.state, actions = start(svc.program, info, now)
        self._carry_out(actions, now)
        self._join_queue(now)  # a flow may start at its queue node

    def feed(self, event: fa.FlowEvent, now: float) -> None:
        if self.state is None or self.state.finished:
            return
        self.state, actions = step(self.state, event, now)
        self._carry_out(actions, now)
        self._join_queue(now)

    def _join_queue(self, now: float) -> None:
        """Hand the caller to the live queues if this step reached a queue node; start hold music once queued."""
        assert self.state is not None
        queue, self.enqueue_to = self.enqueue_to, None
        if queue is not None and self.services.queues is not None:
            # after this step's actions (the holding prompt): the engine may connect or overflow at once
            if self.queue_entered_at is None:
                self.queue_entered_at = utcnow()
            self.queue = queue
            self.services.queues.enqueue(self, queue, self.groups, now)
        if self.queued and not self.holding and self.state.waiting == "queued":
            self._hold(self.pending_announcement)
            self.pending_announcement = ()

    # -- the live queue ---------------------------------------------------------------
    def _hold(self, announcement: tuple[str, ...]) -> None:
        """Play ``announcement`` (if any), then hold music; it loops until the caller leaves the queue."""
        prompts = self.services.prompts
        frames = [prompts.frames(pid, self.stream.codec) for pid in (*announcement, "hold_music") if pid in prompts]
        self.holding = True
        self.stream.play(frames, HOLD_PLAY_ID)

    def announce(self, prompt_ids: tuple[str, ...], now: float) -> None:
        """A queue announcement: now if hold music plays, else after the queue node's own prompt.

        It never cuts another announcement short: one still playing (more
        than the music left in the play) makes this one skipped.
        """
        if not self.holding:
            self.pending_announcement = prompt_ids
        elif self.stream.prompts_left <= 1:
            self._hold(prompt_ids)

    def connected(self, now: float) -> None:
        """An agent answered: the flow ends here and the live queues bridge the audio."""
        self.queued = self.holding = False
        self.stream.stop_playback()
        self.feed(fa.QueueLeft("connected"), now)
        callbacks = self.services.callbacks
        if callbacks is not None and self.queue is not None:
            if self.identity.trusted:
                callbacks.reached_agent(self.identity.number, self.queue)  # R10
            else:  # a spoofed From must not close the real number's callback
                self.services.trust.refused_untrusted("close_callback")

    def leave_queue(self, target: str, now: float) -> None:
        """The queue overflowed this caller: the flow goes on at the target's node."""
        self.queued = self.holding = False
        self.pending_announcement = ()
        self.stream.stop_playback()
        self.feed(fa.QueueLeft(target), now)

    def on_timer(self, name: str, now: float) -> None:
        self.feed(fa.TimerExpired(name.removeprefix(TIMER_PREFIX)), now)

    def on_media(self, events: list[MediaEvent], now: float) -> None:
        for ev in events:
            if isinstance(ev, PlaybackFinished):
                if ev.play_id == HOLD_PLAY_ID:
                    if self.holding:
                        self._hold(())  # the music loops
                    continue
                self.feed(fa.PlaybackDone(ev.play_id), now)
            elif isinstance(ev, KeyPressed):
                self.key(ev.key, "rtp", now)
            elif isinstance(ev, RecordingStopped):
                if ev.key:
                    self._count_key(ev.key, "rtp", ended_recording=True)
                self._recorded(ev, now)

    def _count_key(self, key: str, source: str, ended_recording: bool = False) -> None:
        m = self.services.metrics
        m.dtmf_received[source] = m.dtmf_received.get(source, 0) + 1
        if ended_recording:
            self.keys.append(key)  # the flow never sees it as a Digit; the record still shows it

    def key(self, key: str, source: str, now: float) -> None:
        if source != "rtp":
            # INFO keys go through the stream too: they can stop a recording
            self.stream.key(key)
            for ev in self.stream.drain_events():
                if isinstance(ev, RecordingStopped):
                    self._count_key(key, source, ended_recording=True)
                    self._recorded(ev, now)
                    return
        self._count_key(key, source)
        if self.barge_in and self.stream.playing:
            self.stream.stop_playback()
        self.feed(fa.Digit(key), now)

    def hung_up(self, now: float) -> None:
        if self.stream.recording:
            self.stream.stop_recording()
            for ev in self.stream.drain_events():
                if isinstance(ev, RecordingStopped):
                    self._recorded(ev, now, reason="hangup")
        self.feed(fa.HungUp(), now)

    def _recorded(self, ev: RecordingStopped, now: float, reason: str | None = None) -> None:
        svc = self.services
        name = f"{int(time.time())}-{abs(hash(self.call.call_id)) % 10**8:08d}.wav"
        path = svc.recordings_dir / name
        about = {  # beside the WAV: who left it, even if the call's record never reaches the database
            "call_id": self.call.call_id,
            "caller": self.identity.number,
            "caller_trusted": self.identity.trusted,
            "recorded_at": utcnow().isoformat(),
            "seconds": round(len(ev.pcm) / 16000, 2),
        }
        try:
            write_wav(path, ev.pcm)  # small files; the call waits for nothing else
            path.with_suffix(".json").write_text(json.dumps(about) + "\n")
        except OSError:
            log.exception("could not write recording %s", path)
            return
        svc.metrics.messages_recorded += 1
        self.recording = str(path)
        self.feed(fa.RecordingDone(str(path), len(ev.pcm) / 16000, reason or ev.reason), now)

    # -- actions out ---------------------------------------------------------------
    def _carry_out(self, actions: list[fa.FlowAction], now: float) -> None:
        ua, call, stream, svc = self.ua, self.call, self.stream, self.services
        for act in actions:
            if isinstance(act, fa.Play):
                frames = [svc.prompts.frames(pid, stream.codec) for pid in act.prompts if pid in svc.prompts]
                self.barge_in = act.barge_in
                stream.play(frames, act.play_id)
                if stream.events:  # an empty play finishes at once
                    self.on_media(stream.drain_events(), now)
            elif isinstance(act, fa.StopPlayback):
                stream.stop_playback()
            elif isinstance(act, fa.StartTimer):
                ua.set_call_timer(call, TIMER_PREFIX + act.name, now + act.seconds)
            elif isinstance(act, fa.CancelTimer):
                ua.cancel_call_timer(call, TIMER_PREFIX + act.name)
            elif isinstance(act, fa.Record):
                stream.start_recording(act.max_seconds, act.silence_seconds, act.stop_key)
            elif isinstance(act, fa.SendText):
                svc.metrics.texts_requested[act.reason] = svc.metrics.texts_requested.get(act.reason, 0) + 1
                if self.unverified(act.to):
                    svc.trust.refused_untrusted("text")
                    self.outcomes.append(f"text_skipped:{act.reason}")
                else:
                    svc.send_text(act.to, act.body, act.reason)
            elif isinstance(act, fa.Transfer):
                svc.metrics.transfers += 1
                ua.refer(call, act.uri, now)
            elif isinstance(act, fa.Hangup):
                ua.hangup(call, now)
            elif isinstance(act, fa.Note):
                self._note(act)
            elif isinstance(act, fa.QueueRequest) and svc.queues is not None:
                ua.cancel_call_timer(call, "hold")  # max wait bounds the queue, the agent the talk
                self.queued = True
                self.enqueue_to = act.queue
            elif isinstance(act, fa.CallbackRequest) and svc.callbacks is not None:
                if act.cancel and self.unverified(act.number):
                    svc.trust.refused_untrusted("cancel_callback")  # told "none booked", as for a stranger
                    self.feed(fa.CallbackDone("none", None), now)
                else:
                    svc.callbacks.request(self, act)  # answers with CallbackDone once committed

    def unverified(self, number: str) -> bool:
        """Whether ``number`` is the caller's own, claimed by an untrusted peer (not believed)."""
        return not self.identity.trusted and number == self.identity.number

    def _note(self, note: fa.Note) -> None:
        m = self.services.metrics
        kind, value = note.kind, note.value
        if kind == "node":
            self.path.append(value)
            key = (self.state.flow if self.state else "", value)
            m.node_visits[key] = m.node_visits.get(key, 0) + 1
        elif kind == "key":
            self.keys.append(value)
        elif kind == "notice":
            self.outcomes.append(f"notice:{value}")
            m.notices_played[value] = m.notices_played.get(value, 0) + 1
        elif kind == "complaint":
            self.complaint = value
        elif kind == "outcome":
            # hotkey, self_service, screened, message_left, complaint, ... (R4)
            self.outcomes.append(value)
            if value == "hotkey":
                m.hotkey_uses += 1
            elif value == "self_service":
                m.self_service += 1
            elif value == "screened":
                m.screened += 1
        elif kind == "overflow":
            self.outcomes.append(f"overflow:{value}")
        elif kind in ("screened", "message", "transfer", "text_skipped"):
            self.outcomes.append(f"{kind}:{value}" if kind in ("screened", "text_skipped") else kind)

    def media_timed_out(self, now: float) -> None:
        self.ua.hangup(self.call, now, Outcome.MEDIA_TIMEOUT)

    def media_failed(self, now: float) -> None:
        """The RTP shell closed this call's stream after an exception in it: end the call cleanly."""
        self.ua.hangup(self.call, now, Outcome.FAILED)


class MediaEventSink:
    """Takes the RTP shell's events to the IVR call that owns the stream; built before the shell.

    Media events arrive outside the SIP shell's own turn (from the shared
    tick), so what they make the SIP core queue (a hang-up, a ring) is sent
    by ``wake`` after them.
    """

    def __init__(
        self, clock: Callable[[], float], wake: Callable[[], None], drop: Callable[[OutCall, float], None] | None = None
    ) -> None:
        self.clock = clock
        self.wake = wake
        self.drop = drop  # ends a call we placed (UserAgent.drop): a leg whose stream failed

    def on_events(self, stream: MediaStream, events: list[MediaEvent]) -> None:
        call = stream.owner
        if isinstance(call, IvrCall):  # an agent's or a customer's leg only relays audio
            call.on_media(events, self.clock())
            self.wake()

    def on_timeout(self, stream: MediaStream) -> None:
        call = stream.owner
        if isinstance(call, IvrCall):
            call.media_timed_out(self.clock())
            self.wake()

    def on_failure(self, stream: MediaStream) -> None:
        """A stream the shell closed after an exception: its call ends, an IVR call's or a leg we placed."""
        call = stream.owner
        if isinstance(call, IvrCall):
            call.media_failed(self.clock())
            self.wake()
        elif isinstance(call, OutboundLeg) and self.drop is not None:
            self.drop(call.out, self.clock())  # the dialog's end reaches the live queues or the dialer as usual
            self.wake()
