"""A private, throwaway PostgreSQL 15 server on 127.0.0.1 (Debian's ``postgresql`` package).

:class:`LocalPostgres` runs ``initdb`` and ``pg_ctl`` from
``/usr/lib/postgresql/15/bin`` (or ``$FRONTDESK_PG_BIN``) in a directory of
its own, listening on 127.0.0.1 only with ``fsync=off`` (speed; the data is
thrown away). As root, the server runs as the ``postgres`` system user
(``runuser``), since PostgreSQL refuses to run as root. ``frontdesk cluster``
(sim/live/cluster.py) keeps its nodes' shared database here, and the test
suite its databases (tests/support/pg.py).
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

PG_BIN = Path(os.environ.get("FRONTDESK_PG_BIN", "/usr/lib/postgresql/15/bin"))
MISSING = (
    f"PostgreSQL 15 is not installed ({PG_BIN}/initdb not found): "
    "`make test` installs it (Debian package postgresql), or run `apt-get install -y postgresql`"
)


class LocalPostgres:
    """One throwaway PostgreSQL server; :meth:`create_database` gives a fresh database's async URL.

    ``ports`` gives the port to try (called again when another program took
    it first, up to five times); ``release`` is told each port given up.
    The data and the log live in a new temporary directory (the ``postgres``
    user must reach it, which a directory under another user's 0700 one does
    not allow); :meth:`stop` removes it, after copying the log to ``keep_log``
    when given (while the server runs, ``keep_log`` is a link to the log).
    """

    def __init__(
        self,
        ports: Callable[[], int],
        *,
        release: Callable[[int], None] = lambda port: None,
        keep_log: Path | None = None,
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="frontdesk-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self._ports = ports
        self._release = release
        self._keep_log = keep_log
        self._as_postgres = os.geteuid() == 0
        self._names = itertools.count(1)
        self.started = False

    def _run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        return proc

    @property
    def pid(self) -> int | None:
        """The postmaster's process id (first line of its pid file), while it runs."""
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def start(self, attempts: int = 5) -> None:
        if not (PG_BIN / "initdb").exists():
            raise FileNotFoundError(MISSING)
        if self._as_postgres:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise FileNotFoundError(f"no 'postgres' system user: {MISSING}") from None
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        if self._keep_log is not None:
            self._keep_log.unlink(missing_ok=True)
            self._keep_log.symlink_to(self.log)
        self._run(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        for _ in range(attempts):
            self.port = self._ports()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} "
                "-c fsync=off -c full_page_writes=off -c max_connections=200"
            )
            proc = self._run(
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                "60",
                "-o",
                options,
                "start",
                check=False,
            )
            if proc.returncode == 0:
                self.started = True
                return
            self._release(self.port)
            if "Address already in use" not in self.log.read_text(errors="replace"):
                break
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
        self.port = 0
        raise RuntimeError(f"PostgreSQL did not start:\n{proc.stdout}{proc.stderr}\n{log[-2000:]}")

    def psql(self, sql: str, database: str = "postgres") -> str:
        proc = self._run(
            str(PG_BIN / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-c",
            sql,
        )
        return proc.stdout

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "test") -> str:
        """A new empty database; returns its ``postgresql+asyncpg://`` URL."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        if self.started:
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
            self.started = False
        if self.port:
            self._release(self.port)
            self.port = 0
        if self._keep_log is not None and self._keep_log.is_symlink():
            self._keep_log.unlink()
            if self.log.exists():
                shutil.copyfile(self.log, self._keep_log)
        shutil.rmtree(self.root, ignore_errors=True)
