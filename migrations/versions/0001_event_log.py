"""The event log, relay cursors and projection checkpoints/versions; the append functions.

Revision ID: 0001
Revises:
Create Date: 2026-11-20

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from satellites_es.sql import load

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _updated_at() -> sa.Column[object]:
    return sa.Column(
        "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    )


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("position", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("resource", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "recorded_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.PrimaryKeyConstraint("position", name="pk_events"),
        sa.UniqueConstraint("id", name="uq_events_id"),
        sa.UniqueConstraint("resource", "key", "version", name="uq_events_resource_key_version"),
    )
    op.create_table(
        "relay_cursors",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        _updated_at(),
        sa.PrimaryKeyConstraint("name", name="pk_relay_cursors"),
    )
    op.create_table(
        "projection_checkpoints",
        sa.Column("projection", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        _updated_at(),
        sa.PrimaryKeyConstraint("projection", "version", name="pk_projection_checkpoints"),
    )
    op.create_table(
        "projection_versions",
        sa.Column("projection", sa.Text(), nullable=False),
        sa.Column("active_version", sa.Integer(), nullable=False),
        sa.Column("previous_version", sa.Integer(), nullable=True),
        _updated_at(),
        sa.PrimaryKeyConstraint("projection", name="pk_projection_versions"),
    )
    op.execute(load("create_append_events_v1"))
    op.execute(load("create_append_event_v1"))


def downgrade() -> None:
    op.execute(load("drop_append_event_v1"))
    op.execute(load("drop_append_events_v1"))
    op.drop_table("projection_versions")
    op.drop_table("projection_checkpoints")
    op.drop_table("relay_cursors")
    op.drop_table("events")
