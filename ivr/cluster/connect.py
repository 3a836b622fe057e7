"""The cluster's Redis client: straight to ``cluster.redis_url``, or to the master Redis Sentinel names.

With ``cluster.sentinels`` the client asks the sentinels for the current
master of ``cluster.sentinel_master`` each time it opens a connection
(redis-py's ``SentinelConnectionPool``), and takes only the database, user,
password and TLS from ``redis_url``. After a failover the old connections
fail (refused, or ``READONLY`` from a demoted master, which the pool turns
into a connection error); the caller's next attempt asks the sentinels again
and reaches the new master. The client itself never retries a command
(``Retry(NoBackoff(), 0)``): the cluster log's tasks retry with their own
backoff, in order (ivr/cluster/log.py). docs/cluster.md ("Redis failover")
describes a Sentinel set-up and what a failover can lose.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from ivr.settings.cluster import ClusterSettings

READ_BLOCK_MS = 1000  # the log reader's XREAD BLOCK, milliseconds: a read may wait this long for an answer


def redis_client(settings: ClusterSettings, *, read_block_ms: int = READ_BLOCK_MS) -> aioredis.Redis:
    """The asyncio client of a cluster node: not connected yet (the first command connects)."""
    if settings.redis_url is None:
        raise ValueError("a cluster node's Redis client needs cluster.redis_url")
    options: dict[str, Any] = {
        "socket_connect_timeout": max(2.0, settings.heartbeat),
        "socket_timeout": read_block_ms / 1000 + max(5.0, settings.lease),
        "retry": Retry(NoBackoff(), 0),  # the log's tasks retry with their own backoff, in order
    }
    if not settings.sentinels:
        return aioredis.Redis.from_url(settings.redis_url, **options)
    url_options: dict[str, Any] = dict(parse_url(settings.redis_url))
    url_options.pop("host", None)
    url_options.pop("port", None)
    if url_options.pop("connection_class", None) is not None:  # rediss://: TLS to the master
        url_options["ssl"] = True
    password = settings.sentinel_password
    sentinel_options: dict[str, Any] = {
        "socket_connect_timeout": options["socket_connect_timeout"],
        "socket_timeout": options["socket_connect_timeout"],
        "retry": Retry(NoBackoff(), 0),
        **({"password": password.get_secret_value()} if password is not None else {}),
    }
    sentinel = Sentinel(
        [_address(a) for a in settings.sentinels],
        sentinel_kwargs=sentinel_options,
        **{**options, **url_options},
    )
    assert settings.sentinel_master is not None  # the settings require it with sentinels
    client: aioredis.Redis = sentinel.master_for(settings.sentinel_master, redis_class=_SentinelRedis)
    return client


class _SentinelRedis(aioredis.Redis):
    """The master's client; closing it also closes the connections to the sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        try:
            await super().aclose(close_connection_pool)
        finally:
            for sentinel in manager.sentinels if manager is not None else ():
                await sentinel.aclose()


def _address(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)
