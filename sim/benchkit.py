"""The benchmarks' shared plumbing: their command lines, progress lines, report frame, JSON output and goals.

Used by ``frontdesk bench-sim`` (sim/simbench.py), ``bench-sip``
(sim/live/sipbench.py) and ``bench-media`` (sim/live/mediabench.py), so that
each of them holds only what it measures. ``bench-bookings``
(callback/bench.py) keeps its own short ``main``: a ``callback`` module may
import only ``callback`` and ``queueing`` (tests/test_layers.py), and command
line plumbing belongs in neither.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any


def cli_args(argv: Sequence[str] | None) -> list[str]:
    """The benchmark's own arguments: ``sys.argv`` by default, without the ``--`` that ``frontdesk X -- ...`` leaves."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        # `frontdesk bench-sip -- --quick`: ivr/cli.py hands over its REMAINDER with the "--" in it
        args = args[1:]
    return args


def sipp_bench_options(p: argparse.ArgumentParser, check: str = "exit 1 when a goal is not met") -> None:
    """The options every SIPp-driven benchmark takes: its JSON, its work directory, its verdict, SIPp."""
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (SIPp files, server log)")
    p.add_argument("--check", action="store_true", help=check)
    p.add_argument("--sipp", default=shutil.which("sipp") or "/usr/bin/sipp", help="SIPp binary")


def log(msg: str) -> None:
    """A progress line, on stderr so that stdout keeps only the results."""
    print(msg, file=sys.stderr, flush=True)


def refuse(prog: str, why: str) -> int:
    """Reject the command line: the reason on stderr, and exit status 2 (argparse's)."""
    print(f"{prog}: {why}", file=sys.stderr)
    return 2


def executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so that every ``finally`` runs and children are stopped."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def work_directory(prefix: str, keep: bool) -> Iterator[Path]:
    """A fresh temporary directory, removed on the way out unless ``keep`` (then its path is logged)."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield workdir
    finally:
        if keep:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def write_json(path: str | Path, report: Mapping[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A plain-text table: first column left-aligned, the rest right-aligned, rules above and below the rows."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths, strict=True)))]
    out.append(line)
    for row in rows:
        out.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    out.append(line)
    return out


def shown(value: float | None, spec: str) -> str:
    """``value`` formatted by ``spec``, or "-" when there is none."""
    return "-" if value is None else format(value, spec)


def verdict(met: bool | None) -> str:
    """A goal's outcome in a report line."""
    return "n/a" if met is None else ("MET" if met else "NOT MET")


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """ours / theirs, or None when either is missing or the reference is not positive."""
    if ours is None or theirs is None or theirs <= 0:
        return None
    return ours / theirs


class BenchRun:
    """One run of a benchmark: when it began, the machine's load around it, and how it ends.

    ``report()`` opens the JSON report with the benchmark's name and times,
    ``machine()`` describes where it ran, ``finish()`` writes the JSON file if
    asked, prints the total time and gives the exit status.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.began = time.time()
        self.load_before = os.getloadavg()

    def report(self, **parts: Any) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.began)),
            "duration_s": round(time.time() - self.began, 1),
            **parts,
        }

    def machine(self, **extra: Any) -> dict[str, Any]:
        return {
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in self.load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "python": sys.version.split()[0],
            **extra,
        }

    def finish(self, report: Mapping[str, Any], *, json_path: str | None, check: bool, met: bool) -> int:
        """Write the report to ``json_path`` (if given), print the total time; 1 when ``check`` and not ``met``."""
        if json_path:
            write_json(json_path, report)
            print(f"results written to {json_path}")
        print(f"total time {report['duration_s']:.0f} s; load average before/after "
              f"{self.load_before[0]:.2f}/{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")  # fmt: skip
        return 1 if check and not met else 0


def render_prompts(config: Mapping[str, Any]) -> None:
    """Render the prompts of the server config ``config`` into its cache once, as the server does at start-up.

    Every server a benchmark then starts on that cache finds them all rendered and renders nothing.
    """
    from ivr.settings.config import parse_config
    from ivr.settings.prompts import load_prompts

    load_prompts(parse_config(json.dumps(config)))
