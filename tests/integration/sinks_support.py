"""What the projection tests share: the test projection (items with a title, a number and a
vector), its events, and one fixture per sink (Redis, Elasticsearch, FAISS with a handler and
FAISS with ``VectorFields``), registered for the whole folder by ``conftest.py``."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from elasticsearch import AsyncElasticsearch

from satellites_es.config import FaissConfig
from satellites_es.events import DataEvent
from satellites_es.projections import (
    Checkpoints,
    Delete,
    Projection,
    Sink,
    Upsert,
    VectorFields,
)
from satellites_es.projections.es_sink import ElasticsearchSink
from satellites_es.projections.faiss_sink import FaissSink
from satellites_es.projections.redis_sink import RedisSink
from satellites_es.vectors import VectorIndex

SINKS = ("redis", "elasticsearch", "faiss", "faiss_fields")
DIM = 4


def _handler(kind: str) -> Callable[[DataEvent], Upsert | Delete | None]:
    def handle(event: DataEvent) -> Upsert | Delete | None:
        if event.type == "item.deleted":
            return Delete(event.key)
        p = event.payload
        if kind == "faiss":
            return Upsert(event.key, {"vector": p["vector"], "metadata": {"title": p["title"]}})
        return Upsert(event.key, {"title": p["title"], "n": p["n"]})

    return handle


#: _handler("faiss") as fields: a rebuild reads payloads and applies runs (projections/fields.py)
ITEM_FIELDS = VectorFields(vector="vector", metadata=("title",), deletes=("item.deleted",))


class FieldsFaissSink(FaissSink):
    """A FAISS sink whose tests project with :data:`ITEM_FIELDS` rather than the function."""


def kind_of(sink: Sink) -> str:
    return "faiss_fields" if isinstance(sink, FieldsFaissSink) else sink.kind


def make_projection(kind: str, name: str = "items") -> Projection:
    options: dict[str, Any] = {}
    if kind == "elasticsearch":
        options = {"mappings": {"properties": {"title": {"type": "text"}, "n": {"type": "long"}}}}
    if kind.startswith("faiss"):
        options = {"dimension": DIM, "metric": "l2"}
    handler = ITEM_FIELDS if kind == "faiss_fields" else _handler(kind)
    return Projection(
        name=name, version=1, sink=kind.removesuffix("_fields"),  # type: ignore[arg-type]
        event_types=("item.upserted", "item.deleted"), handler=handler, options=options,
    )  # fmt: skip


def item(key: str, n: int, *, deleted: bool = False) -> DataEvent:
    rng = random.Random(f"{key}:{n}")
    payload = {"title": f"item {key} number {n}", "n": n,
               "vector": [rng.uniform(-1, 1) for _ in range(DIM)]}  # fmt: skip
    return DataEvent(
        type="item.deleted" if deleted else "item.upserted", resource="items", key=key,
        payload={} if deleted else payload, source="test",
    )  # fmt: skip


@pytest.fixture
async def vectors(tmp_path: Path) -> AsyncIterator[VectorIndex]:
    index = VectorIndex(FaissConfig(index_path=tmp_path / "faiss", dimension=DIM))
    await index.open()
    yield index
    await index.close()


@pytest.fixture
async def es_client(es_url: str, test_id: str) -> AsyncIterator[AsyncElasticsearch]:
    client = AsyncElasticsearch(es_url)
    yield client
    try:  # destructive wildcards are refused (ES 8 default): delete by name
        found = await client.indices.get(index=f"{test_id}-*", allow_no_indices=True)
        for name in found.body:
            await client.indices.delete(index=name)
    finally:
        await client.close()


@pytest.fixture
async def redis_client(redis_url: str, redis_prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(params=SINKS)
def sink(
    request: pytest.FixtureRequest,
    redis_client: aioredis.Redis,
    es_client: AsyncElasticsearch,
    vectors: VectorIndex,
    redis_prefix: str,
    test_id: str,
) -> Sink:
    kind = request.param
    if kind == "redis":
        return RedisSink(redis_client, redis_prefix)
    if kind == "elasticsearch":
        return ElasticsearchSink(es_client, f"{test_id}-")
    return FieldsFaissSink(vectors) if kind == "faiss_fields" else FaissSink(vectors)


@pytest.fixture
def checkpoints(pool: asyncpg.Pool, migrated: Any) -> Checkpoints:
    return Checkpoints(pool, migrated.schema)
