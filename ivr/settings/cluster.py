"""The ``cluster:`` section: several frontdesk nodes behind Kamailio sharing one line through Redis.

Without a ``redis_url`` the server is one node on its own (the embedded
default). With one, the node joins the cluster named by ``name`` under its
``node_id``: live shared state (the engine lease, the engine's event streams,
registrations, node heartbeats) goes to Redis, and durable data (callbacks,
outbox, call records, audit) must be in PostgreSQL, so ``storage.url`` is
checked by the config (docs/cluster.md).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator

from ivr.settings.base import Strict, not_shorter_than
from ivr.settings.server import _check_host
from ivr.settings.values import Name


def _hostport(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT (for example 127.0.0.1:5070)")
    _check_host(host.removeprefix("[").removesuffix("]"))
    return value


class ClusterSettings(Strict):
    redis_url: str | None = Field(
        None, description="redis:// or rediss:// URL of the cluster's Redis; unset: one node on its own"
    )
    name: Name = Field("frontdesk", description="the cluster's name: the prefix of every Redis key it uses")
    node_id: Name | None = Field(None, validate_default=True, description="this node's id, unique in the cluster")
    advertise_sip: str | None = Field(
        None,
        description="HOST:PORT Kamailio reaches this node's SIP at, written in its Contact and Via; "
        "default: sip.public_address (or listen) and sip.port",
    )
    advertise_rtp: str | None = Field(
        None, description="address written in this node's SDP for its RTP; default: sip.public_address (or listen)"
    )
    heartbeat: float = Field(1.0, gt=0, le=10, description="seconds between a node's heartbeats and lease renewals")
    node_timeout: float = Field(
        3.0,
        gt=0,
        le=60,
        validate_default=True,
        description="seconds without a heartbeat after which a node counts as lost",
    )
    lease: float = Field(
        3.0,
        gt=0,
        le=60,
        validate_default=True,
        description="seconds the engine lease lasts unless its holder renews it",
    )

    @property
    def enabled(self) -> bool:
        return self.redis_url is not None

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: str | None) -> str | None:
        if v is not None and (
            urlsplit(v).scheme not in ("redis", "rediss", "unix") or not urlsplit(v).netloc + urlsplit(v).path
        ):
            raise ValueError("use redis://HOST:PORT/DB, rediss://HOST:PORT/DB or unix:///PATH")
        return v

    @field_validator("node_id")
    @classmethod
    def _node_named(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None and info.data.get("redis_url") is not None:
            raise ValueError("a node of a cluster needs a node_id, unique in the cluster")
        return v

    _advertise = field_validator("advertise_sip")(lambda v: v if v is None else _hostport(v))
    _rtp = field_validator("advertise_rtp")(lambda v: v if v is None else _check_host(v))
    _timeout = field_validator("node_timeout", "lease")(not_shorter_than("heartbeat"))
