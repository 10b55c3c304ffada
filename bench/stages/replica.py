"""Replica benchmark (issue 20): a new FAISS replica from object storage against a full replay
of the log, and the snapshot store's transfers against the client library's own, in one run.

The store is moto's S3 server on 127.0.0.1 (:class:`~satellites_es.testing.s3.S3Server`), a
Python server: absolute transfer rates are its, not S3's; both sides of each ratio go through it.

* ``time_to_ready``: seconds from an empty disk to a replica caught up with the log's head, for
  200,000 vectors of d=384 (20,000 with ``--quick``), one key each, with the store's snapshot
  taken at 95% of the log. project: :class:`~satellites_es.projections.replica.Replica` (pointer,
  download, verification, load) then the projector replays the 5% tail. raw: the same projector
  replaying the whole log into an empty namespace (what a new replica did before). Ratio =
  project / raw; the goal (>= 5x faster) is a ratio <= 0.2. Each round also times obstore's
  own GET of the same three objects (``rounds_raw_get``): the floor of the download.
* ``upload_throughput``: MB/s of :meth:`SnapshotStore.publish` (three files, then the pointer,
  then the prune listing) against ``obstore.put_async`` of the same three files, concurrently,
  with the same multipart settings. Goal >= 0.8x.
* ``download_throughput``: MB/s of :meth:`SnapshotStore.download` (pointer read excluded,
  verification excluded: it is in ``time_to_ready``) against ``obstore.get_async`` of the same
  three objects, concurrently. Goal >= 0.8x.

Rounds alternate project and raw so that drift on the shared machine hits both; medians are
reported. The log is a throwaway schema, FAISS directories are temporary, the server is stopped.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import obstore

from bench.common import Log, append_all, figure, median, settle, temp_log
from satellites_es.config import FaissConfig
from satellites_es.demo.projections import embeddings
from satellites_es.events import DataEvent
from satellites_es.projections import Projector, ensure_active
from satellites_es.projections.faiss_sink import FaissSink
from satellites_es.projections.replica import Replica
from satellites_es.projections.snapshotter import publish_now
from satellites_es.testing.s3 import AWS_ENV, S3Server
from satellites_es.vectors import VectorIndex
from satellites_es.vectors.codec import encode_vector
from satellites_es.vectors.persistence import FILES
from satellites_es.vectors.snapshot_store import CHUNK_SIZE, MAX_CONCURRENCY, SnapshotStore

DIM = 384
NAMESPACE = embeddings.target(1)


def _events(n: int) -> list[DataEvent]:
    rng = np.random.default_rng(20)
    matrix = rng.standard_normal((n, DIM)).astype(np.float32)
    return [
        DataEvent(type="embedding.upserted", resource="embeddings", key=f"v{i}", source="bench",
                  payload={"vector": encode_vector(matrix[i]), "title": f"vector {i}",
                           "topic": f"t{i % 7}", "model": "bench"})
        for i in range(n)
    ]  # fmt: skip


async def _ready(log: Log, root: Path, snapshots: SnapshotStore | None) -> tuple[float, int, float]:
    """Seconds for a new replica on an empty ``root`` to reach the log's head; events read;
    seconds of the bootstrap itself (pointer, download, verification, load)."""
    started = time.perf_counter()
    async with VectorIndex(FaissConfig(index_path=root, dimension=DIM)) as vectors:
        sink = FaissSink(vectors, Replica(vectors, snapshots) if snapshots else None)
        version = await ensure_active(embeddings, sink, log.checkpoints)
        result = await Projector(embeddings, sink, log.store, log.checkpoints,
                                 version=version).catch_up()  # fmt: skip
        elapsed = time.perf_counter() - started
        booted = 0.0
        if sink.replica is not None:
            status = sink.replica.status[NAMESPACE]
            if status.source != "store":
                raise RuntimeError(f"bootstrap did not use the store: {status}")
            booted = status.seconds
        if await vectors.count(NAMESPACE) != await log.store.head():
            raise RuntimeError("the replica does not hold every vector")
    return elapsed, result.events, booted


async def _raw_put(raw: Any, prefix: str, files: dict[str, bytes]) -> None:
    await asyncio.gather(*(obstore.put_async(raw, f"{prefix}/{f}", files[f], chunk_size=CHUNK_SIZE,
                                             max_concurrency=MAX_CONCURRENCY) for f in FILES))  # fmt: skip


async def _raw_get(raw: Any, prefix: str) -> int:
    async def one(f: str) -> int:
        return len(bytes(await (await obstore.get_async(raw, f"{prefix}/{f}")).bytes_async()))

    return sum(await asyncio.gather(*(one(f) for f in FILES)))


async def run(quick: bool) -> dict[str, Any]:
    n = 20_000 if quick else 200_000
    at = n * 95 // 100
    rounds = 3
    os.environ.update(AWS_ENV)  # the client's standard chain reads them, as it would real ones
    server = await asyncio.to_thread(S3Server().start)
    try:
        snapshots = SnapshotStore(server.url("bench"), endpoint=server.endpoint)
        raw: Any = snapshots._store  # the same client and connection settings
        async with temp_log("bench_replica") as log:
            events = _events(n)
            await append_all(log.store, events[:at])
            await settle(log)
            with tempfile.TemporaryDirectory(prefix="bench-replica-") as tmp:
                root = Path(tmp)
                # the snapshotter's replica at 95% of the log; its snapshot in the store
                async with VectorIndex(FaissConfig(index_path=root / "maker", dimension=DIM)) as v:
                    sink = FaissSink(v)
                    version = await ensure_active(embeddings, sink, log.checkpoints)
                    await Projector(embeddings, sink, log.store, log.checkpoints,
                                    version=version).catch_up()  # fmt: skip
                    files = await v.export_snapshot(NAMESPACE)
                    size = sum(len(b) for b in files.values())
                    await publish_now(v, snapshots, NAMESPACE)
                await append_all(log.store, events[at:])
                await settle(log)
                del events

                pointer = await snapshots.pointer(NAMESPACE)
                assert pointer is not None
                newest = pointer.snapshots[0]
                prefix = f"{NAMESPACE}/snapshots/{newest.id}"
                boot: list[float] = []
                loads: list[float] = []
                gets: list[float] = []
                replay: list[float] = []
                for r in range(rounds):
                    t = time.perf_counter()  # the bound of the download: moto serving the files
                    await _raw_get(raw, prefix)
                    gets.append(time.perf_counter() - t)
                    seconds, read, booted = await _ready(log, root / f"boot{r}", snapshots)
                    if read != n - at:
                        raise RuntimeError(f"bootstrap replayed {read} events, expected {n - at}")
                    boot.append(seconds)
                    loads.append(booted)
                    seconds, read, _ = await _ready(log, root / f"replay{r}", None)
                    replay.append(seconds)

                up: list[float] = []
                up_raw: list[float] = []
                down: list[float] = []
                down_raw: list[float] = []
                for r in range(rounds):
                    t = time.perf_counter()
                    got = await snapshots.download(NAMESPACE, newest, progress=lambda n: None)
                    down.append(size / (time.perf_counter() - t) / 1e6)
                    del got
                    t = time.perf_counter()
                    await _raw_get(raw, prefix)
                    down_raw.append(size / (time.perf_counter() - t) / 1e6)
                    t = time.perf_counter()
                    await snapshots.publish(f"up{r}", files, position=at, count=at)
                    up.append(size / (time.perf_counter() - t) / 1e6)
                    t = time.perf_counter()
                    await _raw_put(raw, f"raw{r}", files)
                    up_raw.append(size / (time.perf_counter() - t) / 1e6)
    finally:
        await asyncio.to_thread(server.stop)
    speedup = median(replay) / median(boot)
    ready_note = (
        f"{n:,} vectors d={DIM} (one key each), snapshot at {at:,} ({size / 1e6:,.0f} MB in 3 "
        f"files) + {n - at:,} events of tail; median of {rounds} alternated rounds. project: "
        f"Replica.bootstrap from moto S3 (pointer, download, sha256 + faiss verification, load) "
        f"then the projector replays the tail. raw: the projector replays the whole log into an "
        f"empty namespace. {speedup:.1f}x faster; of the bootstrap's {median(boot):.2f} s, "
        f"{median(loads):.2f} s went to the snapshot (pointer, download, verification, load) "
        f"and the rest to the tail; obstore's own GET of the same 3 objects took "
        f"{median(gets):.2f} s in the same rounds."
    )
    transfer = f"{size / 1e6:,.0f} MB in 3 objects, moto S3 on 127.0.0.1, median of {rounds}"
    return {
        "time_to_ready": figure(median(boot), median(replay), "s",
                                "<= 0.2 (>= 5x faster than a full replay)", note=ready_note,
                                rounds_project=boot, rounds_raw=replay, speedup=speedup,
                                rounds_snapshot=loads, rounds_raw_get=gets),
        "upload_throughput": figure(median(up), median(up_raw), "MB/s", ">= 0.8x", note=(
            f"{transfer}. project: SnapshotStore.publish (3 files, the pointer, the prune "
            f"listing). raw: obstore.put_async of the 3 files, same multipart settings."),
            rounds_project=up, rounds_raw=up_raw),
        "download_throughput": figure(median(down), median(down_raw), "MB/s", ">= 0.8x", note=(
            f"{transfer}. project: SnapshotStore.download (streamed, each file hashed as it arrives, progress counted). raw: "
            f"obstore.get_async + bytes_async of the 3 objects."),
            rounds_project=down, rounds_raw=down_raw),
    }  # fmt: skip
