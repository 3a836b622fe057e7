"""The live side of callback lists: bookings from the IVR, the dialer, the dispatcher.

Theory of operation
-------------------
The list itself is durable in the database (``callback.store``); this
module connects it to calls:

- **Booking** (R2, R10, R14). A callback node of the flow asks for a
  booking; :meth:`CallbackDesk.request` commits it (``store.book``) in a
  task and only then tells the flow, which then says "booked" and the
  promised time. The caller keeps their place: ``arrived_at`` is when they
  entered the queue (or called, when they book without queueing). The
  promise comes from the queue's forecast: the wait of a caller behind
  everyone in line and every due callback (the EWT formula, docs/queueing.md)
  plus a margin, not before the chosen slot starts. A booking for the number
  an untrusted peer claimed (``ivr/calls/trust.py``) is ``created_by:
  ivr_unverified``: it is called back, but no text about it goes out.
- **Reached an agent** (R10). A caller who reaches an agent has their
  active callback for that queue closed, and a text message says so.
- **Dialer** (click-to-call and the dispatcher). The agent's phone rings
  first (the agent is made "not ready: callback" in the queue engine, so
  inbound calls do not ring it meanwhile); when the agent answers, the
  customer is dialled through ``callbacks.trunk`` and the two are bridged
  (both legs placed as ``ivr/calls/legs.py`` places every call of ours).
  A customer who does not answer is recorded as ``no_answer`` (the store
  retries it later, up to its limit).
- **Dispatcher** (R15). Every ``dispatch_interval`` it makes booked
  callbacks due when their slot starts, expires old ones (with a text),
  warns callers whose promise the forecast says will be missed (with a text
  pointing to self-service), and offers due callbacks to agents: only when
  no inbound caller waits in that queue and more than ``reserve_agents``
  agents are ready (inbound keeps its share), and never while the surge
  switch pauses outbound work.

A booking gets :data:`BOOKING_DEADLINE`; a database that is down or does not
answer makes it ``failed``, and the caller hears so (docs/callbacks.md, "When
the database is down").

The module is long because the desk is where a callback meets the calls:
booking, closing, the two legs of a dial and the dispatcher share its jobs
and counters, and each is short.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from callback import logmask
from callback.base import utcnow
from callback.health import describe, health_for, is_outage
from callback.rules import STATES, WAITING_STATES
from callback.store import AlreadyBooked, Callback, CallbackStore, Conflict, NotFound
from ivr.calls.callers import BookingCaller
from ivr.calls.legs import OutboundLeg, dial
from ivr.calls.promises import NEVER, Forecast
from ivr.calls.queues import LiveQueues
from ivr.calls.trust import UNVERIFIED_BOOKER, TrustCounters
from ivr.flow import actions as fa
from ivr.sip.message import uri_host_port
from ivr.sip.ua import OutAnswered, OutEnded, OutFailed, OutRinging
from queueing.agents import AgentState
from queueing.events import PolicyError

if TYPE_CHECKING:
    from ivr.settings.callbacks import CallbackSettings
    from ivr.sip.ua import UserAgent
    from ivr.transport.rtp import MediaShell

log = logging.getLogger(__name__)

AGENT_RING_TIMEOUT = 20.0  # seconds the agent's phone may ring for a callback
CUSTOMER_RING_TIMEOUT = 30.0  # seconds the customer's phone may ring
BOOKING_DEADLINE = 3.0  # seconds a caller waits, in silence, for the store's answer before hearing "failed"
BOOKING_RETRY = 0.25  # seconds between tries of a booking whose connection failed (same idempotency key)


class DialError(Exception):
    """A callback could not be placed; worded for the agent."""


@dataclass
class DeskCounters:
    """What the desk counts, and the list's state at the dispatcher's last pass; exported by CallbackCollector."""

    bookings: int = 0
    booking_errors: int = 0
    closed_reached_agent: int = 0
    dials: dict[str, int] = field(default_factory=dict)  # by result
    promises_warned: int = 0
    promises_missed: int = 0
    expired: int = 0
    dispatch_paused: bool = False
    by_state: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATES, 0))
    oldest_waiting: float = 0.0  # seconds, of the booked/due ones
    at_risk: int = 0  # active callbacks the forecast says will start after their promise
    missed_ids: set[int] = field(default_factory=set)


@dataclass(eq=False, kw_only=True)
class Leg(OutboundLeg):
    """One outbound leg of a callback (agent or customer); SIP events come back to :meth:`on_out_event`."""

    job: Job
    role: str  # "agent" | "customer"
    answered: asyncio.Future[bool] | None = None  # the agent's leg: resolved by its answer or its end

    def on_out_event(self, ev: OutRinging | OutAnswered | OutFailed | OutEnded) -> None:
        self.job.desk.on_leg_event(self, ev)


@dataclass(eq=False)
class Job:
    """One callback being dialled: the agent's leg, then the customer's."""

    desk: CallbackDesk
    cb: Callback
    agent: str
    previous: tuple[str, str | None]  # the agent's state before (to restore)
    agent_leg: Leg | None = None
    customer_leg: Leg | None = None
    done: bool = False


class CallbackDesk:
    def __init__(
        self,
        store: CallbackStore,
        settings: CallbackSettings,
        queues: LiveQueues,
        ua: UserAgent,
        media: MediaShell,
        loop: asyncio.AbstractEventLoop,
        send_text: Callable[[str, str, str], None],
        wake: Callable[[], None],
        clock: Callable[[], datetime] = utcnow,
        trust: TrustCounters | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.queues = queues
        self.ua = ua
        self.media = media
        self.loop = loop
        self.send_text = send_text
        self.wake = wake  # asks for what the SIP core queued to be sent
        self.clock = clock
        self.counters = DeskCounters()
        self.trust = trust or TrustCounters()  # texts withheld from numbers an untrusted caller claimed
        self.jobs: dict[str, Job] = {}  # agent -> job
        self.forecast = Forecast(queues, settings)
        self.health = health_for(store.engine)
        self._tasks: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # kept until done, and cancelled by stop(): a booking or an outcome write never outlives the server
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Cancel the bookings, closings and outcome writes still running, and wait for them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- bookings from the IVR ------------------------------------------------------------------
    def request(self, ivr: BookingCaller, act: fa.CallbackRequest) -> None:
        self._spawn(self._book(ivr, act))

    async def _book(self, ivr: BookingCaller, act: fa.CallbackRequest) -> None:
        now = self.clock()
        minutes: int | None = None
        number = act.number
        try:
            if not number or not number.lstrip("+").isdigit():
                result = "failed"
            elif act.cancel:
                async with asyncio.timeout(BOOKING_DEADLINE):
                    existing = await self.store.active_for(number, act.queue)
                    if existing is None:
                        result = "none"
                    else:
                        await self.store.cancel(existing.id, now=now, by="caller")
                        result = "cancelled"
                self.health.ok()
            else:
                start, end, promised = self.forecast.promise(act.queue, act.slot, now)
                await self._commit_booking(
                    queue=act.queue,
                    number=number,
                    arrived_at=ivr.queue_entered_at or now,
                    promised_by=promised,
                    now=now,
                    not_before=start,
                    window_end=end,
                    message_path=ivr.recording,
                    call_id=ivr.call.call_id,
                    # a number an untrusted peer claimed still gets its callback, but no text about it
                    created_by=UNVERIFIED_BOOKER if ivr.unverified(number) else "ivr",
                    key=secrets.token_hex(16),
                )
                self.counters.bookings += 1
                result = "booked"
                minutes = max(1, math.ceil((promised - now).total_seconds() / 60))
        except AlreadyBooked:
            result = "exists"
        except (Conflict, NotFound, ValueError) as exc:
            log.warning("callback request of %s not done: %s", logmask.number(number), exc)
            self.counters.booking_errors += 1
            result = "failed"
        except Exception as exc:  # the database is down or did not answer in time: the caller is told, nothing promised
            if is_outage(exc):
                self.health.failed("bookings", exc)  # logged once per outage, not per caller
            else:
                log.exception("callback booking failed")
            self.counters.booking_errors += 1
            result = "failed"
        ivr.feed(fa.CallbackDone(result, minutes), self.loop.time())
        self.wake()

    async def _commit_booking(self, **booking: Any) -> Callback:
        """``store.book`` within :data:`BOOKING_DEADLINE`, tried again (same key) while the connection fails.

        A commit whose outcome is unknown (the connection dropped during COMMIT, or
        the deadline passed) is retried with the same idempotency key: the store
        returns the row the first try wrote instead of writing a second. When the
        deadline passes first, the caller is told the booking failed; a row that a
        lost COMMIT did write stays, and the caller's next try hears it exists.
        """
        async with asyncio.timeout(BOOKING_DEADLINE):
            while True:
                try:
                    booked = await self.store.book(**booking)
                except AlreadyBooked:
                    self.health.ok()
                    raise
                except Exception as exc:
                    if not is_outage(exc) or not self.health.up:
                        raise  # during a known outage, one try: the caller is not kept waiting in silence
                    self.health.failed("bookings", exc)
                    await asyncio.sleep(BOOKING_RETRY)
                    continue
                self.health.ok()
                return booked

    def reached_agent(self, number: str, queue: str) -> None:
        """R10: the caller got through; their callback for this queue is closed, and they are told."""
        self._spawn(self._close_for(number, queue))

    async def _close_for(self, number: str, queue: str) -> None:
        try:
            closed = await self.store.close_for_number(number, queue, now=self.clock(), reason="reached_agent")
        except Exception as exc:
            if not is_outage(exc):
                log.exception("could not close the callbacks of %s", logmask.number(number))
                return
            self.health.failed("callback_closings", exc)
            log.error("could not close the callbacks of %s: %s", logmask.number(number), describe(exc))
            return
        if closed:
            self.counters.closed_reached_agent += len(closed)
            self.send_text(
                number,
                "Frontdesk: you reached one of our agents, so we have closed the callback you booked.",
                "callback",
            )

    # -- the dialer ----------------------------------------------------------------------------------
    async def click_to_call(self, cb: Callback, agent: str) -> None:
        """Ring ``agent``'s phone; once answered, dial the customer and bridge them. Raises DialError."""
        if agent in self.jobs:
            raise DialError("you already have a callback in progress")
        engine_agent = self.queues.engine.agents.get(agent)
        if engine_agent is None:
            raise DialError(f"{agent} is not an agent of any queue")
        if engine_agent.state in (AgentState.RINGING, AgentState.TALKING):
            raise DialError("you are on a call: finish it first")
        bindings = self.ua.registrar.lookup(agent, self.loop.time())
        if not bindings:
            raise DialError("your phone is not registered")
        previous = (engine_agent.state.value, engine_agent.reason)
        try:
            if engine_agent.state is AgentState.LOGGED_OUT:
                self.queues.agent_event(agent, "login")
            self.queues.agent_event(agent, "not_ready", "callback")  # inbound calls do not ring it meanwhile
        except PolicyError as exc:
            raise DialError(str(exc)) from None
        job = Job(self, cb, agent, previous)
        self.jobs[agent] = job
        contact, peer = bindings[0].contact, bindings[0].peer
        try:
            stream, out = dial(
                self.ua, self.media, contact, peer, self.loop.time(), from_user=cb.number,
                from_display=f"Callback {cb.id}",
            )  # fmt: skip
        except OSError:
            self._finish(job)
            raise DialError("the server has no free RTP port") from None
        answered = self.loop.create_future()
        job.agent_leg = Leg(stream=stream, out=out, job=job, role="agent", answered=answered)
        self.wake()
        try:
            ok = await asyncio.wait_for(asyncio.shield(answered), AGENT_RING_TIMEOUT)
        except TimeoutError:
            ok = False
        if not ok:
            self._count("agent_no_answer")
            self._hang_up(job)
            raise DialError("your phone did not answer")
        if cb.state != "in_progress":
            try:
                job.cb = await self.store.start_call(cb.id, agent=agent, now=self.clock())  # an attempt from now
            except (Conflict, NotFound) as exc:
                self._hang_up(job)
                raise DialError(str(exc)) from None
        if job.done:  # the agent hung up meanwhile
            raise DialError("your phone hung up")
        self._dial_customer(job)

    def _dial_customer(self, job: Job) -> None:
        settings = self.settings
        target = settings.trunk.format(number=job.cb.number)
        host, port = uri_host_port(target)
        try:
            stream, out = dial(self.ua, self.media, target, ("udp", host, port or 5060), self.loop.time())
        except OSError:
            self._count("no_port")
            self._hang_up(job)
            return
        job.customer_leg = Leg(stream=stream, out=out, job=job, role="customer")
        self.loop.call_later(CUSTOMER_RING_TIMEOUT, self._customer_timeout, job)
        self.wake()

    def _customer_timeout(self, job: Job) -> None:
        leg = job.customer_leg
        if not job.done and leg is not None and leg.out.t_answer is None:
            self.ua.drop(leg.out, self.loop.time())
            self.wake()

    def on_leg_event(self, leg: Leg, ev: OutRinging | OutAnswered | OutFailed | OutEnded) -> None:
        job = leg.job
        now = self.loop.time()
        if isinstance(ev, OutRinging):
            return
        if isinstance(ev, OutAnswered):
            leg.use_answer()
            if job.done:
                self.ua.drop(ev.call, now)
                return
            if leg.role == "agent":
                if leg.answered is not None and not leg.answered.done():
                    leg.answered.set_result(True)
            else:
                assert job.agent_leg is not None
                self._count("connected")
                job.agent_leg.stream.bridge(leg.stream)
            return
        # failed or ended: this leg is over
        self.media.close(leg.stream)
        if leg.role == "agent" and leg.answered is not None and not leg.answered.done():
            leg.answered.set_result(False)
            return
        if job.done:
            return
        if leg.role == "customer" and isinstance(ev, OutFailed):
            self._count("customer_no_answer" if ev.status in (408, 480, 486, 487, 600, 603) else "customer_failed")
            self._spawn(self._record(job, "busy" if ev.status in (486, 600) else "no_answer"))
        self._hang_up(job)

    async def _record(self, job: Job, outcome: str) -> None:
        try:
            await self.store.record_outcome(job.cb.id, agent=job.agent, now=self.clock(), outcome=outcome)
        except Exception:
            log.exception("could not record the outcome of callback %s", job.cb.id)

    def _hang_up(self, job: Job) -> None:
        now = self.loop.time()
        for leg in (job.agent_leg, job.customer_leg):
            if leg is not None and not leg.out.ended:
                self.ua.drop(leg.out, now)
        self._finish(job)
        self.wake()

    def _unverified(self, cb: Callback) -> bool:
        """A callback booked for a number an untrusted caller claimed: no text goes to it (counted)."""
        if cb.created_by != UNVERIFIED_BOOKER:
            return False
        self.trust.refused_untrusted("text")
        return True

    def _count(self, result: str) -> None:
        self.counters.dials[result] = self.counters.dials.get(result, 0) + 1

    def _finish(self, job: Job) -> None:
        if job.done:
            return
        job.done = True
        for leg in (job.agent_leg, job.customer_leg):
            if leg is not None:
                leg.stream.unbridge()
                self.media.close(leg.stream)
        self.jobs.pop(job.agent, None)
        state, reason = job.previous
        try:
            if state == "logged_out":
                self.queues.agent_event(job.agent, "logout")
            elif state == "not_ready":
                self.queues.agent_event(job.agent, "not_ready", reason)
            else:
                self.queues.agent_event(job.agent, "ready")
        except PolicyError as exc:
            log.info("agent %s not restored after the callback: %s", job.agent, exc)

    # -- the dispatcher ------------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            cluster = self.queues.cluster
            if cluster is not None and not (cluster.is_timekeeper or cluster.degraded):
                # cluster mode: one node (the timekeeper) gives callbacks to agents, so no agent gets two at once;
                # while Redis is down each node does, as a single node would: its replica holds only its own
                # agents, and a callback's claim is one row's update in the database, so none goes out twice
                await asyncio.sleep(self.settings.dispatch_interval)
                continue
            try:
                await self.dispatch_once()
            except Exception as exc:
                if is_outage(exc):
                    self.health.failed("dispatcher", exc)  # the outage's one log line; the next pass tries again
                else:
                    log.exception("callback dispatcher pass failed")
            await asyncio.sleep(self.settings.dispatch_interval)

    async def dispatch_once(self) -> None:
        now = self.clock()
        store = self.store
        await store.promote_due(now)
        await store.release_lapsed(now)  # claims nobody acted on go back to the list
        for cb in await store.expire(now, timedelta(seconds=self.settings.max_age)):
            self.counters.expired += 1
            if self._unverified(cb):
                continue
            self.send_text(
                cb.number,
                "Frontdesk: we are sorry, we could not call you back in time. Self-service is open 24 hours: "
                "https://example.com/help",
                "callback",
            )
        self.forecast.note_due(await store.due(now, limit=1000))
        await self._warn_at_risk(now)
        await self._take_stock(now)
        self.counters.dispatch_paused = self.queues.outbound_paused
        if self.queues.outbound_paused:
            return  # R15: in a surge every agent is on inbound
        for queue in sorted(self.forecast.due_waiting):
            agent = self._free_agent(queue)
            if agent is None:
                continue
            try:
                claimed = await store.claim_next(agent=agent, now=now, queue=queue)
            except Conflict:
                continue
            if claimed is None:
                continue
            try:
                await self.click_to_call(claimed, agent)
            except DialError as exc:
                log.info("callback %s not placed with %s: %s", claimed.id, agent, exc)
                try:
                    await store.release(claimed.id, agent=agent, now=self.clock())
                except (Conflict, NotFound):
                    pass

    def _free_agent(self, queue: str) -> str | None:
        """A ready, registered agent of ``queue`` to give a callback, if inbound keeps its share."""
        engine = self.queues.engine
        snap = engine.snapshot().queues.get(queue)
        spec = engine.queues.get(queue)
        if snap is None or spec is None or snap.waiting > 0 or snap.idle <= self.settings.reserve_agents:
            return None
        now = self.loop.time()
        ready = [
            a
            for a in engine.agents.values()
            if a.state is AgentState.READY
            and a.spec.can_take(spec.skills)
            and a.id not in self.jobs
            and self.ua.registrar.lookup(a.id, now)
        ]
        if not ready:
            return None
        return min(ready, key=lambda a: (a.idle_since, a.id)).id

    async def _take_stock(self, now: datetime) -> None:
        """The list's numbers for the metrics: by state, oldest waiting, promises at risk and missed."""
        c = self.counters
        by_state = await self.store.counts_by_state()
        c.by_state = {state: by_state.get(state, 0) for state in STATES}
        c.oldest_waiting = await self.store.oldest_waiting_age(now) or 0.0
        waiting = await self.store.list(states=list(WAITING_STATES), limit=100_000)
        at_risk = 0
        ahead: dict[str, int] = {}
        for cb in sorted(waiting, key=lambda cb: (cb.arrived_at, cb.id)):
            n = ahead.get(cb.queue, 0)
            ahead[cb.queue] = n + 1
            start = self.forecast.start(cb, n, now)
            if start is None or start > cb.promised_by:
                at_risk += 1
            if cb.promised_by < now and cb.id not in c.missed_ids:
                c.missed_ids.add(cb.id)  # the promise is broken: counted once
                c.promises_missed += 1
        c.at_risk = at_risk

    async def _warn_at_risk(self, now: datetime) -> None:
        """R10: before a promise is broken, tell the caller and point to self-service."""
        position: dict[str, int] = {}

        def forecast_start(cb: Callback) -> datetime:
            ahead = position.get(cb.queue, 0)
            position[cb.queue] = ahead + 1
            return self.forecast.start(cb, ahead, now) or now + NEVER

        for cb in await self.store.at_risk(now, forecast_start):
            await self.store.mark_warned(cb.id)
            self.counters.promises_warned += 1
            if self._unverified(cb):
                continue
            self.send_text(
                cb.number,
                "Frontdesk: we are very busy and may call you back later than we said. "
                "Many questions are answered at once by self-service: https://example.com/help",
                "callback",
            )


__all__ = ["CallbackDesk", "DialError", "Leg"]
