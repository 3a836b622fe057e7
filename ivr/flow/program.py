"""The validated ``ivr:`` section compiled once into plain frozen dataclasses.

The interpreter walks these, not the pydantic models: every lookup it needs
on a call (menu keys, branch tests, the say-value source, time windows as
minutes, weekdays as numbers) is worked out here, at start-up. Compiling
trusts :class:`~ivr.settings.flows.IvrSettings` validation: every target, prompt
and group named here exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from ivr.flow.frozen import copyable
from ivr.settings.flows import IvrSettings
from ivr.settings.nodes import (
    BranchNode,
    CallbackNode,
    CollectNode,
    HangupNode,
    MenuNode,
    MessageNode,
    NodeBase,
    PlayNode,
    QueueNode,
    SayDigitsNode,
    SayNumberNode,
    TransferNode,
)
from ivr.settings.values import DAYS


@dataclass(frozen=True, slots=True)
class Marks:
    """What entering a node adds to the call: a text message, an outcome, a complaint category."""

    text: str | None = None
    text_reason: str = "info"
    outcome: str | None = None
    complaint: str | None = None


NO_MARKS = Marks()


@dataclass(frozen=True, slots=True)
class PlayStep:
    id: str
    marks: Marks
    prompts: tuple[str, ...]
    next: str


@dataclass(frozen=True, slots=True)
class MenuStep:
    id: str
    marks: Marks
    prompt: str
    keys: Mapping[str, str]
    timeout: float
    retries: int
    invalid_prompt: str | None
    timeout_prompt: str | None
    on_failure: str | None


@dataclass(frozen=True, slots=True)
class SayStep:
    id: str
    marks: Marks
    prompt: str | None
    source: Literal["caller", "var", "literal"]
    arg: str  # var name or literal digits
    as_number: bool  # say_number (words) rather than say_digits
    next: str


@dataclass(frozen=True, slots=True)
class CollectStep:
    id: str
    marks: Marks
    prompt: str
    var: str
    max_digits: int
    min_digits: int
    terminator: str | None
    timeout: float
    retries: int
    invalid_prompt: str | None
    timeout_prompt: str | None
    next: str
    on_failure: str | None


@dataclass(frozen=True, slots=True)
class Case:
    next: str
    group: str | None = None
    start: int = 0  # minutes since midnight, inclusive
    end: int = 0  # exclusive; end <= start wraps past midnight
    days: frozenset[int] | None = None  # 0 = Monday
    surge: bool | None = None
    value: str | None = None


@dataclass(frozen=True, slots=True)
class BranchStep:
    id: str
    marks: Marks
    kind: Literal["caller_group", "time_of_day", "surge", "var"]
    var: str | None
    cases: tuple[Case, ...]
    default: str


@dataclass(frozen=True, slots=True)
class QueueStep:
    id: str
    marks: Marks
    queue: str
    prompt: str | None
    next: str | None
    overflow: Mapping[str, str] = field(default_factory=dict)  # overflow target -> node


@dataclass(frozen=True, slots=True)
class MessageStep:
    id: str
    marks: Marks
    prompts: tuple[str, ...]  # the invitation, then the beep
    max_seconds: float
    silence_seconds: float
    next: str


@dataclass(frozen=True, slots=True)
class CallbackStep:
    id: str
    marks: Marks
    queue: str
    prompt: str | None
    next: str | None
    number: str = "caller"  # or var:NAME
    slot: str = "asap"
    cancel: bool = False
    exists: str | None = None
    failed: str | None = None  # where a booking the store could not make goes, after the caller hears so


@dataclass(frozen=True, slots=True)
class TransferStep:
    id: str
    marks: Marks
    uri: str
    prompt: str | None


@dataclass(frozen=True, slots=True)
class HangupStep:
    id: str
    marks: Marks
    prompt: str | None


Step = (
    PlayStep
    | MenuStep
    | SayStep
    | CollectStep
    | BranchStep
    | QueueStep
    | MessageStep
    | CallbackStep
    | TransferStep
    | HangupStep
)


@dataclass(frozen=True, slots=True)
class Flow:
    name: str
    start: str
    screen: str | None
    blocklist_group: str | None
    nodes: Mapping[str, Step]


@dataclass(frozen=True, slots=True)
class Program:
    """All flows of the config, and which one a dialled number gets."""

    flows: Mapping[str, Flow]
    default_flow: str
    flow_by_number: Mapping[str, str]

    def flow_for(self, called: str) -> Flow:
        """The flow for a dialled number (Request-URI user part); unknown numbers get the default."""
        return self.flows[self.flow_by_number.get(called, self.default_flow)]


# -- say_digits / say_number ------------------------------------------------------------

_DIGIT_PROMPTS = {**{str(d): f"digit_{d}" for d in range(10)}, "*": "digit_star", "#": "digit_hash"}


def digit_prompts(text: str) -> tuple[str, ...]:
    """Built-in prompt ids that read ``text`` digit by digit ('+', letters and the rest are skipped)."""
    return tuple(_DIGIT_PROMPTS[c] for c in text if c in _DIGIT_PROMPTS)


def number_prompts(n: int) -> tuple[str, ...]:
    """Built-in prompt ids that say ``n`` in words (105 -> one hundred five); digit by digit from a million."""
    if n < 0 or n >= 1_000_000:
        return digit_prompts(str(n))
    if n < 20:
        return (f"num_{n}",)
    if n < 100:
        tens, ones = divmod(n, 10)
        return (f"num_{tens * 10}",) + ((f"num_{ones}",) if ones else ())
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return (f"num_{hundreds}", "num_hundred") + (number_prompts(rest) if rest else ())
    thousands, rest = divmod(n, 1000)
    return (*number_prompts(thousands), "num_thousand") + (number_prompts(rest) if rest else ())


# -- compiling --------------------------------------------------------------------------------


def _marks(node: NodeBase) -> Marks:
    if node.text is None and node.outcome is None and node.complaint is None:
        return NO_MARKS
    reason = node.text_reason or node.outcome or "info"
    return Marks(text=node.text, text_reason=reason, outcome=node.outcome, complaint=node.complaint)


def _step(nid: str, node: NodeBase) -> Step:
    match node:
        case PlayNode():
            return PlayStep(nid, _marks(node), tuple(node.prompts), node.next)
        case MenuNode():
            return MenuStep(
                nid,
                _marks(node),
                node.prompt,
                dict(node.keys),
                node.timeout,
                node.retries,
                node.invalid_prompt,
                node.timeout_prompt,
                node.on_failure,
            )
        case SayDigitsNode() | SayNumberNode():
            value = node.value
            source: Literal["caller", "var", "literal"] = "literal"
            arg = value
            if value == "caller":
                source, arg = "caller", ""
            elif value.startswith("var:"):
                source, arg = "var", value[4:]
            return SayStep(nid, _marks(node), node.prompt, source, arg, isinstance(node, SayNumberNode), node.next)
        case CollectNode():
            return CollectStep(
                nid,
                _marks(node),
                node.prompt,
                node.var,
                node.max_digits,
                node.min_digits,
                node.terminator,
                node.timeout,
                node.retries,
                node.invalid_prompt,
                node.timeout_prompt,
                node.next,
                node.on_failure,
            )
        case BranchNode():
            cases = tuple(
                Case(
                    next=c.next,
                    group=c.group,
                    start=c.from_ or 0,
                    end=c.to or 0,
                    days=frozenset(DAYS.index(d) for d in c.days) if c.days is not None else None,
                    surge=c.on,
                    value=c.value,
                )
                for c in node.cases
            )
            var = node.on[4:] if node.kind == "var" else None
            return BranchStep(nid, _marks(node), node.kind, var, cases, node.default)
        case QueueNode():
            return QueueStep(
                nid, _marks(node), node.queue, node.prompt, node.next, {str(k): v for k, v in node.overflow.items()}
            )
        case MessageNode():
            prompts = (node.prompt, "beep") if node.beep else (node.prompt,)
            return MessageStep(nid, _marks(node), prompts, node.max_seconds, node.silence_seconds, node.next)
        case CallbackNode():
            return CallbackStep(
                nid,
                _marks(node),
                node.queue,
                node.prompt,
                node.next,
                node.number,
                node.slot,
                node.cancel,
                node.exists,
                node.failed,
            )
        case TransferNode():
            return TransferStep(nid, _marks(node), node.uri, node.prompt)
        case HangupNode():
            return HangupStep(nid, _marks(node), node.prompt)
    raise TypeError(f"not a flow node: {node!r}")


def compile_ivr(settings: IvrSettings) -> Program:
    """Compile the validated ``ivr:`` section (do it once, at start-up)."""
    flows = {
        name: Flow(
            name=name,
            start=f.start,
            screen=f.screen,
            blocklist_group=settings.blocklist_group,
            nodes={nid: _step(nid, node) for nid, node in f.nodes.items()},
        )
        for name, f in settings.flows.items()
    }
    return Program(flows=flows, default_flow=settings.main_flow, flow_by_number=dict(settings.flow_by_number))


copyable(
    Marks,
    PlayStep,
    MenuStep,
    SayStep,
    CollectStep,
    Case,
    BranchStep,
    QueueStep,
    MessageStep,
    CallbackStep,
    TransferStep,
    HangupStep,
    Flow,
    Program,
)
