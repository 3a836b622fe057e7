"""ivr/cluster/connect.py and the Sentinel settings: a real master, replica and three sentinels; the master killed.

The set-up is the example configs of examples/cluster/ with loopback ports
and a 1 s down-after (tests/support/sentinel.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import RedisError
from support.redis import CLUSTER_SECRET, cluster_model
from support.sentinel import SentinelSet

from ivr.cluster.connect import redis_client
from ivr.cluster.coordinator import Coordinator
from ivr.cluster.log import ClusterLog
from ivr.settings.cluster import ClusterSettings
from queueing.events import CallArrived


def settings(**changes: object) -> ClusterSettings:
    fields: dict[str, object] = {
        "redis_url": "redis://127.0.0.1:6379/0",
        "node_id": "n1",
        "secret": CLUSTER_SECRET,
        "sentinels": ["127.0.0.1:26379", "127.0.0.1:26380", "127.0.0.1:26381"],
        "sentinel_master": "frontdesk",
    }
    fields.update(changes)
    return ClusterSettings.model_validate({k: v for k, v in fields.items() if v is not None})


SENTINEL_PASSWORD = "sentinel-secret"


@pytest.fixture
def sentinel_set() -> Iterator[SentinelSet]:
    s = SentinelSet(sentinel_password=SENTINEL_PASSWORD)
    try:
        s.start()
        yield s
    finally:
        s.stop()


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"sentinels": ["127.0.0.1"]}, "sentinels", "HOST:PORT"),
        ({"sentinels": ["127.0.0.1:26379", "127.0.0.1:26379"]}, "sentinels", "listed twice"),
        ({"sentinel_master": None}, "sentinel_master", "name the master"),
        ({"redis_url": None, "node_id": None, "secret": None}, "redis_url", "database, user and password"),
        ({"redis_url": "unix:///run/redis.sock"}, "redis_url", "redis:// or rediss://"),
        ({"sentinels": None}, "sentinel_master", "belongs with sentinels"),
        ({"sentinels": None, "sentinel_master": None, "sentinel_password": "x"}, "sentinel_password", "belongs"),
    ],
)
def test_bad_sentinel_settings_name_the_field(changes: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(ValidationError) as err:
        settings(**changes)
    (problem,) = err.value.errors()
    assert problem["loc"][0] == field
    assert words in problem["msg"]


def test_without_sentinels_the_client_goes_to_redis_url() -> None:
    s = settings(sentinels=None, sentinel_master=None, redis_url="redis://:pw@10.1.2.3:6390/2")
    client = redis_client(s)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == ("10.1.2.3", 6390, 2, "pw")
    assert kwargs["socket_timeout"] == 1.0 + 5.0  # XREAD BLOCK plus max(5, lease)
    assert kwargs["retry"].get_retries() == 0


# ------------------------------------------------------------------ failover


async def _xadd_retrying(client: aioredis.Redis, value: str, deadline: float) -> tuple[str, int]:
    """XADD as the log's writer does: on a Redis error wait a little and try again; returns the errors seen."""
    errors = 0
    while True:
        try:
            entry = await client.xadd("test:log", {"v": value})
            return entry.decode(), errors
        except RedisError:
            errors += 1
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_the_client_follows_sentinel_to_the_promoted_replica(sentinel_set: SentinelSet) -> None:
    s = settings(redis_url=sentinel_set.url, sentinels=sentinel_set.sentinels, sentinel_password=SENTINEL_PASSWORD)
    client = redis_client(s)
    try:
        first, errors = await _xadd_retrying(client, "before", time.monotonic() + 5)
        assert errors == 0
        assert await client.execute_command("WAIT", 1, 2000) == 1  # the replica has it
        assert sentinel_set.master_address()[1] == sentinel_set.master_port

        sentinel_set.kill("master")
        killed = time.monotonic()
        second, errors = await _xadd_retrying(client, "after", killed + 30)
        took = time.monotonic() - killed

        assert errors >= 1  # the old master was gone; the next attempts asked the sentinels again
        assert sentinel_set.master_address() == ("127.0.0.1", sentinel_set.replica_port)
        pool = client.connection_pool
        assert pool.master_address == ("127.0.0.1", sentinel_set.replica_port)  # type: ignore[attr-defined]
        entries = await client.xrange("test:log")
        assert [(e.decode(), f[b"v"]) for e, f in entries] == [(first, b"before"), (second, b"after")]
        assert took < 30
        print(f"\nwrites reached the promoted replica {took:.1f} s after the master was killed ({errors} errors)")
    finally:
        await client.aclose()


@pytest.mark.slow
async def test_the_cluster_log_goes_on_through_a_failover(sentinel_set: SentinelSet) -> None:
    """Two nodes' logs through Sentinel: the master killed between their events; no event lost, the replicas agree."""
    model = cluster_model()

    def node(name: str) -> ClusterLog:
        s = settings(
            redis_url=sentinel_set.url,
            sentinels=sentinel_set.sentinels,
            sentinel_password=SENTINEL_PASSWORD,
            node_id=name,
            heartbeat=0.2,
            node_timeout=6.0,  # longer than a failover: the nodes wait it out instead of going degraded
            lease=6.0,
        )
        return ClusterLog(s, lambda: Coordinator(model), lambda *entry: None)

    def calls(log: ClusterLog) -> set[str]:
        return set(log.coordinator.engine.calls)

    async def until(what: str, check: Callable[[], bool], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)

    a, b = node("A"), node("B")
    await a.start()
    await b.start()
    try:
        a.submit(CallArrived(call_id="A-1", queue="sales", tier="ordinary", now=time.time()))
        b.submit(CallArrived(call_id="B-1", queue="sales", tier="ordinary", now=time.time()))
        await until("both replicas have the first calls", lambda: calls(a) == calls(b) == {"A-1", "B-1"}, 10)
        sentinel_set.kill("master")
        killed = time.monotonic()
        a.submit(CallArrived(call_id="A-2", queue="sales", tier="ordinary", now=time.time()))
        b.submit(CallArrived(call_id="B-2", queue="sales", tier="ordinary", now=time.time()))
        everything = {"A-1", "B-1", "A-2", "B-2"}
        await until("both replicas have every call", lambda: calls(a) == calls(b) == everything, 30)
        took = time.monotonic() - killed
        assert sentinel_set.master_address() == ("127.0.0.1", sentinel_set.replica_port)
        assert a.coordinator.engine.position("A-1") == b.coordinator.engine.position("A-1")
        assert not a.degraded and not b.degraded
        print(f"\nboth replicas had the events submitted during the failover {took:.1f} s after the master was killed")
    finally:
        await a.stop()
        await b.stop()
