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

**Faults** (classified once, by :mod:`satellites_es.faults`). A *transient* failure (the sink or
Postgres unreachable, a timeout, Elasticsearch busy) leaves the checkpoint where it was and
raises; :func:`follow_active` backs off (capped) and tries again for as long as the outage
lasts, reporting the backend down meanwhile, and resumes from the checkpoint. A *permanent*
failure is one event's fault (a *poison* event): a handler that raises on an event costs only
that event (the batch's other changes are built one by one), and a write the sink refuses is
split in halves until the refused change is alone (or the sink names it itself: an
Elasticsearch bulk item), so the batch's good changes are all applied. The poison event is then
tried ``PoisonPolicy.attempts`` times alone, and parked (:mod:`satellites_es.parking`) or, as the
projection's policy says, stops the pass with a :class:`PoisonEventError` naming it. Parked
events marked for retry are applied again at their original position by
:meth:`Projector.retry_parked`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ..errors import BackendUnavailableError, PoisonEventError, RejectedChangesError
from ..events import DataEvent
from ..faults import backoff, is_transient
from ..parking import Poison
from ..protocols import CheckpointStore, EventLog, Parking
from ..store import PayloadBatch
from ..tracing import linked
from .fields import VectorFields
from .model import Change, Projection
from .sinks import RunSink, Sink

__all__ = ["FollowerStatus", "Progress", "Projector", "ensure_active", "follow_active"]

logger = logging.getLogger(__name__)

Mode = Literal["live", "rebuild"]


@dataclass
class _Batch:
    """One batch of a pass, ready to commit."""

    size: int  # events read
    last: int  # the last position read
    changed: int  # changes to write
    write: Callable[[], Awaitable[int]]  # the fast path: the whole batch in one call
    changes: Callable[[], list[Change]]  # the same batch as changes, to find a refused one
    poison: list[Poison] = field(default_factory=list)  # events the handler could not take
    #: The events (their trace contexts link the apply span); none on the column path, which
    #: reads no envelopes.
    events: Sequence[DataEvent] = ()


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
        store: EventLog,
        checkpoints: CheckpointStore,
        *,
        version: int | None = None,
        batch_size: int = 1000,
        flush_every: int = 50_000,
        mode: Mode = "live",
        parked: Parking | None = None,
    ) -> None:
        self.projection = projection
        self.sink = sink
        self.store = store
        self.checkpoints = checkpoints
        self.version = projection.version if version is None else version
        self.batch_size = batch_size
        self.flush_every = flush_every
        self.mode: Mode = mode
        self.parked = parked if parked is not None else checkpoints.parked
        #: events this projector parked (or, as a rebuild, would have stopped on)
        self.parked_count = 0
        #: why the last snapshot save failed (a local sink), until one succeeds
        self.flush_error: str | None = None
        self._next_flush = 0.0
        self._flush_failures = 0
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
        target = await self.store.sequence() if until is None else until
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
        """Write one batch to the sink (setting its poison events aside), then record its
        checkpoint and report progress."""
        if batch.changed:
            with linked("projector.apply", batch.events, projection=self.projection.name,
                        version=self.version, events=batch.size, changes=batch.changed):  # fmt: skip
                try:
                    tally.applied += await batch.write()
                except Exception as exc:
                    if is_transient(exc):
                        raise
                    tally.applied += await self._isolate(batch.changes(), exc, batch.poison)
        if batch.poison:
            await self._set_aside(batch.poison)
        tally.position = batch.last
        tally.events += batch.size
        await self._maybe_flush(batch.changed)
        await self.checkpoints.save(self.projection.name, self.version, batch.last)
        await self._advance(batch.last)
        if progress is not None:
            progress(Progress(batch.last, target, tally.events, tally.applied))

    async def _batches(self, start: int, target: int) -> AsyncGenerator[_Batch, None]:
        """The log in ``(start, target]`` as batches ready to write: events through the
        handler, or, for a :class:`VectorFields` projection on a sink that takes runs, columns
        straight from the payloads (the same changes, without an object per event)."""
        fields = self.projection.handler
        if isinstance(fields, VectorFields) and isinstance(self.sink, RunSink):
            payloads = self.store.read_payloads(
                after=start, batch_size=self.batch_size, until=target,
                types=self.projection.event_types, text_field=fields.vector, read_ahead=True,
            )  # fmt: skip
            async with contextlib.aclosing(payloads):
                async for page in payloads:
                    yield self._columns(fields, self.sink, page)
            return
        events = self.store.read(
            after=start, batch_size=self.batch_size, until=target,
            types=self.projection.event_types, read_ahead=True,
        )  # fmt: skip
        async with contextlib.aclosing(events):
            async for batch in events:
                yield self._events(batch, start)

    def _events(self, batch: list[DataEvent], start: int) -> _Batch:
        """A batch of events through the handler; one that raises costs only its event."""
        change_for = self.projection.change_for
        poison: list[Poison] = []
        try:
            changes = [c for e in batch if (c := change_for(e)) is not None]
        except Exception:  # find the events that raise, keep the rest
            changes = []
            for e in batch:
                try:
                    change = change_for(e)
                except Exception as exc:
                    poison.append(Poison.of(e.position or 0, exc, key=e.key, event_id=e.id,
                                            event_type=e.type))  # fmt: skip
                    continue
                if change is not None:
                    changes.append(change)
        write = functools.partial(self.sink.apply, self.projection, self.version, changes)
        return _Batch(len(batch), batch[-1].position or start, len(changes), write,
                      lambda: changes, poison, batch)  # fmt: skip

    def _columns(self, fields: VectorFields, sink: RunSink, page: PayloadBatch) -> _Batch:
        """A page of payloads as runs of columns; a payload the fields cannot take (no vector)
        sends the page down the one-change-at-a-time path, without that event."""

        def one_by_one() -> list[Change]:
            changes: list[Change] = []
            for i in range(len(page)):
                try:
                    changes.append(fields.change_at(page, i))
                except Exception as exc:
                    poison.append(Poison.of(page.positions[i], exc, key=page.keys[i],
                                            event_type=page.types[i]))  # fmt: skip
            return changes

        poison: list[Poison] = []
        last = page.positions[-1]
        try:
            runs = fields.runs(page)
        except Exception:
            changes = one_by_one()
            write = functools.partial(self.sink.apply, self.projection, self.version, changes)
            return _Batch(len(page), last, len(changes), write, lambda: changes, poison)
        write = functools.partial(sink.apply_runs, self.projection, self.version, runs)
        return _Batch(len(page), last, len(page), write, one_by_one, poison)

    async def _isolate(
        self, changes: Sequence[Change], error: BaseException, poison: list[Poison]
    ) -> int:
        """Apply ``changes``, which the sink refused together with ``error``: the ones the sink
        named as refused, or halves of them down to one change, are set aside into ``poison``;
        every other change is applied. Returns how many the sink applied."""
        if isinstance(error, RejectedChangesError):  # the sink applied all but these
            applied = error.applied
            for change in changes:
                if change.position in error.rejected:
                    applied += await self._last_tries(change, error, poison)
            return applied
        if len(changes) <= 1:
            return await self._last_tries(changes[0], error, poison) if changes else 0
        half = len(changes) // 2
        first = await self._apply_part(changes[:half], poison)
        return first + await self._apply_part(changes[half:], poison)

    async def _apply_part(self, changes: Sequence[Change], poison: list[Poison]) -> int:
        try:
            return await self.sink.apply(self.projection, self.version, changes)
        except Exception as exc:
            if is_transient(exc):
                raise
            return await self._isolate(changes, exc, poison)

    async def _last_tries(self, change: Change, error: BaseException, poison: list[Poison]) -> int:
        """Try a refused change alone up to the policy's attempts; then it is poison."""
        for attempt in range(1, self.projection.poison.attempts):
            await asyncio.sleep(backoff(attempt, initial=0.05, cap=1.0))
            try:
                return await self.sink.apply(self.projection, self.version, [change])
            except Exception as exc:
                if is_transient(exc):
                    raise
                error = exc
        reason = error
        if isinstance(error, RejectedChangesError):
            reason = RejectedChangesError(error.target, {change.position: error.rejected.get(
                change.position, str(error))})  # fmt: skip
        poison.append(Poison.of(change.position, reason, key=change.key))
        return 0

    async def _set_aside(self, poison: list[Poison]) -> None:
        """Park the batch's poison events, or stop on the first, as the policy says."""
        poison = await self._named(poison)
        action = (
            self.projection.poison.live if self.mode == "live" else self.projection.poison.rebuild
        )
        if action == "stop":
            first = poison[0]
            raise PoisonEventError(self.projection.name, self.version, first.position,
                                   first.key, first.event_id, first.error_type, first.error)  # fmt: skip
        await self.parked.park("projection", self.projection.name, self.version, poison)
        self.parked_count += len(poison)
        for p in poison:
            logger.warning(
                "projection %s v%d: parked the event at position %d (key %r, id %s): %s: %s",
                self.projection.name, self.version, p.position, p.key, p.event_id,
                p.error_type, p.error,
            )  # fmt: skip

    async def _named(self, poison: list[Poison]) -> list[Poison]:
        """``poison`` with each event's id, key and type from the log where they were not known
        (a column replay reads no ids)."""
        unnamed = [p.position for p in poison if p.event_id is None]
        if not unnamed:
            return poison
        found = {e.position: e for e in await self.store.read_at(unnamed)}
        out = []
        for p in poison:
            e = found.get(p.position)
            if e is not None and p.event_id is None:
                p = Poison(p.position, p.error_type, p.error, e.key, e.id, e.type)
            out.append(p)
        return out

    async def retry_parked(self) -> int:
        """Apply again, at their original positions, the parked events of this version that an
        operator marked for retry; those that fail again are parked again with the new error.
        Returns how many were applied (an event whose key has a newer one applied already is a
        no-op: the newer one wins, as it did)."""
        positions = await self.parked.retries("projection", self.projection.name, self.version)
        if not positions:
            return 0
        found = {e.position: e for e in await self.store.read_at(positions)}
        done: list[int] = []
        poison: list[Poison] = []
        for position in positions:
            event = found.get(position)
            if event is None:
                poison.append(Poison(position, "LookupError", "no event at this position"))
                continue
            try:
                change = self.projection.change_for(event)
                if change is not None:
                    await self.sink.apply(self.projection, self.version, [change])
            except Exception as exc:
                if is_transient(exc):
                    raise
                poison.append(Poison.of(position, exc, key=event.key, event_id=event.id,
                                        event_type=event.type))  # fmt: skip
                continue
            done.append(position)
        await self.parked.resolve("projection", self.projection.name, self.version, done)
        await self.parked.park("projection", self.projection.name, self.version, poison)
        self._unflushed += len(done)
        logger.info("projection %s v%d: retried %d parked event(s), %d applied, %d parked again",
                    self.projection.name, self.version, len(positions), len(done), len(poison))  # fmt: skip
        return len(done)

    async def _maybe_flush(self, changed: int) -> None:
        self._unflushed += changed
        if self._unflushed >= self.flush_every:
            await self.flush_if_due()

    async def flush_if_due(self) -> None:
        """Flush, unless the last save failed less than its backoff ago. A save that fails
        because the store is unwritable (read-only, full) is reported (:attr:`flush_error`) and
        tried again later; the projector keeps applying meanwhile (its checkpoint in Postgres
        moves on, and a restart replays from the last snapshot that was saved)."""
        if self.flush_error is not None and time.monotonic() < self._next_flush:
            return
        try:
            await self.flush()
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._flush_failures += 1
            self.flush_error = str(exc)
            self._next_flush = time.monotonic() + backoff(self._flush_failures, initial=1.0,
                                                          cap=30.0)  # fmt: skip
            logger.warning("projection %s v%d: snapshot not saved (%s); retrying later",
                           self.projection.name, self.version, exc)  # fmt: skip

    @property
    def unflushed(self) -> int:
        """Changes applied since the last successful flush."""
        return self._unflushed

    async def flush(self) -> None:
        """Make the applied changes durable (a FAISS snapshot; a no-op for shared sinks)."""
        await self.sink.flush(self.projection, self.version)
        self._unflushed = 0
        self._flush_failures = 0
        self.flush_error = None

    async def _advance(self, position: int) -> None:
        async with self._advanced:
            self.position = max(self.position, position)
            self._advanced.notify_all()

    async def wait_for(self, position: int, timeout: float = 10.0) -> None:
        """Return once this projector has applied ``position`` (read your own writes)."""
        async with asyncio.timeout(timeout), self._advanced:
            await self._advanced.wait_for(lambda: self.position >= position)


async def ensure_active(projection: Projection, sink: Sink, checkpoints: CheckpointStore) -> int:
    """The active version, creating and activating the projection's first version if none."""
    row = await checkpoints.active(projection.name)
    if row is not None:
        return row.active
    await sink.prepare(projection, projection.version)
    await sink.activate(projection, projection.version)
    await checkpoints.set_active(projection.name, projection.version)
    return projection.version


@dataclass
class FollowerStatus:
    """How one projection's follower is doing, for ``health()`` and ``/metrics``.

    ``state``: ``starting``, ``running``, ``backend_down`` (a transient failure: retrying with
    backoff; ``backend`` and ``error`` say which and why), ``restarting`` (it failed otherwise
    and its supervisor restarts it), ``failed`` (a configuration error: it will not restart) or
    ``stopped``.
    """

    state: str = "starting"
    error: str | None = None
    backend: str | None = None
    failures: int = 0
    since: float = field(default_factory=time.time)
    parked: int = 0  # parked events of this projection, every version (from the table)
    save_error: str | None = None  # a local sink's failed snapshot save

    def set(self, state: str, error: BaseException | None = None) -> None:
        if state != self.state:
            self.since = time.time()
        self.state = state
        self.error = None if error is None else f"{type(error).__name__}: {error}"
        self.backend = error.backend if isinstance(error, BackendUnavailableError) else None

    @property
    def ok(self) -> bool:
        return self.state in ("starting", "running") and self.save_error is None


#: How often a follower looks for parked events marked for retry, in seconds.
RETRY_INTERVAL = 1.0


async def follow_active(
    projection: Projection,
    sink: Sink,
    store: EventLog,
    checkpoints: CheckpointStore,
    *,
    stop: asyncio.Event,
    poll_interval: float = 1.0,
    on_projector: Callable[[Projector], None] | None = None,
    status: FollowerStatus | None = None,
    retry_interval: float = RETRY_INTERVAL,
    flush_every: int = 50_000,
) -> None:
    """Keep the *active* version of ``projection`` up to date until ``stop`` is set.

    Woken by the log's NOTIFY, with a poll as a fallback. When a rebuild elsewhere flips the
    projection, the next pass follows the new version from its own checkpoint. A transient
    failure (the sink or Postgres unreachable: see :mod:`satellites_es.faults`) is retried with
    capped backoff for as long as it lasts, with ``status`` saying which backend is down; a
    sink down when the follower starts is waited for the same way. Any other failure is raised
    (the service's supervisor restarts the follower). Parked events marked for retry are
    applied every ``retry_interval`` seconds. ``flush_every``: changes between two snapshot
    saves of a local sink.
    """
    status = status if status is not None else FollowerStatus()
    state: dict[str, Projector] = {}
    failures = 0
    next_retry = 0.0
    counted, recount = -1, 0.0  # the projector's parked_count when status.parked was read
    async with store.listener() as listener:
        while not stop.is_set():
            try:
                projector = await _follow_once(projection, sink, store, checkpoints, state,
                                               on_projector, flush_every)  # fmt: skip
                if time.monotonic() >= next_retry:  # one indexed query a second when idle
                    next_retry = time.monotonic() + retry_interval
                    retried = await projector.retry_parked()
                    if retried or counted != projector.parked_count or time.monotonic() > recount:
                        status.parked = await _parked(projector)  # a discard elsewhere: <= 10 s
                        counted, recount = projector.parked_count, time.monotonic() + 10.0
                if projector.flush_error is not None:
                    await projector.flush_if_due()
                status.save_error = projector.flush_error
                failures = 0
                status.failures = 0
                status.set("running")
            except Exception as exc:
                if not is_transient(exc):
                    raise
                failures += 1
                status.failures = failures
                status.set("backend_down", exc)
                delay = backoff(failures)
                logger.warning("projection %s: %s (failure %d, retrying in %.1fs)",
                               projection.name, exc, failures, delay)  # fmt: skip
                await _sleep_or_stop(stop, delay)
                continue
            await listener.wait(poll_interval)
        if "current" in state:
            try:
                await state["current"].flush()
            except Exception as exc:  # stopping: say so, the next start replays from the log
                logger.error("projection %s: the last snapshot was not saved: %s",
                             projection.name, exc)  # fmt: skip


async def _parked(projector: Projector) -> int:
    """Parked events of the projection (every version), as the table holds them now."""
    counts = await projector.parked.counts()
    return counts.get(("projection", projector.projection.name), 0)


async def _follow_once(
    projection: Projection,
    sink: Sink,
    store: EventLog,
    checkpoints: CheckpointStore,
    state: dict[str, Projector],
    on_projector: Callable[[Projector], None] | None,
    flush_every: int,
) -> Projector:
    version = await ensure_active(projection, sink, checkpoints)
    if await sink.active_version(projection) != version:
        await sink.activate(projection, version)  # Postgres is the truth; catch up to it
    projector = state.get("current")
    if projector is None or projector.version != version:
        projector = state["current"] = Projector(
            projection, sink, store, checkpoints, version=version, flush_every=flush_every
        )
        if on_projector is not None:
            on_projector(projector)
    await projector.catch_up()
    return projector


async def _sleep_or_stop(stop: asyncio.Event, delay: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await stop.wait()
