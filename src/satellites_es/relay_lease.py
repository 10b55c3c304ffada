"""The relay's lease in Postgres: a session advisory lock and the cursor row, on one connection.

Only the process holding the session advisory lock ``(hashtext('satellites.relay'),
hashtext(schema || '.' || name))`` publishes. The lock lives on a connection of the lease's own
(not a pooled one), so it is released exactly when that session ends: a SIGKILLed process, a cut
network or a Postgres restart free it. The cursor is written on the same connection, so a relay
that lost its session cannot move it; a termination listener and a ``SELECT 1`` heartbeat (the
``heartbeat`` block) tell the relay that the session is gone. The SQL is in
``sql/queries.sql`` (``relay_*``).
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from .config import RelayConfig
from .events import RelayBus
from .parking import ParkedEvents
from .pgpool import session_connection
from .protocols import LeadershipLost
from .relay import Relay
from .sql import queries
from .store import DB_ERRORS, EventStore

__all__ = ["PostgresRelayLease", "postgres_relay"]


class PostgresRelayLease:
    """:class:`~satellites_es.protocols.RelayLease` on Postgres for the relay called ``name``.

    ``dsn``: where the lease's own session connects; without it, the pool's connect arguments.
    """

    def __init__(
        self, pool: asyncpg.Pool[asyncpg.Record], schema: str, name: str, *, dsn: str | None = None
    ) -> None:
        self._sql = queries(schema)
        self._pool = pool
        self._dsn = dsn
        self._name = name
        self._key = f"{schema}.{name}"
        self._conn: asyncpg.Connection[asyncpg.Record] | None = None
        self._conn_lock = asyncio.Lock()
        self._lost = asyncio.Event()
        self._held = False  # the lock is ours on the open session

    @property
    def holder(self) -> int | None:
        conn = self._conn
        return conn.get_server_pid() if conn is not None and not conn.is_closed() else None

    async def acquire(self) -> bool:
        if self._conn is None or self._conn.is_closed():
            await self._open()
        assert self._conn is not None
        async with self._conn_lock:
            self._held = bool(await self._conn.fetchval(self._sql["relay_lock"], self._key))
        return self._held

    async def load_cursor(self) -> int:
        conn = self._lease()
        async with self._conn_lock:
            await conn.execute(self._sql["relay_cursor_init"], self._name)
            value = await conn.fetchval(self._sql["relay_cursor_load"], self._name)
        return int(value or 0)

    async def advance(self, position: int) -> None:
        conn = self._lease()
        async with self._conn_lock:
            await conn.execute(self._sql["relay_cursor_advance"], self._name, position)

    async def read_cursor(self) -> int:
        value = await self._pool.fetchval(self._sql["relay_cursor_load"], self._name)
        return int(value or 0)

    def lost(self) -> bool:
        return self._lost.is_set()

    async def wait_lost(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._lost.wait(), timeout)
        return self._lost.is_set() or not await self._heartbeat(timeout=2 * timeout + 1)

    async def release(self) -> None:
        conn, self._conn, self._held = self._conn, None, False
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 5.0)
            except DB_ERRORS:
                conn.terminate()

    async def _open(self) -> None:
        await self.release()
        conn = await session_connection(self._pool, self._dsn)
        # Cursor writes need no WAL flush: after a Postgres crash the cursor may come back a
        # little older, and the events after it are published again (duplicates, no loss).
        # This keeps the commit's fsync out of the publishing path.
        try:
            await conn.execute(self._sql["relay_session"])
        except BaseException:
            conn.terminate()
            raise
        self._lost = asyncio.Event()
        lost = self._lost
        conn.add_termination_listener(lambda _conn: lost.set())
        self._conn = conn

    async def _heartbeat(self, timeout: float) -> bool:
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        try:
            async with asyncio.timeout(timeout), self._conn_lock:
                await conn.fetchval(self._sql["heartbeat"])
        except DB_ERRORS:
            return False
        return True

    def _lease(self) -> asyncpg.Connection[asyncpg.Record]:
        if not self._held or self._conn is None or self._conn.is_closed() or self._lost.is_set():
            raise LeadershipLost(self._name)
        return self._conn


def postgres_relay(
    log: EventStore,
    bus: RelayBus,
    *,
    pool: asyncpg.Pool[asyncpg.Record],
    schema: str,
    config: RelayConfig,
    name: str = "default",
    dsn: str | None = None,
) -> Relay:
    """A :class:`~satellites_es.relay.Relay` on Postgres: its lease here, its parked events in
    ``parked_events`` of ``schema``."""
    lease = PostgresRelayLease(pool, schema, name, dsn=dsn)
    parking = ParkedEvents(pool, schema)
    return Relay(log, bus, lease=lease, parking=parking, config=config, name=name)
