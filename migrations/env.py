"""Alembic environment for satellites-es (async, asyncpg).

Where to migrate, in order: the ``postgres`` attribute of the Alembic Config (a
``PostgresConfig``, set by :mod:`satellites_es.migrate`, which also hands over an open
``connection``); otherwise the ``SATELLITES_POSTGRES_*`` environment, with ``-x url=...`` and
``-x schema=...`` overriding its URL and schema. ``-x schema=NAME`` alone keeps the configured
database (it once fell back to the default database ``satellites``).
The tables carry no schema in the metadata: the connection's ``search_path`` is the target
schema, created if missing, and Alembic's version table lives there too. Connections are made
from the configuration's DSN (``migrate.connect_engine``), so the URL's TLS parameters
(``sslmode``, ``sslrootcert``, ...) and the ``SATELLITES_POSTGRES_SSL*`` fields apply here too.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from satellites_es.config import DataLayerConfig, PostgresConfig
from satellites_es.migrate import MIGRATION_LOCK_SQL, connect_engine
from satellites_es.schema import metadata

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def target() -> PostgresConfig:
    pg = config.attributes.get("postgres")
    if isinstance(pg, PostgresConfig):
        return pg
    x = context.get_x_argument(as_dictionary=True)
    env = dict(os.environ)
    if "url" in x:
        env["SATELLITES_POSTGRES_URL"] = x["url"]
        # the URL names the database: a field variable would otherwise win over it
        for part in ("HOST", "PORT", "DATABASE", "USER", "PASSWORD", "PASSWORD_FILE"):
            env.pop(f"SATELLITES_POSTGRES_{part}", None)
    if "schema" in x:
        env["SATELLITES_POSTGRES_SCHEMA"] = x["schema"]
    return DataLayerConfig.from_env(env).postgres


def do_run_migrations(connection: Connection, schema: str) -> None:
    # Two processes upgrading the same schema at once: the second waits, then finds it done.
    connection.exec_driver_sql(MIGRATION_LOCK_SQL)
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table_schema=schema,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations(pg: PostgresConfig) -> None:
    engine = await connect_engine(pg)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(do_run_migrations, pg.schema)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    pg = target()
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection, pg.schema)
    else:
        asyncio.run(run_async_migrations(pg))


if context.is_offline_mode():
    raise SystemExit("satellites-es migrations run online only (they create a plpgsql function)")
run_migrations_online()
