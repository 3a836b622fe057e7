"""Event-loop stall probe: run ``frontdesk serve`` with a loop-lag histogram and garbage-collector timings.

``python -m tools.loop_lag --out lag.json -- serve --config frontdesk.yaml``
runs the server in this process with, on its event loop, a task that sleeps
1 ms and records how late it woke (the loop's lag: how long a datagram that
arrived then waited for its turn), the loop thread's CPU time in that
interval (on-CPU work versus the thread being off the CPU), and every
collection of the garbage collector with its generation and duration. The
figures go to ``--out`` as JSON every second and when the server stops.
``python -m tools.loop_lag --report lag.json`` prints the breakdown: lag
percentiles, stalls over 5/10/20/40 ms, how much of the stalls' time the
loop thread spent on the CPU, collections by generation, and how many
stalls overlap a collection. Used with a fixed-rate SIPp run
(``sim/live/targets.py``, ``Frontdesk(..., loop_lag=path)``) to find where
the SIP answer time's tail comes from. Not part of the server.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

TICK = 0.001  # seconds the probe sleeps; anything later than that is lag
DUMP_EVERY = 60.0  # seconds between writes of the JSON file: a write stalls the loop itself (ms per 10k samples)
STALL_MS = (5, 10, 20, 40)


class Probe:
    """Loop-lag samples ``(monotonic, lag_s, loop_thread_cpu_s)`` and collections ``(monotonic, gen, s, collected)``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.lags: list[tuple[float, float, float]] = []
        self.collections: list[tuple[float, int, float, int]] = []
        self._gc_started = 0.0

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            took = time.perf_counter() - self._gc_started
            self.collections.append((time.monotonic(), int(info["generation"]), took, int(info.get("collected", 0))))

    async def run(self) -> None:
        last_dump = time.monotonic()
        while True:
            wall, cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(TICK)
            self.lags.append((time.monotonic(), time.perf_counter() - wall - TICK, time.thread_time() - cpu))
            if self.lags[-1][0] - last_dump >= DUMP_EVERY:
                last_dump = self.lags[-1][0]
                self.dump()

    def dump(self) -> None:
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"lags": self.lags, "collections": self.collections}))
        tmp.replace(self.out)


def serve_probed(out: Path, argv: list[str]) -> int:
    """``frontdesk <argv>`` in this process with the probe on whatever loop ``asyncio.run`` starts."""
    from ivr import cli

    probe = Probe(out)
    gc.callbacks.append(probe.on_gc)
    threshold = os.environ.get("LOOP_LAG_GC_THRESHOLD")
    if threshold:
        try:
            values = [int(v) for v in threshold.split(",")]
        except ValueError:
            raise SystemExit(f"LOOP_LAG_GC_THRESHOLD={threshold!r}: up to three integers, e.g. 1000,20,100") from None
        real_set = gc.set_threshold
        gc.set_threshold = lambda *_: real_set(*values)  # the server's own call sets these instead
    real_run = asyncio.run

    async def probed(main: Coroutine[Any, Any, T]) -> T:
        task = asyncio.ensure_future(probe.run())
        try:
            return await main
        finally:
            task.cancel()
            probe.dump()

    def run(main: Coroutine[Any, Any, T], **kwargs: Any) -> T:
        return real_run(probed(main), **kwargs)

    asyncio.run = run  # the server's own asyncio.run, with the probe beside it
    try:
        return cli.main(argv)
    finally:
        asyncio.run = real_run
        probe.dump()


def _percentile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def report(path: Path) -> list[str]:
    """The breakdown of one probe file, as lines."""
    try:
        data = json.loads(path.read_text())
        lags = [tuple(x) for x in data["lags"]]
        collections = [tuple(x) for x in data["collections"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"{path}: not a loop-lag file ({exc})") from None
    if not lags:
        return [f"{path}: no samples"]
    start, end = lags[0][0], lags[-1][0]
    span = max(end - start, 1e-9)
    ordered = sorted(x[1] for x in lags)
    lines = [
        f"{len(lags)} samples over {span:.1f} s; loop lag p50 {_percentile(ordered, 0.5) * 1e3:.2f} ms, "
        f"p99 {_percentile(ordered, 0.99) * 1e3:.2f} ms, p99.9 {_percentile(ordered, 0.999) * 1e3:.2f} ms, "
        f"max {ordered[-1] * 1e3:.1f} ms"
    ]
    for ms in STALL_MS:
        stalls = [x for x in lags if x[1] * 1e3 > ms]
        wall = sum(x[1] for x in stalls)
        cpu = sum(x[2] for x in stalls)
        on_cpu = f", loop thread on the CPU {min(cpu / wall, 1.0):.0%} of it" if wall else ""
        lines.append(
            f"  stalls > {ms} ms: {len(stalls)} ({len(stalls) / span:.1f}/s), {wall * 1e3:.0f} ms "
            f"= {wall / span:.1%} of the time{on_cpu}"
        )
    during = [c for c in collections if start <= c[0] <= end]
    for gen in sorted({int(c[1]) for c in during}):
        took = sorted(c[2] for c in during if c[1] == gen)
        lines.append(
            f"  gc gen{gen}: {len(took)} collections ({len(took) / span:.2f}/s), "
            f"median {_percentile(took, 0.5) * 1e3:.2f} ms, max {took[-1] * 1e3:.1f} ms, total {sum(took) * 1e3:.0f} ms"
        )
    long_gc = [c for c in during if c[2] > 0.005]
    big = [x for x in lags if x[1] > 0.010]
    # a sample ends when the probe wakes: a collection inside its interval ended at most lag + TICK before
    with_gc = sum(any(x[0] - x[1] - 2 * TICK <= c[0] <= x[0] for c in long_gc) for x in big)
    lines.append(f"  stalls > 10 ms that overlap a collection over 5 ms: {with_gc} of {len(big)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.loop_lag", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="probe the server and write the samples here (JSON)")
    p.add_argument("--report", type=Path, help="print the breakdown of a probe file and exit")
    p.add_argument("frontdesk", nargs=argparse.REMAINDER, help="-- then frontdesk's arguments (serve --config ...)")
    args = p.parse_args(argv)
    if args.report is not None:
        print("\n".join(report(args.report)))
        return 0
    rest = args.frontdesk[1:] if args.frontdesk[:1] == ["--"] else args.frontdesk
    if args.out is None or not rest:
        p.error("give --out PATH -- serve --config FILE, or --report PATH")
    return serve_probed(args.out, rest)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
