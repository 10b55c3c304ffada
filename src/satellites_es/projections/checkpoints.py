"""Projection bookkeeping in Postgres: checkpoints per (projection, version) and the active version.

Shared sinks resume from their checkpoint; a local sink (FAISS) resumes from its own snapshot but
records its progress here too, so ``wait_for`` and the lag metric see every projection alike.
A checkpoint only moves forward (``GREATEST``): two projectors racing cannot move it back.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, NamedTuple

import asyncpg

from ..errors import ConfigurationError, PersistenceError, ProjectionError
from ..parking import ParkedEvents
from ..pgpool import Statements
from ..sql import queries
from ..store import DB_ERRORS

__all__ = ["ActiveVersion", "Checkpoints"]


class ActiveVersion(NamedTuple):
    """Which version of a projection readers see, and the one before it (for a rollback)."""

    active: int
    previous: int | None


class Checkpoints:
    """:class:`~satellites_es.protocols.CheckpointStore` in Postgres: checkpoints and active
    versions of the projections in one schema; the SQL is in ``sql/queries.sql``
    (``checkpoint_*``, ``version_*``)."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        try:
            self._sql = queries(schema)
        except ValueError as exc:
            raise ConfigurationError("postgres.schema", str(exc)) from exc
        self.pool = pool
        self._db = Statements(pool)  # one statement a call: no session state to reset
        self.schema_name = schema
        self._parked = ParkedEvents(pool, schema)

    @property
    def parked(self) -> ParkedEvents:
        """The projections' parked events, in the same schema."""
        return self._parked

    async def get(self, projection: str, version: int) -> int:
        value = await self._query("fetchval", "checkpoint_get", projection, version)
        return int(value) if isinstance(value, int) else 0

    async def save(self, projection: str, version: int, position: int) -> None:
        """Record progress, without waiting for the WAL flush (see ``checkpoint_save``): a
        pass saves one after every batch, and a lost one only means a little more replay."""
        await self._query("execute", "checkpoint_save", projection, version, position)

    async def versions(self, projection: str) -> list[int]:
        rows = await self._query("fetch", "checkpoint_versions", projection)
        return [int(r["version"]) for r in rows]

    async def forget(self, projection: str, version: int) -> None:
        await self._query("execute", "checkpoint_forget", projection, version)

    async def active(self, projection: str) -> ActiveVersion | None:
        row = await self._query("fetchrow", "version_active", projection)
        return None if row is None else ActiveVersion(int(row[0]), row[1])

    async def set_active(self, projection: str, version: int) -> int | None:
        """Make ``version`` active; returns the version it replaced (kept for rollback)."""
        previous = await self._query("fetchval", "version_set_active", projection, version)
        return previous if isinstance(previous, int) else None

    async def rollback(self, projection: str) -> tuple[int, int]:
        """Swap the active and the previous version; returns (new active, the one left)."""
        row = await self.active(projection)
        if row is None or row.previous is None:
            raise ProjectionError(f"projection {projection}: no previous version to roll back to")
        active, previous = row.active, int(row.previous)
        await self._query("execute", "version_swap", projection, previous, active)
        return previous, active

    async def wait_for(self, projection: str, position: int, timeout: float) -> None:
        """Return once the active version of ``projection`` has applied ``position``."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            row = await self.active(projection)
            if row is not None and await self.get(projection, row.active) >= position:
                return
            if time.monotonic() >= deadline:
                raise ProjectionError(
                    f"projection {projection} did not reach position {position} in {timeout:g}s"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def _query(self, method: str, name: str, *args: object) -> Any:
        """The named statement by one pool call, with every driver error translated here."""
        try:
            return await getattr(self._db, method)(self._sql[name], *args)
        except DB_ERRORS as exc:
            raise PersistenceError(f"checkpoints: {exc}") from exc
