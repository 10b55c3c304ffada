"""Parked events: the events a projection or the relay set aside because they can never succeed.

One row per (consumer kind, consumer name, version, position): a projection (``kind =
'projection'``, its version) or a relay (``kind = 'relay'``, version 0). ``status`` is
``parked`` until an operator asks for a retry (``retry``); the consumer that owns the row then
applies or republishes the event and deletes the row, or parks it again with the new error.
Parking the same event twice bumps ``attempts`` and ``last_seen`` (exactly one row per event).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _now(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


def upgrade() -> None:
    op.create_table(
        "parked_events",
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.Text(), nullable=True),
        sa.Column("event_id", sa.Text(), nullable=True),
        sa.Column("event_type", sa.Text(), nullable=True),
        sa.Column("error_type", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("1")),
        sa.Column("status", sa.Text(), nullable=False, server_default=sa.text("'parked'")),
        _now("first_seen"),
        _now("last_seen"),
        sa.PrimaryKeyConstraint("kind", "name", "version", "position", name="pk_parked_events"),
        sa.CheckConstraint("kind IN ('projection', 'relay')", name=op.f("ck_parked_events_kind")),
        sa.CheckConstraint("status IN ('parked', 'retry')", name=op.f("ck_parked_events_status")),
    )


def downgrade() -> None:
    op.drop_table("parked_events")
