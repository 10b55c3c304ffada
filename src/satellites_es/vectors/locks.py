"""An asyncio readers-writer lock, granted in arrival order.

Searches hold it shared (FAISS CPU indexes allow concurrent searches); adds, removes, trains and
rebuilds hold it exclusively (faiss #367, #1504).

Fairness matters both ways: a plain reader-preferring lock lets a stream of queries starve
upserts, and a writer-preferring one lets two busy writers starve every query (each re-queues
before the other releases). Here waiters queue FIFO: a waiter enters when everyone ahead of it
has, and all readers at the head of the queue enter together. So a writer waits only for the
readers already admitted, and readers wait for at most the writers that arrived before them.

Release is synchronous (no ``await``), so a cancelled task can never leave a count behind.
``try_read`` enters synchronously only when the lock is free and nobody is queued, so it never
jumps ahead of a waiting writer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["RWLock"]


class RWLock:
    def __init__(self) -> None:
        self._readers = 0
        self._writer = False
        self._queue: deque[tuple[bool, asyncio.Future[None]]] = deque()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[None]:
        await self._acquire(writer=False)
        try:
            yield
        finally:
            self._release(writer=False)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[None]:
        await self._acquire(writer=True)
        try:
            yield
        finally:
            self._release(writer=True)

    def try_read(self) -> bool:
        """Enter as a reader now if nobody waits and no writer holds the lock (no ``await``:
        a search run on the event loop takes it this way, then calls :meth:`release_read`)."""
        if self._queue or self._writer:
            return False
        self._readers += 1
        return True

    def release_read(self) -> None:
        self._release(writer=False)

    async def _acquire(self, *, writer: bool) -> None:
        if not self._queue and self._can_enter(writer):
            self._enter(writer)
            return
        entry = (writer, asyncio.get_running_loop().create_future())
        self._queue.append(entry)
        try:
            await entry[1]  # resolved by _grant, which has already entered us
        except asyncio.CancelledError:
            if entry[1].done() and not entry[1].cancelled():
                self._release(writer=writer)  # granted, then cancelled before we resumed
            else:
                self._queue.remove(entry)
                self._grant()  # a writer leaving the head may unblock readers behind it
            raise

    def _can_enter(self, writer: bool) -> bool:
        return not self._writer and (not writer or self._readers == 0)

    def _enter(self, writer: bool) -> None:
        if writer:
            self._writer = True
        else:
            self._readers += 1

    def _release(self, *, writer: bool) -> None:
        if writer:
            self._writer = False
        else:
            self._readers -= 1
        self._grant()

    def _grant(self) -> None:
        while self._queue:
            writer, future = self._queue[0]
            if future.done():  # cancelled while queued
                self._queue.popleft()
                continue
            if not self._can_enter(writer):
                return
            self._queue.popleft()
            self._enter(writer)
            future.set_result(None)
            if writer:
                return
