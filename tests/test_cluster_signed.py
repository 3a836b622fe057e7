"""Signed checkpoints (ivr/cluster/log.py): a checkpoint not signed with cluster.secret is never unpickled.

A real redis-server per test. The forged checkpoints carry a payload whose
unpickling creates a file (``open(path, "w")``), so a node that unpickled one
would leave that mark; each test also shows the payload does bite when
unpickled, so the absence of the mark means something.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from support.redis import RedisServer, cluster_model, cluster_settings

from ivr.cluster.coordinator import Coordinator
from ivr.cluster.log import ClusterLog
from ivr.web.clustermetrics import ClusterCollector
from queueing.events import CallArrived

KEY = "test:checkpoint"


class MarksWhenUnpickled:
    """Unpickling this calls ``open(path, "w")``: the file appears."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def node(url: str, name: str, secret: str | None = None) -> ClusterLog:
    settings = cluster_settings(url, name) if secret is None else cluster_settings(url, name, secret=secret)
    model = cluster_model()
    return ClusterLog(settings, lambda: Coordinator(model), lambda *_: None)


async def until(what: str, check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def checkpointed(url: str) -> ClusterLog:
    """Node A, the timekeeper, with one caller and a checkpoint of it written (and left running)."""
    a = node(url, "A")
    await a.start()
    await until("A holds the lease", lambda: a.is_timekeeper)
    await a.request(CallArrived(call_id="A-1", queue="sales", tier="ordinary", now=time.time()))
    assert await a.write_checkpoint()
    return a


def assert_payload_bites(tmp_path: Path) -> None:
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(MarksWhenUnpickled(control)))
    assert control.exists()  # the payload works: had a node unpickled it, its mark would be there


def refused_metric(log: ClusterLog) -> float:
    for family in ClusterCollector(log).collect():
        if family.name == "frontdesk_cluster_checkpoints_refused":
            return float(family.samples[0].value)
    raise AssertionError("no frontdesk_cluster_checkpoints_refused")


@pytest.mark.parametrize("forgery", ["tampered", "unsigned", "other_secret"])
async def test_a_forged_checkpoint_is_never_unpickled_and_the_node_still_starts(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, forgery: str
) -> None:
    mark = tmp_path / "mark"
    a = await checkpointed(redis_server.url)
    client = aioredis.Redis.from_url(redis_server.url)
    b: ClusterLog | None = None
    try:
        secret = None
        if forgery == "tampered":  # the state replaced, the signature kept
            await client.hset(KEY, "state", pickle.dumps(MarksWhenUnpickled(mark)))
        elif forgery == "unsigned":  # as an older version wrote them, or anyone with write access
            await client.hset(KEY, "state", pickle.dumps(MarksWhenUnpickled(mark)))
            await client.hdel(KEY, "mac")
        else:  # a node with another secret: the real checkpoint, but not signed by its key
            secret = "another-cluster-secret-0123456789abcdef"
        b = node(redis_server.url, "B", secret)
        with caplog.at_level(logging.ERROR, logger="ivr.cluster.log"):
            await b.start()  # starts as without a checkpoint: replays the log
        assert not mark.exists()
        assert b.stats.checkpoints_loaded == 0 and b.stats.checkpoints_refused == 1
        assert refused_metric(b) == 1
        refusals = [r.getMessage() for r in caplog.records if "refused the checkpoint" in r.getMessage()]
        assert len(refusals) == 1, refusals
        assert ("not signed" if forgery == "unsigned" else "does not match cluster.secret") in refusals[0]
        assert "A-1" in b.coordinator.engine.calls  # the log was not trimmed yet: the replay has it
        assert secret is None or secret not in "\n".join(r.getMessage() for r in caplog.records)
        assert a.stats.checkpoints_refused == 0
    finally:
        await client.aclose()
        for n in (a, *([b] if b else [])):
            await n.stop()
    assert_payload_bites(tmp_path)


async def test_a_good_checkpoint_is_loaded(redis_server: RedisServer) -> None:
    a = await checkpointed(redis_server.url)
    b = node(redis_server.url, "B")
    try:
        await b.start()
        assert (b.stats.checkpoints_loaded, b.stats.checkpoints_refused) == (1, 0)
        assert "A-1" in b.coordinator.engine.calls
    finally:
        await b.stop()
        await a.stop()


async def test_the_timekeeper_replaces_a_refused_checkpoint_whatever_id_it_claims(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    mark = tmp_path / "mark"
    client = aioredis.Redis.from_url(redis_server.url)
    await client.hset(
        KEY, mapping={"id": "99999999999999-0", "fingerprint": "x", "state": pickle.dumps(MarksWhenUnpickled(mark))}
    )
    a = node(redis_server.url, "A")
    try:
        await a.start()
        await until("A holds the lease", lambda: a.is_timekeeper)
        await a.request(CallArrived(call_id="A-1", queue="sales", tier="ordinary", now=time.time()))
        length = await client.xlen("test:log")
        assert await a.write_checkpoint()  # a forged id far ahead does not block checkpoints
        assert (await client.hget(KEY, "id")).decode() == a.last_id
        assert await client.xlen("test:log") == length  # nothing trimmed after the forged id
        b = node(redis_server.url, "B")
        await b.start()
        assert (b.stats.checkpoints_loaded, b.stats.checkpoints_refused) == (1, 0)
        await b.stop()
    finally:
        await a.stop()
        await client.aclose()
    assert not mark.exists() and a.stats.checkpoints_refused == 1
    assert_payload_bites(tmp_path)
