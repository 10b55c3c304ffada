"""In-memory twins of the seams (:mod:`satellites_es.protocols`, the sink protocol): the log,
checkpoints, parked events, the relay's lease and a sink, kept in dicts and lists.

Each passes the same contract suite as its real implementation (``tests/contract``), so the
relay, the projector, rebuilds and the follow loop can be driven with them in unit tests, in
milliseconds and without a service (as procrastinate's ``InMemoryConnector`` drives its worker's
tests). They hold one process's state only: no durability, no other process sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Unpack

from .errors import ConcurrencyError, InvalidEventError, ProjectionError
from .events import DataEvent
from .parking import ConsumerKind, Poison
from .projections.checkpoints import ActiveVersion
from .projections.model import Change, Projection, Upsert
from .projections.sinks import Fix, Held, SinkDump, chunked
from .protocols import LeadershipLost, PageOptions, ReadOptions
from .store import AppendResult, PayloadBatch, encode_batch, woken

__all__ = [
    "InMemoryCheckpoints",
    "InMemoryEventLog",
    "InMemoryParking",
    "InMemoryRelayLease",
    "InMemorySink",
    "LeaseBoard",
]


class _Wakeups:
    """The in-memory log's listener: set on every append after it was opened."""

    def __init__(self) -> None:
        self.woken = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        return await woken(self.woken, timeout)


class InMemoryEventLog:
    """:class:`~satellites_es.protocols.EventLog` in a list: every append is committed and
    numbered at once (positions 1, 2, ...), one version per ``(resource, key)`` stream, one
    event per id. Events are validated as :class:`~satellites_es.store.EventStore` validates
    them (``max_payload_bytes`` included)."""

    def __init__(self, *, max_payload_bytes: int = 1_048_576, read_batch_size: int = 1000) -> None:
        self.events: list[DataEvent] = []
        self._recorded: list[datetime] = []
        self._by_id: dict[str, DataEvent] = {}
        self._versions: dict[tuple[str, str], int] = {}
        self._listeners: set[_Wakeups] = set()
        self._max_payload_bytes = max_payload_bytes
        self._read_batch_size = read_batch_size

    async def append(
        self, events: DataEvent | Sequence[DataEvent], *, expected_version: int | None = None
    ) -> AppendResult:
        batch = [events] if isinstance(events, DataEvent) else list(events)
        if not batch:
            return AppendResult(events=())
        encode_batch(batch, self._max_payload_bytes)  # the same validation as the real log
        if expected_version is not None:
            _check_expected(batch, expected_version, self._versions)
        stored: list[DataEvent] = []
        duplicates: list[str] = []
        for event in batch:
            known = self._by_id.get(event.id)
            if known is not None:
                duplicates.append(event.id)
                if all(e.id != event.id for e in stored):
                    stored.append(known)
                continue
            stream = (event.resource, event.key)
            version = self._versions.get(stream, 0) + 1
            self._versions[stream] = version
            kept = _with(event, position=len(self.events) + 1, version=version)
            self.events.append(kept)
            self._recorded.append(datetime.now(UTC))
            self._by_id[kept.id] = kept
            stored.append(kept)
        for listener in self._listeners:
            listener.woken.set()
        return AppendResult(events=tuple(stored), duplicates=tuple(duplicates))

    async def read(
        self, after: int = 0, **options: Unpack[ReadOptions]
    ) -> AsyncGenerator[list[DataEvent], None]:
        """Every append is numbered at once: nothing to sequence, nothing to read ahead."""
        size = _size(options.get("batch_size") or self._read_batch_size)
        types = options.get("types")
        wanted = None if types is None else _types(types)
        until = options.get("until")
        upper = len(self.events) if until is None else until
        batch: list[DataEvent] = []
        position = after
        while position < min(upper, len(self.events)):
            event = self.events[position]
            position += 1
            if wanted is not None and event.type not in wanted:
                continue
            batch.append(event)
            if len(batch) == size:
                yield batch
                batch = []
                upper = len(self.events) if until is None else until
        if batch:
            yield batch

    async def read_payloads(
        self, after: int = 0, *, types: Collection[str], text_field: str,
        **options: Unpack[PageOptions],
    ) -> AsyncGenerator[PayloadBatch, None]:  # fmt: skip
        """The payloads whole: a column replay of the in-memory log decodes nothing."""
        if not isinstance(text_field, str) or not text_field:
            raise InvalidEventError(
                f"text_field must be a non-empty string, got {text_field!r:.80}"
            )
        pages = self.read(after, batch_size=options.get("batch_size"), until=options.get("until"),
                          types=types)  # fmt: skip
        async for batch in pages:
            yield PayloadBatch([e.position or 0 for e in batch], [e.key for e in batch],
                               [e.type for e in batch], [dict(e.payload) for e in batch])  # fmt: skip

    async def read_at(self, positions: Collection[int]) -> list[DataEvent]:
        return [self.events[p - 1] for p in sorted(set(positions)) if 0 < p <= len(self.events)]

    async def read_stream(
        self, resource: str, key: str, *, after_version: int = 0
    ) -> list[DataEvent]:
        return [e for e in self.events if (e.resource, e.key) == (resource, key)
                and (e.version or 0) > after_version]  # fmt: skip

    async def sequence(self) -> int:
        return len(self.events)

    async def head(self) -> int:
        return len(self.events)

    async def oldest_after(self, position: int) -> datetime | None:
        return self._recorded[position] if 0 <= position < len(self._recorded) else None

    @contextlib.asynccontextmanager
    async def listener(self) -> AsyncIterator[_Wakeups]:
        wakeups = _Wakeups()
        self._listeners.add(wakeups)
        try:
            yield wakeups
        finally:
            self._listeners.discard(wakeups)


def _check_expected(
    batch: Sequence[DataEvent], expected: int, versions: Mapping[tuple[str, str], int]
) -> None:
    if expected < 0:
        raise InvalidEventError("expected_version must be 0 or more")
    streams = {(e.resource, e.key) for e in batch}
    if len(streams) > 1:
        raise InvalidEventError("expected_version needs all events of one (resource, key)")
    (stream,) = streams
    actual = versions.get(stream, 0)
    if actual != expected:
        raise ConcurrencyError(stream[0], stream[1], expected, actual)


def _with(event: DataEvent, *, position: int, version: int) -> DataEvent:
    stored = object.__new__(type(event))
    vars(stored).update(vars(event), position=position, version=version)
    return stored


def _size(size: int) -> int:
    if size < 1:
        raise ValueError("batch_size must be at least 1")
    return size


def _types(types: Collection[str]) -> set[str]:
    if isinstance(types, str | bytes):
        raise InvalidEventError(f"types must be a collection of event types, got {types!r:.80}")
    return set(types)


class InMemoryParking:
    """:class:`~satellites_es.protocols.Parking` in a dict keyed by (kind, name, version,
    position)."""

    def __init__(self) -> None:
        #: (kind, name, version, position) -> {"poison", "attempts", "status"}
        self.rows: dict[tuple[str, str, int, int], dict[str, Any]] = {}

    async def park(
        self, kind: ConsumerKind, name: str, version: int, poisons: Sequence[Poison]
    ) -> None:
        for p in poisons:
            row = self.rows.get((kind, name, version, p.position))
            attempts = 1 if row is None else row["attempts"] + 1
            self.rows[(kind, name, version, p.position)] = {
                "poison": p, "attempts": attempts, "status": "parked"}  # fmt: skip

    async def request_retry(
        self, kind: ConsumerKind, name: str, positions: Sequence[int] | None = None
    ) -> list[int]:
        marked = []
        for (k, n, _, position), row in self.rows.items():
            if (k, n) == (kind, name) and (positions is None or position in positions):
                row["status"] = "retry"
                marked.append(position)
        return sorted(marked)

    async def retries(
        self, kind: ConsumerKind, name: str, version: int, *, limit: int = 1000
    ) -> list[int]:
        return sorted(p for (k, n, v, p), row in self.rows.items()
                      if (k, n, v) == (kind, name, version) and row["status"] == "retry")[:limit]  # fmt: skip

    async def resolve(
        self, kind: ConsumerKind, name: str, version: int, positions: Sequence[int]
    ) -> None:
        for position in positions:
            self.rows.pop((kind, name, version, position), None)

    async def counts(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for kind, name, _, _ in self.rows:
            out[(kind, name)] = out.get((kind, name), 0) + 1
        return out


class InMemoryCheckpoints:
    """:class:`~satellites_es.protocols.CheckpointStore` in dicts, with its own
    :class:`InMemoryParking`."""

    def __init__(self, parked: InMemoryParking | None = None) -> None:
        self.positions: dict[tuple[str, int], int] = {}
        self.versions_active: dict[str, ActiveVersion] = {}
        self._parked = parked or InMemoryParking()

    @property
    def parked(self) -> InMemoryParking:
        return self._parked

    async def get(self, projection: str, version: int) -> int:
        return self.positions.get((projection, version), 0)

    async def save(self, projection: str, version: int, position: int) -> None:
        key = (projection, version)
        self.positions[key] = max(self.positions.get(key, position), position)

    async def versions(self, projection: str) -> list[int]:
        return sorted(v for p, v in self.positions if p == projection)

    async def forget(self, projection: str, version: int) -> None:
        self.positions.pop((projection, version), None)

    async def active(self, projection: str) -> ActiveVersion | None:
        return self.versions_active.get(projection)

    async def set_active(self, projection: str, version: int) -> int | None:
        row = self.versions_active.get(projection)
        if row is None:
            previous = None
        else:
            previous = row.previous if row.active == version else row.active
        self.versions_active[projection] = ActiveVersion(version, previous)
        return previous

    async def rollback(self, projection: str) -> tuple[int, int]:
        row = self.versions_active.get(projection)
        if row is None or row.previous is None:
            raise ProjectionError(f"projection {projection}: no previous version to roll back to")
        self.versions_active[projection] = ActiveVersion(row.previous, row.active)
        return row.previous, row.active

    async def wait_for(self, projection: str, position: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            row = self.versions_active.get(projection)
            if row is not None and self.positions.get((projection, row.active), 0) >= position:
                return
            if time.monotonic() >= deadline:
                raise ProjectionError(
                    f"projection {projection} did not reach position {position} in {timeout:g}s"
                )
            await asyncio.sleep(0.01)


class LeaseBoard:
    """What the relays of one process share in memory: who holds each relay name, and the
    cursors (the in-memory counterpart of the lock and ``relay_cursors``)."""

    def __init__(self) -> None:
        self.holders: dict[str, InMemoryRelayLease] = {}
        self.cursors: dict[str, int] = {}


class InMemoryRelayLease:
    """:class:`~satellites_es.protocols.RelayLease` on a :class:`LeaseBoard`. :meth:`revoke`
    ends the lease as a dead Postgres session would (the holder is fenced, another may take
    it)."""

    _ids = 0

    def __init__(self, board: LeaseBoard, name: str = "default") -> None:
        self._board = board
        self._name = name
        InMemoryRelayLease._ids += 1
        self._id = InMemoryRelayLease._ids
        self._lost = asyncio.Event()

    @property
    def holder(self) -> int | None:
        return self._id

    def _held(self) -> bool:
        return self._board.holders.get(self._name) is self and not self._lost.is_set()

    async def acquire(self) -> bool:
        if self._board.holders.get(self._name) is None:
            self._board.holders[self._name] = self
            self._lost = asyncio.Event()
        return self._held()

    async def load_cursor(self) -> int:
        if not self._held():
            raise LeadershipLost(self._name)
        return self._board.cursors.setdefault(self._name, 0)

    async def advance(self, position: int) -> None:
        if not self._held():
            raise LeadershipLost(self._name)
        self._board.cursors[self._name] = max(self._board.cursors.get(self._name, 0), position)

    async def read_cursor(self) -> int:
        return self._board.cursors.get(self._name, 0)

    def lost(self) -> bool:
        return self._lost.is_set()

    async def wait_lost(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._lost.wait(), timeout)
        return not self._held()

    async def release(self) -> None:
        if self._board.holders.get(self._name) is self:
            del self._board.holders[self._name]

    def revoke(self) -> None:
        """The lease's session died: fenced at once, and free for another."""
        self._lost.set()
        if self._board.holders.get(self._name) is self:
            del self._board.holders[self._name]


class InMemorySink:
    """A :class:`~satellites_es.projections.sinks.Sink` in dicts: per version, each key's last
    position and document (None: a tombstone); ``apply`` writes only a newer position."""

    kind = "memory"

    def __init__(self) -> None:
        #: target ("items_v2") -> key -> (position, document or None)
        self.targets: dict[str, dict[str, tuple[int, Mapping[str, Any] | None]]] = {}
        self.pointers: dict[str, int] = {}

    async def prepare(self, projection: Projection, version: int) -> None:
        self.targets.setdefault(projection.target(version), {})

    async def apply(self, projection: Projection, version: int, changes: Sequence[Change]) -> int:
        held = self.targets.setdefault(projection.target(version), {})
        applied = 0
        for change in changes:
            known = held.get(change.key)
            if known is None or change.position > known[0]:
                document = dict(change.document) if isinstance(change, Upsert) else None
                held[change.key] = (change.position, document)
                applied += 1
        return applied

    async def activate(self, projection: Projection, version: int) -> None:
        self.pointers[projection.name] = version

    async def active_version(self, projection: Projection) -> int | None:
        return self.pointers.get(projection.name)

    async def drop(self, projection: Projection, version: int) -> None:
        self.targets.pop(projection.target(version), None)

    async def dump(self, projection: Projection, version: int) -> SinkDump:
        held = self.targets.get(projection.target(version), {})
        return {key: document for key, (_, document) in held.items()}

    async def local_checkpoint(self, projection: Projection, version: int) -> int | None:
        return None

    async def flush(self, projection: Projection, version: int) -> None:
        return None  # nothing outlives the process

    async def scan_keys(
        self, projection: Projection, version: int, chunk: int
    ) -> AsyncIterator[list[str]]:
        keys = list(self.targets.get(projection.target(version), {}))

        async def each() -> AsyncIterator[str]:
            for key in keys:
                yield key

        async for batch in chunked(each(), chunk):
            yield batch

    async def read_keys(
        self, projection: Projection, version: int, keys: Sequence[str]
    ) -> dict[str, Held]:
        held = self.targets.get(projection.target(version), {})
        return {k: Held(*held[k]) for k in keys if k in held}

    def same(
        self, projection: Projection, expected: Mapping[str, Any] | None,
        held: Mapping[str, Any] | None,
    ) -> bool:  # fmt: skip
        return (None if expected is None else dict(expected)) == (
            None if held is None else dict(held))  # fmt: skip

    async def repair(self, projection: Projection, version: int, fixes: Sequence[Fix]) -> int:
        held = self.targets.setdefault(projection.target(version), {})
        written = 0
        for fix in fixes:
            now = held.get(fix.key)
            seen = None if fix.seen is None else fix.seen.position
            if (None if now is None else now[0]) != seen:
                continue  # changed since the audit read it: a newer write wins
            if fix.want is None:
                held.pop(fix.key, None)
            else:
                document = dict(fix.want.document) if isinstance(fix.want, Upsert) else None
                held[fix.key] = (fix.want.position, document)
            written += 1
        return written
