"""Read your own writes: wait until a position is visible to the reads of each projection.

``await data.wait_for(position, projections=[...], timeout=...)`` (the façade delegates here)
returns once every named projection has applied ``position`` *as this process reads it*:

* **FAISS** lives in each serving process. The checkpoint row in Postgres is shared by every
  process that serves the projection (``GREATEST`` of their positions), so it says nothing about
  this process's own index: a process that is behind would read a row another process moved
  on. A process knows its own index's position from the projector that feeds it, the
  :class:`~satellites_es.projections.Projector` of a
  :class:`~satellites_es.projections.supervisor.ProjectionService` running here, whose
  ``position`` is contiguous (events of other types included, unlike the namespace's last
  applied position). So the wait is on that projector; a FAISS projection that no service of
  this process runs cannot become visible here and raises :class:`ProjectorDownError` at once.
* **Elasticsearch and Redis** are shared: a projector anywhere applies for everyone. The wait is
  on this process's projector when it runs one, else on the active version's checkpoint row.
  Applied is not yet searchable in Elasticsearch (near-real-time, ~1 s): once applied, the
  alias is refreshed, so a search made after ``wait_for`` returns sees the write.
* **A dead projector raises at once.** A projector of this process that failed, is restarting
  after a failure, or was stopped, raises :class:`ProjectorDownError` naming its error instead
  of letting the caller sit out the timeout. (A projector in another process gives no such
  signal: waiting on its checkpoint ends at the timeout, with :class:`NotCaughtUpError`.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from ..errors import NotCaughtUpError, ProjectionError, ProjectorDownError
from ..projections import Checkpoints, Projection
from ..projections.sinks import translated

if TYPE_CHECKING:
    from ..facade import DataLayer
    from ..projections.supervisor import ProjectionService

__all__ = ["wait_for"]

#: Follower states in which nothing will apply the position (see FollowerStatus).
_DOWN = ("failed", "restarting", "stopped")
#: How often a wait looks again at a projector's state (a position wakes it at once).
_TICK = 0.05


async def wait_for(
    data: DataLayer,
    services: Sequence[ProjectionService],
    position: int,
    projections: Iterable[str | Projection] | None,
    timeout: float,
) -> None:
    """See the module docstring; ``projections`` None: every projection this process runs."""
    local = {p.name: s for s in services for p in s.projections}
    known = {p.name: p for s in services for p in s.projections}
    wanted: list[Projection | str] = (
        list(known.values()) if projections is None else list(projections)
    )
    deadline = time.monotonic() + timeout
    waits = []
    for item in wanted:
        projection = item if isinstance(item, Projection) else known.get(item, item)
        name = projection.name if isinstance(projection, Projection) else projection
        service = local.get(name)
        if service is not None:
            kind = known[name].sink
            waits.append(_local(data, service, name, kind, position, deadline, timeout))
        elif isinstance(projection, Projection) and projection.sink == "faiss":
            for w in waits:
                w.close()
            raise ProjectorDownError(
                f"projection {name}: FAISS is local to each process, and no projector of "
                "this process serves it"
            )
        else:
            waits.append(_shared(data, name, position, deadline, timeout))
    try:
        async with asyncio.TaskGroup() as group:
            for wait in waits:
                group.create_task(wait)
    except BaseExceptionGroup as group_error:  # the first wait that failed says why
        raise group_error.exceptions[0] from None
    if not wanted:
        return
    es = [p for p in wanted if isinstance(p, Projection) and p.sink == "elasticsearch"]
    es += [known[n] for n in wanted if isinstance(n, str) and n in known
           and known[n].sink == "elasticsearch"]  # fmt: skip
    if es:
        await _refresh(data, es)


async def _local(
    data: DataLayer, service: ProjectionService, name: str, kind: str, position: int,
    deadline: float, timeout: float,
) -> None:  # fmt: skip
    """Wait on the projector of this process, raising as soon as it is down. Only a projector
    of the version readers see counts: just after a flip or a rollback, the follower may still
    hold the other version's projector for a moment."""
    active = await _active_version(data, name, kind)
    while True:
        _raise_if_down(service, name)
        projector = service.projectors.get(name)
        if projector is not None and projector.version != active:
            projector = None
        if projector is not None and projector.position >= position:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            reached = projector.position if projector is not None else -1
            raise NotCaughtUpError(name, position, reached, timeout)
        if projector is None:
            await asyncio.sleep(min(0.01, left))
            active = await _active_version(data, name, kind)  # not started yet, or flipped
            continue
        try:
            await projector.wait_for(position, timeout=min(_TICK, left))
        except TimeoutError:
            continue


async def _active_version(data: DataLayer, name: str, kind: str) -> int | None:
    """The version this process's reads of ``name`` see: the FAISS alias here, the active
    version in Postgres for a shared sink."""
    if kind == "faiss":
        target = data.vectors.alias_target(name)
        return None if target is None else int(target.rsplit("_v", 1)[1])
    row = await Checkpoints(data.postgres, data.config.postgres.schema).active(name)
    return None if row is None else row[0]


def _raise_if_down(service: ProjectionService, name: str) -> None:
    status = service.status.get(name)
    task = service.tasks.get(name)
    if status is not None and status.state in _DOWN:
        raise ProjectorDownError(f"projection {name} is {status.state}: {status.error}")
    if task is not None and task.done():
        raise ProjectorDownError(f"projection {name}: its follower has ended")
    if task is None:
        raise ProjectorDownError(f"projection {name}: its service is not started")


async def _shared(
    data: DataLayer, name: str, position: int, deadline: float, timeout: float
) -> None:
    """Poll the active version's checkpoint row (a projector in another process)."""
    checkpoints = Checkpoints(data.postgres, data.config.postgres.schema)
    delay = 0.005
    while True:
        row = await checkpoints.active(name)
        if row is None:
            raise ProjectionError(f"projection {name} has no active version (never started)")
        reached = await checkpoints.get(name, row[0])
        if reached >= position:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise NotCaughtUpError(name, position, reached, timeout)
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 2, 0.1)


async def _refresh(data: DataLayer, projections: Sequence[Projection]) -> None:
    """Make what the Elasticsearch projections applied searchable (their aliases' indices)."""
    prefix = data.config.elasticsearch.index_prefix
    aliases = sorted({f"{prefix}{p.name}" for p in projections})
    with translated("elasticsearch", f"refresh {', '.join(aliases)}"):
        await data.elasticsearch.indices.refresh(index=",".join(aliases))
