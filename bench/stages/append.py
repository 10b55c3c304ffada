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
  relay would (whole events): the project's ``read`` (which sequences first) against a plain
  ``position > cursor`` query of the whole rows (which may skip, the anomaly the project
  prevents: ``producers_N_missed``
  counts what it never read). ``producers_N_visible_p99`` is the time from a producer's commit
  to the follower reading its event: the sequencing latency. Rounds alternate.

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
from dataclasses import dataclass
from typing import Any

import asyncpg

from satellites_es.config import EventLogConfig, PostgresConfig
from satellites_es.events import DataEvent
from satellites_es.migrate import upgrade
from satellites_es.pgpool import create_pool
from satellites_es.store import EventStore
from satellites_es.testing.services import find_service_url, unique_name

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
# The raw follower reads what a hand-written relay publishes: the whole row, as the project's does.
RAW_READ = """SELECT position, id, resource, key, version, type, source, payload, "timestamp"
FROM raw_events WHERE position > $1 ORDER BY position LIMIT 1000"""
PRODUCERS = (1, 8, 32)
PRODUCER_GOALS = {1: ">= 0.9x", 8: "informational", 32: ">= 0.8x"}


@dataclass(frozen=True)
class Round:
    """One side's figures in one round of the concurrent-producers benchmark."""

    tx_per_s: float
    p99_ms: float  # producer transaction latency
    visible_p99_ms: float  # from a producer's commit to its event being read by the follower
    missed: int  # committed events the follower never read


async def _producing(
    pool: asyncpg.Pool,
    n: int,
    seconds: float,
    produce: Callable[[Any, int], Awaitable[str]],
    follow: Callable[[], Awaitable[list[str]]],
) -> Round:
    """``n`` producers for ``seconds`` (each transaction: a business row and ``produce``,
    which returns the event's id) while a follower reads what committed every 10 ms."""
    stop = asyncio.Event()
    latencies: list[float] = []
    committed: dict[str, float] = {}
    read: dict[str, float] = {}

    async def producer(p: int) -> None:
        async with pool.acquire() as conn:
            i = 0
            while not stop.is_set():
                started = time.perf_counter()
                async with conn.transaction():
                    await conn.execute(BUSINESS_INSERT, f"owner-{p}", i)
                    event_id = await produce(conn, p)
                ended = time.perf_counter()
                committed[event_id] = ended
                latencies.append(ended - started)
                i += 1

    finished = asyncio.Event()  # every producer's last transaction has ended

    async def follower() -> None:
        while True:
            last = finished.is_set()
            ids = await follow()
            now = time.perf_counter()
            read.update((i, now) for i in ids)
            if last:
                return
            await asyncio.sleep(0.01)

    reading = asyncio.create_task(follower())
    started = time.perf_counter()
    producers = [asyncio.create_task(producer(p)) for p in range(n)]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*producers)
    elapsed = time.perf_counter() - started
    finished.set()
    await reading
    latencies.sort()
    visible = sorted(read[i] - at for i, at in committed.items() if i in read)
    return Round(
        tx_per_s=len(latencies) / elapsed,
        p99_ms=latencies[int(len(latencies) * 0.99)] * 1000,
        visible_p99_ms=visible[int(len(visible) * 0.99)] * 1000 if visible else 0.0,
        missed=len(committed.keys() - read.keys()),
    )


async def _producers(
    store: EventStore, pool: asyncpg.Pool, rounds: int, seconds: float
) -> dict[int, tuple[list[Round], list[Round]]]:
    """For each producer count, the project's and the raw outbox's rounds (alternated)."""
    versions: dict[str, int] = {}
    cursor = {"project": 0, "raw": 0}

    async def ours(conn: Any, p: int) -> str:
        [event] = _events(1, f"cp{p}")
        await store.append(event, conn=conn)
        return event.id

    async def theirs(conn: Any, p: int) -> str:
        [event] = _events(1, f"cr{p}")
        [row] = _rows([event], versions)
        await conn.execute(RAW_INSERT, *row)
        return event.id

    async def follow_ours() -> list[str]:
        batch = [e async for page in store.read(after=cursor["project"]) for e in page]
        if batch:
            cursor["project"] = batch[-1].position or cursor["project"]
        return [e.id for e in batch]

    async def follow_theirs() -> list[str]:
        rows = await pool.fetch(RAW_READ, cursor["raw"])
        if rows:
            cursor["raw"] = rows[-1][0]
        return [row[1] for row in rows]

    cursor["project"] = await store.sequence()
    cursor["raw"] = await pool.fetchval("SELECT coalesce(max(position), 0) FROM raw_events")
    figures: dict[int, tuple[list[Round], list[Round]]] = {}
    for n in PRODUCERS:
        project: list[Round] = []
        raw: list[Round] = []
        for r in range(rounds):
            sides = [(project, ours, follow_ours), (raw, theirs, follow_theirs)]
            for out, produce, follow in sides if r % 2 == 0 else sides[::-1]:
                out.append(await _producing(pool, n, seconds, produce, follow))
        lost = sum(x.missed for x in project)
        assert lost == 0, f"the project's follower missed {lost} committed events"
        figures[n] = (project, raw)
    return figures


def _median(rounds: list[Round], field: str) -> float:
    return float(statistics.median(getattr(x, field) for x in rounds))


def _figure(project: float, raw: float, unit: str, goal: str) -> dict[str, Any]:
    return {"project": project, "raw": raw, "ratio": project / raw, "unit": unit, "goal": goal}


async def run(quick: bool) -> dict[str, dict[str, Any]]:
    fields = PostgresConfig._from_url(find_service_url("postgres"))
    pg = PostgresConfig(**fields, schema=unique_name("bench_append"))
    await upgrade(pg)
    pool = await create_pool(  # as the layer makes it; the raw side's calls reset as asyncpg's do
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
        producers = await _producers(store, pool, 2 if quick else 4, 2.0 if quick else 4.0)
        idle = await _idle_sequencer(store, pool)
    finally:
        await pool.execute(f'DROP SCHEMA "{pg.schema}" CASCADE')
        await pool.close()
    figures = {
        "batched_append": _figure(p_rate, r_rate, "events/s", ">= 0.8x"),
        "single_append_latency": _figure(p_ms, r_ms, "ms", "<= 1.5x"),
    }
    for n, (ours, theirs) in producers.items():
        pair = {field: (_median(ours, field), _median(theirs, field))
                for field in ("tx_per_s", "p99_ms", "visible_p99_ms")}  # fmt: skip
        figures[f"producers_{n}"] = _figure(*pair["tx_per_s"], "tx/s", PRODUCER_GOALS[n])
        figures[f"producers_{n}_p99"] = _figure(*pair["p99_ms"], "ms p99", "informational")
        figures[f"producers_{n}_visible_p99"] = _figure(
            *pair["visible_p99_ms"], "ms p99 commit->read", "informational (10 ms polls)"
        )
        figures[f"producers_{n}_missed"] = {
            "project": 0, "raw": sum(x.missed for x in theirs), "ratio": 0.0,
            "unit": "committed events never read",
            "goal": "project 0 (a bigserial outbox's follower skips)",
        }  # fmt: skip
    figures["sequencer_idle"] = _figure(*idle, "ms", "informational (floor vs a scan from 0)")
    return figures


async def _idle_sequencer(store: EventStore, pool: asyncpg.Pool) -> tuple[float, float]:
    """Median ms of one sequencer call with nothing to number on the log the producer rounds
    left (every event appended in a transaction left a dead entry in the primary key): with the
    floor (migration 0006) against the same call scanning from 0, as before it, alternated.
    The scan from 0 is had by setting the floor to 0 under a horizon no run reaches, so that
    neither side writes the state: the two calls differ only in the scan."""
    reset = (f'UPDATE "{store.schema}".sequencer_state SET floor = 0,'
             " horizon = 4611686018427387904")  # fmt: skip
    pending = await pool.fetchval(
        f"SELECT coalesce(pg_sequence_last_value('\"{store.schema}\".events_pending_seq'), 0)"
    )
    for _ in range(100):  # until the floor has caught up with every pending number used
        await store.sequence()
        floor = await pool.fetchval(f'SELECT floor FROM "{store.schema}".sequencer_state')
        if floor >= pending:
            break
        await asyncio.sleep(0.01)
    state = await pool.fetchrow(f'SELECT * FROM "{store.schema}".sequencer_state')
    with_floor: list[float] = []
    from_zero: list[float] = []
    for _ in range(30):
        with_floor.append(await _timed(store.sequence))
        async with pool.acquire() as conn:
            await conn.execute(reset)
            from_zero.append(await _timed(store.sequence))
            await conn.execute(
                f'UPDATE "{store.schema}".sequencer_state SET floor = $1, candidate = $2,'
                " horizon = $3", state["floor"], state["candidate"], state["horizon"],
            )  # fmt: skip
    return statistics.median(with_floor) * 1000, statistics.median(from_zero) * 1000


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
