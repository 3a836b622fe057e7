"""The ``ivr:`` section of the config file: prompts, caller groups, notices, flows.

Everything here is checked when the file is loaded, and a problem is reported
like the rest of the config: ``frontdesk.yaml:42: ivr.flows.main.nodes.menu.keys.2:
unknown node 'hot_topc' (did you mean 'hot_topic'?)``. Field-level problems come
from the models; cross references (node targets, prompt ids, groups, flows,
unreachable nodes, loops with no way out) are checked by the ``after``
validators, which raise a ``ValidationError`` carrying the exact location so
``ivr.settings.config.parse_config`` can name the line.

With no ``flows`` the built-in demo (``demo.yaml`` next to this file) is used;
prompts, groups and notices given in the file are merged over the demo's, so a
site can keep the demo flow and still add its own groups or recordings.

Two YAML 1.1 habits are handled on purpose: an unquoted ``on:`` key is read as
the boolean ``True`` (branch ``on:`` and surge cases accept it), and an
unquoted ``17:30`` is read as the base-60 integer 1050, which is exactly the
minutes since midnight (time-of-day cases accept it). Unquoted phone numbers
are refused: YAML turns ``0123`` into 83 and ``+44...`` into a plain integer.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from functools import cache, lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, cast

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

DEMO_PATH = Path(__file__).with_name("demo.yaml")

KEYS = "0123456789*#ABCD"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

Loc = tuple[str | int, ...]

# -- built-in prompts ------------------------------------------------------------

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = {20: "twenty", 30: "thirty", 40: "forty", 50: "fifty", 60: "sixty", 70: "seventy", 80: "eighty", 90: "ninety"}

#: Built-in tones (not speech): id -> (frequency in Hz, seconds).
BUILTIN_TONES: dict[str, tuple[float, float]] = {"beep": (1000.0, 0.3)}


def builtin_prompt_texts() -> dict[str, str]:
    """Spoken built-in prompts (id -> English text) that need no config.

    Digits for ``say_digits`` (``digit_0``..``digit_9``, ``digit_star``,
    ``digit_hash``) and number words for ``say_number`` (``num_0``..``num_19``,
    ``num_20``..``num_90`` by tens, ``num_hundred``, ``num_thousand``). The
    ``beep`` tone is in :data:`BUILTIN_TONES`.
    """
    texts = {f"digit_{d}": _ONES[d] for d in range(10)}
    texts["digit_star"] = "star"
    texts["digit_hash"] = "hash"
    texts.update({f"num_{n}": _ONES[n] for n in range(20)})
    texts.update({f"num_{n}": word for n, word in _TENS.items()})
    texts["num_hundred"] = "hundred"
    texts["num_thousand"] = "thousand"
    texts.update(QUEUE_PROMPT_TEXTS)
    return texts


#: What callers waiting in a queue hear (docs/queueing.md); a prompt of the same id in the config replaces one.
QUEUE_PROMPT_TEXTS: dict[str, str] = {
    "queue_position": "You are number",
    "queue_in_line": "in the queue.",
    "queue_wait": "Your estimated waiting time is",
    "queue_minutes": "minutes.",
    "queue_wait_under_a_minute": "Your estimated waiting time is less than one minute.",
    "queue_wait_unknown": "All our agents are busy at the moment. Please stay on the line.",
    "queue_busy_notice": "Our lines are very busy right now. We will answer you as soon as we can.",
    "callback_booked": "Your callback is booked.",
    "callback_within": "We will call you back within",
    "callback_hours": "hours.",
    "callback_exists": "You already have a callback booked with us.",
    "callback_cancelled": "Your callback is cancelled.",
    "callback_none": "You have no callback booked with us.",
    "callback_failed": "Sorry, we could not book your callback just now. Please try again later.",
    "queue_peak_shaving": (
        "We are receiving a very large number of calls right now, and we cannot tell you when an agent "
        "will be free. To save you waiting, please call again later, or use our self-service channels "
        "on the web, in the app, or by text message."
    ),
}


#: Built-in music made in code (ivr/settings/prompts.py).
BUILTIN_MUSIC: frozenset[str] = frozenset({"hold_music"})

BUILTIN_PROMPTS: frozenset[str] = frozenset(builtin_prompt_texts()) | frozenset(BUILTIN_TONES) | BUILTIN_MUSIC


# -- small value types -----------------------------------------------------------

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def _check_name(v: str) -> str:
    if not _NAME.fullmatch(v):
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


# -- errors with an exact location ----------------------------------------------


def _raise(title: str, problems: Iterable[tuple[Loc, str, Any]]) -> NoReturn:
    """Raise a ValidationError whose locations pydantic prefixes with the field path."""
    details = [
        InitErrorDetails(type=PydanticCustomError("ivr_config", "{msg}", {"msg": msg}), loc=loc, input=value)
        for loc, msg, value in problems
    ]
    raise ValidationError.from_exception_data(title, details)


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _config_dir(info: ValidationInfo) -> Path:
    context = info.context
    if isinstance(context, dict) and context.get("config_dir") is not None:
        return Path(context["config_dir"])
    return Path(".")


def _resolve(v: Path | None, info: ValidationInfo) -> Path | None:
    return None if v is None else (_config_dir(info) / v).resolve()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- prompts, groups, notices ---------------------------------------------------------


class PromptSettings(_Strict):
    """A prompt: ``text`` (spoken by espeak-ng at start-up) or ``file`` (a WAV file)."""

    text: str | None = Field(None, min_length=1)
    file: Path | None = Field(None, description="WAV file, relative to the config file's directory")

    @field_validator("file")
    @classmethod
    def _exists(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        path = _resolve(v, info)
        if path is not None and not path.is_file():
            raise ValueError(f"{v}: no such file (looked for {path})")
        return path

    @model_validator(mode="after")
    def _one_source(self) -> PromptSettings:
        if self.text is None and self.file is None:
            raise ValueError("a prompt needs text: (spoken at start-up) or file: (a WAV recording)")
        if self.text is not None and self.file is not None:
            raise ValueError("give a prompt text: or file:, not both")
        return self


def _read_number_file(path: Path) -> tuple[list[str], list[str]]:
    """Numbers in a group file (one per line, '#' starts a comment) and the problems found."""
    numbers: list[str] = []
    problems: list[str] = []
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if any(c.isspace() for c in line):
            problems.append(f"{path.name}:{lineno}: {line!r}: one number per line")
        else:
            numbers.append(line)
    return numbers, problems


class GroupSettings(_Strict):
    """A caller group (R6): exact numbers, prefixes, regular expressions and/or a file of numbers."""

    numbers: list[Number] = Field(default_factory=list)
    prefixes: list[Number] = Field(default_factory=list)
    patterns: list[Pattern] = Field(default_factory=list, description="regular expressions matched in full")
    file: Path | None = Field(None, description="one number per line, '#' comments; relative to the config file")
    _file_numbers: frozenset[str] = PrivateAttr(default_factory=frozenset)

    @field_validator("file")
    @classmethod
    def _resolve_file(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return _resolve(v, info)

    @model_validator(mode="after")
    def _read_file(self) -> GroupSettings:
        if not (self.numbers or self.prefixes or self.patterns or self.file):
            raise ValueError("a group needs numbers, prefixes, patterns or a file")
        if self.file is not None:
            try:
                numbers, problems = _read_number_file(self.file)
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                _raise("GroupSettings", [(("file",), f"cannot read {self.file}: {reason}", str(self.file))])
            if problems:
                _raise("GroupSettings", [(("file",), "; ".join(problems[:5]), str(self.file))])
            self._file_numbers = frozenset(numbers)
        return self

    @property
    def file_numbers(self) -> frozenset[str]:
        """The numbers read from ``file`` at load."""
        return self._file_numbers


class NoticeSettings(_Strict):
    """A targeted notice (R6): ``prompt`` plays before the menu to callers in ``group``."""

    group: Name
    prompt: Name
    active: bool = True


# -- nodes ------------------------------------------------------------------------------


def _opt(loc: Loc, value: str | None) -> list[tuple[Loc, str]]:
    return [] if value is None else [(loc, value)]


class NodeBase(_Strict):
    """What every node type has: marks acted on when the node is entered."""

    text: str | None = Field(None, min_length=1, description="text message (SMS) sent to the caller")
    text_reason: Name | None = Field(None, description="why the text is sent (metric label); default: outcome")
    outcome: Name | None = Field(None, description="for the call record: hotkey, self_service, screened, ...")
    complaint: Name | None = Field(None, description="complaint category counted monthly (R4)")

    @model_validator(mode="after")
    def _reason_needs_text(self) -> NodeBase:
        if self.text_reason is not None and self.text is None:
            _raise(type(self).__name__, [(("text_reason",), "text_reason without text", self.text_reason)])
        return self

    def targets(self) -> list[tuple[Loc, str]]:
        """(field location, node id) of every node this one can lead to."""
        return []

    def prompt_refs(self) -> list[tuple[Loc, str]]:
        """(field location, prompt id) of every prompt this node plays."""
        return []

    def ends_call(self) -> bool:
        """True if the IVR part can end here (hang-up, transfer, queue, callback)."""
        return False


class PlayNode(NodeBase):
    type: Literal["play"]
    prompts: list[Name] = Field(min_length=1)
    next: Name

    def targets(self) -> list[tuple[Loc, str]]:
        return [(("next",), self.next)]

    def prompt_refs(self) -> list[tuple[Loc, str]]:
        return [(("prompts", i), p) for i, p in enumerate(self.prompts)]


class MenuNode(NodeBase):
    type: Literal["menu"]
    prompt: Name
    keys: dict[Key, Name] = Field(default_factory=dict)
    timeout: float = Field(5.0, gt=0, le=120, description="seconds to wait for a key after the prompt")
    retries: int = Field(2, ge=0, le=10, description="replays after an invalid key or a timeout")
    invalid_prompt: Name | None = None
    timeout_prompt: Name | None = None
    on_failure: Name | None = Field(None, description="where to go when retries run out; default: hang up")

    @model_validator(mode="after")
    def _way_out(self) -> MenuNode:
        if not self.keys and self.on_failure is None:
            raise ValueError("a menu needs keys or on_failure: this one has no way out")
        return self

    def targets(self) -> list[tuple[Loc, str]]:
        return [(("keys", k), t) for k, t in self.keys.items()] + _opt(("on_failure",), self.on_failure)

    def prompt_refs(self) -> list[tuple[Loc, str]]:
        return [
            (("prompt",), self.prompt),
            *_opt(("invalid_prompt",), self.invalid_prompt),
            *_opt(("timeout_prompt",), self.timeout_prompt),
        ]

    def ends_call(self) -> bool:
        return self.on_failure is None  # running out of retries hangs up


class _SayNode(NodeBase):
    prompt: Name | None = Field(None, description="played before the digits or number")
    value: SayValue
    next: Name

    def targets(self) -> list[tuple[Loc, str]]:
        return [(("next",), self.next)]

    def prompt_refs(self) -> list[tuple[Loc, str]]:
        return _opt(("prompt",), self.prompt)


class SayDigitsNode(_SayNode):
    type: Literal["say_digits"]


class SayNumberNode(_SayNode):
    type: Literal["say_number"]

    @field_validator("value")
    @classmethod
    def _digits_only(cls, v: str) -> str:
        if v != "caller" and not v.startswith("var:") and not v.isdigit():
            raise ValueError(f"{v!r}: say_number reads caller, var:NAME or a whole number")
        return v


class CollectNode(NodeBase):
    type: Literal["collect"]
    prompt: Name
    var: Name
    max_digits: int = Field(ge=1, le=32)
    min_digits: int = Field(1, ge=1, le=32)
    terminator: Key | None = Field("#", description="key that ends the entry (quote it: '#')")
    timeout: float = Field(5.0, gt=0, le=120, description="seconds to wait for the next key")
    retries: int = Field(2, ge=0, le=10)
    invalid_prompt: Name | None = None
    timeout_prompt: Name | None = None
    next: Name
    on_failure: Name | None = None

    @model_validator(mode="after")
    def _digit_range(self) -> CollectNode:
        if self.min_digits > self.max_digits:
            _raise("CollectNode", [(("min_digits",), "min_digits is larger than max_digits", self.min_digits)])
        return self

    def targets(self) -> list[tuple[Loc, str]]:
        return [(("next",), self.next), *_opt(("on_failure",), self.on_failure)]

    def prompt_refs(self) -> list[tuple[Loc, str]]:
        return [
            (("prompt",), self.prompt),
            *_opt(("invalid_prompt",), self.invalid_prompt),
            *_opt(("timeout_prompt",), self.timeout_prompt),
        ]

    def ends_call(self) -> bool:
        return self.on_failure is None


def _yaml_on(data: Any) -> Any:
    # YAML 1.1 reads an unquoted `on:` key as the boolean True
    if isinstance(data, dict) and True in data and "on" not in data:
        return {("on" if k is True else k): v for k, v in data.items()}
    return data


class BranchCase(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    next: Name
    group: Name | None = Field(None, description="caller_group: the caller is in this group")
    from_: Minutes | None = Field(None, alias="from", description='time_of_day: "HH:MM", inclusive')
    to: Minutes | None = Field(None, description='time_of_day: "HH:MM", exclusive; before from = past midnight')
    days: list[Day] | None = Field(None, description="time_of_day: mon..sun (the day the call is made)")
    on: bool | None = Field(None, description="surge: the surge switch is on (true) or off (false)")
    value: str | None = Field(None, description="var:NAME: the collected value equals this")

    @model_validator(mode="before")
    @classmethod
    def _on_key(cls, data: Any) -> Any:
        return _yaml_on(data)


_BRANCH_ON = re.compile(r"caller_group|time_of_day|surge|var:[A-Za-z0-9_][A-Za-z0-9_.-]*")

# what each kind of branch needs in its cases (YAML names)
_CASE_NEEDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # kind: (required, allowed besides next)
    "caller_group": (("group",), ("group",)),
    "time_of_day": (("from", "to"), ("from", "to", "days")),
    "surge": (("on",), ("on",)),
    "var": (("value",), ("value",)),
}


def _case_fields(case: BranchCase) -> dict[str, Any]:
    return {
        "group": case.group,
        "from": case.from_,
        "to": case.to,
        "days": case.days,
        "on": case.on,
        "value": case.value,
    }


class BranchNode(NodeBase):
    type: Literal["branch"]
    on: str = Field(description="caller_group | time_of_day | surge | var:NAME")
    cases: list[BranchCase] = Field(min_length=1)
    default: Name

    @model_validator(mode="before")
    @classmethod
    def _on_key(cls, data: Any) -> Any:
        return _yaml_on(data)

    @field_validator("on")
    @classmethod
    def _kind(cls, v: str) -> str:
        if not _BRANCH_ON.fullmatch(v):
            raise ValueError(f"{v!r}: branch on caller_group, time_of_day, surge or var:NAME")
        return v

    @property
    def kind(self) -> Literal["caller_group", "time_of_day", "surge", "var"]:
        if self.on.startswith("var:"):
            return "var"
        return cast(Literal["caller_group", "time_of_day", "surge"], self.on)

    @model_validator(mode="after")
    def _cases_fit(self) -> BranchNode:
        required, allowed = _CASE_NEEDS[self.kind]
        problems: list[tuple[Loc, str, Any]] = []
        for i, case in enumerate(self.cases):
            given = {k: v for k, v in _case_fields(case).items() if v is not None}
            for name in required:
                if name not in given:
                    problems.append((("cases", i), f"a {self.on} case needs {name}:", None))
            for name, value in given.items():
                if name not in allowed:
                    problems.append((("cases", i, name), f"{name}: does not apply to a {self.on} branch", value))
            if self.kind == "time_of_day" and case.from_ is not None and case.from_ == case.to:
                problems.append((("cases", i, "to"), "from and to are the same time: the range is empty", case.to))
        if problems:
            _raise("BranchNode", problems)
        return self

    def targets(self) -> list[tuple[Loc, str]]:
        return [(("cases", i, "next"), c.next) for i, c in enumerate(self.cases)] + [(("default",), self.default)]


OverflowName = Literal["callback", "message", "self_service", "peak_shaving"]


class QueueNode(NodeBase):
    """Wait in ``queue`` for an agent (docs/queueing.md).

    The caller hears ``prompt``, then hold music with position and wait
    announcements until an agent answers; the flow ends there (the call is
    the agent's). When the queue overflows the caller (full, waited too
    long, peak shaving) the flow goes on at ``overflow[target]``, else at
    ``next``, else the call ends politely.
    """

    type: Literal["queue"]
    queue: Name
    prompt: Name | None = Field(None, description="holding prompt, played first")
    overflow: dict[OverflowName, Name] = Field(
        default_factory=dict, description="node to go on at, per overflow target (callback, message, ...)"
    )
    next: Name | None = Field(None, description="after an overflow with no node of its own; default: hang up")

    def targets(self) -> list[tuple[Loc, str]]:
        return _opt(("next",), self.next) + [(("overflow", k), v) for k, v in self.overflow.items()]

    def prompt_refs(self) -> list[tuple[Loc, str]]:
        return _opt(("prompt",), self.prompt)

    def ends_call(self) -> bool:
        return True


class MessageNode(NodeBase):
    """Leave a message (R14): prompt, beep, record until '#', silence or max_seconds."""

    type: Literal["message"]
    prompt: Name
    beep: bool = True
    max_seconds: float = Field(120.0, gt=0, le=900)
    silence_seconds: float = Field(5.0, gt=0, le=60)
    next: Name

    def targets(self) -> list[tuple[Loc, str]]:
        return [(("next",), self.next)]

    def prompt_refs(self) -> list[tuple[Loc, str]]:
        return [(("prompt",), self.prompt)]


class CallbackNode(NodeBase):
    """Book (or cancel) a callback (R2, R10, R14); docs/ivr.md.

    The booking is committed before the caller hears anything about it.
    Then the caller hears ``prompt`` and the promised time ("we will call
    you back within 40 minutes") and the flow goes on at ``next``. A caller
    who already has an active callback for the queue goes to ``exists``
    (e.g. a menu: keep it, or cancel it with a ``cancel: true`` node).
    """

    type: Literal["callback"]
    queue: Name
    number: str = Field("caller", description="whose number to call: caller, or var:NAME (keyed in with collect)")
    slot: Name = Field("asap", description="asap, or the name of a window in callbacks.windows")
    cancel: bool = Field(False, description="cancel the caller's active callback instead of booking one")
    prompt: Name | None = Field(None, description="after the booking is committed, before the promised time")
    exists: Name | None = Field(None, description="node for a caller who already has one; default: say so, go on")
    next: Name | None = Field(None, description="afterwards; default: hang up")

    @field_validator("number")
    @classmethod
    def _number_source(cls, v: str) -> str:
        if v != "caller" and not (v.startswith("var:") and _NAME.fullmatch(v[4:])):
            raise ValueError("number must be 'caller' or 'var:NAME' (a variable a collect node filled)")
        return v

    def targets(self) -> list[tuple[Loc, str]]:
        return _opt(("next",), self.next) + _opt(("exists",), self.exists)

    def prompt_refs(self) -> list[tuple[Loc, str]]:
        return _opt(("prompt",), self.prompt)

    def ends_call(self) -> bool:
        return self.next is None


class TransferNode(NodeBase):
    type: Literal["transfer"]
    uri: Uri
    prompt: Name | None = Field(None, description="played before the transfer")

    def prompt_refs(self) -> list[tuple[Loc, str]]:
        return _opt(("prompt",), self.prompt)

    def ends_call(self) -> bool:
        return True


class HangupNode(NodeBase):
    type: Literal["hangup"]
    prompt: Name | None = Field(None, description="played before hanging up")

    def prompt_refs(self) -> list[tuple[Loc, str]]:
        return _opt(("prompt",), self.prompt)

    def ends_call(self) -> bool:
        return True


NODE_TYPES = (
    "play",
    "menu",
    "say_digits",
    "say_number",
    "collect",
    "branch",
    "queue",
    "message",
    "callback",
    "transfer",
    "hangup",
)


def _node_errors(value: Any, handler: Callable[[Any], Any]) -> Any:
    """Drop the union tag pydantic puts in error locations, so they match the YAML."""
    try:
        return handler(value)
    except ValidationError as exc:
        tag = value.get("type") if isinstance(value, dict) else None
        problems: list[tuple[Loc, str, Any]] = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            if tag is not None and loc[:1] == (tag,):
                loc = loc[1:]
            msg = err["msg"]
            if err["type"] == "union_tag_invalid":
                hint = _suggest(str(tag), NODE_TYPES)
                loc, msg = ("type",), f"unknown node type {tag!r}{hint}: use {', '.join(NODE_TYPES)}"
            elif err["type"] == "union_tag_not_found":
                msg = f"a node needs type: ({', '.join(NODE_TYPES)})"
            elif err["type"] == "extra_forbidden":
                msg = "unknown setting"
            problems.append((loc, msg.removeprefix("Value error, "), err.get("input")))
        _raise(exc.title, problems)


Node = Annotated[
    PlayNode
    | MenuNode
    | SayDigitsNode
    | SayNumberNode
    | CollectNode
    | BranchNode
    | QueueNode
    | MessageNode
    | CallbackNode
    | TransferNode
    | HangupNode,
    Field(discriminator="type"),
    WrapValidator(_node_errors),
]


# -- flows ---------------------------------------------------------------------------------


def _said_var(node: NodeBase) -> str | None:
    if isinstance(node, _SayNode) and node.value.startswith("var:"):
        return node.value[4:]
    if isinstance(node, BranchNode) and node.kind == "var":
        return node.on[4:]
    return None


class FlowSettings(_Strict):
    """One IVR flow: where it starts, the optional screening node (R5), and its nodes."""

    start: Name
    screen: Name | None = Field(None, description="node for callers in blocklist_group (R5), before anything else")
    nodes: dict[Name, Node] = Field(min_length=1)

    @model_validator(mode="after")
    def _graph(self) -> FlowSettings:
        problems: list[tuple[Loc, str, Any]] = []
        nodes = self.nodes
        roots = [("start", self.start)] + ([("screen", self.screen)] if self.screen is not None else [])
        for field, target in roots:
            if target not in nodes:
                problems.append(((field,), f"unknown node {target!r}{_suggest(target, nodes)}", target))
        edges: dict[str, list[str]] = {}
        for nid, node in nodes.items():
            edges[nid] = []
            for loc, target in node.targets():
                if target in nodes:
                    edges[nid].append(target)
                else:
                    problems.append((("nodes", nid, *loc), f"unknown node {target!r}{_suggest(target, nodes)}", target))
        # variables must be collected somewhere in the flow before they are read
        collected = {n.var for n in nodes.values() if isinstance(n, CollectNode)}
        for nid, node in nodes.items():
            var = _said_var(node)
            if var is not None and var not in collected:
                field = "value" if isinstance(node, _SayNode) else "on"
                problems.append((("nodes", nid, field), f"no collect node sets var {var!r}", var))

        if problems:
            # with a broken reference, the graph checks below would only repeat the problem
            _raise("FlowSettings", problems)

        reachable = _reach([t for _, t in roots], edges)
        for nid in nodes:
            if nid not in reachable:
                problems.append((("nodes", nid), "unreachable: no path from start or screen leads here", nid))

        # every reachable node must have some path to an end (hang-up, transfer, queue, callback)
        backward: dict[str, list[str]] = {nid: [] for nid in nodes}
        for nid, targets in edges.items():
            for t in targets:
                backward[t].append(nid)
        can_end = _reach([nid for nid, n in nodes.items() if n.ends_call()], backward)
        for nid in nodes:
            if nid in reachable and nid not in can_end:
                problems.append(
                    (
                        ("nodes", nid),
                        "no way out: every path from here loops back without reaching a hangup, transfer, "
                        "queue or callback",
                        nid,
                    )
                )

        # branches decide at once: a loop made only of branches would spin forever
        branch_edges = {
            nid: [t for t in edges[nid] if isinstance(nodes[t], BranchNode)]
            for nid, n in nodes.items()
            if isinstance(n, BranchNode)
        }
        for nid in branch_edges:
            if nid in _reach(branch_edges[nid], branch_edges):
                problems.append((("nodes", nid), "branch loop: its branches lead back here without waiting", nid))
        if problems:
            _raise("FlowSettings", problems)
        return self


def _reach(roots: Iterable[str], edges: Mapping[str, list[str]]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        nid = todo.pop()
        if nid not in seen:
            seen.add(nid)
            todo.extend(edges.get(nid, ()))
    return seen


# -- the whole section ------------------------------------------------------------------


@cache
def _demo_section() -> dict[str, Any]:
    data = yaml.safe_load(DEMO_PATH.read_text(encoding="utf-8"))
    section: dict[str, Any] = data["ivr"]
    return section


def _with_demo(data: dict[str, Any]) -> dict[str, Any]:
    """The demo section with the file's prompts, groups and notices merged over it."""
    merged = copy.deepcopy(_demo_section())
    for key, value in data.items():
        if key in ("prompts", "groups", "notices", "flow_by_number") and isinstance(value, dict):
            merged[key] = {**merged.get(key, {}), **value}
        elif key != "flows":
            merged[key] = value
    return merged


class IvrSettings(_Strict):
    """The ``ivr:`` section. With no flows, the built-in demo (``demo.yaml``) is used."""

    prompts: dict[Name, PromptSettings] = Field(default_factory=dict)
    groups: dict[Name, GroupSettings] = Field(default_factory=dict)
    notices: dict[Name, NoticeSettings] = Field(default_factory=dict, description="the initial set (R6)")
    blocklist_group: Name | None = Field(None, description="callers in this group get the flow's screen node (R5)")
    flows: dict[Name, FlowSettings] = Field(default_factory=dict)
    default_flow: Name | None = Field(None, description="default: the first flow in the file")
    flow_by_number: dict[Number, Name] = Field(default_factory=dict, description="dialled user part -> flow")

    @model_validator(mode="before")
    @classmethod
    def _demo_when_no_flows(cls, data: Any) -> Any:
        if data is None:
            data = {}
        if isinstance(data, dict) and not data.get("flows"):
            return _with_demo(data)
        return data

    @model_validator(mode="after")
    def _references(self) -> IvrSettings:
        problems: list[tuple[Loc, str, Any]] = []
        known_prompts = set(self.prompts) | BUILTIN_PROMPTS

        def prompt(loc: Loc, pid: str) -> None:
            if pid not in known_prompts:
                problems.append((loc, f"unknown prompt {pid!r}{_suggest(pid, known_prompts)}", pid))

        def group(loc: Loc, name: str) -> None:
            if name not in self.groups:
                problems.append((loc, f"unknown group {name!r}{_suggest(name, self.groups)}", name))

        def flow(loc: Loc, name: str) -> None:
            if name not in self.flows:
                problems.append((loc, f"unknown flow {name!r}{_suggest(name, self.flows)}", name))

        for nid, notice in self.notices.items():
            group(("notices", nid, "group"), notice.group)
            prompt(("notices", nid, "prompt"), notice.prompt)
        if self.blocklist_group is not None:
            group(("blocklist_group",), self.blocklist_group)
        if self.default_flow is not None:
            flow(("default_flow",), self.default_flow)
        for number, name in self.flow_by_number.items():
            flow(("flow_by_number", number), name)
        for fname, f in self.flows.items():
            if self.blocklist_group is not None and f.screen is None:
                problems.append(
                    (
                        ("flows", fname),
                        f"blocklist_group {self.blocklist_group!r} is set: this flow needs a screen: node",
                        fname,
                    )
                )
            for nid, node in f.nodes.items():
                base: Loc = ("flows", fname, "nodes", nid)
                for loc, pid in node.prompt_refs():
                    prompt((*base, *loc), pid)
                if isinstance(node, BranchNode) and node.kind == "caller_group":
                    for i, case in enumerate(node.cases):
                        if case.group is not None:
                            group((*base, "cases", i, "group"), case.group)
        if problems:
            _raise("IvrSettings", problems)
        return self

    @property
    def main_flow(self) -> str:
        """The flow for dialled numbers not in ``flow_by_number``."""
        return self.default_flow if self.default_flow is not None else next(iter(self.flows))

    def flow_for(self, called: str) -> str:
        """The flow for a dialled number (Request-URI user part)."""
        return self.flow_by_number.get(called, self.main_flow)


# -- helpers for the rest of the server --------------------------------------------------


def spoken_prompts(settings: IvrSettings) -> dict[str, str]:
    """Every prompt to render with espeak-ng: the built-ins plus the configured text prompts."""
    texts = builtin_prompt_texts()
    for pid, p in settings.prompts.items():
        if p.text is not None:
            texts[pid] = p.text
        else:
            texts.pop(pid, None)  # a recording replaces a built-in
    return texts


class GroupMatcher:
    """Which caller groups a number belongs to: set lookups, a prefix check, compiled regexes."""

    def __init__(self, groups: Mapping[str, GroupSettings], cache_size: int = 65536) -> None:
        exact: dict[str, set[str]] = {}
        prefixes: dict[str, set[str]] = {}
        self._patterns: list[tuple[str, re.Pattern[str]]] = []
        for name, g in groups.items():
            for number in (*g.numbers, *g.file_numbers):
                exact.setdefault(number, set()).add(name)
            for prefix in g.prefixes:
                prefixes.setdefault(prefix, set()).add(name)
            self._patterns.extend((name, re.compile(p)) for p in g.patterns)
        self._exact = {k: frozenset(v) for k, v in exact.items()}
        self._prefixes = {k: frozenset(v) for k, v in prefixes.items()}
        self._prefix_lengths = sorted({len(p) for p in prefixes})
        # the same callers ring again and again in a surge
        self.groups_of: Callable[[str], frozenset[str]] = lru_cache(maxsize=cache_size)(self._match)

    def _match(self, number: str) -> frozenset[str]:
        found: set[str] = set(self._exact.get(number, ()))
        for length in self._prefix_lengths:
            if length > len(number):
                break
            found.update(self._prefixes.get(number[:length], ()))
        found.update(name for name, pattern in self._patterns if name not in found and pattern.fullmatch(number))
        return frozenset(found)

    def __call__(self, number: str) -> frozenset[str]:
        return self.groups_of(number)


def groups_of_function(settings: IvrSettings) -> Callable[[str], frozenset[str]]:
    """``groups_of(number) -> frozenset[str]`` for the configured caller groups."""
    return GroupMatcher(settings.groups).groups_of
