"""Create and migrate the satellites-es tables with Alembic, from code.

:func:`upgrade` and :func:`downgrade` run Alembic's (synchronous) command API in a worker
thread; ``migrations/env.py`` opens an asyncpg engine there with its own event loop, so the
caller's loop never blocks. The whole migration is one transaction (Postgres DDL is
transactional). Alembic keeps its ``context`` in module globals, so commands in one process run
one at a time (a lock); across processes an advisory lock taken by ``env.py`` serialises them.
``env.py`` also accepts an open ``connection`` in the Config attributes (Alembic's "connection
sharing" recipe) for callers that manage their own.

The target schema is made the connection's ``search_path`` (through asyncpg's
``server_settings``), so the schema-less metadata in :mod:`satellites_es.schema` lands in it and
Alembic's version table sits beside it. The schema is created first, on its own connection:
SQLAlchemy reads ``current_schema()`` when it first connects, and that is NULL while the schema
does not exist. Concurrent upgrades of one schema are serialised by an advisory lock.

The migration scripts live in ``migrations/`` at the project root (``alembic.ini`` beside them
for the ``alembic`` command line) and ship in the wheel (see :data:`MIGRATIONS_DIR`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from .config import PostgresConfig
from .errors import BackendUnavailableError, ConfigurationError, PersistenceError
from .pgpool import session_connection
from .sql import load, queries, quote_schema, render

__all__ = ["MIGRATIONS_DIR", "auto_upgrade", "downgrade", "ensure_database", "upgrade"]

logger = logging.getLogger(__name__)

#: The Alembic scripts: ``migrations/`` at the project root, reached through the package's
#: ``_migrations`` symlink in a checkout and shipped as that directory in the wheel, so an
#: installed ``satellites-es migrate`` finds them too.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "_migrations"

#: Taken by ``migrations/env.py`` first: concurrent upgrades of one schema run one at a time.
MIGRATION_LOCK_SQL = load("migration_lock")

_Action = Callable[[Config], None]
_ALEMBIC_LOCK = threading.Lock()


def alembic_config(pg: PostgresConfig, script_location: Path = MIGRATIONS_DIR) -> Config:
    """An Alembic Config aimed at ``pg`` (its schema included), without an ini file."""
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["postgres"] = pg
    cfg.attributes["configure_logging"] = False
    return cfg


async def upgrade(pg: PostgresConfig, revision: str = "head") -> None:
    """Migrate ``pg.schema`` up to ``revision``, creating the schema first if needed; then, if
    the schema has producer and reader group roles (:mod:`satellites_es.roles`), grant them
    their privileges on what the migration created."""
    await _run(pg, lambda cfg: command.upgrade(cfg, revision))
    from .roles import grant

    conn = await _connect(pg)
    try:
        if await grant(conn, pg.schema):
            logger.info("granted the producer and reader roles of schema %s", pg.schema)
    finally:
        await conn.close()


async def auto_upgrade(pg: PostgresConfig) -> None:
    """``auto_migrate`` at start: :func:`upgrade`, unless this role cannot migrate the schema
    (a producer or reader of a least-privilege deployment). Then the schema must already be at
    the latest revision: it is used as it is (logged), or the start fails saying who migrates."""
    conn = await _connect(pg)
    try:
        can, owner, current = await _migration_rights(conn, pg.schema)
    finally:
        await conn.close()
    if can:
        await upgrade(pg)
        return
    head = ScriptDirectory.from_config(alembic_config(pg)).get_current_head()
    if current == head:
        logger.info("auto_migrate skipped: role %s cannot migrate schema %s (owner %s); it is "
                    "at %s, the latest", pg.user, pg.schema, owner, head)  # fmt: skip
        return
    raise ConfigurationError(
        "SATELLITES_LOG_AUTO_MIGRATE",
        f"schema {pg.schema!r} is at revision {current or 'none'}, this version needs {head}, "
        f"and role {pg.user!r} cannot migrate it: run 'satellites-es migrate' as the owner "
        f"({owner or 'a role with CREATE on the database'})",
    )


async def _migration_rights(
    conn: asyncpg.Connection[asyncpg.Record], schema: str
) -> tuple[bool, str | None, str | None]:
    """(whether this role may migrate, the schema's owner, its Alembic revision)."""
    sql = queries(schema)
    row = await conn.fetchrow(sql["migrate_schema_owner"], schema)
    if row is None:  # no schema yet: whoever may create one migrates
        can = await conn.fetchval(sql["migrate_may_create_schema"])
        return bool(can), None, None
    current = None
    table = f"{quote_schema(schema)}.alembic_version"
    if await conn.fetchval(sql["migrate_revision_readable"], schema, table):
        current = await conn.fetchval(sql["migrate_revision"])
    return bool(row["mine"]), row["owner"], current


async def _connect(pg: PostgresConfig) -> asyncpg.Connection[asyncpg.Record]:
    try:
        return await session_connection(dsn=pg.dsn, timeout=pg.command_timeout)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise BackendUnavailableError("postgres", f"{pg.safe_dsn}: {exc}") from exc


async def downgrade(pg: PostgresConfig, revision: str = "base") -> None:
    """Migrate ``pg.schema`` down to ``revision`` (``base``: drop every table)."""
    await _run(pg, lambda cfg: command.downgrade(cfg, revision))


async def ensure_database(pg: PostgresConfig) -> bool:
    """Create ``pg.database`` if it does not exist (connecting to ``postgres``); True if created."""
    try:
        conn = await session_connection(dsn=_dsn(pg, "postgres"), timeout=pg.command_timeout)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise BackendUnavailableError("postgres", f"{pg.safe_dsn}: {exc}") from exc
    try:
        exists = await conn.fetchval(load("database_exists"), pg.database)
        if exists:
            return False
        quoted = '"' + pg.database.replace('"', '""') + '"'
        await conn.execute(render("create_database", database=quoted))
        logger.info("created database %s", pg.database)
        return True
    except asyncpg.DuplicateDatabaseError:
        return False  # created by someone else meanwhile
    except asyncpg.PostgresError as exc:
        raise PersistenceError(f"cannot create database {pg.database!r}: {exc}") from exc
    finally:
        await conn.close()


async def connect_engine(pg: PostgresConfig) -> AsyncEngine:
    """An engine whose connections have ``search_path`` = ``pg.schema``, created if missing."""
    await _create_schema(pg)

    # Connections come from the DSN, not from SQLAlchemy's URL: asyncpg reads libpq's TLS
    # parameters (sslmode, sslrootcert, ...) there, while SQLAlchemy's asyncpg dialect would
    # hand URL query parameters to asyncpg.connect() as keywords it does not take.
    async def connect() -> asyncpg.Connection[asyncpg.Record]:
        return await session_connection(
            dsn=pg.dsn, timeout=pg.command_timeout, server_settings={"search_path": pg.schema}
        )

    return create_async_engine(pg.sqlalchemy_url, poolclass=NullPool, async_creator=connect)


async def _create_schema(pg: PostgresConfig) -> None:
    try:
        conn = await session_connection(dsn=pg.dsn, timeout=pg.command_timeout)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise BackendUnavailableError("postgres", f"{pg.safe_dsn}: {exc}") from exc
    try:
        # CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the schema exists:
        # an owner of a schema made for it (``db roles``) has no such right, nor needs it
        sql = queries(pg.schema)
        if await conn.fetchval(sql["schema_exists"], pg.schema):
            return
        await conn.execute(sql["create_schema"])
    except asyncpg.UniqueViolationError:
        pass  # a concurrent CREATE SCHEMA IF NOT EXISTS won the race
    finally:
        await conn.close()


async def _run(pg: PostgresConfig, action: _Action) -> None:
    await asyncio.to_thread(_run_in_thread, pg, action)


def _run_in_thread(pg: PostgresConfig, action: _Action) -> None:
    # Alembic's ``context`` and ``op`` are module-level proxies: two commands at once in one
    # process would trample each other, hence the lock (other processes: the advisory lock).
    with _ALEMBIC_LOCK:
        try:
            action(alembic_config(pg))  # env.py opens the engine, in this thread's own loop
        except CommandError as exc:  # an unknown revision, or one that is not reachable
            raise ConfigurationError("--revision", str(exc)) from exc
        except (SQLAlchemyError, OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise PersistenceError(f"migration of schema {pg.schema!r} failed: {exc}") from exc


def _dsn(pg: PostgresConfig, database: str) -> str:
    return dataclasses.replace(pg, database=database).dsn
