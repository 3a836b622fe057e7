"""Overload benchmark: new calls answered while thousands of callers hold in line.

``frontdesk bench-hold [options]`` (or ``python -m sim.live.holdbench``)
starts one ``frontdesk serve`` (uvloop, log level warning, a prompt cache
rendered once) whose only flow puts every caller straight into queue
``general``: no agents, surge switched off, ``max_length`` and ``max_wait``
far beyond the run, so the line only grows and every caller hears hold music
and a position announcement every ``--announce-every`` seconds (10): one RTP
stream per caller, paced by the server's shared 20 ms tick, and one engine
event per caller and announcement. Then, for each line
length L in ``--lengths`` (default 0, 500, 1000, 2000), in ascending order
on the same server:

1. SIPp (``sim/scenarios/media_uac.xml``, the media benchmark's caller)
   adds callers at ``--ramp-rate`` calls/s until L of them hold: INVITE,
   ACK, then silence until the end of the run (their RTP goes to one UDP
   port bound here and never read). The step waits until the server's own
   ``frontdesk_queue_waiting_calls`` gauge shows L callers in line;
2. a quiet window (``--quiet`` s, no new calls): the tick lateness and the
   server's CPU with the line held and nothing else. Both windows default to
   one announcement period, so each sees every holder announced once and the
   difference of their CPU is the new calls' own;
3. the loaded window: a second SIPp (``-sn uac -d 0``, as bench-sip runs
   it) offers new calls at ``--rate`` calls/s for ``--window`` s. Each new
   caller is answered, joins the same line (at its back) and hangs up at
   once. Measured:

   * INVITE -> 200 OK p50/p99 as SIPp sees it (``-trace_rtt``, whole
     milliseconds), and the server's own ``frontdesk_sip_answer_latency_seconds``
     p99 (from its buckets, so exact only to the bucket);
   * the shared tick's lateness p50/p99 from the deltas of
     ``frontdesk_rtp_pacing_lateness_seconds`` (as bench-media reads it);
   * the server's CPU (all threads, share of one core), and the CPU each new
     call cost: loaded CPU minus quiet CPU, per new call answered, also as a
     ratio to the first step's (the reference, measured in the same run);
   * what holding costs: the quiet window's CPU per RTP packet sent.

The goal, new INVITEs answered at p99 <= 5 ms and the media tick late by
at most 5 ms at p99 with 2,000 callers holding, is checked at the longest
step of at least ``--goal-length`` (2,000) callers. The run itself (the
server, the holders, each step's windows) is sim/live/holdrun.py. Every
process started here is stopped on the way out; each SIPp run is bounded in
calls and time.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from sim.benchkit import (
    BenchRun,
    cli_args,
    executable,
    log,
    ratio,
    refuse,
    render_prompts,
    shown,
    sigterm_unwinds,
    sipp_bench_options,
    table,
    verdict,
    work_directory,
)
from sim.live.holdrun import MAX_LENGTH, HoldBenchOptions, HoldRun, HoldStep, hold_config
from sim.live.targets import event_loop_name, loop_lag_report, sipp_version

GOAL_P99_MS = 5.0  # new-call answer p99 and tick lateness p99
GOAL_LENGTH = 2000  # callers holding in line when the goal must hold
DEFAULT_LENGTHS = (0, 500, 1000, 2000)
SATURATED = 0.95  # server CPU share of one core beyond which a step's CPU per call is only a floor


# --------------------------------------------------------------------------- report


def goal_step(steps: Sequence[HoldStep], goal_length: int) -> HoldStep | None:
    """The longest step at or beyond the goal's line length, if one ran."""
    at = [s for s in steps if s.line >= goal_length]
    return max(at, key=lambda s: s.line) if at else None


def goal_met(step: HoldStep | None, goal_ms: float) -> bool | None:
    """The goal at its step: new-call p99 and tick p99 within ``goal_ms``, nothing failed. None: not run."""
    if step is None:
        return None
    return (
        not step.problems
        and step.p99_ms is not None
        and step.p99_ms <= goal_ms
        and step.tick_p99_ms is not None
        and step.tick_p99_ms <= goal_ms
    )


def saturated(s: HoldStep) -> bool:
    """The server's event loop used (nearly) all of its core in the loaded window: its CPU cannot grow further.

    The loop's thread is what saturates: the batch sender's thread (when built) sends RTP on the other core.
    """
    busy = s.loop_cpu if s.loop_cpu is not None else s.server_cpu
    return busy is not None and busy >= SATURATED


def render(steps: Sequence[HoldStep], opts: HoldBenchOptions) -> str:
    head = ["in line", "new calls/s", "p50 ms", "p99 ms", "server p99 ms", "tick p50 ms", "tick p99 ms",
            "quiet tick p99", "server CPU", "loop CPU", "quiet CPU", "quiet us/pkt", "CPU/call ms", "vs first",
            "machine CPU", "send", "result"]  # fmt: skip
    ref = steps[0].cpu_per_call_ms if steps else None
    rows = [
        [
            "-" if s.waiting_before is None else f"{s.waiting_before}",
            f"{shown(s.achieved, '.0f')}/{s.rate}",
            shown(s.p50_ms, ".0f"),
            shown(s.p99_ms, ".0f"),
            shown(s.server_answer_p99_ms, ".2f"),
            shown(s.tick_p50_ms, ".2f"),
            shown(s.tick_p99_ms, ".2f"),
            shown(s.quiet_tick_p99_ms, ".2f"),
            "-" if s.server_cpu is None else f"{s.server_cpu:.0%}",
            "-" if s.loop_cpu is None else f"{s.loop_cpu:.0%}",
            "-" if s.quiet_server_cpu is None else f"{s.quiet_server_cpu:.0%}",
            shown(s.quiet_us_per_packet if s.line else None, ".1f"),
            shown(s.cpu_per_call_ms, ".2f") + ("*" if saturated(s) else ""),
            shown(ratio(s.cpu_per_call_ms, ref), ".2f"),
            "-" if s.machine_cpu is None else f"{s.machine_cpu:.2f}",
            s.send_path or "-",
            "ok" if not s.problems else "FAIL",
        ]
        for s in steps
    ]
    out = table(head, rows)
    for s in steps:
        if s.problems:
            out.append(f"{s.line} in line: {'; '.join(s.problems)}")
    out.append(
        "p50/p99: INVITE -> 200 OK of the new calls as SIPp measured it (whole ms); server p99: the server's own "
        "answer-latency histogram; tick: lateness of the shared 20 ms media tick (histogram deltas, interpolated "
        "in buckets); quiet: the same line with no new calls; CPU: the server process (all threads; loop: its "
        "event-loop thread), share of one core; "
        "quiet us/pkt: quiet CPU per RTP packet sent (the cost of holding); "
        "CPU/call: (CPU with new calls - quiet CPU) per new call, '*' = the server's event loop was saturated "
        "(>= 95% of a core), so the figure is a floor; vs first: CPU/call over that of the first step (the reference); "
        "machine CPU: cores busy in the loaded window, everything on the machine; send: how the server sent RTP "
        "(batched: its rtp-send thread ran; sendto: one socket.sendto per packet)."
    )
    if opts.loop_lag is not None:
        print("\nfrontdesk event loop (tools/loop_lag.py):")
        print(loop_lag_report(Path(opts.loop_lag)))
    step = goal_step(steps, opts.goal_length)
    met = goal_met(step, opts.goal_ms)
    where = f"at {step.line} in line" if step is not None else f"no step of >= {opts.goal_length} in line ran"
    out.append(
        f"goal: new-call p99 <= {opts.goal_ms:g} ms and tick p99 <= {opts.goal_ms:g} ms with "
        f">= {opts.goal_length} callers holding: {verdict(met)} ({where})"
    )
    return "\n".join(out)


# --------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="frontdesk bench-hold",
        description="New calls answered while N callers hold in line (no agents, hold music to every caller): "
        "INVITE -> 200 OK p50/p99, media tick lateness and server CPU for each line length.",
    )
    p.add_argument("--quick", action="store_true", help="short smoke run (< 60 s): 0 and 100 in line, 5 s windows")
    p.add_argument("--lengths", help="comma list of callers in line per step, ascending (default 0,500,1000,2000)")
    p.add_argument("--rate", type=int, help="new calls per second in each loaded window (default 100)")
    p.add_argument("--window", type=float, help="seconds of new calls per step (default 10; quick 5)")
    p.add_argument("--quiet", type=float, help="seconds measured with no new calls per step (default 10; quick 5)")
    p.add_argument("--announce-every", type=float, default=10.0, help="seconds between a holder's announcements (10)")
    p.add_argument("--settle", type=float, help="seconds between the line filled and the windows (default 3)")
    p.add_argument("--ramp-rate", type=int, default=200, help="holding callers added per second (200)")
    p.add_argument("--goal-ms", type=float, default=GOAL_P99_MS, help="new-call and tick p99 goal (5)")
    p.add_argument("--goal-length", type=int, default=GOAL_LENGTH, help="callers in line the goal is checked at")
    p.add_argument(
        "--loop-lag",
        metavar="PATH",
        help="run the server under tools/loop_lag.py (event-loop lag and garbage collections), its samples written "
        "to PATH; the breakdown is printed at the end",
    )
    p.add_argument("--profile", metavar="DIR", help="py-spy the server over each step's windows; raw stacks into DIR")
    sipp_bench_options(p, f"exit 1 unless the goal is met at >= --goal-length ({GOAL_LENGTH}) callers in line")
    return p


def parse_lengths(text: str | None, quick: bool) -> list[int]:
    """The steps' line lengths: ascending, distinct, each >= 0 (ValueError otherwise)."""
    if text is None:
        return [0, 100] if quick else list(DEFAULT_LENGTHS)
    lengths = [int(x) for x in text.split(",") if x.strip()]
    if not lengths or min(lengths) < 0 or lengths != sorted(set(lengths)):
        raise ValueError("need ascending, distinct line lengths >= 0")
    return lengths


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(cli_args(argv))
    quick = args.quick
    try:
        lengths = parse_lengths(args.lengths, quick)
    except ValueError as exc:
        return refuse("bench-hold", f"--lengths takes a comma list of integers: {exc}")
    opts = HoldBenchOptions(
        sipp=args.sipp,
        lengths=lengths,
        rate=args.rate if args.rate is not None else (50 if quick else 100),
        window=args.window if args.window is not None else (5.0 if quick else 10.0),
        quiet=args.quiet if args.quiet is not None else (5.0 if quick else 10.0),
        settle=args.settle if args.settle is not None else 3.0,
        ramp_rate=args.ramp_rate,
        goal_ms=args.goal_ms,
        goal_length=args.goal_length,
        announce_every=args.announce_every,
        profile=args.profile,
        loop_lag=args.loop_lag,
    )
    if min(opts.rate, opts.ramp_rate) < 1 or min(opts.window, opts.quiet) <= 0 or opts.settle < 0:
        return refuse("bench-hold", "need --rate >= 1, --ramp-rate >= 1, --window > 0, --quiet > 0, --settle >= 0")
    if not 1 <= opts.announce_every <= 3600:
        return refuse("bench-hold", "--announce-every takes 1 to 3600 seconds")
    if max(opts.lengths) > MAX_LENGTH:
        return refuse("bench-hold", f"at most {MAX_LENGTH} callers in line (RTP ports)")
    if opts.rate * opts.window > 20000:
        return refuse("bench-hold", "at most 20,000 new calls per step (--rate x --window)")
    if not executable(opts.sipp):
        return refuse("bench-hold", f"SIPp not found at {opts.sipp} (Debian package sip-tester)")

    bench = BenchRun("frontdesk bench-hold")
    with work_directory("holdbench-", args.keep) as workdir, sigterm_unwinds():
        config = hold_config(workdir, workdir / "prompts", max(opts.lengths), opts.announce_every)
        t = time.monotonic()
        render_prompts(config)
        log(f"prompts rendered in {time.monotonic() - t:.1f} s")
        log(f"line lengths {opts.lengths}: new calls {opts.rate}/s for {opts.window:g} s per step, "
            f"quiet {opts.quiet:g} s, holders ramped at {opts.ramp_rate}/s")  # fmt: skip
        hold = HoldRun(opts, workdir, config)
        try:
            steps = hold.run()
        except (OSError, RuntimeError) as exc:  # the server did not start: nothing was measured
            print(f"bench-hold: {exc}", file=sys.stderr)
            return 1
        finally:
            hold.stop()

    step = goal_step(steps, opts.goal_length)
    met = goal_met(step, opts.goal_ms)
    print()
    print(render(steps, opts))
    report = bench.report(
        options=asdict(opts) | {"quick": quick},
        scenario="one server; flow: straight into queue 'general' (no agents, surge off, no length or wait "
        "limit in reach); holders: SIPp sim/scenarios/media_uac.xml (INVITE, ACK, silence) at --ramp-rate; "
        "new calls: SIPp -sn uac -d 0 at --rate, over UDP on 127.0.0.1",
        method={
            "line": "frontdesk_queue_waiting_calls{queue='general'} before and after each loaded window",
            "answer": "SIPp -trace_rtt (INVITE -> 200 OK, whole ms, nearest-rank percentiles); server: "
            "frontdesk_sip_answer_latency_seconds deltas, interpolated within buckets",
            "tick_lateness": "deltas of frontdesk_rtp_pacing_lateness_seconds, interpolated within buckets",
            "cpu": "utime+stime of the server process from /proc, share of one core; per call: loaded minus "
            "quiet CPU, divided by the new calls answered",
        },
        machine=bench.machine(frontdesk_event_loop=event_loop_name(), sipp=sipp_version(opts.sipp)),
        steps=[asdict(s) for s in steps],
        goal={"length": opts.goal_length, "p99_ms": opts.goal_ms, "step": None if step is None else step.line},
        met=met,
    )
    return bench.finish(report, json_path=args.json, check=args.check, met=bool(met))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
