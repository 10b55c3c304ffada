"""Rebuild benchmark: replaying the log into each sink against the raw client writing the same
documents, in the same run, on the same data.

* ``redis_rebuild``: events/s of ``projections.rebuild`` of a Redis projection (read the log
  from Postgres, handler, conditional Lua write per key, checkpoint per batch, flip) against
  redis-py pipelines of 500 ``HSET key p <position> d <json>``: one write per event, the same
  final documents, no log read.
* ``es_rebuild``: the same into Elasticsearch (external versions) against
  ``helpers.async_bulk`` of the same documents (one ``index`` action per event, chunks of 1000
  like the sink's, no versioning) into a fresh index with the same mappings.
* ``faiss_rebuild``: a FAISS projection (d=384, flat inner product) whose handler is
  ``VectorFields`` (the demo's form), against ``IndexIDMap2(IndexFlatIP)`` ``add_with_ids`` of
  the same vectors, batches of 1000, one vector per event. The goal is absolute (events/s); the
  ratio is for information. The same mapping written as a handler function is measured in the
  same rounds (``function``), and both must leave the same namespace.

  Issue #6 (goal 50,000 events/s). The session before reached 18,400-28,600 events/s with the
  handler path (type-filtered read one batch ahead, no second validation of stored rows, a numpy
  batch base64 decode, ``gc.freeze``): one core's worth of Python per event, ~35 us. Then, each
  change measured with and without it in alternated rounds of the rebuild alone, in one process,
  on 20,000 events:

  - the event rows stored inline (migration 0002, ``STORAGE MAIN``): a 2.2 KB payload had lived
    in TOAST, and each reference to it in a query fetched it again; reading the vector apart
    from the rest of the payload cost the server 25-29 us an event out of line, 7.5 us inline.
    Only the payload made MAIN moved the 36-character id to TOAST instead: every variable-length
    column is MAIN;
  - ``VectorFields`` replayed as columns (``EventStore.read_payloads``, ``FaissSink.apply_runs``):
    no DataEvent, handler call or two change objects per event;
  - msgspec decodes payloads (``satellites_es.jsontext``; ~3 us less per 2 KB payload, exact);
  - a batch is committed while the next one is read and prepared (the projector);
  - replaced ids overwritten in place on flat storage: ``remove_ids`` compacted the whole index
    on every batch, a seventh of the time (46,000 -> 53,200 events/s, median of six);
  - ``check_metadata`` by msgspec and a comparison (~1.2 -> ~0.25 us an item; 34,600 ->
    36,700), position bookkeeping at C speed.

  - checkpoints committed without waiting for the WAL flush (~0.7 against 1.0-1.4 ms each).

  What did not help: decoding the batch's vectors in a worker thread (44,200 inline against
  40,100; numpy releases the GIL for only part of it), Postgres's own base64 ``decode`` (+17-21
  us an event on the server), ``binascii`` on the joined batch (4.9 against 2.6 us a vector for
  the numpy table decode), a page as one row of column arrays (``array_agg``: ~3 us an event
  less on the client, more on the server, whose core the FAISS thread shares: 46,500 against
  55,900), yielding to a batch's commit before preparing the next (no measurable change). What bounds it now,
  by samples of all threads: the base64 decode ~25%, the vector index's write ~16%, the
  snapshot at the end ~9%, asyncpg receiving ~2 KB an event, the columns and metadata ~7%.

* ``projector_lag``: ``follow_active`` following a Redis projection while events are appended
  at a steady 500/s; lag sampled every 50 ms. No raw equivalent: see :func:`_lag`.

Issue #12 (faults: translated sink calls, poison isolation, parking, a retry check a second in
the follower) must not cost more than 10%. ``--quick`` runs of this stage from the commit before
(95c7cf5) and after, alternated, two pairs on a quiet machine after the follower's parked count
was made one query a second (before / after):

  ============== ============== ==============
  figure         before         after
  ============== ============== ==============
  redis_rebuild  1.14x, 1.13x   1.22x, 1.22x
  es_rebuild     0.85x, 0.83x   0.85x, 0.87x
  faiss_rebuild  67,225, 51,585 57,039, 59,567 events/s (medians 59,400 / 58,300: -2%)
  projector_lag  3.7, 5.0 ms    4.9, 3.9 ms p99
  ============== ============== ==============

  The good path is unchanged (one try around the batch write; the per-event handler loop runs
  only when the list comprehension raised). An earlier pair, with two queries a second (the
  retry check and the parked count), gave lag p99 4.7-12.1 ms against 3.8-9.4.

Each event log is its own throwaway schema; rounds alternate raw and project (the median of
each side is reported) so that drift on a shared machine hits both. Every rebuild builds a new
version from position 0; the version it replaces is dropped between rounds. Redis keys live
under a unique prefix, Elasticsearch indices under a unique prefix (deleted by name), FAISS
snapshots in a temporary directory: all removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from elasticsearch import AsyncElasticsearch
from elasticsearch.helpers import async_bulk

from bench.common import (
    Log,
    append_all,
    figure,
    median,
    percentile,
    settle,
    temp_log,
    timed,
    unlink_prefix,
)  # fmt: skip
from satellites_es.config import FaissConfig
from satellites_es.events import DataEvent
from satellites_es.projections import (
    Projection,
    Projector,
    Upsert,
    VectorFields,
    follow_active,
    rebuild,
)  # fmt: skip
from satellites_es.projections.es_sink import TOMBSTONE, ElasticsearchSink
from satellites_es.projections.faiss_sink import FaissSink
from satellites_es.projections.redis_sink import RedisSink
from satellites_es.testing.services import EmulatedElasticsearch, find_service_url, unique_name
from satellites_es.vectors import VectorIndex
from satellites_es.vectors.codec import encode_vector

DIM = 384
KEYS_PER_EVENT = 5  # N events over N/5 keys: every key is written 5 times
PIPELINE = 500
BULK = 1000
BATCH = 1000  # events per projector batch (rebuild's default) and per raw FAISS add
ES_MAPPINGS = {
    "properties": {
        "name": {"type": "text"}, "n": {"type": "long"}, "score": {"type": "double"},
        "tags": {"type": "keyword"}, "city": {"type": "keyword"},
    }
}  # fmt: skip
_COMPACT = (",", ":")


# ---- data ------------------------------------------------------------------------------------


def _entity_events(n: int) -> list[DataEvent]:
    keys = max(1, n // KEYS_PER_EVENT)
    rng = random.Random(7)
    cities = ["paris", "lyon", "nantes", "lille", "rennes"]
    return [
        DataEvent(
            type="entity.upserted", resource="entities", key=f"e{i % keys}", source="bench",
            payload={"name": f"entity {i % keys} rev {i // keys}", "n": i,
                     "score": round(rng.random(), 6), "tags": ["a", f"t{i % 7}"],
                     "city": cities[i % 5]},
        )
        for i in range(n)
    ]  # fmt: skip


def _vector_events(n: int) -> tuple[list[DataEvent], np.ndarray]:
    keys = max(1, n // KEYS_PER_EVENT)
    rng = np.random.default_rng(3)
    raw = rng.standard_normal((n, DIM))
    raw /= np.linalg.norm(raw, axis=1, keepdims=True)
    matrix = raw.astype(np.float32)
    # the vector travels in the compact f32 form (satellites_es.vectors.codec), as the demo's
    events = [
        DataEvent(type="embedding.upserted", resource="embeddings", key=f"v{i % keys}",
                  source="bench", payload={"vector": encode_vector(matrix[i]), "n": i})
        for i in range(n)
    ]  # fmt: skip
    return events, matrix


def _document(event: DataEvent) -> Upsert:
    return Upsert(event.key, event.payload)


def _vector_document(event: DataEvent) -> Upsert:
    p = event.payload
    return Upsert(event.key, {"vector": p["vector"], "metadata": {"n": p["n"]}})


#: The mapping of _vector_document, as fields (what a rebuild replays as columns).
VECTOR_FIELDS = VectorFields(vector="vector", metadata=("n",))


def _projection(name: str, sink: str, handler: Any, options: dict[str, Any]) -> Projection:
    types = ("embedding.upserted",) if sink == "faiss" else ("entity.upserted",)
    return Projection(name=name, version=1, sink=sink, event_types=types,  # type: ignore[arg-type]
                      handler=handler, options=options)  # fmt: skip


async def _read_only(log: Log) -> float:
    """Events/s of reading the whole log (what every rebuild pays before any sink write)."""
    count = 0
    started = time.perf_counter()
    async for batch in log.store.read(after=0, batch_size=BATCH):
        count += len(batch)
    return count / (time.perf_counter() - started)


async def _rebuild_once(p: Projection, sink: Any, log: Log, n: int) -> float:
    """Events/s of one full rebuild; drops the version it replaced (outside the timing)."""
    started = time.perf_counter()
    result = await rebuild(p, sink, log.store, log.checkpoints, batch_size=BATCH)
    elapsed = time.perf_counter() - started
    if result.events != n:
        raise RuntimeError(f"{p.name}: rebuild replayed {result.events} events, expected {n}")
    if result.previous is not None:
        await sink.drop(p, result.previous)
    return n / elapsed


# ---- redis -----------------------------------------------------------------------------------


async def _redis(quick: bool, rounds: int) -> dict[str, Any]:
    n = 10_000 if quick else 50_000
    events = _entity_events(n)
    prefix = f"{unique_name('bench_rebuild')}:"
    client = aioredis.Redis.from_url(find_service_url("redis"))
    try:
        async with temp_log("bench_rebuild_redis") as log:
            positions = await append_all(log.store, events)
            await settle(log)
            sink = RedisSink(client, prefix)
            p = _projection("entities", "redis", _document, {})
            read_rate = await _read_only(log)

            async def raw_write(target: str) -> None:
                pipe = client.pipeline(transaction=False)
                for i, (e, pos) in enumerate(zip(events, positions, strict=True), 1):
                    doc = json.dumps(e.payload, separators=_COMPACT)
                    pipe.hset(f"{target}{e.key}", mapping={"p": pos, "d": doc})
                    if i % PIPELINE == 0:
                        await pipe.execute()
                await pipe.execute()

            raw: list[float] = []
            ours: list[float] = []
            for r in range(rounds):
                target = f"{prefix}raw{r}:"
                raw.append(n / await timed(lambda: raw_write(target)))  # noqa: B023
                await unlink_prefix(client, target)
                ours.append(await _rebuild_once(p, sink, log, n))
            final = await sink.dump(p, await sink.active_version(p) or 0)
            if len(final) != n // KEYS_PER_EVENT:
                raise RuntimeError(f"redis projection holds {len(final)} keys")
    finally:
        await unlink_prefix(client, prefix)
        await client.aclose()
    note = (
        f"{n} events over {n // KEYS_PER_EVENT} keys, median of {rounds} rounds. project: "
        f"rebuild() reads the log from Postgres (batches of {BATCH}), handler, one Lua call per "
        f"{BATCH} changes (HGET p, HSET p+d, HDEL x, PERSIST per key), checkpoint per batch, flip. "
        f"raw: redis-py pipelines of {PIPELINE} HSET key p d (JSON document), one per event, no "
        f"log read. Reading the log alone: {read_rate:,.0f} events/s."
    )
    return figure(median(ours), median(raw), "events/s", ">= 0.7x raw pipeline", note=note,
                  rounds_project=ours, rounds_raw=raw, read_only=read_rate)  # fmt: skip


# ---- elasticsearch ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _es_client() -> AsyncIterator[AsyncElasticsearch]:
    url = os.environ.get("SATELLITES_ES_URL")
    emulator = None if url else EmulatedElasticsearch()
    if emulator is not None:
        url = await asyncio.to_thread(emulator.start)
    client = AsyncElasticsearch(url, request_timeout=120)
    try:
        yield client
    finally:
        await client.close()
        if emulator is not None:
            await asyncio.to_thread(emulator.stop)


async def _es(quick: bool, rounds: int) -> dict[str, Any]:
    n = 5_000 if quick else 20_000
    events = _entity_events(n)
    prefix = f"{unique_name('bench_rebuild')}-"
    created: list[str] = []
    async with _es_client() as client, temp_log("bench_rebuild_es") as log:
        try:
            await append_all(log.store, events)
            await settle(log)
            sink = ElasticsearchSink(client, prefix)
            p = _projection("entities", "elasticsearch", _document, {"mappings": ES_MAPPINGS})
            created += [sink.index(p, v) for v in range(1, rounds + 1)]
            read_rate = await _read_only(log)
            mappings = {"properties": {**ES_MAPPINGS["properties"], TOMBSTONE: {"type": "boolean"}}}

            async def raw_write(index: str) -> None:
                actions = (
                    {"_op_type": "index", "_index": index, "_id": e.key, "_source": dict(e.payload)}
                    for e in events
                )
                await async_bulk(client, actions, chunk_size=BULK)

            raw: list[float] = []
            ours: list[float] = []
            for r in range(rounds):
                index = f"{prefix}raw_{r}"
                created.append(index)
                await client.indices.create(index=index, mappings=mappings)
                raw.append(n / await timed(lambda: raw_write(index)))  # noqa: B023
                await client.indices.delete(index=index, ignore_unavailable=True)
                ours.append(await _rebuild_once(p, sink, log, n))
            final = await sink.dump(p, await sink.active_version(p) or 0)
            if len(final) != n // KEYS_PER_EVENT:
                raise RuntimeError(f"elasticsearch projection holds {len(final)} documents")
        finally:
            for index in created:  # by name: destructive wildcards are refused
                await client.indices.delete(index=index, ignore_unavailable=True)
    where = "SATELLITES_ES_URL" if os.environ.get("SATELLITES_ES_URL") else "noida-db emulator"
    note = (
        f"{where}; {n} events over {n // KEYS_PER_EVENT} keys, median of {rounds} rounds. "
        f"project: rebuild() reads the log, async_bulk of {BULK} index actions with "
        f"version=position, version_type=external per batch, checkpoint per batch, alias flip. "
        f"raw: async_bulk (chunks of {BULK}) of one plain index action per event, same _id and "
        f"document, into a fresh index with the same mappings. Reading the log alone: "
        f"{read_rate:,.0f} events/s."
    )
    return figure(median(ours), median(raw), "events/s", ">= 0.7x raw bulk", note=note,
                  rounds_project=ours, rounds_raw=raw, read_only=read_rate)  # fmt: skip


# ---- faiss -----------------------------------------------------------------------------------


async def _faiss(quick: bool, rounds: int) -> dict[str, Any]:
    from satellites_es.vectors._faiss import faiss

    n = 5_000 if quick else 20_000
    events, matrix = _vector_events(n)
    labels = np.arange(n, dtype=np.int64)

    async def raw_add() -> float:
        started = time.perf_counter()
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
        for start in range(0, n, BATCH):
            index.add_with_ids(matrix[start : start + BATCH], labels[start : start + BATCH])
        return n / (time.perf_counter() - started)

    with tempfile.TemporaryDirectory(prefix="bench-rebuild-faiss-") as tmp:
        vectors = VectorIndex(
            FaissConfig(index_path=Path(tmp) / "faiss", dimension=DIM, metric="ip")
        )
        await vectors.open()
        try:
            async with temp_log("bench_rebuild_faiss") as log:
                await append_all(log.store, events, batch=500)
                await settle(log)
                sink = FaissSink(vectors)
                options = {"dimension": DIM, "metric": "ip", "index_kind": "flat"}
                # the same mapping twice: as fields (the demo's form), and as a function
                fields = _projection("embeddings", "faiss", VECTOR_FIELDS, options)
                function = _projection("embeddings_fn", "faiss", _vector_document, options)
                read_rate = await _read_only(log)
                sides: dict[str, Any] = {
                    "raw": raw_add,
                    "fields": lambda: _rebuild_once(fields, sink, log, n),
                    "function": lambda: _rebuild_once(function, sink, log, n),
                }
                got: dict[str, list[float]] = {side: [] for side in sides}
                for i in range(rounds):  # the order rotates: drift hits every side alike
                    order = list(sides)[i % 3 :] + list(sides)[: i % 3]
                    for side in order:
                        got[side].append(await sides[side]())
                for p in (fields, function):
                    count = await vectors.count(p.target(await sink.active_version(p) or 0))
                    if count != n // KEYS_PER_EVENT:
                        raise RuntimeError(f"faiss projection {p.name} holds {count} vectors")
                    if await sink.dump(p, await sink.active_version(p) or 0) != await sink.dump(
                        fields, await sink.active_version(fields) or 0
                    ):
                        raise RuntimeError("the two forms of one projection differ")
        finally:
            await vectors.close()
    note = (
        f"d={DIM}, flat inner product; {n} events over {n // KEYS_PER_EVENT} keys (each key "
        f"replaced 5 times), median of {rounds} rounds. project: rebuild() of a projection whose "
        f"handler is VectorFields(vector, metadata=('n',)): the log's positions, keys, types and "
        f"payloads (the base64 float32 vector sent apart as raw text) one batch ahead, the batch "
        f"as columns, its vectors decoded into one matrix, upsert_arrays per batch of {BATCH} "
        f"(validation, positions, metadata, replaced ids overwritten in place) in a worker "
        f"thread, the next batch prepared meanwhile, checkpoints, a snapshot at the end. The same "
        f"mapping as a handler function (a DataEvent and a change per event): "
        f"{median(got['function']):,.0f} events/s. raw: IndexIDMap2(IndexFlatIP).add_with_ids of "
        f"the same float32 vectors in batches of {BATCH}, one per event, no replacement, no log "
        f"read. Reading the log alone (every column, DataEvents): {read_rate:,.0f} events/s."
    )
    return figure(median(got["fields"]), median(got["raw"]), "events/s",
                  "project >= 50,000 events/s", note=note, rounds_project=got["fields"],
                  rounds_raw=got["raw"], function=median(got["function"]),
                  rounds_function=got["function"], read_only=read_rate)  # fmt: skip


# ---- projector lag ---------------------------------------------------------------------------


async def _lag(quick: bool) -> dict[str, Any]:
    """Lag of ``follow_active`` behind a steady 500 events/s.

    Two measures: every 50 ms, ``head - projector.position`` in events (head: the last position
    the appender committed; it is the only writer), and for every appended batch the time from
    its commit (``append`` returning) to the projector having applied it (``wait_for``), in ms.
    There is no raw client doing this, so ``raw`` is the append-only baseline of 0 ms (nothing
    to follow) and ``ratio`` is fixed at 1.0: the figure is absolute, ``project`` is the p99 of
    the commit-to-applied time in ms, the note gives p50/p99 of both measures.
    """
    rate, tick = 500, 0.02  # 10 events every 20 ms
    duration = 5.0 if quick else 10.0
    per_tick = round(rate * tick)
    prefix = f"{unique_name('bench_lag')}:"
    client = aioredis.Redis.from_url(find_service_url("redis"))
    try:
        async with temp_log("bench_rebuild_lag") as log:
            sink = RedisSink(client, prefix)
            p = _projection("followed", "redis", _document, {})
            stop = asyncio.Event()
            got: list[Projector] = []
            ready = asyncio.Event()

            def on_projector(projector: Projector) -> None:
                got.append(projector)
                ready.set()

            follow = follow_active(
                p, sink, log.store, log.checkpoints, stop=stop, on_projector=on_projector
            )
            follower = asyncio.create_task(follow)
            try:
                await asyncio.wait_for(ready.wait(), timeout=10)
                projector = got[-1]
                await log.store.append(_entity_events(per_tick))  # warm up: statements, pass
                await projector.wait_for(await log.store.head())
                lag = await _drive(log, projector, per_tick, tick, duration)
            finally:
                stop.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(follower, timeout=5)
    finally:
        await unlink_prefix(client, prefix)
        await client.aclose()
    lag_events, lag_ms, appended = lag
    p50_ms, p99_ms = percentile(lag_ms, 0.5), percentile(lag_ms, 0.99)
    p50_ev, p99_ev = percentile(lag_events, 0.5), percentile(lag_events, 0.99)
    note = (
        f"follow_active on a Redis projection while {appended} events were appended at "
        f"{rate}/s ({per_tick} every {tick * 1000:.0f} ms) for {duration:.0f} s. "
        f"commit->applied: p50={p50_ms:.1f} ms p99={p99_ms:.1f} ms max={max(lag_ms):.1f} ms "
        f"({len(lag_ms)} batches); head-position sampled every 50 ms: p50={p50_ev:.0f} "
        f"p99={p99_ev:.0f} max={max(lag_events):.0f} events ({len(lag_events)} samples). "
        "No raw equivalent: raw is the append-only baseline (0 ms, nothing follows) and ratio is "
        "fixed at 1.0; project is the p99 commit->applied time."
    )
    return {
        "project": p99_ms, "raw": 0.0, "ratio": 1.0, "unit": "ms p99 lag",
        "goal": "p99 lag < 1 s at 500 events/s (absolute)", "note": note,
        "p50_ms": p50_ms, "p99_ms": p99_ms, "p50_events": p50_ev, "p99_events": p99_ev,
    }  # fmt: skip


async def _drive(
    log: Log, projector: Projector, per_tick: int, tick: float, duration: float
) -> tuple[list[float], list[float], int]:
    head = projector.position
    lag_events: list[float] = []
    lag_ms: list[float] = []
    waiters: set[asyncio.Task[None]] = set()
    done = asyncio.Event()

    async def applied(position: int, committed: float) -> None:
        await projector.wait_for(position, timeout=30)
        lag_ms.append((time.perf_counter() - committed) * 1000)

    async def sample() -> None:
        next_at = time.perf_counter()
        while not done.is_set():
            lag_events.append(max(0, head - projector.position))
            next_at += 0.05
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    sampler = asyncio.create_task(sample())
    pending: list[DataEvent] = _entity_events(int(per_tick * duration / tick) + per_tick)
    appended = 0
    started = time.perf_counter()
    ticks = int(duration / tick)
    for t in range(ticks):
        batch = pending[t * per_tick : (t + 1) * per_tick]
        result = await log.store.append(batch)
        committed = time.perf_counter()
        head = result.last_position
        appended += len(batch)
        task = asyncio.create_task(applied(head, committed))
        waiters.add(task)
        task.add_done_callback(waiters.discard)
        await asyncio.sleep(max(0.0, started + (t + 1) * tick - time.perf_counter()))
    await asyncio.gather(*list(waiters))
    done.set()
    await sampler
    return lag_events, lag_ms, appended


# ---- stage -----------------------------------------------------------------------------------


async def run(quick: bool) -> dict[str, dict[str, Any]]:
    rounds = 2 if quick else 3
    return {
        "redis_rebuild": await _redis(quick, rounds),
        "es_rebuild": await _es(quick, rounds),
        "faiss_rebuild": await _faiss(quick, rounds + 2),
        "projector_lag": await _lag(quick),
    }


def _line(name: str, f: dict[str, Any]) -> str:
    return (
        f"rebuild {name}: project={f['project']:,.1f} raw={f['raw']:,.1f} "
        f"ratio={f['ratio']:.2f} {f['unit']} (goal {f['goal']})"
    )


def main() -> None:
    import sys

    figures = asyncio.run(run("--quick" in sys.argv))
    for name, f in figures.items():
        print(_line(name, f))
        if "-v" in sys.argv:
            print(f"  {f['note']}")


if __name__ == "__main__":
    main()
