"""The ``callbacks:`` section: supervisors, leases, retries, the slots a caller may pick, the trunk dialled.

The rules these numbers feed (R2, R10, R14, R18, R19) are worked by the
``callback`` package (``callback/rules.py``, ``callback/store.py``) and the
live dialer; docs/callbacks.md describes them.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from ivr.settings.base import Problem, Strict, ends_after_start, raise_problems
from ivr.settings.values import AgentName, Minutes, Name


class CallbackRetrySettings(Strict):
    """A customer who does not answer (or is busy) is tried again, up to ``max_attempts`` in all."""

    max_attempts: int = Field(3, ge=1, le=20, description="dial attempts in all before the callback fails")
    delay: float = Field(600.0, gt=0, le=86400, description="seconds between two attempts")


class CallbackWindow(Strict):
    """A slot a caller may pick for the callback besides "as soon as possible" (server local time)."""

    name: Name = Field(description="said to the caller and shown to agents, e.g. morning")
    start: Minutes = Field(description='"HH:MM", kept as minutes after midnight')
    end: Minutes = Field(description='"HH:MM", after start')

    _after_start = field_validator("end")(ends_after_start("slot"))


def _default_windows() -> list[CallbackWindow]:
    return [
        CallbackWindow(name="morning", start=9 * 60, end=12 * 60),
        CallbackWindow(name="afternoon", start=13 * 60, end=17 * 60),
    ]


class CallbackSettings(Strict):
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
        problems: list[Problem] = []
        for i, name in enumerate(v):
            if name in seen:
                problems.append(((i,), f"supervisor {name!r} is listed twice", name))
            seen.add(name)
        if problems:
            raise_problems("CallbackSettings", problems)
        return v

    @field_validator("windows")
    @classmethod
    def _unique_windows(cls, v: list[CallbackWindow]) -> list[CallbackWindow]:
        seen: set[str] = set()
        problems: list[Problem] = []
        for i, window in enumerate(v):
            if window.name == "asap":
                problems.append(
                    ((i, "name"), '"asap" is the as-soon-as-possible choice: name the slot otherwise', "asap")
                )
            elif window.name in seen:
                problems.append(((i, "name"), f"slot {window.name!r} is listed twice", window.name))
            seen.add(window.name)
        if problems:
            raise_problems("CallbackSettings", problems)
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
