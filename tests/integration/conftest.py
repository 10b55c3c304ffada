"""Fixtures for the event log tests: a migrated schema of the test's own, a pool, a store."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from satellites_es.config import DataLayerConfig, EventLogConfig, PostgresConfig, RabbitMQConfig
from satellites_es.events import DataEvent
from satellites_es.migrate import upgrade
from satellites_es.pgpool import create_pool
from satellites_es.store import EventStore
from tests.contract.support import delete_topology

# the sink fixtures of the projection tests (one per sink kind), for every module here
from tests.integration.sinks_support import (  # noqa: F401
    checkpoints,
    es_client,
    redis_client,
    sink,
    vectors,
)
from tests.replica_support import s3  # noqa: F401  (the replica tests' S3 server)

EventFactory = Callable[..., DataEvent]


@pytest.fixture
def pg_config(postgres_url: str, pg_schema: str) -> PostgresConfig:
    parsed = DataLayerConfig.from_env({"SATELLITES_POSTGRES_URL": postgres_url}).postgres
    return dataclasses.replace(parsed, schema=pg_schema, min_connections=1, max_connections=12)


@pytest.fixture
async def migrated(pg_config: PostgresConfig) -> PostgresConfig:
    await upgrade(pg_config)
    return pg_config


@pytest.fixture
async def pool(migrated: PostgresConfig) -> AsyncIterator[asyncpg.Pool[asyncpg.Record]]:
    p = await create_pool(migrated.dsn, min_size=1, max_size=12)  # as the layer makes it
    yield p
    await p.close()


@pytest.fixture
def log_config() -> EventLogConfig:
    return EventLogConfig(max_payload_bytes=4096)


@pytest.fixture
def store(
    pool: asyncpg.Pool[asyncpg.Record], migrated: PostgresConfig, log_config: EventLogConfig
) -> EventStore:
    return EventStore(pool, schema=migrated.schema, config=log_config, dsn=migrated.dsn)


@pytest.fixture
def make_event() -> EventFactory:
    counter = itertools.count(1)

    def make(key: str = "k1", resource: str = "users", **fields: Any) -> DataEvent:
        n = next(counter)
        defaults: dict[str, Any] = {"type": "user.updated", "source": "test", "payload": {"n": n}}
        return DataEvent(resource=resource, key=key, **{**defaults, **fields})

    return make


@pytest.fixture
async def cleanup(amqp_url: str, rabbit: RabbitMQConfig) -> AsyncIterator[list[str]]:
    """Consumer groups a test names here lose their queues, and ``rabbit``'s exchange goes,
    at the end (``rabbit``: the module's own RabbitMQ config fixture)."""
    groups: list[str] = []
    yield groups
    await delete_topology(amqp_url, rabbit.exchange, groups, rabbit.partitions)
