"""The server's own sections of the config file: SIP, media, HTTP, storage, texts, admin, registrar, shutdown.

Where the server listens and keeps its data, the SIP timers and the
registrar's expiry rules, how text messages leave the building, and the admin
token. Every field has a default, so the server runs with no file at all.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from ivr.settings.base import Strict, not_shorter_than


def _check_host(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if value != "localhost":
            raise ValueError(f"{value!r} is not an IP address") from None
    return value


def _header_value(value: str) -> str:
    """A header value we send as given: printable ASCII, no line breaks (no header can be smuggled in)."""
    if not 1 <= len(value) <= 100 or not value.isascii() or not value.isprintable():
        raise ValueError("use 1-100 printable ASCII characters")
    return value


class SipTimers(Strict):
    t1: float = Field(0.5, gt=0, le=10, description="RTT estimate (RFC 3261 T1), seconds")
    t2: float = Field(4.0, gt=0, le=60, description="maximum retransmit interval (T2), seconds")
    t4: float = Field(5.0, gt=0, le=60, description="how long a message may stay in the network (T4), seconds")

    @field_validator("t2")
    @classmethod
    def _order(cls, v: float, info: ValidationInfo) -> float:
        if "t1" in info.data and v < info.data["t1"]:
            raise ValueError("t2 must not be shorter than t1")
        return v


Transport = Literal["udp", "tcp"]


def _both_transports() -> list[Transport]:
    return ["udp", "tcp"]


class SipSettings(Strict):
    listen: str = "127.0.0.1"
    port: int = Field(5060, ge=0, le=65535)
    transports: list[Transport] = Field(default_factory=_both_transports, min_length=1)
    public_address: str | None = Field(None, description="address written in Contact/Via/SDP; default: listen")
    ring_limit: float = Field(
        10.0, gt=0, le=120, description="seconds a caller may ring before we must answer (2 rings = 10 s)"
    )
    answer_delay: float = Field(0.0, ge=0, description="seconds of ringback before answering")
    hold_time: float = Field(3600.0, gt=0, description="longest an answered call is kept before we hang up, seconds")
    max_calls: int = Field(20000, gt=0, description="calls in progress beyond which new INVITEs get 503")
    connected_line: bool = Field(
        True,
        description="when a queue's agent answers, tell the caller's phone who answered (UPDATE with "
        "P-Asserted-Identity) if its INVITE allowed UPDATE",
    )
    user_agent: str = Field(
        "frontdesk", description="Server/User-Agent header of our SIP messages; names no version to scanners"
    )
    realm: str = Field("frontdesk", description="digest realm agents log in to; part of every agent's ha1")
    timers: SipTimers = SipTimers()

    _listen = field_validator("listen", "public_address")(lambda v: v if v is None else _check_host(v))
    _header = field_validator("user_agent")(lambda v: _header_value(v))

    @field_validator("realm")
    @classmethod
    def _plain_realm(cls, v: str) -> str:
        # quoted in WWW-Authenticate; some phones cannot read a comma inside quotes
        if not 1 <= len(v) <= 100 or any(c in v for c in '"\\,') or not v.isprintable():
            raise ValueError("use 1-100 printable characters without quotes, backslashes or commas")
        return v

    @field_validator("answer_delay")
    @classmethod
    def _within_ring_limit(cls, v: float, info: ValidationInfo) -> float:
        ring_limit = info.data.get("ring_limit")
        if ring_limit is not None and v >= ring_limit:
            raise ValueError(
                f"answer_delay ({v} s) must be shorter than ring_limit ({ring_limit} s): no caller is left ringing"
            )
        return v


class MediaSettings(Strict):
    rtp_port_min: int = Field(20000, ge=1024, le=65534)
    rtp_port_max: int = Field(30000, ge=1026, le=65535)
    timeout: float = Field(30.0, ge=0, description="hang up when the caller's RTP stops this long (0: never)")
    prompt_cache: Path = Field(Path(".cache/prompts"), description="where rendered prompts are kept")
    recordings_dir: Path = Field(Path("recordings"), description="where caller messages are written")

    @field_validator("rtp_port_max")
    @classmethod
    def _range(cls, v: int, info: ValidationInfo) -> int:
        low = info.data.get("rtp_port_min")
        if low is not None and v - low < 2:
            raise ValueError("rtp_port_max must be at least rtp_port_min + 2")
        return v


class HttpSettings(Strict):
    listen: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    server_header: str = Field(
        "frontdesk", description="Server header of every HTTP answer (instead of aiohttp's, which names versions)"
    )

    _listen = field_validator("listen")(_check_host)
    _header = field_validator("server_header")(lambda v: _header_value(v))


class StorageSettings(Strict):
    url: str = Field("sqlite+aiosqlite:///frontdesk.db", description="SQLAlchemy async URL")
    flush_interval: float = Field(0.2, gt=0, le=60, description="seconds between call-record batch writes")

    @field_validator("url")
    @classmethod
    def _async_driver(cls, v: str) -> str:
        if not (v.startswith("sqlite+aiosqlite://") or v.startswith("postgresql+asyncpg://")):
            raise ValueError("use sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB")
        return v


class TextRetrySettings(Strict):
    base: float = Field(5.0, gt=0, le=3600, description="seconds before the first retry of a failed text")
    factor: float = Field(2.0, ge=1, le=10, description="each further retry waits this many times longer")
    max_delay: float = Field(600.0, gt=0, le=86400, description="longest wait between two attempts, seconds")
    max_attempts: int = Field(8, ge=1, le=100, description="attempts before a text is given up ('failed')")

    _not_below_base = field_validator("max_delay")(not_shorter_than("base"))


class TextSettings(Strict):
    """The text-message (SMS) outbox: how texts leave the building."""

    sender: Literal["log", "webhook"] = Field("log", description="log: write texts to the log; webhook: POST them")
    webhook_url: str | None = Field(None, validate_default=True, description="gateway URL for sender: webhook")
    timeout: float = Field(5.0, gt=0, le=60, description="seconds the gateway has to accept one text")
    poll_interval: float = Field(1.0, gt=0, le=60, description="seconds between looks for texts due for a retry")
    retry: TextRetrySettings = TextRetrySettings()

    @field_validator("webhook_url")
    @classmethod
    def _url_for_webhook(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            if info.data.get("sender") == "webhook":
                raise ValueError("sender is 'webhook': set webhook_url to the gateway's http(s) URL")
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{v!r} is not an http:// or https:// URL")
        return v


class AdminSettings(Strict):
    token: SecretStr | None = Field(None, description="bearer token for the admin API; none = admin API disabled")

    @field_validator("token")
    @classmethod
    def _long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value().strip()) < 16:
            raise ValueError("the admin token must be at least 16 characters (e.g. `openssl rand -hex 24`)")
        return v


class RegistrarConfig(Strict):
    """How long agents' phones stay registered (REGISTER expiry, RFC 3261 10.2.1)."""

    min_expires: int = Field(60, ge=1, le=86400, description="shorter registrations get 423 Interval Too Brief")
    max_expires: int = Field(3600, ge=1, le=7 * 86400, description="longer registrations are shortened to this")
    default_expires: int = Field(600, ge=1, description="when the phone names no expiry, seconds")
    nonce_lifetime: float = Field(300.0, gt=0, le=86400, description="seconds a digest nonce is good for")

    _max_not_below_min = field_validator("max_expires")(not_shorter_than("min_expires"))

    @field_validator("default_expires")
    @classmethod
    def _default_within(cls, v: int, info: ValidationInfo) -> int:
        low, high = info.data.get("min_expires"), info.data.get("max_expires")
        if low is not None and high is not None and not low <= v <= high:
            raise ValueError(f"default_expires ({v} s) must lie between min_expires ({low}) and max_expires ({high})")
        return v


class ShutdownSettings(Strict):
    """What SIGTERM does: drain (take no new call, let the calls in progress end), then stop."""

    drain_seconds: float = Field(
        600.0,
        ge=0,
        le=86400,
        description="longest a SIGTERM waits for the calls in progress to end before hanging up the rest, seconds "
        "(0: hang up at once); a second SIGTERM or a SIGINT stops at once",
    )
    drain_min_seconds: float = Field(
        2.0,
        ge=0,
        le=60,
        description="shortest drain, even with no call in progress: OPTIONS and /healthz answer 503 this long, so "
        "that a proxy's or load balancer's probe (Kamailio's: one a second) takes the node out before it goes",
    )
