"""What one RTP packet costs the event loop on each send path: ``socket.sendto`` per packet, or the batch sender.

``python tools/rtp_send_cost.py [--streams 2500] [--seconds 4] [--rounds 2]``
opens N streams of the real RTP shell (ivr/transport/rtp.py) on loopback,
all sending to one local socket that a thread reads back, lets the shared
20 ms tick run for a few seconds on each path in turn (``batch=False``, then
``batch=True``, ``--rounds`` times), and prints per path: the CPU time of
the event-loop thread per packet sent (what SIP competes with), the CPU time
of the batch sender's ``rtp-send`` thread per packet (the kernel's
``sendto``, now off the loop), the tick lateness p99 from the shell's own
histogram, and the ratio of the loop's cost per packet to the ``sendto``
path's in the same run. No SIP and no SIPp: the receiving thread is the only
other load. Needs ``make native`` (the batch sender) for the second path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ivr.transport import rtpbatch  # noqa: E402
from ivr.transport.rtp import LATENESS_BUCKETS, MediaShell  # noqa: E402

PORT_MIN = 40000  # the shell's ports for this run: 2 per stream from here


def thread_cpu(name: str) -> float:
    """CPU seconds of this process's thread called ``name`` (0 when there is none)."""
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            if (task / "comm").read_text().strip() != name:
                continue
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def p99_ms(counts: list[int]) -> float:
    total = sum(counts)
    seen = 0
    for bound, n in zip((*LATENESS_BUCKETS, float("inf")), counts, strict=True):
        seen += n
        if seen >= 0.99 * total:
            return bound * 1000
    return float("inf")


class Drain:
    """One loopback socket every stream sends to, read by a thread (as a phone or the media benchmark would)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.addr: tuple[str, int] = self.sock.getsockname()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        buf = bytearray(2048)
        while not self.stopping:
            try:
                self.sock.recv_into(buf)
            except TimeoutError:
                continue

    def close(self) -> None:
        self.stopping = True
        self.thread.join()
        self.sock.close()


async def measure(batch: bool, streams: int, seconds: float, drain: Drain) -> dict[str, float]:
    shell = MediaShell(
        "127.0.0.1",
        PORT_MIN,
        PORT_MIN + 2 * streams + 200,
        lambda s, e: None,
        lambda s: None,
        0.0,
        random.Random(1),
        batch=batch,
    )
    try:
        for _ in range(streams):
            shell.open(drain.addr, "PCMU", 0, 101)
        await asyncio.sleep(1.0)  # the thread started, the buffers grown
        out0, ticks0 = shell.totals()[1], shell.stats.ticks
        late0 = list(shell.stats.lateness_counts)
        loop0, send0, t0 = time.thread_time(), thread_cpu("rtp-send"), time.monotonic()
        await asyncio.sleep(seconds)
        loop1, send1, t1 = time.thread_time(), thread_cpu("rtp-send"), time.monotonic()
        packets = shell.totals()[1] - out0
        late = [b - a for a, b in zip(late0, shell.stats.lateness_counts, strict=True)]
        return {
            "packets_per_s": packets / (t1 - t0),
            "loop_us": (loop1 - loop0) / packets * 1e6,
            "send_us": (send1 - send0) / packets * 1e6,
            "loop_share": (loop1 - loop0) / (t1 - t0),
            "ticks": shell.stats.ticks - ticks0,
            "tick_p99_ms": p99_ms(late),
        }
    finally:
        shell.close_all()


async def run(args: argparse.Namespace) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.streams + 1024:  # a socket per stream
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.streams + 1024), hard))
    if rtpbatch.load()[0] is None:
        print(f"the batch sender is not built: {rtpbatch.status()}", file=sys.stderr)
        return 1
    drain = Drain()
    results: dict[str, list[dict[str, float]]] = {"sendto": [], "batched": []}
    try:
        for _ in range(args.rounds):
            for name in results:
                results[name].append(await measure(name == "batched", args.streams, args.seconds, drain))
    finally:
        drain.close()
    ref = sum(r["loop_us"] for r in results["sendto"]) / args.rounds
    print(f"{args.streams} streams, {args.seconds:g} s a measure, {args.rounds} rounds; per packet sent:")
    for name, rows in results.items():
        for r in rows:
            print(
                f"  {name:8} {r['packets_per_s']:9.0f} pkt/s  loop thread {r['loop_us']:5.2f} us "
                f"({r['loop_share']:4.0%} of a core)  rtp-send thread {r['send_us']:5.2f} us  "
                f"tick p99 <= {r['tick_p99_ms']:g} ms  loop vs sendto {r['loop_us'] / ref:4.2f}"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rtp_send_cost.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=2500, help="streams open at once (default 2500)")
    p.add_argument("--seconds", type=float, default=4.0, help="seconds measured per path and round (default 4)")
    p.add_argument("--rounds", type=int, default=2, help="times each path is measured, in turn (default 2)")
    args = p.parse_args(argv)
    if not 1 <= args.streams <= 10000 or args.seconds <= 0 or args.rounds < 1:
        p.error("need 1 <= --streams <= 10000, --seconds > 0, --rounds >= 1")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
