"""The ``ivr:`` section of the config file: prompts, caller groups, notices, flows.

Everything here is checked when the file is loaded, and a problem is reported
like the rest of the config: ``frontdesk.yaml:42: ivr.flows.main.nodes.menu.keys.2:
unknown node 'hot_topc' (did you mean 'hot_topic'?)``. Field-level problems come
from the models; cross references (node targets, prompt ids, groups, flows,
unreachable nodes, loops with no way out) are checked by the ``after``
validators, which raise a ``ValidationError`` carrying the exact location so
``ivr.settings.config.parse_config`` can name the line. The node types are in
``ivr/settings/nodes.py``, the value types in ``ivr/settings/values.py``.

With no ``flows`` the built-in demo (``demo.yaml`` next to this file) is used;
prompts, groups and notices given in the file are merged over the demo's, so a
site can keep the demo flow and still add its own groups or recordings.

:class:`GroupMatcher` answers, for the live server, which of the configured
caller groups a number is in.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Mapping
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from ivr.settings.base import Loc, Problem, Strict, raise_problems, resolve_path, suggest
from ivr.settings.builtin_prompts import BUILTIN_PROMPTS, builtin_prompt_texts
from ivr.settings.nodes import BranchNode, CollectNode, Node, NodeBase, SayNode
from ivr.settings.values import Name, Number, Pattern

DEMO_PATH = Path(__file__).with_name("demo.yaml")


# -- prompts, groups, notices ---------------------------------------------------------


class PromptSettings(Strict):
    """A prompt: ``text`` (spoken by espeak-ng at start-up) or ``file`` (a WAV file)."""

    text: str | None = Field(None, min_length=1)
    file: Path | None = Field(None, description="WAV file, relative to the config file's directory")

    @field_validator("file")
    @classmethod
    def _exists(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        path = resolve_path(v, info)
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


class GroupSettings(Strict):
    """A caller group (R6): exact numbers, prefixes, regular expressions and/or a file of numbers."""

    numbers: list[Number] = Field(default_factory=list)
    prefixes: list[Number] = Field(default_factory=list)
    patterns: list[Pattern] = Field(default_factory=list, description="regular expressions matched in full")
    file: Path | None = Field(None, description="one number per line, '#' comments; relative to the config file")
    _file_numbers: frozenset[str] = PrivateAttr(default_factory=frozenset)

    @field_validator("file")
    @classmethod
    def _resolve_file(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return resolve_path(v, info)

    @model_validator(mode="after")
    def _read_file(self) -> GroupSettings:
        if not (self.numbers or self.prefixes or self.patterns or self.file):
            raise ValueError("a group needs numbers, prefixes, patterns or a file")
        if self.file is not None:
            try:
                numbers, problems = _read_number_file(self.file)
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise_problems("GroupSettings", [(("file",), f"cannot read {self.file}: {reason}", str(self.file))])
            if problems:
                raise_problems("GroupSettings", [(("file",), "; ".join(problems[:5]), str(self.file))])
            self._file_numbers = frozenset(numbers)
        return self

    @property
    def file_numbers(self) -> frozenset[str]:
        """The numbers read from ``file`` at load."""
        return self._file_numbers


class NoticeSettings(Strict):
    """A targeted notice (R6): ``prompt`` plays before the menu to callers in ``group``."""

    group: Name
    prompt: Name
    active: bool = True


# -- flows ---------------------------------------------------------------------------------


def _said_var(node: NodeBase) -> str | None:
    if isinstance(node, SayNode) and node.value.startswith("var:"):
        return node.value[4:]
    if isinstance(node, BranchNode) and node.kind == "var":
        return node.on[4:]
    return None


class FlowSettings(Strict):
    """One IVR flow: where it starts, the optional screening node (R5), and its nodes."""

    start: Name
    screen: Name | None = Field(None, description="node for callers in blocklist_group (R5), before anything else")
    nodes: dict[Name, Node] = Field(min_length=1)

    @model_validator(mode="after")
    def _graph(self) -> FlowSettings:
        problems: list[Problem] = []
        nodes = self.nodes
        roots = [("start", self.start)] + ([("screen", self.screen)] if self.screen is not None else [])
        for field, target in roots:
            if target not in nodes:
                problems.append(((field,), f"unknown node {target!r}{suggest(target, nodes)}", target))
        edges: dict[str, list[str]] = {}
        for nid, node in nodes.items():
            edges[nid] = []
            for loc, target in node.targets():
                if target in nodes:
                    edges[nid].append(target)
                else:
                    problems.append((("nodes", nid, *loc), f"unknown node {target!r}{suggest(target, nodes)}", target))
        # variables must be collected somewhere in the flow before they are read
        collected = {n.var for n in nodes.values() if isinstance(n, CollectNode)}
        for nid, node in nodes.items():
            var = _said_var(node)
            if var is not None and var not in collected:
                field = "value" if isinstance(node, SayNode) else "on"
                problems.append((("nodes", nid, field), f"no collect node sets var {var!r}", var))

        if problems:
            # with a broken reference, the graph checks below would only repeat the problem
            raise_problems("FlowSettings", problems)

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
            raise_problems("FlowSettings", problems)
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


class IvrSettings(Strict):
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
        problems: list[Problem] = []
        known_prompts = set(self.prompts) | BUILTIN_PROMPTS

        def prompt(loc: Loc, pid: str) -> None:
            if pid not in known_prompts:
                problems.append((loc, f"unknown prompt {pid!r}{suggest(pid, known_prompts)}", pid))

        def group(loc: Loc, name: str) -> None:
            if name not in self.groups:
                problems.append((loc, f"unknown group {name!r}{suggest(name, self.groups)}", name))

        def flow(loc: Loc, name: str) -> None:
            if name not in self.flows:
                problems.append((loc, f"unknown flow {name!r}{suggest(name, self.flows)}", name))

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
            raise_problems("IvrSettings", problems)
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
