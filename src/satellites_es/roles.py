"""Least privilege in Postgres: an owner that migrates, producers that can only append, readers
that run the relay and the projectors.

Three kinds of login role, and two group roles per schema that carry the privileges:

* the **owner** owns the schema and everything in it; it alone migrates, and it alone (with
  superusers) can UPDATE, DELETE or TRUNCATE an event;
* ``{schema}_producer`` may only append: call the append functions (:data:`PRODUCER_FUNCTIONS`),
  which run ``SECURITY DEFINER`` as the owner (migration 0004, with ``search_path`` = the schema,
  then ``pg_temp``), and insert into ``events`` the columns an event carries, never its
  ``position`` (migration 0007: the column's default makes the row pending, so only the
  sequencer numbers it; the store's append inside a transaction is that ``INSERT``). It may read
  no payload and update, delete or truncate nothing. A producer process runs with the relay off
  (``SATELLITES_RELAY_ENABLED=false``) and ``auto_migrate`` skipped (it cannot migrate);
* ``{schema}_reader`` reads the log (``SELECT`` on :data:`READER_READS`) and keeps cursors,
  checkpoints, versions and parked events (:data:`READER_WRITES`): the relay and projectors.

``satellites-es db roles`` (:func:`create_roles`, run as an administrator) creates the group
roles, the login roles named on the command line (or grants the groups to existing ones), and
the schema owned by the owner. The object privileges are granted by :func:`grant` after every
migration (``migrate.upgrade`` calls it, as the owner, when the group roles exist), so a
migration that adds a function or a table is followed by its grants in the same transaction.

Group roles are cluster-wide while schemas are per database: two databases with a schema of
the same name share its group roles, so give each deployment's schema a name of its own.

The lists below are the one place that says who may call what: a migration that adds a function
for producers or readers adds its name here. Postgres grants EXECUTE on every new function to
PUBLIC; :func:`grant` revokes that for the functions listed here, so a reader cannot append.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import asyncpg

from .config import PostgresConfig
from .errors import BackendUnavailableError, ConfigurationError
from .pgpool import session_connection
from .sql import load, quote_schema, render

__all__ = [
    "PRODUCER_FUNCTIONS",
    "PRODUCER_READS",
    "READER_FUNCTIONS",
    "READER_READS",
    "READER_WRITES",
    "create_roles",
    "grant",
    "group_roles",
]

logger = logging.getLogger(__name__)

#: Functions a producer may call (by name: each name is one function in the schema): the
#: append functions, and the sequencer's answer to an autocommitted append that found it busy.
PRODUCER_FUNCTIONS: tuple[str, ...] = ("append_events_v4", "append_event_v4",
                                       "sequenced_positions_v1")  # fmt: skip
#: Tables a producer reads: only Alembic's revision, so its start can see the schema is current.
PRODUCER_READS: tuple[str, ...] = ("alembic_version",)
#: Functions the relay and projectors may call: the sequencer, which they run before reading.
READER_FUNCTIONS: tuple[str, ...] = ("sequence_events_v1",)
#: Tables the relay and projectors read.
READER_READS: tuple[str, ...] = ("events", "sequencer_state", "alembic_version")
#: Tables the relay and projectors write (cursors, checkpoints, versions, parked events).
READER_WRITES: tuple[str, ...] = (
    "relay_cursors",
    "projection_checkpoints",
    "projection_versions",
    "parked_events",
)
_ROLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def group_roles(schema: str) -> tuple[str, str]:
    """The producer and reader group roles of ``schema``."""
    return f"{schema}_producer", f"{schema}_reader"


def _ident(name: str, what: str) -> str:
    if not _ROLE.match(name):
        raise ConfigurationError(
            what, f"must be 1-63 of a-z 0-9 _, not a digit first (got {name!r})"
        )
    return f'"{name}"'


async def grant(conn: asyncpg.Connection[Any], schema: str) -> bool:
    """Grant the group roles of ``schema`` their privileges on what exists now; run as the owner
    (or a superuser). False, doing nothing, when the group roles do not exist."""
    producer, reader = group_roles(schema)
    found = await conn.fetchval(load("roles_count"), [producer, reader])
    if found != 2:
        return False
    s, p, r = quote_schema(schema), _ident(producer, "producer"), _ident(reader, "reader")
    # an upgrade to an older revision has not made everything yet: grant what exists
    names = [*PRODUCER_FUNCTIONS, *PRODUCER_READS, *READER_FUNCTIONS, *READER_READS,
             *READER_WRITES]  # fmt: skip
    present = set(await conn.fetchval(load("roles_present_objects"), names, s))

    def each(block: str, objects: Sequence[str], **roles: str) -> list[str]:
        return [render(block, schema=s, object=o, **roles) for o in objects if o in present]

    statements = [render("roles_grant_usage", schema=s, producer=p, reader=r)]
    statements += each("roles_revoke_function_from_public",
                       (*PRODUCER_FUNCTIONS, *READER_FUNCTIONS))  # fmt: skip
    statements += each("roles_grant_function", PRODUCER_FUNCTIONS, role=p)
    statements += each("roles_grant_function", READER_FUNCTIONS, role=r)
    statements += each("roles_grant_read", PRODUCER_READS, role=p)
    statements += each("roles_grant_read", READER_READS, role=r)
    statements += each("roles_grant_write", READER_WRITES, role=r)
    if await conn.fetchval(load("roles_pending_default"), s):  # migration 0007 or later
        statements.append(render("roles_grant_append", schema=s, role=p))
    async with conn.transaction():
        for statement in statements:
            await conn.execute(statement)
    return True


async def create_roles(
    admin: PostgresConfig,
    *,
    owner: str,
    producers: Sequence[str] = (),
    readers: Sequence[str] = (),
    passwords: dict[str, str] | None = None,
) -> list[str]:
    """As an administrator: the owner, producer and reader login roles (created if missing, with
    the password given for each in ``passwords``), the schema's group roles, the memberships,
    and the schema owned by ``owner``. Then the object grants, as the owner, if migrated.
    Returns what was done, one line each (idempotent: run it again after adding a role)."""
    passwords = passwords or {}
    schema = admin.schema
    producer_group, reader_group = group_roles(schema)
    try:
        conn = await session_connection(dsn=admin.dsn, timeout=admin.command_timeout)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise BackendUnavailableError("postgres", f"{admin.safe_dsn}: {exc}") from exc
    done: list[str] = []
    try:
        async with conn.transaction():
            for name in (owner, *producers, *readers):
                if await _ensure_role(conn, name, login=True, password=passwords.get(name)):
                    done.append(f"created login role {name}")
            for group in (producer_group, reader_group):
                if await _ensure_role(conn, group, login=False, password=None):
                    done.append(f"created group role {group}")
            q = _ident
            for name in producers:
                await conn.execute(render("roles_grant_membership", group=q(producer_group, "group"),
                                          role=q(name, "producer")))  # fmt: skip
            for name in readers:
                await conn.execute(render("roles_grant_membership", group=q(reader_group, "group"),
                                          role=q(name, "reader")))  # fmt: skip
            db = '"' + admin.database.replace('"', '""') + '"'
            everyone = ", ".join(q(n, "role") for n in (owner, *producers, *readers))
            await conn.execute(render("roles_grant_connect", database=db, roles=everyone))
            s, o = quote_schema(schema), q(owner, "owner")
            await conn.execute(render("roles_create_schema", schema=s, owner=o))
            await conn.execute(render("roles_schema_owner", schema=s, owner=o))
            done.append(f"schema {schema} owned by {owner}; {producer_group}: "
                        f"{', '.join(producers) or '-'}; {reader_group}: {', '.join(readers) or '-'}")  # fmt: skip
            if await conn.fetchval(load("roles_relation_exists"), f"{s}.events"):
                await conn.execute(render("roles_act_as_owner", owner=o))
                await grant(conn, schema)
                done.append("granted the privileges on the migrated schema")
    except asyncpg.PostgresError as exc:
        raise BackendUnavailableError("postgres", f"cannot create the roles: {exc}") from exc
    finally:
        await conn.close()
    return done


async def _ensure_role(
    conn: asyncpg.Connection[Any], name: str, *, login: bool, password: str | None
) -> bool:
    role = _ident(name, "role")
    exists = await conn.fetchval(load("role_exists"), name)
    if not exists:
        await conn.execute(render("role_create_login" if login else "role_create_group", role=role))
    if password is not None:
        # PASSWORD takes a literal, not a parameter: quote_literal on the server
        literal = await conn.fetchval(load("quote_literal"), password)
        await conn.execute(render("role_set_password", role=role, password=literal))
    return not exists
