"""The processes the SIP and media benchmarks drive: SIPp's own UAS, Kamailio and ``frontdesk serve``, on 127.0.0.1.

Each target starts on free ports with a throw-away work directory (and, for
frontdesk, a throw-away config and database) and is stopped for good by
``stop()``: the benchmarks restart a target after an overload so that one
dirty run does not leak into the next.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, Protocol

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((HOST, 0))
            port = int(t.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((HOST, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def udp_port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        try:
            u.bind((HOST, port))
        except OSError:
            return True
    return False


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 5.0, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` (terminate), then kill: the process is gone when this returns."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def process_cpu_seconds(pid: int | None, *, group: bool = False) -> float | None:
    """User + system CPU seconds of ``pid`` (all its threads), or with ``group`` of every live process in its group."""
    if pid is None:
        return None
    paths = [Path(f"/proc/{pid}/stat")] if not group else list(Path("/proc").glob("[0-9]*/stat"))
    total, found = 0, False
    for path in paths:
        try:
            text = path.read_text()
        except OSError:
            continue  # gone meanwhile
        fields = text[text.rindex(")") + 2 :].split()  # state ppid pgrp ... utime(11) stime(12)
        if group and int(fields[2]) != pid:
            continue
        total += int(fields[11]) + int(fields[12])
        found = True
    return total / os.sysconf("SC_CLK_TCK") if found else None


class Target(Protocol):
    name: str
    port: int

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def alive(self) -> bool: ...

    def cpu_seconds(self) -> float | None:
        """CPU time the target has used so far (all its processes and threads)."""
        ...

    @property
    def pid(self) -> int | None: ...


class _LocalUdpServer:
    """A reference server started here on a free UDP port of 127.0.0.1, its output in ``log_path``.

    ``start()`` tries three ports (another process may take a free port first)
    and returns once the port is bound and ``SETTLE_SECONDS`` have passed.
    """

    name: str
    SETTLE_SECONDS = 0.2
    workdir: Path

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def log_path(self) -> Path:
        return self.workdir / "stderr.log"

    def _spawn(self, port: int, log: IO[bytes]) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def start(self) -> None:
        for _attempt in range(3):
            self.port = free_port()
            with self.log_path.open("ab") as log:
                self.proc = self._spawn(self.port, log)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                if udp_port_taken(self.port):
                    time.sleep(self.SETTLE_SECONDS)
                    return
                time.sleep(0.05)
            self.stop()  # lost a race for the port, or did not come up
        raise RuntimeError(f"{self.name} did not start; see {self.log_path}")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class SippUas(_LocalUdpServer):
    """SIPp's built-in UAS (``-sn uas``): the reference answering machine."""

    name = "sipp-uas"
    SETTLE_SECONDS = 0.2  # bound; give it a moment to enter its loop

    def __init__(self, sipp: str, workdir: Path) -> None:
        super().__init__(workdir / "sipp-uas")
        self.sipp = sipp

    def _spawn(self, port: int, log: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [self.sipp, "-sn", "uas", "-i", HOST, "-p", str(port), "-nostdin"],
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )

    def cpu_seconds(self) -> float | None:
        return process_cpu_seconds(self.pid)


KAMAILIO_CONFIG = Path(__file__).resolve().parent / "kamailio" / "stateful.cfg"
# Every answered call keeps two transactions in shared memory for the wait timer; the default 64 MB runs out
# near 1,200 calls/s ("could not allocate shared memory", then 500s), far below what the workers can do.
SHARED_MEMORY_MB = 512


def find_kamailio() -> str | None:
    """The Kamailio binary (Debian package ``kamailio``; it lives in /usr/sbin, often off a user's PATH)."""
    return shutil.which("kamailio") or next(
        (p for p in ("/usr/sbin/kamailio", "/usr/local/sbin/kamailio") if os.access(p, os.X_OK)), None
    )


class Kamailio(_LocalUdpServer):
    """Kamailio answering every call statefully (``tm``): the reference SIP server, ``children`` UDP workers.

    It runs in the foreground (``-DD``) with its log on stderr (``-E``) and its
    runtime files (``-Y``) in its own directory under the benchmark's work
    directory, so it needs neither root nor /run; ``stop()`` ends it and its
    worker processes.
    """

    SETTLE_SECONDS = 0.3  # the workers are forked after the bind: let them start

    def __init__(self, binary: str, workdir: Path, children: int = 1) -> None:
        self.name = f"kamailio-{children}"
        super().__init__(workdir / self.name)
        self.binary = binary
        self.children = children

    def command(self, port: int) -> list[str]:
        return [
            self.binary,
            "-f", str(KAMAILIO_CONFIG),
            "-DD", "-E",
            "-m", str(SHARED_MEMORY_MB),
            "-Y", str(self.workdir),
            "-P", str(self.workdir / "kamailio.pid"),
            "-A", f"LISTEN=udp:{HOST}:{port}",
            "-A", f"CHILDREN={self.children}",
        ]  # fmt: skip

    def _spawn(self, port: int, log: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.command(port),
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its workers are in its process group: stop() ends them all
        )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        stop_process(proc)
        # the main process takes its workers down on SIGTERM; make sure of it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def cpu_seconds(self) -> float | None:
        return process_cpu_seconds(self.pid, group=True)  # the main process and its workers


def merge_config(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` laid over it, section by section (nested mappings merged)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = value
    return out


def raise_nofile(wanted: int) -> Callable[[], None]:
    """A ``preexec_fn`` that lifts the child's soft open-files limit to ``wanted`` (capped at the hard limit)."""

    def preexec() -> None:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))

    return preexec


class Frontdesk:
    """``frontdesk serve`` in a subprocess with a throw-away config and database.

    ``config`` is laid over the benchmark's own settings (ports, database,
    log level, 127.0.0.1 trusted); ``nofile`` lifts the server's open-files
    soft limit; ``loop_lag`` runs it under ``tools/loop_lag.py``, which
    writes its event loop's lag and garbage collections to that file.
    """

    name = "frontdesk"

    def __init__(
        self,
        workdir: Path,
        hold_time: float = 3600.0,
        *,
        config: Mapping[str, Any] | None = None,
        nofile: int | None = None,
        loop_lag: Path | None = None,
    ) -> None:
        self.workdir = workdir / "frontdesk"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.hold_time = hold_time
        self.extra_config = dict(config or {})
        self.nofile = nofile
        self.loop_lag = loop_lag
        self.port = 0
        self.http_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def http_get(self, path: str, timeout: float = 2.0) -> bytes:
        with urllib.request.urlopen(f"http://{HOST}:{self.http_port}{path}", timeout=timeout) as r:
            return bytes(r.read())

    def healthz(self) -> dict[str, Any]:
        return dict(json.loads(self.http_get("/healthz")))

    def start(self) -> None:
        self.starts += 1
        self.port, self.http_port = free_port(), free_port()
        db = self.workdir / f"bench-{self.starts}.db"
        config = {
            "sip": {"listen": HOST, "port": self.port, "hold_time": self.hold_time},
            "http": {"listen": HOST, "port": self.http_port},
            "storage": {"url": f"sqlite+aiosqlite:///{db}"},
            "log_level": "warning",
            # the load generator on 127.0.0.1 is a trunk: capacity is measured without the per-source flood limits
            "security": {"trusted_networks": [f"{HOST}/32"]},
        }
        config = merge_config(config, self.extra_config)
        cfg = self.workdir / "frontdesk.json"  # JSON is YAML
        cfg.write_text(json.dumps(config))
        out = self.log_path.open("ab")
        probe = ["tools.loop_lag", "--out", str(self.loop_lag), "--"] if self.loop_lag else ["ivr.cli"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *probe, "serve", "--config", str(cfg)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=raise_nofile(self.nofile) if self.nofile else None,
        )
        out.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"frontdesk exited with {self.proc.returncode}; see {self.log_path}")
            try:
                self.healthz()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"frontdesk did not come up in 30 s; see {self.log_path}")

    def stop(self) -> None:
        stop_process(self.proc, grace=10, sig=signal.SIGINT)  # at once: SIGTERM would drain its calls first
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float | None:
        return process_cpu_seconds(self.pid)


def loop_lag_report(path: Path) -> str:
    """The breakdown of a server run under tools/loop_lag.py (read with the tool itself: tools/ is the
    repository's, not the installed package's)."""
    probe = [sys.executable, "-m", "tools.loop_lag", "--report", str(path)]
    return subprocess.run(probe, cwd=ROOT, capture_output=True, text=True, timeout=60).stdout.rstrip()


def sipp_version(sipp: str) -> str:
    out = subprocess.run([sipp, "-v"], capture_output=True, text=True, timeout=10)
    return next((ln.strip() for ln in (out.stdout + out.stderr).splitlines() if "SIPp v" in ln), "unknown")


def kamailio_version(kamailio: str) -> str:
    out = subprocess.run([kamailio, "-v"], capture_output=True, text=True, timeout=10)
    return next((ln.strip() for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("version:")), "unknown")


def event_loop_name() -> str:
    """The event loop ``frontdesk serve`` runs on here: uvloop when installed."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"
