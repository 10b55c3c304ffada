"""The sequencer's floor: sequencing costs the same on a log with a long history (issue 13).

The sequencer scanned every pending number ever used (``position < 0``), stepping over the dead
index entries that numbered rows leave until VACUUM; its cost grew with every event appended
inside a transaction since the last vacuum. It now keeps a floor below which every pending
number is resolved, and scans only above it (the ``create_sequencer_state_v1`` paragraph in
``sql/queries.sql`` has the argument). The floor needs every append to take its transaction id
before its pending numbers: the v3 append functions are dropped (a process still calling them
fails loudly) and v4 created, the v3 blocks with that call first
(:func:`satellites_es.sql.transaction_id_first`).

No row of the log changes. The floor starts at 0 (the first run scans as before).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from satellites_es.sql import load, transaction_id_first

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The v4 append functions and the v3 blocks they are made from.
V4 = (("append_events_v3", "append_events_v4"), ("append_event_v3", "append_event_v4"))


def upgrade() -> None:
    op.execute(load("definer_search_path"))  # before any SECURITY DEFINER function
    op.execute(load("create_sequencer_state_v1"))
    op.execute(load("init_sequencer_state_v1"))
    op.execute(load("pending_seq_no_cache_v1"))
    op.execute(load("replace_sequence_pending_floor_v1"))
    op.execute(load("drop_append_event_v3"))
    op.execute(load("drop_append_events_v3"))
    for v3, v4 in V4:
        op.execute(transaction_id_first(load(f"create_{v3}"), v3, v4))
    op.execute(load("revoke_functions_v4"))


def downgrade() -> None:
    op.execute(load("definer_search_path"))
    op.execute(load("drop_append_event_v4"))
    op.execute(load("drop_append_events_v4"))
    op.execute(load("create_append_events_v3"))
    op.execute(load("create_append_event_v3"))
    op.execute(load("revoke_functions_v3"))
    op.execute(load("drop_sequence_pending_v1"))
    op.execute(load("create_sequence_pending_v1"))  # the body before the floor
    op.execute(load("revoke_sequence_pending_v1"))
    op.execute(load("drop_sequencer_state_v1"))
