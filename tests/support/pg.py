"""A private PostgreSQL 15 cluster for the test session (Debian's ``postgresql`` package).

:class:`PgCluster` is sim/live/postgres.py's throwaway server (``initdb`` and
``pg_ctl`` in a temporary directory, 127.0.0.1 only, ``fsync=off``, run as the
``postgres`` user when the tests run as root) on a port from
tests/support/ports.py. Each test gets a database of its own.

An outage test takes a cluster of its own (not the session's) and stops and
starts it with :meth:`PgCluster.pause` and :meth:`PgCluster.resume`: the server
goes away as a crashed or stopped one does (connections refused, open ones
dropped) and comes back on the same port with its data.

When PostgreSQL is missing the tests that need it *fail* (not skip): a
database backend the suite claims to cover must not go quietly untested.
The fixtures ``pg_cluster`` (one per session) and ``pg_url`` (a fresh
database per test) are in tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator

from sim.live.postgres import MISSING, PG_BIN, LocalPostgres
from support.ports import free_port, release

__all__ = ["MISSING", "PG_BIN", "PgCluster"]


class PgCluster(LocalPostgres):
    """One throwaway PostgreSQL server on the session's test ports."""

    def __init__(self) -> None:
        super().__init__(free_port, release=release)

    def pause(self, mode: str = "immediate") -> None:
        """Stop the server and keep its data and port (``immediate``: as a crash, open connections dropped)."""
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def resume(self) -> None:
        """Start the paused server again on the same port, with its data."""
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} "
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start"
        )


def private_cluster() -> Iterator[PgCluster]:
    """A PostgreSQL of the caller's own, which it may pause and resume: made a fixture by each outage test module."""
    cluster = PgCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
