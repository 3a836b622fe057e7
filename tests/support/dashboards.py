"""The ops view's files read for tests: dashboards and their queries, rules, metric names of PromQL.

Shared by tests/test_dashboards.py (offline lint of the dashboards and
rules) and tests/test_prometheus_live.py (every query run against a real
Prometheus scraping a real server).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from support.server import ROOT

DASHBOARDS = ROOT / "dashboards"
GRAFANA_DIR = DASHBOARDS / "grafana"
RULES_DIR = DASHBOARDS / "rules"
RULE_TESTS_DIR = RULES_DIR / "tests"
PROVISIONING = DASHBOARDS / "provisioning"
OPS_DOC = ROOT / "docs" / "ops.md"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's own variables that may appear in a query
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms"}
# metrics that come from Prometheus itself, not from the server
PROMETHEUS_METRICS = {"up"}
# The callback lists (issue 5: "Callback lists that never lose a caller") are being built now:
# their metrics are on the Overview dashboard and in the alert rules, but the server does not
# export them yet. The live test expects them missing until then, and checks them once they appear.
ISSUE_5_CALLBACK_METRICS = {
    "frontdesk_callbacks",  # gauge, label state: callbacks by state
    "frontdesk_callback_oldest_waiting_seconds",  # gauge: age of the oldest callback not yet made
    "frontdesk_callback_promises_at_risk",  # gauge: callbacks that will miss their promised time
    "frontdesk_callback_promises_missed_total",  # counter: promises broken
}


# -- reading dashboards and rules -----------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a dashboard: a panel's target, an annotation or a variable's query."""

    dashboard: str  # uid
    where: str  # panel title / annotation name / variable name, for messages
    expr: str  # for a variable, the selector of its label_values(selector, label)
    kind: str  # "panel", "annotation" or "variable"
    instant: bool = False
    label: str | None = None  # a variable's label

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.kind} {self.where!r}: {self.expr}"


def dashboard_paths() -> list[Path]:
    return sorted(GRAFANA_DIR.glob("*.json"))


def load_dashboards() -> dict[str, dict[str, Any]]:
    """Dashboards by uid."""
    boards = {}
    for path in dashboard_paths():
        board = json.loads(path.read_text())
        boards[board["uid"]] = board
    return boards


def all_panels(board: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def queries(board: Mapping[str, Any]) -> list[Query]:
    """Every PromQL expression of a dashboard: panel targets, annotations, variable queries."""
    uid = board["uid"]
    out = []
    for panel in all_panels(board):
        for target in panel.get("targets", []):
            out.append(Query(uid, panel["title"], target["expr"], "panel", bool(target.get("instant"))))
    for annotation in board.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            out.append(Query(uid, annotation["name"], annotation["expr"], "annotation"))
    for var in board.get("templating", {}).get("list", []):
        if var["type"] == "query":
            query = var["query"]
            text = query["query"] if isinstance(query, dict) else query
            m = _LABEL_VALUES.fullmatch(text.strip())
            assert m, f"{uid} / variable {var['name']}: not label_values(selector, label): {text}"
            out.append(Query(uid, var["name"], m["selector"].strip(), "variable", label=m["label"]))
    return out


_LABEL_VALUES = re.compile(r"label_values\((?P<selector>.+),\s*(?P<label>\w+)\s*\)", re.S)


def load_rules() -> list[dict[str, Any]]:
    """Every rule of dashboards/rules/*.yml (recording and alerting)."""
    rules = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules.extend(group["rules"])
    return rules


def recorded_names() -> set[str]:
    return {r["record"] for r in load_rules() if "record" in r}


# -- PromQL: variables and metric names -------------------------------------------------------------

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def variables_used(expr: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in _VARIABLE.finditer(expr)}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace Grafana variables (``$x``, ``${x}``, ``${x:fmt}``, ``[[x]]``) by ``values``; unknown ones raise."""

    def value(m: re.Match[str]) -> str:
        name = next(g for g in m.groups() if g)
        if name not in values:
            raise KeyError(f"no value for ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(value, expr)


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
_KEYWORDS = {"and", "or", "unless", "atan2", "bool", "offset", "by", "without", "on", "ignoring"}
_KEYWORDS |= {"group_left", "group_right", "inf", "nan", "Inf", "NaN"}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads (its vector selectors), without a full PromQL parser.

    Strings, label matchers, ranges and ``by (...)``-style label lists are cut
    first; what is left that looks like a name, is not a keyword and is not
    called like a function is a metric name.
    """
    text = _STRING.sub('""', expr)
    text = _BRACES.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    return {m.group(1) for m in _IDENT.finditer(text) if not m.group(2) and m.group(1) not in _KEYWORDS}


# -- what the server documents ---------------------------------------------------------------------------


def documented_metrics() -> set[str]:
    """Metric names in README's metrics table (``{a,b}`` expanded), with histogram and summary series."""
    names: set[str] = set()
    for line in (ROOT / "README.md").read_text().splitlines():
        if not line.startswith("| `frontdesk_"):
            continue
        for name in re.findall(r"`(frontdesk_[^`]+)`", line):
            m = re.fullmatch(r"(\w*)\{([\w,]+)\}(\w*)", name)
            names.update(m[1] + part + m[3] for part in m[2].split(",")) if m else names.add(name)
    return names | {f"{n}{suffix}" for n in names for suffix in ("_bucket", "_sum", "_count")}


def cluster_metrics() -> set[str]:
    """The README's ``frontdesk_cluster_*`` names: exported in cluster mode only (docs/cluster.md)."""
    return {n for n in documented_metrics() if n.startswith("frontdesk_cluster_")}
