"""One node's replica of the cluster's decider: the queueing engine fed the replicated log.

Theory of operation
-------------------
Every node of a cluster appends its queue events to one log and applies the
whole log, in the log's one order, to its own ``Coordinator``. The
coordinator wraps the pure ``queueing.engine.Engine`` and adds what a cluster
needs on top of it, all of it as deterministic as the engine itself (no
clock, no randomness, no I/O), so every replica fed the same log makes the
same decisions in the same order:

- **time**: an entry carries its sender's clock; ``apply`` clamps it so that
  time never goes backwards (``max(event.now, now so far)``);
- **routing**: each decision about a caller goes to the node that owns the
  caller (the origin of its ``CallArrived``: its media lives there); the
  surge switch and the outbound pause go to every node (``node=None``);
  ``SetTimer`` is dropped (``next_timer()`` covers it);
- **phones**: each node publishes the phone bindings it holds per agent
  (``PhoneBindings``); an agent is registered while any unexpired binding
  exists on any node. The first binding, cluster-wide, logs a logged-out
  agent in; the last one gone (replaced by none, or expired) logs the agent
  out, or not ready while talking (as ``LiveQueues.on_registration`` does
  on one node);
- **nodes**: ``NodeLost`` and ``NodeJoined`` take every caller the node owns
  out of the engine (its media died with it), waiting callers first, then
  ringing, then talking ones, each in arrival order, so that no agent is
  offered a caller of the lost node while the others leave.

Due phone bindings expire at the first entry applied at or after their
``expires_at`` (the timekeeper appends a ``TimerFired`` when ``next_timer()``
is due, which includes the earliest expiry); the agent leaves at the
binding's own time when that is still ahead of the engine's.

Two more cluster events carry the cluster through a Redis outage
(docs/cluster.md, "Redis down or restarted empty"): ``Isolated`` (applied
locally by a node that goes degraded) takes out every other node's callers
and phones, so the replica decides for this node's own callers and agents as
a single node would; ``Rebuild`` (one entry of a new generation) replaces the
replica by one built from every node's ``NodePart`` (its callers with their
original arrival times, its agents' states and phones): talking pairs first,
then the waiting callers in arrival order, then the ready agents, so that the
line is in arrival order again and only the last step makes offers.

The module is long because the rebuild has to replay callers and agents
into the engine through the same private steps (``_feed``, the phones'
tables, the owners) that ``apply`` uses; apart, those would be public.

A coordinator pickles as it is (a checkpoint of the log: the engine and
its model pickle themselves, compiled or not) and a round trip gives a
replica that decides identically; ``fingerprint()`` names the model it was
built from, and ``model_differences`` says how two models differ.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from queueing.agents import AgentState
from queueing.engine import Engine
from queueing.events import (
    AgentAnswered,
    AgentLoggedIn,
    AgentLoggedOut,
    AgentNotReady,
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
    TimerFired,
)
from queueing.line import QueuedCallState
from queueing.model import Model

Peer = tuple[str, str, int]  # (transport, host, port) a phone is reached at
Binding = tuple[str, Peer, float]  # (contact URI, peer, expires_at)

UNREGISTERED = "unregistered"  # the not-ready reason of an agent whose last phone went while talking
ISOLATED = "talked through another node"  # not-ready reason: the agent's talk lived on a node out of reach


# ------------------------------------------------------------ cluster events


@dataclass(frozen=True, slots=True)
class PhoneBindings:
    """Node ``node`` now holds exactly these bindings of ``agent`` (empty: none)."""

    node: str
    agent: str
    bindings: tuple[Binding, ...]
    now: float


@dataclass(frozen=True, slots=True)
class NodeLost:
    """Node ``node`` stopped heartbeating: its callers leave the line."""

    node: str
    now: float


@dataclass(frozen=True, slots=True)
class NodeJoined:
    """Node ``node`` (re)started: callers a previous run of it owned leave the line."""

    node: str
    now: float


@dataclass(frozen=True, slots=True)
class Isolated:
    """Node ``node`` lost Redis and decides alone: every other node's callers and phones leave its replica."""

    node: str
    now: float


# (call id, queue, tier, extra skills, urgent, arrived at, the agent talking with it or None)
CallerPart = tuple[str, str, str, tuple[str, ...], bool, float, str | None]
# (contact, peer, expires_at, registered_at)
BoundPart = tuple[str, Peer, float, float]
# (agent, state, not-ready reason or None, its phones on this node)
AgentPart = tuple[str, str, str | None, tuple[BoundPart, ...]]


@dataclass(frozen=True, slots=True)
class NodePart:
    """What one node contributes to a new generation: its callers and the agents whose phones it holds."""

    node: str
    callers: tuple[CallerPart, ...]
    agents: tuple[AgentPart, ...]


@dataclass(frozen=True, slots=True)
class Rebuild:
    """Generation ``generation`` starts: every replica is rebuilt from ``parts`` (one per node that took part)."""

    generation: int
    parts: tuple[NodePart, ...]
    now: float


ClusterEvent = PhoneBindings | NodeLost | NodeJoined | Isolated | Rebuild


class Routed(NamedTuple):
    node: str | None  # the node that carries it out; None: every node (SurgeChanged, Pause/ResumeOutbound)
    decision: Decision


class Applied(NamedTuple):
    routed: list[Routed]
    error: str | None  # the PolicyError's text when the engine refused the event (replicas agree)


_TO_OWNER = frozenset({RingAgent, CancelRing, Connect, Overflow, PlayAnnouncement})
_TO_ALL = frozenset({SurgeChanged, PauseOutbound, ResumeOutbound})


@dataclass(frozen=True, slots=True)
class _Bound:
    """A binding as the replica keeps it: ``registered_at`` orders lookups (newest first)."""

    contact: str
    peer: Peer
    expires_at: float
    registered_at: float


# ------------------------------------------------------------ the replica


class Coordinator:
    """One node's replica: apply every log entry in the log's order; read the engine, owners and phones."""

    def __init__(self, model: Model) -> None:
        self.engine = Engine(model)  # read-only for everyone else: change it only through apply()
        self.now: float | None = None  # the latest (clamped) time applied
        self.lost: dict[tuple[str, str], int] = {}  # (node, queue) -> callers who left the line with their node
        self._owner: dict[str, str] = {}  # call id -> node (in arrival order)
        self._phones: dict[str, dict[str, tuple[_Bound, ...]]] = {}  # agent -> node -> its bindings there
        self._expiry: list[tuple[float, str, str]] = []  # heap of (expires_at, agent, node); lazily cleaned
        self.generation = 0  # the latest Rebuild applied (0: none yet)

    # ---------------------------------------------------------------- public

    def apply(self, origin: str, event: Event | ClusterEvent) -> Applied:
        """Apply one log entry appended by node ``origin``; the decisions, each routed to the node carrying it out."""
        now = self._clamp(event.now)
        out: list[Routed] = []
        self._expire(now, out)
        error: str | None = None
        if isinstance(event, PhoneBindings):
            self._publish(event.node, event.agent, event.bindings, now, out)
        elif isinstance(event, (NodeLost, NodeJoined)):
            self._drop_node(event.node, now, out)
        elif isinstance(event, Isolated):
            self._isolate(event.node, now, out)
        elif isinstance(event, Rebuild):
            if event.generation > self.generation:
                self._rebuild(event, now, out)
        else:
            if event.now != now:
                event = dataclasses.replace(event, now=now)
            error = self._feed(origin, event, out)
        return Applied(out, error)

    def next_timer(self) -> float | None:
        """When the timekeeper must append a ``TimerFired`` at the latest: the engine's timer or a phone's expiry."""
        engine_at = self.engine.next_timer()
        heap = self._expiry
        while heap:
            at, agent, node = heap[0]
            if any(b.expires_at == at for b in self._phones.get(agent, {}).get(node, ())):
                return at if engine_at is None else min(at, engine_at)
            heapq.heappop(heap)  # stale: that binding was replaced or is gone
        return engine_at

    def owner(self, call_id: str) -> str | None:
        """The node a caller's media lives on, while the engine holds the caller."""
        return self._owner.get(call_id)

    def calls_of(self, node: str) -> list[str]:
        """The callers ``node`` owns, in arrival order."""
        return [call for call, owner in self._owner.items() if owner == node]

    def lookup(self, agent: str, now: float) -> list[tuple[str, Peer]]:
        """The agent's phones unexpired at ``now`` on every node, (contact, peer), most recently registered first."""
        found = [(b, node) for node, bound in self._phones.get(agent, {}).items() for b in bound if b.expires_at > now]
        found.sort(key=lambda item: (-item[0].registered_at, item[1]))  # stable: a node's own order within a time
        return [(b.contact, b.peer) for b, _ in found]

    def registered(self, agent: str, now: float) -> bool:
        """Whether any node holds an unexpired binding of ``agent`` at ``now``."""
        return any(b.expires_at > now for bound in self._phones.get(agent, {}).values() for b in bound)

    def part_of(self, node: str) -> NodePart:
        """``node``'s contribution to a new generation, read from this replica.

        A ringing caller counts as waiting and a ringing agent as ready (the
        node cancels its rings before it contributes); an agent's phones are
        those ``node`` holds.
        """
        calls = self.engine.calls
        callers: list[CallerPart] = []
        for call_id in self.calls_of(node):
            call = calls.get(call_id)
            if call is None:
                continue
            talking = call.state is QueuedCallState.TALKING and len(call.agents) == 1
            agent = next(iter(call.agents)) if talking else None
            skills = tuple(sorted(call.extra_skills))
            callers.append((call.id, call.queue.name, call.tier, skills, call.urgent, call.arrived, agent))
        agents: list[AgentPart] = []
        for agent_id, per_node in sorted(self._phones.items()):
            bound = per_node.get(node)
            if not bound:
                continue
            a = self.engine.agents[agent_id]
            phones = tuple((b.contact, b.peer, b.expires_at, b.registered_at) for b in bound)
            agents.append((agent_id, a.state.value, a.reason, phones))
        return NodePart(node, tuple(callers), tuple(agents))

    def fingerprint(self) -> str:
        """A stable digest of the model (queues, agents, tiers, surge): replicas of one cluster share it."""
        return fingerprint(self.engine.model)

    # ---------------------------------------------------------------- time

    def _clamp(self, now: float) -> float:
        last = self.now
        if not math.isfinite(now):  # the wire refuses these; a caller in-process gets the time so far
            now = 0.0 if last is None else last
        elif last is not None and now < last:
            now = last
        self.now = now
        return now

    # ---------------------------------------------------------------- engine

    def _feed(self, origin: str, event: Event, out: list[Routed]) -> str | None:
        """Hand one event to the engine and route its decisions; the PolicyError's text when it refused."""
        engine = self.engine
        arriving = None
        if isinstance(event, CallArrived) and event.call_id not in engine.calls:
            arriving = event.call_id
            self._owner[arriving] = origin
        try:
            decisions = engine.handle(event)
        except PolicyError as exc:
            if arriving is not None:
                del self._owner[arriving]
            return str(exc)
        owners = self._owner
        gone: list[str] = []
        for d in decisions:
            kind = type(d)
            if kind in _TO_OWNER:
                call: str = d.call  # type: ignore[union-attr]
                out.append(Routed(owners.get(call, origin), d))
                if kind is Overflow:
                    gone.append(call)
            elif kind in _TO_ALL:
                out.append(Routed(None, d))
        if isinstance(event, (CallEnded, CallerHungUp)):
            gone.append(event.call)
        elif arriving is not None:
            gone.append(arriving)
        calls = engine.calls
        for call in gone:
            if call not in calls:
                owners.pop(call, None)
        if len(owners) != len(calls):  # a caller left without a decision naming it: forget every such one
            for call in [c for c in owners if c not in calls]:
                del owners[call]
        return None

    def _drop_node(self, node: str, now: float, out: list[Routed]) -> None:
        """Every caller ``node`` owns leaves: waiting ones, then ringing, then talking (each in arrival order)."""
        if not self.calls_of(node):
            return
        due = self.engine.next_timer()
        if due is not None and due <= now:  # timers first, so that the callers' states are those of ``now``
            self._feed(node, TimerFired(kind="tick", id="", now=now), out)
        calls = self.engine.calls
        owned = [calls[c] for c in self.calls_of(node) if c in calls]
        order = {QueuedCallState.WAITING: 0, QueuedCallState.RINGING: 1, QueuedCallState.TALKING: 2}
        owned.sort(key=lambda c: order[c.state])  # stable: arrival order within a state
        for call in owned:
            if call.id not in calls:
                continue
            if calls[call.id].state is QueuedCallState.TALKING:
                self._feed(node, CallEnded(call=call.id, now=now), out)
                continue
            key = (node, call.queue.name)
            self.lost[key] = self.lost.get(key, 0) + 1
            self._feed(node, CallerHungUp(call=call.id, now=now), out)

    def _isolate(self, node: str, now: float, out: list[Routed]) -> None:
        """Every other node's callers and phones leave; this node's agents talking with them go not ready."""
        others = sorted({o for o in self._owner.values() if o != node})
        elsewhere = {
            agent
            for agent, per_node in self._phones.items()
            if node in per_node
            for call_id in [self.engine.agents[agent].call]
            if call_id is not None and self._owner.get(call_id, node) != node
        }
        for other in others:
            self._drop_node(other, now, out)
        for agent in sorted(self._phones):
            for other in sorted(n for n in self._phones.get(agent, {}) if n != node):
                self._publish(other, agent, (), now, out)
        for agent in sorted(elsewhere):  # its talk went on through another node: this node cannot see it end
            if self.engine.agents[agent].state in (AgentState.WRAP_UP, AgentState.READY):
                self._feed("", AgentNotReady(agent=agent, reason=ISOLATED, now=now), out)

    def _rebuild(self, event: Rebuild, now: float, out: list[Routed]) -> None:
        """A fresh replica from the parts: talking pairs, not-ready agents, waiting callers, then the ready agents."""
        model = self.engine.model
        self.engine = Engine(model)
        self.now = now
        self.generation = event.generation
        self._owner = {}
        self._phones = {}
        self._expiry = []
        known = self.engine.agents
        callers: dict[str, tuple[str, CallerPart]] = {}
        for part in sorted(event.parts, key=lambda p: p.node):
            for caller in part.callers:
                if caller[1] in self.engine.queues:
                    callers.setdefault(caller[0], (part.node, caller))
        line = sorted(callers.values(), key=lambda nc: (nc[1][5], nc[0], nc[1][0]))  # arrival, node, call id
        states: dict[str, tuple[str, str | None]] = {}
        for part in sorted(event.parts, key=lambda p: p.node):
            for agent, state, reason, phones in part.agents:
                if agent not in known:
                    continue
                if states.get(agent, ("logged_out", None))[0] == "logged_out":
                    states[agent] = (state, reason)
                kept = tuple(_Bound(c, tuple(peer), exp, reg) for c, peer, exp, reg in phones if exp > now)  # type: ignore[arg-type]
                if kept:
                    self._phones.setdefault(agent, {})[part.node] = kept
                    for b in kept:
                        heapq.heappush(self._expiry, (b.expires_at, agent, part.node))
        start = min([c[5] for _, c in line if c[5] <= now], default=now)
        scratch: list[Routed] = []  # what rebuilding decides again: already carried out before
        paired: set[str] = set()
        for node, (call_id, queue, tier, skills, urgent, _, talker) in line:
            if talker is None or talker not in known or talker in paired:
                continue
            paired.add(talker)
            arrive = CallArrived(
                call_id=call_id, queue=queue, tier=tier, skills=frozenset(skills), urgent=urgent, now=start
            )
            self._feed(node, AgentLoggedIn(agent=talker, now=start), scratch)
            self._feed(node, arrive, scratch)
            self._feed(node, AgentAnswered(agent=talker, call=call_id, now=start), scratch)
            call = self.engine.calls.get(call_id)
            if call is None or call.state is not QueuedCallState.TALKING:  # the model would not pair them
                self._feed(node, CallerHungUp(call=call_id, now=start), scratch)
                if self.engine.agents[talker].state is AgentState.READY:
                    self._feed("", AgentLoggedOut(agent=talker, now=start), scratch)
                paired.discard(talker)
        for agent, (state, reason) in sorted(states.items()):
            if state == AgentState.NOT_READY.value and agent not in paired:
                self._feed("", AgentLoggedIn(agent=agent, now=start), scratch)
                self._feed("", AgentNotReady(agent=agent, reason=reason or "busy", now=start), scratch)
        waiting: list[Routed] = []
        for node, (call_id, queue, tier, skills, urgent, arrived, _) in line:
            if call_id in self.engine.calls:
                continue  # talking already
            at = min(max(arrived, start), now)
            arrive = CallArrived(
                call_id=call_id, queue=queue, tier=tier, skills=frozenset(skills), urgent=urgent, now=at
            )
            self._feed(node, arrive, waiting)
        out.extend(r for r in waiting if isinstance(r.decision, Overflow))  # a caller past a limit leaves now
        for agent, (state, _) in sorted(states.items()):
            if agent in paired or state in (AgentState.NOT_READY.value, AgentState.LOGGED_OUT.value):
                continue
            if self.engine.agents[agent].state is AgentState.LOGGED_OUT:
                self._feed("", AgentLoggedIn(agent=agent, now=now), out)
        if self.engine.now is not None and self.engine.now < now:
            self._feed("", TimerFired(kind="tick", id="", now=now), out)

    # ---------------------------------------------------------------- phones

    def _publish(self, node: str, agent: str, bindings: tuple[Binding, ...], now: float, out: list[Routed]) -> None:
        if agent not in self.engine.agents:
            return  # a phone of nobody the model knows
        per_node = self._phones.get(agent, {})
        before = bool(per_node)
        old = {b.contact: b for b in per_node.get(node, ())}
        kept: list[_Bound] = []
        seen: set[str] = set()
        for contact, peer, expires_at in bindings:
            if expires_at <= now or contact in seen:
                continue
            seen.add(contact)
            prev = old.get(contact)
            registered_at = prev.registered_at if prev is not None else now  # first registration of this contact
            kept.append(_Bound(contact, tuple(peer), expires_at, registered_at))  # type: ignore[arg-type]
            if prev is None or prev.expires_at != expires_at:
                heapq.heappush(self._expiry, (expires_at, agent, node))
        if kept:
            self._phones.setdefault(agent, per_node)[node] = tuple(kept)
        elif node in per_node:
            del per_node[node]
            if not per_node:
                del self._phones[agent]
        self._registration(agent, before, bool(kept) or agent in self._phones, now, out)

    def _expire(self, now: float, out: list[Routed]) -> None:
        """Drop the bindings whose time is up; agents left with none leave (at the expiry's time, if not past)."""
        heap = self._expiry
        while heap and heap[0][0] <= now:
            at, agent, node = heapq.heappop(heap)
            per_node = self._phones.get(agent)
            if per_node is None or node not in per_node:
                continue
            kept = tuple(b for b in per_node[node] if b.expires_at > now)
            if len(kept) == len(per_node[node]):
                continue  # stale entry
            if kept:
                per_node[node] = kept
                continue
            del per_node[node]
            if not per_node:
                del self._phones[agent]
                engine_now = self.engine.now
                self._registration(agent, True, False, at if engine_now is None else max(at, engine_now), out)

    def _registration(self, agent: str, before: bool, after: bool, now: float, out: list[Routed]) -> None:
        """First binding of an agent, cluster-wide: log in if logged out; last gone: log out (not ready if talking)."""
        if before == after:
            return
        state = self.engine.agents[agent].state
        event: Event
        if after:
            if state is not AgentState.LOGGED_OUT:
                return
            event = AgentLoggedIn(agent=agent, now=now)
        elif state is AgentState.LOGGED_OUT:
            return
        elif state is AgentState.TALKING:
            event = AgentNotReady(agent=agent, reason=UNREGISTERED, now=now)
        else:
            event = AgentLoggedOut(agent=agent, now=now)
        self._feed("", event, out)  # legal in the state checked above: no PolicyError to report


# ------------------------------------------------------------ the model's identity


def _canonical(value: object) -> object:
    """The model as plain JSON data: dataclasses by field, mappings by sorted key, floats by repr."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"__type__": type(value).__name__, **fields}
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (tuple, list)):
        return [_canonical(v) for v in value]
    if isinstance(value, float):
        return repr(value)
    return value


def fingerprint(model: Model) -> str:
    """A stable digest of ``model``: equal for equal models, whatever order their mappings were built in."""
    text = json.dumps(_canonical(model), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def model_differences(ours: Model, theirs: Model) -> list[str]:
    """How ``theirs`` (say, a checkpoint's) differs from ``ours``, as short sentences; empty when they agree."""
    found: list[str] = []
    for what, mine, other in (
        ("queue", {q.name: q for q in ours.queues}, {q.name: q for q in theirs.queues}),
        ("agent", {a.id: a for a in ours.agents}, {a.id: a for a in theirs.agents}),
    ):
        if only := sorted(set(mine) - set(other)):
            found.append(f"{what}s only here: {', '.join(only)}")
        if only := sorted(set(other) - set(mine)):
            found.append(f"{what}s only in the cluster: {', '.join(only)}")
        for name in sorted(set(mine) & set(other)):
            a, b = _canonical(mine[name]), _canonical(other[name])
            assert isinstance(a, dict) and isinstance(b, dict)
            if changed := sorted(k for k in a if a[k] != b.get(k)):
                found.append(f"{what} {name}: {', '.join(changed)} differ")
    surge, their_surge = _canonical(ours.surge), _canonical(theirs.surge)
    assert isinstance(surge, dict) and isinstance(their_surge, dict)
    if changed := sorted(k for k in surge if surge[k] != their_surge.get(k)):
        found.append(f"surge: {', '.join(changed)} differ")
    if not found and fingerprint(ours) != fingerprint(theirs):
        found.append("the order of queues or agents differs")
    return found


__all__ = [
    "UNREGISTERED",
    "Applied",
    "Binding",
    "ClusterEvent",
    "Coordinator",
    "Isolated",
    "NodeJoined",
    "NodeLost",
    "NodePart",
    "Peer",
    "PhoneBindings",
    "Rebuild",
    "Routed",
    "fingerprint",
    "model_differences",
]
