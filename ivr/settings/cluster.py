"""The ``cluster:`` section: several frontdesk nodes behind Kamailio sharing one line through Redis.

Without a ``redis_url`` the server is one node on its own (the embedded
default). With one, the node joins the cluster named by ``name`` under its
``node_id``: live shared state (the engine lease, the engine's event streams,
registrations, node heartbeats) goes to Redis, and durable data (callbacks,
outbox, call records, audit) must be in PostgreSQL, so ``storage.url`` is
checked by the config (docs/cluster.md). A node of a cluster also needs the
cluster's ``secret`` (or a ``secret_file`` holding it): the key that signs and
verifies the checkpoints the nodes share through Redis.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, SecretStr, ValidationInfo, field_validator, model_validator

from ivr.settings.base import Strict, not_shorter_than, raise_problems, resolve_path
from ivr.settings.server import _check_host
from ivr.settings.values import Name

SECRET_MIN = 32  # characters of the cluster's secret, at least


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

    secret: SecretStr | None = Field(
        None,
        description=f"the key (at least {SECRET_MIN} characters) every node signs and verifies checkpoints with; "
        "required with redis_url unless secret_file is given",
    )
    secret_file: Path | None = Field(
        None, description="a file holding the secret (its first line), relative to the config file's directory"
    )
    sentinels: list[str] = Field(
        default_factory=list,
        description="HOST:PORT of each Redis Sentinel; set: the node asks them for the master's address and "
        "uses redis_url only for its database, user, password and TLS (docs/cluster.md, Redis failover)",
    )
    sentinel_master: Name | None = Field(None, description="the master's name the sentinels monitor")
    sentinel_password: SecretStr | None = Field(None, description="the sentinels' own password, if they have one")
    _key: bytes = PrivateAttr(b"")

    @property
    def enabled(self) -> bool:
        return self.redis_url is not None

    @property
    def key(self) -> bytes:
        """The secret's bytes (from ``secret`` or ``secret_file``); empty when the node is on its own."""
        return self._key

    _secret_path = field_validator("secret_file")(lambda v, info: resolve_path(v, info))

    @model_validator(mode="after")
    def _read_secret(self) -> ClusterSettings:
        if self.secret is not None and self.secret_file is not None:
            raise_problems("ClusterSettings", [(("secret_file",), "give secret or secret_file, not both", "***")])
        field, text = "secret", None
        if self.secret is not None:
            text = self.secret.get_secret_value()
        elif self.secret_file is not None:
            field = "secret_file"
            try:
                lines = self.secret_file.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise_problems("ClusterSettings", [((field,), f"cannot read {self.secret_file}: {reason}", "")])
            text = lines[0] if lines else ""
        if text is None:
            if self.enabled:
                msg = (
                    "a node of a cluster needs the cluster's secret (secret: or secret_file:), the same on every "
                    f"node, at least {SECRET_MIN} characters (e.g. `openssl rand -hex 32`)"
                )
                raise_problems("ClusterSettings", [((field,), msg, None)])
            return self
        text = text.strip()
        if len(text) < SECRET_MIN:
            msg = f"the cluster's secret must be at least {SECRET_MIN} characters (e.g. `openssl rand -hex 32`)"
            raise_problems("ClusterSettings", [((field,), msg, "***")])
        self._key = text.encode()
        return self

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

    @field_validator("sentinels")
    @classmethod
    def _sentinel_addresses(cls, v: list[str]) -> list[str]:
        for address in v:
            _hostport(address)
        if len(set(v)) != len(v):
            raise ValueError("a sentinel is listed twice")
        return v

    @model_validator(mode="after")
    def _sentinel_set(self) -> ClusterSettings:
        if not self.sentinels:
            for name in ("sentinel_master", "sentinel_password"):
                if getattr(self, name) is not None:
                    raise_problems("ClusterSettings", [((name,), "belongs with sentinels (none are listed)", None)])
            return self
        if self.sentinel_master is None:
            msg = "name the master the sentinels monitor (their `sentinel monitor NAME ...` line)"
            raise_problems("ClusterSettings", [(("sentinel_master",), msg, None)])
        if self.redis_url is None:
            msg = "sentinels need redis_url too: its database, user and password are used (not its host)"
            raise_problems("ClusterSettings", [(("redis_url",), msg, None)])
        if urlsplit(self.redis_url).scheme == "unix":
            msg = "sentinels give a TCP address: use redis:// or rediss://"
            raise_problems("ClusterSettings", [(("redis_url",), msg, self.redis_url)])
        return self

    _advertise = field_validator("advertise_sip")(lambda v: v if v is None else _hostport(v))
    _rtp = field_validator("advertise_rtp")(lambda v: v if v is None else _check_host(v))
    _timeout = field_validator("node_timeout", "lease")(not_shorter_than("heartbeat"))
