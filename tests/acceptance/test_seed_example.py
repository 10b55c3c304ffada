"""The seed's usage example, literally: subscribe after ``start()``, publish, stop.

Only the import path and the configuration are adapted (and the names the example leaves
undefined get values). It runs on a broker where none of its queues exist yet (the test's own
exchange), with the RabbitMQ bus and with the in-process one, and the subscriber must have seen
the event by the time ``stop()`` returns.
"""

from __future__ import annotations

import dataclasses
import subprocess
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis
from elasticsearch import AsyncElasticsearch

from satellites_es import DataEvent, DataLayer, DataLayerConfig


async def _seed_example(config: DataLayerConfig, user_id: int) -> None:
    name = "ada"
    doc_id = f"doc-{uuid.uuid4().hex[:8]}"
    embedding_vector = [0.5] * config.faiss.dimension

    # --- the seed's "Usage Example", from here on verbatim -------------------------------
    # Initialize
    data = DataLayer(config)
    await data.start()

    # Subscribe to events
    async def on_document_indexed(event: DataEvent):  # type: ignore[no-untyped-def]
        print(f"Document {event.key} indexed")

    data.events.subscribe("document.indexed", on_document_indexed)

    # Use native APIs
    await data.redis.set("session:123", b"user_data")
    await data.postgres.execute("INSERT INTO users (id, name) VALUES ($1, $2)", user_id, name)
    await data.elasticsearch.index(index="documents", id=doc_id, document={"text": "..."})
    await data.vectors.upsert("embeddings", doc_id, embedding_vector, {"source": "openai"})

    # Publish events after writes
    await data.events.publish(DataEvent(
        type="document.indexed",
        resource="documents",
        key=doc_id,
        payload={"text": "..."},
        source="elasticsearch"
    ))  # fmt: skip

    # Shutdown
    await data.stop()
    # --- end of the seed's example -------------------------------------------------------
    print(f"expected {doc_id}")


def _our_queues(exchange: str) -> list[str]:
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name"], capture_output=True, text=True,
        timeout=60, check=True,
    ).stdout  # fmt: skip
    return [n for n in out.split() if n.startswith(f"{exchange}.")]


@pytest.fixture
async def users_table(
    config_with_es: DataLayerConfig, redis_url: str
) -> AsyncIterator[DataLayerConfig]:
    """The table the example inserts into, in the test's own schema (its setup, not its code);
    afterwards the Redis key and the index the example writes are removed."""
    pg = config_with_es.postgres
    conn = await asyncpg.connect(pg.dsn)
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{pg.schema}"')
        await conn.execute(f'CREATE TABLE "{pg.schema}".users (id int PRIMARY KEY, name text)')
    finally:
        await conn.close()
    yield config_with_es
    client = aioredis.Redis.from_url(redis_url)
    await client.delete("session:123")
    await client.aclose()
    es = AsyncElasticsearch(list(config_with_es.elasticsearch.hosts))
    await es.options(ignore_status=404).indices.delete(index="documents")
    await es.close()


@pytest.mark.parametrize("bus", ["rabbitmq", "in-process"])
async def test_the_seed_usage_example_as_written(
    users_table: DataLayerConfig, bus: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = users_table
    if bus == "in-process":
        config = config.replace(rabbitmq=dataclasses.replace(config.rabbitmq, enabled=False))
    else:
        assert _our_queues(config.rabbitmq.exchange) == [], "the broker is not fresh for us"
    for run in range(2):  # the first run declares the queues; the second finds them
        await _seed_example(config, user_id=run)
        out = capsys.readouterr().out.splitlines()
        expected = out[-1].removeprefix("expected ")
        assert out[:-1] == [f"Document {expected} indexed"], (run, out)
    if bus == "rabbitmq":
        assert all(q.endswith((".p0", ".p1", ".p2", ".p3", ".dlq")) for q in _our_queues(
            config.rabbitmq.exchange))  # fmt: skip
