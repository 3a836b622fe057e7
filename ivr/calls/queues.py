"""The live queue router: the pure policy engine (queueing/) driven by real calls.

Theory of operation
-------------------
``queueing.engine.Engine`` decides; this module only feeds it events with
the loop clock's ``now`` and carries out its decisions (docs/architecture.md):

===================  ==========================================================
decision             carried out as
===================  ==========================================================
``RingAgent``        INVITE to the agent's registered contact (an ``OutCall``)
                     offering a fresh RTP port of our own (ivr/calls/legs.py)
``CancelRing``       CANCEL (or BYE when the phone answered meanwhile)
``Connect``          the flow leaves the queue node; the caller's and the
                     agent's RTP streams are bridged (relay through us)
``Overflow``         the flow goes on at the queue node's overflow target
``PlayAnnouncement`` position and wait, peak shaving or busy notice, then
                     hold music again
``SetTimer``         one ``loop.call_at`` for the engine's earliest timer
``SurgeChanged``     logged; the IVR's surge branches and the metrics read
                     the engine's switch
``Pause/Resume``     the outbound (callback) dispatcher's switch (R15)
===================  ==========================================================

And back: the agent's phone answering, refusing or not answering
(``OutAnswered``, ``OutFailed``), either side hanging up, agents' buttons
(HTTP) and phones registering all become engine events. A phone's first
registration logs its agent in and ready; losing the last one logs it out.

In cluster mode (docs/cluster.md) the same class feeds the shared log instead
of its own engine, and carries out the decisions this node's replica routes to
it; the module is long because both modes share every decision's carrying out.
While Redis fails the log applies this node's events at once to its own
replica (degraded), so nothing here changes; before the nodes join up again
this node cancels its rings (:meth:`LiveQueues.settle_rings`), and after the
new generation is built it puts right what the rebuild missed
(:meth:`LiveQueues.rebuilt`).

Why an RTP relay rather than re-INVITEing the phones to each other: it
works through NAT and with phones that cannot be re-INVITEd, every leg
keeps its own clean RTP stream, and the server keeps the audio path for
announcements and recording. The cost is one more hop (at most one 20 ms
tick of delay) and the server's bandwidth.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ivr.calls.callers import QueueCaller
from ivr.calls.legs import OutboundLeg, dial
from ivr.cluster.coordinator import PhoneBindings
from ivr.cluster.log import ClusterLogError
from ivr.flow.program import number_prompts
from ivr.sip.ua import OutAnswered, OutEnded, OutFailed, OutRinging
from queueing.engine import Engine
from queueing.events import (
    AgentAnswered,
    AgentLoggedIn,
    AgentLoggedOut,
    AgentNoAnswer,
    AgentNotReady,
    AgentReady,
    CallArrived,
    CallEnded,
    CallerHungUp,
    CancelRing,
    Connect,
    Decision,
    Event,
    Overflow,
    PauseOutbound,
    PlayAnnouncement,
    PolicyError,
    ResumeOutbound,
    RingAgent,
    SurgeChanged,
    SurgeSwitch,
    TimerFired,
)

if TYPE_CHECKING:
    from ivr.cluster.coordinator import Applied, ClusterEvent
    from ivr.cluster.log import ClusterLog
    from ivr.sip.ua import UserAgent
    from ivr.transport.rtp import MediaShell

log = logging.getLogger(__name__)

HOLD_MUSIC = "hold_music"
REQUEST_TIMEOUT = 5.0  # seconds an agent's or supervisor's change may wait for the shared log (cluster mode)


class ClusterUnavailable(Exception):
    """Cluster mode: the shared log (Redis) did not take a change in time; nothing was changed."""


@dataclass(eq=False, kw_only=True)
class Ring(OutboundLeg):
    """One agent's phone ringing for one caller (and, once answered, the agent's leg of the talk)."""

    agent: str
    call_id: str
    cancelled: bool = False
    answered: bool = False  # the phone took the call; the engine's word on it may still be on its way


@dataclass(eq=False)
class Queued:
    """A caller handed to the engine, from the queue node to the end of the talk."""

    ivr: QueueCaller
    queue: str
    rings: dict[str, Ring] = field(default_factory=dict)  # agent -> ring
    arrival: CallArrived | None = None  # as handed to the engine (cluster mode: handed again after a rebuild)
    talking: Ring | None = None


@dataclass
class QueueCounters:
    """What the engine does not count itself; exported with the queue metrics."""

    agent_calls: dict[str, int] = field(default_factory=dict)  # INVITEs to agents by result
    unreachable: int = 0  # rings to agents with no registered phone


class LiveQueues:
    def __init__(
        self,
        engine: Engine,
        ua: UserAgent,
        media: MediaShell,
        clock: Callable[[], float],
        loop: asyncio.AbstractEventLoop,
        tier_of: Callable[[str, frozenset[str]], tuple[str, bool]],
        *,
        wake: Callable[[], None] | None = None,
        connected_line: bool = True,
        cluster: ClusterLog | None = None,
    ) -> None:
        self._engine = engine
        # cluster mode: events go to the shared log and decisions come back from this node's replica
        # (docs/cluster.md); the engine clock is then the wall clock shared by the nodes
        self.cluster = cluster
        self.node = cluster.node if cluster is not None else ""
        self.ua = ua
        self.media = media
        self.clock = clock
        self.loop = loop
        self.tier_of = tier_of
        # asks for what the SIP core queued to be sent (the server's SIP shell; nothing in the parity test)
        self.wake = wake
        self.connected_line = connected_line  # UPDATE to the caller's phone naming the agent who answered
        self.outbound_paused = False
        self.counters = QueueCounters()
        self.calls: dict[str, Queued] = {}
        self._pending: deque[Event] = deque()
        self._busy = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._in_sip = False
        if cluster is not None:
            cluster.on_settle = self.settle_rings
            cluster.on_rebuilt = self.rebuilt

    @property
    def engine(self) -> Engine:
        """The engine deciding for this node: its own, or in cluster mode this node's replica (read, never fed)."""
        if self.cluster is not None:
            return self.cluster.coordinator.engine
        return self._engine

    # -- engine in and out ---------------------------------------------------------------
    def feed(self, event: Event) -> None:
        """Hand one event to the engine and carry out what it decides (events it causes queue up).

        In cluster mode the event is appended to the shared log; what the engine
        decides comes back through :meth:`on_applied`, on every node alike.
        """
        if self.cluster is not None:
            self.cluster.submit(event)
            return
        self._pending.append(event)
        if self._busy:
            return
        self._busy = True
        try:
            while self._pending:
                ev = self._pending.popleft()
                try:
                    decisions = self.engine.handle(ev)
                except PolicyError as exc:
                    if isinstance(ev, (AgentLoggedIn, AgentReady, AgentNotReady, AgentLoggedOut)):
                        raise
                    log.warning("queue engine refused %s: %s", type(ev).__name__, exc)
                    continue
                for d in decisions:
                    self._carry_out(d)
        finally:
            self._busy = False
            self._pending.clear()
        self._arm_timer()
        if not self._in_sip and self.wake is not None:
            self.wake()

    def on_applied(self, entry: str, origin: str, event: Event | ClusterEvent, applied: Applied) -> None:
        """Cluster mode: one entry of the shared log applied to this node's replica; carry out our part."""
        if applied.error is not None and origin == self.node:
            log.warning("queue engine refused %s (%s): %s", type(event).__name__, entry, applied.error)
        for routed in applied.routed:
            if routed.node is None or routed.node == self.node:
                self._carry_out(routed.decision)
        if origin == self.node and isinstance(event, AgentAnswered):
            self._answer_settled(event.agent, event.call)
        if self.wake is not None:
            self.wake()

    def now(self) -> float:
        """The engine's clock (loop clock, or wall clock in cluster mode), never behind the engine's own time."""
        return max(self.clock(), self.engine.now or 0.0)

    def _engine_now(self, now: float) -> float:
        """An engine time for an event the calls' side timed with ``now`` (its clock is the engine's on one node)."""
        return self.now() if self.cluster is not None else now

    def sip_now(self) -> float:
        """The SIP core's and the calls' clock (the loop's); the same as :meth:`now` on a single node."""
        return self.loop.time() if self.cluster is not None else self.now()

    def _arm_timer(self) -> None:
        if self.cluster is not None:
            return  # the cluster's timekeeper appends the engine's timers to the log
        at = self.engine.next_timer()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            self._timer = self.loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.feed(TimerFired(kind="tick", id="", now=self.now()))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for queued in list(self.calls.values()):
            for ring in list(queued.rings.values()) + ([queued.talking] if queued.talking else []):
                self.media.close(ring.stream)

    # -- decisions -------------------------------------------------------------------------
    def _carry_out(self, d: Decision) -> None:
        match d:
            case RingAgent():
                self._ring(d.agent, d.call)
            case CancelRing():
                queued = self.calls.get(d.call)
                ring = queued.rings.get(d.agent) if queued else None
                if ring is not None:
                    ring.cancelled = True
                    self.ua.drop(ring.out, self.sip_now())
                    # no audio for a cancelled ring, whenever the phone's final answer comes
                    self.media.close(ring.stream)
            case Connect():
                self._connect(d.agent, d.call)
            case Overflow():
                queued = self.calls.pop(d.call, None)
                if queued is not None:
                    queued.ivr.leave_queue(d.target, self.sip_now())
            case PlayAnnouncement():
                queued = self.calls.get(d.call)
                if queued is not None:
                    queued.ivr.announce(announcement_prompts(d), self.sip_now())
            case SurgeChanged():
                log.info("surge %s (%s)", "on" if d.on else "off", d.cause)
            case PauseOutbound():
                self.outbound_paused = True
            case ResumeOutbound():
                self.outbound_paused = False
            case _:
                pass  # SetTimer: the engine keeps its timers; _arm_timer follows next_timer()

    def _contacts(self, agent: str) -> list[tuple[str, tuple[str, str, int]]]:
        """The agent's registered phones (contact, peer), newest first: this node's, or the cluster's."""
        if self.cluster is not None:
            return self.cluster.coordinator.lookup(agent, self.now())
        return [(b.contact, b.peer) for b in self.ua.registrar.lookup(agent, self.sip_now())]

    def registered(self, agent: str) -> bool:
        return bool(self._contacts(agent))

    def _ring(self, agent: str, call_id: str) -> None:
        queued = self.calls.get(call_id)
        if queued is None:
            self.feed(AgentNoAnswer(agent=agent, call=call_id, now=self.now()))
            return
        contacts = self._contacts(agent)
        if not contacts:
            self.counters.unreachable += 1
            self.feed(AgentNoAnswer(agent=agent, call=call_id, now=self.now()))
            return
        contact, peer = contacts[0]
        caller = queued.ivr.call
        try:
            stream, out = dial(
                self.ua,
                self.media,
                contact,
                peer,
                self.sip_now(),
                from_user=caller.caller or "anonymous",
                from_display=f"{caller.caller} via {queued.queue}",  # shown on the agent's phone
            )
        except OSError:
            log.warning("no RTP port free to ring agent %s", agent)
            self.feed(AgentNoAnswer(agent=agent, call=call_id, now=self.now()))
            return
        queued.rings[agent] = Ring(stream=stream, out=out, agent=agent, call_id=call_id)

    def _connect(self, agent: str, call_id: str) -> None:
        queued = self.calls.get(call_id)
        if queued is None:
            return  # cluster mode: the caller hung up while the engine connected (its rings were dropped then)
        now = self.sip_now()
        ring = queued.rings.pop(agent, None)
        if ring is None:
            # cluster mode: the agent's phone hung up right after answering, before this Connect came back
            del self.calls[call_id]
            self.feed(CallEnded(call=call_id, now=self.now()))
            queued.ivr.agent_hung_up = True
            self.ua.hangup(queued.ivr.call, now)
            return
        queued.talking = ring
        ivr = queued.ivr
        ivr.connected(now)
        ivr.stream.bridge(ring.stream)
        if self.connected_line:
            self.ua.update_connected(ivr.call, f"{agent} ({queued.queue})", agent, now)

    # -- SIP events of the agents' legs -------------------------------------------------------
    def on_sip_event(self, ev: OutRinging | OutAnswered | OutFailed | OutEnded) -> None:
        ring = ev.call.owner
        if not isinstance(ring, Ring):
            return
        self._in_sip = True
        try:
            self._on_leg_event(ring, ev)
        finally:
            self._in_sip = False

    def _count(self, result: str) -> None:
        self.counters.agent_calls[result] = self.counters.agent_calls.get(result, 0) + 1

    def _on_leg_event(self, ring: Ring, ev: OutRinging | OutAnswered | OutFailed | OutEnded) -> None:
        now = self.sip_now()
        queued = self.calls.get(ring.call_id)
        if isinstance(ev, OutRinging):
            return
        if isinstance(ev, OutAnswered):
            self._count("answered")
            ring.use_answer()
            if queued is None or queued.rings.get(ring.agent) is not ring or ring.cancelled:
                self.ua.drop(ev.call, now)  # answered too late: the caller left or another agent won
                return
            ring.answered = True
            self.feed(AgentAnswered(agent=ring.agent, call=ring.call_id, now=self.now()))
            if self.cluster is None:
                self._answer_settled(ring.agent, ring.call_id)
            return
        # OutFailed / OutEnded: this leg is over
        self.media.close(ring.stream)
        if isinstance(ev, OutFailed):
            self._count("cancelled" if ring.cancelled else f"failed_{ev.status // 100}xx")
            if queued is not None and queued.rings.get(ring.agent) is ring:
                del queued.rings[ring.agent]
                if not ring.cancelled:
                    self.feed(AgentNoAnswer(agent=ring.agent, call=ring.call_id, now=self.now()))
            return
        # OutEnded: the talk is over (the agent hung up, or we did after the caller)
        if queued is not None and queued.talking is ring:
            del self.calls[ring.call_id]
            queued.ivr.stream.unbridge()
            self.feed(CallEnded(call=ring.call_id, now=self.now()))
            if ev.call.ended_by == "remote":
                queued.ivr.agent_hung_up = True
                self.ua.hangup(queued.ivr.call, now)
        elif queued is not None and queued.rings.get(ring.agent) is ring:
            # the phone hung up after answering, before the engine's Connect came back (cluster mode)
            del queued.rings[ring.agent]

    def _answer_settled(self, agent: str, call_id: str) -> None:
        """After the engine took an agent's answer: unless it connected this ring, the phone is hung up."""
        queued = self.calls.get(call_id)
        ring = queued.rings.get(agent) if queued is not None else None
        if ring is None or not ring.answered or (queued is not None and queued.talking is ring):
            return
        ring.answered = False
        self.ua.drop(ring.out, self.sip_now())  # the engine gave the caller up meanwhile

    # -- the caller's side -------------------------------------------------------------------------
    def enqueue(self, ivr: QueueCaller, queue: str, groups: frozenset[str], now: float) -> None:
        call_id = ivr.call.call_id
        if call_id in self.calls or queue not in self.engine.queues:
            ivr.leave_queue("message", now)
            return
        tier, urgent = self.tier_of(queue, groups)
        arrival = CallArrived(call_id=call_id, queue=queue, tier=tier, urgent=urgent, now=self._engine_now(now))
        self.calls[call_id] = Queued(ivr, queue, arrival=arrival)
        self.feed(arrival)

    def caller_gone(self, call_id: str, now: float) -> None:
        """The caller's call ended (hang-up, media timeout, ...) while queued, ringing or talking."""
        queued = self.calls.get(call_id)
        if queued is None:
            return
        self._in_sip = True
        try:
            ring = queued.talking
            if ring is not None:
                del self.calls[call_id]
                queued.ivr.stream.unbridge()
                self.feed(CallEnded(call=call_id, now=self._engine_now(now)))
                self.ua.drop(ring.out, now)
            else:
                # the engine cancels the rings (CancelRing); their legs end with OutFailed(487)
                self.feed(CallerHungUp(call=call_id, now=self._engine_now(now)))
                self.calls.pop(call_id, None)
                if self.cluster is not None:
                    # the engine's CancelRings come back after the caller is forgotten here: cancel now
                    for ring in queued.rings.values():
                        ring.cancelled = True
                        self.ua.drop(ring.out, now)
                        self.media.close(ring.stream)
        finally:
            self._in_sip = False

    # -- cluster mode: joining up again after Redis failed -----------------------------------------
    def settle_rings(self) -> None:
        """Before this node takes part in a new generation: cancel its rings (its callers wait on, first in line)."""
        now = self.sip_now()
        for queued in self.calls.values():
            for ring in queued.rings.values():
                if not ring.cancelled:
                    ring.cancelled = True
                    self.ua.drop(ring.out, now)
                    self.media.close(ring.stream)
        if self.wake is not None:
            self.wake()

    def rebuilt(self, included: bool) -> None:
        """After a new generation was built: callers and phones it missed are handed in again, and gone ones out.

        A caller of this node the rebuild does not hold (it arrived after this
        node took part, or the node took part too late) joins again (the engine
        puts it at its tier's end); one it holds that has left here leaves it.
        """
        assert self.cluster is not None
        engine = self.engine
        replica = self.cluster.coordinator
        for call_id, queued in list(self.calls.items()):
            if call_id in engine.calls or queued.arrival is None or queued.talking is not None:
                continue
            queued.rings.clear()
            self.feed(queued.arrival)
        for call_id in replica.calls_of(self.node):
            if call_id not in self.calls:
                self.feed(CallerHungUp(call=call_id, now=self.now()))
        if not included:
            for agent in engine.agents:
                if self.ua.registrar.lookup(agent, self.sip_now()):
                    self.publish_bindings(agent)

    # -- agents' buttons and phones ----------------------------------------------------------------
    def agent_event(self, agent: str, action: str, reason: str | None = None) -> None:
        """login | ready | not_ready | logout; raises PolicyError (unknown agent, illegal now).

        In cluster mode the event goes to the shared log and a refusal is only
        logged: callers that must know await :meth:`agent_request` instead.
        """
        self.feed(self._agent_change(agent, action, reason))

    async def agent_request(self, agent: str, action: str, reason: str | None = None) -> None:
        """:meth:`agent_event`, raising PolicyError in cluster mode too (once this node's replica applied it)."""
        event = self._agent_change(agent, action, reason)
        if self.cluster is None:
            self.feed(event)
            return
        try:
            applied = await asyncio.wait_for(self.cluster.request(event), REQUEST_TIMEOUT)
        except (TimeoutError, ClusterLogError) as exc:
            raise ClusterUnavailable(f"the cluster's shared log did not take the change in time ({exc})") from None
        if applied.error is not None:
            raise PolicyError(applied.error)

    def _agent_change(self, agent: str, action: str, reason: str | None) -> Event:
        now = self.now()
        if action == "login":
            return AgentLoggedIn(agent=agent, now=now)
        if action == "ready":
            return AgentReady(agent=agent, now=now)
        if action == "not_ready":
            return AgentNotReady(agent=agent, reason=reason or "busy", now=now)
        if action == "logout":
            return AgentLoggedOut(agent=agent, now=now)
        raise PolicyError(f"unknown agent action {action!r}")

    def publish_bindings(self, agent: str) -> None:
        """Cluster mode: this node's registered phones of ``agent`` (expiry in wall-clock time) to every replica."""
        if self.cluster is None or agent not in self.engine.agents:
            return
        sip_now, now = self.loop.time(), self.now()
        rows = tuple(
            (b.contact, b.peer, now + b.expires_at - sip_now) for b in self.ua.registrar.lookup(agent, sip_now)
        )
        self.cluster.submit(PhoneBindings(node=self.node, agent=agent, bindings=rows, now=now))

    def on_registration(self, agent: str, registered: bool) -> None:
        """A phone's first binding logs its agent in (ready); losing the last one logs it out.

        In cluster mode the replicas apply this rule to the bindings of every node
        (:meth:`publish_bindings`), so that a phone on any node counts.
        """
        if agent not in self.engine.agents or self.cluster is not None:
            return
        state = self.engine.agents[agent].state.value
        try:
            if registered and state == "logged_out":
                self.agent_event(agent, "login")
            elif not registered and state != "logged_out":
                self.agent_event(agent, "not_ready" if state == "talking" else "logout", "unregistered")
        except PolicyError as exc:
            log.info("agent %s registration change not applied: %s", agent, exc)

    def surge_switch(self, on: bool | None, cause: str = "manual") -> None:
        now = self.now()
        self.feed(SurgeSwitch(on=on, cause=cause, now=now))  # type: ignore[arg-type]


def announcement_prompts(d: PlayAnnouncement) -> tuple[str, ...]:
    """What a waiting caller hears for an announcement, as prompt ids."""
    if d.kind == "peak_shaving":
        return ("queue_peak_shaving",)
    if d.kind == "notice":
        return ("queue_busy_notice",)
    said: tuple[str, ...] = ()
    if d.position is not None:
        said += ("queue_position", *number_prompts(d.position), "queue_in_line")
    if d.ewt is not None:
        if not math.isfinite(d.ewt):
            said += ("queue_wait_unknown",)
        elif d.ewt < 60:
            said += ("queue_wait_under_a_minute",)
        else:
            minutes = math.ceil(d.ewt / 60)
            said += ("queue_wait", *number_prompts(minutes), "queue_minutes")
    return said


__all__ = ["HOLD_MUSIC", "ClusterUnavailable", "LiveQueues", "announcement_prompts"]
