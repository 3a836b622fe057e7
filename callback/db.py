"""The callback package's own SQLAlchemy base and schema set-up.

``callback`` sits below ``ivr`` (DESIGN.md: ivr -> callback -> queueing), so
its tables hang off this :class:`Base`, not ``ivr.records.Base``. The app
calls both ``create_all``s at start-up; they can share one engine/database.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


def utc(value: datetime) -> datetime:
    """A timestamp read back from the database, as an aware UTC datetime.

    SQLite hands ``DateTime(timezone=True)`` columns back naive (we always
    store UTC); PostgreSQL hands them back aware.
    """
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def init_schema(engine: AsyncEngine) -> None:
    """Create the callback tables that do not exist yet."""
    # importing the model modules registers their tables on Base.metadata
    from . import outbox  # noqa: F401

    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
