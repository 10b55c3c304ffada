"""A producer's append inside its transaction is its own INSERT, not a function call (issue 13).

Gives ``events.position`` a default: a pending number, taken after the transaction's id (the
``pending_position_default_v1`` paragraph in ``sql/queries.sql`` says why both). The store then
sends a single event appended inside the producer's transaction as one ``INSERT`` (the
``append_pending`` query) and calls ``append_event_v4`` only when that inserted nothing. The
producer role's grants (:func:`satellites_es.roles.grant`, run after every migration) gain
``INSERT`` on the columns a producer fills (never ``position``), so every row it inserts is
pending until the sequencer numbers it.

No row of the log changes; the functions stay as they are.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from satellites_es.sql import load

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(load("pending_position_default_v1"))


def downgrade() -> None:
    # Without the default a producer's own INSERT fails (position is NOT NULL), so the column
    # grants that roles.grant gave it are left in place: they allow nothing the code below uses.
    op.execute(load("drop_pending_position_default_v1"))
