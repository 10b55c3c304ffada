"""Dedicated search threads with a cheap handoff, each running FAISS with its own OpenMP width.

Why not the write pool. A search handed to a ``ThreadPoolExecutor`` pays for a
``concurrent.futures.Future``, its wrapping into an asyncio future and their callbacks; here a job
is one ``SimpleQueue.put`` (C) and the answer one ``call_soon_threadsafe``. More important is
OpenMP: FAISS parallelises a batch over an OpenMP team owned by the calling thread, and its idle
members spin after each search. Two pool threads searching at once ran two teams on two cores
(four spinning threads), and under load the batch collapsed (BENCHMARKS.md, issue 21). A search
thread sets its own team width per job (``omp_set_num_threads`` is per thread in libgomp): one
when the coalescer has split a batch of an approximate index into one part per thread (the
threads then search side by side, one core each, and nothing spins), the machine's width for a
batch searched whole (a flat scan, ``query_many``).

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
from ._faiss import faiss

__all__ = ["SearchThreads"]

T = TypeVar("T")
_Job = tuple[
    asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...], int
]


class SearchThreads:
    def __init__(self, count: int, *, name: str = "faiss-search") -> None:
        self.count = max(1, count)
        #: The OpenMP width of a whole-batch search: what FAISS would use by default.
        self.full_width = max(1, int(faiss.omp_get_max_threads()))
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

    def submit(self, fn: Callable[..., T], *args: Any, width: int) -> asyncio.Future[T]:
        """Run ``fn(*args)`` on a free search thread with an OpenMP team of ``width``."""
        if not self._open:
            raise LifecycleError("the search threads are stopped")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, future, fn, args, width))
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
        width = -1
        while (job := self._jobs.get()) is not None:
            loop, future, fn, args, wanted = job
            if wanted != width:
                faiss.omp_set_num_threads(wanted)
                width = wanted
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
