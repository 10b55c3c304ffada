"""Small helpers shared by benchmark stages: a throwaway event log, timing, figures."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from satellites_es.config import EventLogConfig, PostgresConfig
from satellites_es.events import DataEvent
from satellites_es.migrate import upgrade
from satellites_es.pgpool import create_pool
from satellites_es.projections import Checkpoints
from satellites_es.store import EventStore
from satellites_es.testing.services import find_service_url, unique_name


@dataclass
class Log:
    """An event log in a schema of its own (created with the real migration)."""

    pg: PostgresConfig
    pool: asyncpg.Pool
    store: EventStore
    checkpoints: Checkpoints


@contextlib.asynccontextmanager
async def temp_log(prefix: str) -> AsyncIterator[Log]:
    """A fresh schema, migrated; dropped (with everything in it) on the way out."""
    fields = PostgresConfig._from_url(find_service_url("postgres"))
    pg = PostgresConfig(**fields, schema=unique_name(prefix))
    await upgrade(pg)
    pool = await create_pool(pg.dsn, min_size=1, max_size=4)  # as the layer makes it
    try:
        store = EventStore(pool, schema=pg.schema, config=EventLogConfig(), dsn=pg.dsn)
        yield Log(pg, pool, store, Checkpoints(pool, pg.schema))
    finally:
        try:
            await pool.execute(f'DROP SCHEMA IF EXISTS "{pg.schema}" CASCADE')
        finally:
            await pool.close()


async def settle(log: Log) -> None:
    """``VACUUM ANALYZE`` a freshly loaded log, as autovacuum would soon after: otherwise its
    run (it starts after ~20% of a table is new rows) lands in a measured round, on this
    2-core machine halving that round (seen: the first FAISS rebuild round at 23-28k events/s
    against 50-57k for the next ones)."""
    await log.pool.execute(f'VACUUM ANALYZE "{log.pg.schema}".events')


async def append_all(
    store: EventStore, events: Sequence[DataEvent], batch: int = 1000
) -> list[int]:
    """Append ``events`` in batches; returns each event's position (in the order given)."""
    positions: list[int] = []
    for start in range(0, len(events), batch):
        result = await store.append(events[start : start + batch])
        positions += [e.position or 0 for e in result.events]
    return positions


async def timed(action: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await action()
    return time.perf_counter() - started


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))])


def figure(project: float, raw: float, unit: str, goal: str, **extra: Any) -> dict[str, Any]:
    ratio = project / raw if raw else 1.0
    return {"project": project, "raw": raw, "ratio": ratio, "unit": unit, "goal": goal, **extra}


async def unlink_prefix(client: aioredis.Redis, prefix: str) -> None:
    """Remove every key under ``prefix``, 1,000 at a time (SCAN, then UNLINK)."""
    batch: list[Any] = []
    async for key in client.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await client.unlink(*batch)
            batch.clear()
    if batch:
        await client.unlink(*batch)
