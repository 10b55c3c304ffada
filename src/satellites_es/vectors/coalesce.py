"""Coalescing of concurrent single queries into batched FAISS searches.

A FAISS search of one vector pays the full scan for one answer; a batch of 64 shares the scan
across all of them and becomes one matrix product (:mod:`.exact` for flat indexes): here a
100k x 384 flat index answers ~60-110 single queries/s but ~1,000/s in batches. So :meth:`QueryCoalescer.query` does not search: it queues the vector and a
future, and one *drain* task per namespace runs the searches.

* The drain starts when the first query arrives and first yields once to the event loop, so every
  query issued in the same loop turn (an ``asyncio.gather`` of 64 callers) joins the first batch.
  It yields again after each batch, so callers that were just answered and query again at once
  join the next batch instead of trickling in one by one. No timer: a lone query waits for
  nothing but one yield.
* While a batch is searching (in a worker thread), new queries pile up in the queue; when the
  search returns the drain takes up to ``max_batch`` of them at once. The batch size thus adapts
  to the load: one at a time when idle, large batches when busy.
* Within a batch, queries sharing a filter share one search with the largest ``top_k``; each
  caller gets its own row trimmed to its ``top_k`` (rows are sorted best first, so trimming is
  exact). Groups with different filters search concurrently (searches may overlap).
* A caller that was cancelled is skipped; an error in a search goes to the callers of that group
  only. The drain task is owned here and awaited by :meth:`close`, never left running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .filters import filter_key
from .models import VectorMatch

__all__ = ["QueryCoalescer", "SearchFn"]

logger = logging.getLogger(__name__)

Matrix = npt.NDArray[np.float32]
SearchFn = Callable[[Matrix, int, Mapping[str, Any] | None], Awaitable[list[list[VectorMatch]]]]


@dataclass
class _Pending:
    vector: Matrix
    top_k: int
    flt: Mapping[str, Any] | None
    future: asyncio.Future[list[VectorMatch]] = field(repr=False)


class QueryCoalescer:
    def __init__(self, search: SearchFn, *, max_batch: int, name: str) -> None:
        self._search = search
        self._max_batch = max(1, max_batch)
        self._name = name
        self._queue: list[_Pending] = []
        self._drain_task: asyncio.Task[None] | None = None
        #: Queries answered and FAISS searches run: their ratio is the coalescing achieved.
        self.queries = 0
        self.searches = 0

    async def query(
        self, vector: Matrix, top_k: int, flt: Mapping[str, Any] | None
    ) -> list[VectorMatch]:
        """``vector`` is one validated row; returns its best-first hits."""
        future: asyncio.Future[list[VectorMatch]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(vector, top_k, flt, future))
        if self._drain_task is None:
            self._drain_task = asyncio.create_task(
                self._drain(), name=f"vectors-coalesce-{self._name}"
            )
        return await future

    async def close(self) -> None:
        """Wait until every queued query has been answered."""
        task = self._drain_task
        if task is not None:
            await asyncio.shield(task)

    async def _drain(self) -> None:
        batch: list[_Pending] = []
        try:
            await asyncio.sleep(0)  # let the callers of this loop turn join the first batch
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                await self._run(batch)
                # callers just answered often query again at once: let them join the next batch
                await asyncio.sleep(0)
        except BaseException as exc:  # cancelled: nobody may wait forever
            for pending in [*batch, *self._queue]:
                _fail(pending, exc)
            self._queue.clear()
            raise
        finally:
            self._drain_task = None

    async def _run(self, batch: list[_Pending]) -> None:
        groups: dict[Any, list[_Pending]] = {}
        for pending in batch:
            if not pending.future.done():
                groups.setdefault(filter_key(pending.flt), []).append(pending)
        if len(groups) == 1:  # the usual case: no task per group
            await self._run_group(next(iter(groups.values())))
        else:
            await asyncio.gather(*(self._run_group(group) for group in groups.values()))

    async def _run_group(self, group: list[_Pending]) -> None:
        k = max(p.top_k for p in group)
        matrix = np.ascontiguousarray(np.vstack([p.vector for p in group]))
        self.searches += 1
        self.queries += len(group)
        try:
            rows = await self._search(matrix, k, group[0].flt)
        except Exception as exc:
            for pending in group:
                _fail(pending, exc)
            return
        for pending, row in zip(group, rows, strict=True):
            if not pending.future.done():
                pending.future.set_result(row[: pending.top_k])


def _fail(pending: _Pending, exc: BaseException) -> None:
    if pending.future.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        pending.future.cancel()
    else:
        pending.future.set_exception(exc)
