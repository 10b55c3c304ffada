"""The relay: publishes the event log to the bus, at least once, in position order.

The outbox is the part of the log after the relay's cursor (``relay_cursors``, one row per
relay name); there is no second copy of an event.

**Seams.** The relay depends only on protocols: the log
(:class:`~satellites_es.protocols.EventLog`), the bus it publishes through
(:class:`~satellites_es.events.RelayBus`, one publish path: its
:class:`~satellites_es.events.Publisher`), its lease (:class:`~satellites_es.protocols.RelayLease`:
leadership and cursor) and the parked events (:class:`~satellites_es.protocols.Parking`).
:func:`satellites_es.relay_lease.postgres_relay` builds one on Postgres; the in-memory twins
(:mod:`satellites_es.memory`) drive its unit tests.

**Confirm window and cursor.** The relay sends the events after its cursor through the bus's
publisher as it reads them, keeping up to ``confirm_window`` outcomes (publisher confirms)
outstanding. The cursor moves only over confirmed events, at batch ends; the first failed
confirm drops the window and the relay starts again from the cursor. A crash between the
confirms and the cursor update therefore republishes that batch: consumers see duplicates,
never gaps, and are idempotent by position.

**Leader election and fencing.** Several relay processes may run with one name; only the one
holding the lease publishes (on Postgres a session advisory lock, released exactly when its
session ends: :mod:`satellites_es.relay_lease`), and a standby, which retries every
``standby_interval``, takes over. The leader fences itself: only the lease's holder can move the
cursor, the lease is checked every ``standby_interval`` (a heartbeat), and once it is known lost
the publishing task is cancelled at once and the relay goes back to standby. Between the loss and
its detection (one heartbeat at most) two relays may publish the same events: duplicates, which
consumers absorb.

**Failures.** Broker or Postgres trouble (``PublishError``, ``BackendUnavailableError``,
``PersistenceError``, driver errors: transient, as :mod:`satellites_es.faults` classifies them)
is logged and retried with capped exponential backoff (tenacity), forever, until
:meth:`Relay.stop`. Any other failure (a bug) is logged with its traceback and the relay starts
over the same way: it is supervised by its own retry loop and never dies silently; only a
configuration or lifecycle error ends :meth:`Relay.run`. An event this code cannot upcast (an
``UpcastError``: a schema version newer than it knows) is such a failure: the relay publishes
and confirms every event before it, stops exactly there, and retries, its ``last_error`` naming
the event, until a release that knows the version takes over. Wake-ups come from the log's NOTIFY
listener, with a poll every ``poll_interval`` as the fallback.

**The sequencer's tick.** The leader also numbers the events producers committed in their own
transactions (:meth:`EventLog.sequence <satellites_es.protocols.EventLog.sequence>`) every
``sequence_interval``: such appends send no NOTIFY, and the sequencer's NOTIFY is what wakes the
followers (the store's module docstring has the design).

**Events the broker can never take** (:class:`~satellites_es.errors.UndeliverableError`: a
routing key over 255 bytes, from an event appended before ``append`` refused such types) are
parked (:mod:`satellites_es.parking`, kind ``relay``) and passed: the cursor moves over them, so
a restart neither wedges on them nor republishes what was confirmed around them. Parked events
marked for retry are republished by the leader every ``RETRY_INTERVAL`` seconds (out of order
with the stream, as a replay is).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any, NamedTuple

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from .config import RelayConfig
from .errors import (
    ConfigurationError,
    LifecycleError,
    UndeliverableError,
    UnroutableError,
    UpcastError,
)
from .events import DataEvent, Publisher, RelayBus
from .faults import MAX_BACKOFF, backoff, is_transient
from .parking import Poison
from .protocols import EventLog, LeadershipLost, Parking, RelayLease, Wakeups
from .shielded import finished, stop_task
from .tracing import linked, span

__all__ = ["LeadershipLost", "Relay", "RelayState"]

logger = logging.getLogger(__name__)

#: How often the leader looks for parked events marked for retry, in seconds.
RETRY_INTERVAL = 1.0


class RelayState(enum.Enum):
    NEW = "new"
    STANDBY = "standby"
    ACTIVE = "active"
    STOPPED = "stopped"


class _Sent(NamedTuple):
    """One event sent and the future of its outcome (its confirm)."""

    event: DataEvent
    confirm: asyncio.Future[None]


class _Window:
    """The unconfirmed sends of :meth:`Relay._stream`, oldest first, and their batches."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.inflight: deque[_Sent] = deque()
        self.batches: deque[list[DataEvent]] = deque()
        self.confirmed = 0
        #: undeliverable events settled but not yet parked (parked before the cursor passes)
        self.poison: list[Poison] = []

    @property
    def low(self) -> int:
        """Once full, the window is refilled when this few are left unconfirmed."""
        return self.size // 2

    @property
    def full(self) -> bool:
        return len(self.inflight) >= self.size

    def add(self, event: DataEvent, confirm: asyncio.Future[None]) -> None:
        self.inflight.append(_Sent(event, confirm))

    async def drop(self) -> None:
        """Cancel what is unconfirmed and collect every outcome."""
        futures = [sent.confirm for sent in self.inflight]
        self.inflight.clear()
        for future in futures:
            future.cancel()
        await asyncio.gather(*futures, return_exceptions=True)


class Relay:
    """Publishes the log after its cursor to ``bus``; see the module docstring."""

    def __init__(
        self,
        log: EventLog,
        bus: RelayBus,
        *,
        lease: RelayLease,
        parking: Parking,
        config: RelayConfig,
        name: str = "default",
    ) -> None:
        self.name = name
        self._store, self._bus, self._lease, self._config = log, bus, lease, config
        self._state = RelayState.NEW
        self._cursor = 0
        self._head = 0
        self._published = 0
        self._unroutable = 0
        self._parked = 0
        self._failures = 0
        self._last_error: str | None = None
        self._parking = parking
        self._stopping = asyncio.Event()
        self._running: asyncio.Task[None] | None = None

    # -- observability -----------------------------------------------------------------------

    @property
    def state(self) -> RelayState:
        return self._state

    @property
    def cursor(self) -> int:
        """The last position confirmed by the bus (as this relay last knew it)."""
        return self._cursor

    @property
    def published(self) -> int:
        """Events this relay published with a confirm (duplicates after a crash included)."""
        return self._published

    @property
    def lag(self) -> int:
        """``head - cursor`` as of the last :meth:`metrics` call or publishing round."""
        return max(0, self._head - self._cursor)

    @property
    def lease_backend_pid(self) -> int | None:
        """Who holds (or tries for) the lease: on Postgres, the backend pid of its session."""
        return self._lease.holder

    async def metrics(self) -> dict[str, Any]:
        """Cursor, lag, age of the oldest unpublished event (seconds), published, state."""
        self._head = await self._store.head()
        cursor = (
            self._cursor if self._state is RelayState.ACTIVE else await self._lease.read_cursor()
        )
        oldest = await self._store.oldest_after(cursor)
        age = (time.time() - oldest.timestamp()) if oldest is not None else 0.0
        return {
            "name": self.name, "state": self._state.value, "cursor": cursor,
            "head": self._head, "lag": max(0, self._head - cursor),
            "oldest_unpublished_age": max(0.0, age), "published": self._published,
            "unroutable": self._unroutable, "parked": self._parked,
            "last_error": self._last_error,
        }  # fmt: skip

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Stand by or lead until :meth:`stop` (or cancellation); retries transient failures."""
        self._running = asyncio.current_task()
        retrying = AsyncRetrying(
            retry=retry_if_exception(_restartable),
            stop=lambda _state: self._stopping.is_set(),  # stopping: the last error is raised
            wait=self._backoff,
            sleep=self._pause,
            before_sleep=self._log_retry,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._cycle()
        finally:
            self._state = RelayState.STOPPED
            await self._lease.release()

    async def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in flight (bounded by ``timeout``) and stop. Returns once the relay
        has stopped, though the caller be cancelled meanwhile (``shielded.finished``)."""
        self._stopping.set()
        task = self._running
        if task is None or task.done() or task is asyncio.current_task():
            self._state = RelayState.STOPPED  # not running, or stopping itself (a handler)
            return
        await finished(self._stopped(task, timeout), limit=timeout)

    async def _stopped(self, task: asyncio.Task[None], timeout: float) -> None:
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            stop_task(task)
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _cycle(self) -> None:
        """Until stopped: stand by until the lock is ours, then lead until it is lost."""
        while not self._stopping.is_set():
            if await self._acquire():
                await self._lead()
            else:
                self._state = RelayState.STANDBY
                await self._pause(self._config.standby_interval)

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once on stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _backoff(self, retry_state: RetryCallState) -> float:
        """Exponential in the failures since the last published batch (not since start)."""
        self._failures += 1
        return backoff(self._failures, cap=MAX_BACKOFF)

    def _log_retry(self, retry_state: RetryCallState) -> None:
        self._state = RelayState.STANDBY
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        self._last_error = None if exc is None else f"{type(exc).__name__}: {exc}"
        if exc is not None and not is_transient(exc):  # a bug: say where, then start over
            logger.error("relay %s failed: %r; restarting in %.1fs", self.name, exc, wait,
                         exc_info=exc)  # fmt: skip
            return
        logger.warning("relay %s: %r; retrying in %.1fs", self.name, exc, wait)

    # -- leadership --------------------------------------------------------------------------

    async def _acquire(self) -> bool:
        """Try the lease (opening what it needs)."""
        got = await self._lease.acquire()
        if got:
            logger.info("relay %s: took the lead (%s)", self.name, self._lease.holder)
        return got

    async def _lead(self) -> None:
        """Publish until stopped or fenced; on a lost session, drop it and stand by again."""
        self._state = RelayState.ACTIVE
        work = asyncio.create_task(self._publish_loop(), name=f"relay-{self.name}-publish")
        watch = asyncio.create_task(self._watch_lease(), name=f"relay-{self.name}-lease")
        retry = asyncio.create_task(self._retry_parked(), name=f"relay-{self.name}-retry")
        tick = asyncio.create_task(self._sequence(), name=f"relay-{self.name}-sequencer")
        tasks = {work, watch, retry, tick}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        error = next((t.exception() for t in done if not t.cancelled() and t.exception()), None)
        if isinstance(error, LeadershipLost):
            logger.warning("relay %s: lost the lock session; fenced, back to standby", self.name)
            self._state = RelayState.STANDBY
            await self._lease.release()
            await self._pause(self._config.standby_interval)  # let a healthier standby lead
        elif error is not None:
            raise error

    async def _sequence(self) -> None:
        """Number what producers committed in their own transactions, every
        ``sequence_interval``: those appends send no NOTIFY (it would serialise their commits),
        so the leader's tick is what makes them readable promptly; the sequencer's own NOTIFY
        then wakes every follower, this relay's publish loop included. It runs until the
        publish loop ends (cancelled then), so a stop still lets that loop drain its window."""
        while True:
            await self._store.sequence()
            await asyncio.sleep(self._config.sequence_interval)

    async def _watch_lease(self) -> None:
        """Raise :class:`LeadershipLost` as soon as the lease is known to be gone."""
        while True:
            if await self._lease.wait_lost(self._config.standby_interval):
                raise LeadershipLost(self.name)

    # -- publishing --------------------------------------------------------------------------

    async def _publish_loop(self) -> None:
        self._cursor = await self._lease.load_cursor()
        await self._stream(await self._bus.publisher())

    async def _wait(self, listener: Wakeups, *also: asyncio.Future[Any]) -> None:
        """Until stop, a NOTIFY (or the poll interval), or one of ``also`` completes."""
        stop = asyncio.create_task(self._stopping.wait())
        wake = asyncio.create_task(listener.wait(self._config.poll_interval))
        try:
            await asyncio.wait({stop, wake, *also}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stop, wake):
                task.cancel()
            await asyncio.gather(stop, wake, return_exceptions=True)

    async def _stream(self, publisher: Publisher) -> None:
        """:meth:`_publish_loop` with a rolling window; the NOTIFY listener is opened while the
        backlog is published (it is needed only once caught up)."""
        async with contextlib.AsyncExitStack() as stack:
            opening = asyncio.create_task(stack.enter_async_context(self._store.listener()))
            try:
                await self._roll(publisher, opening)
            finally:
                opening.cancel()
                await asyncio.gather(opening, return_exceptions=True)

    async def _roll(self, publisher: Publisher, opening: asyncio.Task[Wakeups]) -> None:
        """Publish the log after the cursor with a confirm window that rolls across batches.

        Events are sent in position order on one pinned channel as they are read, with at most
        ``confirm_window`` unconfirmed; the next batch is read while confirms return. Confirms
        are settled oldest first, and the cursor moves (at batch ends) only over a batch whose
        events and all earlier ones were confirmed. The first failed confirm raises: the window
        is dropped and the caller restarts from the cursor (duplicates, never losses).
        """
        window = _Window(max(1, self._config.confirm_window))
        sent = self._cursor
        try:
            while not self._stopping.is_set():
                if self._lease.lost():
                    raise LeadershipLost(self.name)
                read = 0
                async with contextlib.aclosing(self._batches(after=sent)) as batches:
                    try:
                        async for batch in batches:
                            with linked("relay.publish", batch, relay=self.name,
                                        events=len(batch)):  # fmt: skip
                                for event in batch:
                                    while window.full:  # refill in chunks, not one by one
                                        await self._settle(window, wait=True, until=window.low)
                                    window.add(event, publisher.send(event))
                            window.batches.append(batch)
                            sent = batch[-1].position or sent
                            read += len(batch)
                            await self._settle(window, wait=False)
                            if self._stopping.is_set():
                                break
                    except UpcastError:
                        # an event this code cannot read (the log gives the ones before it
                        # first): settle what was sent, so the cursor stops exactly at it
                        while window.inflight:
                            await self._settle(window, wait=True)
                        raise
                self._head = max(self._head, sent)
                if read == 0 and not opening.done():
                    await opening  # listening from now on: read once more, then wait
                    continue
                if read == 0:
                    listener = opening.result()
                    if window.inflight:  # caught up: wait for a confirm or for new events
                        await self._wait(listener, window.inflight[0].confirm)
                        await self._settle(window, wait=False)
                    else:
                        await self._wait(listener)
            while window.inflight:  # stopping: let the window drain, move the cursor
                await self._settle(window, wait=True)
        finally:
            await window.drop()

    async def _settle(self, window: _Window, *, wait: bool, until: int | None = None) -> None:
        """Take the confirmed prefix of the window (waiting for its oldest entry if ``wait``,
        and then on until at most ``until`` are unconfirmed), then move the cursor over the
        batches it completes."""
        inflight = window.inflight
        if wait and inflight:
            await asyncio.wait({inflight[0].confirm})
            if until is not None:
                while len(inflight) > until and not inflight[until].confirm.done():
                    await asyncio.wait({inflight[until].confirm})
        done = 0
        while inflight and inflight[0].confirm.done():
            event, confirm = inflight.popleft()
            try:
                confirm.result()  # raises PublishError: the window is dropped by the caller
            except UnroutableError:
                # No subscriber group has a queue for this type: nobody on the bus wants it.
                # It stays in the log (projections read it there), and the relay moves on;
                # stalling here would stop every later event behind a type nobody consumes.
                self._unroutable += 1
            except UndeliverableError as exc:  # it can never be published: parked, passed
                window.poison.append(_poison(event, exc))
            window.confirmed = event.position or window.confirmed
            done += 1
        if not done:
            return
        self._published += done
        if window.poison:  # parked before the cursor passes them
            await self._park(window.poison)
            window.poison = []
        batches = window.batches
        target: int | None = None
        while batches and (batches[0][-1].position or 0) <= window.confirmed:
            target = batches.popleft()[-1].position
        if target is not None:
            await self._advance(target)
        self._failures = 0

    def _batches(self, after: int) -> AsyncGenerator[list[DataEvent], None]:
        # no sequencing here: the leader's tick (_sequence) does it and its NOTIFY wakes us
        return self._store.read(after=after, batch_size=self._config.batch_size, sequence=False)

    async def _park(self, poison: list[Poison]) -> None:
        await self._parking.park("relay", self.name, 0, poison)
        self._parked += len(poison)
        for p in poison:
            logger.warning("relay %s: parked the event at position %d (id %s, type %.80r): %s",
                           self.name, p.position, p.event_id, p.event_type, p.error)  # fmt: skip

    async def _retry_parked(self) -> None:
        """While leading: republish the parked events an operator marked for retry."""
        while True:
            await self._pause(RETRY_INTERVAL)
            if self._stopping.is_set():  # the publishing task ends the lead; wait for that
                await asyncio.get_running_loop().create_future()
            try:
                await self._republish_marked()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                logger.warning("relay %s: retrying parked events: %r", self.name, exc)

    async def _republish_marked(self) -> None:
        positions = await self._parking.retries("relay", self.name, 0)
        if not positions:
            return
        done: list[int] = []
        again: list[Poison] = []
        publisher = await self._bus.publisher()
        for event in await self._store.read_at(positions):
            try:
                await publisher.send(event)
            except UnroutableError:
                self._unroutable += 1
            except UndeliverableError as exc:
                again.append(_poison(event, exc))
                continue
            done.append(event.position or 0)
        missing: set[int] = set(positions) - set(done) - {p.position for p in again}
        again += [Poison(p, "LookupError", "no event at this position") for p in sorted(missing)]
        await self._parking.resolve("relay", self.name, 0, done)
        await self._parking.park("relay", self.name, 0, again)
        logger.info("relay %s: republished %d parked event(s), %d parked again",
                    self.name, len(done), len(again))  # fmt: skip

    async def _advance(self, position: int | None) -> None:
        """Move the cursor, through the lease: a fenced relay cannot move it."""
        if position is None or position <= self._cursor:
            return
        with span("relay.advance", relay=self.name, published=position - self._cursor):
            await self._lease.advance(position)
        self._cursor = position


def _restartable(exc: BaseException) -> bool:
    """Everything but a configuration or lifecycle error starts the relay over (see the
    module docstring); a transient error is expected, any other one is logged as a bug."""
    return isinstance(exc, Exception) and not isinstance(exc, ConfigurationError | LifecycleError)


def _poison(event: DataEvent, exc: BaseException) -> Poison:
    return Poison.of(event.position or 0, exc, key=event.key, event_id=event.id,
                     event_type=event.type)  # fmt: skip
