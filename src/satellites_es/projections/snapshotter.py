"""The snapshotter: one process publishes a FAISS projection's snapshots; the others download.

Every process that serves vector queries may run one (``FaissConfig.snapshot_upload``); only the
one holding the Postgres session advisory lock ``(hashtext('satellites.snapshotter'),
hashtext(schema || '.' || projection))`` uploads, as only one relay publishes (see
:mod:`satellites_es.relay`): the lock lives on a connection of its own, so a SIGKILLed leader
frees it and a standby takes over at its next try. The leader checks its session (``SELECT 1``)
before each upload. Two uploads overlapping across a lost session are harmless: the store's
pointer never goes back to an older position (:meth:`SnapshotStore.publish`).

An upload is due when the active version's namespace has applied ``every_events`` events since
the last published snapshot, or ``every_seconds`` have passed and anything was applied. The
snapshot is taken in memory (:meth:`VectorIndex.export_snapshot`, under the namespace's read lock,
which queries share) and uploaded while the projector goes on following the log. Store failures
are logged, reported (``error``) and retried at the next due time; the replica keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from ..faults import backoff, is_transient
from ..pgpool import session_connection
from ..sql import load
from ..vectors import VectorIndex
from ..vectors.persistence import MANIFEST_FILE
from ..vectors.snapshot_store import BACKEND, SnapshotStore
from .model import Projection

__all__ = ["Lease", "Snapshotter", "SnapshotterStatus", "publish_now"]

logger = logging.getLogger(__name__)

_LOCK_SQL = load("snapshotter_lock")
_HEARTBEAT_SQL = load("heartbeat")


class Lease:
    """A Postgres session advisory lock on a connection of its own: held until that session
    ends (a crash, a cut network, :meth:`release`)."""

    def __init__(self, dsn: str, key: str) -> None:
        self.dsn, self.key = dsn, key
        self._conn: asyncpg.Connection[asyncpg.Record] | None = None
        self._held = False

    async def hold(self) -> bool:
        """True if this process holds the lock now (taking it if free)."""
        if self._held and self._conn is not None and not self._conn.is_closed():
            try:
                async with asyncio.timeout(5.0):
                    await self._conn.fetchval(_HEARTBEAT_SQL)
                return True
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await self.release()
        if self._conn is None or self._conn.is_closed():
            self._conn = await session_connection(dsn=self.dsn)
        self._held = bool(await self._conn.fetchval(_LOCK_SQL, self.key))
        return self._held

    async def release(self) -> None:
        conn, self._conn, self._held = self._conn, None, False
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 5.0)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn.terminate()


@dataclass
class SnapshotterStatus:
    state: str = "standby"  # standby | leader | stopped
    published: str | None = None  # the last snapshot this process published
    position: int | None = None  # its position
    uploads: int = 0
    error: str | None = None  # the last failure, until an upload succeeds
    store_down: bool = False  # that failure was the object store's

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


async def publish_now(
    vectors: VectorIndex, store: SnapshotStore, namespace: str
) -> tuple[int, str | None]:
    """Upload a snapshot of ``namespace`` as it is now; returns its position and its id (None
    when the store already holds one at that position or later)."""
    files = await vectors.export_snapshot(namespace)
    manifest = json.loads(files[MANIFEST_FILE])
    position = int(manifest["applied_position"] or 0)
    published = await store.publish(namespace, files, position=position, count=manifest["count"])
    return position, None if published is None else published.id


class Snapshotter:
    """Publishes the active version of one FAISS projection while it holds the lease."""

    def __init__(
        self,
        projection: Projection,
        vectors: VectorIndex,
        store: SnapshotStore,
        lease: Lease,
        *,
        every_events: int,
        every_seconds: float,
        poll_interval: float = 1.0,
    ) -> None:
        self.projection, self.vectors, self.store, self.lease = projection, vectors, store, lease
        self.every_events, self.every_seconds = every_events, every_seconds
        self.poll_interval = poll_interval
        self.status = SnapshotterStatus()
        self._namespace: str | None = None
        self._last_position: int | None = None
        self._last_time = time.monotonic()

    async def run(self, stop: asyncio.Event, ready: Callable[[], bool] | None = None) -> None:
        """Until ``stop``: publish when due and leading. ``ready``: True once the replica has
        caught up (a replica still bootstrapping has nothing newer than the store)."""
        failures = 0
        try:
            while not stop.is_set():
                await _sleep_or_stop(
                    stop, self.poll_interval if not failures else backoff(failures)
                )
                if stop.is_set() or (ready is not None and not ready()):
                    continue
                try:
                    await self.run_once()
                    failures = 0
                except Exception as exc:
                    failures += 1
                    self.status.error = f"{type(exc).__name__}: {exc}"
                    self.status.store_down = getattr(exc, "backend", None) == BACKEND
                    logger.log(logging.WARNING if is_transient(exc) else logging.ERROR,
                               "snapshotter %s: %s; trying again later", self.projection.name,
                               exc, exc_info=None if is_transient(exc) else exc)  # fmt: skip
                    await self.lease.release()
        finally:
            self.status.state = "stopped"
            await self.lease.release()

    async def run_once(self) -> bool:
        """Publish if due and leading; True if a snapshot was published."""
        namespace = self.vectors.alias_target(self.projection.name)
        if namespace is None or namespace not in await self.vectors.namespaces():
            return False
        if namespace != self._namespace:  # a rebuild flipped the projection: another pointer
            self._namespace, self._last_position = namespace, None
        if self._last_position is None:
            pointer = await self.store.pointer(namespace)
            self._last_position = (
                pointer.snapshots[0].position if pointer and pointer.snapshots else 0
            )
        applied = self.vectors.applied_position(namespace) or 0
        waited = time.monotonic() - self._last_time
        due = applied - self._last_position >= self.every_events or (
            applied > self._last_position and waited >= self.every_seconds
        )
        if not due:
            return False
        if not await self.lease.hold():
            self.status.state = "standby"
            self._last_position = None  # another process publishes: read its pointer again
            return False
        self.status.state = "leader"
        position, published = await publish_now(self.vectors, self.store, namespace)
        self._last_position, self._last_time = position, time.monotonic()
        self.status.error, self.status.store_down = None, False
        if published is not None:
            self.status.published, self.status.position = published, position
            self.status.uploads += 1
            logger.info(
                "snapshotter %s: published %s at position %d", namespace, published, position
            )
        return published is not None


async def _sleep_or_stop(stop: asyncio.Event, delay: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await stop.wait()
