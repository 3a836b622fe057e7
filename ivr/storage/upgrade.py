"""Additive schema upgrades: new nullable columns reach database files made by older versions.

``create_all`` creates missing tables but never alters existing ones, so a
``frontdesk.db`` from before a column was added would refuse every insert
(the call-record writer would retry forever). At start-up, after
``create_all``, :func:`add_missing_columns` adds each missing *nullable*
column (and its indexes). Anything else (a missing NOT NULL column, a type
change) is not guessed at: it raises, naming the column, so a real migration
is written for it.
"""

from __future__ import annotations

from sqlalchemy import Connection, MetaData, inspect
from sqlalchemy.ext.asyncio import AsyncEngine


class SchemaError(RuntimeError):
    pass


def _upgrade(conn: Connection, metadata: MetaData) -> list[str]:
    inspector = inspect(conn)
    quote = conn.dialect.identifier_preparer.quote
    added: list[str] = []
    for table in metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        present = {c["name"] for c in inspector.get_columns(table.name)}
        missing = [c for c in table.columns if c.name not in present]
        for column in missing:
            if not column.nullable or column.primary_key or column.server_default is not None:
                raise SchemaError(
                    f"table {table.name} has no column {column.name}, which cannot be added automatically: "
                    "migrate the database (or start with a new one)"
                )
            type_sql = column.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)} {type_sql}")
            added.append(f"{table.name}.{column.name}")
        if missing:
            for index in table.indexes:
                index.create(conn, checkfirst=True)
    return added


async def add_missing_columns(engine: AsyncEngine, *metadatas: MetaData) -> list[str]:
    """Add missing nullable columns of existing tables; returns ``table.column`` for each one added."""
    added: list[str] = []
    async with engine.begin() as conn:
        for metadata in metadatas:
            added += await conn.run_sync(_upgrade, metadata)
    return added
