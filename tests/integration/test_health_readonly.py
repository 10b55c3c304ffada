"""``satellites-es health`` only looks: it creates, migrates, elects and publishes nothing, and
answers within its deadline however many backends are away."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from satellites_es.config import DataLayerConfig, EventLogConfig
from satellites_es.events import DataEvent
from satellites_es.healthcheck import check
from satellites_es.migrate import upgrade
from satellites_es.store import EventStore
from satellites_es.testing.services import free_port

from .test_cli_health import _run


async def _catalogue(url: str, schema: str) -> tuple[bool, int]:
    """Whether ``schema`` exists, and how many relations it holds. (The database is shared with
    other test runs, so only the test's own schema is compared.)"""
    conn = await asyncpg.connect(url)
    try:
        exists = await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema)
        relations = await conn.fetchval(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = $1", schema)  # fmt: skip
    finally:
        await conn.close()
    return bool(exists), int(relations)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung server, not a refused one)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def test_health_on_a_fresh_schema_creates_nothing(
    config_env: dict[str, str], postgres_url: str, tmp_path: Path
) -> None:
    before = asyncio.run(_catalogue(postgres_url, config_env["SATELLITES_POSTGRES_SCHEMA"]))
    assert before == (False, 0)
    result = _run(config_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "not migrated" in result.stdout
    assert asyncio.run(_catalogue(postgres_url, config_env["SATELLITES_POSTGRES_SCHEMA"])) == before
    assert not (tmp_path / "faiss").exists()  # the FAISS directory is not created either


async def test_health_of_a_migrated_log_reads_cursors_without_changing_them(
    config: DataLayerConfig,
) -> None:
    await upgrade(config.postgres)
    conn = await asyncpg.connect(config.postgres.dsn)
    schema = config.postgres.schema
    try:
        await conn.execute(f'INSERT INTO "{schema}".relay_cursors (name, position) VALUES ($1, 0)',
                           "relay")  # fmt: skip
        store = EventStore(conn, schema=schema, config=EventLogConfig())  # type: ignore[arg-type]
        async with conn.transaction():  # committed in a producer's transaction: pending
            await store.append(DataEvent(type="t", resource="r", key="k", payload={}, source="s"),
                               conn=conn)  # fmt: skip
        before = await conn.fetch(f'SELECT * FROM "{schema}".relay_cursors')
        health = await check(config.replace(elasticsearch=_off(config.elasticsearch)))
        after = await conn.fetch(f'SELECT * FROM "{schema}".relay_cursors')
        pending = await conn.fetchval(f'SELECT count(*) FROM "{schema}".events WHERE position < 0')
    finally:
        await conn.close()
    assert health.ok, health.to_dict()
    assert health.details["relay"].details == {"head": 0, "pending": 1, "cursor": 0, "lag": 0}
    assert [dict(r) for r in after] == [dict(r) for r in before]
    assert pending == 1  # the health check did not sequence it


def _off(section: object) -> object:
    import dataclasses

    return dataclasses.replace(section, enabled=False)  # type: ignore[type-var]


@pytest.mark.parametrize(
    ("backend", "variable"),
    [("redis", "SATELLITES_REDIS_PORT"), ("rabbitmq", "SATELLITES_RABBITMQ_PORT")],
)
def test_an_unreachable_backend_is_named_within_five_seconds(
    config_env: dict[str, str], postgres_url: str, backend: str, variable: str
) -> None:
    before = asyncio.run(_catalogue(postgres_url, config_env["SATELLITES_POSTGRES_SCHEMA"]))
    started = time.monotonic()
    result = _run({**config_env, variable: str(free_port())})
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    assert elapsed < 5.0, elapsed
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"satellites-es: unhealthy: {backend} (")
    assert asyncio.run(_catalogue(postgres_url, config_env["SATELLITES_POSTGRES_SCHEMA"])) == before


async def test_a_hung_backend_costs_one_deadline_not_one_each(
    config: DataLayerConfig, silent_port: int
) -> None:
    import dataclasses

    hung = config.replace(
        redis=dataclasses.replace(config.redis, port=silent_port),
        rabbitmq=dataclasses.replace(config.rabbitmq, port=silent_port),
        elasticsearch=dataclasses.replace(config.elasticsearch, enabled=False),
    )
    started = time.monotonic()
    health = await check(hung, timeout=2.0)
    elapsed = time.monotonic() - started
    assert elapsed < 3.0, elapsed  # both at once, within the one deadline
    assert health.details["redis"].status == "down"
    assert health.details["rabbitmq"].status == "down"
    assert health.details["postgres"].status == "ok"
