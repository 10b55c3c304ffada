"""Create and migrate the satellites-es tables with Alembic, from code.

:func:`upgrade` and :func:`downgrade` run Alembic's command API on a connection we open
(Alembic's "connection sharing" recipe): the sync command runs inside
``AsyncConnection.run_sync``, so no second event loop and no thread are needed, and the whole
migration is one transaction (Postgres DDL is transactional).

The target schema is made the connection's ``search_path`` (through asyncpg's
``server_settings``), so the schema-less metadata in :mod:`satellites_es.schema` lands in it and
Alembic's version table sits beside it. The schema is created first, on its own connection:
SQLAlchemy reads ``current_schema()`` when it first connects, and that is NULL while the schema
does not exist. Concurrent upgrades of one schema are serialised by an advisory lock.

The migration scripts live in ``migrations/`` at the project root (``alembic.ini`` beside them
for the ``alembic`` command line).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from .config import PostgresConfig
from .errors import BackendUnavailableError, PersistenceError
from .sql import quote_schema

__all__ = ["MIGRATIONS_DIR", "downgrade", "ensure_database", "upgrade"]

logger = logging.getLogger(__name__)

#: ``migrations/`` at the project root.
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"

#: Taken by ``migrations/env.py`` first: concurrent upgrades of one schema run one at a time.
MIGRATION_LOCK_SQL = (
    "SELECT pg_advisory_xact_lock(hashtext('satellites.migrate.' || current_schema()))"
)

_Action = Callable[[Config], None]


def alembic_config(pg: PostgresConfig, script_location: Path = MIGRATIONS_DIR) -> Config:
    """An Alembic Config aimed at ``pg`` (its schema included), without an ini file."""
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["postgres"] = pg
    cfg.attributes["configure_logging"] = False
    return cfg


async def upgrade(pg: PostgresConfig, revision: str = "head") -> None:
    """Migrate ``pg.schema`` up to ``revision``, creating the schema first if needed."""
    await _run(pg, lambda cfg: command.upgrade(cfg, revision))


async def downgrade(pg: PostgresConfig, revision: str = "base") -> None:
    """Migrate ``pg.schema`` down to ``revision`` (``base``: drop every table)."""
    await _run(pg, lambda cfg: command.downgrade(cfg, revision))


async def ensure_database(pg: PostgresConfig) -> bool:
    """Create ``pg.database`` if it does not exist (connecting to ``postgres``); True if created."""
    try:
        conn = await asyncpg.connect(_dsn(pg, "postgres"), timeout=pg.command_timeout)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise BackendUnavailableError("postgres", f"{pg.safe_dsn}: {exc}") from exc
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", pg.database)
        if exists:
            return False
        quoted = '"' + pg.database.replace('"', '""') + '"'
        await conn.execute(f"CREATE DATABASE {quoted}")
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
    return create_async_engine(
        pg.sqlalchemy_url,
        poolclass=NullPool,
        connect_args={"server_settings": {"search_path": pg.schema}},
    )


async def _create_schema(pg: PostgresConfig) -> None:
    try:
        conn = await asyncpg.connect(pg.dsn, timeout=pg.command_timeout)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise BackendUnavailableError("postgres", f"{pg.safe_dsn}: {exc}") from exc
    try:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_schema(pg.schema)}")
    except asyncpg.UniqueViolationError:
        pass  # a concurrent CREATE SCHEMA IF NOT EXISTS won the race
    finally:
        await conn.close()


async def _run(pg: PostgresConfig, action: _Action) -> None:
    cfg = alembic_config(pg)
    engine = await connect_engine(pg)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_with_connection, cfg, action)
    except (SQLAlchemyError, OSError) as exc:
        raise PersistenceError(f"migration of schema {pg.schema!r} failed: {exc}") from exc
    finally:
        await engine.dispose()


def _with_connection(connection: Connection, cfg: Config, action: _Action) -> None:
    cfg.attributes["connection"] = connection
    action(cfg)


def _dsn(pg: PostgresConfig, database: str) -> str:
    return dataclasses.replace(pg, database=database).dsn
