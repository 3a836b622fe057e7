"""A private PostgreSQL 15 cluster for the test session (Debian's ``postgresql`` package).

:class:`PgCluster` runs ``initdb`` and ``pg_ctl`` from
``/usr/lib/postgresql/15/bin`` in a temporary directory, listening on
127.0.0.1 on a port from tests/support/ports.py with ``fsync=off`` (speed; the data is thrown away).
As root, the server runs as the ``postgres`` system user (``runuser``), since
PostgreSQL refuses to run as root. Each test gets a database of its own.

When PostgreSQL is missing the tests that need it *fail* (not skip): a
database backend the suite claims to cover must not go quietly untested.
The fixtures ``pg_cluster`` (one per session) and ``pg_url`` (a fresh
database per test) are in tests/conftest.py.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from support.ports import free_port, release

PG_BIN = Path(os.environ.get("FRONTDESK_PG_BIN", "/usr/lib/postgresql/15/bin"))
MISSING = (
    f"PostgreSQL 15 is not installed ({PG_BIN}/initdb not found): "
    "`make test` installs it (Debian package postgresql), or run `apt-get install -y postgresql`"
)


class PgCluster:
    """One throwaway PostgreSQL server; :meth:`create_database` gives a fresh database's async URL."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="frontdesk-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
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

    def start(self) -> None:
        if not (PG_BIN / "initdb").exists():
            raise FileNotFoundError(MISSING)
        if self._as_postgres:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise FileNotFoundError(f"no 'postgres' system user: {MISSING}") from None
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
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
        for _ in range(5):
            self.port = free_port()
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
            if "Address already in use" not in self.log.read_text(errors="replace"):
                break
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
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
            release(self.port)
        shutil.rmtree(self.root, ignore_errors=True)
