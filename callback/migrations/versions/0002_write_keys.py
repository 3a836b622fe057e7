"""Idempotency keys: a booking or a text written again after a commit whose outcome was unknown is not doubled.

``callbacks.booking_key`` and ``text_messages.intake_key`` are nullable and
unique (NULLs do not collide), so rows written before this revision stay.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEYS = {
    "callbacks": ("booking_key", "uq_callbacks_booking_key"),
    "text_messages": ("intake_key", "uq_text_messages_intake_key"),
}


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for table, (column, index) in _KEYS.items():
        if column not in {c["name"] for c in inspector.get_columns(table)}:
            with op.batch_alter_table(table) as batch:
                batch.add_column(sa.Column(column, sa.String(64), nullable=True))
        if index not in {ix["name"] for ix in inspector.get_indexes(table)}:
            op.create_index(index, table, [column], unique=True)


def downgrade() -> None:
    for table, (column, index) in _KEYS.items():
        op.drop_index(index, table_name=table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column)
