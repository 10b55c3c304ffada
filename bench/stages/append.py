"""Append benchmark: the event log against raw asyncpg on the same rows, in the same run.

* ``batched_append``: events/s (median batch time) appending batches of 500 with ``append`` (lock,
  dedupe, versions, notify, one round trip) against ``executemany`` of the same rows into an
  equivalent plain table (bigserial, same columns and unique constraints, versions precomputed).
* ``single_append_latency``: p50 of one event appended in its own transaction against one
  autocommit ``INSERT``.
* ``producers_N`` (N = 1, 8, 32): transactions/s of N concurrent producers, each transaction
  one business-table row plus one event appended in it (``append(conn=...)``), against a
  hand-written bigserial outbox doing the same work (the business row plus one ``INSERT``), with
  synchronous commit on. Each side has one follower reading what commits every 10 ms, as a
  relay would: the project's ``read`` (which sequences first) against a plain ``position >
  cursor`` query (which may skip, the anomaly the project prevents). Rounds alternate.

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


BUSINESS_TABLE = "CREATE TABLE bench_accounts (id bigserial PRIMARY KEY, owner text, amount int)"
BUSINESS_INSERT = "INSERT INTO bench_accounts (owner, amount) VALUES ($1, $2)"
RAW_READ = "SELECT position FROM raw_events WHERE position > $1 ORDER BY position LIMIT 1000"
PRODUCERS = (1, 8, 32)
PRODUCER_GOALS = {1: ">= 0.9x", 8: "informational", 32: ">= 0.8x"}


async def _producing(
    pool: asyncpg.Pool,
    n: int,
    seconds: float,
    produce: Callable[[Any, int], Awaitable[None]],
    follow: Callable[[], Awaitable[int]],
) -> tuple[float, float, int]:
    """Transactions/s, p99 latency (ms) and the number of committed events the follower never
    read, of ``n`` producers for ``seconds`` while a follower reads what commits every 10 ms."""
    stop = asyncio.Event()
    latencies: list[float] = []

    async def producer(p: int) -> None:
        async with pool.acquire() as conn:
            i = 0
            while not stop.is_set():
                started = time.perf_counter()
                async with conn.transaction():
                    await conn.execute(BUSINESS_INSERT, f"owner-{p}", i)
                    await produce(conn, p)
                latencies.append(time.perf_counter() - started)
                i += 1

    finished = asyncio.Event()  # every producer's last transaction has ended

    async def follower() -> int:
        seen = 0
        while not finished.is_set():
            seen += await follow()
            await asyncio.sleep(0.01)
        return seen + await follow()

    reading = asyncio.create_task(follower())
    started = time.perf_counter()
    producers = [asyncio.create_task(producer(p)) for p in range(n)]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*producers)
    elapsed = time.perf_counter() - started
    finished.set()
    seen = await reading
    latencies.sort()
    return (
        len(latencies) / elapsed,
        latencies[int(len(latencies) * 0.99)] * 1000,
        len(latencies) - seen,
    )


async def _producers(
    store: EventStore, pool: asyncpg.Pool, rounds: int, seconds: float, skipped: dict[int, int]
) -> dict[int, tuple[float, float, float, float]]:
    """For each producer count: (project tx/s, raw tx/s, project p99 ms, raw p99 ms), the
    medians of ``rounds`` alternated rounds; ``skipped`` gets how many committed events the raw
    outbox's follower never saw (the project's must be 0)."""
    versions: dict[str, int] = {}
    cursor = {"project": 0, "raw": 0}

    async def ours(conn: Any, p: int) -> None:
        [event] = _events(1, f"cp{p}")
        await store.append(event, conn=conn)

    async def theirs(conn: Any, p: int) -> None:
        [event] = _events(1, f"cr{p}")
        [row] = _rows([event], versions)
        await conn.execute(RAW_INSERT, *row)

    async def follow_ours() -> int:
        batch = [e async for page in store.read(after=cursor["project"]) for e in page]
        if batch:
            cursor["project"] = batch[-1].position or cursor["project"]
        return len(batch)

    async def follow_theirs() -> int:
        rows = await pool.fetch(RAW_READ, cursor["raw"])
        if rows:
            cursor["raw"] = rows[-1][0]
        return len(rows)

    cursor["project"] = await store.sequence()
    cursor["raw"] = await pool.fetchval("SELECT coalesce(max(position), 0) FROM raw_events")
    figures: dict[int, tuple[float, float, float, float]] = {}
    for n in PRODUCERS:
        project: list[tuple[float, float, int]] = []
        raw: list[tuple[float, float, int]] = []
        for r in range(rounds):
            sides = [(project, ours, follow_ours), (raw, theirs, follow_theirs)]
            for out, produce, follow in sides if r % 2 == 0 else sides[::-1]:
                out.append(await _producing(pool, n, seconds, produce, follow))
        lost = sum(m for _, _, m in project)
        assert lost == 0, f"the project's follower missed {lost} committed events"
        skipped[n] = sum(m for _, _, m in raw)  # the bigserial outbox's follower skipped these
        figures[n] = (
            statistics.median(t for t, _, _ in project), statistics.median(t for t, _, _ in raw),
            statistics.median(p for _, p, _ in project), statistics.median(p for _, p, _ in raw),
        )  # fmt: skip
    return figures


def _figure(project: float, raw: float, unit: str, goal: str) -> dict[str, Any]:
    return {"project": project, "raw": raw, "ratio": project / raw, "unit": unit, "goal": goal}


async def run(quick: bool) -> dict[str, dict[str, Any]]:
    fields = PostgresConfig._from_url(find_service_url("postgres"))
    pg = PostgresConfig(**fields, schema=unique_name("bench_append"))
    await upgrade(pg)
    pool = await asyncpg.create_pool(
        pg.dsn, min_size=2, max_size=max(PRODUCERS) + 2,
        server_settings={"search_path": pg.schema},
    )  # fmt: skip
    try:
        await pool.execute(RAW_TABLE)
        await pool.execute(BUSINESS_TABLE)
        store = EventStore(pool, schema=pg.schema, config=EventLogConfig(), dsn=pg.dsn)
        await _batched(store, pool, BATCH)  # warm up: prepared statements, caches
        await _single(store, pool, 50)
        p_rate, r_rate = await _batched(store, pool, 10_000 if quick else 50_000)
        p_ms, r_ms = await _single(store, pool, 500 if quick else 3000)
        skipped: dict[int, int] = {}
        producers = await _producers(store, pool, 2 if quick else 4, 2.0 if quick else 4.0,
                                     skipped)  # fmt: skip
    finally:
        await pool.execute(f'DROP SCHEMA "{pg.schema}" CASCADE')
        await pool.close()
    figures = {
        "batched_append": _figure(p_rate, r_rate, "events/s", ">= 0.8x"),
        "single_append_latency": _figure(p_ms, r_ms, "ms", "<= 1.5x"),
    }
    for n, (p_tx, r_tx, p_p99, r_p99) in producers.items():
        figures[f"producers_{n}"] = _figure(p_tx, r_tx, "tx/s", PRODUCER_GOALS[n])
        figures[f"producers_{n}_p99"] = _figure(p_p99, r_p99, "ms p99", "informational")
        figures[f"producers_{n}_skipped"] = {
            "project": 0, "raw": skipped[n], "ratio": 0.0, "unit": "events never read",
            "goal": "project 0 (the raw bigserial outbox's follower skips)",
        }  # fmt: skip
    return figures


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
