"""The nodes of an IVR flow (``ivr.flows.NAME.nodes``): one model per node type, told apart by ``type:``.

Each node knows the nodes it can lead to (:meth:`NodeBase.targets`), the
prompts it plays (:meth:`NodeBase.prompt_refs`) and whether the IVR part of a
call can end there (:meth:`NodeBase.ends_call`); ``ivr/settings/flows.py``
checks a flow's graph and its references with them, and ``ivr/flow/program.py``
compiles the nodes into what the interpreter runs. docs/ivr.md describes each
node type.

An unquoted ``on:`` key is read by YAML 1.1 as the boolean ``True``: branch
nodes and their cases accept it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal, cast

from pydantic import ConfigDict, Field, ValidationError, WrapValidator, field_validator, model_validator

from ivr.settings.base import Loc, Problem, Strict, raise_problems, suggest
from ivr.settings.values import NAME_RE, Day, Key, Minutes, Name, SayValue, Uri
from queueing.model import OverflowTarget


def _opt(loc: Loc, value: str | None) -> list[tuple[Loc, str]]:
    return [] if value is None else [(loc, value)]


class NodeBase(Strict):
    """What every node type has: marks acted on when the node is entered."""

    text: str | None = Field(None, min_length=1, description="text message (SMS) sent to the caller")
    text_reason: Name | None = Field(None, description="why the text is sent (metric label); default: outcome")
    outcome: Name | None = Field(None, description="for the call record: hotkey, self_service, screened, ...")
    complaint: Name | None = Field(None, description="complaint category counted monthly (R4)")

    @model_validator(mode="after")
    def _reason_needs_text(self) -> NodeBase:
        if self.text_reason is not None and self.text is None:
            raise_problems(type(self).__name__, [(("text_reason",), "text_reason without text", self.text_reason)])
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


class SayNode(NodeBase):
    prompt: Name | None = Field(None, description="played before the digits or number")
    value: SayValue
    next: Name

    def targets(self) -> list[tuple[Loc, str]]:
        return [(("next",), self.next)]

    def prompt_refs(self) -> list[tuple[Loc, str]]:
        return _opt(("prompt",), self.prompt)


class SayDigitsNode(SayNode):
    type: Literal["say_digits"]


class SayNumberNode(SayNode):
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
            raise_problems("CollectNode", [(("min_digits",), "min_digits is larger than max_digits", self.min_digits)])
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


class BranchCase(Strict):
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
        problems: list[Problem] = []
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
            raise_problems("BranchNode", problems)
        return self

    def targets(self) -> list[tuple[Loc, str]]:
        return [(("cases", i, "next"), c.next) for i, c in enumerate(self.cases)] + [(("default",), self.default)]


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
    overflow: dict[OverflowTarget, Name] = Field(
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
    (e.g. a menu: keep it, or cancel it with a ``cancel: true`` node). When
    the store cannot book (or cancel) it, the caller hears so and goes to
    ``failed`` (e.g. an offer to leave a message), or else to ``next``.
    """

    type: Literal["callback"]
    queue: Name
    number: str = Field("caller", description="whose number to call: caller, or var:NAME (keyed in with collect)")
    slot: Name = Field("asap", description="asap, or the name of a window in callbacks.windows")
    cancel: bool = Field(False, description="cancel the caller's active callback instead of booking one")
    prompt: Name | None = Field(None, description="after the booking is committed, before the promised time")
    exists: Name | None = Field(None, description="node for a caller who already has one; default: say so, go on")
    failed: Name | None = Field(None, description="after 'could not book' (e.g. the database is down); default: next")
    next: Name | None = Field(None, description="afterwards; default: hang up")

    @field_validator("number")
    @classmethod
    def _number_source(cls, v: str) -> str:
        if v != "caller" and not (v.startswith("var:") and NAME_RE.fullmatch(v[4:])):
            raise ValueError("number must be 'caller' or 'var:NAME' (a variable a collect node filled)")
        return v

    def targets(self) -> list[tuple[Loc, str]]:
        return _opt(("next",), self.next) + _opt(("exists",), self.exists) + _opt(("failed",), self.failed)

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
        problems: list[Problem] = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            if tag is not None and loc[:1] == (tag,):
                loc = loc[1:]
            msg = err["msg"]
            if err["type"] == "union_tag_invalid":
                hint = suggest(str(tag), NODE_TYPES)
                loc, msg = ("type",), f"unknown node type {tag!r}{hint}: use {', '.join(NODE_TYPES)}"
            elif err["type"] == "union_tag_not_found":
                msg = f"a node needs type: ({', '.join(NODE_TYPES)})"
            elif err["type"] == "extra_forbidden":
                msg = "unknown setting"
            problems.append((loc, msg.removeprefix("Value error, "), err.get("input")))
        raise_problems(exc.title, problems)


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
