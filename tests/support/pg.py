"""A private PostgreSQL 15 cluster for the test session (Debian's ``postgresql`` package).

:class:`PgCluster` is sim/live/postgres.py's throwaway server (``initdb`` and
``pg_ctl`` in a temporary directory, 127.0.0.1 only, ``fsync=off``, run as the
``postgres`` user when the tests run as root) on a port from
tests/support/ports.py. Each test gets a database of its own.

When PostgreSQL is missing the tests that need it *fail* (not skip): a
database backend the suite claims to cover must not go quietly untested.
The fixtures ``pg_cluster`` (one per session) and ``pg_url`` (a fresh
database per test) are in tests/conftest.py.
"""

from __future__ import annotations

from sim.live.postgres import MISSING, PG_BIN, LocalPostgres
from support.ports import free_port, release

__all__ = ["MISSING", "PG_BIN", "PgCluster"]


class PgCluster(LocalPostgres):
    """One throwaway PostgreSQL server on the session's test ports."""

    def __init__(self) -> None:
        super().__init__(free_port, release=release)
