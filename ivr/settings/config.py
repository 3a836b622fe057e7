"""Server configuration: one YAML file, validated at load.

A bad file is refused with :class:`ConfigError`, whose message names the
file, the line and the field (``frontdesk.yaml:12: sip.ring_limit: ...``).
Every setting has a default, so the server runs with no file at all
(``make run``): SQLite, in-process state, SIP on 127.0.0.1:5060, HTTP on
127.0.0.1:8080.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from ivr.flow.config import Day, IvrSettings, Minutes, Name
from ivr.sip.registrar import USERNAME_RE
from queueing.events import OverflowTarget
from queueing.model import ModelError, Strategy


class ConfigError(Exception):
    """A configuration problem, already worded for the person who wrote the file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_host(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if value != "localhost":
            raise ValueError(f"{value!r} is not an IP address") from None
    return value


class SipTimers(_Strict):
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


class SipSettings(_Strict):
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
    user_agent: str = "frontdesk"
    realm: str = Field("frontdesk", description="digest realm agents log in to; part of every agent's ha1")
    timers: SipTimers = SipTimers()

    _listen = field_validator("listen", "public_address")(lambda v: v if v is None else _check_host(v))

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


class MediaSettings(_Strict):
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


class HttpSettings(_Strict):
    listen: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)

    _listen = field_validator("listen")(_check_host)


class StorageSettings(_Strict):
    url: str = Field("sqlite+aiosqlite:///frontdesk.db", description="SQLAlchemy async URL")
    flush_interval: float = Field(0.2, gt=0, le=60, description="seconds between call-record batch writes")

    @field_validator("url")
    @classmethod
    def _async_driver(cls, v: str) -> str:
        if not (v.startswith("sqlite+aiosqlite://") or v.startswith("postgresql+asyncpg://")):
            raise ValueError("use sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB")
        return v


class TextRetrySettings(_Strict):
    base: float = Field(5.0, gt=0, le=3600, description="seconds before the first retry of a failed text")
    factor: float = Field(2.0, ge=1, le=10, description="each further retry waits this many times longer")
    max_delay: float = Field(600.0, gt=0, le=86400, description="longest wait between two attempts, seconds")
    max_attempts: int = Field(8, ge=1, le=100, description="attempts before a text is given up ('failed')")

    @field_validator("max_delay")
    @classmethod
    def _not_below_base(cls, v: float, info: ValidationInfo) -> float:
        base = info.data.get("base")
        if base is not None and v < base:
            raise ValueError(f"max_delay ({v} s) must not be shorter than base ({base} s)")
        return v


class TextSettings(_Strict):
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


class AdminSettings(_Strict):
    token: SecretStr | None = Field(None, description="bearer token for the admin API; none = admin API disabled")

    @field_validator("token")
    @classmethod
    def _long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value().strip()) < 16:
            raise ValueError("the admin token must be at least 16 characters (e.g. `openssl rand -hex 24`)")
        return v


class RegistrarConfig(_Strict):
    """How long agents' phones stay registered (REGISTER expiry, RFC 3261 10.2.1)."""

    min_expires: int = Field(60, ge=1, le=86400, description="shorter registrations get 423 Interval Too Brief")
    max_expires: int = Field(3600, ge=1, le=7 * 86400, description="longer registrations are shortened to this")
    default_expires: int = Field(600, ge=1, description="when the phone names no expiry, seconds")
    nonce_lifetime: float = Field(300.0, gt=0, le=86400, description="seconds a digest nonce is good for")

    @field_validator("max_expires")
    @classmethod
    def _max_not_below_min(cls, v: int, info: ValidationInfo) -> int:
        low = info.data.get("min_expires")
        if low is not None and v < low:
            raise ValueError(f"max_expires ({v} s) must not be shorter than min_expires ({low} s)")
        return v

    @field_validator("default_expires")
    @classmethod
    def _default_within(cls, v: int, info: ValidationInfo) -> int:
        low, high = info.data.get("min_expires"), info.data.get("max_expires")
        if low is not None and high is not None and not low <= v <= high:
            raise ValueError(f"default_expires ({v} s) must lie between min_expires ({low}) and max_expires ({high})")
        return v


def _agent_name_str(v: Any) -> Any:
    if isinstance(v, int) and not isinstance(v, bool):
        raise ValueError(f"write agent names in quotes ('{v}'): YAML read this one as a number")
    return v


def _check_agent_name(v: str) -> str:
    if not USERNAME_RE.match(v):
        raise ValueError(f"{v!r} is not a valid agent name: use up to 64 letters, digits, '.', '_', '~', '+' or '-'")
    return v


AgentName = Annotated[str, BeforeValidator(_agent_name_str), AfterValidator(_check_agent_name)]
_HA1_RE = re.compile(r"^[0-9a-fA-F]{32}$")


SkillLevel = Annotated[int, Field(ge=1, le=100)]


class AgentSettings(_Strict):
    """One agent's SIP login and what calls the agent can take. The password is stored only as its HA1."""

    ha1: str = Field(description="hex MD5 of 'name:realm:password' (`frontdesk hash-password NAME`)")
    display_name: str | None = None
    skills: dict[Name, SkillLevel] = Field(
        default_factory=dict, description="skill -> level; the agent takes a queue's calls when every level is met"
    )
    max_misses: int = Field(2, ge=1, le=100, description="unanswered rings in a row before the agent is not ready")

    @field_validator("ha1")
    @classmethod
    def _hex_md5(cls, v: str) -> str:
        if not _HA1_RE.match(v):
            raise ValueError("ha1 must be 32 hex digits: generate it with `frontdesk hash-password NAME`")
        return v.lower()


# -- queues and the surge switch (docs/queueing.md) ---------------------------------


def _problems(title: str, problems: Iterable[tuple[tuple[str | int, ...], str, Any]]) -> NoReturn:
    """Raise a ValidationError at exact locations, so parse_config can name the line."""
    details = [
        InitErrorDetails(type=PydanticCustomError("queue_config", "{msg}", {"msg": msg}), loc=loc, input=value)
        for loc, msg, value in problems
    ]
    raise ValidationError.from_exception_data(title, details)


def _limit_shorthand(low: float, strict: bool, whole: bool, what: str) -> Callable[[Any], Any]:
    """A plain number means the same value in normal and surge mode; check it here for a one-line error."""

    def widen(v: Any) -> Any:
        if isinstance(v, int | float) and not isinstance(v, bool):
            if not math.isfinite(v) or (v <= low if strict else v < low) or (whole and v != int(v)):
                bound = f"{'greater than' if strict else 'at least'} {low:g}"
                raise ValueError(f"{what} must be {f'a whole number ({bound})' if whole else bound}, got {v}")
            return {"normal": v, "surge": v}
        return v

    return widen


class WaitLimit(_Strict):
    """Seconds, one value for normal mode and one for surge (R11)."""

    normal: float = Field(gt=0, allow_inf_nan=False, description="seconds in normal mode")
    surge: float = Field(gt=0, allow_inf_nan=False, description="seconds in surge mode")


class LengthLimit(_Strict):
    """Callers waiting in line, one value for normal mode and one for surge (R11)."""

    normal: int = Field(ge=0, description="callers in normal mode")
    surge: int = Field(ge=0, description="callers in surge mode")


Wait = Annotated[WaitLimit, BeforeValidator(_limit_shorthand(0, True, False, "a wait in seconds"))]
Length = Annotated[LengthLimit, BeforeValidator(_limit_shorthand(0, False, True, "a queue length"))]


class TierSettings(_Strict):
    """A customer tier (R16): higher priority is served first; callers in ``groups`` get this tier."""

    name: Name
    priority: int = Field(ge=0, le=1000, description="higher is served first")
    groups: list[Name] = Field(default_factory=list, description="caller groups (ivr.groups) that put a caller here")


def _default_tiers() -> list[TierSettings]:
    return [
        TierSettings(name="special", priority=3),
        TierSettings(name="senior", priority=2),
        TierSettings(name="ordinary", priority=1),
    ]


class ServiceLevelSettings(_Strict):
    """The service-level objective: ``target`` of calls answered within ``seconds``."""

    seconds: float = Field(20.0, gt=0, le=3600, description="T of 'X % answered within T seconds'")
    target: float = Field(0.8, ge=0, le=1, description="the share aimed at, 0..1")


class QueueSettings(_Strict):
    """One queue: who may take its calls, how they are chosen, and the limits (docs/queueing.md)."""

    skills: dict[Name, SkillLevel] = Field(default_factory=dict, description="skill -> minimum agent level")
    strategy: Strategy = Field("longest_idle", description="longest_idle | round_robin | fewest_calls | ring_all")
    tiers: list[TierSettings] = Field(default_factory=_default_tiers, min_length=1, description="R16")
    urgent_groups: list[Name] = Field(default_factory=list, description="caller groups never peak-shaved (R8)")
    announce_every: Wait = Field(
        WaitLimit(normal=30, surge=20), description="seconds between position/wait announcements"
    )
    max_wait: Wait = Field(WaitLimit(normal=60, surge=40), description="seconds in line before overflow (R11)")
    max_length: Length = Field(
        LengthLimit(normal=20, surge=10), description="callers in line beyond which the last overflow"
    )
    overflow: OverflowTarget = Field("message", description="where overflowing callers go in normal mode")
    surge_overflow: OverflowTarget = Field("callback", description="where they go in surge mode (R10)")
    callback_ewt: float | None = Field(
        None, gt=0, le=86400, description="R2: a caller whose estimated wait is longer is offered a callback at once"
    )
    ring_timeout: float = Field(12.0, gt=0, le=300, description="seconds an agent's phone rings before the next try")
    wrap_up: float = Field(10.0, ge=0, le=3600, description="seconds after a call before the agent is ready again")
    service_level: ServiceLevelSettings = ServiceLevelSettings()
    abandon_grace: float = Field(
        5.0, ge=0, le=300, description="abandons quicker than this are not held against the service level"
    )
    initial_aht: float = Field(
        180.0, gt=0, le=36000, description="handle time assumed before the first call ends, seconds"
    )

    @field_validator("tiers")
    @classmethod
    def _unique_tiers(cls, v: list[TierSettings]) -> list[TierSettings]:
        seen: set[str] = set()
        problems: list[tuple[tuple[str | int, ...], str, Any]] = []
        for i, tier in enumerate(v):
            if tier.name in seen:
                problems.append(((i, "name"), f"tier {tier.name!r} is listed twice", tier.name))
            seen.add(tier.name)
        if problems:
            _problems("QueueSettings", problems)
        return v


def _default_queues() -> dict[str, QueueSettings]:
    return {"general": QueueSettings()}


class SurgeWindow(_Strict):
    """A daily surge window in the server's local time, [start, end)."""

    start: Minutes = Field(description='"HH:MM" (kept as minutes after midnight)')
    end: Minutes = Field(description='"HH:MM", after start; "24:00" is midnight at the end of the day')
    days: list[Day] | None = Field(None, min_length=1, description="mon..sun; default: every day")

    @field_validator("end")
    @classmethod
    def _after_start(cls, v: int, info: ValidationInfo) -> int:
        start = info.data.get("start")
        if start is not None and v <= start:
            raise ValueError("end must be after start (a window past midnight is two windows)")
        return v


class SurgeSettings(_Strict):
    """The surge switch: when it turns on by itself, and what it does (docs/queueing.md)."""

    auto: bool = Field(True, description="switch on and off by the thresholds below")
    ewt_on: float | None = Field(120.0, ge=0, allow_inf_nan=False, description="on when a queue's EWT reaches this")
    ewt_off: float | None = Field(
        45.0, ge=0, allow_inf_nan=False, description="off only when every EWT is back to this"
    )
    queue_length_on: int | None = Field(None, ge=1, description="on when a queue has this many callers waiting")
    queue_length_off: int | None = Field(None, ge=0, description="off only when every queue is back to this")
    service_level_on: float | None = Field(None, ge=0, le=1, description="on when the recent service level falls below")
    service_level_off: float | None = Field(None, ge=0, le=1, description="off only when it is back at or above")
    service_level_window: float = Field(300.0, gt=0, le=86400, description="seconds of calls the service level covers")
    min_dwell: float = Field(60.0, ge=0, le=86400, description="seconds the automatic switch stays put after a change")
    schedule: list[SurgeWindow] = Field(default_factory=list, description="daily surge windows, server local time")
    peak_shaving_ewt: float | None = Field(
        300.0,
        ge=0,
        allow_inf_nan=False,
        description="R8: in surge, shave callers whose EWT is above this; null = never",
    )
    notice: bool = Field(False, description="R6: in surge, play a notice to every caller joining a queue")
    pause_outbound: bool = Field(True, description="R15: in surge, pause outbound callbacks and marketing")

    @field_validator("ewt_off", "queue_length_off")
    @classmethod
    def _off_not_above_on(cls, v: float | None, info: ValidationInfo) -> float | None:
        on_name = info.field_name.removesuffix("_off") + "_on" if info.field_name else ""
        on = info.data.get(on_name)
        if v is not None and on is not None and v > on:
            raise ValueError(f"{info.field_name} ({v}) must not exceed {on_name} ({on}): the switch would flap")
        return v

    @field_validator("service_level_off")
    @classmethod
    def _off_not_below_on(cls, v: float | None, info: ValidationInfo) -> float | None:
        on = info.data.get("service_level_on")
        if v is not None and on is not None and v < on:
            raise ValueError(
                f"service_level_off ({v}) must not be below service_level_on ({on}): the switch would flap"
            )
        return v


# -- callbacks (R2, R10, R14, R18, R19; callback/) ---------------------------------


class CallbackRetrySettings(_Strict):
    """A customer who does not answer (or is busy) is tried again, up to ``max_attempts`` in all."""

    max_attempts: int = Field(3, ge=1, le=20, description="dial attempts in all before the callback fails")
    delay: float = Field(600.0, gt=0, le=86400, description="seconds between two attempts")


class CallbackWindow(_Strict):
    """A slot a caller may pick for the callback besides "as soon as possible" (server local time)."""

    name: Name = Field(description="said to the caller and shown to agents, e.g. morning")
    start: Minutes = Field(description='"HH:MM", kept as minutes after midnight')
    end: Minutes = Field(description='"HH:MM", after start')

    @field_validator("end")
    @classmethod
    def _after_start(cls, v: int, info: ValidationInfo) -> int:
        start = info.data.get("start")
        if start is not None and v <= start:
            raise ValueError("end must be after start (a slot past midnight is two slots)")
        return v


def _default_windows() -> list[CallbackWindow]:
    return [
        CallbackWindow(name="morning", start=9 * 60, end=12 * 60),
        CallbackWindow(name="afternoon", start=13 * 60, end=17 * 60),
    ]


class CallbackSettings(_Strict):
    """Callback lists: who supervises them, how agents work them, and how customers are dialled."""

    supervisors: list[AgentName] = Field(
        default_factory=list, description="agents (names under agents:) who see and reassign every callback"
    )
    lease_seconds: float = Field(300.0, gt=0, le=86400, description="how long an agent's claim on a callback lasts")
    retry: CallbackRetrySettings = CallbackRetrySettings()
    max_age: float = Field(86400.0, gt=0, description="seconds after which a waiting callback expires (with a text)")
    follow_up_delay: float = Field(
        86400.0, gt=0, description="R18: seconds after a completed case that its follow-up call is due"
    )
    windows: list[CallbackWindow] = Field(
        default_factory=_default_windows,
        max_length=8,
        description='slots a caller may pick besides "as soon as possible" (keys 2-9 in the IVR)',
    )
    trunk: str = Field(
        "sip:{number}@127.0.0.1:5070", description="SIP URI customers are dialled at; {number} is their number"
    )
    reserve_agents: int = Field(
        1, ge=0, le=10000, description="ready agents kept for inbound callers before a callback takes one"
    )
    dispatch_interval: float = Field(2.0, gt=0, le=3600, description="seconds between dispatcher rounds")
    promise_margin: float = Field(
        300.0, ge=0, le=86400, description="seconds of slack added to the forecast when promising a time"
    )
    session_hours: float = Field(12.0, gt=0, le=168, description="how long an agent's page login lasts, hours")

    @field_validator("supervisors")
    @classmethod
    def _listed_once(cls, v: list[str]) -> list[str]:
        seen: set[str] = set()
        problems: list[tuple[tuple[str | int, ...], str, Any]] = []
        for i, name in enumerate(v):
            if name in seen:
                problems.append(((i,), f"supervisor {name!r} is listed twice", name))
            seen.add(name)
        if problems:
            _problems("CallbackSettings", problems)
        return v

    @field_validator("windows")
    @classmethod
    def _unique_windows(cls, v: list[CallbackWindow]) -> list[CallbackWindow]:
        seen: set[str] = set()
        problems: list[tuple[tuple[str | int, ...], str, Any]] = []
        for i, window in enumerate(v):
            if window.name == "asap":
                problems.append(
                    ((i, "name"), '"asap" is the as-soon-as-possible choice: name the slot otherwise', "asap")
                )
            elif window.name in seen:
                problems.append(((i, "name"), f"slot {window.name!r} is listed twice", window.name))
            seen.add(window.name)
        if problems:
            _problems("CallbackSettings", problems)
        return v

    @field_validator("trunk")
    @classmethod
    def _dialable(cls, v: str) -> str:
        if "{number}" not in v:
            raise ValueError("the trunk must contain {number}, e.g. sip:{number}@gateway.example:5060")
        try:
            uri = v.format(number="0123456789")
        except (KeyError, IndexError, ValueError):
            raise ValueError("only {number} may stand in braces in the trunk") from None
        if not (uri.startswith("sip:") or uri.startswith("sips:")) or "@" not in uri or any(c.isspace() for c in uri):
            raise ValueError(f"{v!r} is not a SIP URI template like sip:{{number}}@gateway.example:5060")
        return v


class Config(_Strict):
    sip: SipSettings = SipSettings()
    media: MediaSettings = MediaSettings()
    http: HttpSettings = HttpSettings()
    storage: StorageSettings = StorageSettings()
    texts: TextSettings = TextSettings()
    admin: AdminSettings = AdminSettings()
    ivr: IvrSettings = IvrSettings()  # no flows: the built-in demo (ivr/flow/demo.yaml)
    registrar: RegistrarConfig = RegistrarConfig()
    agents: dict[AgentName, AgentSettings] = Field(default_factory=dict, description="SIP logins for agents' phones")
    queues: dict[Name, QueueSettings] = Field(
        default_factory=_default_queues, min_length=1, description="queue name -> settings; default: one 'general'"
    )
    surge: SurgeSettings = SurgeSettings()
    callbacks: CallbackSettings = CallbackSettings()
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _queue_references(self) -> Config:
        groups = self.ivr.groups
        problems: list[tuple[tuple[str | int, ...], str, Any]] = []
        for qname, queue in self.queues.items():
            refs: list[tuple[tuple[str | int, ...], str]] = [
                (("tiers", i, "groups", j), g) for i, t in enumerate(queue.tiers) for j, g in enumerate(t.groups)
            ]
            refs += [(("urgent_groups", j), g) for j, g in enumerate(queue.urgent_groups)]
            for loc, group in refs:
                if group not in groups:
                    close = difflib.get_close_matches(group, list(groups), n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    msg = f"unknown caller group {group!r}{hint}: define it under ivr.groups"
                    problems.append((("queues", qname, *loc), msg, group))
        # every queue and callback node of every flow names a queue (and a slot) that exists
        windows = {w.name for w in self.callbacks.windows} | {"asap"}
        for fname, flow in self.ivr.flows.items():
            for nid, node in flow.nodes.items():
                slot = getattr(node, "slot", None)
                if getattr(node, "type", None) == "callback" and slot not in windows:
                    own = "ivr" in self.model_fields_set
                    msg = f"unknown callback slot {slot!r}: asap or a window of callbacks.windows"
                    if not own:
                        msg = f"the built-in demo flow offers the slot {slot!r}: keep it in callbacks.windows"
                    where = ("ivr", "flows", fname, "nodes", nid, "slot") if own else ("callbacks",)
                    problems.append((where, msg, slot))
                wanted = getattr(node, "queue", None)
                if getattr(node, "type", None) in ("queue", "callback") and wanted not in self.queues:
                    known = ", ".join(sorted(self.queues))
                    if "ivr" not in self.model_fields_set:
                        msg = f"the built-in demo flow sends callers to queue {wanted!r}: define it, or write ivr.flows"
                        problems.append((("queues",), msg, wanted))
                        continue
                    msg = f"unknown queue {wanted!r}: define it under queues (queues now: {known})"
                    problems.append((("ivr", "flows", fname, "nodes", nid, "queue"), msg, wanted))
        if problems:
            _problems("Config", problems)
        # every rule of the queueing model holds once the fields pass; this catches any the fields missed
        from ivr.settings.queues import model_from_config

        try:
            model_from_config(self)
        except ModelError as exc:
            _problems("Config", [(("queues",), str(exc), None)])
        return self

    @model_validator(mode="after")
    def _supervisors_are_agents(self) -> Config:
        problems: list[tuple[tuple[str | int, ...], str, Any]] = []
        for i, name in enumerate(self.callbacks.supervisors):
            if name not in self.agents:
                close = difflib.get_close_matches(name, list(self.agents), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                msg = f"unknown agent {name!r}{hint}: a supervisor logs in as an agent, define it under agents"
                problems.append((("callbacks", "supervisors", i), msg, name))
        if problems:
            _problems("Config", problems)
        return self


def load_config(path: str | Path | None) -> Config:
    """Load and validate a config file; ``None`` gives the embedded defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        line = text_line(exc.object[: exc.start])
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {exc.object[exc.start]:#04x})") from None
    return parse_config(text, str(path))


def parse_config(text: str, filename: str = "<config>") -> Config:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else 0
        raise ConfigError(f"{filename}:{line}: not valid YAML: {exc.problem}") from None
    except yaml.reader.ReaderError as exc:  # e.g. a control character
        line = text_line(text[: exc.position])
        raise ConfigError(f"{filename}:{line}: not valid YAML: {exc.reason} ({exc.character!r})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{filename}: not valid YAML: {exc}") from None
    if data is None:
        return Config()
    if not isinstance(data, dict):
        raise ConfigError(f"{filename}:1: the top level must be a mapping of sections (sip, http, ...)")
    try:
        # relative paths in the file (prompt recordings, group lists) are relative to the file
        return Config.model_validate(data, context={"config_dir": Path(filename).parent})
    except ValidationError as exc:
        raise ConfigError(explain(exc, node, filename)) from None


def explain(exc: ValidationError, node: Any, filename: str) -> str:
    """``file:line: field: message`` for every error of a model validated from the YAML ``node``."""
    problems = []
    for err in exc.errors():
        # leave out pydantic's own steps (validator functions, members of a union such as list[float])
        loc = [p for p in err["loc"] if not (isinstance(p, str) and _pydantic_step(p))]
        field = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        problems.append(f"{filename}:{line_of(node, loc)}: {field}: {msg}")
    return "\n".join(problems)


def text_line(before: str | bytes) -> int:
    """1-based line number of the position just after ``before``."""
    if isinstance(before, bytes):
        return before.count(b"\n") + 1
    return before.count("\n") + 1


def _pydantic_step(part: str) -> bool:
    """A location part that is pydantic's, not the file's (``[key]`` stays: the key itself is wrong)."""
    return part.startswith("function-") or ("[" in part and part != "[key]")


def line_of(node: Any, loc: Iterable[Any]) -> int:
    """Line of the YAML node at ``loc`` (or of its nearest existing parent)."""
    line = node.start_mark.line + 1 if node is not None else 1
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == key or (isinstance(key, int) and k.value == str(key)):  # e.g. an unquoted number
                    # point at the key for a missing child, at the value otherwise
                    line = k.start_mark.line + 1
                    node = v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line
