"""FAISS replicas from object storage as an operator runs them (issue 20): ``satellites-es
project`` processes against a local S3 server (moto) of the test's own.

* A snapshotter SIGKILLed in the middle of an upload leaves the pointer naming the previous
  complete snapshot; a new replica bootstraps from it and converges to the log.
* Three replicas started at different times while events keep arriving all converge to the
  log's content, key by key; only one of them uploads.
* ``snapshots list`` and ``snapshots create`` with their exit codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import obstore
import pytest

from satellites_es.config import DataLayerConfig, EventLogConfig, FaissConfig
from satellites_es.migrate import upgrade
from satellites_es.store import EventStore
from satellites_es.testing.s3 import S3Server
from satellites_es.testing.services import free_port
from satellites_es.vectors import VectorIndex
from satellites_es.vectors.snapshot_store import SnapshotStore
from tests.replica_support import (
    DIM,
    NAMESPACE,
    assert_matches_log,
    embedding_events,
    log_fold,
    raw_store,
)

from .conftest import CLI, run_cli
from .test_service_cli import _get, _wait_http

pytestmark = pytest.mark.slow


class SlowProxy:
    """A TCP proxy that forwards uploads (client to server) at ``up`` bytes/s and downloads at
    ``down``: an upload in flight long enough to kill its process in the middle, a download
    long enough to watch a replica bootstrapping."""

    def __init__(self, target_port: int, up: float = 1e12, down: float = 1e12) -> None:
        self.target, self.up, self.down = target_port, up, down
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                return
            self._sockets += [client, upstream]
            for src, dst, rate in ((client, upstream, self.up), (upstream, client, self.down)):
                threading.Thread(target=self._pipe, args=(src, dst, rate), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, rate: float) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(16384):
                time.sleep(len(data) / rate)
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed = True
        for s in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                s.close()


@pytest.fixture
def env(config_env: dict[str, str], s3: S3Server, test_id: str) -> dict[str, str]:
    config = DataLayerConfig.from_env(config_env)
    asyncio.run(upgrade(config.postgres))
    return {**config_env, **s3.env(test_id), "SATELLITES_FAISS_DIMENSION": str(DIM),
            "SATELLITES_FAISS_SNAPSHOT_EVERY_SECONDS": "1"}  # fmt: skip


async def _with_store(env: dict[str, str], work: Any) -> Any:
    config = DataLayerConfig.from_env(env)
    pool = await asyncpg.create_pool(config.postgres.dsn, min_size=1, max_size=2)
    try:
        return await work(EventStore(pool, schema=config.postgres.schema, config=EventLogConfig()))
    finally:
        await pool.close()


def _append(env: dict[str, str], rng: random.Random, n: int, keys: int) -> int:
    async def go(store: EventStore) -> int:
        return (await store.append(embedding_events(rng, n, keys))).last_position

    return int(asyncio.run(_with_store(env, go)))


def _pointer(env: dict[str, str]) -> list[Any]:
    async def go() -> list[Any]:
        store = SnapshotStore.from_config(DataLayerConfig.from_env(env).faiss)
        assert store is not None
        pointer = await store.pointer(NAMESPACE)
        return list(pointer.snapshots) if pointer else []

    return asyncio.run(go())


def _objects(env: dict[str, str]) -> list[str]:
    raw = raw_store(env["SATELLITES_FAISS_SNAPSHOT_URL"], env["SATELLITES_FAISS_SNAPSHOT_ENDPOINT"])
    return sorted(m["path"] for batch in obstore.list(raw) for m in batch)


@contextlib.contextmanager
def _services() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
            if p.stderr is not None:
                p.stderr.close()


def _project(
    env: dict[str, str], faiss_dir: Path, port: int, **extra: str
) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("SATELLITES_")}
    full.update(env, SATELLITES_FAISS_INDEX_PATH=str(faiss_dir), **extra)
    return subprocess.Popen([*CLI, "project", "-p", "embeddings", "--http-port", str(port)],
                            env=full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _health(port: int) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(_get(f"http://127.0.0.1:{port}/health")[1])
    return dict(report["projections"]["embeddings"])


def _until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _matches_log(env: dict[str, str], faiss_dir: Path) -> None:
    """The snapshot a stopped replica saved holds what the log says, key by key."""

    async def go(store: EventStore) -> None:
        async with VectorIndex(FaissConfig(index_path=faiss_dir, dimension=DIM)) as vectors:
            await assert_matches_log(vectors, NAMESPACE, await log_fold(store))

    asyncio.run(_with_store(env, go))


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, proc.communicate()[1][-3000:]


def test_snapshotter_killed_mid_upload_leaves_the_previous_snapshot_current(
    env: dict[str, str], s3: S3Server, tmp_path: Path
) -> None:
    rng = random.Random(30)
    head = _append(env, rng, 300, keys=300)
    proxy = SlowProxy(s3.port, up=1_500_000)  # 1.5 MB/s for uploads
    slow = {**env, "SATELLITES_FAISS_SNAPSHOT_ENDPOINT": f"http://127.0.0.1:{proxy.port}",
            "SATELLITES_FAISS_SNAPSHOT_EVERY_EVENTS": "200"}  # fmt: skip
    with _services() as procs:
        port = free_port()
        procs.append(snapshotter := _project(slow, tmp_path / "a", port))
        _wait_http(f"http://127.0.0.1:{port}/health", snapshotter)
        _until(lambda: [s.position for s in _pointer(env)] == [head], 60, "the first snapshot")
        first = _pointer(env)[0]
        head = _append(env, rng, 4000, keys=4000)  # a ~6 MB index: seconds to upload
        _until(lambda: any(f"/snapshots/{first.id}/" not in k and k.endswith("meta.json")
                           for k in _objects(env)), 60, "the next upload to start")  # fmt: skip
        os.kill(snapshotter.pid, signal.SIGKILL)
        snapshotter.wait(timeout=10)
        proxy.close()
        assert [s.id for s in _pointer(env)] == [first.id]  # the pointer never saw the next
        left = [k for k in _objects(env) if "/snapshots/" in k and first.id not in k]
        assert left and not any(k.endswith("MANIFEST.json") for k in left), left  # half a one

        # a new replica, downloading at 200 kB/s: health says bootstrapping, with its progress
        port, proxy = free_port(), SlowProxy(s3.port, down=200_000)
        procs.append(fresh := _project(env, tmp_path / "b", port, SATELLITES_FAISS_SNAPSHOT_UPLOAD="false",
                                       SATELLITES_FAISS_SNAPSHOT_ENDPOINT=f"http://127.0.0.1:{proxy.port}"))  # fmt: skip
        _wait_http(f"http://127.0.0.1:{port}/health", fresh)
        seen = []
        while (state := _health(port))["state"] != "running" or state["position"] < head:
            assert fresh.poll() is None and len(seen) < 600, seen[-3:]
            seen.append(state)
            time.sleep(0.1)
        proxy.close()
        downloading = [h["replica"] for h in seen if h["state"] == "bootstrapping"
                       and h["replica"]["phase"] == "downloading"]  # fmt: skip
        assert downloading and 0 < downloading[-1]["bytes_done"] < downloading[-1]["bytes_total"]
        replica = state["replica"]
        assert (replica["source"], replica["snapshot"]) == ("store", first.id), replica
        _stop(fresh)
    _matches_log(env, tmp_path / "b")


def test_three_replicas_started_at_different_times_converge_to_the_log(
    env: dict[str, str], tmp_path: Path
) -> None:
    rng = random.Random(31)
    head = _append(env, rng, 400, keys=300)
    stop = threading.Event()

    def produce() -> None:  # events keep arriving, bounded in count and time
        for _ in range(300):
            if stop.is_set():
                return
            _append(env, rng, 10, keys=600)
            time.sleep(0.1)

    producer = threading.Thread(target=produce, daemon=True)
    ports = [free_port() for _ in range(3)]
    sources = {}
    with _services() as procs:
        producer.start()
        try:
            for i, port in enumerate(ports):
                if i:  # the next replica comes when a newer snapshot is in the store
                    seen = _pointer(env)[0].position if _pointer(env) else 0
                    _until(lambda s=seen: _pointer(env) and _pointer(env)[0].position > s, 60,
                           "a newer snapshot")  # fmt: skip
                procs.append(proc := _project(env, tmp_path / f"r{i}", port))
                _wait_http(f"http://127.0.0.1:{port}/health", proc)
                _until(lambda p=port: _health(p)["state"] == "running", 60, f"replica {i}")
                sources[i] = _health(port)["replica"]["source"]
        finally:
            stop.set()
            producer.join(timeout=60)
        head = asyncio.run(_with_store(env, lambda store: store.head()))
        _until(lambda: all(_health(p)["position"] >= head for p in ports), 60, "convergence")
        leaders = [_health(p)["snapshotter"]["state"] for p in ports]
        assert leaders.count("leader") == 1 and leaders.count("standby") == 2, leaders
        for proc in procs:
            _stop(proc)
    assert sources[1] == sources[2] == "store", sources
    for i in range(3):
        _matches_log(env, tmp_path / f"r{i}")


def test_snapshots_cli_lists_and_creates(env: dict[str, str], test_id: str) -> None:
    rng = random.Random(32)
    empty = run_cli(["snapshots", "list"], env)
    assert empty.returncode == 0 and "no snapshots" in empty.stdout, empty.stderr
    head = _append(env, rng, 200, keys=100)
    made = run_cli(["snapshots", "create", "embeddings"], env)
    assert made.returncode == 0, made.stderr
    (snapshot,) = _pointer(env)
    assert snapshot.position == head and f"published snapshot {snapshot.id}" in made.stdout
    listed = run_cli(["snapshots", "list", NAMESPACE], env)
    assert listed.returncode == 0 and snapshot.id in listed.stdout and "current" in listed.stdout
    again = run_cli(["snapshots", "create", "embeddings"], env)  # nothing new: nothing uploaded
    assert again.returncode == 0 and "already holds" in again.stdout, again.stderr

    not_faiss = run_cli(["snapshots", "create", "entities"], env)
    assert not_faiss.returncode == 2 and not_faiss.stderr.count("\n") == 1
    assert "not faiss" in not_faiss.stderr
    unset = {k: v for k, v in env.items() if k != "SATELLITES_FAISS_SNAPSHOT_URL"}
    none = run_cli(["snapshots", "list"], unset)
    assert none.returncode == 2 and "SATELLITES_FAISS_SNAPSHOT_URL" in none.stderr
    down = {**env, "SATELLITES_FAISS_SNAPSHOT_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    failed = run_cli(["snapshots", "list"], down)
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1, failed.stderr
    assert "object_store" in failed.stderr and "satellites-test-secret" not in failed.stderr
