"""Bootstrapping a FAISS replica: the newest verified snapshot of the object store, else the
local one, else the log.

A serving process holds its own FAISS replica (ARCHITECTURE point 6). With a snapshot store
configured (``FaissConfig.snapshot_url``), the first time a process prepares a namespace,
:meth:`Replica.bootstrap` compares what the store's pointer names with the local snapshot it
loaded at start, and downloads the store's when that is newer: a new process with an empty disk
is then ready after one download and the log's tail, instead of a replay of the whole log. The
projector that called it replays the log from the loaded snapshot's position.

What is never done: serve a snapshot that fails verification. The download is verified in memory
(:mod:`~satellites_es.vectors.persistence`'s ``decode_*`` steps: hashes, sizes, index against
metadata) before it replaces anything (:meth:`~satellites_es.vectors.VectorIndex.adopt_snapshot`); a refused snapshot is named in the log, counted in
``refused`` (health and ``/metrics``), and the previous one the pointer keeps is tried next. If
none is usable, or the store cannot be reached (``store_error``), the replica keeps its local
snapshot or, with none, replays the log: the store being down costs time, never availability.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import BackendUnavailableError, CorruptIndexError
from ..vectors import VectorIndex
from ..vectors.persistence import (
    INDEX_FILE,
    MANIFEST_FILE,
    META_FILE,
    Snapshot,
    assemble,
    decode_index,
    decode_state,
    open_manifest,
)
from ..vectors.snapshot_store import RemoteSnapshot, SnapshotStore

__all__ = ["Replica", "ReplicaStatus"]

logger = logging.getLogger(__name__)


@dataclass
class ReplicaStatus:
    """Where a replica's namespace came from, for ``health()`` and ``/metrics``.

    ``phase``: ``checking`` (reading the pointer), ``downloading`` (``done``/``total`` bytes),
    ``loading`` (verifying and loading), then ``replaying`` (the log after ``position``), and in
    health ``ready`` once the follower has caught up (it then reports ``running``). ``source``: ``store``, ``local`` or
    ``log``. ``refused``: snapshots that failed verification, each with the object and why.
    """

    phase: str = "checking"
    source: str | None = None
    snapshot: str | None = None
    position: int | None = None
    done: int = 0
    total: int = 0
    refused: list[str] = field(default_factory=list)
    store_error: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "source": self.source, "snapshot": self.snapshot,
                "position": self.position, "bytes_done": self.done, "bytes_total": self.total,
                "refused": list(self.refused), "store": "down" if self.store_error else "ok",
                "store_error": self.store_error, "seconds": round(self.seconds, 3)}  # fmt: skip


class Replica:
    """Bootstraps namespaces of one :class:`VectorIndex` from one :class:`SnapshotStore`."""

    def __init__(self, vectors: VectorIndex, store: SnapshotStore) -> None:
        self.vectors = vectors
        self.store = store
        #: namespace -> its bootstrap, kept for health after it is done
        self.status: dict[str, ReplicaStatus] = {}

    async def bootstrap(self, namespace: str) -> ReplicaStatus:
        """Load the newest verified snapshot of ``namespace`` from the store if it is newer than
        the local one; never raises for the store's faults (see the module docstring)."""
        status = self.status[namespace] = ReplicaStatus()
        started = time.perf_counter()
        local = self.vectors.applied_position(namespace)
        try:
            chosen = await self._from_store(namespace, local, status)
        except BackendUnavailableError as exc:
            status.store_error = str(exc)
            logger.warning("replica %s: snapshot store unavailable (%s); using the %s", namespace,
                           exc, "local snapshot" if local is not None else "log")  # fmt: skip
            chosen = None
        if chosen is None:
            status.source = "local" if local is not None else "log"
            status.position = local
        else:
            status.source, status.snapshot, status.position = "store", chosen.id, chosen.position
        status.phase = "replaying"
        status.seconds = time.perf_counter() - started
        logger.info("replica %s: from the %s (snapshot %s, position %s) in %.2fs", namespace,
                    status.source, status.snapshot, status.position, status.seconds)  # fmt: skip
        return status

    async def _from_store(
        self, namespace: str, local: int | None, status: ReplicaStatus
    ) -> RemoteSnapshot | None:
        try:
            pointer = await self.store.pointer(namespace)
        except CorruptIndexError as exc:
            self._refuse(namespace, status, exc)
            return None
        for snapshot in pointer.snapshots if pointer is not None else ():
            if local is not None and snapshot.position <= local:
                return None  # the local snapshot is as new: nothing to download
            status.phase, status.done, status.total = "downloading", 0, snapshot.bytes
            try:
                await self.vectors.adopt_snapshot(await self._load(namespace, snapshot, status))
            except CorruptIndexError as exc:
                self._refuse(namespace, status, exc)
                continue
            return snapshot
        return None

    async def _load(
        self, namespace: str, snapshot: RemoteSnapshot, status: ReplicaStatus
    ) -> Snapshot:
        """Download and verify ``snapshot``: the metadata (small) is verified and parsed in a
        worker while the index is still arriving, then the index; nothing is served until every
        check of :func:`~satellites_es.vectors.persistence.decode_snapshot` has passed."""
        store, where = self.store, self.store.describe(namespace, snapshot)
        progress = status_adder(status)
        data, sha = await store.fetch(namespace, snapshot, MANIFEST_FILE, progress)
        manifest = open_manifest(namespace, data.join(), snapshot.manifest_sha256, where, sha)
        index_task = asyncio.create_task(store.fetch(namespace, snapshot, INDEX_FILE, progress))
        try:
            data, sha = await store.fetch(namespace, snapshot, META_FILE, progress)
            state = await asyncio.to_thread(decode_state, manifest, data, where, sha)
            data, sha = await index_task
        finally:
            if not index_task.done():  # the metadata was refused: stop the index's download
                index_task.cancel()
                await asyncio.gather(index_task, return_exceptions=True)
        status.phase = "loading"
        index = await asyncio.to_thread(decode_index, manifest, data, where, sha)
        return await asyncio.to_thread(assemble, manifest, index, state, where)

    def _refuse(self, namespace: str, status: ReplicaStatus, exc: CorruptIndexError) -> None:
        status.refused.append(str(exc))
        logger.error("replica %s: refused a snapshot that failed verification: %s", namespace, exc)


def status_adder(status: ReplicaStatus) -> Any:
    """A progress callback adding downloaded bytes to ``status.done``."""

    def add(n: int) -> None:
        status.done += n

    return add
