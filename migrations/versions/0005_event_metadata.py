"""The event envelope: a ``metadata`` column and the v3 append functions (issue 17).

Adds ``events.metadata`` (jsonb, NOT NULL, default ``'{}'``): an event's correlation and
causation ids, actor, W3C trace context, payload schema version and free headers. The constant
default is kept in the catalogue (Postgres 11+), so the column is added without rewriting the
table: stored rows keep their bytes and read as "no metadata, schema version 1".

The v2 append functions are dropped and v3 created in their place: the same logic with one more
argument (see ``create_append_events_v3`` in ``sql/queries.sql``), ``SECURITY DEFINER`` with
``EXECUTE`` revoked from ``PUBLIC``. A process still calling v2 fails loudly (the function is
gone) rather than storing events without their metadata. The downgrade recreates v2 and drops
the column (and with it the metadata stored meanwhile).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from satellites_es.sql import load

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(load("definer_search_path"))  # before any SECURITY DEFINER function
    op.execute(load("add_metadata_v1"))
    op.execute(load("drop_append_event_v2"))
    op.execute(load("drop_append_events_v2"))
    op.execute(load("create_append_events_v3"))
    op.execute(load("create_append_event_v3"))
    op.execute(load("revoke_functions_v3"))


def downgrade() -> None:
    op.execute(load("definer_search_path"))
    op.execute(load("drop_append_event_v3"))
    op.execute(load("drop_append_events_v3"))
    op.execute(load("create_append_events_v2"))
    op.execute(load("create_append_event_v2"))
    op.execute(load("drop_metadata_v1"))
    # Only the v2 functions' grant: the sequencer's functions were never dropped.
    op.execute(
        "REVOKE ALL ON FUNCTION append_events_v2(text[], text[], text[], text[], text[], "
        "jsonb[], timestamptz[], integer[], integer[], integer[], integer, text, boolean), "
        "append_event_v2(text, text, text, text, text, jsonb, timestamptz, integer, text, "
        "boolean) FROM PUBLIC"
    )
