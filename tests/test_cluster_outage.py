"""Redis down or restarted empty (docs/cluster.md): nodes go degraded, decide alone, then join up again.

The rebuild itself is pure (Coordinator): callers of two nodes merge in
arrival order, talking pairs stay talking, and only the last step makes
offers. The rest runs ClusterLogs against a real redis-server that is
killed and started again empty on its port, or paused (SIGSTOP) and resumed
with its data.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from support.redis import RedisServer, cluster_model, cluster_settings

from ivr.cluster.coordinator import Applied, ClusterEvent, Coordinator, Isolated, PhoneBindings, Rebuild
from ivr.cluster.log import ClusterLog
from ivr.web.clustermetrics import ClusterCollector
from queueing.agents import AgentState
from queueing.events import (
    AgentAnswered,
    AgentLoggedIn,
    AgentNotReady,
    AgentReady,
    CallArrived,
    Event,
    RingAgent,
)

PEER = ("udp", "127.0.0.1", 5062)


def arrive(call: str, at: float) -> CallArrived:
    return CallArrived(call_id=call, queue="sales", tier="ordinary", now=at)


def bind(node: str, agent: str, at: float) -> PhoneBindings:
    return PhoneBindings(node=node, agent=agent, bindings=((f"sip:{agent}@127.0.0.1", PEER, at + 3600),), now=at)


def rings(applied: list[Applied]) -> list[tuple[str | None, str, str]]:
    return [
        (r.node, r.decision.agent, r.decision.call) for a in applied for r in a.routed if type(r.decision) is RingAgent
    ]


# ------------------------------------------------------------ the rebuild, pure


def test_two_nodes_callers_merge_in_arrival_order_and_talking_pairs_stay() -> None:
    model = cluster_model(agents=3)
    a, b = Coordinator(model), Coordinator(model)
    for c in (a, b):  # the shared history: a1 bound on A talks with A's caller; a2, a3 bound on B
        c.apply("A", bind("A", "a1", 1.0))
        c.apply("B", bind("B", "a2", 1.0))
        c.apply("B", bind("B", "a3", 1.0))
        c.apply("B", AgentNotReady(agent="a2", reason="lunch", now=1.5))
        c.apply("B", AgentNotReady(agent="a3", reason="lunch", now=1.5))
        c.apply("A", arrive("A-0", 2.0))
        c.apply("A", AgentAnswered(agent="a1", call="A-0", now=2.5))
    assert a.engine.agents["a1"].state is AgentState.TALKING
    a.apply("A", Isolated(node="A", now=3.0))  # Redis gone: each decides alone
    b.apply("B", Isolated(node="B", now=3.0))
    for call, at in (("A-1", 10.0), ("A-2", 30.0)):
        a.apply("A", arrive(call, at))
    for call, at in (("B-1", 20.0), ("B-2", 40.0)):
        b.apply("B", arrive(call, at))
    assert set(a.engine.calls) == {"A-0", "A-1", "A-2"} and set(b.engine.calls) == {"B-1", "B-2"}
    parts = (b.part_of("B"), a.part_of("A"))
    rebuilt = [Coordinator(model) for _ in range(2)]
    results = [r.apply("A", Rebuild(generation=1, parts=parts, now=50.0)) for r in rebuilt]
    assert results[0] == results[1]
    engine = rebuilt[0].engine
    assert [engine.position(c) for c in ("A-1", "B-1", "A-2", "B-2")] == [1, 2, 3, 4]
    assert engine.agents["a1"].state is AgentState.TALKING and engine.agents["a1"].call == "A-0"
    assert engine.agents["a2"].state is AgentState.NOT_READY and engine.agents["a2"].reason == "lunch"
    assert rings(results) == []  # nobody ready: rebuilding offers nothing, and the talk is not offered again
    assert {c: rebuilt[0].owner(c) for c in engine.calls} == {
        "A-0": "A",
        "A-1": "A",
        "A-2": "A",
        "B-1": "B",
        "B-2": "B",
    }
    assert rebuilt[0].lookup("a2", 50.0) == [("sip:a2@127.0.0.1", PEER)]
    offered = rebuilt[0].apply("B", AgentReady(agent="a2", now=51.0))
    assert rings([offered]) == [("A", "a2", "A-1")]  # the longest waiting caller, rung by its own node


def test_a_ringing_caller_counts_as_waiting_and_its_agent_as_ready() -> None:
    model = cluster_model(agents=2)
    c = Coordinator(model)
    c.apply("A", bind("A", "a1", 1.0))
    c.apply("A", AgentNotReady(agent="a1", reason="x", now=1.0))
    c.apply("A", arrive("A-1", 2.0))
    c.apply("A", bind("A", "a2", 3.0))  # a2 logs in and is rung for A-1
    assert c.engine.agents["a2"].state is AgentState.RINGING
    rebuilt = Coordinator(model)
    out = rebuilt.apply("A", Rebuild(generation=1, parts=(c.part_of("A"),), now=10.0))
    assert rings([out]) == [("A", "a2", "A-1")]  # offered anew, once, after the rebuild
    assert rebuilt.engine.agents["a1"].state is AgentState.NOT_READY


# ------------------------------------------------------------ against redis-server


class OutageNode:
    """A ClusterLog recording every decision routed to it (local ones too, while degraded)."""

    def __init__(self, url: str, node: str) -> None:
        model = cluster_model(agents=3)
        self.applied: list[tuple[str, str, Event | ClusterEvent, Applied]] = []
        self.log = ClusterLog(cluster_settings(url, node), lambda: Coordinator(model), self._on_applied)

    def _on_applied(self, entry: str, origin: str, event: Event | ClusterEvent, applied: Applied) -> None:
        self.applied.append((entry, origin, event, applied))

    def rings(self) -> list[tuple[str, str]]:
        me = self.log.node
        return [
            (r.decision.agent, r.decision.call)
            for *_, a in self.applied
            for r in a.routed
            if r.node == me and type(r.decision) is RingAgent
        ]


async def until(what: str, check: Callable[[], Any], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def gauge(log: ClusterLog, name: str) -> float:
    for family in ClusterCollector(log).collect():
        if family.name == name:
            return float(family.samples[0].value)
    raise AssertionError(f"no {name}")


async def two_nodes_with_agents(url: str) -> tuple[OutageNode, OutageNode]:
    """A and B; a1 bound on A, a2 on B, both not ready (callers wait); a3 never logged in."""
    a, b = OutageNode(url, "A"), OutageNode(url, "B")
    await a.log.start()
    await b.log.start()
    now = time.time()
    await a.log.request(bind("A", "a1", now))
    await b.log.request(bind("B", "a2", now))
    await a.log.request(AgentNotReady(agent="a1", reason="x", now=time.time()))
    await b.log.request(AgentNotReady(agent="a2", reason="x", now=time.time()))
    await until("both applied everything", lambda: a.log.last_id == b.log.last_id)
    return a, b


async def degraded_then_back(a: OutageNode, b: OutageNode, lose: Callable[[], None], back: Callable[[], None]) -> None:
    """Redis goes; both go degraded and serve their own; four callers (A, B, A, B); Redis comes back; both rejoin."""
    lose()
    await until("both degraded", lambda: a.log.degraded and b.log.degraded)
    assert gauge(a.log, "frontdesk_cluster_degraded") == 1
    # while degraded, a change of an agent's state is decided at once, on this node
    started = time.monotonic()
    result = await a.log.request(AgentReady(agent="a1", now=time.time()))
    assert result.error is None and time.monotonic() - started < 0.5
    a.log.submit(arrive("A-1", time.time()))
    await until("A rings its own agent for its own caller", lambda: ("a1", "A-1") in a.rings())
    assert a.log.coordinator.engine.agents["a1"].state is AgentState.RINGING
    a.log.submit(AgentAnswered(agent="a1", call="A-1", now=time.time()))  # a1 talks with A-1 across the switch
    for call, node in (("A-2", a), ("B-2", b), ("A-3", a), ("B-3", b)):
        node.log.submit(arrive(call, time.time()))
        await asyncio.sleep(0.01)
    assert set(b.log.coordinator.engine.calls) == {"B-2", "B-3"}  # B knows only its own
    assert b.rings() == []  # a2 is not ready: B's callers wait
    rings_before = {n.log.node: len(n.rings()) for n in (a, b)}
    back()
    await until("both rejoined", lambda: a.log.stats.rejoins >= 1 and b.log.stats.rejoins >= 1, timeout=20)
    await until("both caught up", lambda: a.log.last_id == b.log.last_id)
    assert not a.log.degraded and not b.log.degraded
    assert gauge(a.log, "frontdesk_cluster_degraded") == 0
    assert a.log.coordinator.generation == b.log.coordinator.generation >= 1
    for n in (a, b):
        engine = n.log.coordinator.engine
        assert [engine.position(c) for c in ("A-2", "B-2", "A-3", "B-3")] == [1, 2, 3, 4], n.log.node
        assert engine.agents["a1"].state is AgentState.TALKING and engine.agents["a1"].call == "A-1"
    assert {n.log.node: len(n.rings()) for n in (a, b)} == rings_before  # the switch offered nobody again
    # the line decides as one again: B's agent gets A's longest waiting caller, rung by A
    await b.log.request(AgentReady(agent="a2", now=time.time()))
    await until("A rings a2 for A-2", lambda: ("a2", "A-2") in a.rings())
    await until("B applied it", lambda: b.log.last_id == a.log.last_id)
    assert ("a2", "A-2") not in b.rings()
    offered = [d for n in (a, b) for d in n.rings()]
    assert len(offered) == len(set(offered))  # no caller offered twice to one agent


async def test_redis_killed_then_restarted_empty(redis_server: RedisServer) -> None:
    a, b = await two_nodes_with_agents(redis_server.url)
    try:
        await degraded_then_back(a, b, redis_server.kill, redis_server.start)
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            assert await client.exists("test:generation") == 1  # refilled from the nodes
            assert await client.xlen("test:log") >= 1
        finally:
            await client.aclose()
        assert a.log.stats.degraded_periods == b.log.stats.degraded_periods == 1
        assert a.log.stats.generations_started + b.log.stats.generations_started == 1
        # a node that starts now joins the rebuilt line
        c = OutageNode(redis_server.url, "C")
        await c.log.start()
        try:
            assert c.log.coordinator.engine.position("B-2") == a.log.coordinator.engine.position("B-2")
        finally:
            await c.log.stop()
    finally:
        await a.log.stop()
        await b.log.stop()


async def test_redis_paused_then_back_with_its_data(redis_server: RedisServer) -> None:
    a, b = await two_nodes_with_agents(redis_server.url)
    assert redis_server.proc is not None
    pid = redis_server.proc.pid
    try:
        await degraded_then_back(a, b, lambda: os.kill(pid, signal.SIGSTOP), lambda: os.kill(pid, signal.SIGCONT))
    finally:
        os.kill(pid, signal.SIGCONT)
        await a.log.stop()
        await b.log.stop()


async def test_a_log_that_went_backwards_starts_a_new_generation(redis_server: RedisServer) -> None:
    a, b = await two_nodes_with_agents(redis_server.url)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await a.log.request(arrive("A-1", time.time()))
        await b.log.request(arrive("B-1", time.time()))
        await until("both caught up", lambda: a.log.last_id == b.log.last_id)
        newest = await client.xrevrange("test:log", count=2)
        await client.xdel("test:log", newest[0][0])  # as a failover that lost the last write
        await until("both rejoined", lambda: a.log.stats.rejoins >= 1 and b.log.stats.rejoins >= 1)
        await until("both caught up", lambda: a.log.last_id == b.log.last_id)
        assert a.log.stats.degraded_periods == 0
        for n in (a, b):
            engine = n.log.coordinator.engine
            assert [engine.position(c) for c in ("A-1", "B-1")] == [1, 2], n.log.node
    finally:
        await client.aclose()
        await a.log.stop()
        await b.log.stop()


async def test_a_login_while_degraded_is_kept_after_the_rejoin(redis_server: RedisServer) -> None:
    a, b = await two_nodes_with_agents(redis_server.url)
    try:
        redis_server.kill()
        await until("A degraded", lambda: a.log.degraded)
        await a.log.request(AgentLoggedIn(agent="a3", now=time.time()))  # no phone: stays with nobody's part
        await a.log.request(AgentReady(agent="a1", now=time.time()))
        redis_server.start()
        await until("A rejoined", lambda: a.log.stats.rejoins >= 1 and b.log.stats.rejoins >= 1, timeout=20)
        await until("both caught up", lambda: a.log.last_id == b.log.last_id)
        for n in (a, b):
            assert n.log.coordinator.engine.agents["a1"].state is AgentState.READY
    finally:
        await a.log.stop()
        await b.log.stop()
