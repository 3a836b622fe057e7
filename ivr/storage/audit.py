"""The admin audit log: who changed what, when (notices now, surge switches later).

An entry is written in the same transaction as the change it describes, so
the log never claims a change that did not happen, nor misses one that did.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from ivr.storage.records import RecordsBase


class AuditEntry(RecordsBase):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(255))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


def audit(session: AsyncSession, at: datetime, actor: str, action: str, target: str, detail: dict[str, Any]) -> None:
    """Add an entry to the caller's transaction."""
    session.add(AuditEntry(at=at, actor=actor, action=action, target=target, detail=detail))


def _utc(value: datetime) -> datetime:
    # SQLite gives DateTime(timezone=True) back naive; we always store UTC
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def read_audit(engine: AsyncEngine, limit: int = 100, before: int | None = None) -> list[dict[str, Any]]:
    """Newest entries first; ``before`` (an entry id) pages back."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if before is not None:
        query = query.where(AuditEntry.id < before)
    async with async_sessionmaker(engine)() as session:
        entries = (await session.scalars(query)).all()
    return [
        {
            "id": e.id,
            "at": _utc(e.at).isoformat(),
            "actor": e.actor,
            "action": e.action,
            "target": e.target,
            "detail": e.detail,
        }
        for e in entries
    ]
