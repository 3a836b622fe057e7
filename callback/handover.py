"""The shift handover report (R19): every open callback and its promise, in writing, for the next shift.

Built from the store's data (``CallbackStore.handover`` and ``counts_by_state``); served to supervisors at
``GET /callbacks/handover`` (ivr/web/callbackapi.py) and printed by ``frontdesk handover`` (ivr/cli.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from callback.store import Callback

HANDOVER_FIELDS = (
    "id",
    "state",
    "kind",
    "number",
    "queue",
    "arrived_at",
    "not_before",
    "window_end",
    "promised_by",
    "claimed_by",
    "lease_until",
    "attempts",
    "next_attempt_at",
    "notes",
)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def handover_json(callbacks: Sequence[Callback], counts: dict[str, int], now: datetime) -> dict[str, Any]:
    """The report as JSON: one row per open callback, whether its promise is already missed, who holds how many."""
    rows = []
    for cb in callbacks:
        row = {name: getattr(cb, name) for name in HANDOVER_FIELDS}
        row = {k: _iso(v) if isinstance(v, datetime) else v for k, v in row.items()}
        row["promise_missed"] = cb.promised_by < now
        rows.append(row)
    claimed: dict[str, int] = {}
    for cb in callbacks:
        if cb.claimed_by is not None:
            claimed[cb.claimed_by] = claimed.get(cb.claimed_by, 0) + 1
    return {
        "generated_at": _iso(now),
        "open": len(rows),
        "promises_missed": sum(1 for r in rows if r["promise_missed"]),
        "claimed_by_agent": dict(sorted(claimed.items())),
        "counts_by_state": counts,
        "callbacks": rows,
    }


def _when(value: str | None) -> str:
    return value[:19].replace("T", " ") if value else "-"


def handover_text(report: dict[str, Any]) -> str:
    """The report as lines for a person (CLI)."""
    lines = [
        f"shift handover at {report['generated_at']}: {report['open']} open callback(s), "
        f"{report['promises_missed']} promise(s) already missed",
    ]
    for agent, n in report["claimed_by_agent"].items():
        lines.append(f"  {agent} holds {n}")
    if report["callbacks"]:
        lines.append("")
        lines.append(
            f"{'id':>6}  {'state':<11} {'queue':<12} {'number':<16} {'promised by (UTC)':<20} "
            f"{'claimed by':<12} {'lease until':<20} tries"
        )
    for r in report["callbacks"]:
        missed = "  MISSED" if r["promise_missed"] else ""
        lines.append(
            f"{r['id']:>6}  {r['state']:<11} {r['queue']:<12} {r['number']:<16} {_when(r['promised_by']):<20} "
            f"{r['claimed_by'] or '-':<12} {_when(r['lease_until']):<20} {r['attempts']}{missed}"
        )
        if r["notes"]:
            lines.append(f"{'':>8}notes: {' '.join(str(r['notes']).split())}")
    return "\n".join(lines)


__all__ = ["HANDOVER_FIELDS", "handover_json", "handover_text"]
