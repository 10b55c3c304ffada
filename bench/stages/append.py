"""Append benchmark: the event log against raw asyncpg on the same rows, in the same run.

* ``batched_append``: events/s (median batch time) appending batches of 500 with ``append`` (lock,
  dedupe, versions, notify, one round trip) against ``executemany`` of the same rows into an
  equivalent plain table (bigserial, same columns and unique constraints, versions precomputed).
* ``single_append_latency``: p50 of one event appended in its own transaction against one
  autocommit ``INSERT``.

Rounds alternate between the two sides so that drift on a shared machine hits both. Runs in a
throwaway schema that it creates (with the real migration) and drops.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from satellites_es.config import EventLogConfig, PostgresConfig
from satellites_es.events import DataEvent
from satellites_es.migrate import upgrade
from satellites_es.store import EventStore
from satellites_es.testing import find_service_url, unique_name

BATCH = 500
_round = itertools.count()

RAW_TABLE = """
CREATE TABLE raw_events (
    position bigserial PRIMARY KEY, id text NOT NULL UNIQUE, resource text NOT NULL,
    key text NOT NULL, version integer NOT NULL, type text NOT NULL, source text NOT NULL,
    payload jsonb NOT NULL, "timestamp" timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(), UNIQUE (resource, key, version)
)"""
RAW_INSERT = """INSERT INTO raw_events (id, resource, key, version, type, source, payload,
"timestamp") VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8)"""


def _events(n: int, tag: str) -> list[DataEvent]:
    tag = f"{tag}-{next(_round)}"
    return [
        DataEvent(
            type="document.indexed", resource="documents", key=f"{tag}-{i % 200}",
            payload={"title": f"doc {i}", "words": 120 + i % 50, "tags": ["a", "b"]},
            source="bench",
        )
        for i in range(n)
    ]  # fmt: skip


def _rows(events: Sequence[DataEvent], versions: dict[str, int]) -> list[tuple[Any, ...]]:
    rows = []
    for e in events:
        versions[e.key] = versions.get(e.key, 0) + 1
        rows.append((e.id, e.resource, e.key, versions[e.key], e.type, e.source,
                     json.dumps(e.payload), e.timestamp))  # fmt: skip
    return rows


async def _timed(action: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await action()
    return time.perf_counter() - started


async def _batched(store: EventStore, pool: asyncpg.Pool, total: int) -> tuple[float, float]:
    """Events/s from the median batch time of each side (robust to a busy neighbour)."""
    project: list[float] = []
    raw: list[float] = []
    versions: dict[str, int] = {}
    for r in range(total // BATCH):
        ours, theirs = _events(BATCH, f"p{r}"), _events(BATCH, f"r{r}")
        project.append(await _timed(lambda: store.append(ours)))  # noqa: B023 - awaited at once
        raw.append(await _timed(lambda: pool.executemany(RAW_INSERT, _rows(theirs, versions))))  # noqa: B023
    return BATCH / statistics.median(project), BATCH / statistics.median(raw)


async def _single(store: EventStore, pool: asyncpg.Pool, n: int) -> tuple[float, float]:
    project: list[float] = []
    raw: list[float] = []
    versions: dict[str, int] = {}
    for ours, theirs in zip(_events(n, "sp"), _events(n, "sr"), strict=True):
        project.append(await _timed(lambda: store.append(ours)))  # noqa: B023
        [row] = _rows([theirs], versions)
        raw.append(await _timed(lambda: pool.execute(RAW_INSERT, *row)))  # noqa: B023
    return statistics.median(project) * 1000, statistics.median(raw) * 1000


def _figure(project: float, raw: float, unit: str, goal: str) -> dict[str, Any]:
    return {"project": project, "raw": raw, "ratio": project / raw, "unit": unit, "goal": goal}


async def run(quick: bool) -> dict[str, dict[str, Any]]:
    fields = PostgresConfig._from_url(find_service_url("postgres"))
    pg = PostgresConfig(**fields, schema=unique_name("bench_append"))
    await upgrade(pg)
    pool = await asyncpg.create_pool(
        pg.dsn, min_size=1, max_size=2, server_settings={"search_path": pg.schema}
    )
    try:
        await pool.execute(RAW_TABLE)
        store = EventStore(pool, schema=pg.schema, config=EventLogConfig(), dsn=pg.dsn)
        await _batched(store, pool, BATCH)  # warm up: prepared statements, caches
        await _single(store, pool, 50)
        p_rate, r_rate = await _batched(store, pool, 10_000 if quick else 50_000)
        p_ms, r_ms = await _single(store, pool, 500 if quick else 3000)
    finally:
        await pool.execute(f'DROP SCHEMA "{pg.schema}" CASCADE')
        await pool.close()
    return {
        "batched_append": _figure(p_rate, r_rate, "events/s", ">= 0.8x"),
        "single_append_latency": _figure(p_ms, r_ms, "ms", "<= 1.5x"),
    }


def main() -> None:
    import sys

    figures = asyncio.run(run("--quick" in sys.argv))
    for name, f in figures.items():
        print(
            f"append {name}: project={f['project']:.3f} raw={f['raw']:.3f} "
            f"ratio={f['ratio']:.2f} {f['unit']} (goal {f['goal']})"
        )


if __name__ == "__main__":
    main()
