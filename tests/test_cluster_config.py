"""The ``cluster:`` section: off by default, and every mistake named with its file, line and field."""

from __future__ import annotations

import pytest

from ivr.settings.config import ConfigError, parse_config

PG = "storage:\n  url: postgresql+asyncpg://frontdesk@127.0.0.1/frontdesk\n"
NODE = "cluster:\n  redis_url: redis://127.0.0.1:6379/0\n  node_id: node-1\n"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "node.yaml")
    return str(info.value)


def test_off_without_a_redis_url() -> None:
    cluster = parse_config("").cluster
    assert not cluster.enabled
    assert (cluster.name, cluster.heartbeat, cluster.node_timeout, cluster.lease) == ("frontdesk", 1.0, 3.0, 3.0)


def test_a_node_of_a_cluster() -> None:
    text = PG + NODE + "  advertise_sip: 127.0.0.1:5071\n  advertise_rtp: 127.0.0.1\n  name: east\n"
    cluster = parse_config(text, "node.yaml").cluster
    assert cluster.enabled
    assert (cluster.node_id, cluster.advertise_sip, cluster.name) == ("node-1", "127.0.0.1:5071", "east")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (NODE, "node.yaml:1: storage.url: cluster mode keeps callbacks, texts, call records and audit in PostgreSQL"),
        (PG + "cluster:\n  redis_url: redis://127.0.0.1:6379/0\n", "node.yaml:3: cluster.node_id: a node of a cluster"),
        (
            PG + "cluster:\n  redis_url: http://127.0.0.1/\n  node_id: a\n",
            "node.yaml:4: cluster.redis_url: use redis://",
        ),
        (
            PG + NODE + "  advertise_sip: 127.0.0.1\n",
            "node.yaml:6: cluster.advertise_sip: '127.0.0.1' is not HOST:PORT",
        ),
        (PG + NODE + "  advertise_sip: 127.0.0.1:99999\n", "cluster.advertise_sip: '127.0.0.1:99999' is not HOST:PORT"),
        (
            PG + NODE + "  heartbeat: 5\n",
            "cluster.node_timeout: node_timeout (3.0 s) must not be shorter than heartbeat",
        ),
        (
            PG + "cluster:\n  redis_url: redis://127.0.0.1:6379/0\n  node_id: bad id\n",
            "cluster.node_id: 'bad id' is not a valid name",
        ),
        (PG + NODE + "  nodes: 2\n", "cluster.nodes"),
    ],
)
def test_mistakes_are_named(text: str, expected: str) -> None:
    assert expected in error_of(text)
