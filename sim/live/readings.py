"""What the media benchmark reads off the server: ``/metrics`` histograms, CPU time from ``/proc``, py-spy profiles.

Pure readings of text the server (or the kernel, or py-spy) wrote: no
process is started here, so each is tested on a stored sample.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.live.promtext import Samples

CLK_TCK = os.sysconf("SC_CLK_TCK")


def histogram_buckets(samples: Samples, name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of one histogram, ascending, +Inf last."""
    rows = [(float(dict(lab)["le"]), v) for (n, lab), v in samples.items() if n == f"{name}_bucket"]
    return sorted(rows)


def bucket_deltas(before: Samples, after: Samples, name: str) -> tuple[list[float], list[float]]:
    """Finite upper bounds and per-bucket (not cumulative) counts observed between two scrapes.

    The counts list has one more entry than the bounds: the +Inf bucket.
    """
    a = dict(histogram_buckets(before, name))
    rows = histogram_buckets(after, name)
    bounds = [le for le, _ in rows if not math.isinf(le)]
    counts: list[float] = []
    prev = 0.0
    for le, cum in rows:
        cum -= a.get(le, 0.0)
        counts.append(cum - prev)
        prev = cum
    return bounds, counts


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """The q-quantile, interpolated linearly inside its bucket (the lowest bucket starts at 0).

    Like Prometheus' ``histogram_quantile``: a quantile that falls in the +Inf
    bucket is reported as the highest finite bound. ``None`` with no observations.
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    cum = 0.0
    lower = 0.0
    for i, n in enumerate(counts):
        upper = bounds[i] if i < len(bounds) else math.inf
        if n > 0 and cum + n >= rank:
            if math.isinf(upper):
                return bounds[-1] if bounds else None
            return lower + (upper - lower) * (rank - cum) / n
        cum += n
        lower = upper
    return bounds[-1] if bounds else None


def highest_bucket(bounds: Sequence[float], counts: Sequence[float]) -> str:
    """The bucket of the worst observation, as text: '<= 2 ms' or '> 100 ms'."""
    top = max((i for i, n in enumerate(counts) if n > 0), default=None)
    if top is None:
        return "-"
    if top >= len(bounds):
        return f"> {bounds[-1] * 1000:g} ms"
    return f"<= {bounds[top] * 1000:g} ms"


def cpu_seconds(pid: int | None, tid: int | None = None) -> float | None:
    """User + system CPU seconds of a process (all threads) or of one of its threads."""
    if pid is None:
        return None
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class MetricsSnapshot:
    t: float
    samples: Samples
    loop_cpu: float | None  # the server's main thread: its event loop
    server_cpu: float | None
    sipp_cpu: float | None
    bench_cpu: float  # this process: the RTP receiver thread, mostly


# --------------------------------------------------------------------------- profiles


def summarise_profile(path: Path, top: int = 12) -> dict[str, Any]:
    """Self and inclusive sample shares by function, from py-spy's raw (collapsed-stack) output."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return {"error": str(exc)}
    self_n: Counter[str] = Counter()
    incl_n: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame_name(f) for f in stack.split(";")]
        self_n[frames[-1]] += n
        for f in set(frames):
            incl_n[f] += n
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "self": [[f, round(c / total, 4)] for f, c in self_n.most_common(top)],
        "inclusive": [[f, round(c / total, 4)] for f, c in incl_n.most_common(top * 2)],
    }


def _frame_name(frame: str) -> str:
    # "next_packet (ivr/media/stream.py:142)" -> "next_packet (ivr/media/stream.py)"
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name
