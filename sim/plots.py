"""The simulator's plots (matplotlib, loaded only when a report asks for them): the day, the what-ifs, the staffing.

``sim/report.py`` writes them beside its tables; docs/sim.md shows how to read each one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sim.plan import Plan
from sim.stats import Estimate, Summary


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
