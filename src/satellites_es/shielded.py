"""Connects and stops that a cancelled caller does not cut in the middle.

A long-running part is stopped or restarted whenever its owner says so, and that may be while it
is opening a connection. Drivers cancelled in the middle of their handshake leave pieces behind
with nobody to tend them: asyncpg a protocol future failed with ``unexpected connection_lost()``
and never read, aio-pika's robust connection a set of pending tasks destroyed at exit ("Task was
destroyed but it is pending!", aiormq's reader tracebacks). Each is logged as an error that is
none of the caller's doing, and a half-open connection may stay on the server until it times
out.

:func:`connect_shielded` runs the connect as a task of its own and awaits it shielded: a
cancelled caller returns at once (a stop is not delayed by a slow server), and the connect
finishes behind it, the connection it makes is given to ``discard`` (closed), the error it meets
is read.

A stop is cleanup, and a cleanup cut halfway is the worst of both: a layer whose ``stop()`` was
cancelled (a timeout around it, Ctrl-C during an ``async with``'s exit, a task cancelled on
shutdown) stayed "stopping" with its relay running and every connection open, and the next
``stop()`` returned at once. :func:`finished` runs a stop to its end even when the caller is
cancelled meanwhile (each stop is bounded by its own timeouts), then lets the cancel through.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["connect_shielded", "finished"]

T = TypeVar("T")

#: Closes of connections made for callers that were cancelled meanwhile, kept until they end.
_closing: set[asyncio.Future[object]] = set()


async def connect_shielded(
    connect: Awaitable[T], discard: Callable[[T], Awaitable[object] | object]
) -> T:
    """``await connect``, unless the caller is cancelled first: then ``discard`` gets the
    connection once the connect has finished (see the module docstring)."""
    connecting = asyncio.ensure_future(connect)
    try:
        return await asyncio.shield(connecting)
    except asyncio.CancelledError:
        connecting.add_done_callback(functools.partial(_discard, discard))
        raise


def _discard(discard: Callable[[T], Awaitable[object] | object], done: asyncio.Future[T]) -> None:
    if done.cancelled() or done.exception() is not None:  # reading it is the point
        return
    closing = discard(done.result())
    if inspect.isawaitable(closing):
        task: asyncio.Future[object] = asyncio.ensure_future(closing)
        _closing.add(task)
        task.add_done_callback(_closed)


def _closed(task: asyncio.Future[object]) -> None:
    _closing.discard(task)
    if not task.cancelled():
        task.exception()  # a close that failed has nothing left to close


async def finished(cleanup: Awaitable[T]) -> T:
    """``await cleanup`` to its end, though the caller be cancelled meanwhile (once or more);
    then the first cancel is raised. ``cleanup`` may be a task other callers await too."""
    task = asyncio.ensure_future(cleanup)
    cancel: asyncio.CancelledError | None = None
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError as exc:
            if task.done():  # the cleanup itself was cancelled (its owner, the loop's end)
                raise
            cancel = cancel or exc
    if cancel is not None:
        raise cancel
    return result
