"""Audit benchmark: ``satellites_es.audit.audit`` of a Redis projection against the raw clients
doing the same comparison, in the same run, on the same data.

* ``redis_audit``: keys/s of the audit of a Redis projection built by ``rebuild`` from 100,000
  events over 20,000 keys (20,000 / 4,000 with ``--quick``). The audit streams the log sorted by
  key then position from Postgres (a server-side cursor), folds each key with the projection's
  handler, reads the keys back in pipelines of 500 ``HGETALL`` and compares, then streams the
  sink's keys (SCAN) into a temporary table for the "extra" check. raw: asyncpg's cursor over
  the same ``ORDER BY key, position`` query, the last payload per key kept as the expected
  document, redis-py pipelines of 500 ``HGETALL`` and the same JSON comparison; no handler,
  no ``DataEvent``, no extra-key pass. Both must find the sink clean.

Rounds alternate raw and project; the median of each side is reported.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio as aioredis

from bench.common import Log, append_all, figure, median, settle, temp_log, unlink_prefix
from satellites_es.audit import audit
from satellites_es.events import DataEvent
from satellites_es.projections import Projection, Upsert, rebuild
from satellites_es.projections.redis_sink import RedisSink
from satellites_es.testing.services import find_service_url, unique_name

KEYS_PER_EVENT = 5
PIPELINE = 500
_COMPACT = (",", ":")


def _events(n: int) -> list[DataEvent]:
    keys = max(1, n // KEYS_PER_EVENT)
    return [
        DataEvent(type="entity.upserted", resource="entities", key=f"e{i % keys:06d}",
                  source="bench", payload={"name": f"entity {i % keys} rev {i // keys}", "n": i,
                                           "tags": ["a", f"t{i % 7}"]})
        for i in range(n)
    ]  # fmt: skip


def _document(event: DataEvent) -> Upsert:
    return Upsert(event.key, event.payload)


async def _raw_audit(log: Log, client: aioredis.Redis, key_prefix: str) -> int:
    """The same comparison with asyncpg and redis-py alone; returns the keys checked."""
    sql = (f'SELECT key, position, payload FROM "{log.pg.schema}".events '
           "WHERE type = ANY($1::text[]) ORDER BY key, position")  # fmt: skip
    checked = drift = 0
    batch: list[tuple[str, int, Any]] = []

    async def compare() -> None:
        nonlocal checked, drift
        async with client.pipeline(transaction=False) as pipe:
            for key, _, _ in batch:
                pipe.hgetall(f"{key_prefix}{key}")
            found = await pipe.execute()
        for (_, position, payload), held in zip(batch, found, strict=True):
            want = json.dumps(json.loads(payload), separators=_COMPACT, sort_keys=True)
            got = held.get(b"d")
            same = got is not None and json.dumps(json.loads(got), separators=_COMPACT,
                                                  sort_keys=True) == want  # fmt: skip
            drift += int(not same or int(held.get(b"p", -1)) != position)
        checked += len(batch)
        batch.clear()

    async with log.pool.acquire() as conn, conn.transaction(readonly=True):
        last: tuple[str, int, Any] | None = None
        async for row in conn.cursor(sql, ["entity.upserted"], prefetch=2000):
            if last is not None and row["key"] != last[0]:
                batch.append(last)
                if len(batch) >= PIPELINE:
                    await compare()
            last = (row["key"], row["position"], row["payload"])
        if last is not None:
            batch.append(last)
    await compare()
    if drift:
        raise RuntimeError(f"raw audit found {drift} drifted keys in a clean sink")
    return checked


async def _redis(quick: bool, rounds: int) -> dict[str, Any]:
    n = 20_000 if quick else 100_000
    prefix = f"{unique_name('bench_audit')}:"
    client = aioredis.Redis.from_url(find_service_url("redis"))
    projection = Projection(name="entities", version=1, sink="redis",
                            event_types=("entity.upserted",), handler=_document)  # fmt: skip
    try:
        async with temp_log("bench_audit") as log:
            await append_all(log.store, _events(n))
            await settle(log)
            sink = RedisSink(client, prefix)
            await rebuild(projection, sink, log.store, log.checkpoints, batch_size=1000)
            key_prefix = f"{prefix}{projection.target()}:"
            raw: list[float] = []
            ours: list[float] = []
            keys = 0
            for _ in range(rounds):
                started = time.perf_counter()
                keys = await _raw_audit(log, client, key_prefix)
                raw.append(keys / (time.perf_counter() - started))
                report = await audit(projection, sink, log.pool, log.pg.schema)
                if not report.clean or report.keys != keys:
                    raise RuntimeError(
                        f"audit of a clean sink: {report.counts}, {report.keys} keys"
                    )
                ours.append(report.keys / report.seconds)
    finally:
        await unlink_prefix(client, prefix)
        await client.aclose()
    note = (f"{n} events over {keys} keys, median of {rounds} rounds. project: audit() (log "
            f"sorted by key by Postgres, handler fold, HGETALL pipelines of {PIPELINE}, "
            "compare, then the sink's keys through a temporary table for extras). raw: the same "
            "sorted query through asyncpg, last payload per key, the same pipelines and JSON "
            "comparison, no extra-key pass.")  # fmt: skip
    return figure(median(ours), median(raw), "keys/s", ">= 0.5x raw (the raw side skips the "
                  "extra-key pass)", note=note, rounds_project=ours, rounds_raw=raw)  # fmt: skip


async def run(quick: bool) -> dict[str, dict[str, Any]]:
    return {"redis_audit": await _redis(quick, rounds=3)}
