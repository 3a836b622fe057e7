"""RTP pacing benchmark: N concurrent IVR calls streaming prompts from one server process.

``frontdesk bench-media [options]`` (or ``python -m sim.live.mediabench``) does,
for each N in ``--streams`` (default 250, 500, 1000, 1500):

1. starts ``frontdesk serve`` (uvloop, log level warning, hold time one
   hour, media timeout off, a prompt cache rendered once per benchmark run)
   with a fresh database: one process, so one core for its event loop;
2. has SIPp (``sim/scenarios/media_uac.xml``) place N calls at
   ``--ramp-rate`` calls/s and hold them: INVITE offering PCMU, PCMA and
   telephone-event, ACK, then wait for the server's BYE (the caller hangs
   up itself after the hold). Every call walks the built-in demo IVR
   (welcome, then the main menu and its re-prompts: about 95 s of prompts
   and menu waits with no key pressed), so every call has an RTP stream
   paced by the server's one shared 20 ms tick;
3. waits until ``frontdesk_media_streams_active`` reaches N, lets it settle,
   then measures over ``--window`` seconds between two ``/metrics`` scrapes:

   * pacing lateness p50/p99 of the shared tick, from the deltas of the
     ``frontdesk_rtp_pacing_lateness_seconds`` histogram (one observation
     per tick; buckets 0.5, 1, 2, 5, 10, 20, 50, 100 ms; the quantile is
     interpolated linearly inside its bucket, as Prometheus'
     ``histogram_quantile`` does, so it is exact only to the bucket);
   * RTP packets sent per second (``frontdesk_rtp_packets_total{direction="out"}``),
     which should be 50 per stream;
   * CPU time of the server's event-loop thread, of the whole server process
     (with the batch sender, its ``rtp-send`` thread makes the ``sendto``
     calls: ivr/transport/rtpbatch.py) and of SIPp, from ``/proc``, and the
     busy time of every core, so that what the rest of the machine used
     meanwhile shows; which send path the server used (its ``rtp-send``
     thread is there or not);
   * the receive side: the SDP of every call names one UDP port bound by
     this benchmark (SIPp sends no RTP and does not read its media port), so
     every packet of every stream is read here with its kernel receive
     timestamp (``SO_TIMESTAMPNS``; on loopback, that is when the server's
     ``sendto`` ran). Per stream, each packet's lateness is its arrival
     minus the stream's own best fit to the 20 ms grid its RTP timestamps
     promise (arrival - timestamp/8000, less that stream's minimum), and
     the peak of its RFC 3550 interarrival jitter is kept. The send burst
     of a tick (its first to its last packet) shows how much of each 20 ms
     the tick spends sending.

A step passes when tick lateness p99 <= ``--goal-ms`` (5 ms), the
receiver's lateness p99 too (when it reads the RTP back), the server
sent at least ``--min-rate-share`` (95%) of 50 x N packets per second, all
N streams were up through the window and no call failed. Stepping stops at
the first step that does not pass (``--keep-going`` runs them all).
``--profile`` records the server with py-spy during each window. Every
process started here is stopped on the way out.

One step is run by ``sim/live/mediastep.py``, its readings come from
``sim/live/readings.py`` and the receive side from ``sim/live/rtprx.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from sim.benchkit import (
    BenchRun,
    cli_args,
    executable,
    log,
    refuse,
    render_prompts,
    shown,
    sigterm_unwinds,
    sipp_bench_options,
    table,
    work_directory,
)
from sim.live.mediastep import RTP_PORT_MIN, MediaBenchOptions, MediaStep, StepResult
from sim.live.targets import event_loop_name, sipp_version

GOAL_P99_MS = 5.0  # tick lateness p99, and the receiver's lateness p99
GOAL_STREAMS = 5000  # concurrent calls the goal must hold at: the default RTP range (20000-30000) holds 5,000
MIN_RATE_SHARE = 0.95  # packets sent per second, share of 50 x N
DEFAULT_STREAMS = (250, 500, 1000, 1500)
DEMO_CALL_SECONDS = 95.0  # the demo flow with no key pressed (measured: 95.1 s)


# --------------------------------------------------------------------------- report


def render(steps: Sequence[StepResult], opts: MediaBenchOptions, summary: Mapping[str, Any]) -> str:
    head = ["streams", "active", "pkts/s", "per stream", "of 50N", "tick p50 ms", "tick p99 ms", "worst tick"]
    if opts.receiver:
        head += ["rx late p99 ms", "rx jitter p99 ms", "send/tick ms"]
    head += ["loop CPU", "server CPU", "others' CPU", "send", "result"]
    rows = []
    for r in steps:
        active = "-" if r.active_start is None else f"{min(r.active_start, r.active_end or 0)}"
        row = [
            str(r.streams),
            active,
            shown(r.packets_out_per_s, ".0f"),
            shown(r.packets_per_stream_per_s, ".2f"),
            "-" if r.rate_share is None else f"{r.rate_share:.1%}",
            shown(r.lateness_p50_ms, ".2f"),
            shown(r.lateness_p99_ms, ".2f") + ("+" if r.lateness_p99_beyond_buckets else ""),
            r.lateness_worst_bucket or "-",
        ]
        if opts.receiver:
            rx = r.receiver or {}
            row += [
                shown(rx.get("late_p99_ms"), ".2f"),
                shown(rx.get("jitter_p99_ms"), ".2f"),
                shown(rx.get("burst_p50_ms"), ".2f"),
            ]
        row += [
            "-" if r.server_loop_cpu is None else f"{r.server_loop_cpu:.0%}",
            "-" if r.server_cpu is None else f"{r.server_cpu:.0%}",
            "-" if r.other_cpu is None else f"{r.other_cpu:.0%}",
            r.send_path or "-",
            "ok" if r.passed else "FAIL",
        ]
        rows.append(row)
    out = table(head, rows)
    for r in steps:
        if r.problems:
            out.append(f"{r.streams} streams: {'; '.join(r.problems)}")
    out.append(
        "tick p50/p99: lateness of the server's shared 20 ms tick (one observation per tick) from "
        "frontdesk_rtp_pacing_lateness_seconds deltas over the window, interpolated linearly inside the "
        "histogram buckets (0.5/1/2/5/10/20/50/100 ms); '+' = p99 beyond the last bucket."
    )
    out.append(
        "CPU: share of one core over the window; loop = the server's event-loop thread, server = all its threads "
        "(with the batch sender, its rtp-send thread makes the sendto calls); others' = what the rest of the "
        "machine used meanwhile (busy time of every core less the server, SIPp and this benchmark); send: how "
        "the server sent RTP (batched: its rtp-send thread ran; sendto: one socket.sendto per packet)."
    )
    if opts.receiver:
        out.append(
            "rx: every packet read back with its kernel timestamp; late = arrival minus the stream's own best "
            "fit to its 20 ms grid, jitter = each stream's peak RFC 3550 jitter, "
            "send/tick = p50 first-to-last packet of a tick."
        )
    met = summary["max_streams_passed"]
    out.append(
        f"highest step passing (tick and rx late p99 <= {opts.goal_ms:g} ms, >= {opts.min_rate_share:.0%} of 50 "
        f"pkt/s per stream): {met or 'none'}  (goal >= {GOAL_STREAMS}: {'MET' if summary['met'] else 'NOT MET'})"
    )
    return "\n".join(out)


# --------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="frontdesk bench-media",
        description="RTP pacing with N concurrent IVR calls on one server process (one core): "
        "tick lateness p50/p99, packets sent per stream, and the receive side, SIPp as the callers.",
    )
    p.add_argument("--quick", action="store_true", help="short smoke run for CI (< 60 s): 100 streams, 10 s window")
    p.add_argument("--streams", help="comma list of concurrent calls per step (default 250,500,1000,1500; quick 100)")
    p.add_argument("--ramp-rate", type=int, help="calls/s while ramping up (default 100)")
    p.add_argument("--window", type=float, help="seconds measured at steady state (default 20; quick 10)")
    p.add_argument("--settle", type=float, help="seconds between the last call up and the window (default 5; quick 2)")
    p.add_argument("--goal-ms", type=float, default=GOAL_P99_MS, help="tick lateness p99 a step must hold (5)")
    p.add_argument("--min-rate-share", type=float, default=MIN_RATE_SHARE, help="of 50 x N packets/s (0.95)")
    p.add_argument("--no-receiver", action="store_true", help="do not read the RTP back (server-side figures only)")
    p.add_argument("--keep-going", action="store_true", help="run every step even after one fails")
    p.add_argument("--profile", metavar="DIR", help="py-spy the server during each window; raw stacks into DIR")
    sipp_bench_options(p, f"exit 1 when no step of >= {GOAL_STREAMS} streams passes")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(cli_args(argv))
    quick = args.quick
    try:
        streams = [int(x) for x in args.streams.split(",") if x.strip()] if args.streams else None
    except ValueError:
        return refuse("bench-media", "--streams takes a comma list of integers")
    opts = MediaBenchOptions(
        sipp=args.sipp,
        streams=streams or ([100] if quick else list(DEFAULT_STREAMS)),
        ramp_rate=args.ramp_rate or 100,
        window=args.window or (10.0 if quick else 20.0),
        settle=args.settle if args.settle is not None else (2.0 if quick else 5.0),
        goal_ms=args.goal_ms,
        min_rate_share=args.min_rate_share,
        receiver=not args.no_receiver,
        keep_going=args.keep_going,
        profile=args.profile,
    )
    if not opts.streams or min(opts.streams) < 1 or opts.ramp_rate < 1 or opts.window <= 0 or opts.settle < 0:
        return refuse("bench-media", "need streams >= 1, --ramp-rate >= 1, --window > 0, --settle >= 0")
    if max(opts.streams) > (65534 - RTP_PORT_MIN) // 2 - 100:
        return refuse("bench-media", f"at most {(65534 - RTP_PORT_MIN) // 2 - 100} streams (RTP ports)")
    if not executable(opts.sipp):
        return refuse("bench-media", f"SIPp not found at {opts.sipp} (Debian package sip-tester)")
    longest = max(opts.streams) / opts.ramp_rate + opts.settle + opts.window + 5
    if longest > DEMO_CALL_SECONDS - 10:
        log(f"warning: ramp + settle + window of the largest step is {longest:.0f} s, close to the "
            f"~{DEMO_CALL_SECONDS:.0f} s a demo call lasts; raise --ramp-rate or shorten --window")  # fmt: skip

    run = BenchRun("frontdesk bench-media")
    steps: list[StepResult] = []
    with work_directory("mediabench-", args.keep) as workdir, sigterm_unwinds():
        cache = workdir / "prompts"
        t = time.monotonic()
        render_prompts({"media": {"prompt_cache": str(cache)}})  # the demo flow's and the built-ins
        log(f"prompts rendered into {cache} in {time.monotonic() - t:.1f} s")
        log(f"stepping concurrent calls {opts.streams}: ramp {opts.ramp_rate}/s, settle {opts.settle:g} s, "
            f"window {opts.window:g} s")  # fmt: skip
        for n in opts.streams:
            step = MediaStep(opts, n, workdir, cache)
            try:
                res = step.run()
            except (OSError, RuntimeError) as exc:
                res = step.result
                res.problems.append(f"{type(exc).__name__}: {exc}")
            finally:
                step.stop()
            steps.append(res)
            log(f"  {n:>5} streams: {_brief(res)}")
            if not res.passed and not opts.keep_going:
                break

    passed = [r.streams for r in steps if r.passed]
    best = max(passed) if passed else None
    summary: dict[str, Any] = {
        "max_streams_passed": best,
        "goal_streams": GOAL_STREAMS,
        "goal_p99_ms": opts.goal_ms,
        "met": best is not None and best >= GOAL_STREAMS,
        "stopped_at": next((r.streams for r in steps if not r.passed), None),
    }
    print()
    print(render(steps, opts, summary))
    report = run.report(
        options=asdict(opts) | {"quick": quick},
        scenario="SIPp sim/scenarios/media_uac.xml (INVITE with PCMU/PCMA/101 SDP, ACK, hold) over UDP on "
        "127.0.0.1; server: demo IVR flow, one process, media timeout off",
        method={
            "tick_lateness": "delta of frontdesk_rtp_pacing_lateness_seconds between two /metrics scrapes; "
            "one observation per shared 20 ms tick; quantiles interpolated linearly within buckets",
            "packets_out": "delta of frontdesk_rtp_packets_total{direction='out'} / window",
            "cpu": "utime+stime from /proc over the window, share of one core (loop = the server's main thread)",
            "receiver": "all calls' SDP name one UDP port read by this benchmark with SO_TIMESTAMPNS",
        },
        machine=run.machine(frontdesk_event_loop=event_loop_name(), sipp=sipp_version(opts.sipp)),
        steps=[asdict(r) for r in steps],
        **summary,
    )
    return run.finish(report, json_path=args.json, check=args.check, met=summary["met"])


def _brief(r: StepResult) -> str:
    text = (
        f"p50 {shown(r.lateness_p50_ms, '.2f')} / p99 {shown(r.lateness_p99_ms, '.2f')} ms, "
        f"{shown(r.packets_per_stream_per_s, '.2f')} pkt/s per stream, loop CPU {shown(r.server_loop_cpu, '.0%')}"
    )
    if r.receiver:
        text += f", rx late p99 {shown(r.receiver.get('late_p99_ms'), '.2f')} ms"
    return text + (" ok" if r.passed else f" FAIL ({'; '.join(r.problems)})")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
