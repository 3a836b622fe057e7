"""SIP flood benchmark: legitimate calls through an INVITE flood from another address.

``frontdesk bench-flood [options]`` (or ``python -m sim.live.floodbench``)
starts ``frontdesk serve`` on 127.0.0.1 with its default ``security.flood``
settings and, in one run:

1. warms it up with a few calls and reads its resident memory (the
   baseline);
2. floods it with ``--flood-rate`` INVITEs/s from ``--flood-from``
   (127.0.0.2 by default) for ``--flood-seconds``: a raw UDP sender in a
   process of its own, cycling through pre-built INVITEs with distinct
   Call-IDs, branches and tags, paced against the clock; it reports what it
   actually sent (on a small machine it competes with the server and SIPp
   for the cores);
3. meanwhile SIPp places ``--call-rate`` calls/s from 127.0.0.1 (stock
   ``-sn uac -d 0``, INVITE to BYE) for the same time, tracing the INVITE ->
   200 response times;
4. reads the server's memory at the end of the flood and ``--after``
   seconds later, and the flood's fate from its metrics
   (``frontdesk_sip_flood_rejected_total`` by reason and action, the blocks
   imposed, the INVITEs that reached the parser).

Goals: no failed or uncompleted legitimate call, and memory ``--after``
seconds after the flood within 20% of the baseline. Every process started
here is stopped on the way out.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sim.benchkit import (
    BenchRun,
    cli_args,
    executable,
    log,
    refuse,
    shown,
    sigterm_unwinds,
    sipp_bench_options,
    verdict,
    work_directory,
)
from sim.live.promtext import parse_metrics, sample
from sim.live.sipprun import Run, run_uac
from sim.live.targets import Frontdesk, sipp_version

MEMORY_GOAL = 0.2  # RSS --after seconds after the flood, as a share above the baseline
VARIANTS = 2048  # distinct pre-built INVITEs the flooder cycles through


# --------------------------------------------------------------------------- the flooder


def flood_packets(source: str, source_port: int, target_port: int, n: int = VARIANTS) -> list[bytes]:
    """``n`` valid new INVITEs (no To tag, an SDP offer) differing in Call-ID, branch and From tag."""
    body = (
        f"v=0\r\no=- 1 1 IN IP4 {source}\r\ns=-\r\nc=IN IP4 {source}\r\nt=0 0\r\n"
        "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    ).encode()
    out = []
    for _ in range(n):
        token = uuid.uuid4().hex
        head = (
            f"INVITE sip:service@127.0.0.1:{target_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {source}:{source_port};branch=z9hG4bK{token[:16]};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:flood@{source}:{source_port}>;tag={token[16:24]}\r\n"
            f"To: <sip:service@127.0.0.1:{target_port}>\r\n"
            f"Call-ID: {token}@{source}\r\n"
            "CSeq: 1 INVITE\r\n"
            f"Contact: <sip:flood@{source}:{source_port}>\r\n"
            "Content-Type: application/sdp\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        out.append(head.encode() + body)
    return out


def flood(source: str, target_port: int, rate: int, seconds: float, sent: Any, errors: Any) -> None:
    """Send ``rate`` INVITEs/s from ``source`` to 127.0.0.1:``target_port`` for ``seconds``; counts into ``sent``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sock.setblocking(False)
    packets = flood_packets(source, sock.getsockname()[1], target_port)
    dest = ("127.0.0.1", target_port)
    n = failed = 0
    start = time.perf_counter()
    end = start + seconds
    try:
        while (now := time.perf_counter()) < end:
            due = int(rate * (now - start))
            burst = min(due - n, 2000)
            for _ in range(burst):
                try:
                    sock.sendto(packets[n % VARIANTS], dest)
                except OSError:  # our own send buffer full: the packet is not sent
                    failed += 1
                n += 1
            try:  # the server's answers (503s, 100s) are not read by anyone: drop them cheaply
                while sock.recv(65535):
                    pass
            except OSError:
                pass
            if burst < 2000:
                time.sleep(0.0005)
    finally:
        sock.close()
        sent.value = n - failed
        errors.value = failed


# --------------------------------------------------------------------------- one run


@dataclass
class FloodOptions:
    sipp: str
    flood_rate: int
    flood_seconds: float
    flood_from: str
    call_rate: int
    after: float


@dataclass
class FloodResult:
    flood_sent: int = 0
    flood_send_errors: int = 0
    flood_rate_achieved: float = 0.0
    calls: int = 0
    calls_successful: int = 0
    calls_failed: int = 0
    calls_not_completed: int = 0
    retransmissions: int = 0
    call_rate_achieved: float = 0.0
    p50_answer_ms: float | None = None
    p99_answer_ms: float | None = None
    rss_baseline_mb: float = 0.0
    rss_end_of_flood_mb: float = 0.0
    rss_after_mb: float = 0.0
    rss_after_share: float = 0.0
    server_cpu_s: float = 0.0
    udp_rcvbuf_drops: int = 0
    flood_rejected: dict[str, float] | None = None
    flood_blocks: float = 0.0
    invites_parsed: float = 0.0
    sipp_problems: list[str] | None = None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def udp_receive_buffer_drops() -> int:
    """The machine's count of UDP datagrams dropped for a full receive buffer (/proc/net/snmp RcvbufErrors)."""
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines() if ln.startswith("Udp:")]
    return int(dict(zip(lines[0], lines[1], strict=False)).get("RcvbufErrors", 0))


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def measure(opts: FloodOptions, server: Frontdesk, workdir: Path) -> FloodResult:
    res = FloodResult()
    warm = run_uac(opts.sipp, server, 10, 1.0, workdir, grace=3.0)
    log(f"warm-up: {warm.brief()}")
    time.sleep(1.0)
    assert server.pid is not None
    res.rss_baseline_mb = rss_mb(server.pid)
    ctx = multiprocessing.get_context("spawn")
    sent, errors = ctx.Value("q", 0), ctx.Value("q", 0)
    flooder = ctx.Process(
        target=flood, args=(opts.flood_from, server.port, opts.flood_rate, opts.flood_seconds, sent, errors)
    )
    log(f"flood: {opts.flood_rate}/s from {opts.flood_from} for {opts.flood_seconds:g} s; calls: {opts.call_rate}/s")
    cpu0, drops0 = cpu_seconds(server.pid), udp_receive_buffer_drops()
    flooder.start()
    try:
        time.sleep(0.3)  # the flood is on before the first call
        run: Run = run_uac(opts.sipp, server, opts.call_rate, opts.flood_seconds, workdir, rtt=True, grace=10.0)
        flooder.join(opts.flood_seconds + 30)
    finally:
        if flooder.is_alive():
            flooder.terminate()
            flooder.join(5)
    res.rss_end_of_flood_mb = rss_mb(server.pid)
    res.server_cpu_s = round(cpu_seconds(server.pid) - cpu0, 2)
    res.udp_rcvbuf_drops = udp_receive_buffer_drops() - drops0
    res.flood_sent, res.flood_send_errors = int(sent.value), int(errors.value)
    res.flood_rate_achieved = res.flood_sent / opts.flood_seconds
    res.calls, res.calls_successful, res.calls_failed = run.calls, run.successful, run.failed
    res.calls_not_completed = max(0, run.calls - run.successful - run.failed)
    res.retransmissions, res.call_rate_achieved = run.retransmissions, run.achieved
    res.p50_answer_ms, res.p99_answer_ms = run.p50_ms, run.p99_ms
    res.sipp_problems = run.problems
    samples = parse_metrics(server.http_get("/metrics", timeout=10).decode())
    res.flood_rejected = {
        f"{reason}/{action}": sample(samples, "frontdesk_sip_flood_rejected_total", reason=reason, action=action)
        for reason in ("blocked", "rate", "new_calls", "network", "overload")
        for action in ("drop", "reply")
    }
    res.flood_blocks = sample(samples, "frontdesk_sip_flood_blocks_total")
    res.invites_parsed = sample(samples, "frontdesk_sip_requests_received_total", method="INVITE")
    log(f"calls: {run.brief()}; flooder sent {res.flood_sent} ({res.flood_rate_achieved:.0f}/s)")
    log(f"waiting {opts.after:g} s for the memory to settle")
    time.sleep(opts.after)
    res.rss_after_mb = rss_mb(server.pid)
    res.rss_after_share = res.rss_after_mb / res.rss_baseline_mb - 1
    return res


def render(opts: FloodOptions, r: FloodResult) -> str:
    rejected = r.flood_rejected or {}
    lines = [
        f"flood: {r.flood_sent} INVITEs sent from {opts.flood_from} in {opts.flood_seconds:g} s "
        f"({r.flood_rate_achieved:.0f}/s of {opts.flood_rate}/s asked; {r.flood_send_errors} send errors)",
        "  at the server: "
        + ", ".join(f"{k} {v:.0f}" for k, v in rejected.items() if v)
        + f"; blocks {r.flood_blocks:.0f}; INVITEs parsed {r.invites_parsed:.0f} (legitimate ones included)",
        f"legitimate calls: {r.calls} at {opts.call_rate}/s from 127.0.0.1: {r.calls_successful} completed, "
        f"{r.calls_failed} failed, {r.calls_not_completed} not completed, {r.retransmissions} retransmissions "
        f"(goal 0 failed: {verdict(r.calls_failed == 0 and r.calls_not_completed == 0)})",
        f"  INVITE->200: p50 {shown(r.p50_answer_ms, '.0f')} ms, p99 {shown(r.p99_answer_ms, '.0f')} ms",
        f"server CPU while flooded: {r.server_cpu_s:.1f} s; UDP datagrams the kernel dropped for a full receive "
        f"buffer meanwhile (whole machine): {r.udp_rcvbuf_drops}",
        f"server RSS: baseline {r.rss_baseline_mb:.1f} MB, end of flood {r.rss_end_of_flood_mb:.1f} MB, "
        f"{opts.after:g} s later {r.rss_after_mb:.1f} MB ({r.rss_after_share:+.0%}; goal <= +{MEMORY_GOAL:.0%}: "
        f"{verdict(r.rss_after_share <= MEMORY_GOAL)})",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="frontdesk bench-flood",
        description="Legitimate SIPp calls from 127.0.0.1 through an INVITE flood from another loopback address.",
    )
    p.add_argument("--flood-rate", type=int, default=20000, help="INVITEs per second of the flood (default 20000)")
    p.add_argument("--flood-seconds", type=float, default=20.0, help="length of the flood and of the calls (20)")
    p.add_argument("--flood-from", default="127.0.0.2", help="the flood's source address, in 127.0.0.0/8")
    p.add_argument("--call-rate", type=int, default=50, help="legitimate calls per second (default 50)")
    p.add_argument("--after", type=float, default=60.0, help="seconds after the flood to read memory again (60)")
    sipp_bench_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(cli_args(argv))
    opts = FloodOptions(
        sipp=args.sipp,
        flood_rate=args.flood_rate,
        flood_seconds=args.flood_seconds,
        flood_from=args.flood_from,
        call_rate=args.call_rate,
        after=args.after,
    )
    if not opts.flood_from.startswith("127.") or opts.flood_from == "127.0.0.1":
        return refuse("bench-flood", "--flood-from must be a loopback address other than 127.0.0.1")
    if not (1 <= opts.flood_rate <= 200000 and 0 < opts.flood_seconds <= 120 and 1 <= opts.call_rate <= 1000):
        return refuse("bench-flood", "need --flood-rate 1..200000, 0 < --flood-seconds <= 120, --call-rate 1..1000")
    if not 0 <= opts.after <= 600:
        return refuse("bench-flood", "need 0 <= --after <= 600")
    if not executable(opts.sipp):
        return refuse("bench-flood", f"SIPp not found at {opts.sipp} (Debian package sip-tester)")

    run = BenchRun("frontdesk bench-flood")
    with work_directory("floodbench-", args.keep) as workdir, sigterm_unwinds():
        # 127.0.0.1 untrusted like any caller: the legitimate calls meet the same limits as the flood
        server = Frontdesk(workdir, config={"security": {"trusted_networks": []}})
        server.start()
        try:
            res = measure(opts, server, workdir)
        finally:
            server.stop()
    calls_met = res.calls_failed == 0 and res.calls_not_completed == 0 and res.calls_successful == res.calls
    memory_met = res.rss_after_share <= MEMORY_GOAL
    print()
    print(render(opts, res))
    report = run.report(
        options=asdict(opts),
        scenario=f"flood of new INVITEs from {opts.flood_from}; sipp -sn uac -d 0 over UDP from 127.0.0.1; "
        "rtd = INVITE -> 200 OK, whole ms",
        machine=run.machine(sipp=sipp_version(opts.sipp)),
        result=asdict(res),
        calls_met=calls_met,
        memory_met=memory_met,
        met=calls_met and memory_met,
    )
    return run.finish(report, json_path=args.json, check=args.check, met=calls_met and memory_met)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
