"""Load on a test cluster: replicas driven by simulated agents (the log's soak) and a whole cluster under SIPp.

Two halves, one per test module:

* tests/test_cluster_soak.py runs several :class:`ClusterLog` replicas in one
  event loop. :class:`SoakNode` plays the agents' phones of its node from
  ``on_applied`` (a ring it carries out is answered, or, one in
  ``MISS_EVERY``, left to its ring timeout; a connected call ends at once), so
  rings, talks, wrap-ups, ring-no-answers, maximum waits and announcements all
  happen, and their timers come from the timekeeper. :func:`replica_view` is
  everything a replica decides from, to compare replicas. :class:`RedisWatch`
  samples the stream's length, Redis's memory and the checkpoint's size while the run goes on.
* tests/test_cluster_killload.py starts ``frontdesk cluster`` (sim/live/cluster.py)
  as a subprocess, as tests/test_cluster_front.py does: :func:`start_cluster`
  gives a :class:`LoadCluster`, which reads each node's ``/metrics``, the lease
  holder from Redis and Kamailio's log (where each call went, when each ring
  was relayed); :func:`call_lines` reads the ``<log>`` lines of SIPp's calls
  (tests/sipp/cluster_ivr_caller.xml, tests/sipp/cluster_queue_until_bye.xml).
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from ivr.cluster.coordinator import Applied, ClusterEvent, Coordinator
from ivr.cluster.log import ClusterLog
from queueing.events import AgentAnswered, CallEnded, Connect, Event, RingAgent
from queueing.model import AgentSpec, Limit, Model, QueueSpec, SurgeSpec
from support.launcher import Launched, launch
from support.ports import release
from support.redis import cluster_settings

ROOT = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------ the log's soak: replicas in one event loop

MISS_EVERY = 5  # one ring in five is left ringing: a ring-no-answer timer


def soak_model(agents: int = 6) -> Model:
    """Time compressed: rings of 0.5 s, waits of 2 s, announcements every 0.7 s, a service-level window of 2 s.

    The surge control keeps every caller who left the line within its service-level window (300 s by default),
    so the replica, and so the checkpoint, grows with the departures in that window; a window of 2 s keeps a
    compressed run's replica as large as a real one's.
    """
    return Model(
        queues=(
            QueueSpec(
                name="sales",
                max_wait=Limit(2.0, 2.0),
                announce_every=Limit(0.7, 0.7),
                max_length=Limit(30, 30),
                ring_timeout=0.5,
                wrap_up=0.2,
            ),
        ),
        agents=tuple(AgentSpec(f"a{i}", max_misses=3) for i in range(1, agents + 1)),
        surge=SurgeSpec(auto=False, service_level_window=2.0),
    )


class SoakNode:
    """A ClusterLog whose ``on_applied`` plays its node's agent phones: it answers rings, ends connected calls."""

    def __init__(self, url: str, node: str, model: Model, **settings: Any) -> None:
        self.log = ClusterLog(cluster_settings(url, node, **settings), lambda: Coordinator(model), self._applied)
        self.reacting = True  # off before stop(): a stopped log takes no more submissions
        self.rings = 0
        self.missed = 0
        self.applied_ids: list[str] = []

    @property
    def node(self) -> str:
        return self.log.node

    def _applied(self, entry_id: str, origin: str, event: Event | ClusterEvent, result: Applied) -> None:
        self.applied_ids.append(entry_id)
        if not self.reacting:
            return
        me = self.log.node
        for routed in result.routed:
            decision = routed.decision
            if routed.node != me:
                continue
            if isinstance(decision, RingAgent):
                self.rings += 1
                if self.rings % MISS_EVERY == 0:
                    self.missed += 1
                    continue
                self.log.submit(AgentAnswered(agent=decision.agent, call=decision.call, now=time.time()))
            elif isinstance(decision, Connect):
                self.log.submit(CallEnded(call=decision.call, now=time.time()))


def replica_view(c: Coordinator) -> tuple[object, ...]:
    """Everything a replica decides from and reports: equal views decide alike and show the same numbers."""
    engine = c.engine
    return (
        engine.snapshot(),
        {
            name: (s.offered, s.answered, s.abandoned, dict(s.overflowed), s.ring_no_answer)
            for name, s in engine.stats.items()
        },
        {cid: (call.state, call.queue.name, tuple(sorted(call.agents))) for cid, call in engine.calls.items()},
        {aid: (a.state, a.reason) for aid, a in engine.agents.items()},
        {cid: c.owner(cid) for cid in engine.calls},
        dict(c.lost),
        engine.next_timer(),
        c.next_timer(),
        c.now,
    )


@dataclass
class RedisSample:
    at: float  # monotonic
    length: int  # XLEN of the stream
    memory: int  # Redis's used_memory, bytes
    checkpoint: str | None  # the checkpoint's entry id
    state: int  # bytes of the checkpoint's pickled replica


@dataclass
class RedisWatch:
    """Samples the stream's length, Redis's memory and the checkpoint's id every ``every`` s, on its own client."""

    url: str
    stream: str = "test:log"
    checkpoint_key: str = "test:checkpoint"
    every: float = 0.05
    samples: list[RedisSample] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        client = aioredis.Redis.from_url(self.url)
        try:
            while True:
                pipe = client.pipeline(transaction=False)
                pipe.xlen(self.stream)
                pipe.info("memory")
                pipe.hget(self.checkpoint_key, "id")
                pipe.hstrlen(self.checkpoint_key, "state")
                length, memory, checkpoint, state = await pipe.execute()
                self.samples.append(
                    RedisSample(
                        time.monotonic(),
                        int(length),
                        int(memory["used_memory"]),
                        None if checkpoint is None else checkpoint.decode(),
                        int(state),
                    )
                )
                await asyncio.sleep(self.every)
        finally:
            await client.aclose()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def between(self, start: float, end: float) -> list[RedisSample]:
        return [s for s in self.samples if start <= s.at <= end]


# ------------------------------------------------------------ a whole cluster under SIPp load

NODES = 2
RTP_PORTS = 160  # per node: 80 calls at once, for the IVR's short calls, the queue's callers and the agents' legs


@dataclass
class LoadCluster(Launched):
    """A ``frontdesk cluster`` subprocess and what a test reads of it: metrics, Redis, Kamailio's log."""

    name: str = "frontdesk"  # cluster.name: the prefix of its Redis keys

    def node_uri(self, node: str) -> str:
        return f"sip:127.0.0.1:{self.part(node)['sip_port']}"

    def lease_holder(self) -> str | None:
        """The node whose token is in the lease key (``node:epoch``), read from Redis; None while nobody holds it."""
        client = redis.Redis.from_url(self.state["redis_url"], socket_timeout=2)
        try:
            value = client.get(f"{self.name}:lease")
        finally:
            client.close()
        if value is None:
            return None
        token = value.decode() if isinstance(value, bytes) else str(value)
        return token.rpartition(":")[0]

    def calls_routed(self) -> dict[str, tuple[str, float]]:
        """Call-ID -> (the node URI that got its INVITE last, when Kamailio first sent it on), from Kamailio's log."""
        text = self.kamailio_log()
        routed = {m[1]: (m[2], float(m[3])) for m in re.finditer(r"new call (\S+) to (sip:\S+) at ([\d.]+)", text)}
        for m in re.finditer(r"retry INVITE (\S+) on (sip:\S+) at ([\d.]+)", text):
            if m[1] in routed:
                routed[m[1]] = (m[2], routed[m[1]][1])
        return routed

    def sent_by_nodes(self, method: str = "INVITE") -> dict[str, float]:
        """Call-ID -> when Kamailio first relayed a node's ``method`` (an agent's ring), from Kamailio's log."""
        sent: dict[str, float] = {}
        pattern = rf"node \S+ sends {re.escape(method)} (\S+) to \S+ at ([\d.]+)"
        for m in re.finditer(pattern, self.kamailio_log()):
            sent.setdefault(m[1], float(m[2]))
        return sent

    def stop(self) -> int:
        """SIGTERM to the launcher (it stops every part); its exit status. Its ports go back to the session."""
        try:
            return super().stop()
        finally:
            release(self.ports)
            release(self.sip_port)


def start_cluster(workdir: Path, base: dict[str, Any], seconds: float) -> LoadCluster:
    """``frontdesk cluster`` (two nodes over ``base``, stopping by itself after ``seconds``) once it is ready."""
    return LoadCluster(*launch(workdir, base, seconds, nodes=NODES, rtp_ports=RTP_PORTS))


@dataclass(frozen=True)
class CallLine:
    """One ``<log>`` line of a scenario of tests/sipp/cluster_*.xml: what happened, to which call, when."""

    what: str  # "answered", "done", "joined", "served", "gave up"
    call_id: str
    number: str  # the caller's number (field 0), where the scenario logs it; else ""
    at: float  # wall clock, seconds since the epoch


def text(value: Any) -> str:
    """A Redis reply (bytes) as text; AssertionError when there is none."""
    assert value is not None, "no such key or field"
    return value.decode() if isinstance(value, bytes) else str(value)


def call_lines(path: Path) -> list[CallLine]:
    """The lines of SIPp's ``-trace_logs`` file (``-log_file``); none when it was not written."""
    if not path.exists():
        return []
    out = []
    pattern = re.compile(r"^(answered|done|joined|served|gave up) (\S+)(?: (\d+))? \S+\t\S+\t([\d.]+)$")
    for line in path.read_text(errors="replace").splitlines():
        m = pattern.match(line.strip())
        if m:
            out.append(CallLine(m[1], m[2], m[3] or "", float(m[4])))
    return out
