"""Upcasting benchmark (issue #17): replay throughput with one trivial upcaster on every event
against none, the same log, alternated rounds in one run. Goal: >= 0.85x.

Every event of the log is stored at schema version 1; the "project" store has an upcaster
``v1 -> v2`` (identity) registered for the type, so every event read pays the version check,
the upcaster call and the version bump; the "raw" store has no upcasters, so it pays only the
version check (the cost every read has now). Figures:

* ``read``: events/s of ``EventStore.read`` over the whole log, nothing else: the harshest
  case, where the upcast is the largest share of the work per event.
* ``redis_rebuild``: ``projections.rebuild`` of a Redis projection (entities, as the rebuild
  stage's).
* ``faiss_fields_rebuild``: a ``VectorFields`` FAISS rebuild (d=384), the column path
  (``read_payloads``), where the payloads are upcast as dicts before the columns are built.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.common import append_all, figure, median, settle, temp_log, unlink_prefix
from bench.stages.rebuild import (
    BATCH,
    DIM,
    VECTOR_FIELDS,
    _document,
    _entity_events,
    _projection,
    _vector_events,
)
from satellites_es.config import EventLogConfig, FaissConfig
from satellites_es.projections import rebuild
from satellites_es.projections.faiss_sink import FaissSink
from satellites_es.projections.redis_sink import RedisSink
from satellites_es.store import EventStore
from satellites_es.testing.services import find_service_url, unique_name
from satellites_es.upcasting import Upcasters
from satellites_es.vectors import VectorIndex

GOAL = ">= 0.85x no upcaster"


def _upcasting(log: Any, event_type: str) -> EventStore:
    """The log's store with a trivial upcaster (v1 -> v2, identity) for ``event_type``."""
    registry = Upcasters()
    registry.register(event_type, 1, lambda payload: payload)
    return EventStore(log.pool, schema=log.pg.schema, config=EventLogConfig(), upcasters=registry)


async def _read(store: EventStore) -> float:
    count = 0
    started = time.perf_counter()
    async for batch in store.read(after=0, batch_size=BATCH):
        count += len(batch)
    return count / (time.perf_counter() - started)


async def _rebuilt(projection: Any, sink: Any, store: EventStore, log: Any, n: int) -> float:
    started = time.perf_counter()
    result = await rebuild(projection, sink, store, log.checkpoints, batch_size=BATCH)
    rate = n / (time.perf_counter() - started)
    if result.events != n:
        raise RuntimeError(f"{projection.name}: replayed {result.events} events, expected {n}")
    if result.previous is not None:
        await sink.drop(projection, result.previous)
    return rate


async def _alternated(rounds: int, ours: Any, theirs: Any) -> tuple[list[float], list[float]]:
    """``rounds`` of each, alternated (the order swapped every round)."""
    with_, without = [], []
    for r in range(rounds):
        if r % 2:
            without.append(await theirs())
            with_.append(await ours())
        else:
            with_.append(await ours())
            without.append(await theirs())
    return with_, without


async def _entities(quick: bool, rounds: int) -> dict[str, dict[str, Any]]:
    n = 10_000 if quick else 50_000
    prefix = f"{unique_name('bench_upcast')}:"
    client = aioredis.Redis.from_url(find_service_url("redis"))
    try:
        async with temp_log("bench_upcast") as log:
            await append_all(log.store, _entity_events(n))
            await settle(log)
            upcasting = _upcasting(log, "entity.upserted")
            read_with, read_without = await _alternated(
                rounds + 2, lambda: _read(upcasting), lambda: _read(log.store)
            )
            sink = RedisSink(client, prefix)
            up = _projection("up", "redis", _document, {})
            plain = _projection("plain", "redis", _document, {})
            rb_with, rb_without = await _alternated(
                rounds,
                lambda: _rebuilt(up, sink, upcasting, log, n),
                lambda: _rebuilt(plain, sink, log.store, log, n),
            )
            if await sink.dump(up, await sink.active_version(up) or 0) != await sink.dump(
                plain, await sink.active_version(plain) or 0
            ):
                raise RuntimeError("the upcast rebuild differs from the plain one")
    finally:
        await unlink_prefix(client, prefix)
        await client.aclose()
    note = f"{n} entity events at v1, identity upcaster v1 -> v2, alternated rounds"
    return {
        "read": figure(median(read_with), median(read_without), "events/s", GOAL, note=note,
                       rounds_project=read_with, rounds_raw=read_without),
        "redis_rebuild": figure(median(rb_with), median(rb_without), "events/s", GOAL,
                                note=note, rounds_project=rb_with, rounds_raw=rb_without),
    }  # fmt: skip


async def _vectors(quick: bool, rounds: int) -> dict[str, Any]:
    n = 10_000 if quick else 40_000
    events, _ = _vector_events(n)
    with tempfile.TemporaryDirectory() as tmp:
        index = VectorIndex(FaissConfig(index_path=Path(tmp), dimension=DIM))
        await index.open()
        try:
            async with temp_log("bench_upcast_faiss") as log:
                await append_all(log.store, events)
                await settle(log)
                upcasting = _upcasting(log, "embedding.upserted")
                sink = FaissSink(index)
                options = {"dimension": DIM, "metric": "ip"}
                up = _projection("up", "faiss", VECTOR_FIELDS, options)
                plain = _projection("plain", "faiss", VECTOR_FIELDS, options)
                with_, without = await _alternated(
                    rounds,
                    lambda: _rebuilt(up, sink, upcasting, log, n),
                    lambda: _rebuilt(plain, sink, log.store, log, n),
                )
        finally:
            await index.close()
    note = f"{n} embedding events (d={DIM}) at v1, VectorFields column path, alternated rounds"
    return figure(median(with_), median(without), "events/s", GOAL, note=note,
                  rounds_project=with_, rounds_raw=without)  # fmt: skip


async def run(quick: bool) -> dict[str, dict[str, Any]]:
    rounds = 2 if quick else 4
    figures = await _entities(quick, rounds)
    figures["faiss_fields_rebuild"] = await _vectors(quick, rounds)
    return figures


if __name__ == "__main__":
    for name, f in asyncio.run(run(quick=True)).items():
        print(f"upcast {name}: with={f['project']:,.0f} without={f['raw']:,.0f} "
              f"ratio={f['ratio']:.2f} (goal {f['goal']})")  # fmt: skip
