"""The text-message outbox and the callback list.

Creates only what is missing: databases made before migrations existed
already have ``text_messages`` (from ``create_all``), and keep its rows.

Revision ID: 0001
Revises:
Create Date: 2024-05-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# frozen here: a later change of the states is a later revision
ACTIVE_WHERE = "state IN ('booked', 'due', 'offered', 'in_progress')"
STATE_CHECK = "state IN ('booked', 'due', 'offered', 'in_progress', 'completed', 'failed', 'expired', 'cancelled')"
KIND_CHECK = "kind IN ('callback', 'follow_up')"


def _tz() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _create_missing_indexes(table: str, wanted: dict[str, tuple[list[str], dict[str, object]]]) -> None:
    present = {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes(table)}
    for name, (columns, kw) in wanted.items():
        if name not in present:
            op.create_index(name, table, columns, **kw)  # type: ignore[arg-type]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())

    if not inspector.has_table("text_messages"):
        op.create_table(
            "text_messages",
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
            sa.Column("to_number", sa.String(64), nullable=False),
            sa.Column("body", sa.Text(), nullable=False),
            sa.Column("reason", sa.String(32), nullable=False),
            sa.Column("created_at", _tz(), nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("next_attempt_at", _tz(), nullable=False),
            sa.Column("last_error", sa.Text(), nullable=True),
            sa.Column("sent_at", _tz(), nullable=True),
        )
    _create_missing_indexes("text_messages", {"ix_text_messages_due": (["state", "next_attempt_at"], {})})

    if not inspector.has_table("callbacks"):
        op.create_table(
            "callbacks",
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
            sa.Column("queue", sa.String(64), nullable=False),
            sa.Column("number", sa.String(32), nullable=False),
            sa.Column("kind", sa.String(16), nullable=False),
            sa.Column("parent_id", sa.Integer(), sa.ForeignKey("callbacks.id"), nullable=True),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("arrived_at", _tz(), nullable=False),
            sa.Column("booked_at", _tz(), nullable=False),
            sa.Column("not_before", _tz(), nullable=False),
            sa.Column("window_end", _tz(), nullable=True),
            sa.Column("promised_by", _tz(), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("next_attempt_at", _tz(), nullable=True),
            sa.Column("claimed_by", sa.String(64), nullable=True),
            sa.Column("lease_until", _tz(), nullable=True),
            sa.Column("outcome", sa.String(32), nullable=True),
            sa.Column("notes", sa.Text(), nullable=True),
            sa.Column("message_path", sa.String(1024), nullable=True),
            sa.Column("call_id", sa.String(255), nullable=True),
            sa.Column("created_by", sa.String(64), nullable=False),
            sa.Column("closed_at", _tz(), nullable=True),
            sa.Column("close_reason", sa.String(32), nullable=True),
            sa.Column("promise_warned", sa.Boolean(), nullable=False),
            sa.Column("version", sa.Integer(), nullable=False),
            sa.CheckConstraint(STATE_CHECK, name="ck_callbacks_state"),
            sa.CheckConstraint(KIND_CHECK, name="ck_callbacks_kind"),
        )
    _create_missing_indexes(
        "callbacks",
        {
            "uq_callbacks_active_number": (
                ["number", "queue"],
                {"unique": True, "sqlite_where": sa.text(ACTIVE_WHERE), "postgresql_where": sa.text(ACTIVE_WHERE)},
            ),
            "ix_callbacks_state_queue_arrived": (["state", "queue", "arrived_at"], {}),
            "ix_callbacks_state_not_before": (["state", "not_before"], {}),
            "ix_callbacks_state_next_attempt": (["state", "next_attempt_at"], {}),
            "ix_callbacks_claimed_by": (["claimed_by"], {}),
            "ix_callbacks_parent_id": (["parent_id"], {}),
        },
    )


def downgrade() -> None:
    op.drop_table("callbacks")
    op.drop_table("text_messages")
