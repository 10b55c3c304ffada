"""FAISS replicas from object storage (issue 20), in one process against a local S3 server
(moto, started per test): a replica bootstrapped from the store answers exactly as the one that
made the snapshot; damaged snapshots are refused, naming the object, and the previous one is
used; an unreachable store costs time, not availability; the store keeps what it should."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import obstore
import pytest
from obstore.store import S3Store

from satellites_es.config import DataLayerConfig, EventLogConfig, FaissConfig, PostgresConfig
from satellites_es.demo.projections import embeddings
from satellites_es.errors import BackendUnavailableError
from satellites_es.facade import DataLayer
from satellites_es.metrics import Metrics
from satellites_es.projections import Checkpoints, Projector, ensure_active
from satellites_es.projections.faiss_sink import FaissSink
from satellites_es.projections.projector import FollowerStatus, follow_active
from satellites_es.projections.replica import Replica
from satellites_es.projections.snapshotter import Lease, Snapshotter, publish_now
from satellites_es.projections.supervisor import ProjectionService
from satellites_es.store import EventStore
from satellites_es.testing.network_faults import TcpProxy
from satellites_es.testing.s3 import AWS_ENV, S3Server
from satellites_es.vectors import VectorIndex
from satellites_es.vectors.persistence import INDEX_FILE, MANIFEST_FILE, META_FILE
from satellites_es.vectors.snapshot_store import POINTER, SnapshotStore
from tests.integration.test_projection_faults import _until
from tests.replica_support import (
    DIM,
    NAMESPACE,
    assert_matches_log,
    embedding_events,
    log_fold,
    raw_store,
)


@contextlib.asynccontextmanager
async def replica(
    path: Path, store: EventStore, checkpoints: Checkpoints, snapshots: SnapshotStore | None
) -> AsyncIterator[tuple[VectorIndex, Replica | None, Projector]]:
    """A serving process's FAISS side: its index on ``path``, bootstrapping through the store."""
    async with VectorIndex(FaissConfig(index_path=path, dimension=DIM)) as vectors:
        boot = Replica(vectors, snapshots) if snapshots is not None else None
        sink = FaissSink(vectors, boot)
        version = await ensure_active(embeddings, sink, checkpoints)
        await sink.activate(embeddings, version)
        yield vectors, boot, Projector(embeddings, sink, store, checkpoints, version=version)


async def _publish_from(
    path: Path, store: EventStore, checkpoints: Checkpoints, snapshots: SnapshotStore
) -> tuple[int, str | None]:
    """A replica on ``path`` catches up with the log and publishes its snapshot, then stops."""
    async with replica(path, store, checkpoints, snapshots) as (vectors, _, projector):
        await projector.catch_up()
        return await publish_now(vectors, snapshots, NAMESPACE)


async def _answers(vectors: VectorIndex, queries: np.ndarray) -> list[Any]:
    """Every query's full ranking: ids, scores and metadata."""
    count = await vectors.count(NAMESPACE)
    rows = await vectors.query_many(NAMESPACE, queries, top_k=count)
    one = await vectors.query(NAMESPACE, queries[0], top_k=10, filter={"topic": "a"})
    return [[(m.id, m.score, dict(m.metadata or {})) for m in row] for row in [*rows, one]]


async def test_bootstrapped_replica_answers_like_the_one_that_made_the_snapshot(
    store: EventStore, checkpoints: Checkpoints, tmp_path: Path, s3: S3Server
) -> None:
    rng = random.Random(20)
    snapshots = SnapshotStore(s3.url("roundtrip"), endpoint=s3.endpoint)
    await store.append(embedding_events(rng, 600, keys=300))
    async with replica(tmp_path / "a", store, checkpoints, snapshots) as (first, _, projector):
        await projector.catch_up()
        position, published = await publish_now(first, snapshots, NAMESPACE)
        assert published is not None and position == await store.head()
        tail = embedding_events(rng, 150, keys=400)  # new keys, overwrites and deletes
        await store.append(tail)
        await projector.catch_up()
        queries = np.asarray([[rng.gauss(0, 1) for _ in range(DIM)] for _ in range(8)], "float32")
        expected = await _answers(first, queries)

        async with replica(tmp_path / "b", store, checkpoints, snapshots) as (second, boot, p2):
            result = await p2.catch_up()
            assert boot is not None
            status = boot.status[NAMESPACE]
            assert (status.source, status.snapshot, status.position) == (
                "store",
                published,
                position,
            )
            assert status.refused == [] and status.store_error is None
            assert result.events == len(tail)  # only the log after the snapshot was read
            assert await _answers(second, queries) == expected  # ids, scores, metadata
            await assert_matches_log(second, NAMESPACE, await log_fold(store))


async def _corrupt(raw: S3Store, key: str, how: str, other: str = "") -> None:
    """Damage one object in place, through ``raw`` (:func:`raw_store`: not through our code):
    one byte changed, cut to half its length, or ``swapped`` for the same file of another
    snapshot (whole and valid, but not this snapshot's)."""
    data = bytearray(bytes(await (await obstore.get_async(raw, other or key)).bytes_async()))
    if how == "byte":
        data[len(data) // 2] ^= 0x01
    elif how == "truncated":
        data = data[: len(data) // 2]
    await obstore.put_async(raw, key, bytes(data))


@pytest.mark.parametrize(
    ("how", "file"),
    [(how, f) for f in (INDEX_FILE, META_FILE, MANIFEST_FILE) for how in ("byte", "truncated")]
    + [("swapped", META_FILE)],
)
async def test_damaged_snapshot_is_refused_naming_the_object_and_the_previous_is_used(
    store: EventStore, checkpoints: Checkpoints, tmp_path: Path, s3: S3Server,
    caplog: pytest.LogCaptureFixture, how: str, file: str,
) -> None:  # fmt: skip
    rng = random.Random(21)
    snapshots = SnapshotStore(s3.url(f"damaged-{how}"), endpoint=s3.endpoint)
    async with replica(tmp_path / "a", store, checkpoints, snapshots) as (first, _, projector):
        await store.append(embedding_events(rng, 300, keys=200))
        await projector.catch_up()
        older_at, older = await publish_now(first, snapshots, NAMESPACE)
        await store.append(embedding_events(rng, 100, keys=200))
        await projector.catch_up()
        _, newer = await publish_now(first, snapshots, NAMESPACE)
    assert older is not None and newer is not None
    damaged = f"{NAMESPACE}/snapshots/{newer}/{file}"
    raw = raw_store(snapshots.url, s3.endpoint)
    await _corrupt(raw, damaged, how, other=damaged.replace(newer, older))
    await store.append(embedding_events(rng, 50, keys=250))

    caplog.set_level(logging.ERROR, logger="satellites_es.projections.replica")
    async with replica(tmp_path / "b", store, checkpoints, snapshots) as (second, boot, p2):
        await p2.catch_up()
        assert boot is not None
        status = boot.status[NAMESPACE]
        assert (status.source, status.snapshot, status.position) == ("store", older, older_at)
        assert len(status.refused) == 1 and snapshots.where(damaged) in status.refused[0]
        assert any(snapshots.where(damaged) in r.getMessage() for r in caplog.records)
        await assert_matches_log(second, NAMESPACE, await log_fold(store))


async def test_every_snapshot_refused_means_a_replay_from_the_log(
    store: EventStore, checkpoints: Checkpoints, tmp_path: Path, s3: S3Server
) -> None:
    rng = random.Random(22)
    snapshots = SnapshotStore(s3.url("all-bad"), endpoint=s3.endpoint)
    await store.append(embedding_events(rng, 200, keys=100))
    _, only = await _publish_from(tmp_path / "a", store, checkpoints, snapshots)
    await _corrupt(raw_store(snapshots.url, s3.endpoint),
                   f"{NAMESPACE}/snapshots/{only}/{INDEX_FILE}", "truncated")  # fmt: skip
    async with replica(tmp_path / "b", store, checkpoints, snapshots) as (second, boot, p2):
        result = await p2.catch_up()
        assert boot is not None and boot.status[NAMESPACE].source == "log"
        assert result.events == 200  # the whole log: no mismatched index was served
        await assert_matches_log(second, NAMESPACE, await log_fold(store))


async def test_store_keeps_its_count_and_deletes_only_snapshots_it_made(
    store: EventStore, checkpoints: Checkpoints, tmp_path: Path, s3: S3Server
) -> None:
    rng = random.Random(23)
    snapshots = SnapshotStore(s3.url("keep"), endpoint=s3.endpoint, keep=2)
    raw = raw_store(s3.url("keep"), s3.endpoint)
    foreign = [f"{NAMESPACE}/snapshots/not-ours/index.faiss", f"{NAMESPACE}/notes.txt"]
    for key in foreign:
        await obstore.put_async(raw, key, b"someone else's")
    published = []
    async with replica(tmp_path / "a", store, checkpoints, snapshots) as (first, _, projector):
        for _ in range(4):
            await store.append(embedding_events(rng, 40, keys=50))
            await projector.catch_up()
            published.append((await publish_now(first, snapshots, NAMESPACE))[1])
        # nothing new applied: nothing to publish
        assert (await publish_now(first, snapshots, NAMESPACE))[1] is None
    pointer = await snapshots.pointer(NAMESPACE)
    assert pointer is not None and [s.id for s in pointer.snapshots] == published[:1:-1]
    keys = sorted(m["path"] for batch in obstore.list(raw) for m in batch)
    ours = {f"{NAMESPACE}/snapshots/{i}/{f}" for i in published[2:]
            for f in ("index.faiss", "meta.json", "MANIFEST.json")}  # fmt: skip
    assert keys == sorted({*ours, *foreign, f"{NAMESPACE}/{POINTER}"})
    assert await snapshots.namespaces() == [NAMESPACE]


async def test_a_shared_volume_works_as_the_store(
    store: EventStore, checkpoints: Checkpoints, tmp_path: Path
) -> None:
    rng = random.Random(24)
    snapshots = SnapshotStore((tmp_path / "volume").as_uri())
    await store.append(embedding_events(rng, 200, keys=100))
    _, published = await _publish_from(tmp_path / "a", store, checkpoints, snapshots)
    assert (tmp_path / "volume" / NAMESPACE / POINTER).is_file()
    async with replica(tmp_path / "b", store, checkpoints, snapshots) as (second, boot, p2):
        assert (await p2.catch_up()).events == 0
        assert boot is not None and boot.status[NAMESPACE].snapshot == published
        await assert_matches_log(second, NAMESPACE, await log_fold(store))


async def test_store_errors_name_the_object_never_the_credentials(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    down = S3Server()  # never started: nothing listens on its port
    snapshots = SnapshotStore(down.url("x"), endpoint=down.endpoint, retries=0)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BackendUnavailableError) as caught:
        await snapshots.pointer(NAMESPACE)
    message = str(caught.value)
    assert (
        caught.value.backend == "object_store"
        and f"{down.url('x')}/{NAMESPACE}/{POINTER}" in message
    )
    for secret in (AWS_ENV["AWS_SECRET_ACCESS_KEY"], AWS_ENV["AWS_ACCESS_KEY_ID"]):
        assert secret not in message and secret not in caplog.text
    assert "\n" not in message  # one line, not the client's debug dump


async def test_store_down_at_start_serves_from_the_local_snapshot_or_the_log(
    config_env: dict[str, str], s3: S3Server, tmp_path: Path
) -> None:
    env = {**config_env, **s3.env("down"), "SATELLITES_FAISS_DIMENSION": str(DIM)}
    rng = random.Random(25)

    async def serve(faiss_dir: Path, appended: int) -> dict[str, Any]:
        """A serving process until it caught up; returns its health, checks its content."""
        config = DataLayerConfig.from_env({**env, "SATELLITES_FAISS_INDEX_PATH": str(faiss_dir)})
        async with DataLayer(config) as data:
            head = (await data.log.append(embedding_events(rng, appended, keys=80))).last_position
            service = ProjectionService(data, [embeddings], poll_interval=0.2)
            await service.start()
            try:
                await service.wait_for(head, timeout=60)
                for _ in range(50):  # the follower says running once its pass is done
                    if service.health()["embeddings"]["state"] == "running":
                        break
                    await asyncio.sleep(0.1)
                health = service.health()["embeddings"]
                metrics = Metrics()
                await metrics.refresh(data, service)
                health["metrics"] = metrics.render().decode()
                hits = await data.vectors.query("embeddings", [1.0] * DIM, top_k=3)
                assert len(hits) == 3  # serving
                await assert_matches_log(data.vectors, NAMESPACE, await log_fold(data.log))
            finally:
                await service.stop()  # saves the local snapshot
        return health

    up = await serve(tmp_path / "one", 120)
    assert up["replica"]["source"] == "log" and up["replica"]["store"] == "ok"
    s3.stop()  # the store is unreachable from here on
    local = await serve(tmp_path / "one", 30)  # same disk: its own snapshot
    assert local["state"] == "running" and local["ok"], local
    assert local["replica"]["source"] == "local" and local["replica"]["store"] == "down"
    assert local["replica"]["phase"] == "ready"
    assert "object_store" in local["replica"]["store_error"]
    assert 'satellites_snapshot_store_up{projection="embeddings"} 0.0' in local["metrics"]
    empty = await serve(tmp_path / "two", 30)  # a new disk: the whole log
    assert empty["replica"]["source"] == "log" and empty["replica"]["store"] == "down"
    assert empty["state"] == "running"


async def test_one_snapshotter_uploads_when_due_while_the_other_stands_by(
    store: EventStore, checkpoints: Checkpoints, tmp_path: Path, s3: S3Server,
    migrated: PostgresConfig,
) -> None:  # fmt: skip
    rng = random.Random(26)
    snapshots = SnapshotStore(s3.url("leader"), endpoint=s3.endpoint)
    key = f"{migrated.schema}.embeddings"
    async with (
        replica(tmp_path / "a", store, checkpoints, snapshots) as (va, _, pa),
        replica(tmp_path / "b", store, checkpoints, snapshots) as (vb, _, pb),
    ):
        a, b = (Snapshotter(embeddings, v, snapshots, Lease(migrated.dsn, key), every_events=100,
                            every_seconds=3600.0) for v in (va, vb))  # fmt: skip
        try:

            async def step(n: int) -> tuple[bool, bool]:
                await store.append(embedding_events(rng, n, keys=500))
                await pa.catch_up()
                await pb.catch_up()
                return await a.run_once(), await b.run_once()

            assert await step(60) == (False, False)  # 60 events: not due yet
            assert await step(60) == (True, False)  # due: a took the lease, b stands by
            assert (a.status.state, b.status.state) == ("leader", "standby")
            pointer = await snapshots.pointer(NAMESPACE)
            assert pointer is not None and pointer.snapshots[0].position == await store.head()
            await a.lease.release()  # the leader's session ends (a crash frees it too)
            await store.append(embedding_events(rng, 120, keys=500))
            await pb.catch_up()
            assert await b.run_once() and b.status.state == "leader"  # b took over
            await pa.catch_up()
            assert not await a.run_once() and a.status.state == "standby"  # due, not leading
        finally:
            await a.lease.release()
            await b.lease.release()


async def test_a_publisher_that_lost_the_race_never_moves_the_pointer_back(s3: S3Server) -> None:
    """Two publishers read the same pointer; the later position commits first (its files are
    small), then the earlier one's conditional rewrite is refused and it publishes nothing."""
    url = s3.url("race")
    first, second = (SnapshotStore(url, endpoint=s3.endpoint) for _ in range(2))

    def files(size: int, tag: bytes) -> dict[str, bytes]:
        return {INDEX_FILE: tag * size, META_FILE: tag, "MANIFEST.json": tag + b"manifest"}

    slow, fast = await asyncio.gather(
        first.publish(NAMESPACE, files(30_000_000, b"a"), position=100, count=1),
        second.publish(NAMESPACE, files(10, b"b"), position=200, count=1),
    )
    assert slow is None and fast is not None
    pointer = await first.pointer(NAMESPACE)
    assert pointer is not None and [s.id for s in pointer.snapshots] == [fast.id]


# -- faults of a replica as a long-running part ------------------------------------------------


async def test_store_cut_mid_download_is_reported_and_the_replica_replays_the_log(
    store: EventStore, checkpoints: Checkpoints, tmp_path: Path, s3: S3Server
) -> None:
    """The store lost in the middle of the index's download (a proxy that severs and refuses
    every connection after 1.5 MB of a ~4 MB snapshot): nothing of it is served, health says
    the store is down naming the object, and the replica replays the log and serves. Once the
    store is back, a new replica bootstraps from it."""
    rng = random.Random(40)
    direct = SnapshotStore(s3.url("cut"), endpoint=s3.endpoint)
    await store.append(embedding_events(rng, 4000, keys=4000))
    _, published = await _publish_from(tmp_path / "maker", store, checkpoints, direct)
    pointer = await direct.pointer(NAMESPACE)
    assert published is not None and pointer is not None and pointer.snapshots[0].bytes > 3e6
    await store.append(embedding_events(rng, 200, keys=4000))  # a tail
    async with TcpProxy("127.0.0.1", s3.port, cut_after=1_500_000) as proxy:
        via = SnapshotStore(s3.url("cut"), endpoint=f"http://127.0.0.1:{proxy.port}", retries=1)
        async with replica(tmp_path / "a", store, checkpoints, via) as (vectors, boot, projector):
            await projector.catch_up()
            assert proxy.blocked and boot is not None  # the cut happened during the bootstrap
            status = boot.status[NAMESPACE]
            assert (status.source, status.snapshot, status.refused) == ("log", None, [])
            assert status.store_error is not None and "\n" not in status.store_error
            assert "object_store" in status.store_error
            assert f"/snapshots/{published}/" in status.store_error  # names the object
            assert 0 < status.done < pointer.snapshots[0].bytes  # it was cut mid-way
            assert len(await vectors.query(NAMESPACE, [1.0] * DIM, top_k=3)) == 3
            await assert_matches_log(vectors, NAMESPACE, await log_fold(store))
        proxy.restore()
        async with replica(tmp_path / "b", store, checkpoints, via) as (vectors, boot, projector):
            await projector.catch_up()
            assert boot is not None and boot.status[NAMESPACE].source == "store"
            await assert_matches_log(vectors, NAMESPACE, await log_fold(store))


async def test_postgres_cut_during_the_tail_replay_is_ridden_out_while_the_snapshot_serves(
    migrated: PostgresConfig, store: EventStore, checkpoints: Checkpoints, tmp_path: Path,
    s3: S3Server,
) -> None:  # fmt: skip
    """Postgres unreachable from a replica after its snapshot loaded, in the middle of the
    log's tail: the follower says Postgres is down and retries, the namespace keeps answering
    from the snapshot meanwhile, and once Postgres is back the replica converges with the log
    without downloading again."""
    rng = random.Random(41)
    snapshots = SnapshotStore(s3.url("pgcut"), endpoint=s3.endpoint)
    await store.append(embedding_events(rng, 1000, keys=600))
    position, published = await _publish_from(tmp_path / "maker", store, checkpoints, snapshots)
    await store.append(embedding_events(rng, 3000, keys=600))  # the tail: three batches
    async with TcpProxy(migrated.host, migrated.port) as proxy:
        dsn = migrated.dsn.replace(f"{migrated.host}:{migrated.port}", f"127.0.0.1:{proxy.port}")
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=3, timeout=2)
        try:
            via = EventStore(pool, schema=migrated.schema, config=EventLogConfig(), dsn=dsn)
            via_checkpoints = Checkpoints(pool, migrated.schema)
            async with VectorIndex(
                FaissConfig(index_path=tmp_path / "r", dimension=DIM)
            ) as vectors:
                boot = Replica(vectors, snapshots)
                sink = _CutAfterFirstApply(vectors, boot, proxy)
                status, stop = FollowerStatus(), asyncio.Event()
                follower = asyncio.create_task(follow_active(
                    embeddings, sink, via, via_checkpoints, stop=stop, poll_interval=0.2,
                    status=status))  # fmt: skip
                try:
                    await _until(lambda: status.state == "backend_down", 30, "backend_down")
                    assert not follower.done() and status.error is not None
                    assert boot.status[NAMESPACE].snapshot == published
                    applied = vectors.applied_position(NAMESPACE)
                    assert applied is not None and position < applied < await store.head()
                    hits = await vectors.query(NAMESPACE, [1.0] * DIM, top_k=3)
                    assert len(hits) == 3  # the snapshot and the tail so far keep serving
                    proxy.restore()
                    head = await store.head()
                    await _until(lambda: vectors.applied_position(NAMESPACE) == head, 60, "head")
                finally:
                    proxy.restore()
                    stop.set()
                    await asyncio.wait_for(follower, 30)
                assert boot.status[NAMESPACE].source == "store"  # downloaded once, not again
                await assert_matches_log(vectors, NAMESPACE, await log_fold(store))
        finally:
            await pool.close()


class _CutAfterFirstApply(FaissSink):
    """A FAISS sink that cuts Postgres (through ``proxy``) once it has applied a batch of the
    tail: the cut lands in the middle of the tail's replay, whatever the timing."""

    def __init__(self, vectors: VectorIndex, boot: Replica, proxy: TcpProxy) -> None:
        super().__init__(vectors, boot)
        self.proxy, self.done = proxy, False

    async def apply_runs(self, projection: Any, version: int, runs: Any) -> int:
        applied = await super().apply_runs(projection, version, runs)
        if not self.done:
            self.done = True
            self.proxy.cut()
        return applied
