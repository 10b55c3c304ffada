"""An asyncio readers-writer lock, writer-preferring.

Searches hold it shared (FAISS CPU indexes allow concurrent searches); adds, removes, trains and
rebuilds hold it exclusively (faiss #367, #1504). A waiting writer blocks new readers, so a
stream of queries cannot starve upserts.

Release is synchronous (no ``await``), so a cancelled task can never leave a count behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["RWLock"]


class RWLock:
    def __init__(self) -> None:
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._waiters: list[asyncio.Future[None]] = []

    @asynccontextmanager
    async def read(self) -> AsyncIterator[None]:
        while self._writer or self._writers_waiting:
            await self._wait()
        self._readers += 1
        try:
            yield
        finally:
            self._readers -= 1
            self._wake()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[None]:
        self._writers_waiting += 1
        try:
            while self._writer or self._readers:
                await self._wait()
        finally:
            self._writers_waiting -= 1
            self._wake()  # readers held back by this writer re-check (it may be cancelled)
        self._writer = True
        try:
            yield
        finally:
            self._writer = False
            self._wake()

    async def _wait(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
