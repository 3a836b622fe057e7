"""``frontdesk sim``: run a scenario's replications, print the summary, write the report folder.

The folder (``--out DIR``) holds:

- ``blocks.csv`` and ``blocks.json``: every block's figures, mean and 95 % interval half-width;
- ``runs.csv``: each replication's day totals (the spread behind the intervals);
- ``summary.json``: the day's totals, per queue too;
- plots: ``arrivals_vs_capacity.png``, ``queue_length.png``, ``service_level.png``,
  ``callbacks_owed.png``, ``surge.png``;
- with ``--what-if``: ``what_if.csv``, ``what_if.json``, ``what_if.png``;
- with ``--staffing``: ``staffing.csv``, ``staffing.json``, ``staffing.png``.

docs/sim.md explains how to read them.
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

from sim.plan import Plan
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
        + ", ".join(
            f"{k} {t[f'overflow_{k}'].mean:.0f}" for k in ("callback", "message", "self_service", "peak_shaving")
        )
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


# -------------------------------------------------------------- plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ticks(ax: Any, plan: Plan, n: int) -> None:
    step = max(1, n // 12)
    ax.set_xticks(range(0, n, step))
    ax.set_xticklabels([plan.block_label(i) for i in range(0, n, step)], rotation=45)
    ax.set_xlabel("block start")


def _sample_means(summary: Summary, attr: str) -> tuple[list[float], list[float]]:
    """Mean over the runs of a sampled value at each sample time (hours from the start)."""
    runs = summary.runs
    n = min(len(r.samples) for r in runs)
    times = [runs[0].samples[i].t / 3600 for i in range(n)]
    means = [sum(float(getattr(r.samples[i], attr)) for r in runs) / len(runs) for i in range(n)]
    return times, means


def _hour_ticks(ax: Any, plan: Plan) -> None:
    hours = plan.duration / 3600
    step = 1 if hours <= 14 else 2
    ticks = [h for h in range(int(hours) + 1) if h % step == 0]
    ax.set_xticks(ticks)
    ax.set_xticklabels([_clock(plan, h * 3600) for h in ticks], rotation=45)
    ax.set_xlabel("time")


def _clock(plan: Plan, seconds: float) -> str:
    minute = (plan.start_minute + int(seconds // 60)) % 1440
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _err(values: list[Estimate]) -> list[float]:
    return [0.0 if math.isnan(e.ci95) else e.ci95 for e in values]


def plot_summary(summary: Summary, out: Path) -> list[Path]:
    plt = _pyplot()
    plan = summary.plan
    blocks = summary.blocks
    x = list(range(len(blocks)))
    written = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.bar(x, [b["calls"].mean for b in blocks], color="#9ecae1", label="calls (incl. redials)")
    ax.errorbar(x, [b["offered"].mean for b in blocks], yerr=_err([b["offered"] for b in blocks]), fmt="o-",
                color="#3182bd", label="offered to queues")  # fmt: skip
    ax.plot(x, [b["capacity"].mean for b in blocks], "s--", color="#e6550d", label="capacity (agents x block / AHT)")
    ax.plot(x, [b["answered"].mean for b in blocks], "^-", color="#31a354", label="answered")
    ax.set_ylabel(f"calls per {plan.block_seconds / 60:g}-minute block")
    ax.set_title(f"{plan.name}: arrivals vs capacity")
    _ticks(ax, plan, len(blocks))
    ax.legend()
    save(fig, "arrivals_vs_capacity.png")

    fig, ax = plt.subplots(figsize=(10, 4.5))
    times, waiting = _sample_means(summary, "waiting")
    ax.plot(times, waiting, color="#3182bd", label=f"callers waiting (mean of runs, every {plan.sample_every:g} s)")
    mid = [(i + 0.5) * plan.block_seconds / 3600 for i in x]
    ax.errorbar(mid, [b["queue_length_max"].mean for b in blocks], yerr=_err([b["queue_length_max"] for b in blocks]),
                fmt="v", color="#de2d26", label="longest line in the block")  # fmt: skip
    ax.set_ylabel("callers waiting")
    ax.set_title(f"{plan.name}: queue length")
    _hour_ticks(ax, plan)
    ax.legend()
    save(fig, "queue_length.png")

    fig, ax = plt.subplots(figsize=(10, 4.5))
    levels = [b["service_level"] for b in blocks]
    colors = ["#31a354" if e.mean >= plan.service_level_target else "#de2d26" for e in levels]
    ax.bar(x, [100 * e.mean for e in levels], yerr=[100 * c for c in _err(levels)], color=colors, capsize=3)
    ax.axhline(100 * plan.service_level_target, color="black", linestyle="--",
               label=f"target {plan.service_level_target:.0%} in {plan.service_level_t:g} s")  # fmt: skip
    ax.set_ylim(0, 105)
    ax.set_ylabel("service level %, 95 % CI")
    ax.set_title(f"{plan.name}: service level per block")
    _ticks(ax, plan, len(blocks))
    ax.legend()
    save(fig, "service_level.png")

    fig, ax = plt.subplots(figsize=(10, 4.5))
    times, owed = _sample_means(summary, "owed")
    ax.plot(times, owed, color="#756bb1", label="callbacks owed (mean of runs)")
    ax.bar(mid, [b["callbacks_booked"].mean for b in blocks], width=0.35 * plan.block_seconds / 3600,
           color="#bcbddc", label="booked in the block")  # fmt: skip
    ax.bar([m + 0.35 * plan.block_seconds / 3600 for m in mid], [b["callbacks_served"].mean for b in blocks],
           width=0.35 * plan.block_seconds / 3600, color="#54278f", label="served in the block")  # fmt: skip
    ax.set_ylabel("callbacks")
    ax.set_title(f"{plan.name}: callbacks owed over time")
    _hour_ticks(ax, plan)
    ax.legend()
    save(fig, "callbacks_owed.png")

    fig, ax = plt.subplots(figsize=(10, 4.5))
    times, surge = _sample_means(summary, "surge")
    changes = ax.twinx()
    changes.bar(mid, [b["surge_changes"].mean for b in blocks], width=0.6 * plan.block_seconds / 3600, alpha=0.3,
                color="#636363", label="switch changes per block (right axis)")  # fmt: skip
    changes.set_ylabel("switch changes per block")
    ax.step(times, surge, where="post", color="#e6550d", label="share of runs in surge mode")
    ax.set_zorder(changes.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("surge on (0..1)")
    ax.set_title(f"{plan.name}: surge switch state")
    _hour_ticks(ax, plan)
    handles = ax.get_legend_handles_labels()[0] + changes.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper right")
    save(fig, "surge.png")
    return written


def plot_what_if(results: Sequence[tuple[str, Summary]], out: Path) -> Path:
    plt = _pyplot()
    plan = results[0][1].plan
    fig, axes = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for label, s in results:
        x = list(range(len(s.blocks)))
        axes[0].plot(x, [100 * b["service_level"].mean for b in s.blocks], marker=".", label=label)
        axes[1].plot(x, [100 * b["abandon_rate"].mean for b in s.blocks], marker=".", label=label)
    axes[0].axhline(100 * plan.service_level_target, color="black", linestyle="--")
    axes[0].set_ylabel("service level %")
    axes[1].set_ylabel("abandoned %")
    axes[0].set_title(f"{plan.name}: what-if")
    _ticks(axes[1], plan, plan.blocks)
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    path = out / "what_if.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_staffing(result: Any, out: Path) -> Path:
    plt = _pyplot()
    plan: Plan = result.plan
    fig, ax = plt.subplots(figsize=(10, 4.5))
    queues = sorted({r.queue for r in result.rows})
    for q in queues:
        rows = sorted((r for r in result.rows if r.queue == q), key=lambda r: r.block)
        ax.plot([r.block for r in rows], [r.erlang_agents for r in rows], "--", label=f"{q}: Erlang")
        ax.plot([r.block for r in rows], [r.agents for r in rows], "o-", label=f"{q}: confirmed by simulation")
    ax.set_ylabel("agents on the phones")
    ax.set_title(f"{plan.name}: staffing per block")
    _ticks(ax, plan, plan.blocks)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = out / "staffing.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -------------------------------------------------------------- command line


def main(args: argparse.Namespace) -> int:
    from sim.planning import staffing, what_if
    from sim.scenario import ScenarioError, load_scenario

    try:
        plan = load_scenario(args.scenario)
    except ScenarioError as exc:
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
    return 0
