"""The ops view checked offline: Grafana dashboards linted, Prometheus rules checked and unit-tested.

- Dashboards (dashboards/grafana/*.json): valid JSON, unique uids and panel
  ids, every panel with a title, a unit and the ``$datasource`` variable,
  panels inside the 24-column grid without overlapping, every ``$variable``
  defined, no hard-coded instance, host or address, and every metric name
  one the server documents (README's metrics table), a recording rule, or
  Prometheus' own ``up``.
- Rules (dashboards/rules/*.yml): ``promtool check rules``, the example
  ``prometheus.yml`` with ``promtool check config``, and ``promtool test
  rules`` on dashboards/rules/tests/; every alert has a severity, a summary,
  a runbook line pointing at its section of docs/ops.md, and at least one
  unit test where it fires and one where it stays quiet.
- Provisioning (dashboards/provisioning/): the data source and the
  dashboard folder Grafana is pointed at.

The helpers (queries of a dashboard, variable substitution, metric names of
an expression) are in tests/support/dashboards.py, shared with
tests/test_prometheus_live.py, which runs every query against a real
Prometheus.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from support.dashboards import (
    DASHBOARDS,
    DATASOURCE,
    GRAFANA_BUILTINS,
    GRAFANA_DIR,
    ISSUE_5_CALLBACK_METRICS,
    OPS_DOC,
    PROMETHEUS_METRICS,
    PROVISIONING,
    RULE_TESTS_DIR,
    RULES_DIR,
    all_panels,
    cluster_metrics,
    dashboard_paths,
    documented_metrics,
    load_rules,
    metric_names,
    queries,
    recorded_names,
    substitute,
    variables_used,
)
from support.server import ROOT

# -- promtool ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not installed: `make test` installs Debian's prometheus")
    return path


def run_promtool(promtool: str, *args: str, cwd: Path = ROOT) -> str:
    proc = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def test_promtool_checks_the_rules_and_the_example_config(promtool: str) -> None:
    rule_files = [str(p) for p in sorted(RULES_DIR.glob("*.yml"))]
    assert len(rule_files) == 2
    run_promtool(promtool, "check", "rules", *rule_files)
    out = run_promtool(promtool, "check", "config", str(DASHBOARDS / "prometheus.yml"))
    assert "2 rule files found" in out, out


def test_promtool_unit_tests_pass(promtool: str) -> None:
    tests = [p.name for p in sorted(RULE_TESTS_DIR.glob("*.test.yml"))]
    assert tests, "no rule unit tests"
    out = run_promtool(promtool, "test", "rules", *tests, cwd=RULE_TESTS_DIR)
    assert out.count("SUCCESS") == len(tests), out


# -- rules -----------------------------------------------------------------------------------------------------


def test_every_alert_has_severity_summary_and_runbook_with_its_section_in_the_ops_doc() -> None:
    alerts = [r for r in load_rules() if "alert" in r]
    names = {a["alert"] for a in alerts}
    assert len(names) == len(alerts), "alert names repeat"
    # the alerts the issue asks for (issue 6), by the metric each one watches
    watched = " ".join(a["expr"] for a in alerts)
    for metric in (
        "queue:frontdesk_service_level:ratio_1h",
        "frontdesk_queue_ewt_seconds",
        "frontdesk_sip_answer_latency_seconds_bucket",
        "frontdesk_callback_promises_at_risk",
        "frontdesk_surge_active",
        "frontdesk_text_message_send_errors_total",
        "up",
        # cluster mode: a node lost, the timekeeper's lease, the log's lag, Redis
        "frontdesk_cluster_nodes_lost_appended_total",
        "frontdesk_cluster_timekeeper",
        "frontdesk_cluster_apply_lag_seconds_sum",
        "frontdesk_cluster_redis_outages_total",
    ):
        assert metric in metric_names(watched), f"no alert on {metric}"
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in OPS_DOC.read_text().splitlines()
        if line.startswith("#")
    }
    for alert in alerts:
        assert alert["labels"]["severity"] in ("warning", "critical"), alert
        annotations = alert["annotations"]
        assert annotations.get("summary", "").strip(), f"{alert['alert']}: no summary"
        runbook = annotations.get("runbook", "").strip()
        assert runbook and "\n" not in runbook, f"{alert['alert']}: the runbook is one line"
        anchor = f"docs/ops.md#{alert['alert'].lower()}"
        assert runbook.endswith(anchor), f"{alert['alert']}: the runbook ends with {anchor}"
        assert alert["alert"].lower() in headings, f"docs/ops.md has no section {alert['alert']}"


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS_DIR.glob("*.test.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = {r["alert"] for r in load_rules() if "alert" in r}
    assert alerts - firing == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested quiet"


def test_recording_rules_cover_service_level_asa_and_abandonment_over_5m_and_1h() -> None:
    recorded = recorded_names()
    for what in ("service_level:ratio", "asa_seconds:mean", "abandon:ratio"):
        for window in ("5m", "1h"):
            assert f"queue:frontdesk_{what}_{window}" in recorded


# -- dashboards ------------------------------------------------------------------------------------------------


def test_the_three_dashboards_are_there_with_unique_uids() -> None:
    paths = dashboard_paths()
    uids = [json.loads(p.read_text())["uid"] for p in paths]  # each file is valid JSON
    assert sorted(uids) == ["frontdesk-ivr", "frontdesk-overview", "frontdesk-telephony"]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("path", dashboard_paths(), ids=lambda p: p.stem)
def test_dashboard_lint(path: Path) -> None:
    board = json.loads(path.read_text())
    assert board.get("title") and board.get("uid"), path
    panels = list(all_panels(board))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {sorted(ids)}"

    variables = {v["name"]: v for v in board["templating"]["list"]}
    ds = variables.get("datasource")
    assert ds is not None and ds["type"] == "datasource" and ds["query"] == "prometheus"
    problems = []
    for panel in panels:
        name = f"panel {panel['id']} {panel.get('title')!r}"
        if not str(panel.get("title", "")).strip():
            problems.append(f"{name}: no title")
        if panel["type"] == "row":  # a row holds panels, not queries
            continue
        if not panel.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            problems.append(f"{name}: no unit")
        if panel.get("datasource") != DATASOURCE:
            problems.append(f"{name}: datasource is {panel.get('datasource')}, not the $datasource variable")
        targets = panel.get("targets", [])
        if not targets:
            problems.append(f"{name}: no query")
        for t in targets:
            if t.get("datasource", DATASOURCE) != DATASOURCE:
                problems.append(f"{name}: target {t['refId']} does not use $datasource")
        if len({t["refId"] for t in targets}) != len(targets):
            problems.append(f"{name}: refIds repeat")
    for var in board["templating"]["list"]:
        if var["type"] == "query" and var.get("datasource") != DATASOURCE:
            problems.append(f"variable {var['name']}: does not use $datasource")
    for annotation in board["annotations"]["list"]:
        if "expr" in annotation and annotation.get("datasource") != DATASOURCE:
            problems.append(f"annotation {annotation['name']}: does not use $datasource")
    assert problems == []


@pytest.mark.parametrize("path", dashboard_paths(), ids=lambda p: p.stem)
def test_dashboard_panels_fit_the_grid_without_overlap(path: Path) -> None:
    board = json.loads(path.read_text())
    taken: dict[tuple[int, int], int] = {}
    for panel in all_panels(board):
        g = panel["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps panel {taken[(x, y)]}"
                taken[(x, y)] = panel["id"]


_INSTANCE_MATCHER = re.compile(r"\binstance\s*(?:=~|!~|!=|=)\s*\"([^\"]*)\"")
_ADDRESS = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b|localhost|\b[\w.-]+:\d{2,5}\b")


@pytest.mark.parametrize("path", dashboard_paths(), ids=lambda p: p.stem)
def test_dashboard_has_no_hard_coded_instance_or_address(path: Path) -> None:
    board = json.loads(path.read_text())
    for q in queries(board):
        for value in _INSTANCE_MATCHER.findall(q.expr):
            assert value == "$instance", f"{q}: instance is not the $instance variable"
        assert not _ADDRESS.search(q.expr), f"{q}: names a host or address"
    text = path.read_text()
    assert not _ADDRESS.search(text), _ADDRESS.search(text)


@pytest.mark.parametrize("path", dashboard_paths(), ids=lambda p: p.stem)
def test_dashboard_variables_are_defined_and_metrics_documented(path: Path) -> None:
    board = json.loads(path.read_text())
    defined = {v["name"] for v in board["templating"]["list"]} | GRAFANA_BUILTINS
    known = documented_metrics() | recorded_names() | PROMETHEUS_METRICS | ISSUE_5_CALLBACK_METRICS
    problems = []
    for q in queries(board):
        if unknown := variables_used(q.expr) - defined:
            problems.append(f"{q}: undefined variables {sorted(unknown)}")
        if not metric_names(q.expr):
            problems.append(f"{q}: reads no metric")
        if unknown := metric_names(q.expr) - known:
            problems.append(f"{q}: metrics neither in README's table nor recorded: {sorted(unknown)}")
        if q.kind == "panel" and "$__rate_interval" not in q.expr and re.search(r"\b(rate|increase)\(", q.expr):
            # a fixed window is fine where the panel says so ("1 h"); otherwise use $__rate_interval
            if not re.search(r"\[(1h|\$__range)\]", q.expr):
                problems.append(f"{q}: rate/increase without $__rate_interval")
    assert problems == []


def test_recording_and_alert_rules_read_documented_metrics() -> None:
    known = documented_metrics() | recorded_names() | PROMETHEUS_METRICS | ISSUE_5_CALLBACK_METRICS
    for rule in load_rules():
        assert metric_names(rule["expr"]) - known == set(), rule


def test_metric_names_of_promql() -> None:
    expr = (
        'sum by (job, queue) (increase(frontdesk_queue_calls_answered_total{queue=~"$queue", x="a b"}[$__range]))'
        " / on (job) group_left (queue) queue:frontdesk_asa_seconds:mean_5m offset 5m"
        ' > bool 0.25 * scalar(frontdesk:sip_ring_limit_seconds) and up{job="frontdesk"} == 1e3'
    )
    assert metric_names(expr) == {
        "frontdesk_queue_calls_answered_total",
        "queue:frontdesk_asa_seconds:mean_5m",
        "frontdesk:sip_ring_limit_seconds",
        "up",
    }
    assert metric_names('histogram_quantile(0.99, sum by (le) (rate(x_bucket{le="+Inf"}[5m])))') == {"x_bucket"}
    assert metric_names("vector(10)") == set()
    assert substitute(
        'a{q=~"$queue", j="${job}"}[$__rate_interval]', {"queue": "g", "job": "f", "__rate_interval": "1m"}
    ) == ('a{q=~"g", j="f"}[1m]')
    with pytest.raises(KeyError):
        substitute('a{q=~"$nope"}', {})


def test_documented_metrics_expand_the_readme_table() -> None:
    names = documented_metrics()
    assert {"frontdesk_queue_calls_offered_total", "frontdesk_queue_calls_abandoned_total"} <= names
    assert "frontdesk_sip_answer_latency_seconds_bucket" in names
    assert "frontdesk_queue_answer_wait_seconds_sum" in names


def test_the_overview_has_a_cluster_nodes_row_per_node_id() -> None:
    board = json.loads((GRAFANA_DIR / "frontdesk-overview.json").read_text())
    panels = list(all_panels(board))
    [row] = [p for p in panels if p["type"] == "row" and p["title"] == "Cluster nodes"]
    below = [p for p in panels if p["gridPos"]["y"] > row["gridPos"]["y"]]
    read = {n for p in below for t in p["targets"] for n in metric_names(t["expr"])}
    for family in (
        "timekeeper",
        "log_applied_total",
        "apply_lag_seconds_sum",
        "log_appends_total",
        "redis_outages_total",
    ):
        assert f"frontdesk_cluster_{family}" in read, f"the Cluster nodes row does not show {family}"
    assert "frontdesk_cluster_callers_lost_total" in read
    # per node, but for the cluster-wide figures: callers lost (the timekeeper's, without node_id), nodes lost
    cluster_wide = {"frontdesk_cluster_callers_lost_total", "frontdesk_cluster_nodes_lost_appended_total"}
    for p in below:
        for t in p["targets"]:
            if metric_names(t["expr"]) <= cluster_metrics() - cluster_wide:
                assert "by (node_id)" in t["expr"], f"{p['title']!r} {t['refId']}: not by node_id"


# -- provisioning ---------------------------------------------------------------------------------------------


def test_grafana_provisioning_points_at_the_dashboards_and_a_prometheus() -> None:
    ds = yaml.safe_load((PROVISIONING / "datasources" / "frontdesk.yml").read_text())
    [source] = ds["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    prometheus_yml = yaml.safe_load((DASHBOARDS / "prometheus.yml").read_text())
    assert source["jsonData"]["timeInterval"] == prometheus_yml["global"]["scrape_interval"]
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "frontdesk.yml").read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    # the provider's path is dashboards/grafana as mounted at /etc/frontdesk/dashboards (docs/ops.md)
    assert provider["options"]["path"] == "/etc/frontdesk/dashboards/grafana"
    assert GRAFANA_DIR.is_dir() and dashboard_paths()
    [job] = prometheus_yml["scrape_configs"]
    assert job["job_name"] == "frontdesk"  # the alert rules' up{job="frontdesk"}
