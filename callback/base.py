"""The ground floor of the callback package: the tables' declarative ``Base``, the async engine and UTC time helpers.

A leaf: it imports nothing of the project, so the modules that define tables
(``callback/models.py``, ``callback/outbox.py``), the schema set-up that
registers them (``callback/db.py``) and ``ivr`` (which may import ``callback``)
all take these from here without an import cycle.

``callback`` sits below ``ivr`` (``ivr -> callback -> queueing``, see
``docs/architecture.md``), so its tables hang off this :class:`Base`, not
``ivr.storage.records.RecordsBase``; the two can share one engine and database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """The callback tables' metadata (``callbacks``, ``text_messages``); migrated by ``callback/migrations/``."""


def utcnow() -> datetime:
    """Now, as an aware UTC datetime: the default clock of the stores and dialers (tests pass their own)."""
    return datetime.now(UTC)


def utc(value: datetime) -> datetime:
    """A timestamp read back from the database, as an aware UTC datetime.

    SQLite hands ``DateTime(timezone=True)`` columns back naive (we always
    store UTC); PostgreSQL hands them back aware.
    """
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine for a ``sqlite+aiosqlite`` or ``postgresql+asyncpg`` URL (call records and callbacks alike)."""
    if url.startswith("sqlite"):
        # one writer at a time: wait for the lock instead of failing at once
        kwargs["connect_args"] = {"timeout": 30}
    return create_async_engine(url, **kwargs)


__all__ = ["Base", "create_engine", "utc", "utcnow"]
