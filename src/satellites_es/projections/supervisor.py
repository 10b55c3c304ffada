"""The supervisor of the projections a process runs: sinks built from a DataLayer, one watched
task each.

``ProjectionService(data, projections)`` follows the active version of every projection
(:func:`~.projector.follow_active`) in a named, supervised task: a follower rides out backend
outages itself (reporting the backend down), and one that fails otherwise (a bug, a poison event
under a ``stop`` policy) is logged and restarted with capped backoff, reported as
``restarting``; only a configuration error ends it for good (``failed``). One projection
failing never stops another. ``stop()`` lets each finish its batch (bounded by a timeout) and,
for FAISS, saves the snapshot so the next start replays only what came after it.
``wait_for(position)`` lets a caller read its own writes from every projection it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, ProjectionError
from ..faults import backoff
from ..shielded import finished, stop_task
from .checkpoints import Checkpoints
from .model import Projection
from .projector import FollowerStatus, Projector, follow_active
from .sinks import Sink

if TYPE_CHECKING:
    from ..facade import DataLayer
    from .replica import Replica
    from .snapshotter import Snapshotter

__all__ = ["ProjectionService", "build_sink"]

logger = logging.getLogger(__name__)


def build_sink(projection: Projection, data: DataLayer, replica: Replica | None = None) -> Sink:
    """The sink a projection writes to, on the layer's native clients, wrapped by the
    projection's ``sink_adapter`` when it has one; a FAISS sink bootstraps its namespaces
    through ``replica`` when given (:mod:`.replica`)."""
    sink = _native_sink(projection, data, replica)
    return sink if projection.sink_adapter is None else projection.sink_adapter(sink, data)


def _native_sink(projection: Projection, data: DataLayer, replica: Replica | None) -> Sink:
    if projection.sink == "redis":
        from .redis_sink import RedisSink

        return RedisSink(data.redis, data.config.redis.key_prefix)
    if projection.sink == "elasticsearch":
        from .es_sink import ElasticsearchSink

        return ElasticsearchSink(data.elasticsearch, data.config.elasticsearch.index_prefix)
    from .faiss_sink import FaissSink

    return FaissSink(data.vectors, replica)


#: A follower that ran this long before failing starts its backoff again from the shortest.
_HEALTHY_RUN = 60.0


class ProjectionService:
    def __init__(
        self, data: DataLayer, projections: Sequence[Projection], *, poll_interval: float = 1.0
    ) -> None:
        self.data = data
        self.projections = list(projections)
        self.poll_interval = poll_interval
        self.checkpoints = Checkpoints(data.postgres, data.config.postgres.schema)
        self.projectors: dict[str, Projector] = {}
        self.status: dict[str, FollowerStatus] = {p.name: FollowerStatus() for p in projections}
        self._stop = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.replica, self.snapshotters = _replication(data, self.projections)

    @property
    def tasks(self) -> dict[str, asyncio.Task[None]]:
        """The follower task of each projection (running while the service runs)."""
        return dict(self._tasks)

    async def start(self) -> None:
        # the layer's wait_for(position) waits on these projectors (FAISS: this process's own)
        self.data.attach_projections(self)
        for p in self.projections:
            task = asyncio.create_task(self._supervise(p), name=f"projector-{p.name}")
            task.add_done_callback(self._done)
            self._tasks[p.name] = task
        for name, snapshotter in self.snapshotters.items():
            ready = functools.partial(_running, self.status[name])
            task = asyncio.create_task(snapshotter.run(self._stop, ready=ready),
                                       name=f"snapshotter-{name}")  # fmt: skip
            task.add_done_callback(self._done)
            self._tasks[f"snapshotter-{name}"] = task

    async def _supervise(self, projection: Projection) -> None:
        """Follow ``projection`` until stopped, restarting the follower when it fails."""
        status = self.status[projection.name]
        failures = 0
        while not self._stop.is_set():
            started = asyncio.get_running_loop().time()
            try:
                sink = build_sink(projection, self.data, self.replica)
                await follow_active(
                    projection, sink, self.data.log, self.checkpoints, stop=self._stop,
                    poll_interval=self.poll_interval, on_projector=self._register, status=status,
                )  # fmt: skip
            except ConfigurationError as exc:
                status.set("failed", exc)
                raise
            except Exception as exc:
                if asyncio.get_running_loop().time() - started > _HEALTHY_RUN:
                    failures = 0
                failures += 1
                delay = backoff(failures)
                status.set("restarting", exc)
                status.failures = failures
                logger.error("projection %s failed (%s: %s); restarting in %.1fs",
                             projection.name, type(exc).__name__, exc, delay, exc_info=exc)  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stop.wait()
                continue
        status.set("stopped")

    def _register(self, projector: Projector) -> None:
        self.projectors[projector.projection.name] = projector

    def _done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "%s stopped: %s", task.get_name(), task.exception(), exc_info=task.exception()
            )

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop every follower (each gets ``timeout`` to finish its batch, then is cancelled).
        Runs to its end though the caller be cancelled meanwhile (``shielded.finished``)."""
        await finished(self._stopped(timeout), limit=timeout)

    async def _stopped(self, timeout: float) -> None:
        self._stop.set()
        self.data.detach_projections(self)
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            stop_task(task)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def wait_for(self, position: int, timeout: float = 30.0) -> None:
        """Return once every projection here has applied ``position``."""
        async with asyncio.timeout(timeout):
            while len(self.projectors) < len(self.projections):
                self.raise_if_failed()
                await asyncio.sleep(0.01)
            await asyncio.gather(*(p.wait_for(position, timeout) for p in self.projectors.values()))

    def raise_if_failed(self) -> None:
        """Raise if a projection stopped for good (a configuration error: it will not restart)."""
        for name, task in self._tasks.items():
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise ProjectionError(f"projection {name} stopped: {task.exception()}")

    async def lag(self) -> dict[str, int]:
        head = await self.data.log.head()
        return {n: max(0, head - p.position) for n, p in self.projectors.items()}

    def health(self) -> dict[str, Any]:
        """Per projection: state (see :class:`FollowerStatus`), version, position, the backend
        that is down and why, parked events, a failed snapshot save."""
        out: dict[str, Any] = {}
        for name, status in self.status.items():
            projector = self.projectors.get(name)
            out[name] = {
                "state": status.state,
                "ok": status.ok,
                "version": projector.version if projector else None,
                "position": projector.position if projector else None,
                "backend": status.backend,
                "error": status.error,
                "failures": status.failures,
                "parked": status.parked,
                "save_error": status.save_error,
            }
            self._replica_health(name, out[name])
        return out

    def _replica_health(self, name: str, out: dict[str, Any]) -> None:
        """A FAISS replica's bootstrap (``bootstrapping`` until caught up) and snapshotter."""
        projector, replica = self.projectors.get(name), self.replica
        booted = None
        if replica is not None and projector is not None:
            booted = replica.status.get(projector.projection.target(projector.version))
        if booted is not None:
            out["replica"] = booted.to_dict()
            if out["state"] == "starting":
                out["state"] = "bootstrapping"
            elif out["state"] == "running":  # caught up with the log once: the tail is done
                out["replica"]["phase"] = "ready"
        if name in self.snapshotters:
            out["snapshotter"] = self.snapshotters[name].status.to_dict()


def _running(status: FollowerStatus) -> bool:
    return status.state == "running"


def _replication(
    data: DataLayer, projections: Sequence[Projection]
) -> tuple[Replica | None, dict[str, Snapshotter]]:
    """With ``FaissConfig.snapshot_url`` set: the bootstrapper of this process's FAISS replicas
    and, unless ``snapshot_upload`` is off, a snapshotter per FAISS projection (only the one
    holding the lease uploads: :mod:`.snapshotter`)."""
    config = data.config.faiss
    faiss = [p for p in projections if p.sink == "faiss"]
    if not faiss or not config.enabled or config.snapshot_url is None:
        return None, {}
    from ..vectors.snapshot_store import SnapshotStore
    from .replica import Replica
    from .snapshotter import Lease, Snapshotter

    store = SnapshotStore.from_config(config)
    assert store is not None
    replica = Replica(data.vectors, store)
    if not config.snapshot_upload:
        return replica, {}
    schema = data.config.postgres.schema
    snapshotters = {}
    for p in faiss:
        lease = Lease(data.config.postgres.dsn, f"{schema}.{p.name}")
        snapshotters[p.name] = Snapshotter(
            p, data.vectors, store, lease, every_events=config.snapshot_every_events,
            every_seconds=config.snapshot_every_seconds,
        )  # fmt: skip
    return replica, snapshotters
