"""The layer's pool (``pgpool.create_pool``): a connection the application used comes back reset
as asyncpg always did (settings, LISTEN, session advisory locks, cursors, an open transaction);
the event log's own calls hand theirs back without the reset query, and leave nothing behind."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import asyncpg
import pytest

from satellites_es.config import EventLogConfig, PostgresConfig
from satellites_es.events import DataEvent
from satellites_es.pgpool import Statements, create_pool, session_connection, statement_only
from satellites_es.store import EventStore
from tests.contract.support import cancelled_midway

RESET_QUERY_START = "SELECT pg_advisory_unlock_all();"


@pytest.fixture
async def single(migrated: PostgresConfig) -> AsyncIterator[asyncpg.Pool[asyncpg.Record]]:
    """A layer pool of exactly one connection: every acquire gets the same backend."""
    pool = await create_pool(migrated.dsn, min_size=1, max_size=1)
    yield pool
    await pool.close()


async def backend(pool: asyncpg.Pool[asyncpg.Record]) -> int:
    async with pool.acquire() as conn:
        return int(await conn.fetchval("SELECT pg_backend_pid()"))


async def last_query(dsn: str, pid: int) -> str:
    """What the pooled backend ran last, asked from a connection of its own."""
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(50):  # the state is published when the backend goes idle
            row = await conn.fetchrow(
                "SELECT state, query FROM pg_stat_activity WHERE pid = $1", pid
            )
            if row is not None and row["state"] == "idle":
                return str(row["query"])
            await asyncio.sleep(0.02)
        raise AssertionError(f"backend {pid} never went idle")
    finally:
        await conn.close()


async def test_a_connection_the_application_used_comes_back_reset(
    single: asyncpg.Pool[asyncpg.Record],
) -> None:
    async with single.acquire() as conn:
        await conn.execute("SET application_name TO 'dirty'")
        await conn.execute("LISTEN satellites_pool_test")
        await conn.execute("SELECT pg_advisory_lock(424242)")
        await conn.execute("BEGIN")
        await conn.execute("DECLARE kept CURSOR WITH HOLD FOR SELECT 1")
        await conn.execute("COMMIT")
        await conn.execute("BEGIN")  # and a transaction left open
    async with single.acquire() as conn:
        assert await conn.fetchval("SHOW application_name") != "dirty"
        assert await conn.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0
        held = (
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        assert await conn.fetchval(held) == 0
        assert await conn.fetchval("SELECT count(*) FROM pg_cursors WHERE name = 'kept'") == 0
        assert not conn.is_in_transaction()


async def test_the_logs_calls_skip_the_reset_and_the_applications_do_not(
    single: asyncpg.Pool[asyncpg.Record], migrated: PostgresConfig
) -> None:
    store = EventStore(single, schema=migrated.schema, config=EventLogConfig(), dsn=migrated.dsn)
    pid = await backend(single)
    assert (await last_query(migrated.dsn, pid)).startswith(RESET_QUERY_START)
    event = DataEvent(type="doc.added", resource="docs", key="a", payload={}, source="t")
    await store.append(event)  # autocommitted: the fast path, with its notify and xact lock
    assert "append_event_v" in await last_query(migrated.dsn, pid)  # no reset after it
    [[read]] = [page async for page in store.read()]
    assert read.id == event.id
    assert "FROM" in await last_query(migrated.dsn, pid)  # the read's query, again no reset
    await single.fetchval("SELECT 1")  # the application's own call is reset as before
    assert (await last_query(migrated.dsn, pid)).startswith(RESET_QUERY_START)
    # and the log's calls left nothing: no lock, no setting, no transaction
    async with single.acquire() as conn:
        held = (
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        assert await conn.fetchval(held) == 0
        assert await conn.fetchval("SHOW lock_timeout") == "0"
        assert not conn.is_in_transaction()


async def test_the_flag_is_what_skips_it(single: asyncpg.Pool[asyncpg.Record]) -> None:
    """``statement_only`` is a promise the caller makes: state set under it is not reset (which
    is why the layer keeps it to its own single statements)."""
    with statement_only():
        await single.execute("SET application_name TO 'kept'")
    assert await single.fetchval("SHOW application_name") == "kept"
    assert await single.fetchval("SHOW application_name") != "kept"  # the last call reset it


async def test_a_cancelled_statement_gives_back_a_usable_connection(
    single: asyncpg.Pool[asyncpg.Record],
) -> None:
    statements = Statements(single)
    call = asyncio.create_task(statements.fetchval("SELECT pg_sleep(30)"))
    await asyncio.sleep(0.2)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await asyncio.wait_for(statements.fetchval("SELECT 41 + 1"), timeout=5) == 42
    async with single.acquire() as conn:
        assert not conn.is_in_transaction()


async def test_a_pool_made_elsewhere_keeps_asyncpgs_reset(migrated: PostgresConfig) -> None:
    pool = await asyncpg.create_pool(migrated.dsn, min_size=1, max_size=1)
    try:
        with statement_only():  # ignored: this pool's reset is asyncpg's own
            await pool.execute("SET application_name TO 'kept'")
        assert await pool.fetchval("SHOW application_name") != "kept"
    finally:
        await pool.close()


async def test_a_session_connect_cancelled_at_any_point_leaves_no_error_and_no_connection(
    migrated: PostgresConfig,
) -> None:
    """A long-running part stopped while its own session connects (a relay restarted while its
    listener connects): the caller is cancelled at once, nothing is logged as an unretrieved
    error, and no backend is left behind, wherever in the handshake the cancel lands."""
    name = f"satellites-cancelled-{os.getpid()}"
    pool = await create_pool(
        migrated.dsn, min_size=0, max_size=1, server_settings={"application_name": name}
    )

    async def attempt() -> None:
        (await session_connection(pool)).terminate()  # not cancelled in time: not the case

    try:
        cancelled, errors = await cancelled_midway(attempt)
        async with asyncio.timeout(10):
            while await _backends(migrated.dsn, name):
                await asyncio.sleep(0.05)
    finally:
        await pool.close()
    assert cancelled >= 20, f"only {cancelled} connects were cancelled midway"
    assert errors == []


async def _backends(dsn: str, application_name: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                application_name,
            )
        )
    finally:
        await conn.close()
