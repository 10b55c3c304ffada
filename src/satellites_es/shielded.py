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

One cancel it must not hold back: the stop's own. A handler may stop the layer from inside
one of the layer's tasks (a subscriber's worker, the relay publishing to the in-process bus, a
catch-up); that stop waits for the task and then cancels it, and a task that held that cancel
back to wait for the stop would wait for itself. So the stops cancel their parts' tasks with
:func:`stop_task`, whose cancel :func:`finished` lets through at once. A cancel that reaches
such a task unmarked (a part that cuts the tasks it made with a plain cancel of its own, as the
relay does its in-process deliveries) is held back for ``limit`` seconds at most.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["STOPPING", "connect_shielded", "finished", "stop_task"]

T = TypeVar("T")

#: The message of a cancel sent by a stop to the tasks of its own parts (see :func:`stop_task`).
STOPPING = "satellites-es: stopped by its owner's stop()"

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
    _read(task)  # a close that failed has nothing left to close


def stop_task(task: asyncio.Future[Any]) -> None:
    """Cancel ``task``, one of a part's own, as its stop does: a :func:`finished` it is waiting
    in lets this cancel through at once (the stop may be the very cleanup it waits for)."""
    task.cancel(STOPPING)


async def finished(cleanup: Awaitable[T], *, limit: float | None = None) -> T:
    """``await cleanup`` to its end, though the caller be cancelled meanwhile (once or more);
    then the first cancel is raised. ``cleanup`` may be a task other callers await too.

    A cancel from :func:`stop_task` goes through at once. ``limit``: once a cancel came, wait
    at most this many seconds more, then let it through: the one guard against a cleanup that
    waits for this caller by a way no :func:`stop_task` marks (a task the stopped part made, cut
    by its own code). Either way the cleanup goes on behind the caller and its error is read."""
    task = asyncio.ensure_future(cleanup)
    loop = asyncio.get_running_loop()
    cancel: asyncio.CancelledError | None = None
    deadline: float | None = None
    while True:
        try:
            if cancel is None:
                return await asyncio.shield(task)
            if deadline is None:
                await asyncio.shield(task)
            else:
                await asyncio.wait({task}, timeout=max(0.0, deadline - loop.time()))
            break
        except asyncio.CancelledError as exc:
            if task.done():
                raise  # the cleanup was cancelled itself (its owner, the loop's end)
            if exc.args[:1] == (STOPPING,):
                task.add_done_callback(_read)
                raise  # the cleanup is stopping this very task: waiting would never end
            if cancel is None:
                cancel = exc
                deadline = None if limit is None else loop.time() + limit
    task.add_done_callback(_read)  # past the limit it goes on; a failure of it is read
    raise cancel


def _read(task: asyncio.Future[Any]) -> None:
    """Read a finished task's error, so that asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()
