"""Every table satellites-es keeps in Postgres, as SQLAlchemy metadata.

The tables carry no schema: they live in the configured schema (``PostgresConfig.schema``),
which migrations reach through ``search_path`` and the store names explicitly (quoted). That
lets every test run in a fresh schema of its own. ``tests/integration/test_migrations.py``
proves that ``alembic upgrade head`` produces exactly this metadata.

* ``events``: the log and the outbox. ``position`` is the global position, dense and in the
  sequencer's commit order; an event appended inside a producer's transaction waits for it at
  a negative *pending* number (the ``create_sequencer_v1`` paragraph in ``sql/queries.sql`` says
  why); ``id`` is the event id that makes a retried append store once; ``(resource, key,
  version)`` is unique per stream. Migration 0004 adds the sequence ``events_pending_seq``
  and the functions, which are not metadata; migration 0007 makes a pending number
  ``position``'s default, so that a producer's own ``INSERT`` leaves its row pending.
* ``relay_cursors``: how far each relay has published (the outbox is the log after it).
* ``projection_checkpoints``: the last position each version of each projection applied.
* ``projection_versions``: which version of a projection is live, and the one before it (for a
  rollback after a blue/green flip).
* ``parked_events``: events a projection (per version) or a relay set aside because they can
  never succeed as they are (:mod:`satellites_es.parking`).
* ``sequencer_state``: one row, the sequencer's floor (every pending number up to it is
  resolved) and its next candidate (migration 0006; the ``create_sequencer_state_v1`` paragraph
  in ``sql/queries.sql``).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

__all__ = [
    "events",
    "metadata",
    "parked_events",
    "projection_checkpoints",
    "projection_versions",
    "relay_cursors",
    "sequencer_state",
]

#: Deterministic constraint names, so migrations and metadata agree on them.
NAMING_CONVENTION = {
    "pk": "pk_%(table_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _updated_at() -> Column[object]:
    return Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now())


#: ``events.position``'s default (migration 0007): a pending number, taken after the
#: transaction's id (``pending_position_default_v1`` in ``sql/queries.sql``). Postgres stores the
#: sequence's name qualified by the schema the migration ran in.
PENDING_POSITION = text(
    "-nextval(CASE WHEN pg_current_xact_id() IS NOT NULL THEN 'events_pending_seq'::regclass END)"
)

events = Table(
    "events",
    metadata,
    # a row inserted without a position is pending (migration 0007: a producer's own INSERT)
    Column(
        "position", BigInteger, nullable=False, autoincrement=False, server_default=PENDING_POSITION
    ),
    Column("id", Text, nullable=False),
    Column("resource", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("type", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("timestamp", DateTime(timezone=True), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # the envelope (migration 0005): correlation, causation, actor, trace context, schema
    # version, headers; '{}' for an event without any
    Column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    PrimaryKeyConstraint("position"),
    UniqueConstraint("id"),
    UniqueConstraint("resource", "key", "version"),
)

relay_cursors = Table(
    "relay_cursors",
    metadata,
    Column("name", Text, nullable=False),
    Column("position", BigInteger, nullable=False, server_default=text("0")),
    _updated_at(),
    PrimaryKeyConstraint("name"),
)

projection_checkpoints = Table(
    "projection_checkpoints",
    metadata,
    Column("projection", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("position", BigInteger, nullable=False, server_default=text("0")),
    _updated_at(),
    PrimaryKeyConstraint("projection", "version"),
)

projection_versions = Table(
    "projection_versions",
    metadata,
    Column("projection", Text, nullable=False),
    Column("active_version", Integer, nullable=False),
    Column("previous_version", Integer, nullable=True),
    _updated_at(),
    PrimaryKeyConstraint("projection"),
)


parked_events = Table(
    "parked_events",
    metadata,
    Column("kind", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("key", Text, nullable=True),
    Column("event_id", Text, nullable=True),
    Column("event_type", Text, nullable=True),
    Column("error_type", Text, nullable=False),
    Column("error", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("1")),
    Column("status", Text, nullable=False, server_default=text("'parked'")),
    Column("first_seen", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_seen", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("kind", "name", "version", "position"),
    CheckConstraint("kind IN ('projection', 'relay')", name="kind"),
    CheckConstraint("status IN ('parked', 'retry')", name="status"),
)


sequencer_state = Table(
    "sequencer_state",
    metadata,
    Column("id", Boolean, nullable=False, server_default=text("true")),
    Column("floor", BigInteger, nullable=False, server_default=text("0")),
    Column("candidate", BigInteger, nullable=False, server_default=text("0")),
    Column("horizon", BigInteger, nullable=True),  # a transaction id (xid8 as a number)
    PrimaryKeyConstraint("id"),
    CheckConstraint("id", name="one_row"),
)
