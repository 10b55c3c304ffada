"""The layer's Postgres connections: its pools, which released connections need asyncpg's
reset, and the session connections of its long-running parts.

asyncpg resets every connection a pool gets back: after each ``pool.fetch`` it sends one more
query (``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;``) and waits for it,
so every call costs two round trips, and the caller waits for both. That reset is there for
connections an application used as it liked: it may have run ``SET``, ``LISTEN``, taken a
session-level advisory lock or kept a cursor open, and the next user must not inherit it.

The layer's own statements leave nothing of the kind. Each is one statement in a transaction of
its own, and what it sets, locks or notifies lasts only for that transaction (``set_config(...,
true)``, advisory *transaction* locks, ``pg_notify``). So a connection released by one of them is
exactly as clean as when it was acquired, and the reset is skipped: those calls run under
:func:`statement_only` (:class:`Statements` does it for a pool), and the pool's reset function,
:func:`reset_connection`, sees it. Everything else, a connection the application acquired from
the same pool (it is the layer's native Postgres client too) included, is reset exactly as
asyncpg does by default. Before any reset function runs, asyncpg itself rolls back a transaction
left open and forgets the connection's Python-side listeners.

The flag is a context variable, set only around one awaited call: a task created inside such a
call would inherit it, and none is. A pool made elsewhere (an application's own, given to
:class:`~satellites_es.store.EventStore`) keeps asyncpg's default and ignores the flag.

A long-running part that needs a session of its own (the log's NOTIFY listener, the relay's
lease, the snapshotter's lock) opens it with :func:`session_connection`: outside the pool, so
nothing resets it, and shielded from its caller's cancellation (see there).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import asyncpg

from .shielded import connect_shielded

__all__ = [
    "Statements",
    "create_pool",
    "reset_connection",
    "session_connection",
    "statement_only",
]

_STATEMENT_ONLY: ContextVar[bool] = ContextVar("satellites_statement_only", default=False)


@contextlib.contextmanager
def statement_only() -> Iterator[None]:
    """Around one pool call whose statement leaves no session state: its connection goes back
    to the pool without the reset query (when the pool's reset is :func:`reset_connection`)."""
    token = _STATEMENT_ONLY.set(True)
    try:
        yield
    finally:
        _STATEMENT_ONLY.reset(token)


async def reset_connection(conn: asyncpg.Connection[Any]) -> None:
    """The pool's ``reset``: asyncpg's own reset query, unless the connection is released by a
    call under :func:`statement_only`."""
    if _STATEMENT_ONLY.get():
        return
    query = conn.get_reset_query()
    if query:
        await conn.execute(query)


async def create_pool(dsn: str, **kwargs: Any) -> asyncpg.Pool[asyncpg.Record]:
    """``asyncpg.create_pool`` with :func:`reset_connection` as its reset. A caller cancelled
    while the pool opens its first connections (a start given up) returns at once; the pool
    finishes opening behind it and is terminated (:mod:`satellites_es.shielded`)."""
    pool: asyncpg.Pool[asyncpg.Record] = await connect_shielded(
        asyncpg.create_pool(dsn, reset=reset_connection, **kwargs), lambda p: p.terminate()
    )
    return pool


class Statements:
    """A pool's ``fetch``, ``fetchrow``, ``fetchval`` and ``execute`` for the layer's own
    statements, each under :func:`statement_only`: how the log, the checkpoints and the parked
    events call the pool. Only for statements that leave no session state behind."""

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        self.pool = pool

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        with statement_only():
            return await self.pool.fetch(query, *args)

    async def fetchrow(self, query: str, *args: object) -> asyncpg.Record | None:
        with statement_only():
            return await self.pool.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: object) -> Any:
        with statement_only():
            return await self.pool.fetchval(query, *args)

    async def execute(self, query: str, *args: object) -> str:
        with statement_only():
            return await self.pool.execute(query, *args)


async def session_connection(
    pool: asyncpg.Pool[asyncpg.Record] | None = None, dsn: str | None = None, **kwargs: Any
) -> asyncpg.Connection[asyncpg.Record]:
    """A connection of its own: to ``dsn`` (with asyncpg's ``connect`` keywords), or else with
    ``pool``'s connect arguments (same server and options, a session the pool never resets).
    Every connection the layer opens outside a pool is made here. A caller cancelled while it
    connects (a start given up, a health check's timeout, a part stopped) returns at once; the
    connect finishes behind it and its connection is terminated (:mod:`satellites_es.shielded`:
    asyncpg cut mid-handshake logs an unretrieved ``unexpected connection_lost()``)."""
    if dsn is not None:
        connect = asyncpg.connect(dsn, **kwargs)
    elif pool is not None:
        args = getattr(pool, "_connect_args", ())
        connect = asyncpg.connect(*args, **{**getattr(pool, "_connect_kwargs", {}), **kwargs})
    else:
        raise TypeError("session_connection needs a pool or a dsn")
    connection: asyncpg.Connection[asyncpg.Record] = await connect_shielded(
        connect, lambda conn: conn.terminate()
    )
    return connection
