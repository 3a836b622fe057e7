"""``frontdesk sim``: run a scenario's replications, print the summary, write the report folder.

The folder (``--out DIR``) holds:

- ``blocks.csv`` and ``blocks.json``: every block's figures, mean and 95 % interval half-width;
- ``runs.csv``: each replication's day totals (the spread behind the intervals);
- ``summary.json``: the day's totals, per queue too;
- plots: ``arrivals_vs_capacity.png``, ``queue_length.png``, ``service_level.png``,
  ``callbacks_owed.png``, ``surge.png``;
- with ``--what-if``: ``what_if.csv``, ``what_if.json``, ``what_if.png``;
- with ``--staffing``: ``staffing.csv``, ``staffing.json``, ``staffing.png``;
- with ``--staffing`` or ``--sizing``: ``sizing.json`` (cluster nodes for the busiest block, per block loads).

docs/sim.md explains how to read them; sim/plots.py draws the plots.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from queueing.model import OVERFLOW_TARGETS
from sim.plan import Plan
from sim.planning import LIMITS, SIZING_FLAGS, Sizing, SizingError, sizing_json, sizing_settings
from sim.plots import plot_staffing, plot_summary, plot_what_if
from sim.stats import BLOCK_METRICS, TOTAL_METRICS, Estimate, Summary, replicate

# -------------------------------------------------------------- progress bar


class ProgressBar:
    """A plain-text progress bar on stderr: redrawn in place on a terminal, a line per tenth otherwise."""

    def __init__(self, label: str, stream: IO[str] | None = None, width: int = 30) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.started = time.perf_counter()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_tenth = -1

    def __call__(self, done: int, total: int) -> None:
        if done == 0:
            self.started = time.perf_counter()
        share = done / total if total else 1.0
        filled = int(share * self.width)
        elapsed = time.perf_counter() - self.started
        eta = f", {elapsed / done * (total - done):.0f} s to go" if 0 < done < total else ""
        line = f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} runs, {elapsed:.1f} s{eta}"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if done >= total else ""))
        else:
            tenth = int(share * 10)
            if tenth == self._last_tenth:
                return
            self._last_tenth = tenth
            self.stream.write(line + "\n")
        self.stream.flush()


# -------------------------------------------------------------- tables


def _pct(e: Estimate, digits: int = 1) -> str:
    if math.isnan(e.ci95):
        return f"{100 * e.mean:.{digits}f}"
    return f"{100 * e.mean:.{digits}f}±{100 * e.ci95:.{digits}f}"


def _num(e: Estimate, digits: int = 0) -> str:
    if math.isnan(e.ci95):
        return f"{e.mean:.{digits}f}"
    return f"{e.mean:.{digits}f}±{e.ci95:.{digits}f}"


def summary_table(summary: Summary) -> str:
    plan = summary.plan
    cols = [
        ("start", 5),
        ("calls", 7),
        ("offered", 7),
        ("answered", 8),
        ("SL %", 11),
        ("ASA s", 10),
        ("aband %", 9),
        ("overflow", 8),
        ("queue max", 9),
        ("agents", 6),
        ("surge %", 7),
        ("cb booked", 9),
        ("cb owed", 7),
    ]
    lines = [
        f"{plan.name}: {plan.blocks} blocks of {plan.block_seconds / 60:g} min from {plan.block_label(0)}, "
        f"{summary.replications} replications (seeds {summary.runs[0].seed}..{summary.runs[-1].seed}), "
        f"mean ± 95 % CI; service level target {plan.service_level_target:.0%} in {plan.service_level_t:g} s",
        "  ".join(f"{name:>{w}}" for name, w in cols),
    ]
    for i, b in enumerate(summary.blocks):
        cells = [
            plan.block_label(i),
            f"{b['calls'].mean:.0f}",
            f"{b['offered'].mean:.0f}",
            f"{b['answered'].mean:.0f}",
            _pct(b["service_level"]),
            _num(b["asa_s"], 1),
            _pct(b["abandon_rate"]),
            f"{b['overflowed'].mean:.0f}",
            f"{b['queue_length_max'].mean:.1f}",
            f"{b['agents_mean'].mean:.1f}",
            f"{100 * b['surge_share'].mean:.0f}",
            f"{b['callbacks_booked'].mean:.0f}",
            f"{b['callbacks_owed'].mean:.0f}",
        ]
        mark = " (warm-up)" if i < plan.warmup_blocks else ""
        lines.append("  ".join(f"{c:>{w}}" for c, (_, w) in zip(cells, cols, strict=True)) + mark)
    t = summary.totals
    lines.append("")
    lines.append(
        f"day: {t['calls'].mean:.0f} calls ({t['redials'].mean:.0f} redials, "
        f"{t['diverted'].mean:.0f} left at the IVR), "
        f"{t['offered'].mean:.0f} offered to queues, {t['answered'].mean:.0f} answered; "
        f"service level {_pct(t['service_level'])} %, ASA {_num(t['asa_s'], 1)} s, "
        f"abandoned {_pct(t['abandon_rate'])} %"
    )
    lines.append(
        "overflow: "
        + ", ".join(f"{k} {t[f'overflow_{k}'].mean:.0f}" for k in OVERFLOW_TARGETS)
        + f"; surge on {100 * t['surge_share'].mean:.0f} % of the day, {t['surge_changes'].mean:.1f} switch changes"
        + (f", reserve call-ins {t['reserve_activations'].mean:.1f}" if plan.reserves else "")
    )
    lines.append(
        f"callbacks: {t['callbacks_booked'].mean:.0f} booked, {t['callbacks_served'].mean:.0f} served, "
        f"{t['callback_no_answer'].mean:.0f} dials not answered, {t['callbacks_failed'].mean:.0f} failed, "
        f"{t['callbacks_closed_reached_agent'].mean:.0f} closed when the caller got through, "
        f"{t['callbacks_expired'].mean:.0f} expired, {t['promises_missed'].mean:.0f} promises missed, "
        f"{t['callbacks_owed_at_end'].mean:.0f} still owed at the end; {t['waiting_at_end'].mean:.0f} callers in line"
    )
    if len(summary.queues) > 1:
        for q, e in summary.queues.items():
            lines.append(
                f"  queue {q}: {e['offered'].mean:.0f} offered, service level {_pct(e['service_level'])} %, "
                f"ASA {_num(e['asa_s'], 1)} s, abandoned {_pct(e['abandon_rate'])} %"
            )
    calls = sum(r.calls for r in summary.runs)
    if summary.seconds > 0:
        lines.append(
            f"simulated {calls} queued calls in {summary.seconds:.1f} s of wall time "
            f"({calls / summary.seconds:,.0f} calls/s)"
        )
    return "\n".join(lines)


WHAT_IF_ROWS: tuple[tuple[str, str, str], ...] = (
    ("calls", "calls (incl. redials)", "n"),
    ("redials", "redials", "n"),
    ("offered", "offered to queues", "n"),
    ("answered", "answered", "n"),
    ("service_level", "service level %", "pct"),
    ("asa_s", "ASA s", "s"),
    ("abandon_rate", "abandoned %", "pct"),
    ("overflow_callback", "overflow: callback", "n"),
    ("overflow_message", "overflow: message", "n"),
    ("overflow_self_service", "overflow: self-service", "n"),
    ("overflow_peak_shaving", "overflow: peak shaving", "n"),
    ("queue_length_max", "longest line", "n1"),
    ("surge_share", "surge on % of day", "pct0"),
    ("callbacks_booked", "callbacks booked", "n"),
    ("callbacks_served", "callbacks served", "n"),
    ("promises_missed", "promises missed", "n"),
    ("callbacks_owed_at_end", "callbacks owed at end", "n"),
)


def _cell(e: Estimate, kind: str) -> str:
    if kind == "pct":
        return _pct(e)
    if kind == "pct0":
        return _pct(e, 0)
    if kind == "s":
        return _num(e, 1)
    if kind == "n1":
        return _num(e, 1)
    return _num(e, 0)


def what_if_table(results: Sequence[tuple[str, Summary]]) -> str:
    width = max(22, *(len(label) + 2 for label, _ in results))
    head = f"{'':<24}" + "".join(f"{label:>{width}}" for label, _ in results)
    lines = [f"what-if: {results[0][1].plan.name}, {results[0][1].replications} replications each, same callers", head]
    for key, title, kind in WHAT_IF_ROWS:
        lines.append(f"{title:<24}" + "".join(f"{_cell(s.totals[key], kind):>{width}}" for _, s in results))
    return "\n".join(lines)


def staffing_table(result: Any) -> str:
    plan: Plan = result.plan
    lines = [
        f"staffing: fewest agents on the phones per block and queue, Erlang A/C then simulated "
        f"({result.summary.replications} replications, {result.rounds} round(s), "
        f"{'every block meets its target' if result.met else 'some blocks still miss their target'})",
        f"{'start':>5}  {'queue':<12}{'calls':>7}{'Erlang':>8}{'sim':>6}{'rostered':>10}"
        f"{'sim SL %':>13}{'sim aband %':>13}",
    ]
    targets = {q.name: q.service_level_target for q in plan.model.queues}
    marked = 0
    for row in sorted(result.rows, key=lambda r: (r.block, r.queue)):
        rostered = math.ceil(row.agents / (1 - result.shrinkage)) if row.agents else 0
        sl_e, ab_e = row.simulated_service_level, row.simulated_abandon_rate
        sl = _pct(sl_e) if sl_e else "-"
        ab = _pct(ab_e) if ab_e else "-"
        cap = result.max_abandon
        mark = ""
        if sl_e and ab_e and (sl_e.mean < targets[row.queue] or (cap is not None and ab_e.mean > cap)):
            mark, marked = " *", marked + 1
        lines.append(
            f"{plan.block_label(row.block):>5}  {row.queue:<12}{row.calls:>7.0f}{row.erlang_agents:>8}"
            f"{row.agents:>6}{rostered:>10}{sl:>13}{ab:>13}{mark}"
        )
    if marked:
        lines.append(
            "* the mean misses the target but the 95 % interval reaches it: more replications would tell"
            + (f" (abandonment cap {result.max_abandon:.0%})" if result.max_abandon is not None else "")
        )
    return "\n".join(lines)


def _share(x: float) -> str:
    return f"{x:.2%}"


def sizing_table(result: Sizing, plan: Plan) -> str:
    caps = result.capacities
    peak = result.peak
    spare = f"{caps.spare_nodes} spare node{'s' if caps.spare_nodes != 1 else ''}"
    lines = [
        f"sizing: cluster nodes for the busiest block (headroom {caps.headroom:.0%}, {spare})",
        f"  per node: {caps.sip_calls_per_node:,.0f} SIP calls/s, {caps.media_streams_per_node:,.0f} media streams, "
        f"{caps.engine_events_per_replica:,.0f} engine events/s in its replica; "
        f"Kamailio {caps.kamailio_calls_per_worker:,.0f} calls/s per worker",
        f"  busiest block {plan.block_label(peak.block)}: {peak.calls_per_s:,.2f} SIP calls/s, "
        f"{peak.streams:,.0f} media streams, {peak.events_per_s:,.1f} engine events/s "
        f"({result.events_per_call:.2f} per call; every node applies every event)",
    ]
    shares = result.shares
    used = ", ".join(f"{k} {_share(shares[k])}" for k in LIMITS)
    if result.nodes_for_load is None:
        lines.append(
            f"  one log's engine events alone take {_share(shares['engine'])} of every node, over the "
            f"{1 - caps.headroom:.0%} allowed: no number of nodes carries it; split the queues over at least "
            f"{result.logs_needed} logs (clusters)"
        )
    else:
        n = result.nodes_for_load
        limit = "no traffic" if result.limit == "none" else f"{result.limit} limits"
        lines.append(f"  on {n} node{'s' if n != 1 else ''} each carries: {used} ({limit})")
        lines.append(
            f"  nodes: {n} for the load + {caps.spare_nodes} spare = {result.nodes}; "
            f"Kamailio: {result.kamailio_workers} worker{'s' if result.kamailio_workers != 1 else ''}"
        )
    return "\n".join(lines)


# -------------------------------------------------------------- files


def _json_value(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _est(e: Estimate) -> dict[str, float | None]:
    return {
        "mean": _json_value(e.mean),
        "ci95": _json_value(e.ci95),
        "low": _json_value(e.low),
        "high": _json_value(e.high),
    }


def summary_json(summary: Summary) -> dict[str, Any]:
    plan = summary.plan
    return {
        "scenario": plan.name,
        "replications": summary.replications,
        "seeds": [r.seed for r in summary.runs],
        "block_minutes": plan.block_seconds / 60,
        "start": plan.block_label(0),
        "warmup_blocks": plan.warmup_blocks,
        "service_level_target": plan.service_level_target,
        "service_level_seconds": plan.service_level_t,
        "wall_seconds": summary.seconds,
        "simulated_calls": sum(r.calls for r in summary.runs),
        "totals": {k: _est(v) for k, v in summary.totals.items()},
        "queues": {q: {k: _est(v) for k, v in m.items()} for q, m in summary.queues.items()},
        "blocks": [
            {"block": i, "start": plan.block_label(i), **{k: _est(v) for k, v in b.items()}}
            for i, b in enumerate(summary.blocks)
        ],
    }


def write_report(summary: Summary, out: Path, *, plots: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    plan = summary.plan
    written = []
    path = out / "blocks.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["block", "start", *[c for m in BLOCK_METRICS for c in (m, f"{m}_ci95")]])
        for i, b in enumerate(summary.blocks):
            w.writerow([i, plan.block_label(i), *[_fmt(x) for m in BLOCK_METRICS for x in (b[m].mean, b[m].ci95)]])
    written.append(path)
    data = summary_json(summary)
    path = out / "blocks.json"
    path.write_text(
        json.dumps({k: data[k] for k in ("scenario", "replications", "start", "block_minutes", "blocks")}, indent=1)
    )
    written.append(path)
    path = out / "summary.json"
    path.write_text(json.dumps({k: v for k, v in data.items() if k != "blocks"}, indent=1))
    written.append(path)
    path = out / "runs.csv"
    from sim.stats import run_totals

    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["seed", *TOTAL_METRICS])
        for run in summary.runs:
            t = run_totals(run, plan)
            w.writerow([run.seed, *[_fmt(t[m]) for m in TOTAL_METRICS]])
    written.append(path)
    if plots:
        written += plot_summary(summary, out)
    return written


def _fmt(v: float) -> str:
    if math.isnan(v):
        return ""
    return f"{v:.6g}"


def write_what_if(results: Sequence[tuple[str, Summary]], out: Path, *, plots: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "what_if.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["metric", *[c for label, _ in results for c in (label, f"{label} ci95")]])
        for key, _, _ in WHAT_IF_ROWS:
            w.writerow([key, *[_fmt(x) for _, s in results for x in (s.totals[key].mean, s.totals[key].ci95)]])
    jpath = out / "what_if.json"
    jpath.write_text(json.dumps({label: {k: _est(v) for k, v in s.totals.items()} for label, s in results}, indent=1))
    written = [path, jpath]
    if plots:
        written.append(plot_what_if(results, out))
    return written


def write_staffing(result: Any, out: Path, *, plots: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    plan: Plan = result.plan
    rows = []
    for row in sorted(result.rows, key=lambda r: (r.block, r.queue)):
        rows.append(
            {
                "block": row.block,
                "start": plan.block_label(row.block),
                "queue": row.queue,
                "calls": row.calls,
                "erlang_agents": row.erlang_agents,
                "erlang_service_level": row.erlang.service_level if row.erlang else None,
                "erlang_p_abandon": row.erlang.p_abandon if row.erlang else None,
                "agents": row.agents,
                "rostered": math.ceil(row.agents / (1 - result.shrinkage)) if row.agents else 0,
                "simulated_service_level": _est(row.simulated_service_level) if row.simulated_service_level else None,
                "simulated_abandon_rate": _est(row.simulated_abandon_rate) if row.simulated_abandon_rate else None,
            }
        )
    path = out / "staffing.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        keys = ["block", "start", "queue", "calls", "erlang_agents", "erlang_service_level", "erlang_p_abandon",
                "agents", "rostered", "simulated_service_level", "simulated_service_level_ci95",
                "simulated_abandon_rate"]  # fmt: skip
        w.writerow(keys)
        for r in rows:
            sl = r["simulated_service_level"] or {}
            ab = r["simulated_abandon_rate"] or {}
            w.writerow(
                [
                    r["block"],
                    r["start"],
                    r["queue"],
                    f"{r['calls']:.1f}",
                    r["erlang_agents"],
                    _fmt(r["erlang_service_level"] or math.nan),
                    _fmt(r["erlang_p_abandon"] or math.nan),
                    r["agents"],
                    r["rostered"],
                    _fmt(sl.get("mean") or math.nan),
                    _fmt(sl.get("ci95") or math.nan),
                    _fmt(ab.get("mean") or math.nan),
                ]
            )
    jpath = out / "staffing.json"
    jpath.write_text(json.dumps({"met": result.met, "rounds": result.rounds, "rows": rows}, indent=1))
    written = [path, jpath]
    if plots:
        written.append(plot_staffing(result, out))
    return written


# -------------------------------------------------------------- command line


def main(args: argparse.Namespace) -> int:
    from sim.planning import sizing, staffing, what_if
    from sim.scenario import ScenarioError, load_scenario

    try:
        plan = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(exc, file=sys.stderr)
        return 2
    caps = None
    if getattr(args, "sizing", False) or args.staffing or any(getattr(args, k, None) is not None for k in SIZING_FLAGS):
        try:
            caps = sizing_settings(args.scenario, args)
        except SizingError as exc:
            print(exc, file=sys.stderr)
            return 2
    if args.seed is not None:
        plan = plan.with_changes(seed=args.seed)
    reps = args.replications or plan.replications
    if reps < 1:
        print("sim: --replications must be at least 1", file=sys.stderr)
        return 2
    jobs = max(1, args.jobs or 1)

    def bar(label: str) -> ProgressBar | None:
        return None if args.no_progress else ProgressBar(label)

    out = Path(args.out) if args.out else None
    summary = replicate(plan, reps, progress=bar("simulating"), jobs=jobs)
    if args.json:
        print(json.dumps({k: v for k, v in summary_json(summary).items() if k != "blocks"}, indent=1))
    else:
        print(summary_table(summary))
    if out is not None:
        files = write_report(summary, out, plots=not args.no_plots)
        print(f"\nreport: {len(files)} files in {out}/")
    if args.what_if:
        results = what_if(plan, reps, progress=bar("what-if"), jobs=jobs)
        print()
        print(what_if_table(results))
        if out is not None:
            write_what_if(results, out, plots=not args.no_plots)
    if args.staffing:
        result = staffing(plan, max_abandon=args.max_abandon, progress=bar("staffing"), jobs=jobs)
        print()
        print(staffing_table(result))
        if out is not None:
            write_staffing(result, out, plots=not args.no_plots)
        summary = result.summary  # the staffed roster: the traffic it answers sizes the cluster
    if caps is not None:
        sized = sizing(summary, caps)
        print()
        print(sizing_table(sized, summary.plan))
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "sizing.json").write_text(json.dumps(sizing_json(sized, summary.plan), indent=1))
    return 0
