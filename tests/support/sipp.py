"""Helpers for the SIPp integration tests: run SIPp, read its results, and talk raw SIP over UDP
for the cases SIPp is clumsy at.

SIPp runs bounded (``-m`` calls, ``-timeout`` with ``-timeout_error``), headless
(``-nostdin``), bound to 127.0.0.1 on ports from tests/support/ports.py: its
SIP port, and its media ports (``-mp``: SIPp binds that port and the one two
above, and names ``-mp + 4 (n - 1)`` in call n's SDP, where its pcaps play
from), a private block per run so that concurrent runs stay apart. Its statistics
(``-trace_stat``), screen (``-trace_screen``) and unexpected messages
(``-trace_err``) written into a per-run directory. SIPp exits 0 only when every
call succeeded; :meth:`SippRun.report` gathers what is needed to see why not.
"""

from __future__ import annotations

import csv
import socket
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from support.ports import free_port, port_range, release
from support.server import Server

SIPP_DIR = Path(__file__).resolve().parents[1] / "sipp"


@dataclass
class SippRun:
    returncode: int
    stats: dict[str, str]
    workdir: Path
    command: list[str]
    output: str

    def count(self, column: str) -> int:
        """A cumulative counter from the final statistics row, e.g. ``SuccessfulCall``."""
        value = self.stats.get(f"{column}(C)", "")
        return int(value) if value.strip().isdigit() else -1

    @property
    def successful(self) -> int:
        return self.count("SuccessfulCall")

    @property
    def failed(self) -> int:
        return self.count("FailedCall")

    def report(self) -> str:
        """Command, exit code, non-zero counters, the error log and the last screen."""
        parts = [f"$ {' '.join(self.command)}", f"exit code {self.returncode}"]
        nonzero = {k: v for k, v in self.stats.items() if k.endswith("(C)") and v.strip() not in ("", "0")}
        parts.append(f"counters: {nonzero}")
        for name in ("errors.log", "screen.log"):
            path = self.workdir / name
            if path.exists():
                text = path.read_text(errors="replace")
                parts.append(f"--- {name} (last 4000 chars) ---\n{text[-4000:]}")
        if self.output.strip():
            parts.append(f"--- output (last 2000 chars) ---\n{self.output[-2000:]}")
        return "\n".join(parts)


def run_sipp(
    sipp: str,
    target: str,
    workdir: Path,
    *,
    scenario: str | None = None,
    sn: str | None = None,
    calls: int = 1,
    rate: float = 10,
    transport: str = "u1",
    timeout: float = 20,
    lost: int | None = None,
    extra: list[str] | None = None,
) -> SippRun:
    """Run SIPp as a UAC against ``target`` until ``calls`` calls are done or ``timeout`` s pass.

    ``scenario`` is a file name under tests/sipp/, ``sn`` an embedded scenario name.
    Unless ``extra`` names ``-mp``, SIPp gets a media block of its own for ``calls`` calls.
    """
    assert (scenario is None) != (sn is None), "give exactly one of scenario / sn"
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sipp, target]
    if scenario is not None:
        path = SIPP_DIR / scenario
        assert path.exists(), path
        cmd += ["-sf", str(path)]
    else:
        cmd += ["-sn", str(sn)]
    sip_port = free_port()
    media = None if "-mp" in (extra or []) else port_range(4 * calls + 4)
    if media is not None:
        cmd += ["-mp", str(media.start)]
    cmd += [
        "-t", transport,
        "-i", "127.0.0.1",
        "-bind_local",
        "-p", str(sip_port),
        "-m", str(calls),
        "-r", str(rate),
        "-timeout", f"{timeout}s",
        "-timeout_error",
        "-nostdin",
        "-trace_stat", "-stf", "stats.csv",
        "-trace_screen", "-screen_file", "screen.log",
        "-trace_err", "-error_file", "errors.log",
    ]  # fmt: skip
    if lost is not None:
        cmd += ["-lost", str(lost)]
    cmd += extra or []
    try:
        proc = subprocess.run(
            cmd, cwd=workdir, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout + 15, check=False
        )
    except subprocess.TimeoutExpired as exc:  # subprocess.run has killed it
        out = (exc.stdout or b"").decode(errors="replace")
        return SippRun(-9, _read_stats(workdir / "stats.csv"), workdir, cmd, f"SIPp did not exit in time\n{out}")
    finally:
        release(sip_port)
        if media is not None:
            release(media)
    output = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    return SippRun(proc.returncode, _read_stats(workdir / "stats.csv"), workdir, cmd, output)


def _read_stats(path: Path) -> dict[str, str]:
    """The last row of SIPp's ``-trace_stat`` file (cumulative counters are the ``(C)`` columns)."""
    if not path.exists():
        return {}
    with path.open(newline="", errors="replace") as f:
        rows = [r for r in csv.reader(f, delimiter=";") if r]
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


# -- the callers of the demo flow and of the queues ------------------------------------------


def dial(sipp: str, server: Server, workdir: Path, scenario: str, callers: list[str], timeout: float) -> SippRun:
    """One SIPp run of ``scenario``: one call per caller number, all at once."""
    workdir.mkdir(parents=True, exist_ok=True)
    csv = workdir / "callers.csv"
    csv.write_text("SEQUENTIAL\n" + "".join(f"{c};\n" for c in callers))
    return run_sipp(
        sipp,
        server.sip_target,
        workdir,
        scenario=scenario,
        calls=len(callers),
        rate=20,
        timeout=timeout,
        extra=["-inf", str(csv)],
    )


def run_callers(
    sipp: str,
    server: Server,
    workdir: Path,
    rows: Sequence[tuple[str, int, int | None]],
    *,
    scenario: str = "queue_caller.xml",
    rate: float = 10,
    timeout: float = 40,
    extra: Sequence[str] = (),
) -> SippRun:
    """One SIPp run of queue callers, one call per row (number, RTP port, ms to stay after pressing 1), in order.

    ``extra`` goes on SIPp's command line last (``["-i", "127.0.0.2"]``: call from another loopback address).

    The RTP port is a socket of the test's own (tests/support/callers.py), named in the caller's SDP.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    csv = workdir / "callers.csv"
    csv.write_text("SEQUENTIAL\n" + "".join(f"{n};{port};{'' if ms is None else ms};\n" for n, port, ms in rows))
    return run_sipp(
        sipp,
        server.sip_target,
        workdir,
        scenario=scenario,
        calls=len(rows),
        rate=rate,
        timeout=timeout,
        # -l: SIPp would otherwise hold back new calls once 3 x rate x 2.8 s are open
        extra=["-inf", str(csv), "-l", str(len(rows) + 1), *extra],
    )


# -- raw SIP over UDP ---------------------------------------------------------------


@dataclass
class SipReply:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes

    def get(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]


_COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "l": "content-length", "m": "contact"}


def parse_reply(data: bytes) -> SipReply:
    """A deliberately small, independent parser for the server's responses."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "replace").split("\r\n")
    version, status, reason = [*lines[0].split(" ", 2), "", ""][:3]
    assert version == "SIP/2.0", f"not a SIP response: {data[:200]!r}"
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        headers.append((_COMPACT.get(key, key), value.strip()))
    return SipReply(int(status), reason, headers, body, data)


def new_token() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class UdpSipClient:
    """A UDP socket on 127.0.0.1 that sends hand-made requests to the server."""

    server_port: int
    sock: socket.socket = field(init=False)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", free_port()))

    @property
    def local_port(self) -> int:
        return int(self.sock.getsockname()[1])

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> UdpSipClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build(
        self,
        method: str,
        *,
        cseq: str | None = None,
        call_id: str | None = None,
        branch: str | None = None,
        from_tag: str | None = None,
        to: str | None = None,
        body: bytes = b"",
        extra: tuple[str, ...] = (),
    ) -> bytes:
        lp, sp = self.local_port, self.server_port
        lines = [
            f"{method} sip:service@127.0.0.1:{sp} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{lp};branch={branch or 'z9hG4bK' + new_token()};rport",
            "Max-Forwards: 70",
            f"From: <sip:tester@127.0.0.1:{lp}>;tag={from_tag or new_token()}",
            f"To: {to or f'<sip:service@127.0.0.1:{sp}>'}",
            f"Call-ID: {call_id or new_token() + '@127.0.0.1'}",
            f"CSeq: {cseq or '1 ' + method}",
            f"Contact: <sip:tester@127.0.0.1:{lp}>",
            *extra,
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines += [f"Content-Length: {len(body)}", "", ""]
        return "\r\n".join(lines).encode() + body

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, ("127.0.0.1", self.server_port))

    def recv(self, timeout: float) -> SipReply | None:
        self.sock.settimeout(timeout)
        try:
            data, _ = self.sock.recvfrom(65535)
        except TimeoutError:
            return None
        return parse_reply(data)

    def final_reply(self, timeout: float = 2.0) -> SipReply:
        """The first non-1xx response; fails the test when none arrives within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            reply = self.recv(max(left, 0.001)) if left > 0 else None
            if reply is None:
                raise AssertionError(f"no final response within {timeout} s")
            if reply.status >= 200:
                return reply

    def replies_within(self, seconds: float) -> list[SipReply]:
        """Everything that arrives in the next ``seconds``."""
        out = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            reply = self.recv(left)
            if reply is None:
                break
            out.append(reply)
        return out


def sdp_offer(payloads: str, rtpmaps: tuple[str, ...], port: int = 40000) -> bytes:
    lines = [
        "v=0",
        "o=tester 1 1 IN IP4 127.0.0.1",
        "s=-",
        "c=IN IP4 127.0.0.1",
        "t=0 0",
        f"m=audio {port} RTP/AVP {payloads}",
        *(f"a=rtpmap:{m}" for m in rtpmaps),
        "",
    ]
    return "\r\n".join(lines).encode()
