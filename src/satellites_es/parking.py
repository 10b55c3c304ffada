"""Parked events: what a projection or the relay set aside because it can never succeed as it is.

A *poison* event is one that fails for good (:func:`satellites_es.faults.is_transient` says
no): a handler that raises on it, a document the Elasticsearch mapping rejects, a vector of the
wrong dimension, a routing key the broker cannot take. Stopping on it would stop every event
behind it; retrying it forever would too. So the consumer parks it here (Postgres, table
``parked_events``, migration 0003) and goes on, as Marten's dead-letter events and Kurrent's
parked messages do. One row per (consumer, version, position): parking an event again counts an
attempt and keeps one row, so "parked exactly once" can be checked.

Recovery, after the cause is fixed (a handler deployed, a mapping changed):

* **retry**: :meth:`ParkedEvents.request_retry` marks rows ``retry``. The consumer that owns them
  (every projector of that projection and version, the leading relay) picks them up within its
  retry interval, applies the event again *at its original position* (so a newer event for the
  same key still wins: exactly-once effect holds), and deletes the row, or parks it again with
  the new error. Marking instead of applying from the caller is what lets a retry reach a FAISS
  projection, whose index lives in the serving process.
* **discard**: :meth:`ParkedEvents.discard` deletes rows; the events stay in the log.

``satellites-es parked list|retry|discard`` are the same operations from the command line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

from .errors import PersistenceError
from .pgpool import Statements
from .sql import queries
from .store import DB_ERRORS

__all__ = ["ConsumerKind", "ParkedEvent", "ParkedEvents", "Poison"]

ConsumerKind = Literal["projection", "relay"]


@dataclass(frozen=True)
class Poison:
    """One event a consumer sets aside, with why (``key``, ``event_id`` and ``event_type`` are
    read from the log where the consumer did not have them)."""

    position: int
    error_type: str
    error: str
    key: str | None = None
    event_id: str | None = None
    event_type: str | None = None

    @classmethod
    def of(cls, position: int, exc: BaseException, **event: str | None) -> Poison:
        return cls(position, type(exc).__name__, str(exc) or repr(exc), **event)


@dataclass(frozen=True)
class ParkedEvent:
    kind: ConsumerKind
    name: str
    version: int
    position: int
    key: str | None
    event_id: str | None
    event_type: str | None
    error_type: str
    error: str
    attempts: int
    status: Literal["parked", "retry"]
    first_seen: datetime
    last_seen: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in vars(self).items() if not isinstance(v, datetime)},
            "first_seen": self.first_seen.isoformat(),
            "last_seen": self.last_seen.isoformat(),
        }


class ParkedEvents:
    """The ``parked_events`` table of one schema."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._db = Statements(pool)  # one statement a call: no session state to reset
        self._sql = queries(schema)

    async def park(
        self, kind: ConsumerKind, name: str, version: int, poisons: Sequence[Poison]
    ) -> None:
        if not poisons:
            return
        columns = (
            [p.position for p in poisons], [p.key for p in poisons],
            [p.event_id for p in poisons], [p.event_type for p in poisons],
            [p.error_type for p in poisons], [p.error[:4000] for p in poisons],
        )  # fmt: skip
        await self._call("execute", "park", kind, name, version, *columns)

    async def entries(
        self, kind: ConsumerKind | None = None, name: str | None = None, *, limit: int = 100
    ) -> list[ParkedEvent]:
        rows = await self._call("fetch", "parked_list", kind, name, limit)
        return [ParkedEvent(**dict(row)) for row in rows]

    async def counts(self) -> dict[tuple[str, str], int]:
        """Parked rows per (kind, name), every version and status."""
        rows = await self._call("fetch", "parked_counts")
        return {(r["kind"], r["name"]): int(r["parked"]) for r in rows}

    async def request_retry(
        self, kind: ConsumerKind, name: str, positions: Sequence[int] | None = None
    ) -> list[int]:
        """Mark rows for retry (all of the consumer's, or these positions); returns them."""
        rows = await self._call("fetch", "parked_request_retry", kind, name, _array(positions))
        return sorted(int(r[0]) for r in rows)

    async def retries(
        self, kind: ConsumerKind, name: str, version: int, *, limit: int = 1000
    ) -> list[int]:
        """Positions of one consumer version marked for retry, oldest first."""
        rows = await self._call("fetch", "parked_retries", kind, name, version, limit)
        return [int(r[0]) for r in rows]

    async def resolve(
        self, kind: ConsumerKind, name: str, version: int, positions: Sequence[int]
    ) -> None:
        """Delete the rows of events that have now been applied."""
        if positions:
            await self._call("execute", "parked_resolve", kind, name, version, list(positions))

    async def discard(
        self, kind: ConsumerKind, name: str, positions: Sequence[int] | None = None
    ) -> list[int]:
        """Delete rows without applying them (all of the consumer's, or these positions)."""
        rows = await self._call("fetch", "parked_discard", kind, name, _array(positions))
        return sorted(int(r[0]) for r in rows)

    async def _call(self, method: str, query: str, *args: object) -> Any:
        try:
            return await getattr(self._db, method)(self._sql[query], *args)
        except DB_ERRORS as exc:
            raise PersistenceError(f"parked events: {type(exc).__name__}: {exc}") from exc


def _array(positions: Sequence[int] | None) -> list[int] | None:
    return None if positions is None else [int(p) for p in positions]
