"""The suite's fixtures; what they are built from is in tests/support/ (servers, ports, SIPp, PostgreSQL).

Test modules import helpers from ``support`` (this folder is on ``sys.path``
through pytest's rootdir-relative imports) and never from this file or from
one another.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.pg import PgCluster
from support.redis import RedisServer
from support.server import Server, start_server


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers (defaults + overrides, see ``start_server``); every one is stopped after the test."""
    started: list[Server] = []

    def make(overrides: dict[str, object] | None = None) -> Server:
        s = start_server(tmp_path, overrides)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def server(server_factory: Callable[..., Server]) -> Server:
    return server_factory()


@pytest.fixture(scope="session")
def sipp() -> str:
    path = shutil.which("sipp")
    if path is None:
        pytest.fail("sipp not installed: `make test` installs Debian's sip-tester")
    return path


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A private PostgreSQL 15 for the session; the tests that need it fail (not skip) when it is missing."""
    cluster = PgCluster()
    missing = None
    try:
        cluster.start()
    except FileNotFoundError as exc:
        missing = str(exc)
    except BaseException:
        cluster.stop()
        raise
    if missing is not None:
        cluster.stop()
        pytest.fail(missing, pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """The URL of a fresh, empty PostgreSQL database for this test."""
    return pg_cluster.create_database()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private, empty redis-server for this test (tests/support/redis.py); fails (not skips) when it is missing."""
    server = RedisServer()
    try:
        server.start()
    except FileNotFoundError as exc:
        server.stop()
        pytest.fail(str(exc), pytrace=False)
    except BaseException:
        server.stop()
        raise
    try:
        yield server
    finally:
        server.stop()
