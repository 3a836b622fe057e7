"""Alembic's environment for the callback tables, configured from code (``callback.db.alembic_config``).

:func:`callback.db.init_schema` passes its own connection in
``config.attributes["connection"]``: the migrations run inside the caller's
transaction. From the command line (``python -m callback.db ...``) a URL is
given instead and an async engine is made for it here.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from callback.base import Base, create_engine
from callback.db import VERSION_TABLE, include_name  # importing callback.db also puts every table on Base.metadata

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection | None = None, url: str | None = None) -> None:
    context.configure(
        connection=connection,
        url=url,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        include_name=include_name,
        compare_type=True,
        render_as_batch=True,  # SQLite alters a table by copying it: let autogenerate write batch ops
        literal_binds=connection is None,
    )


def _run(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_url(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run)
    finally:
        await engine.dispose()


def run() -> None:
    given = config.attributes.get("connection")
    url = config.get_main_option("sqlalchemy.url")
    if given is not None:
        _run(given)
    elif context.is_offline_mode():
        _configure(url=url)
        with context.begin_transaction():
            context.run_migrations()
    elif url:
        asyncio.run(_run_with_url(url))
    else:
        raise RuntimeError("no database: pass a connection (init_schema) or a URL (python -m callback.db --url)")


run()
