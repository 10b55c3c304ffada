"""Reading what the verdict looks at (:class:`bench.soak.oracle.Evidence`) from the log, the
sinks, ``parked_events`` and the audit subscriber's record, once the run is over."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from bench.soak.catchup import active_version
from bench.soak.namespace import DIMENSION, Namespace
from bench.soak.oracle import Document, ParkedRow
from satellites_es.config import FaissConfig
from satellites_es.events import DataEvent
from satellites_es.projections import Checkpoints, Projection
from satellites_es.store import EventStore

Sinks = dict[str, Any]


async def read_log(store: EventStore) -> list[DataEvent]:
    events: list[DataEvent] = []
    async for batch in store.read(after=0, batch_size=5000):
        events += batch
    return events


async def read_parked(pool: asyncpg.Pool, ns: Namespace) -> list[ParkedRow]:
    rows = await pool.fetch(
        f'SELECT kind, name, version, position, key, error_type, status FROM "{ns.schema}".'
        "parked_events ORDER BY kind, name, version, position"
    )
    return [ParkedRow(**dict(row)) for row in rows]


class SinkClients:
    """The three sinks as this process reads them (directly, not through the proxies); an
    async context manager that opens and closes their clients."""

    def __init__(self, ns: Namespace) -> None:
        from elasticsearch import AsyncElasticsearch

        from satellites_es.vectors import VectorIndex

        self.ns = ns
        self.redis = aioredis.Redis.from_url(ns.redis_url)
        self.es = AsyncElasticsearch(ns.es_url, request_timeout=60)
        self.index = VectorIndex(FaissConfig(index_path=ns.faiss_dir, dimension=DIMENSION))

    async def __aenter__(self) -> Sinks:
        from satellites_es.projections.es_sink import ElasticsearchSink
        from satellites_es.projections.faiss_sink import FaissSink
        from satellites_es.projections.redis_sink import RedisSink

        await self.index.open()
        return {"entities": RedisSink(self.redis, self.ns.redis_prefix),
                "documents": ElasticsearchSink(self.es, self.ns.es_prefix),
                "embeddings": FaissSink(self.index)}  # fmt: skip

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.index.close()
        finally:
            await self.es.close()
            await self.redis.aclose()


async def dump_sinks(
    ns: Namespace, checkpoints: Checkpoints, projections: Mapping[str, Projection]
) -> tuple[dict[str, Mapping[str, Document | None]], int]:
    """Every sink's active version as ``{projection: {key: document}}``, and the position the
    FAISS snapshot holds (deleted vectors are absent there, not tombstones)."""
    out: dict[str, Mapping[str, Document | None]] = {}
    clients = SinkClients(ns)
    async with clients as sinks:
        for name, sink in sinks.items():
            version = await active_version(checkpoints, name) or projections[name].version
            out[name] = await sink.dump(projections[name], version)
        embeddings = projections["embeddings"]
        version = await active_version(checkpoints, "embeddings") or embeddings.version
        snapshot = clients.index.applied_position(embeddings.target(version)) or 0
    return out, snapshot


async def audit_sinks(
    ns: Namespace, pool: asyncpg.Pool, projections: Mapping[str, Projection]
) -> dict[str, Mapping[str, int]]:
    """The operator's check (:func:`satellites_es.audit.audit`) of every sink, beside the soak's
    own comparison: both must find the sinks equal to the log. Its drift counts by sink."""
    from satellites_es.audit import audit as audit_projection

    out: dict[str, Mapping[str, int]] = {}
    async with SinkClients(ns) as sinks:
        for name, sink in sinks.items():
            report = await audit_projection(projections[name], sink, pool, ns.schema)
            out[name] = dict(report.counts)
    return out
