"""The relay: publishes the event log to the bus, at least once, in position order.

The outbox is the part of the log after the relay's cursor (``relay_cursors``, one row per
relay name); there is no second copy of an event.

**Confirm window and cursor.** The relay reads a batch after its cursor and hands it to
``bus.publish_many(batch, window=confirm_window)``, which keeps up to ``confirm_window``
publisher confirms outstanding. The cursor moves only over confirmed events: to the end of the
batch when every confirm came back, or to the end of the confirmed prefix when a publish failed
(``PublishBatchError.confirmed``); the rest is published again on the next try. A crash between
the confirms and the cursor update therefore republishes that batch: consumers see duplicates,
never gaps, and are idempotent by position.

**Leader election and fencing.** Several relay processes may run with one name; only the one
holding the Postgres session advisory lock ``(hashtext('satellites.relay'),
hashtext(schema || '.' || name))`` publishes. The lock lives on a connection of the relay's own
(not a pooled one), so it is released exactly when that session ends: a SIGKILLed process, a
cut network or a Postgres restart free it, and a standby, which retries every
``standby_interval``, takes over. The leader fences itself: the cursor is written on the lock's
own connection (a relay that lost its session cannot move the cursor), a termination listener
and a ``SELECT 1`` heartbeat every ``standby_interval`` detect a lost session, and then the
publishing task is cancelled at once and the relay goes back to standby. Between the loss and
its detection (one heartbeat at most) two relays may publish the same events: duplicates, which
consumers absorb.

**Failures.** Broker or Postgres trouble (``PublishError``, ``BackendUnavailableError``,
``PersistenceError``, driver errors: transient, as :mod:`satellites_es.faults` classifies them)
is logged and retried with capped exponential backoff (tenacity), forever, until
:meth:`Relay.stop`. Any other failure (a bug) is logged with its traceback and the relay starts
over the same way: it is supervised by its own retry loop and never dies silently; only a
configuration or lifecycle error ends :meth:`Relay.run`. Wake-ups come from the log's NOTIFY
listener, with a poll every ``poll_interval`` as the fallback.

**The sequencer's tick.** The leader also numbers the events producers committed in their own
transactions (:meth:`EventStore.sequence <satellites_es.store.EventStore.sequence>`) every
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
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, cast

import aio_pika
import asyncpg
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from .bus.rabbitmq import PublishBatchError
from .config import RelayConfig
from .errors import (
    BackendUnavailableError,
    ConfigurationError,
    LifecycleError,
    PersistenceError,
    PublishError,
    UndeliverableError,
    UnroutableError,
)
from .events import DataEvent, EventBus
from .faults import MAX_BACKOFF, backoff, is_transient
from .parking import ParkedEvents, Poison
from .sql import queries
from .store import EventStore
from .tracing import span

__all__ = ["Relay", "RelayState"]

logger = logging.getLogger(__name__)

#: What the relay retries with backoff (everything else is a bug and stops ``run``).
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    PublishError,
    BackendUnavailableError,
    PersistenceError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # a terminated lock session can leave the connection mid-operation (found by the soak)
    asyncpg.InternalClientError,
    aio_pika.exceptions.AMQPError,
    OSError,  # ConnectionError, and TimeoutError since Python 3.11
)
#: How often the leader looks for parked events marked for retry, in seconds.
RETRY_INTERVAL = 1.0

AfterConfirm = Callable[[Sequence[DataEvent]], Awaitable[None]]


class RelayState(enum.Enum):
    NEW = "new"
    STANDBY = "standby"
    ACTIVE = "active"
    STOPPED = "stopped"


class _Window:
    """The unconfirmed sends of :meth:`Relay._stream`, oldest first, and their batches."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.inflight: deque[tuple[DataEvent, asyncio.Future[None]]] = deque()
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
        self.inflight.append((event, confirm))

    async def drop(self) -> None:
        """Cancel what is unconfirmed and collect every outcome."""
        futures = [f for _, f in self.inflight]
        self.inflight.clear()
        for future in futures:
            future.cancel()
        await asyncio.gather(*futures, return_exceptions=True)


class LeadershipLost(Exception):
    """The advisory lock's session ended: stop publishing now."""


class Relay:
    """Publishes the log after its cursor to ``bus``; see the module docstring."""

    def __init__(
        self,
        store: EventStore,
        bus: EventBus,
        *,
        pool: asyncpg.Pool[asyncpg.Record],
        schema: str,
        config: RelayConfig,
        name: str = "default",
        dsn: str | None = None,
        after_confirm: AfterConfirm | None = None,
    ) -> None:
        self._sql = queries(schema)  # relay_* blocks of sql/queries.sql
        self.name = name
        self._store, self._bus, self._pool, self._config = store, bus, pool, config
        self._lock_key = f"{schema}.{name}"
        self._dsn = dsn
        #: Test hook: runs after a batch's confirms, before the cursor moves.
        self._after_confirm = after_confirm
        self._state = RelayState.NEW
        self._cursor = 0
        self._head = 0
        self._oldest: datetime | None = None
        self._published = 0
        self._unroutable = 0
        self._parked = 0
        self._failures = 0
        self._last_error: str | None = None
        self._parking = ParkedEvents(pool, schema)
        self._conn: asyncpg.Connection[asyncpg.Record] | None = None
        self._conn_lock = asyncio.Lock()
        self._lost = asyncio.Event()
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
        """The Postgres backend pid of the session holding (or trying for) the lock."""
        conn = self._conn
        return conn.get_server_pid() if conn is not None and not conn.is_closed() else None

    async def metrics(self) -> dict[str, Any]:
        """Cursor, lag, age of the oldest unpublished event (seconds), published, state."""
        self._head = await self._store.head()
        cursor = self._cursor if self._state is RelayState.ACTIVE else await self._read_cursor()
        oldest = await self._pool.fetchval(self._sql["relay_oldest"], cursor)
        age = (time.time() - oldest.timestamp()) if oldest is not None else 0.0
        return {
            "name": self.name, "state": self._state.value, "cursor": cursor,
            "head": self._head, "lag": max(0, self._head - cursor),
            "oldest_unpublished_age": max(0.0, age), "published": self._published,
            "unroutable": self._unroutable, "parked": self._parked,
            "last_error": self._last_error,
        }  # fmt: skip

    async def _read_cursor(self) -> int:
        value = await self._pool.fetchval(self._sql["relay_cursor_load"], self.name)
        return int(value or 0)

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
            await self._drop_connection()

    async def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in flight (bounded by ``timeout``) and stop."""
        self._stopping.set()
        task = self._running
        if task is None or task.done() or task is asyncio.current_task():
            self._state = RelayState.STOPPED
            return
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run_once(self) -> int:
        """Publish one batch if this relay can take the lead; returns how many were published."""
        if not await self._acquire():
            return 0
        try:
            self._cursor = await self._load_cursor()
            await self._store.sequence()  # no leader tick runs here
            async with contextlib.aclosing(self._batches()) as batches:
                async for batch in batches:
                    await self._publish_batch(batch)
                    return len(batch)
            return 0
        finally:
            await self._drop_connection()

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
        """Try the advisory lock on our own session (opened if needed)."""
        if self._conn is None or self._conn.is_closed():
            await self._open_connection()
        assert self._conn is not None
        async with self._conn_lock:
            got = bool(await self._conn.fetchval(self._sql["relay_lock"], self._lock_key))
        if got:
            logger.info("relay %s: took the lead (backend %s)", self.name, self.lease_backend_pid)
        return got

    async def _open_connection(self) -> None:
        await self._drop_connection()
        if self._dsn is not None:
            conn = await asyncpg.connect(self._dsn)
        else:  # same server and options as the pool, on a session the pool never resets
            conn = await asyncpg.connect(
                *getattr(self._pool, "_connect_args", ()),
                **getattr(self._pool, "_connect_kwargs", {}),
            )
        # Cursor writes need no WAL flush: after a Postgres crash the cursor may come back a
        # little older, and the events after it are published again (duplicates, no loss).
        # This keeps the commit's fsync out of the publishing path.
        try:
            await conn.execute("SET synchronous_commit TO off")
        except BaseException:
            conn.terminate()
            raise
        self._lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: self._lost.set())
        self._conn = conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 5.0)
            except RETRYABLE_ERRORS:
                conn.terminate()

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
            await self._drop_connection()
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
        """Raise :class:`LeadershipLost` as soon as the lock's session is known to be gone."""
        interval = self._config.standby_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), interval)
            if self._lost.is_set() or not await self._heartbeat(timeout=2 * interval + 1):
                raise LeadershipLost(self.name)

    async def _heartbeat(self, timeout: float) -> bool:
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        try:
            async with asyncio.timeout(timeout), self._conn_lock:
                await conn.fetchval("SELECT 1")
        except RETRYABLE_ERRORS:
            return False
        return True

    # -- publishing --------------------------------------------------------------------------

    async def _publish_loop(self) -> None:
        self._cursor = await self._load_cursor()
        opener = getattr(self._bus, "publisher", None)
        if opener is not None:
            await self._stream(await opener())
            return
        async with self._store.listener() as listener:
            while not self._stopping.is_set():  # a bus without a rolling window: batch-wise
                if await self._drain() == 0:
                    await self._wait(listener)

    async def _wait(self, listener: Any, *also: asyncio.Future[Any]) -> None:
        """Until stop, a NOTIFY (or the poll interval), or one of ``also`` completes."""
        stop = asyncio.create_task(self._stopping.wait())
        wake = asyncio.create_task(listener.wait(self._config.poll_interval))
        try:
            await asyncio.wait({stop, wake, *also}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stop, wake):
                task.cancel()
            await asyncio.gather(stop, wake, return_exceptions=True)

    async def _stream(self, publisher: Any) -> None:
        """:meth:`_publish_loop` with a rolling window; the NOTIFY listener is opened while the
        backlog is published (it is needed only once caught up)."""
        async with contextlib.AsyncExitStack() as stack:
            opening = asyncio.create_task(stack.enter_async_context(self._store.listener()))
            try:
                await self._roll(publisher, opening)
            finally:
                opening.cancel()
                await asyncio.gather(opening, return_exceptions=True)

    async def _roll(self, publisher: Any, opening: asyncio.Task[Any]) -> None:
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
                if self._lost.is_set():
                    raise LeadershipLost(self.name)
                read = 0
                async with contextlib.aclosing(self._batches(after=sent)) as batches:
                    async for batch in batches:
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
                self._head = max(self._head, sent)
                if read == 0 and not opening.done():
                    await opening  # listening from now on: read once more, then wait
                    continue
                if read == 0:
                    listener = opening.result()
                    if window.inflight:  # caught up: wait for a confirm or for new events
                        await self._wait(listener, window.inflight[0][1])
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
            await asyncio.wait({inflight[0][1]})
            if until is not None:
                while len(inflight) > until and not inflight[until][1].done():
                    await asyncio.wait({inflight[until][1]})
        done = 0
        while inflight and inflight[0][1].done():
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
            batch = batches.popleft()
            if self._after_confirm is not None:
                await self._after_confirm(batch)
                await self._advance(batch[-1].position)
            else:
                target = batch[-1].position
        if target is not None:
            await self._advance(target)
        self._failures = 0

    async def _drain(self) -> int:
        """Publish everything after the cursor, batch by batch; returns how many."""
        total = 0
        async with contextlib.aclosing(self._batches()) as batches:
            async for batch in batches:
                await self._publish_batch(batch)
                total += len(batch)
                if self._stopping.is_set():
                    break
        self._head = max(self._head, self._cursor)
        return total

    def _batches(self, after: int | None = None) -> AsyncGenerator[list[DataEvent], None]:
        start = self._cursor if after is None else after
        # no sequencing here: the leader's tick (_sequence) does it and its NOTIFY wakes us
        batches = self._store.read(after=start, batch_size=self._config.batch_size, sequence=False)
        return cast(AsyncGenerator[list[DataEvent], None], batches)  # an async generator

    async def _publish_batch(self, batch: list[DataEvent]) -> None:
        if self._lost.is_set():
            raise LeadershipLost(self.name)
        try:
            await self._publish(batch)
        except PublishBatchError as exc:
            if exc.confirmed:
                await self._advance(batch[exc.confirmed - 1].position)
            if not isinstance(exc.__cause__, UndeliverableError):
                raise
            bad = batch[exc.confirmed]  # it can never be published: parked, passed
            await self._park([_poison(bad, exc.__cause__)])
            await self._advance(bad.position)
            if exc.confirmed + 1 < len(batch):
                await self._publish_batch(batch[exc.confirmed + 1 :])
            return
        if self._after_confirm is not None:
            await self._after_confirm(batch)
        await self._advance(batch[-1].position)
        self._failures = 0

    async def _publish(self, batch: list[DataEvent]) -> None:
        publish_many = getattr(self._bus, "publish_many", None)
        if publish_many is not None:
            self._published += await publish_many(batch, window=self._config.confirm_window)
            return
        for i, event in enumerate(batch):  # a bus without confirm windows: one at a time
            try:
                await self._bus.publish(event)
            except PublishError as exc:
                raise PublishBatchError(str(exc), confirmed=i) from exc
            self._published += 1

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
        for event in await self._store.read_at(positions):
            try:
                await self._bus.publish(event)
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

    async def _load_cursor(self) -> int:
        conn = self._lease()
        async with self._conn_lock:
            await conn.execute(self._sql["relay_cursor_init"], self.name)
            value = await conn.fetchval(self._sql["relay_cursor_load"], self.name)
        return int(value or 0)

    async def _advance(self, position: int | None) -> None:
        """Move the cursor, on the lock's own session: a fenced relay cannot move it."""
        if position is None or position <= self._cursor:
            return
        conn = self._lease()
        with span("relay.advance", relay=self.name, published=position - self._cursor):
            async with self._conn_lock:
                await conn.execute(self._sql["relay_cursor_advance"], self.name, position)
        self._cursor = position

    def _lease(self) -> asyncpg.Connection[asyncpg.Record]:
        if self._conn is None or self._conn.is_closed() or self._lost.is_set():
            raise LeadershipLost(self.name)
        return self._conn


def _restartable(exc: BaseException) -> bool:
    """Everything but a configuration or lifecycle error starts the relay over (see the
    module docstring); a transient error is expected, any other one is logged as a bug."""
    return isinstance(exc, Exception) and not isinstance(exc, ConfigurationError | LifecycleError)


def _poison(event: DataEvent, exc: BaseException) -> Poison:
    return Poison.of(event.position or 0, exc, key=event.key, event_id=event.id,
                     event_type=event.type)  # fmt: skip
