"""Appends that cost what their inserts cost: a producer's own INSERT inside its transaction, and
an autocommitted single event that calls the sequencer only when something is pending (issue 13).

* ``events.position`` gets a default: a pending number, taken after the transaction's id (the
  ``pending_position_default_v1`` paragraph in ``sql/queries.sql`` says why both). The store
  sends a single event appended inside the producer's transaction as one ``INSERT`` (the
  ``append_pending`` query) and calls the append function only when that inserted nothing. The
  producer role's grants (:func:`satellites_es.roles.grant`, run after every migration) gain
  ``INSERT`` on the columns a producer fills (never ``position``), so every row it inserts is
  pending until the sequencer numbers it.
* ``append_event_v4`` is replaced by ``append_event_v5``: the same function whose fast path
  numbers pending events only when one is waiting (``append_event_v5_numbering``), made from the
  frozen v3 block like v4 (:func:`satellites_es.sql.numbering_only_when_pending`). A process
  still calling v4 fails loudly.

No row of the log changes.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from satellites_es.sql import load, numbering_only_when_pending, transaction_id_first

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _single_event_function(name: str) -> str:
    """The v3 single-event block made into ``name``, taking its transaction id first (0006)."""
    return transaction_id_first(load("create_append_event_v3"), "append_event_v3", name)


def upgrade() -> None:
    op.execute(load("definer_search_path"))  # before any SECURITY DEFINER function
    op.execute(load("pending_position_default_v1"))
    op.execute(load("drop_append_event_v4"))
    op.execute(numbering_only_when_pending(_single_event_function("append_event_v5")))
    op.execute(load("revoke_function_append_event_v5"))


def downgrade() -> None:
    op.execute(load("definer_search_path"))
    op.execute(load("drop_append_event_v5"))
    op.execute(_single_event_function("append_event_v4"))
    op.execute(load("revoke_functions_v4"))
    # Without the default a producer's own INSERT fails (position is NOT NULL), so the column
    # grants that roles.grant gave it are left in place: they allow nothing the code below uses.
    op.execute(load("drop_pending_position_default_v1"))
