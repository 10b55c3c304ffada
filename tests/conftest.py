"""Fixtures that find the real services and isolate every test from the others.

Postgres, Redis and RabbitMQ: a URL from the environment first, then the local service, then
testcontainers (``satellites_es.testing.services.find_service_url``). Elasticsearch: ``SATELLITES_ES_URL``
when set, else the noida-db emulator started once for the session.

Isolation: each test gets its own Postgres schema, Redis key prefix, RabbitMQ exchange (queues are
named after it), Elasticsearch index prefix and FAISS directory, all removed afterwards; the
suite passes when run twice in a row and in any order.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from satellites_es.config import DataLayerConfig
from satellites_es.testing.services import elasticsearch_url, find_service_url, unique_name

TEST_PREFIX = "t_"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    return find_service_url("postgres")


@pytest.fixture(scope="session")
def redis_url() -> str:
    return find_service_url("redis")


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    url = find_service_url("rabbitmq")
    yield url
    _delete_test_queues()


@pytest.fixture(scope="session")
def es_url() -> Iterator[str]:
    with elasticsearch_url() as url:
        yield url


#: The names this session handed out: its queues are removed at the end whatever their state.
_SESSION_IDS: set[str] = set()


@pytest.fixture
def test_id() -> str:
    name = unique_name("t")
    _SESSION_IDS.add(name)
    return name


@pytest.fixture
async def pg_schema(postgres_url: str, test_id: str) -> AsyncIterator[str]:
    """A schema of this test's own, dropped afterwards."""
    yield test_id
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{test_id}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def redis_prefix(redis_url: str, test_id: str) -> AsyncIterator[str]:
    prefix = f"{test_id}:"
    yield prefix
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def env_for(
    *,
    postgres_url: str,
    redis_url: str,
    amqp_url: str | None,
    es_url: str | None,
    schema: str,
    test_id: str,
    faiss_path: Path,
) -> dict[str, str]:
    """The ``SATELLITES_*`` environment a test's DataLayer is configured from."""
    env = {
        "SATELLITES_POSTGRES_URL": postgres_url,
        "SATELLITES_POSTGRES_SCHEMA": schema,
        "SATELLITES_POSTGRES_MIN_CONNECTIONS": "1",
        "SATELLITES_POSTGRES_MAX_CONNECTIONS": "5",
        "SATELLITES_REDIS_URL": redis_url,
        "SATELLITES_REDIS_KEY_PREFIX": f"{test_id}:",
        "SATELLITES_FAISS_INDEX_PATH": str(faiss_path),
        "SATELLITES_FAISS_DIMENSION": "8",
        "SATELLITES_RABBITMQ_EXCHANGE": f"{test_id}.events",
        "SATELLITES_ELASTICSEARCH_INDEX_PREFIX": f"{test_id}-",
        "SATELLITES_CONNECT_TIMEOUT": "5",
    }
    if amqp_url:
        env["SATELLITES_RABBITMQ_URL"] = amqp_url
    else:
        env["SATELLITES_RABBITMQ_ENABLED"] = "false"
    if es_url:
        env["SATELLITES_ELASTICSEARCH_URL"] = es_url
    else:
        env["SATELLITES_ELASTICSEARCH_ENABLED"] = "false"
    return env


@pytest.fixture
def config_env(
    postgres_url: str,
    redis_url: str,
    amqp_url: str,
    pg_schema: str,
    redis_prefix: str,
    test_id: str,
    tmp_path: Path,
) -> dict[str, str]:
    """The environment for a DataLayer on Postgres, Redis and RabbitMQ (no Elasticsearch)."""
    return env_for(
        postgres_url=postgres_url,
        redis_url=redis_url,
        amqp_url=amqp_url,
        es_url=None,
        schema=pg_schema,
        test_id=test_id,
        faiss_path=tmp_path / "faiss",
    )


@pytest.fixture
def config(config_env: dict[str, str]) -> DataLayerConfig:
    return DataLayerConfig.from_env(config_env)


@pytest.fixture
def config_with_es(config_env: dict[str, str], es_url: str) -> DataLayerConfig:
    return DataLayerConfig.from_env(
        {
            **config_env,
            "SATELLITES_ELASTICSEARCH_URL": es_url,
            "SATELLITES_ELASTICSEARCH_ENABLED": "true",
        }
    )


def _delete_test_queues() -> None:
    """Remove the queues and exchanges tests declared on the local broker (best effort): this
    session's own, and other test queues only when nothing consumes from them (another session
    running on the same broker keeps its live queues and its exchanges)."""
    if not shutil.which("rabbitmqctl"):
        return
    for kind, columns in (("queues", ["name", "consumers"]), ("exchanges", ["name"])):
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            out = subprocess.run(
                ["rabbitmqctl", "-q", f"list_{kind}", *columns],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            ).stdout
            names = [row[0] for row in (line.split() for line in out.splitlines())
                     if row and _ours(row[0], row[1:])]  # fmt: skip
            if names:
                _delete_amqp(kind, names)


def _ours(name: str, consumers: list[str]) -> bool:
    if not name.startswith(TEST_PREFIX):
        return False
    if name.split(".", 1)[0] in _SESSION_IDS:
        return True
    return bool(consumers) and consumers[0] == "0"  # another's queue nobody reads; not exchanges


def _delete_amqp(kind: str, names: list[str]) -> None:
    import asyncio

    import aio_pika

    async def go() -> None:
        conn = await aio_pika.connect(find_service_url("rabbitmq"))
        async with conn:
            ch = await conn.channel()
            for n in names:
                with contextlib.suppress(Exception):
                    if kind == "queues":
                        await ch.queue_delete(n)
                    else:
                        await ch.exchange_delete(n)

    asyncio.run(go())
