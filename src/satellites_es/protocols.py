"""The seams between the log and its consumers, as protocols: what the relay, the projector,
rebuilds and the service need from storage, and nothing about how it is stored.

Each has a Postgres implementation and an in-memory twin (:mod:`satellites_es.memory`) that
passes the same contract suite (``tests/contract``):

* :class:`EventLog`: the log (:class:`~satellites_es.store.EventStore`,
  :class:`~satellites_es.memory.InMemoryEventLog`).
* :class:`CheckpointStore`: projection checkpoints and active versions
  (:class:`~satellites_es.projections.checkpoints.Checkpoints`,
  :class:`~satellites_es.memory.InMemoryCheckpoints`); it also holds the projections'
  :class:`Parking`.
* :class:`Parking`: parked (poison) events (:class:`~satellites_es.parking.ParkedEvents`,
  :class:`~satellites_es.memory.InMemoryParking`).
* :class:`RelayLease`: the relay's leadership and cursor
  (:class:`~satellites_es.relay_lease.PostgresRelayLease`,
  :class:`~satellites_es.memory.InMemoryRelayLease`).

The bus is :class:`~satellites_es.events.EventBus` (with its :class:`~satellites_es.events.Publisher`)
and a projection's target is :class:`~satellites_es.projections.sinks.Sink`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, TypedDict, Unpack

if TYPE_CHECKING:
    from .events import DataEvent
    from .parking import ConsumerKind, Poison
    from .projections.checkpoints import ActiveVersion
    from .store import AppendResult, PayloadBatch

__all__ = [
    "CheckpointStore",
    "EventLog",
    "LeadershipLost",
    "PageOptions",
    "Parking",
    "ReadOptions",
    "RelayLease",
    "Wakeups",
]


class Wakeups(Protocol):
    """Wake-ups on appends to a log (a NOTIFY listener, or the in-memory log's condition)."""

    async def wait(self, timeout: float) -> bool:
        """True if an append committed since the last call (or one may have been missed),
        False after ``timeout`` seconds without one."""
        ...


class PageOptions(TypedDict, total=False):
    """How a read of the log is paged (:meth:`EventStore.read
    <satellites_es.store.EventStore.read>` says what each means)."""

    batch_size: int | None  # events a batch (None: the log's default)
    until: int | None  # the last position read (None: the head)
    read_ahead: bool  # fetch the next batch while the caller works on this one


class ReadOptions(PageOptions, total=False):
    """:class:`PageOptions` and what only :meth:`EventLog.read` takes."""

    types: Collection[str] | None  # only these event types
    sequence: bool  # without ``until``: sequence the log first


class EventLog(Protocol):
    """The event log as its readers and producers use it (see :mod:`satellites_es.store`)."""

    async def append(
        self, events: DataEvent | Sequence[DataEvent], *, expected_version: int | None = None
    ) -> AppendResult:
        """Store ``events`` in order: dense positions, per-stream versions, once per id;
        :class:`~satellites_es.errors.ConcurrencyError` if ``expected_version`` is not met."""
        ...

    def read(
        self, after: int = 0, **options: Unpack[ReadOptions]
    ) -> AsyncGenerator[list[DataEvent], None]:
        """Events with ``after < position <= until``, in position order, a batch at a time."""
        ...

    def read_payloads(
        self, after: int = 0, *, types: Collection[str], text_field: str,
        **options: Unpack[PageOptions],
    ) -> AsyncGenerator[PayloadBatch, None]:  # fmt: skip
        """The same range as :meth:`read`, as columns (position, key, type, payload)."""
        ...

    async def read_at(self, positions: Collection[int]) -> list[DataEvent]:
        """The events at ``positions`` (those that exist), in position order."""
        ...

    async def sequence(self) -> int:
        """Make every committed append readable; returns the head."""
        ...

    async def head(self) -> int:
        """The highest readable position (0 for an empty log)."""
        ...

    async def oldest_after(self, position: int) -> datetime | None:
        """When the first event after ``position`` was recorded (None: there is none)."""
        ...

    def listener(self) -> AbstractAsyncContextManager[Wakeups]:
        """Wake-ups on appends, for a follower that would otherwise poll."""
        ...


class Parking(Protocol):
    """Parked events, as the consumers that park and retry them use them
    (see :mod:`satellites_es.parking`)."""

    async def park(
        self, kind: ConsumerKind, name: str, version: int, poisons: Sequence[Poison]
    ) -> None:
        """Set ``poisons`` aside; parking a position again counts an attempt and keeps one row
        (status back to ``parked``)."""
        ...

    async def request_retry(
        self, kind: ConsumerKind, name: str, positions: Sequence[int] | None = None
    ) -> list[int]:
        """Mark rows for retry (all of the consumer's, or these positions); returns them."""
        ...

    async def retries(
        self, kind: ConsumerKind, name: str, version: int, *, limit: int = 1000
    ) -> list[int]:
        """Positions of one consumer version marked for retry, oldest first."""
        ...

    async def resolve(
        self, kind: ConsumerKind, name: str, version: int, positions: Sequence[int]
    ) -> None:
        """Delete the rows of events that have now been applied."""
        ...

    async def counts(self) -> dict[tuple[str, str], int]:
        """Parked rows per (kind, name), every version and status."""
        ...


class CheckpointStore(Protocol):
    """Projection bookkeeping: a checkpoint per (projection, version), the active version, and
    the projections' parked events (see :mod:`satellites_es.projections.checkpoints`)."""

    @property
    def parked(self) -> Parking:
        """Where the projections' poison events are parked (beside the checkpoints)."""
        ...

    async def get(self, projection: str, version: int) -> int:
        """The version's checkpoint (0 when it has none)."""
        ...

    async def save(self, projection: str, version: int, position: int) -> None:
        """Record progress; a checkpoint only moves forward."""
        ...

    async def versions(self, projection: str) -> list[int]:
        """The versions with a checkpoint, ascending."""
        ...

    async def forget(self, projection: str, version: int) -> None:
        """Remove a version's checkpoint."""
        ...

    async def active(self, projection: str) -> ActiveVersion | None:
        """The active version and the one before it; None before the first activation."""
        ...

    async def set_active(self, projection: str, version: int) -> int | None:
        """Make ``version`` active; returns the version it replaced (kept for rollback)."""
        ...

    async def rollback(self, projection: str) -> tuple[int, int]:
        """Swap the active and the previous version; returns (new active, the one left)."""
        ...

    async def wait_for(self, projection: str, position: int, timeout: float) -> None:
        """Return once the active version has applied ``position``."""
        ...


class LeadershipLost(Exception):
    """The relay's lease ended (its session died, or another took it): stop publishing now."""


class RelayLease(Protocol):
    """The relay's leadership and cursor for one relay name: one holder at a time, and only the
    holder moves the cursor (see :mod:`satellites_es.relay`, "Leader election and fencing")."""

    @property
    def holder(self) -> int | None:
        """Who holds (or tries for) the lease, for logs: a Postgres backend pid."""
        ...

    async def acquire(self) -> bool:
        """Try to take the lease (opening what it needs); True if it is ours."""
        ...

    async def load_cursor(self) -> int:
        """The cursor, created at 0 if new; :class:`LeadershipLost` without the lease."""
        ...

    async def advance(self, position: int) -> None:
        """Move the cursor forward to ``position`` (never back), only while the lease is held:
        :class:`LeadershipLost` otherwise."""
        ...

    async def read_cursor(self) -> int:
        """The cursor as stored, without the lease (for metrics; 0 if none)."""
        ...

    def lost(self) -> bool:
        """Whether the lease is known to be gone."""
        ...

    async def wait_lost(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the lease to be known gone; then check it is still
        held (a heartbeat). True when it is gone."""
        ...

    async def release(self) -> None:
        """Give the lease up (close its session); a later :meth:`acquire` may take it again."""
        ...
