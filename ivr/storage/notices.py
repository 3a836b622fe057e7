"""Targeted notices (R6): which recorded notice each caller group hears before the menu.

"A rifle, not a shotgun": a notice names one caller group and one prompt.
The router asks :meth:`NoticeBoard.active_for` on every answered call, so
that is a dict lookup on a precomputed index (cached per group set), never
a database read.

Notices start from the config and are published/withdrawn at runtime through
the admin API. Every runtime change is written to the ``notices`` table (with
its audit entry, in one transaction) *before* the in-memory index changes, so
what callers hear is always durable and survives a restart: at load, a row in
``notices`` overrides the config entry of the same id (a withdrawn notice stays
withdrawn). A stored notice whose group or prompt has since left the config is
listed with its problem but never played.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, DateTime, String, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from callback.base import utc, utcnow
from ivr.settings.builtin_prompts import BUILTIN_PROMPTS
from ivr.settings.flows import IvrSettings
from ivr.storage.audit import audit
from ivr.storage.records import RecordsBase

log = logging.getLogger(__name__)

NOTICE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")  # the config's names (ivr/settings/values.py)
_CACHE_LIMIT = 4096  # distinct group sets remembered; callers fall into few


class NoticeRow(RecordsBase):
    __tablename__ = "notices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    group: Mapped[str] = mapped_column("caller_group", String(64))
    prompt: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # orders notices not in the config
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_by: Mapped[str] = mapped_column(String(64))


@dataclass(frozen=True, slots=True)
class Notice:
    id: str
    group: str
    prompt: str
    active: bool
    source: str = "config"  # "config": as configured; "admin": changed at runtime
    updated_at: datetime | None = None
    updated_by: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "group": self.group,
            "prompt": self.prompt,
            "active": self.active,
            "source": self.source,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "updated_by": self.updated_by,
        }


class NoticeError(ValueError):
    """A notice that cannot be published; the message is for the operator."""


class UnknownNotice(KeyError):
    pass


def _known(kind: str, value: str, known: Collection[str]) -> str | None:
    if value in known:
        return None
    names = sorted(known)
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    return f"unknown {kind} {value!r} (known: {shown or 'none configured'})"


class NoticeBoard:
    """The notices in force; one per process, shared by the router and the admin API.

    ``configured`` maps notice id -> (group, prompt, active); ``prompts`` and
    ``groups`` are the prompt ids and caller groups the config knows.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        configured: Mapping[str, tuple[str, str, bool]] | None = None,
        *,
        prompts: Collection[str],
        groups: Collection[str],
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.prompts = frozenset(prompts)
        self.groups = frozenset(groups)
        self.clock = clock
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._lock = asyncio.Lock()
        self._notices: dict[str, Notice] = {}
        self._problems: dict[str, str] = {}
        # play order: configured notices as written in the config, then the others as first published
        self._config_order = {notice_id: i for i, notice_id in enumerate(configured or {})}
        self._created: dict[str, datetime] = {}
        self._index: dict[str, tuple[Notice, ...]] = {}
        self._cache: dict[frozenset[str], tuple[tuple[Notice, ...], tuple[str, ...]]] = {}
        problems = []
        for notice_id, (group, prompt, active) in (configured or {}).items():
            problem = self.check(notice_id, group, prompt)
            if problem:
                problems.append(f"notice {notice_id!r}: {problem}")
            self._notices[notice_id] = Notice(notice_id, group, prompt, bool(active))
        if problems:
            raise NoticeError("; ".join(problems))
        self._rebuild()

    @classmethod
    def from_settings(
        cls, engine: AsyncEngine, settings: IvrSettings, clock: Callable[[], datetime] = utcnow
    ) -> NoticeBoard:
        """The board for the config's ``ivr:`` section (call :meth:`load` before use)."""
        return cls(
            engine,
            {nid: (n.group, n.prompt, n.active) for nid, n in settings.notices.items()},
            prompts=set(settings.prompts) | BUILTIN_PROMPTS,
            groups=settings.groups.keys(),
            clock=clock,
        )

    # -- per call -------------------------------------------------------------

    def active_for(self, groups: frozenset[str]) -> tuple[str, ...]:
        """Prompt ids to play, before the menu, to a caller in ``groups``: in play order, each prompt once.

        Play order: the configured notices in config order, then notices created
        at runtime in the order they were first published.
        """
        return self._lookup(groups)[1]

    def active_notices_for(self, groups: frozenset[str]) -> tuple[Notice, ...]:
        """The notices behind :meth:`active_for` (for the call record's ``notice:<id>`` notes)."""
        return self._lookup(groups)[0]

    def _lookup(self, groups: frozenset[str]) -> tuple[tuple[Notice, ...], tuple[str, ...]]:
        hit = self._cache.get(groups)
        if hit is not None:
            return hit
        picked = sorted({n.id: n for g in groups for n in self._index.get(g, ())}.values(), key=self._rank)
        prompts = tuple(dict.fromkeys(n.prompt for n in picked))
        result = (tuple(picked), prompts)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[groups] = result
        return result

    def _rank(self, notice: Notice) -> tuple[int, float, str]:
        position = self._config_order.get(notice.id)
        if position is not None:
            return (0, float(position), notice.id)
        created = self._created.get(notice.id)
        return (1, created.timestamp() if created else 0.0, notice.id)

    def _rebuild(self) -> None:
        index: dict[str, list[Notice]] = {}
        for notice in sorted(self._notices.values(), key=self._rank):
            if notice.active and notice.id not in self._problems:
                index.setdefault(notice.group, []).append(notice)
        # swap whole objects: a reader sees the old or the new index, never half of one
        self._index = {g: tuple(ns) for g, ns in index.items()}
        self._cache = {}

    # -- reading ----------------------------------------------------------------

    def check(self, notice_id: str, group: str, prompt: str) -> str | None:
        """Why this notice cannot be played, or None."""
        if not NOTICE_ID.fullmatch(notice_id):
            return f"bad notice id {notice_id!r}: use up to 64 letters, digits, '_', '.' or '-'"
        return _known("group", group, self.groups) or _known("prompt", prompt, self.prompts)

    def notices(self) -> list[Notice]:
        """All notices, active or not, in play order."""
        return sorted(self._notices.values(), key=self._rank)

    def get(self, notice_id: str) -> Notice | None:
        return self._notices.get(notice_id)

    def problem(self, notice_id: str) -> str | None:
        """Why a stored notice is not played although it may be active (config changed), or None."""
        return self._problems.get(notice_id)

    # -- changing ---------------------------------------------------------------

    async def load(self) -> None:
        """Create the tables if needed and apply the runtime changes stored there over the config."""
        async with self.engine.begin() as conn:
            tables = [RecordsBase.metadata.tables[name] for name in ("notices", "audit_log")]
            await conn.run_sync(RecordsBase.metadata.create_all, tables=tables)
        async with self._sessions() as session:
            rows = (await session.scalars(select(NoticeRow))).all()
        async with self._lock:
            for row in rows:
                self._created[row.id] = utc(row.created_at)
                self._notices[row.id] = Notice(
                    row.id, row.group, row.prompt, row.active, "admin", utc(row.updated_at), row.updated_by
                )
                problem = self.check(row.id, row.group, row.prompt)
                if problem:
                    self._problems[row.id] = problem
                    if row.active:
                        log.warning("stored notice %r is active but not played: %s", row.id, problem)
            self._rebuild()

    async def publish(
        self,
        notice_id: str,
        group: str | None = None,
        prompt: str | None = None,
        active: bool = True,
        actor: str = "admin",
    ) -> Notice:
        """Create or change a notice (``group``/``prompt`` default to the current ones). Durable when it returns."""
        async with self._lock:
            before = self._notices.get(notice_id)
            if group is None or prompt is None:
                if before is None:
                    raise NoticeError(f"notice {notice_id!r} is new: give both group and prompt")
                group = before.group if group is None else group
                prompt = before.prompt if prompt is None else prompt
            problem = self.check(notice_id, group, prompt)
            if problem:
                raise NoticeError(problem)
            after = Notice(notice_id, group, prompt, active, "admin", self.clock(), actor)
            await self._store(before, after, "notice.publish" if active else "notice.save")
            self._problems.pop(notice_id, None)
            self._notices[notice_id] = after
            self._rebuild()
            return after

    async def withdraw(self, notice_id: str, actor: str = "admin") -> Notice:
        """Stop playing a notice (kept, inactive, so it can be published again). Durable when it returns."""
        async with self._lock:
            before = self._notices.get(notice_id)
            if before is None:
                raise UnknownNotice(notice_id)
            after = replace(before, active=False, source="admin", updated_at=self.clock(), updated_by=actor)
            await self._store(before, after, "notice.withdraw")
            self._notices[notice_id] = after
            self._rebuild()
            return after

    async def _store(self, before: Notice | None, after: Notice, action: str) -> None:
        assert after.updated_at is not None and after.updated_by is not None
        created = self._created.get(after.id, after.updated_at)
        async with self._sessions() as session, session.begin():
            await session.merge(
                NoticeRow(
                    id=after.id,
                    group=after.group,
                    prompt=after.prompt,
                    active=after.active,
                    created_at=created,
                    updated_at=after.updated_at,
                    updated_by=after.updated_by,
                )
            )
            fields = ("group", "prompt", "active")
            detail = {
                "before": {k: getattr(before, k) for k in fields} if before else None,
                "after": {k: getattr(after, k) for k in fields},
            }
            audit(session, after.updated_at, after.updated_by, action, f"notice:{after.id}", detail)
        self._created[after.id] = created
