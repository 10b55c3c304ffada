"""Dedicated search threads with a cheap handoff.

Why not the write pool. A search handed to a ``ThreadPoolExecutor`` pays for a
``concurrent.futures.Future``, its wrapping into an asyncio future and their callbacks; here a job
is one ``SimpleQueue.put`` (C) and the answer one ``call_soon_threadsafe``. The coalescer cuts a
burst on an approximate index into one part per thread, so the parts search side by side while
the event loop answers the callers of the part that finished.

OpenMP. Each thread searches with FAISS's default team (every core); only a query answered on
the event loop runs at a width of one (``Namespace.search_inline``). A team of one per part was
tried twice (one core per part) and is not used: with no team of the project's left in the
process, libgomp lets any other team's idle thread (raw FAISS called on the event loop thread,
a user's) spin after every call, as it does in a process of raw FAISS alone, and throttles
spinning only while it manages more threads than cores; raw single queries in that process
then became many times slower under load, and no figure beside them could be read
(BENCHMARKS.md, issue 21). One batch at a time on one thread, instead of parts side by side,
was tried too: it used less CPU per query, but under load every batch waited for two thread
wake-ups in a row, which parts searched side by side hide behind each other's search.

The threads never touch the event loop's objects: a job's result or exception comes back through
``call_soon_threadsafe`` and is set on its future there.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import LifecycleError

__all__ = ["SearchThreads"]

T = TypeVar("T")
_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class SearchThreads:
    def __init__(self, count: int, *, name: str = "faiss-search") -> None:
        self.count = max(1, count)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(self.count)
        ]
        self._open = False

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        self._open = True

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn(*args)`` on a free search thread."""
        if not self._open:
            raise LifecycleError("the search threads are stopped")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        return future

    async def close(self) -> None:
        """Let the queued jobs finish, then stop the threads."""
        if not self._open:
            return
        self._open = False
        for _ in self._threads:
            self._jobs.put(None)
        loop = asyncio.get_running_loop()
        for thread in self._threads:
            await loop.run_in_executor(None, thread.join)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, fn, args = job
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the awaiting task
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(result)
    else:
        future.set_exception(exc)
