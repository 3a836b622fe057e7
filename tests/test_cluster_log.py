"""ivr/cluster/log.py against a real redis-server: replicas agree, one timekeeper, takeovers, lost nodes, checkpoints.

Every test starts its own Redis (the ``redis_server`` fixture) and its nodes
with quick timings (heartbeat 0.2 s, node timeout and lease 0.6 s); nodes
that must die abruptly run in a process of their own and get SIGKILL.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from support.ports import free_port, release
from support.redis import RedisServer, cluster_model, cluster_settings, start_node

from ivr.cluster import log as cluster_log
from ivr.cluster.coordinator import Applied, ClusterEvent, Coordinator, NodeJoined, NodeLost
from ivr.cluster.log import ClusterLog, ClusterLogError
from ivr.cluster.wire import decode, encode
from ivr.web.clustermetrics import ClusterCollector
from queueing.events import (
    AgentLoggedIn,
    AgentReady,
    CallArrived,
    Event,
    Overflow,
    RingAgent,
    SurgeSwitch,
    TimerFired,
)
from queueing.model import Model

BEAT, TIMEOUT = 0.2, 0.6


class Node:
    """A ClusterLog with a record of every entry it applied live."""

    def __init__(self, url: str, node: str, model: Model | None = None, **settings: Any) -> None:
        chosen = model or cluster_model()
        self.entries: list[tuple[str, str, Event | ClusterEvent, Applied]] = []
        self.seen_at: dict[str, float] = {}  # entry id -> loop time it was applied here
        self.log = ClusterLog(cluster_settings(url, node, **settings), lambda: Coordinator(chosen), self._applied)

    def _applied(self, entry_id: str, origin: str, event: Event | ClusterEvent, result: Applied) -> None:
        self.entries.append((entry_id, origin, event, result))
        self.seen_at[entry_id] = time.monotonic()

    @property
    def ids(self) -> list[str]:
        return [e[0] for e in self.entries]

    def routed_here(self, kind: type) -> list[Any]:
        """Decisions of ``kind`` this node carries out."""
        me = self.log.node
        return [
            r.decision
            for e in self.entries
            for r in e[3].routed
            if r.node in (me, None) and isinstance(r.decision, kind)
        ]


def id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def after(node: Node, mark: str) -> list[tuple[str, str, Event | ClusterEvent, Applied]]:
    """The entries ``node`` applied after entry ``mark``."""
    return [e for e in node.entries if id_key(e[0]) > id_key(mark)]


def view(c: Coordinator) -> tuple[object, ...]:
    """Everything a replica decides from: equal views decide alike."""
    engine = c.engine
    return (
        engine.snapshot(),
        {cid: (call.state, call.queue.name, tuple(sorted(call.agents))) for cid, call in engine.calls.items()},
        {aid: (a.state, a.reason) for aid, a in engine.agents.items()},
        {cid: c.owner(cid) for cid in engine.calls},
        dict(c.lost),
        engine.next_timer(),
        c.now,
    )


async def eventually(what: str, check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``check`` (plain or async) until it gives something true; that."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)
    return result


async def started(*nodes: Node) -> tuple[Node, ...]:
    for n in nodes:
        await n.log.start()
    return nodes


async def stop_all(*nodes: Node) -> None:
    for n in nodes:
        await n.log.stop()


def arrival(call: str, queue: str = "sales") -> CallArrived:
    return CallArrived(call_id=call, queue=queue, tier="ordinary", now=time.time())


async def stream_entries(url: str, stream: str = "test:log") -> list[tuple[str, str, Any]]:
    client = aioredis.Redis.from_url(url)
    try:
        raw = await client.xrange(stream)
    finally:
        await client.aclose()
    return [(i.decode(), *decode(f)) for i, f in raw]


def timekeepers(*nodes: Node) -> list[str]:
    return [n.log.node for n in nodes if n.log.is_timekeeper]


# ------------------------------------------------------------ one order, identical replicas


async def test_replicas_see_one_order_and_agree(redis_server: RedisServer) -> None:
    a, b, c = await started(*(Node(redis_server.url, name) for name in ("A", "B", "C")))
    mark = c.log.last_id  # C's NodeJoined: all three apply everything after it live
    try:
        for agent in ("a1", "a2", "a3"):
            a.log.submit(AgentLoggedIn(agent=agent, now=time.time()))
        for node, agent in ((a, "a1"), (b, "a2"), (c, "a3")):
            node.log.submit(AgentReady(agent=agent, now=time.time()))
        for i in range(20):  # interleaved from all three
            for node in (a, b, c):
                node.log.submit(arrival(f"{node.log.node}-{i}"))
            if i % 5 == 4:
                await asyncio.sleep(0)
        answered = await a.log.request(SurgeSwitch(on=True, cause="manual", now=time.time()))
        assert answered.error is None
        refused = await b.log.request(AgentReady(agent="nobody", now=time.time()))
        assert refused.error is not None and "nobody" in refused.error  # the engine's refusal comes back
        await eventually("every node applied every entry", lambda: a.log.last_id == b.log.last_id == c.log.last_id)

        seen = [[(e[0], e[1], e[2]) for e in after(n, mark)] for n in (a, b, c)]
        assert seen[0] == seen[1] == seen[2] and len(seen[0]) == 3 + 3 + 60 + 2
        assert [[e[3] for e in after(n, mark)] for n in (a, b)] == [[e[3] for e in after(c, mark)]] * 2
        assert view(a.log.coordinator) == view(b.log.coordinator) == view(c.log.coordinator)
        # three ready agents: three rings, to three callers and three agents, each carried out by the caller's node
        rings = [r.decision for e in after(a, mark) for r in e[3].routed if isinstance(r.decision, RingAgent)]
        assert len({r.call for r in rings}) == len({r.agent for r in rings}) == len(rings) == 3
        for n in (a, b, c):
            for ring in n.routed_here(RingAgent):
                assert ring.call.startswith(n.log.node + "-")
        for n in (a, b, c):
            assert n.log.stats.applied == len(n.entries)
            assert n.log.stats.malformed == 0 and n.log.stats.queued == 0
        assert sum(n.log.stats.appends for n in (a, b, c)) == len(a.entries)
    finally:
        await stop_all(a, b, c)


async def test_a_malformed_entry_is_skipped_alike_everywhere(redis_server: RedisServer) -> None:
    a, b = await started(Node(redis_server.url, "A"), Node(redis_server.url, "B"))
    try:
        client = aioredis.Redis.from_url(redis_server.url)
        await client.xadd("test:log", {"o": "X", "e": '{"type": "NoSuchEvent"}'})
        await client.xadd("test:log", {"junk": "1"})
        await client.aclose()
        done = await a.log.request(arrival("A-after"))
        assert done.error is None
        await eventually("B applied the entry after the junk", lambda: "A-after" in b.log.coordinator.engine.calls)
        assert a.log.stats.malformed == b.log.stats.malformed == 2
        assert view(a.log.coordinator) == view(b.log.coordinator)
    finally:
        await stop_all(a, b)


async def test_a_write_refused_for_want_of_replicas_is_retried_not_dropped(redis_server: RedisServer) -> None:
    """``min-replicas-to-write`` with its replica gone: Redis answers NOREPLICAS until it is back; nothing is lost."""
    (a,) = await started(Node(redis_server.url, "A", beat=0.2, timeout=5.0))
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.config_set("min-replicas-to-write", 1)  # no replica at all: every write is refused
        for call in ("A-held-1", "A-held-2"):
            a.log.submit(arrival(call))
        await eventually("the refusals were seen", lambda: a.log.stats.append_errors >= 2, 5)
        assert "A-held-1" not in a.log.coordinator.engine.calls
        await client.config_set("min-replicas-to-write", 0)  # the replica is back
        await eventually(
            "both held entries applied, in order",
            lambda: [c for c in a.log.coordinator.engine.calls if c.startswith("A-held")] == ["A-held-1", "A-held-2"],
            10,
        )
        logged = [e for e in await stream_entries(redis_server.url) if isinstance(e[2], CallArrived)]
        assert [e[2].call_id for e in logged] == ["A-held-1", "A-held-2"]  # once each
    finally:
        await client.config_set("min-replicas-to-write", 0)
        await client.aclose()
        await stop_all(a)


async def test_the_decision_latency_counts_each_own_event_once(redis_server: RedisServer) -> None:
    a, b = await started(Node(redis_server.url, "A"), Node(redis_server.url, "B"))
    n = 40
    try:
        count_a, sum_a, count_b = a.log.stats.decision_count, a.log.stats.decision_sum, b.log.stats.decision_count
        assert count_a == 1  # its NodeJoined, a request()
        began = time.monotonic()
        for i in range(n):
            a.log.submit(arrival(f"s{i}"))  # submitted, not awaited
            assert (await a.log.request(arrival(f"r{i}"))).error is None
        took = time.monotonic() - began
        await eventually("B applied them all", lambda: b.log.last_id == a.log.last_id)
        st = a.log.stats
        assert st.decision_count - count_a == 2 * n
        assert 0 < st.decision_sum - sum_a <= 2 * n * took  # none took longer than the whole run
        assert b.log.stats.decision_count == count_b  # another node's entries are not this node's decisions
        [family] = [f for f in ClusterCollector(a.log).collect() if f.name == "frontdesk_cluster_decision_seconds"]
        buckets = [s.value for s in family.samples if s.name.endswith("_bucket")]
        assert buckets == sorted(buckets) and len(buckets) == len(cluster_log.DECISION_BUCKETS) + 1
        assert buckets[-1] == {s.name: s.value for s in family.samples}["frontdesk_cluster_decision_seconds_count"]
        assert buckets[-1] == st.decision_count
    finally:
        await stop_all(a, b)


async def test_unreachable_redis_is_a_clear_error() -> None:
    port = free_port()  # nothing listens there
    try:
        url = f"redis://:secret@127.0.0.1:{port}/0"
        node = ClusterLog(cluster_settings(url, "A"), lambda: Coordinator(cluster_model()), lambda *_: None)
        with pytest.raises(
            ClusterLogError, match=f"cannot reach the cluster's Redis at redis://:\\*\\*\\*@127.0.0.1:{port}/0"
        ):
            await node.start()
    finally:
        release(port)


# ------------------------------------------------------------ the timekeeper


async def test_one_timekeeper_and_a_clean_handover(redis_server: RedisServer) -> None:
    model = cluster_model(max_wait=2.0)
    nodes = await started(*(Node(redis_server.url, name, model) for name in ("A", "B", "C")))
    try:
        await eventually("a timekeeper", lambda: timekeepers(*nodes))
        await asyncio.sleep(3 * BEAT)
        assert len(timekeepers(*nodes)) == 1
        keeper = next(n for n in nodes if n.log.is_timekeeper)
        others = [n for n in nodes if n is not keeper]
        caller = others[0]
        await caller.log.request(arrival("waiter"))
        arrived = time.monotonic()
        await keeper.log.stop()
        stopped = time.monotonic()
        await eventually("a new timekeeper", lambda: timekeepers(*others), timeout=TIMEOUT + 2 * BEAT)
        assert time.monotonic() - stopped <= BEAT + 0.3  # the lease was given back: the next heartbeat takes it
        overflow = await eventually("the max-wait overflow", lambda: caller.routed_here(Overflow), timeout=5)
        assert overflow[0].call == "waiter" and overflow[0].reason == "max_wait"
        fired = next(e[0] for e in caller.entries if any(isinstance(r.decision, Overflow) for r in e[3].routed))
        assert 2.0 - 0.05 <= caller.seen_at[fired] - arrived <= 2.0 + 0.5  # on time, by the new timekeeper
        assert len(timekeepers(*others)) == 1
    finally:
        await stop_all(*nodes)


async def test_a_draining_timekeeper_hands_its_lease_over_and_a_lone_one_takes_it_back(
    redis_server: RedisServer,
) -> None:
    a, b = await started(Node(redis_server.url, "A"), Node(redis_server.url, "B"))
    try:
        await eventually("one timekeeper", lambda: len(timekeepers(a, b)) == 1, 5)
        holder, other = (a, b) if a.log.is_timekeeper else (b, a)
        assert await holder.log.resign()
        assert not holder.log.is_timekeeper
        await eventually("the other node took the lease", lambda: other.log.is_timekeeper, 2)
        await asyncio.sleep(cluster_log.RESIGN_BEATS * 0.2 + 0.4)  # past the beats it leaves the lease to others
        assert timekeepers(a, b) == [other.log.node]  # it did not take the lease back from a live holder
        assert not await holder.log.resign()  # nothing to give
        await other.log.stop()  # now alone: the lease comes back to it after its beats, its timers go on
        await eventually("the lone node took the lease back", lambda: holder.log.is_timekeeper, 5)
    finally:
        await stop_all(a, b)


async def test_a_stale_holders_fenced_writes_are_refused(redis_server: RedisServer) -> None:
    (a,) = await started(Node(redis_server.url, "A"))
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await eventually("A holds the lease", lambda: a.log.is_timekeeper)
        token = (await client.get("test:lease")).decode()
        assert token.startswith("A:")
        await client.set("test:lease", "Z:999", px=60_000)  # another holder took over while A was away
        before = await client.xlen("test:log")
        fields = encode("A", TimerFired(kind="tick", id="", now=time.time()))
        script = client.register_script(cluster_log.scripts.APPEND)
        assert (
            await script(keys=["test:lease", "test:log"], args=[token, *[x for kv in fields.items() for x in kv]])
            is None
        )
        assert await a.log.write_checkpoint() is False
        assert not a.log.is_timekeeper and a.log.stats.lease_lost == 1
        assert await client.exists("test:checkpoint") == 0
        await asyncio.sleep(3 * BEAT)
        assert not a.log.is_timekeeper  # it does not take the lease back while it is held
        assert (await client.get("test:lease")) == b"Z:999"
        assert await client.xlen("test:log") == before
    finally:
        await client.aclose()
        await stop_all(a)


async def lease_holder(url: str) -> str | None:
    client = aioredis.Redis.from_url(url)
    try:
        value = await client.get("test:lease")
    finally:
        await client.aclose()
    return None if value is None else value.decode().partition(":")[0]


async def test_a_killed_timekeeper_is_replaced_and_timers_keep_firing(redis_server: RedisServer) -> None:
    child = start_node(redis_server.url, "K")
    nodes: tuple[Node, ...] = ()
    try:
        await eventually("K holds the lease", lambda: lease_holder(redis_server.url), 20)
        assert await lease_holder(redis_server.url) == "K"
        wait = 2 * (TIMEOUT + BEAT) + 0.5  # the caller's max wait ends after the takeover
        nodes = await started(*(Node(redis_server.url, name, cluster_model(max_wait=wait)) for name in ("B", "C")))
        b, c = nodes
        await asyncio.sleep(2 * BEAT)
        assert timekeepers(b, c) == []
        await b.log.request(arrival("waiter"))
        arrived = time.monotonic()
        child.kill()
        child.wait(5)
        killed = time.monotonic()
        await eventually("a new timekeeper", lambda: timekeepers(b, c), timeout=TIMEOUT + 2 * BEAT + 1)
        assert time.monotonic() - killed <= TIMEOUT + BEAT + 0.4
        overflow = await eventually("the max-wait overflow", lambda: b.routed_here(Overflow), timeout=wait + 2)
        assert overflow[0].call == "waiter"
        fired = next(e[0] for e in b.entries if any(isinstance(r.decision, Overflow) for r in e[3].routed))
        assert wait - 0.05 <= b.seen_at[fired] - arrived <= wait + 0.5
        assert len(timekeepers(b, c)) == 1
        await eventually("C applied it too", lambda: c.log.last_id == b.log.last_id)
        assert view(b.log.coordinator) == view(c.log.coordinator)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
        await stop_all(*nodes)


async def node_ready(url: str, node: str) -> bool:
    client = aioredis.Redis.from_url(url)
    try:
        return bool(await client.exists(f"test:ready:{node}"))
    finally:
        await client.aclose()


async def test_a_stalled_timekeeper_appends_nothing_once_replaced(redis_server: RedisServer) -> None:
    wait = 1.5
    child = start_node(redis_server.url, "K", calls=1, max_wait=wait)
    b: Node | None = None
    try:
        await eventually("K's caller in line, K's timer armed", lambda: node_ready(redis_server.url, "K"), 20)
        arrived = time.monotonic()
        assert await lease_holder(redis_server.url) == "K"
        b = Node(redis_server.url, "B", cluster_model(max_wait=wait))
        await b.log.start()
        await b.log.request(arrival("waiter"))
        os.kill(child.pid, signal.SIGSTOP)  # K stalls (a long pause, a frozen VM) holding the lease
        await eventually("B takes over", lambda: b.log.is_timekeeper, TIMEOUT + 2 * BEAT + 1)
        await eventually("the max-wait overflow", lambda: b.routed_here(Overflow), 5)
        await eventually("K's own timer overdue", lambda: time.monotonic() > arrived + wait + 0.2)
        os.kill(child.pid, signal.SIGCONT)  # K wakes with its timer overdue and its lease gone
        await asyncio.sleep(5 * BEAT)
        entries = await stream_entries(redis_server.url)
        assert [e for e in entries if isinstance(e[2], TimerFired) and e[1] == "K"] == []
        assert [e[2].node for e in entries if isinstance(e[2], NodeLost)] == ["K"]  # K's caller left with it
        assert len([d for e in b.entries for d in e[3].routed if isinstance(d.decision, Overflow)]) == 1
        assert await lease_holder(redis_server.url) == "B" and b.log.is_timekeeper
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGCONT)
            child.kill()
            child.wait(5)
        if b is not None:
            await b.log.stop()


async def test_a_killed_node_is_lost_once_and_its_callers_leave(redis_server: RedisServer) -> None:
    b, c = await started(Node(redis_server.url, "B"), Node(redis_server.url, "C"))
    child = start_node(redis_server.url, "K", calls=3)
    try:
        await b.log.request(arrival("B-1"))
        await eventually("K's callers in line", lambda: len(b.log.coordinator.calls_of("K")) == 3, 20)
        assert timekeepers(b, c) != []
        child.kill()
        child.wait(5)
        killed = time.monotonic()
        lost = await eventually("NodeLost(K)", lambda: [e for e in b.entries if isinstance(e[2], NodeLost)], 5)
        assert b.seen_at[lost[0][0]] - killed <= TIMEOUT + BEAT + 0.4
        await eventually("C applied it too", lambda: c.log.last_id == b.log.last_id)
        for n in (b, c):
            assert n.log.coordinator.calls_of("K") == []
            assert n.log.coordinator.lost == {("K", "sales"): 3}
            assert set(n.log.coordinator.engine.calls) == {"B-1"}
        await asyncio.sleep(4 * BEAT)
        in_log = [e for e in await stream_entries(redis_server.url) if isinstance(e[2], NodeLost)]
        assert [(e[2].node, e[1]) for e in in_log] == [("K", next(n.log.node for n in (b, c) if n.log.is_timekeeper))]
        assert sum(n.log.stats.nodes_lost for n in (b, c)) == 1
        assert view(b.log.coordinator) == view(c.log.coordinator)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
        await stop_all(b, c)


async def test_a_node_that_stops_cleanly_leaves_without_being_announced_lost(redis_server: RedisServer) -> None:
    b, c, k = await started(Node(redis_server.url, "B"), Node(redis_server.url, "C"), Node(redis_server.url, "K"))
    try:
        for call in ("K-1", "K-2"):
            await k.log.request(arrival(call))
        await eventually("K's callers on B", lambda: len(b.log.coordinator.calls_of("K")) == 2)
        await k.log.stop()
        # its own NodeLost, at once: no wait for a heartbeat to be missed
        left = await eventually("K's NodeLost", lambda: [e for e in b.entries if isinstance(e[2], NodeLost)], 2)
        assert [(e[1], e[2].node) for e in left] == [("K", "K")]
        await asyncio.sleep(TIMEOUT + 3 * BEAT)  # long past the point where a silent K would be announced lost
        in_log = [e for e in await stream_entries(redis_server.url) if isinstance(e[2], NodeLost)]
        assert [e[2].node for e in in_log] == ["K"]
        assert sum(n.log.stats.nodes_lost for n in (b, c)) == 0  # the timekeeper announced nothing
        for n in (b, c):
            assert n.log.coordinator.calls_of("K") == []
            assert n.log.coordinator.lost == {("K", "sales"): 2}
    finally:
        await stop_all(b, c)


async def test_a_restarted_node_rejoins_and_forgets_its_old_callers(redis_server: RedisServer) -> None:
    slow = 10.0  # node timeout: the node is back long before anyone would call it lost
    (a,) = await started(Node(redis_server.url, "A", timeout=slow))
    first = start_node(redis_server.url, "K", calls=2, timeout=slow)
    second = None
    try:
        await eventually("K's callers in line", lambda: len(a.log.coordinator.calls_of("K")) == 2, 20)
        first.kill()  # K's process ends without a word, and K starts again
        first.wait(5)
        second = start_node(redis_server.url, "K", timeout=slow)
        joined = await eventually(
            "K's second NodeJoined",
            lambda: [e for e in a.entries if isinstance(e[2], NodeJoined) and e[1] == "K"][1:],
            20,
        )
        assert joined
        assert a.log.coordinator.calls_of("K") == [] and a.log.coordinator.lost == {("K", "sales"): 2}
        assert not [e for e in a.entries if isinstance(e[2], NodeLost)]
    finally:
        for child in (first, second):
            if child is not None and child.poll() is None:
                child.kill()
                child.wait(5)
        await stop_all(a)


# ------------------------------------------------------------ checkpoints


async def test_checkpoint_trims_the_log_and_a_new_node_joins_from_it(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster_log, "CHECKPOINT_ENTRIES", 40)
    a, b = await started(Node(redis_server.url, "A"), Node(redis_server.url, "B"))
    client = aioredis.Redis.from_url(redis_server.url)
    c: Node | None = None
    try:
        await eventually("a timekeeper", lambda: timekeepers(a, b))
        a.log.submit(AgentLoggedIn(agent="a1", now=time.time()))
        a.log.submit(AgentReady(agent="a1", now=time.time()))
        for i in range(60):
            (a if i % 2 else b).log.submit(arrival(f"x{i}"))
        await a.log.request(AgentLoggedIn(agent="a2", now=time.time()))
        await eventually(
            "a checkpoint written", lambda: a.log.stats.checkpoints_written + b.log.stats.checkpoints_written
        )
        keeper = next(n for n in (a, b) if n.log.is_timekeeper)
        first_checkpoint = await client.hget("test:checkpoint", "id")
        total = sum(n.log.stats.appends for n in (a, b))
        assert await client.xlen("test:log") == total  # the first checkpoint trims nothing
        for i in range(5):
            b.log.submit(arrival(f"y{i}"))
        await b.log.request(arrival("y-last"))
        await eventually("the timekeeper applied it", lambda: keeper.log.last_id == b.log.last_id)
        assert await keeper.log.write_checkpoint()
        # the second trims up to the first: a reader a little behind still finds its next entries
        assert (await client.xrange("test:log", count=1))[0][0] == first_checkpoint
        assert await client.xlen("test:log") < total
        await a.log.request(arrival("z-after"))
        c = Node(redis_server.url, "C")
        await c.log.start()
        assert c.log.stats.checkpoints_loaded == 1
        assert c.log.stats.replayed == 1  # z-after: the entries before it are in the checkpoint
        await eventually("all caught up", lambda: a.log.last_id == b.log.last_id == c.log.last_id)
        assert view(a.log.coordinator) == view(b.log.coordinator) == view(c.log.coordinator)
        assert "z-after" in c.log.coordinator.engine.calls and "x0" in c.log.coordinator.engine.calls
    finally:
        await client.aclose()
        await stop_all(a, b, *([c] if c else []))


async def test_a_node_of_another_model_is_refused(redis_server: RedisServer) -> None:
    (a,) = await started(Node(redis_server.url, "A"))
    try:
        await eventually("A holds the lease", lambda: a.log.is_timekeeper)
        await a.log.request(arrival("A-1"))
        assert await a.log.write_checkpoint()
        other = Node(redis_server.url, "B", cluster_model(queues=("sales", "support")))
        with pytest.raises(ClusterLogError, match="support") as refused:
            await other.log.start()
        assert "cannot join cluster 'test'" in str(refused.value)
        assert other.log._redis is None  # closed
    finally:
        await stop_all(a)


async def test_a_node_behind_the_trimmed_log_reloads_the_checkpoint(redis_server: RedisServer) -> None:
    a, b = await started(Node(redis_server.url, "A"), Node(redis_server.url, "B"))
    try:
        await eventually("a timekeeper", lambda: a.log.is_timekeeper or b.log.is_timekeeper)
        keeper, behind = (a, b) if a.log.is_timekeeper else (b, a)
        reader = behind.log._tasks[1]  # the other node stops reading for a while (a long pause)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        for round_ in range(2):  # two checkpoints: the second trims what the paused node has not read
            for i in range(10):
                keeper.log.submit(arrival(f"z{round_}-{i}"))
            await keeper.log.request(arrival(f"z{round_}-last"))
            assert await keeper.log.write_checkpoint()
        await keeper.log.request(arrival("after"))
        behind.log._tasks[1] = asyncio.create_task(behind.log._read_loop())
        await eventually("caught up", lambda: behind.log.last_id == keeper.log.last_id)
        assert behind.log.stats.checkpoints_loaded == 1
        assert view(behind.log.coordinator) == view(keeper.log.coordinator)
        assert [e[2].call_id for e in behind.entries if isinstance(e[2], CallArrived)] == ["after"]
    finally:
        await stop_all(a, b)


# ------------------------------------------------------------ Redis goes away


async def test_redis_restarted_while_submitting(redis_server: RedisServer) -> None:
    a, b = await started(Node(redis_server.url, "A"), Node(redis_server.url, "B"))
    try:
        sent = 0

        async def submit(until: float) -> None:
            nonlocal sent
            while time.monotonic() < until:
                a.log.submit(arrival(f"r{sent}"))
                sent += 1
                await asyncio.sleep(0.005)

        await submit(time.monotonic() + 0.5)
        redis_server.kill()
        await submit(time.monotonic() + 1.0)
        redis_server.start()
        restarted = sent
        await submit(time.monotonic() + 1.0)
        done = await asyncio.wait_for(a.log.request(arrival("last")), 10)
        assert done.error is None
        await eventually("B applied A's last", lambda: "last" in b.log.coordinator.engine.calls)
        for n in (a, b):
            assert all(not t.done() for t in n.log._tasks)  # no task died
            assert n.log.stats.outages >= 1 and n.log.stats.queued == 0 and n.log.stats.dropped == 0
        # what Redis lost is lost; what came after it came back arrives in submission order, everywhere
        after = [
            int(e[2].call_id[1:]) for e in b.entries if isinstance(e[2], CallArrived) and e[2].call_id[1:].isdigit()
        ]
        tail = list(dict.fromkeys(x for x in after if x >= restarted))
        assert tail == sorted(tail) and tail and tail[-1] == sent - 1
        await eventually("a timekeeper again", lambda: len(timekeepers(a, b)) == 1)
    finally:
        await stop_all(a, b)


async def test_submissions_wait_for_redis_in_order_and_overflow_is_counted(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster_log, "MAX_QUEUED", 50)
    a, b = await started(Node(redis_server.url, "A"), Node(redis_server.url, "B"))
    try:
        redis_server.kill()
        for i in range(60):
            a.log.submit(arrival(f"q{i}"))
        assert a.log.stats.queued == 50 and a.log.stats.dropped == 10
        with pytest.raises(ClusterLogError, match="dropped"):
            await a.log.request(arrival("one-too-many"))
        await asyncio.sleep(0.3)
        redis_server.start()
        await eventually("the queue drained", lambda: a.log.stats.queued == 0)
        await eventually("B applied them", lambda: "q49" in b.log.coordinator.engine.calls)
        arrived = [e[2].call_id for e in b.entries if isinstance(e[2], CallArrived)]
        assert arrived == [f"q{i}" for i in range(50)]  # held in order while Redis was away
        assert a.log.stats.append_errors >= 1 and a.log.stats.outages == 1
    finally:
        await stop_all(a, b)


# ------------------------------------------------------------ latency


def percentiles(ms: list[float]) -> tuple[float, float]:
    ordered = sorted(ms)
    return statistics.median(ordered), ordered[max(0, round(len(ordered) * 0.99) - 1)]


async def paced(n: int, send: Callable[[int], Any]) -> None:
    """``send(i)`` for i < n, four at a time, a millisecond apart (about 2,000 a second at most)."""
    for i in range(n):
        result = send(i)
        if inspect.isawaitable(result):
            await result
        if i % 4 == 3:
            await asyncio.sleep(0.001)


async def bare_redis_latency(url: str, n: int) -> list[float]:
    """The reference: XADD on one redis-py client to XREAD BLOCK on another, milliseconds per entry."""
    writer, reader = aioredis.Redis.from_url(url), aioredis.Redis.from_url(url)
    sent: dict[bytes, float] = {}
    got: dict[bytes, float] = {}

    async def read() -> None:
        last = "0-0"
        while len(got) < n:
            for _, entries in await reader.xread({"ref:log": last}, count=500, block=1000) or []:
                for entry_id, fields in entries:
                    got[fields[b"i"]] = time.monotonic()
                    last = entry_id

    async def send(i: int) -> None:
        sent[str(i).encode()] = time.monotonic()
        await writer.xadd("ref:log", {"i": str(i)})

    task = asyncio.create_task(read())
    try:
        await paced(n, send)
        await asyncio.wait_for(task, 30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await writer.aclose()
        await reader.aclose()
    return [(got[k] - sent[k]) * 1000 for k in sent]


@pytest.mark.slow
async def test_decision_latency_between_nodes(redis_server: RedisServer) -> None:
    n = 2000
    reference = percentiles(await bare_redis_latency(redis_server.url, n))
    a, b = await started(Node(redis_server.url, "A"), Node(redis_server.url, "B"))
    sent_at: dict[str, float] = {}

    def send(i: int) -> None:
        sent_at[f"l{i}"] = time.monotonic()
        a.log.submit(arrival(f"l{i}"))

    try:
        await paced(n, send)
        await eventually(f"B applied all {n}", lambda: sum(isinstance(e[2], CallArrived) for e in b.entries) == n, 30)
        got_at = {e[2].call_id: b.seen_at[e[0]] for e in b.entries if isinstance(e[2], CallArrived)}
        ours = percentiles([(got_at[k] - sent_at[k]) * 1000 for k in sent_at])
        print(
            f"\nsubmit() on A -> on_applied on B, {n:,} events: p50 {ours[0]:.2f} ms, p99 {ours[1]:.2f} ms; "
            f"bare redis-py XADD -> XREAD BLOCK: p50 {reference[0]:.2f} ms, p99 {reference[1]:.2f} ms; "
            f"ratio p50 {ours[0] / reference[0]:.2f}, p99 {ours[1] / reference[1]:.2f}"
        )
        assert len(got_at) == n
    finally:
        await stop_all(a, b)
