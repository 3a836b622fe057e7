"""The callers of a simulated day: when they call, what they need, how long they hold on, whether they call again.

Arrivals are piecewise-constant Poisson sources (or a script of calls); a
caller walks the IVR (a notice, a hot key or self-service may take them off),
joins a queue with the tier and urgent mark of their group (as
``ivr.settings.queues.tier_of``), hangs up when their patience runs out, and
may redial after an abandon, a declined callback offer or peak shaving. The
agents' phones are here too: an agent answers ``ring_delay`` after being rung,
unless the ring was cancelled meanwhile (as the live server drops a late
answer).
"""

from __future__ import annotations

import math

from queueing.events import AgentAnswered, CallArrived, CallEnded, CallerHungUp, Connect, Overflow, RingAgent
from sim.callbacks import SimulatedDesk
from sim.plan import ScriptedCall
from sim.world import Draws, Kind, World


class SimulatedCall:
    """One call of one caller (a redial is a new SimulatedCall with the same ``person``)."""

    __slots__ = ("arrived", "attempt", "call_id", "gone", "group", "handle", "person", "queue", "talking")

    def __init__(
        self, call_id: str, person: int, attempt: int, queue: str, group: str | None, handle: float, arrived: float
    ) -> None:
        self.call_id = call_id
        self.person = person
        self.attempt = attempt
        self.queue = queue
        self.group = group
        self.handle = handle
        self.arrived = arrived
        self.talking = False
        self.gone = False


class Customers:
    def __init__(self, world: World, desk: SimulatedDesk, draws: Draws) -> None:
        plan = world.plan
        self.world = world
        self.desk = desk
        self._r_arrive = draws.arrive
        self._r_caller = draws.caller
        self._r_agent = draws.agent
        self._r_choice = draws.choice
        self._handle = draws.handle
        self._ring_delay = draws.ring_delay
        self.calls = 0  # call ids handed out
        self._next_person = 0
        self.callers: dict[str, SimulatedCall] = {}
        self.rings: dict[tuple[str, str], int] = {}  # (agent, call) -> the ring's token
        self._ring_token = 0
        self._patience = plan.patience.sampler()
        self._redial_delay = plan.redial.delay.sampler()
        self._mix = _cumulative(plan.queue_mix)
        self._groups = _cumulative(plan.group_shares)
        self._group_total = sum(s for _, s in plan.group_shares)
        self._tiers = plan.tiers
        self._lowest = {q.name: min(q.tiers, key=lambda t: t.priority).name for q in plan.model.queues}
        self._source_step = [0] * len(plan.sources)

    # ------------------------------------------------------------- arrivals

    def schedule_arrival(self, index: int, t: float) -> None:
        """The next arrival of a piecewise-constant Poisson source after ``t`` (memoryless across steps)."""
        steps = self.world.plan.sources[index].steps
        i = self._source_step[index]
        rng = self._r_arrive
        while i < len(steps):
            step = steps[i]
            if t < step.start:
                t = step.start
            if step.rate > 0:
                nxt = t + rng.expovariate(step.rate)
                if nxt < step.end:
                    self._source_step[index] = i
                    self.world.push(nxt, Kind.ARRIVAL, index)
                    return
            t = step.end
            i += 1
        self._source_step[index] = i

    def on_arrival(self, index: int) -> None:
        world = self.world
        source = world.plan.sources[index]
        self.schedule_arrival(index, world.now)
        rng = self._r_caller
        group = source.group
        if group is None and self._groups:
            u = rng.random()
            if u < self._group_total:
                group = _pick(self._groups, u)
        queue = source.queue or (_pick(self._mix, rng.random()) if len(self._mix) > 1 else self._mix[0][1])
        self._next_person += 1
        world.counts["calls"] += 1
        if source.notice_resolves and self._r_choice.random() < source.notice_resolves:
            world.counts["diverted_notice"] += 1
            return
        self._enter(self._next_person, 1, queue, group)

    def on_script(self, call: ScriptedCall) -> None:
        self._next_person += 1
        self.world.counts["calls"] += 1
        self._enter(self._next_person, 1, call.queue, call.group, handle=call.handle, patience=call.patience)

    def _enter(
        self,
        person: int,
        attempt: int,
        queue: str,
        group: str | None,
        *,
        handle: float | None = None,
        patience: float | None = None,
    ) -> None:
        """A caller walks the IVR (hot key, self-service) and joins ``queue``."""
        world = self.world
        div = world.plan.diversion
        if (div.hotkey or div.self_service) and (div.when == "always" or world.engine.surge):
            u = self._r_choice.random()
            if u < div.hotkey:
                world.counts["diverted_hotkey"] += 1
                return
            if u < div.hotkey + div.self_service:
                world.counts["diverted_self_service"] += 1
                return
        rng = self._r_caller
        if handle is None:
            handle = self._handle[queue](rng)
        if patience is None:
            patience = self._patience(rng)
        self.calls += 1
        call_id = str(self.calls)
        now = world.now
        caller = SimulatedCall(call_id, person, attempt, queue, group, handle, now)
        self.callers[call_id] = caller
        tier, urgent = self._tiers.get((queue, group)) or (self._lowest[queue], False)
        if patience != math.inf:
            world.push(now + patience, Kind.HANGUP, caller)
        world.feed(CallArrived(call_id=call_id, queue=queue, tier=tier, urgent=urgent, now=now))

    # ------------------------------------------------------ the engine's decisions

    def ring(self, d: RingAgent) -> None:
        self._ring_token += 1
        self.rings[(d.agent, d.call)] = self._ring_token
        world = self.world
        p = world.plan.answer_probability
        if p < 1.0 and self._r_agent.random() >= p:
            return  # the phone rings until the engine's ring timeout
        world.push(world.now + self._ring_delay(self._r_agent), Kind.ANSWER, (d.agent, d.call, self._ring_token))

    def connect(self, d: Connect) -> None:
        caller = self.callers.get(d.call)
        if caller is None:
            return
        caller.talking = True
        self.world.push(self.world.now + caller.handle, Kind.END, caller)
        self.desk.reached_agent(caller.person)

    def overflow(self, d: Overflow) -> None:
        caller = self.callers.pop(d.call, None)
        if caller is None:
            return
        caller.gone = True
        if d.target in ("callback", "message"):
            cb = self.world.plan.callbacks
            if cb is not None and self._r_choice.random() < cb.take_up:
                self.desk.book(caller.person, caller.queue, caller.arrived)
                if cb.call_again and self._r_choice.random() < cb.call_again:
                    self._redial(caller)  # booked, and calls again all the same (R10 closes it if they get through)
            else:
                self._maybe_redial(caller, "declined")
        elif d.target == "peak_shaving":
            self._maybe_redial(caller, "peak_shaving")

    # ------------------------------------------------------------ their events

    def on_answer(self, payload: tuple[str, str, int]) -> None:
        agent, call, token = payload
        if self.rings.get((agent, call)) != token:
            return  # cancelled meanwhile: the live server drops a late answer too
        del self.rings[(agent, call)]
        self.world.feed(AgentAnswered(agent=agent, call=call, now=self.world.now))

    def on_end(self, caller: SimulatedCall) -> None:
        self.callers.pop(caller.call_id, None)
        caller.gone = True
        self.world.feed(CallEnded(call=caller.call_id, now=self.world.now))

    def on_hangup(self, caller: SimulatedCall) -> None:
        if caller.talking or caller.gone:
            return
        self.callers.pop(caller.call_id, None)
        caller.gone = True
        self.world.feed(CallerHungUp(call=caller.call_id, now=self.world.now))
        self._maybe_redial(caller, "abandoned")

    def _maybe_redial(self, caller: SimulatedCall, why: str) -> None:
        redial = self.world.plan.redial
        if not redial.probability or why not in redial.after or caller.attempt >= redial.max_attempts:
            return
        if self._r_choice.random() < redial.probability:
            self._redial(caller)

    def _redial(self, caller: SimulatedCall) -> None:
        if caller.attempt < self.world.plan.redial.max_attempts:
            self.world.push(self.world.now + self._redial_delay(self._r_choice), Kind.REDIAL, caller)

    def on_redial(self, caller: SimulatedCall) -> None:
        self.world.counts["calls"] += 1
        self.world.counts["redials"] += 1
        self._enter(caller.person, caller.attempt + 1, caller.queue, caller.group)


def _cumulative(pairs: tuple[tuple[str, float], ...]) -> list[tuple[float, str]]:
    out: list[tuple[float, str]] = []
    total = 0.0
    for name, share in pairs:
        total += share
        out.append((total, name))
    return out


def _pick(cumulative: list[tuple[float, str]], u: float) -> str:
    for edge, name in cumulative:
        if u < edge:
            return name
    return cumulative[-1][1]
