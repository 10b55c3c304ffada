"""The event log in Postgres: append (the transactional outbox), read, follow.

Append is one round trip: ``append_events_v4`` (a plpgsql function created by migration 0006
from 0005's ``create_append_events_v3`` block in ``sql/queries.sql``, taking its transaction id
first; ``append_event_v4`` is its scalar twin for a single event, the latency-sensitive case)
drops ids already stored, gives each new event the next version of its
``(resource, key)`` stream and inserts (NOTIFY: see below). A batch travels as column arrays
(``unnest`` on the server), not as one JSON document, with each event's stream and rank within
it numbered here (:func:`_numbering`), so the server looks each stream's version up once and,
when no id is stored already (the usual case), inserts without a per-event lookup. Pass the
producer's connection (``conn=``) and the events commit or roll back with the producer's own
write; without it the call is one autocommitted statement. One event inside the producer's
transaction, the commonest append of all, skips the function: it is one ``INSERT`` of the
producer's own (``append_pending`` in ``sql/queries.sql``, migration 0007), whose row the column
default leaves pending; only when that inserts nothing (an id already stored, a version taken
meanwhile, ``expected_version`` not met) is ``append_event_v4`` called to say which. Under
concurrent producers the function call cost about as much as the insert it wrapped
(BENCHMARKS.md, issue 13).

**Positions are taken after commit** (the ``create_sequencer_v1`` paragraph in
``sql/queries.sql`` has the whole argument). A reader following ``position > cursor`` must
never later see a lower position commit, which a bigserial breaks (positions taken at insert,
visible at commit, in another order). So an event appended inside a producer's transaction is
stored *pending*, at a negative number no reader asks for, and takes no lock beyond its own
stream's (two appends to one ``(resource, key)`` stream are ordered by its version index; no
other producer ever waits). The *sequencer*, ``sequence_events_v1``, numbers committed pending
events head + 1, head + 2, ... in insertion order, one batch at a time under an advisory lock:
positions stay dense and monotone, a producer holding its transaction open delays only itself
(its events are numbered after it commits), a rolled-back append leaves nothing, and a stream's
version order is its position order. Readers sequence before they read (:meth:`sequence`; the
relay, the projectors and open-ended :meth:`read` calls do it when woken by the producer's
NOTIFY or their poll), so there is no extra process to run. The sequencer scans only above its
*floor*, the pending number up to which every transaction has ended (migration 0006; the
``create_sequencer_state_v1`` paragraph): a numbered row's old entry stays in the index until
VACUUM, and without the floor every call stepped over all of them.

An autocommitted append (no ``conn``) numbers its events at once when the sequencer lock is free
(one round trip, each row written once), else it asks the sequencer after its commit (a second
round trip); either way its :class:`AppendResult` carries positions. An append inside the
caller's transaction returns ``position=None``: positions exist only after commit, and
:meth:`sequenced` gives them then. ``tests/integration/test_store_gaps.py`` holds producers'
transactions open, rolls some back and races same-stream appends to prove all of it.

**Idempotency.** The event id is unique. An id already stored is not stored again: the
:class:`AppendResult` lists it in ``duplicates`` and carries its stored position and version,
so a retried append is harmless. With ``expected_version`` a retry whose events are all stored
already is reported as duplicates too, not as a conflict.

**Bad input** (not JSON, too large, a missing field, a NUL character Postgres cannot store)
raises :class:`InvalidEventError` for the whole batch before anything is sent. Driver errors are
translated here: :class:`ConcurrencyError` for a version conflict, :class:`PersistenceError`
for the rest; no asyncpg exception leaves this module.

**The envelope** (:mod:`.envelope`). Each event's metadata (correlation, causation, actor,
trace context, headers) and payload schema version are stored in the ``metadata`` column
(migration 0005), validated like the payload, and returned by every read.
An append made while a subscriber's handler runs, or inside an OpenTelemetry span, fills what
the events leave unset from there (:func:`.envelope.ambient`): one check per call when there is
neither. Every read upcasts older schema versions to the latest (:mod:`.upcasting`): the rows
stay as they were written.

**Reading.** :meth:`EventStore.read` pages by position; a replay (a projector) filters by
event type in Postgres and reads one batch ahead. A stored row is turned into a ``DataEvent``
without validating it again (it was validated on the way in), its payload decoded by msgspec
(:mod:`.jsontext`, the same values as ``json.loads``). :meth:`EventStore.read_payloads` reads
only positions, keys, types and payloads, with one long string field (an encoded vector) sent
apart as raw text: what a :class:`~satellites_es.projections.VectorFields` replay needs. Rows
are stored inline (migration 0002), so reading a payload in parts costs no TOAST lookups.

**Following.** :meth:`EventStore.listener` LISTENs on a dedicated connection (asyncpg drops the
listeners of a connection that goes back to a pool, asyncpg #189/#283), listens again after a
reconnect, and wakes :meth:`LogListener.wait`. NOTIFY is only a hint: callers still poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Collection,
    Sequence,
)
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, TypeAlias, TypeVar, cast

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from .config import EventLogConfig
from .envelope import EMPTY, ambient, from_stored, stamped, stored_json
from .errors import (
    ConcurrencyError,
    ConfigurationError,
    InvalidEventError,
    PersistenceError,
    UpcastError,
)
from .events import DataEvent, built_event
from .jsontext import loads, loads_many
from .pgpool import Statements, session_connection
from .sql import UNIT_SEPARATOR, joined_arrays, queries
from .tracing import span
from .upcasting import NONE, Upcasters

__all__ = ["AppendResult", "EventStore", "LogListener", "PayloadBatch", "encode_batch"]

logger = logging.getLogger(__name__)

Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
Connect: TypeAlias = "Callable[[], Awaitable[asyncpg.Connection[asyncpg.Record]]]"
_T = TypeVar("_T")

_MAX_POSITION = 2**63 - 1
_MAX_IDENTIFIER = 63  # Postgres truncates LISTEN channels longer than this; pg_notify refuses
_CONFLICT = "SAT01"  # SQLSTATE raised by the append functions on a version conflict
_TEXT_FIELDS = ("id", "type", "resource", "key", "source")
# An escaped NUL in JSON (an odd number of backslashes before u0000): jsonb cannot store it.
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
#: Every driver error that means 'the database or the connection failed' (translated at the edge).
#: The longest event type, in UTF-8 bytes: an AMQP routing key is at most 255 bytes, and the
#: relay's is ``p<partition>.<type>`` (15 bytes left for the prefix).
MAX_TYPE_BYTES = 240

DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
              OSError, TimeoutError)  # fmt: skip


@dataclass(frozen=True)
class AppendResult:
    """What an append stored: each distinct event once, in the order given."""

    #: The events with ``position`` and ``version`` set (for duplicates: the stored ones).
    events: tuple[DataEvent, ...]
    #: Ids that were already stored (or repeated within the batch) and were not stored again.
    duplicates: tuple[str, ...] = ()

    @property
    def last_position(self) -> int:
        """The highest position among :attr:`events` (0 when there are none)."""
        return max((e.position or 0 for e in self.events), default=0)


@dataclass(frozen=True, slots=True)
class PayloadBatch:
    """A page of :meth:`EventStore.read_payloads`, as columns: event ``i`` is
    ``(positions[i], keys[i], types[i], payloads[i])``, in position order."""

    positions: list[int]
    keys: list[str]
    types: list[str]
    payloads: list[Any]

    def __len__(self) -> int:  # the number of events, not of columns
        return len(self.positions)


class EventStore:
    """The Postgres event log of one schema; see the module docstring.

    ``pool`` serves appends and reads (the SQL names the schema, so the pool's ``search_path``
    does not matter). A pool made by :func:`satellites_es.pgpool.create_pool` (the layer's)
    takes each connection back without asyncpg's reset query, a round trip per call saved.
    ``dsn`` is where :meth:`listener` opens its own connection; without it the listener reuses
    the pool's connect arguments.
    """

    def __init__(
        self,
        pool: asyncpg.Pool[asyncpg.Record],
        *,
        schema: str,
        config: EventLogConfig,
        dsn: str | None = None,
        upcasters: Upcasters | None = None,
    ) -> None:
        self.upcasters = upcasters if upcasters is not None else NONE
        self.upcasters.check()
        try:
            self._sql = queries(schema)
        except ValueError as exc:
            raise ConfigurationError("postgres.schema", str(exc)) from exc
        self._sql["append_joined"] = joined_arrays(self._sql["append"], _JOINED_PARAMS)
        self._pool = pool
        self._db = Statements(pool)  # the log's statements leave no session state to reset
        self._config = config
        self._dsn = dsn
        self.schema = schema
        #: The NOTIFY channel, namespaced by schema so that logs in two schemas do not cross-talk.
        self.channel = f"{config.notify_channel}.{schema}"
        if len(self.channel.encode()) > _MAX_IDENTIFIER:
            raise ConfigurationError(
                "log.notify_channel", f"{self.channel!r} is longer than {_MAX_IDENTIFIER} bytes"
            )

    async def append(
        self,
        events: DataEvent | Sequence[DataEvent],
        *,
        conn: Connection | None = None,
        expected_version: int | None = None,
    ) -> AppendResult:
        """Store ``events`` in order; see the module docstring for the guarantees.

        ``conn``: the producer's connection, inside its transaction (the events are pending, with
        no position, until it commits; see :meth:`sequenced`). ``expected_version``: the version
        the single stream must be at before this append (0: it must not exist), else
        :class:`ConcurrencyError`.
        """
        batch = [events] if isinstance(events, DataEvent) else list(events)
        if not batch:
            return AppendResult(events=())
        _check_expected(batch, expected_version)
        defaults = ambient()  # the handled event's ids, the current trace: None outside both
        if defaults is not None:
            batch = stamped(batch, defaults)
        with span("log.append", events=len(batch), schema=self.schema):
            return await self._append(batch, conn, expected_version)

    async def _append(
        self, batch: list[DataEvent], conn: Connection | None, expected_version: int | None
    ) -> AppendResult:
        distinct = _first_of_each_id(batch)
        if conn is not None:  # inside the caller's transaction: pending until it commits
            if len(distinct) == 1:
                stored = await self._append_pending(distinct[0], conn, expected_version)
                if stored is not None:
                    return _result(batch, (stored,))
            query, args = self._append_call(distinct, expected_version, sequence_now=False)
            with _translated("append", batch[0], expected_version):
                rows = await conn.fetch(query, *args)
            return _result(batch, rows)
        query, args = self._append_call(distinct, expected_version, sequence_now=True)
        with _translated("append", batch[0], expected_version):
            try:
                rows = await self._db.fetch(query, *args)
            except asyncpg.LockNotAvailableError:
                # The fast path (holding the sequencer lock, under a 20 ms lock_timeout) met an
                # in-flight append of the same stream or id: redo it pending, which may wait for
                # that append without holding the lock.
                query, args = self._append_call(distinct, expected_version, sequence_now=False)
                rows = await self._db.fetch(query, *args)
        result = _result(batch, rows)
        if any(e.position is None for e in result.events):  # the sequencer was busy
            result = await self.sequenced(result)
        return result

    async def _append_pending(
        self, event: DataEvent, conn: Connection, expected_version: int | None
    ) -> tuple[None, str, int, bool] | None:
        """One event inside the caller's transaction as its own ``INSERT`` (migration 0007's
        ``append_pending``): the result row, or None when nothing was inserted (an id already
        stored, a version taken meanwhile, ``expected_version`` not met), which
        ``append_event_v4`` then tells apart."""
        fields = _scalar_fields(event, self._config.max_payload_bytes)
        with _translated("append", event, expected_version):
            version = await conn.fetchval(self._sql["append_pending"], *fields, expected_version)
        return None if version is None else (None, event.id, version, False)

    def _append_call(
        self, batch: Sequence[DataEvent], expected_version: int | None, *, sequence_now: bool
    ) -> tuple[str, tuple[object, ...]]:
        """The query and arguments: scalar ones for a single event (the fast path)."""
        if len(batch) > 1:
            columns: Sequence[object] = encode_batch(batch, self._config.max_payload_bytes)
            query = self._sql["append"]
            joined = _joined(columns)
            if joined is not None:
                query, columns = self._sql["append_joined"], joined
            numbering = _numbering(batch)
            batch_args: tuple[object, ...] = (*columns, *numbering, expected_version,
                                              self.channel, sequence_now)  # fmt: skip
            return query, batch_args
        fields = _scalar_fields(batch[0], self._config.max_payload_bytes)
        return self._sql["append_one"], (*fields, expected_version, self.channel, sequence_now)

    async def sequence(self) -> int:
        """Number every committed pending event (see the module docstring) and return the head.

        Readers call it before they read; it waits only for another sequencer at work (never for
        a producer), and costs one index probe when nothing is pending. Not read-only: health
        checks use :meth:`head`.
        """
        with _translated("sequence"):
            value = await self._db.fetchval(self._sql["sequence"], self.channel)
        return int(value)

    async def sequenced(self, result: AppendResult) -> AppendResult:
        """``result`` with every event's position, after the append's transaction committed.

        An append inside the caller's transaction (``conn=``) returns ``position=None``:
        positions are taken after commit. Await this once the transaction has committed (it
        sequences the log first); an event still without a position then was not committed
        (rolled back, or the transaction is still open), and :class:`PersistenceError` says so.
        """
        ids = [e.id for e in result.events]
        if not ids:
            return result
        with _translated("sequenced"):
            rows = await self._db.fetch(self._sql["sequenced"], ids, self.channel)
        positions: dict[str, int | None] = {row[0]: row[1] for row in rows}
        missing = [i for i in ids if positions.get(i) is None]
        if missing:
            raise PersistenceError(
                f"event log has no committed event {missing[0]!r}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                + ": was the append's transaction committed?"
            )
        events = tuple(_stored(e, positions[e.id], e.version) for e in result.events)
        return AppendResult(events=events, duplicates=result.duplicates)

    async def read(
        self,
        after: int = 0,
        *,
        batch_size: int | None = None,
        until: int | None = None,
        types: Collection[str] | None = None,
        read_ahead: bool = False,
        sequence: bool = True,
    ) -> AsyncGenerator[list[DataEvent], None]:
        """Events with ``after < position <= until``, in position order, a batch at a time.
        Without ``until`` the log is sequenced first (unless ``sequence=False``: a caller that
        sequences on its own, like the relay's leader), so every append committed before the
        call is read.

        Keyset pagination (``position > last``), one short query per batch: memory stays
        constant and no connection is held between batches, however long the log.

        ``types``: only events of these types (a projection reads what its handler takes).
        The others are skipped by Postgres, before their payloads are read from disk (and out of
        TOAST), converted to text and sent; a batch then holds up to ``batch_size`` matching
        events, and a pass over a range with none of them yields nothing.

        ``read_ahead``: fetch the next batch while the caller works on this one, so a replay
        pays the server's part of the read (jsonb to text, CPU per event) beside the caller's
        work instead of before it (BENCHMARKS.md has the figures). One more pool connection is busy
        meanwhile; close the iterator (``contextlib.aclosing``) when leaving it early, so the
        pending fetch is cancelled at once.
        """
        extra: tuple[list[str], ...] | None = ()
        if types is None:
            query = self._sql["read"]
        else:
            query, extra = self._sql["read_types"], _type_filter(types)
        if until is None and sequence:
            await self.sequence()
        upcasters = self.upcasters
        pages = self._pages(query, extra, after, until, batch_size, read_ahead)
        async with contextlib.aclosing(pages):  # an error here cancels the read-ahead at once
            async for rows in pages:
                try:
                    events = [stored_event(row, upcasters) for row in rows]
                except UpcastError:  # the events before it first: a follower stops exactly there
                    readable = _readable(rows, lambda row: stored_event(row, upcasters))
                    if readable:
                        yield readable
                    raise
                yield events

    async def read_payloads(
        self,
        after: int = 0,
        *,
        types: Collection[str],
        text_field: str,
        batch_size: int | None = None,
        until: int | None = None,
        read_ahead: bool = False,
    ) -> AsyncGenerator[PayloadBatch, None]:
        """The position, key, type and payload of events, a :class:`PayloadBatch` at a time,
        for a replay that needs no more of an event than that (a declarative projection,
        :class:`~satellites_es.projections.VectorFields`). Same range, order, filter and read
        ahead as :meth:`read`; ``types`` is required.

        ``text_field``: a payload field that holds a long string (an encoded vector). Postgres
        sends it as raw text beside the rest of the payload, so neither side escapes or scans it
        as JSON: the server's part is about half of :meth:`read`'s (inline rows, migration 0002;
        figures in BENCHMARKS.md), the client's JSON decode one small document. The payloads come back whole, the field
        put back in; where it is not a string (a list of numbers, absent) the payload is read
        as it is. Payloads of an older schema version are upcast (whole, the field put back
        first), so a renamed vector field still arrives under its current name.
        """
        if not isinstance(text_field, str) or not text_field:
            raise InvalidEventError(
                f"text_field must be a non-empty string, got {text_field!r:.80}"
            )
        wanted = _type_filter(types)
        extra = None if wanted is None else (*wanted, text_field)
        if until is None:
            await self.sequence()
        pages = self._pages(self._sql["read_payloads"], extra, after, until, batch_size, read_ahead)
        async with contextlib.aclosing(pages):
            async for rows in pages:
                try:
                    batch = _payload_batch(rows, text_field, self.upcasters)
                except UpcastError:  # as in read: the rows before it first
                    one = lambda row: _payload_batch([row], text_field, self.upcasters)  # noqa: E731
                    readable = len(_readable(rows, one))
                    if readable:
                        yield _payload_batch(rows[:readable], text_field, self.upcasters)
                    raise
                yield batch

    async def _pages(
        self,
        query: str,
        extra: tuple[object, ...] | None,
        after: int,
        until: int | None,
        batch_size: int | None,
        read_ahead: bool,
    ) -> AsyncGenerator[list[asyncpg.Record], None]:
        """Rows of ``query`` a page at a time by keyset (the first column is the position);
        ``extra`` are its arguments after the cursor, the upper bound and the page size (None:
        the filter matches nothing)."""
        size = batch_size or self._config.read_batch_size
        if size < 1:
            raise ValueError("batch_size must be at least 1")
        upper = _MAX_POSITION if until is None else until
        if after >= upper or extra is None:
            return
        args = extra

        async def fetch(cursor: int) -> list[asyncpg.Record]:
            with _translated("read"):
                return await self._db.fetch(query, cursor, upper, size, *args)

        pending: asyncio.Task[list[asyncpg.Record]] | None = None
        try:
            rows = await fetch(after)
            while rows:
                last: int = rows[-1][0]  # position
                more = len(rows) == size and last < upper
                if more and read_ahead:
                    pending = asyncio.ensure_future(fetch(last))
                yield rows
                if not more:
                    return
                if pending is None:
                    rows = await fetch(last)
                else:
                    rows, pending = await pending, None
        finally:
            if pending is not None:  # left early: the fetch nobody will read is cancelled
                pending.cancel()
                await asyncio.wait([pending])
                if not pending.cancelled():
                    pending.exception()  # it failed meanwhile: retrieved, nobody needs it

    async def read_stream(
        self, resource: str, key: str, *, after_version: int = 0
    ) -> list[DataEvent]:
        """The events of one stream with ``version > after_version``, in version order."""
        with _translated("read_stream"):
            rows = await self._db.fetch(self._sql["read_stream"], resource, key, after_version)
        return [stored_event(row, self.upcasters) for row in rows]

    async def read_at(self, positions: Collection[int]) -> list[DataEvent]:
        """The events at ``positions`` (those that exist), in position order."""
        with _translated("read_at"):
            rows = await self._db.fetch(self._sql["read_at"], sorted(set(positions)))
        return [stored_event(row, self.upcasters) for row in rows]

    async def head(self) -> int:
        """The highest committed position (0 if the log is empty); everything up to it is
        readable, and nothing below it can commit later."""
        with _translated("head"):
            value = await self._db.fetchval(self._sql["head"])
        return int(value)

    async def oldest_after(self, position: int) -> datetime | None:
        """When the first event after ``position`` was recorded (None: there is none)."""
        with _translated("oldest_after"):
            value: datetime | None = await self._db.fetchval(self._sql["oldest_after"], position)
        return value

    async def pending(self) -> int:
        """How many committed events wait for the sequencer (read-only: for health and metrics;
        near 0 while a relay leader ticks it, growing when no reader runs at all)."""
        with _translated("pending"):
            value = await self._db.fetchval(self._sql["pending"])
        return int(value)

    def listener(self) -> LogListener:
        """A :class:`LogListener` on this log's channel, on a connection of its own."""
        return LogListener(self._connect, self.channel)

    async def _connect(self) -> asyncpg.Connection[asyncpg.Record]:
        return await session_connection(self._pool, self._dsn)


class LogListener:
    """Wake-ups on appends to the log; an async context manager owning one connection.

    ``await wait(timeout)`` returns True when an append committed since the last call (or the
    connection was re-established and one may have been missed), False on timeout. A lost
    connection is re-opened and LISTENed again on the next ``wait``; while that fails, ``wait``
    logs, sleeps ``timeout`` and returns False, so a caller that polls keeps working.
    """

    def __init__(self, connect: Connect, channel: str) -> None:
        self.channel = channel
        self._connect = connect
        self._conn: asyncpg.Connection[asyncpg.Record] | None = None
        self._woken = asyncio.Event()
        self._lost = False

    async def __aenter__(self) -> LogListener:
        with _translated("listen"):
            await self._listen()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def wait(self, timeout: float) -> bool:
        """True if notified (or reconnected) within ``timeout`` seconds, else False."""
        if self._conn is None or self._lost or self._conn.is_closed():
            return await self._reconnect(pause=timeout)
        return await woken(self._woken, timeout)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(*DB_ERRORS):
                await conn.close(timeout=5)

    async def _listen(self) -> None:
        conn = await self._connect()
        try:
            conn.add_termination_listener(self._on_terminated)
            await conn.add_listener(self.channel, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        self._conn, self._lost = conn, False

    async def _reconnect(self, *, pause: float) -> bool:
        await self.close()
        try:
            await self._listen()
        except DB_ERRORS as exc:
            logger.warning("event log listener on %s cannot reconnect: %s", self.channel, exc)
            await asyncio.sleep(pause)
            return False
        logger.info("event log listener on %s reconnected", self.channel)
        self._woken.clear()
        return True  # a notification may have been missed meanwhile: have the caller poll

    def _on_notify(self, conn: object, pid: int, channel: str, payload: object) -> None:
        self._woken.set()

    def _on_terminated(self, conn: object) -> None:
        self._lost = True
        self._woken.set()


async def woken(event: asyncio.Event, timeout: float) -> bool:
    """Whether ``event`` was set within ``timeout`` seconds; cleared for the next wait (the
    wake-up of a listener, here and in the in-memory log)."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    event.clear()
    return True


def encode_batch(
    events: Sequence[DataEvent], max_payload_bytes: int
) -> tuple[list[str], list[str], list[str], list[str], list[str], list[str], list[datetime],
           list[str]]:  # fmt: skip
    """The batch as the column arrays ``append_events_v4`` takes (id, resource, key, type,
    source, payload JSON, timestamp, metadata JSON); validates every event first."""
    ids, resources, keys, types, sources, payloads, timestamps = [], [], [], [], [], [], []
    metadatas = []
    for event in events:
        e = _checked(event)
        payloads.append(_payload_json(e, max_payload_bytes))
        metadatas.append(_metadata_json(e))
        ids.append(e.id)
        resources.append(e.resource)
        keys.append(e.key)
        types.append(e.type)
        sources.append(e.source)
        timestamps.append(e.timestamp)
    return ids, resources, keys, types, sources, payloads, timestamps, metadatas


def _scalar_fields(event: DataEvent, max_payload_bytes: int) -> tuple[object, ...]:
    """One validated event as the scalar arguments ``append_pending`` and ``append_one`` take
    first: id, resource, key, type, source, payload JSON, timestamp, metadata JSON."""
    e = _checked(event)
    return (e.id, e.resource, e.key, e.type, e.source, _payload_json(e, max_payload_bytes),
            e.timestamp, _metadata_json(e))  # fmt: skip


#: The text columns of ``encode_batch`` (all but the timestamps) and their parameters in the
#: ``append`` query: sent joined (``sql.joined_arrays``) when no value holds the separator.
_JOINED_COLUMNS = (0, 1, 2, 3, 4, 5, 7)
_JOINED_PARAMS = tuple(i + 1 for i in _JOINED_COLUMNS)


def _joined(columns: Sequence[object]) -> list[object] | None:
    """``encode_batch``'s columns with each text column joined by the unit separator, or None
    when a value holds one (a key may hold any character but NUL; JSON escapes it). Every value
    is a non-empty string (``_checked``), so splitting gives the column back exactly."""
    joined = list(columns)
    for i in _JOINED_COLUMNS:
        values = cast(list[str], columns[i])
        text = UNIT_SEPARATOR.join(values)
        if text.count(UNIT_SEPARATOR) != len(values) - 1:
            return None
        joined[i] = text
    return joined


def _numbering(events: Sequence[DataEvent]) -> tuple[list[int], list[int], list[int]]:
    """How ``append_events_v4`` numbers the batch without a sort: for each event the 1-based
    index of its ``(resource, key)`` stream among the batch's distinct streams and its 1-based
    rank within that stream; for each stream the 1-based index of its first event."""
    streams: dict[tuple[str, str], int] = {}
    counts: list[int] = []
    firsts: list[int] = []
    stream_of: list[int] = []
    seqs: list[int] = []
    for i, event in enumerate(events, 1):
        stream = (event.resource, event.key)
        s = streams.get(stream)
        if s is None:
            s = streams[stream] = len(counts)
            counts.append(0)
            firsts.append(i)
        counts[s] += 1
        stream_of.append(s + 1)
        seqs.append(counts[s])
    return stream_of, seqs, firsts


def _checked(event: object) -> DataEvent:
    """``event`` if it is a complete DataEvent, else :class:`InvalidEventError`."""
    if not isinstance(event, DataEvent):
        raise InvalidEventError(f"expected a DataEvent, got {type(event).__name__}")
    for name in _TEXT_FIELDS:
        value = getattr(event, name, None)
        if not isinstance(value, str) or not value:
            raise InvalidEventError(f"event {event.id!r}: field {name!r} is missing or empty")
        if "\x00" in value:
            raise InvalidEventError(f"event {event.id!r}: field {name!r} holds a NUL character")
    if len(event.type.encode()) > MAX_TYPE_BYTES:
        raise InvalidEventError(
            f"event {event.id!r}: type is {len(event.type.encode())} bytes, over "
            f"{MAX_TYPE_BYTES}: its AMQP routing key (p<partition>.<type>) could never be "
            "published (at most 255 bytes)"
        )
    if not isinstance(event.timestamp, datetime) or event.timestamp.tzinfo is None:
        raise InvalidEventError(f"event {event.id!r}: timestamp must be timezone-aware")
    return event


def _payload_json(event: DataEvent, max_payload_bytes: int) -> str:
    """The payload as compact ASCII JSON (key order is irrelevant: jsonb sorts keys)."""
    payload = event.payload if isinstance(event.payload, dict) else dict(event.payload)
    try:
        text = _JSON.encode(payload)
    except (TypeError, ValueError) as exc:
        raise InvalidEventError(
            f"event {event.id!r}: payload is not JSON-serialisable: {exc}"
        ) from exc
    if len(text) > max_payload_bytes:  # ASCII: one byte per character
        raise InvalidEventError(
            f"event {event.id!r}: payload is {len(text)} bytes, over max_payload_bytes "
            f"({max_payload_bytes})"
        )
    if "\\u0000" in text and _JSON_NUL.search(text):
        raise InvalidEventError(f"event {event.id!r}: payload holds a NUL character")
    return text


def _metadata_json(event: DataEvent) -> str:
    """The ``metadata`` column's JSON ('{}' for an event without metadata, schema version 1)."""
    if event.metadata is EMPTY and event.schema_version == 1:
        return "{}"
    try:
        return stored_json(event.metadata, event.schema_version)
    except InvalidEventError as exc:
        raise InvalidEventError(f"event {event.id!r}: {exc}") from None


def _first_of_each_id(batch: Sequence[DataEvent]) -> Sequence[DataEvent]:
    """The batch with an id repeated within it sent once (the repeats are duplicates)."""
    for event in batch:
        if not isinstance(event, DataEvent):
            raise InvalidEventError(f"expected a DataEvent, got {type(event).__name__}")
    if len({event.id for event in batch}) == len(batch):
        return batch
    first: dict[str, DataEvent] = {}
    for event in batch:
        first.setdefault(event.id, event)
    return list(first.values())


def _check_expected(batch: Sequence[DataEvent], expected_version: int | None) -> None:
    if expected_version is None:
        return
    if expected_version < 0:
        raise InvalidEventError("expected_version must be 0 or more")
    streams = {(getattr(e, "resource", None), getattr(e, "key", None)) for e in batch}
    if len(streams) > 1:
        raise InvalidEventError("expected_version needs all events of one (resource, key)")


def _result(batch: Sequence[DataEvent], rows: Sequence[Any]) -> AppendResult:
    # Columns by index (out_position, out_id, out_version, out_duplicate): a name lookup per
    # field costs more than the rest of this loop.
    stored = {row[1]: row for row in rows}
    events: list[DataEvent] = []
    duplicates: list[str] = []
    seen: set[str] = set()
    for event in batch:
        event_id = event.id
        if event_id in seen:
            duplicates.append(event_id)
            continue
        seen.add(event_id)
        position, _, version, duplicate = stored[event_id]
        if duplicate:
            duplicates.append(event_id)
        # pending (inside the caller's transaction, or numbered after commit): no position yet
        events.append(_stored(event, position if position and position > 0 else None, version))
    return AppendResult(events=tuple(events), duplicates=tuple(duplicates))


def _stored(event: DataEvent, position: int | None, version: int | None) -> DataEvent:
    """``event`` with its position and version: ``dataclasses.replace`` without running the
    validation again (it ran on the way in; replace costs 8x this copy on a batch)."""
    stored = object.__new__(type(event))
    vars(stored).update(vars(event), position=position, version=version)
    return stored


def stored_event(row: asyncpg.Record, upcasters: Upcasters) -> DataEvent:
    """A stored event, upcast to its type's latest schema version. Its fields passed
    ``_checked`` on the way in and the columns are NOT NULL, so only the payload's shape is
    checked again (a row written by hand could hold a JSON array): ``DataEvent``'s own
    validation would cost a replay measurably more (BENCHMARKS.md, issue 13)."""
    position, event_id, resource, key, version, type_, source, payload, timestamp, meta = row
    payload = loads(payload)
    if meta == "{}":  # the usual row: no metadata, schema version 1
        metadata, schema = EMPTY, 1
    else:
        metadata, schema = from_stored(loads(meta))
    if schema != upcasters.latest.get(type_, 1):
        payload = upcasters.upcast(type_, schema, payload, event_id)
        schema = upcasters.latest[type_]
    if type(payload) is not dict:
        return DataEvent(type=type_, resource=resource, key=key, payload=payload, source=source,
                         timestamp=timestamp, version=version, id=event_id, position=position,
                         metadata=metadata, schema_version=schema)  # fmt: skip
    return built_event(type=type_, resource=resource, key=key, payload=payload, source=source,
                       timestamp=timestamp, version=version, id=event_id, position=position,
                       metadata=metadata, schema_version=schema)  # fmt: skip


def _readable(rows: Sequence[asyncpg.Record], convert: Callable[[asyncpg.Record], _T]) -> list[_T]:
    """``convert`` of the leading rows, up to the first that raises :class:`UpcastError`: what
    a page can still give before an event the code cannot upcast (the error path only)."""
    done: list[_T] = []
    for row in rows:
        try:
            done.append(convert(row))
        except UpcastError:
            break
    return done


def _payload_batch(
    rows: Sequence[asyncpg.Record], field: str, upcasters: Upcasters
) -> PayloadBatch:
    """Columns of ``read_payloads`` rows (position, key, type, text, rest, schema version):
    each payload is the rest decoded, with the text put back as ``field`` when Postgres sent it
    apart, then upcast to its type's latest schema version."""
    payloads = loads_many([row[4] for row in rows])
    latest = upcasters.latest
    for i, row in enumerate(rows):
        text = row[3]
        if text is not None:
            payloads[i][field] = text
        schema = 1 if row[5] is None else int(row[5])
        if schema != latest.get(row[2], 1):
            payloads[i] = upcasters.upcast(row[2], schema, payloads[i], f"at position {row[0]}")
    return PayloadBatch(
        [row[0] for row in rows], [row[1] for row in rows], [row[2] for row in rows], payloads
    )


def _type_filter(types: Collection[str]) -> tuple[list[str]] | None:
    """The type filter's query argument; None when it can match nothing."""
    wanted = _checked_types(types)
    return (wanted,) if wanted else None


def _checked_types(types: Collection[str]) -> list[str]:
    """The event types of a filter as a list; :class:`InvalidEventError` for a bare string
    (it would filter by its characters) or an entry that is not a non-empty string."""
    if isinstance(types, str | bytes) or not isinstance(types, Collection):
        raise InvalidEventError(f"types must be a collection of event types, got {types!r:.80}")
    wanted = list(types)
    for t in wanted:
        if not isinstance(t, str) or not t or "\x00" in t:
            raise InvalidEventError(f"an event type must be a non-empty string, got {t!r:.80}")
    return wanted


class _translated:
    """Turn a driver error into ours: a version conflict, or a PersistenceError. A class, not a
    generator: it wraps every append, and a ``contextmanager`` costs a generator per call."""

    __slots__ = ("_action", "_expected", "_first")

    def __init__(
        self, action: str, first: DataEvent | None = None, expected: int | None = None
    ) -> None:
        self._action, self._first, self._expected = action, first, expected

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        if exc is None or not isinstance(exc, DB_ERRORS):
            return
        conflict = _conflict(exc, self._first, self._expected)
        if conflict is not None:
            raise conflict from exc
        raise PersistenceError(
            f"event log {self._action} failed: {type(exc).__name__}: {exc}"
        ) from exc


def _conflict(
    exc: BaseException, first: DataEvent | None, expected: int | None
) -> ConcurrencyError | None:
    if first is None:
        return None
    if getattr(exc, "sqlstate", None) == _CONFLICT:
        actual = int(getattr(exc, "detail", None) or 0)
        return ConcurrencyError(first.resource, first.key, expected, actual)
    if isinstance(exc, asyncpg.DeadlockDetectedError):
        # Two producer transactions appended to the same streams in opposite orders (in
        # separate appends: one batch inserts in a fixed order); Postgres aborted this one.
        return ConcurrencyError(first.resource, first.key, expected, None)
    if isinstance(exc, asyncpg.UniqueViolationError | asyncpg.SerializationError):
        # Only reachable when the caller's snapshot is older than a same-stream append that
        # committed (REPEATABLE READ or SERIALIZABLE): the version index caught it; retry the tx.
        return ConcurrencyError(first.resource, first.key, expected, None)
    return None
