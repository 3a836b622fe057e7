"""The ``cluster:`` section: off by default, and every mistake named with its file, line and field."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from support.sip import PEER, Caller, responses

from ivr.settings.config import ConfigError, load_config, parse_config
from ivr.sip.ua import IncomingCall, UserAgent
from ivr.web.app import ua_config

PG = "storage:\n  url: postgresql+asyncpg://frontdesk@127.0.0.1/frontdesk\n"
SECRET = "  secret: 0123456789abcdef0123456789abcdef\n"
NODE = "cluster:\n  redis_url: redis://127.0.0.1:6379/0\n  node_id: node-1\n" + SECRET


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
            "node.yaml:7: cluster.advertise_sip: '127.0.0.1' is not HOST:PORT",
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


def test_a_node_needs_the_clusters_secret(tmp_path: Path) -> None:
    bare = PG + "cluster:\n  redis_url: redis://127.0.0.1:6379/0\n  node_id: node-1\n"
    assert "node.yaml:3: cluster.secret: a node of a cluster needs the cluster's secret" in error_of(bare)
    assert "node.yaml:6: cluster.secret: the cluster's secret must be at least 32 characters" in error_of(
        bare + "  secret: too-short\n"
    )
    assert "node.yaml:6: cluster.secret_file: cannot read" in error_of(bare + f"  secret_file: {tmp_path}/none\n")
    (tmp_path / "short").write_text("abc\n")
    assert "node.yaml:6: cluster.secret_file: the cluster's secret must be at least 32" in error_of(
        bare + f"  secret_file: {tmp_path}/short\n"
    )
    both = bare + SECRET + f"  secret_file: {tmp_path}/short\n"
    assert "cluster.secret_file: give secret or secret_file, not both" in error_of(both)


def test_the_secret_comes_from_the_config_or_a_file_and_is_never_shown(tmp_path: Path) -> None:
    secret = "0123456789abcdef0123456789abcdef"
    cluster = parse_config(PG + NODE, "node.yaml").cluster
    assert cluster.key == secret.encode()
    assert secret not in repr(cluster) and secret not in cluster.model_dump_json() and secret not in str(cluster)
    (tmp_path / "cluster.secret").write_text(secret + "\n")
    (tmp_path / "node.yaml").write_text(
        PG + "cluster:\n  redis_url: redis://127.0.0.1:6379/0\n  node_id: node-1\n  secret_file: cluster.secret\n"
    )
    from_file = load_config(tmp_path / "node.yaml").cluster  # relative to the config file's directory
    assert from_file.key == secret.encode() and secret not in repr(from_file)
    assert parse_config("").cluster.key == b""  # a node on its own needs none


def test_a_node_writes_its_advertised_addresses_in_contact_and_sdp() -> None:
    text = PG + NODE + "  advertise_sip: 10.0.0.11:5071\n  advertise_rtp: 10.0.1.11\n"
    ua = UserAgent(ua_config(parse_config(text, "node.yaml")), rng=random.Random(3))
    ua.receive(Caller().invite(), PEER, 0.0)
    [call] = [e.call for e in ua.events() if isinstance(e, IncomingCall)]
    ua.answer(call, 0.0, rtp_port=20000)
    ok = next(r for r in responses([d for d, _ in ua.datagrams_to_send()]) if r.status == 200)
    assert ok.get("contact") == "<sip:frontdesk@10.0.0.11:5071>"
    assert b"c=IN IP4 10.0.1.11" in ok.body
    # alone (no cluster), the same settings are not read: public_address or listen, as before
    single = ua_config(parse_config("cluster:\n  advertise_sip: 10.0.0.11:5071\n", "node.yaml"))
    assert (single.host, single.port, single.media_host) == ("127.0.0.1", 5060, None)


def test_an_advertised_address_must_be_an_ip_address() -> None:
    assert "cluster.advertise_sip: 'node-1' is not an IP address" in error_of(
        PG + NODE + "  advertise_sip: node-1:5060\n"
    )
    assert "cluster.advertise_rtp: 'rtp.example' is not an IP address" in error_of(
        PG + NODE + "  advertise_rtp: rtp.example\n"
    )
