"""The projector: applies the log to one version of one projection, in position order.

A projector reads the log itself (a catch-up subscription, as Marten's projection daemon and
EventStoreDB's do) from its checkpoint, turns each event into a change with the projection's
handler, writes the batch to the sink, then records the checkpoint. Live following is the same
loop woken by the log's NOTIFY (and a poll as a fallback), so a rebuild, a catch-up after a
crash and live projection are one code path.

Why the log and not a RabbitMQ queue: the checkpoint is then a contiguous position, which makes
``wait_for(position)`` (read your own writes) and the lag exact, and a crash between the sink
write and the checkpoint is harmless: the batch is read again and every sink drops changes whose
position it already holds (exactly-once effect). The RabbitMQ bus carries the same stream to
application subscribers across processes; several projectors on one projection are safe (the
sinks are conditional), only wasteful.

A pass reads only the projection's event types (Postgres skips the others before reading their
payloads) and fetches the next batch while the sink writes this one (``EventStore.read``'s
``read_ahead``). Its checkpoint still reaches the pass's target when the last events are of other
types: the read covered them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from ..errors import PersistenceError, ProjectionError
from ..events import DataEvent
from ..store import EventStore, PayloadBatch
from ..tracing import span
from .checkpoints import Checkpoints
from .fields import VectorFields
from .model import Projection
from .sinks import RunSink, Sink

__all__ = ["Progress", "Projector"]

logger = logging.getLogger(__name__)


#: One batch of a pass: events read, the last position, changes to write, and the write.
_Batch = tuple[int, int, int, Callable[[], Awaitable[int]]]


@dataclass
class _Tally:
    position: int  # last position committed in this pass
    events: int = 0
    applied: int = 0


@dataclass(frozen=True)
class Progress:
    position: int  # last position applied
    target: int  # the head this pass runs to
    events: int  # events read in this pass (of the projection's types: the others are skipped)
    applied: int  # changes the sink accepted in this pass


ProgressCallback = Callable[[Progress], None]


class Projector:
    def __init__(
        self,
        projection: Projection,
        sink: Sink,
        store: EventStore,
        checkpoints: Checkpoints,
        *,
        version: int | None = None,
        batch_size: int = 1000,
        flush_every: int = 50_000,
    ) -> None:
        self.projection = projection
        self.sink = sink
        self.store = store
        self.checkpoints = checkpoints
        self.version = projection.version if version is None else version
        self.batch_size = batch_size
        self.flush_every = flush_every
        self._unflushed = 0
        self.position = -1  # unknown until the first pass
        self._advanced = asyncio.Condition()

    async def start_position(self) -> int:
        local = await self.sink.local_checkpoint(self.projection, self.version)
        if local is not None:
            return local
        return await self.checkpoints.get(self.projection.name, self.version)

    async def catch_up(
        self, until: int | None = None, progress: ProgressCallback | None = None
    ) -> Progress:
        """Apply the log from the checkpoint up to ``until`` (default: the head now)."""
        await self.sink.prepare(self.projection, self.version)
        start = max(self.position, await self.start_position())
        target = await self.store.head() if until is None else until
        tally = _Tally(start)
        batches = self._batches(start, target)
        # A batch is committed (written, checkpointed) in a task while the next one is read and
        # prepared; commits run one at a time, in order.
        committing: asyncio.Task[None] | None = None
        # closed on the way out, so a failing sink cancels the read-ahead fetch at once
        async with contextlib.aclosing(batches):
            try:
                async for batch in batches:
                    if committing is not None:
                        await committing
                    committing = asyncio.ensure_future(self._commit(batch, tally, target, progress))
                if committing is not None:
                    await committing
            except BaseException as exc:
                # reading or preparing the next batch failed: the batch before it still commits
                # (its checkpoint then says how far the pass got); cancelled: it stops too
                if committing is not None and not committing.done():
                    if isinstance(exc, asyncio.CancelledError):
                        committing.cancel()
                    await asyncio.wait([committing])
                if committing is not None and not committing.cancelled():
                    committing.exception()  # raised above, or second to the error leaving
                raise
        position = tally.position
        if target > position:  # the read covered (start, target]: its tail had no event for us
            position = target
            await self.checkpoints.save(self.projection.name, self.version, position)
            if progress is not None:
                progress(Progress(position, target, tally.events, tally.applied))
        await self._advance(max(position, start))
        return Progress(max(position, start), target, tally.events, tally.applied)

    async def _commit(
        self, batch: _Batch, tally: _Tally, target: int, progress: ProgressCallback | None
    ) -> None:
        """Write one batch to the sink, then record its checkpoint and report progress."""
        size, last, changed, write = batch
        if changed:
            with span("projector.apply", projection=self.projection.name,
                      version=self.version, events=size, changes=changed):  # fmt: skip
                tally.applied += await write()
        tally.position = last
        tally.events += size
        await self._maybe_flush(changed)
        await self.checkpoints.save(self.projection.name, self.version, last)
        await self._advance(last)
        if progress is not None:
            progress(Progress(last, target, tally.events, tally.applied))

    async def _batches(self, start: int, target: int) -> AsyncGenerator[_Batch, None]:
        """The log in ``(start, target]`` as batches ready to write: events through the
        handler, or, for a :class:`VectorFields` projection on a sink that takes runs, columns
        straight from the payloads (the same changes, without an object per event)."""
        fields = self.projection.handler
        if isinstance(fields, VectorFields) and isinstance(self.sink, RunSink):
            sink = self.sink
            payloads = self.store.read_payloads(
                after=start, batch_size=self.batch_size, until=target,
                types=self.projection.event_types, text_field=fields.vector, read_ahead=True,
            )  # fmt: skip
            async with contextlib.aclosing(cast(AsyncGenerator[PayloadBatch, None], payloads)):
                async for page in payloads:
                    runs = fields.runs(page)
                    yield (
                        len(page),
                        page.positions[-1],
                        len(page),
                        functools.partial(sink.apply_runs, self.projection, self.version, runs),
                    )
            return
        events = self.store.read(
            after=start, batch_size=self.batch_size, until=target,
            types=self.projection.event_types, read_ahead=True,
        )  # fmt: skip
        async with contextlib.aclosing(cast(AsyncGenerator[list[DataEvent], None], events)):
            async for batch in events:
                changes = [c for e in batch if (c := self.projection.change_for(e)) is not None]
                yield (
                    len(batch),
                    batch[-1].position or start,
                    len(changes),
                    functools.partial(self.sink.apply, self.projection, self.version, changes),
                )

    async def _maybe_flush(self, changed: int) -> None:
        self._unflushed += changed
        if self._unflushed >= self.flush_every:
            await self.flush()

    async def flush(self) -> None:
        """Make the applied changes durable (a FAISS snapshot; a no-op for shared sinks)."""
        await self.sink.flush(self.projection, self.version)
        self._unflushed = 0

    async def _advance(self, position: int) -> None:
        async with self._advanced:
            self.position = max(self.position, position)
            self._advanced.notify_all()

    async def wait_for(self, position: int, timeout: float = 10.0) -> None:
        """Return once this projector has applied ``position`` (read your own writes)."""
        async with asyncio.timeout(timeout), self._advanced:
            await self._advanced.wait_for(lambda: self.position >= position)


#: What a follower retries with backoff: the store or a sink failed, not the projection's code.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (PersistenceError, ProjectionError, OSError)
MAX_BACKOFF = 5.0


async def follow_active(
    projection: Projection,
    sink: Sink,
    store: EventStore,
    checkpoints: Checkpoints,
    *,
    stop: asyncio.Event,
    poll_interval: float = 1.0,
    on_projector: Callable[[Projector], None] | None = None,
    max_failures: int = 30,
) -> None:
    """Keep the *active* version of ``projection`` up to date until ``stop`` is set.

    Woken by the log's NOTIFY, with a poll as a fallback. When a rebuild elsewhere flips the
    projection, the next pass follows the new version from its own checkpoint. A failing store
    or sink (a terminated session, Redis restarting) is retried with backoff up to 5 s; after
    ``max_failures`` failures in a row the error is raised, so the service stops and says why.
    """
    state: dict[str, Projector] = {}
    failures = 0
    async with store.listener() as listener:
        while not stop.is_set():
            try:
                await _follow_once(projection, sink, store, checkpoints, state, on_projector)
                failures = 0
            except TRANSIENT_ERRORS as exc:
                failures += 1
                if failures >= max_failures:
                    raise
                delay = min(MAX_BACKOFF, 0.1 * 2**failures)
                logger.warning("projection %s: %s (failure %d, retrying in %.1fs)",
                               projection.name, exc, failures, delay)  # fmt: skip
                await _sleep_or_stop(stop, delay)
                continue
            await listener.wait(poll_interval)
        if "current" in state:
            await state["current"].flush()


async def _follow_once(
    projection: Projection,
    sink: Sink,
    store: EventStore,
    checkpoints: Checkpoints,
    state: dict[str, Projector],
    on_projector: Callable[[Projector], None] | None,
) -> None:
    from .rebuild import ensure_active

    version = await ensure_active(projection, sink, checkpoints)
    if await sink.active_version(projection) != version:
        await sink.activate(projection, version)  # Postgres is the truth; catch up to it
    projector = state.get("current")
    if projector is None or projector.version != version:
        projector = state["current"] = Projector(
            projection, sink, store, checkpoints, version=version
        )
        if on_projector is not None:
            on_projector(projector)
    await projector.catch_up()


async def _sleep_or_stop(stop: asyncio.Event, delay: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await stop.wait()
