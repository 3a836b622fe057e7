"""The small value types of the settings: names, phone numbers and keys, times of day, agent names.

Each is an ``Annotated`` type whose validators word the problem for the person
who wrote the file. Two YAML 1.1 habits are handled here on purpose: an
unquoted ``17:30`` is read as the base-60 integer 1050, which is exactly the
minutes since midnight (:data:`Minutes` accepts it), and unquoted phone numbers
are refused (YAML turns ``0123`` into 83 and ``+44...`` into a plain integer).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field

from ivr.sip.registrar import USERNAME_RE

KEYS = "0123456789*#ABCD"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def _check_name(v: str) -> str:
    if not NAME_RE.fullmatch(v):
        raise ValueError(f"{v!r} is not a valid name: use up to 64 letters, digits, '_', '.' or '-'")
    return v


Name = Annotated[str, AfterValidator(_check_name)]


def _refuse_int(v: Any) -> Any:
    if isinstance(v, int) and not isinstance(v, bool):
        raise ValueError(
            f"write numbers in quotes: YAML read this one as the integer {v} (leading zeros and '+' are lost)"
        )
    return v


def _check_number(v: str) -> str:
    if not v or any(c.isspace() for c in v):
        raise ValueError(f"{v!r} is not a number: no spaces, not empty")
    return v


Number = Annotated[str, BeforeValidator(_refuse_int), AfterValidator(_check_number)]


def _key_str(v: Any) -> Any:
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 9:
        return str(v)
    return v


def _check_key(v: str) -> str:
    if len(v) != 1 or v not in KEYS:
        raise ValueError(f"{v!r} is not a phone key: use one of 0-9 * # A-D (quote * and #)")
    return v


Key = Annotated[str, BeforeValidator(_key_str), AfterValidator(_check_key)]


def _minutes(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError('write times as "HH:MM"')
    if isinstance(v, int):
        # YAML 1.1 reads an unquoted 17:30 as 17*60+30: already minutes since midnight
        if 0 <= v <= 1440:
            return v
        raise ValueError('write times as "HH:MM" (00:00 to 24:00)')
    if isinstance(v, str):
        m = re.fullmatch(r"(\d{1,2}):(\d{2})", v.strip())
        if m:
            hours, minutes = int(m[1]), int(m[2])
            if (hours < 24 and minutes < 60) or (hours == 24 and minutes == 0):
                return hours * 60 + minutes
        raise ValueError(f'{v!r} is not a time: write "HH:MM" (00:00 to 24:00)')
    raise ValueError('write times as "HH:MM"')


Minutes = Annotated[int, BeforeValidator(_minutes)]
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _check_regex(v: str) -> str:
    try:
        re.compile(v)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    return v


Pattern = Annotated[str, AfterValidator(_check_regex)]

_SAY_VALUE = re.compile(r"caller|var:[A-Za-z0-9_][A-Za-z0-9_.-]*|[0-9*#]+")


def _check_say_value(v: str) -> str:
    if not _SAY_VALUE.fullmatch(v):
        raise ValueError(f"{v!r}: use caller, var:NAME or literal digits")
    return v


SayValue = Annotated[str, BeforeValidator(_refuse_int), AfterValidator(_check_say_value)]


def _check_uri(v: str) -> str:
    if not re.fullmatch(r"(sips?|tel):\S+", v):
        raise ValueError(f"{v!r} is not a sip:, sips: or tel: URI")
    return v


Uri = Annotated[str, AfterValidator(_check_uri)]


def _agent_name_str(v: Any) -> Any:
    if isinstance(v, int) and not isinstance(v, bool):
        raise ValueError(f"write agent names in quotes ('{v}'): YAML read this one as a number")
    return v


def _check_agent_name(v: str) -> str:
    if not USERNAME_RE.match(v):
        raise ValueError(f"{v!r} is not a valid agent name: use up to 64 letters, digits, '.', '_', '~', '+' or '-'")
    return v


#: An agent's SIP login name (the registrar's user names).
AgentName = Annotated[str, BeforeValidator(_agent_name_str), AfterValidator(_check_agent_name)]
#: How well an agent has a skill, or how well a queue needs it.
SkillLevel = Annotated[int, Field(ge=1, le=100)]
