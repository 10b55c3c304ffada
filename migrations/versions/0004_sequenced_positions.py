"""Positions taken after commit: appends without a log-wide lock (issue 13).

Creates the pending-number sequence, the sequencer functions and the v2 append functions, all
``SECURITY DEFINER`` with ``EXECUTE`` revoked from ``PUBLIC`` (a producer then needs only
``EXECUTE``, no table privilege), and drops the v1 functions, whose ``LOCK TABLE`` design cannot
run beside the sequencer (an old process still calling them fails loudly: the function is gone).
The design is the ``create_sequencer_v1`` paragraph in ``sql/queries.sql``.

The table does not change and no row is rewritten: stored events keep their positions, and
pending events use negative numbers that no reader asks for. A downgrade first numbers every
committed pending event, so the v1 functions find a log without any.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07

"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from satellites_es.sql import load

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


#: Each block is one statement (a migration runs a block as one prepared statement).
CREATED = ("sequencer_v1", "sequence_pending_v1", "sequence_events_v1",
           "sequenced_positions_v1", "append_events_v2", "append_event_v2")  # fmt: skip


#: A SECURITY DEFINER function must not search pg_temp before the log's schema: a producer's
#: temporary table named ``events`` would stand in for the log (Postgres searches pg_temp first
#: unless the path names it). ``SET search_path FROM CURRENT`` captures this path.
DEFINER_PATH = "SELECT set_config('search_path', quote_ident(current_schema()) || ', pg_temp', true)"


def upgrade() -> None:
    op.execute(DEFINER_PATH)
    op.execute(load("drop_append_event_v1"))
    op.execute(load("drop_append_events_v1"))
    for name in CREATED:
        op.execute(load(f"create_{name}"))
    op.execute(load("revoke_functions_v2"))


def downgrade() -> None:
    op.execute(DEFINER_PATH)
    op.execute("SELECT sequence_events_v1(NULL)")
    for name in reversed(CREATED):
        op.execute(load(f"drop_{name}"))
    op.execute(load("create_append_events_v1"))
    op.execute(load("create_append_event_v1"))
