"""The simulated callback desk: bookings kept in the callers' arrival order, and the dispatcher's rounds.

As ``ivr/calls/dialer.py`` works them (docs/callbacks.md): one open callback
per caller; every ``dispatch_interval`` a round expires old bookings, counts
broken promises and, unless outbound is paused (R15), gives the first due
booking of each queue to a free agent of that queue when no inbound caller
waits there and inbound keeps its reserve of agents. A customer who does not
answer is tried again after the retry delay, in their old place, and fails
after the last attempt. A caller who gets through to an agent first closes
their booking (R10).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from queueing.agents import AgentState
from queueing.events import AgentNotReady, AgentReady
from queueing.ewt import ewt
from queueing.line import QueuedCallState
from sim.roster import Roster
from sim.world import Draws, Kind, World


@dataclass(slots=True)
class Booking:
    """A callback owed to a caller (docs/callbacks.md): kept in the caller's arrival order."""

    id: int
    person: int
    queue: str
    arrived: float  # the caller's place in the list
    booked: float
    promised_by: float
    missed: bool = False
    attempts: int = 0  # dial attempts made
    due: float = 0.0  # not dialled again before this (a retry after no answer)


class SimulatedDesk:
    def __init__(self, world: World, roster: Roster, jobs: dict[str, Booking], draws: Draws) -> None:
        """``jobs`` (agent -> callback in progress) is shared with ``roster``, which keeps those agents on."""
        self.world = world
        self.roster = roster
        self.jobs = jobs
        self._r_caller = draws.caller
        self._r_agent = draws.agent
        self._r_choice = draws.choice
        self._handle = draws.handle
        self._ring_delay = draws.ring_delay
        self.paused = False
        self.owed: dict[str, deque[Booking]] = {q.name: deque() for q in world.plan.model.queues}
        self._open: dict[int, Booking] = {}  # by person
        self._booking_id = 0
        self._round_armed = False

    @property
    def owed_count(self) -> int:
        return sum(len(d) for d in self.owed.values())

    def book(self, person: int, queue: str, arrived: float) -> None:
        world = self.world
        cb = world.plan.callbacks
        assert cb is not None
        if person in self._open:
            return  # one active callback per number and queue: the caller keeps the one they have
        snap = world.engine.snapshot().queues[queue]
        due = len(self.owed[queue])
        wait = ewt(snap.waiting + snap.ringing + due + 1, snap.serving, snap.idle, snap.aht)
        if not math.isfinite(wait):
            wait = cb.max_age
        self._booking_id += 1
        now = world.now
        booking = Booking(
            id=self._booking_id,
            person=person,
            queue=queue,
            arrived=arrived,
            booked=now,
            promised_by=now + wait + cb.promise_margin,
        )
        owed = self.owed[queue]
        owed.append(booking)
        if len(owed) > 1 and owed[-2].arrived > booking.arrived:  # keeps the caller's place (a redial joined later)
            self.owed[queue] = deque(sorted(owed, key=lambda b: (b.arrived, b.id)))
        self._open[person] = booking
        world.counts["callbacks_booked"] += 1
        self.arm_round()

    def reached_agent(self, person: int) -> None:
        """R10: the caller got through before their callback: it is closed."""
        booking = self._open.get(person)
        if booking is not None:
            self._close(booking)
            self.world.counts["callbacks_closed_reached_agent"] += 1

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.arm_round()

    def _close(self, booking: Booking) -> None:
        self._open.pop(booking.person, None)
        try:
            self.owed[booking.queue].remove(booking)
        except ValueError:
            pass

    def arm_round(self) -> None:
        cb = self.world.plan.callbacks
        if cb is not None and not self._round_armed and any(self.owed.values()):
            self._round_armed = True
            self.world.push(self.world.now + cb.dispatch_interval, Kind.CB_ROUND, None)

    def on_round(self, _: None) -> None:
        """One round of the dispatcher (ivr/calls/dialer.py): expire, count broken promises, dispatch."""
        world = self.world
        cb = world.plan.callbacks
        assert cb is not None
        self._round_armed = False
        now = world.now
        for owed in self.owed.values():
            for booking in list(owed):
                if now - booking.booked > cb.max_age:
                    self._close(booking)
                    world.counts["callbacks_expired"] += 1
                elif booking.promised_by < now and not booking.missed:
                    booking.missed = True
                    world.counts["promises_missed"] += 1
        if not self.paused:
            for queue in sorted(self.owed):
                due = next((b for b in self.owed[queue] if b.due <= now), None)
                if due is not None:
                    agent = self._free_agent(queue)
                    if agent is not None:
                        self._start(agent, due)
        self.arm_round()

    def _free_agent(self, queue: str) -> str | None:
        """A ready agent of ``queue`` for a callback, if no inbound caller waits there and inbound keeps its share."""
        engine = self.world.engine
        spec = engine.queues[queue]
        for call in engine.calls.values():
            if call.queue.name == queue and call.state is QueuedCallState.WAITING:
                return None
        leaving = self.roster.leaving
        ready = [
            a
            for a in engine.agents.values()
            if a.state is AgentState.READY and a.spec.can_take(spec.skills) and a.id not in leaving
        ]
        idle = sum(1 for a in engine.agents.values() if a.state is AgentState.READY and a.spec.can_take(spec.skills))
        callbacks = self.world.plan.callbacks
        assert callbacks is not None
        if idle <= callbacks.reserve_agents or not ready:
            return None
        return min(ready, key=lambda a: (a.idle_since, a.id)).id

    def _start(self, agent: str, booking: Booking) -> None:
        """The agent's phone rings, then the customer's: a talk, or a no-answer retried later (or failed)."""
        world = self.world
        cb = world.plan.callbacks
        assert cb is not None
        counts = world.counts
        self._close(booking)
        self.jobs[agent] = booking
        if booking.promised_by < world.now and not booking.missed:
            booking.missed = True
            counts["promises_missed"] += 1
        booking.attempts += 1
        world.feed(AgentNotReady(agent=agent, reason="callback", now=world.now))
        now = world.now
        ring = self._ring_delay(self._r_agent)
        if cb.customer_answers >= 1.0 or self._r_choice.random() < cb.customer_answers:
            counts["callbacks_served"] += 1
            world.push(now + ring + self._handle[booking.queue](self._r_caller), Kind.CB_END, agent)
            return
        counts["callback_no_answer"] += 1
        world.push(now + ring + cb.customer_ring, Kind.CB_END, agent)
        if booking.attempts >= cb.max_attempts:
            counts["callbacks_failed"] += 1
            return
        # due again after the delay, in its old place (the caller keeps their place in line)
        booking.due = now + ring + cb.customer_ring + cb.retry_delay
        owed = self.owed[booking.queue]
        owed.append(booking)
        if len(owed) > 1 and (owed[-2].arrived, owed[-2].id) > (booking.arrived, booking.id):
            self.owed[booking.queue] = deque(sorted(owed, key=lambda b: (b.arrived, b.id)))
        self._open[booking.person] = booking

    def on_end(self, agent: str) -> None:
        """The callback is over: the agent is ready again, or logs out if their shift ended meanwhile."""
        self.jobs.pop(agent, None)
        roster = self.roster
        if agent in roster.leaving:
            roster.settle_leavers()
        else:
            roster.returning.discard(agent)
            self.world.feed(AgentReady(agent=agent, now=self.world.now))
