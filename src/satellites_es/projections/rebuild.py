"""Blue/green rebuilds by replay, and rollback.

A rebuild replays the whole log into a *new* version of the projection (a new Redis key prefix,
Elasticsearch index or FAISS namespace) while the live version keeps serving and live events keep
being appended. It catches up pass after pass until a pass has little left, then flips in one
step: a last catch-up to the head, the sink's atomic flip (pointer key, alias swap, namespace
alias), and the ``projection_versions`` row. Events committed after that last catch-up are
applied by whoever follows the projection next (the live projector reads the active version from
``projection_versions``), never lost: every version resumes from its own checkpoint.

The old version stays for :func:`rollback` until it is dropped. A rebuild that is killed halfway
resumes: the version it was building has a checkpoint (and, for FAISS, a snapshot saved every
``snapshot_every`` events), and a new rebuild picks that version up instead of starting another.

A replay allocates a few objects per event, and the batch in flight outlives enough allocations
to be promoted to the oldest GC generation, whose collections scan the whole heap: on a FAISS
replay they took a large share of the time. So a rebuild freezes the heap it starts with
(``gc.freeze``: those objects are left out of collections, new ones are collected as usual) and
unfreezes it when it ends (the measured gain is in BENCHMARKS.md). If the application has frozen
its heap itself (before forking workers, say), a rebuild leaves that alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from ..faults import backoff, is_transient
from ..protocols import CheckpointStore, EventLog
from .model import Projection
from .projector import Progress, ProgressCallback, Projector, ensure_active
from .sinks import Sink

__all__ = ["RebuildResult", "ensure_active", "rebuild", "rollback", "target_version"]

logger = logging.getLogger(__name__)

#: A pass that had fewer events than this left to apply is followed by the flip.
FLIP_THRESHOLD = 500
#: How long a rebuild waits out a sink or Postgres outage (retrying with backoff) before it
#: gives up with the outage's error; rerunning it resumes from its checkpoint.
MAX_OUTAGE = 600.0


@dataclass(frozen=True)
class RebuildResult:
    projection: str
    version: int
    previous: int | None
    position: int
    events: int
    resumed: bool
    #: events parked as poison (a ``PoisonPolicy.rebuild`` of ``park``)
    parked: int = 0


async def target_version(projection: Projection, checkpoints: CheckpointStore) -> tuple[int, bool]:
    """The version a rebuild builds, and whether it resumes one left unfinished."""
    row = await checkpoints.active(projection.name)
    active = row.active if row else 0
    previous = row.previous if row else None
    known = [v for v in await checkpoints.versions(projection.name) if v > active]
    if known:
        return max(known), True
    return max(active, previous or 0, projection.version - 1) + 1, False


async def rebuild(
    projection: Projection,
    sink: Sink,
    store: EventLog,
    checkpoints: CheckpointStore,
    *,
    progress: ProgressCallback | None = None,
    batch_size: int = 1000,
    max_outage: float = MAX_OUTAGE,
) -> RebuildResult:
    """Replay the log into a new version and flip to it (see the module docstring).

    A poison event stops the rebuild with a :class:`~satellites_es.errors.PoisonEventError`
    naming it, unless the projection's ``PoisonPolicy.rebuild`` is ``park``. A transient
    failure (a sink or Postgres outage) is waited out with backoff for up to ``max_outage``
    seconds, then raised.
    """
    with _heap_frozen():
        version, resumed = await target_version(projection, checkpoints)
        logger.info(
            "rebuilding %s into version %d%s",
            projection.name,
            version,
            " (resuming)" if resumed else "",
        )
        await checkpoints.save(projection.name, version, 0)  # marks the version as being built
        projector = Projector(
            projection, sink, store, checkpoints, version=version, batch_size=batch_size,
            mode="rebuild",
        )  # fmt: skip
        events = 0
        while True:
            result = await _outlasting(
                functools.partial(projector.catch_up, progress=progress), max_outage
            )
            events += result.events
            if await store.sequence() - result.position < FLIP_THRESHOLD:
                break
        final = await _outlasting(
            functools.partial(projector.catch_up, progress=progress), max_outage
        )
        await projector.flush()  # a local sink's snapshot, so a restart does not replay from zero
        await sink.activate(projection, version)
        previous = await checkpoints.set_active(projection.name, version)
        logger.info("flipped %s to version %d (previous %s)", projection.name, version, previous)
        return RebuildResult(
            projection.name, version, previous, final.position, events + final.events, resumed,
            projector.parked_count,
        )  # fmt: skip


async def _outlasting(run: Callable[[], Awaitable[Progress]], max_outage: float) -> Progress:
    """``run()`` (a catch-up pass), run again while it fails transiently, for at most
    ``max_outage`` seconds of failures in a row; each run resumes from the checkpoint."""
    failures, since = 0, time.monotonic()
    while True:
        try:
            return await run()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() - since > max_outage:
                raise
            failures += 1
            delay = backoff(failures)
            logger.warning("rebuild: %s (failure %d, retrying in %.1fs)", exc, failures, delay)
            await asyncio.sleep(delay)


@contextlib.contextmanager
def _heap_frozen() -> Iterator[None]:
    """The heap that exists now left out of GC collections for the duration (see the module
    docstring); nothing is changed when something else has frozen objects already."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def rollback(
    projection: Projection, sink: Sink, checkpoints: CheckpointStore
) -> tuple[int, int]:
    """Flip back to the previous version; returns (now active, the one rolled back from)."""
    active, left = await checkpoints.rollback(projection.name)
    await sink.activate(projection, active)
    return active, left
