"""Alembic: ``upgrade head`` produces exactly the metadata in ``satellites_es.schema``;
upgrading twice changes nothing; ``downgrade base`` leaves no table; the CLI works too."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from satellites_es.config import PostgresConfig
from satellites_es.migrate import connect_engine, downgrade, ensure_database, upgrade
from satellites_es.schema import metadata
from satellites_es.testing.services import unique_name

ROOT = Path(__file__).resolve().parents[2]


def _same_default(context: Any, inspected_column: Any, metadata_column: Any,
                  inspected_default: str | None, metadata_default: Any,
                  rendered_metadata_default: str | None) -> bool | None:  # fmt: skip
    """``events.position``'s default as Postgres prints it (with the schema on the search path,
    as here), which Alembic's text comparison does not match to the metadata's spelling of the
    same expression. Alembic's own comparison for every other column (None)."""
    if (metadata_column.table.name, metadata_column.name) != ("events", "position"):
        return None
    found = " ".join((inspected_default or "").split())
    expected = ("(- nextval( CASE WHEN (pg_current_xact_id() IS NOT NULL) THEN "
                "'events_pending_seq'::regclass "
                "ELSE NULL::regclass END))")  # fmt: skip
    return found != expected


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={
            "compare_type": True,
            "compare_server_default": _same_default,
            "include_name": lambda name, kind, parent: name != "alembic_version",
        },
    )
    return list(compare_metadata(context, metadata))


async def diff(pg: PostgresConfig) -> list[Any]:
    engine = await connect_engine(pg)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_diff)
    finally:
        await engine.dispose()


async def catalog(pg: PostgresConfig) -> tuple[set[str], set[str], list[str]]:
    conn = await asyncpg.connect(pg.dsn)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = $1", pg.schema
        )
        functions = await conn.fetch(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = $1", pg.schema
        )  # fmt: skip
        versions = await conn.fetch(f'SELECT version_num FROM "{pg.schema}".alembic_version')
    finally:
        await conn.close()
    return (
        {r["tablename"] for r in tables},
        {r["proname"] for r in functions},
        [r["version_num"] for r in versions],
    )


async def test_upgrade_head_is_exactly_the_metadata(pg_config: PostgresConfig) -> None:
    await upgrade(pg_config)
    assert await diff(pg_config) == []
    tables, functions, versions = await catalog(pg_config)
    assert tables == {*metadata.tables, "alembic_version"}
    assert functions == {"append_events_v4", "append_event_v4", "sequence_events_v1",
                         "sequence_pending_v1", "sequenced_positions_v1"}  # fmt: skip
    assert versions == ["0007"]


async def test_upgrade_is_idempotent_and_downgrade_removes_everything(
    pg_config: PostgresConfig,
) -> None:
    await upgrade(pg_config)
    await upgrade(pg_config)
    assert (await catalog(pg_config))[2] == ["0007"]
    await downgrade(pg_config)
    tables, functions, versions = await catalog(pg_config)
    assert (tables, functions, versions) == ({"alembic_version"}, set(), [])
    assert len(await diff(pg_config)) == len(metadata.tables)  # the check sees missing tables
    await upgrade(pg_config)
    assert await diff(pg_config) == []


async def test_concurrent_upgrades_of_one_schema(pg_config: PostgresConfig) -> None:
    await asyncio.gather(upgrade(pg_config), upgrade(pg_config))
    assert (await catalog(pg_config))[2] == ["0007"]


async def test_alembic_command_line(postgres_url: str, pg_config: PostgresConfig) -> None:
    cmd = [sys.executable, "-m", "alembic", "-x", f"url={postgres_url}", "-x",
           f"schema={pg_config.schema}", "upgrade", "head"]  # fmt: skip
    done = await asyncio.to_thread(
        subprocess.run, cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert (await catalog(pg_config))[2] == ["0007"]
    assert await diff(pg_config) == []


async def test_ensure_database_creates_it_once(pg_config: PostgresConfig) -> None:
    name = unique_name("t_db")
    target = PostgresConfig(**{**vars(pg_config), "database": name})
    try:
        assert await ensure_database(target) is True
        assert await ensure_database(target) is False
        await upgrade(target)
        assert await diff(target) == []
    finally:
        admin = await asyncpg.connect(
            PostgresConfig(**{**vars(pg_config), "database": "postgres"}).dsn
        )
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def test_alembic_with_only_a_schema_migrates_the_configured_database(
    postgres_url: str, pg_config: PostgresConfig
) -> None:
    """``alembic -x schema=NAME upgrade head`` once migrated the default database
    ``satellites``, ignoring ``SATELLITES_POSTGRES_URL``."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("SATELLITES_")}
    env["SATELLITES_POSTGRES_URL"] = postgres_url
    cmd = [sys.executable, "-m", "alembic", "-x", f"schema={pg_config.schema}", "upgrade", "head"]
    done = await asyncio.to_thread(subprocess.run, cmd, cwd=ROOT, env=env, capture_output=True,
                                   text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert pg_config.database != "satellites"  # the configured one, not the default
    assert (await catalog(pg_config))[2] == ["0007"]


async def test_a_log_written_under_0002_migrates_forward_and_keeps_its_positions(
    pg_config: PostgresConfig,
) -> None:
    """A log made by the v1 functions (0002: positions under LOCK TABLE) is upgraded in place:
    stored events keep their positions, new appends continue densely after them (in a
    producer's transaction too), and a downgrade back to 0003 sequences what is pending."""
    from satellites_es.config import EventLogConfig
    from satellites_es.events import DataEvent
    from satellites_es.store import EventStore

    await upgrade(pg_config, "0002")
    conn = await asyncpg.connect(pg_config.dsn)
    try:
        await conn.execute(f'SET search_path TO "{pg_config.schema}"')
        for i in range(3):
            await conn.fetch(
                "SELECT * FROM append_event_v1($1, 'docs', $2, 'doc.put', 'old', '{}'::jsonb,"
                " now(), NULL, 'c')", f"old-{i}", f"k{i % 2}",
            )  # fmt: skip
        await upgrade(pg_config)
        pool = await asyncpg.create_pool(pg_config.dsn, min_size=1, max_size=2)
        try:
            store = EventStore(pool, schema=pg_config.schema, config=EventLogConfig())
            event = DataEvent(type="doc.put", resource="docs", key="k0", payload={}, source="new")
            assert (await store.append(event)).last_position == 4
            async with pool.acquire() as producer, producer.transaction():
                held = DataEvent(type="doc.put", resource="docs", key="k1", payload={}, source="t")
                pending = await store.append(held, conn=producer)
            assert (await store.sequenced(pending)).last_position == 5
            seen = [(e.id, e.position, e.version) async for b in store.read() for e in b]
            assert [p for _, p, _ in seen] == [1, 2, 3, 4, 5]
            assert seen[3] == (event.id, 4, 3) and seen[4][2] == 2  # k0: v1, v2 then 3; k1: 2
            async with pool.acquire() as producer, producer.transaction():  # left pending
                later = DataEvent(type="doc.put", resource="docs", key="k9", payload={}, source="t")
                await store.append(later, conn=producer)
        finally:
            await pool.close()
        await downgrade(pg_config, "0003")  # numbers the pending event first
        assert await conn.fetchval("SELECT count(*) FROM events WHERE position < 0") == 0
        assert await conn.fetchval("SELECT max(position) FROM events") == 6
    finally:
        await conn.close()


async def test_a_log_written_under_0004_gains_metadata_without_a_rewritten_row(
    pg_config: PostgresConfig,
) -> None:
    """0005 adds the metadata column without touching stored rows (same columns, same bytes,
    read back with empty metadata), and a downgrade to 0004 brings the v2 functions back."""
    from satellites_es.config import EventLogConfig
    from satellites_es.envelope import EMPTY, EventMetadata
    from satellites_es.events import DataEvent
    from satellites_es.store import EventStore

    columns = "position, id, resource, key, version, type, source, payload, timestamp, recorded_at"
    checksum = f"SELECT md5(string_agg(row({columns})::text, ',' ORDER BY position)) FROM events"
    await upgrade(pg_config, "0004")
    conn = await asyncpg.connect(pg_config.dsn)
    try:
        await conn.execute(f'SET search_path TO "{pg_config.schema}"')
        for i in range(3):
            await conn.fetch(
                "SELECT * FROM append_event_v2($1, 'docs', 'k', 'doc.put', 'old', '{}'::jsonb,"
                " now(), NULL, 'c', true)", f"old-{i}",
            )  # fmt: skip
        before = await conn.fetchval(checksum)
        await upgrade(pg_config)
        assert await conn.fetchval(checksum) == before
        pool = await asyncpg.create_pool(pg_config.dsn, min_size=1, max_size=2)
        try:
            store = EventStore(pool, schema=pg_config.schema, config=EventLogConfig())
            assert [e.metadata for b in [await store.read_stream("docs", "k")] for e in b] == [
                EMPTY
            ] * 3  # fmt: skip
            new = DataEvent(type="doc.put", resource="docs", key="k", payload={}, source="new",
                            metadata=EventMetadata(actor="ann"))  # fmt: skip
            assert (await store.append(new)).last_position == 4
        finally:
            await pool.close()
        kept = await conn.fetchval(checksum)
        await downgrade(pg_config, "0004")  # drops the column (and the metadata written since)
        assert await conn.fetchval(checksum) == kept
        await conn.fetch(
            "SELECT * FROM append_event_v2('again', 'docs', 'k', 'doc.put', 'old', '{}'::jsonb,"
            " now(), NULL, 'c', true)"
        )
        assert await conn.fetchval("SELECT max(position) FROM events") == 5
    finally:
        await conn.close()
