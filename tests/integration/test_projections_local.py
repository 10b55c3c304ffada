"""FAISS is a local sink: a serving process loads its snapshot, replays the log from the
snapshot's position, then follows the log; and any caller can wait to read its own writes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from satellites_es.config import FaissConfig
from satellites_es.errors import ProjectionError
from satellites_es.projections import Checkpoints, Projector, ensure_active, follow_active
from satellites_es.projections.faiss_sink import FaissSink
from satellites_es.store import EventStore
from satellites_es.vectors import VectorIndex

from .test_projections import DIM, append_items, item, make_projection


@pytest.fixture
def checkpoints(pool: asyncpg.Pool, migrated: Any) -> Checkpoints:
    return Checkpoints(pool, migrated.schema)


async def test_serving_process_resumes_from_its_snapshot(
    store: EventStore, checkpoints: Checkpoints, tmp_path: Path
) -> None:
    p = make_projection("faiss")
    cfg = FaissConfig(index_path=tmp_path / "faiss", dimension=DIM)
    await append_items(store, keys=40, rounds=5)
    async with VectorIndex(cfg) as first:
        sink = FaissSink(first)
        await ensure_active(p, sink, checkpoints)
        projector = Projector(p, sink, store, checkpoints)
        await projector.catch_up()
        await projector.flush()  # the snapshot, with its applied position
        snapshot_at = first.applied_position(p.target(1))
        expected_before = await sink.dump(p, 1)
    assert snapshot_at == await store.head()
    await store.append([item(f"k{k}", 99) for k in range(10)])  # after the snapshot

    async with VectorIndex(cfg) as second:  # a new serving process
        sink = FaissSink(second)
        assert await sink.local_checkpoint(p, 1) == snapshot_at
        assert {k: v for k, v in (await sink.dump(p, 1)).items()} == expected_before
        result = await Projector(p, sink, store, checkpoints).catch_up()
        assert result.events == 10  # only what came after the snapshot was read
        assert (await sink.dump(p, 1))["k3"]["metadata"]["title"] == "item k3 number 99"


async def test_follow_active_serves_queries_and_read_your_writes(
    store: EventStore, checkpoints: Checkpoints, tmp_path: Path
) -> None:
    p = make_projection("faiss")
    async with VectorIndex(FaissConfig(index_path=tmp_path / "f", dimension=DIM)) as vectors:
        stop = asyncio.Event()
        follower = asyncio.create_task(
            follow_active(p, FaissSink(vectors), store, checkpoints, stop=stop, poll_interval=5.0)
        )
        try:
            appended = await store.append([item("fresh", 1)])
            # NOTIFY wakes the follower well before its 5 s poll
            await checkpoints.wait_for("items", appended.last_position, timeout=3.0)
            hits = await vectors.query("items", item("fresh", 1).payload["vector"], top_k=1)
            assert hits[0].id == "fresh"  # the alias points at the active version
            with pytest.raises(ProjectionError, match="did not reach"):
                await checkpoints.wait_for("items", appended.last_position + 1000, timeout=0.3)
        finally:
            stop.set()
            await asyncio.wait_for(follower, timeout=10)


async def test_follower_survives_terminated_postgres_sessions(
    migrated: Any, redis_url: str, redis_prefix: str, test_id: str, pool: asyncpg.Pool
) -> None:
    """pg_terminate_backend of every session the follower holds: it retries and catches up."""
    import dataclasses

    import redis.asyncio as aioredis

    from satellites_es.config import EventLogConfig
    from satellites_es.projections.redis_sink import RedisSink

    own = dataclasses.replace(migrated, application_name=test_id)
    own_pool = await asyncpg.create_pool(own.dsn, min_size=1, max_size=4)
    client = aioredis.Redis.from_url(redis_url)
    store = EventStore(own_pool, schema=own.schema, config=EventLogConfig(), dsn=own.dsn)
    checkpoints = Checkpoints(own_pool, own.schema)
    p = make_projection("redis")
    stop = asyncio.Event()
    follower = asyncio.create_task(
        follow_active(p, RedisSink(client, redis_prefix), store, checkpoints, stop=stop)
    )
    watcher = Checkpoints(pool, migrated.schema)  # on sessions the fault does not touch
    try:
        first = await EventStore(pool, schema=own.schema, config=EventLogConfig()).append(
            [item(f"k{i}", 1) for i in range(20)]
        )
        await watcher.wait_for("items", first.last_position, timeout=10)
        killed = await pool.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1",
            test_id,
        )
        assert killed >= 2  # the pool's sessions and the NOTIFY listener
        second = await EventStore(pool, schema=own.schema, config=EventLogConfig()).append(
            [item(f"k{i}", 2) for i in range(20)]
        )
        await watcher.wait_for("items", second.last_position, timeout=20)
        assert not follower.done()
    finally:
        stop.set()
        await asyncio.wait_for(follower, timeout=15)
        await own_pool.close()
        await client.aclose()
