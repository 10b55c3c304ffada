"""Coalescing of concurrent single queries into batched FAISS searches.

A FAISS search of one vector pays the full scan for one answer; a batch of 64 shares the scan
across all of them and becomes one matrix product (:mod:`.exact` for flat indexes): here a
100k x 384 flat index answers ~60-110 single queries/s but ~1,000/s in batches. So
:meth:`QueryCoalescer.query` queues the vector and a future, and one *drain* task per namespace
runs the searches.

* A lone query does not wait. When nothing is queued or searching and no other task has been
  answered on the event loop in this loop turn, ``query`` first asks ``inline`` (a cheap
  approximate search, run on the event loop: see ``VectorIndex._search_now``); only if that
  declines does it queue. A second task querying in the same turn is taken as concurrency and
  queues, so an ``asyncio.gather`` of 64 callers still forms a batch (its first caller's answer
  costs one inline search). Callers resuming from a search that answered several of them are
  concurrency too: none of them searches inline in that turn. Otherwise the first to query
  again held the event loop for a whole search while the others waited, and the next batch came
  out one short: in 64-caller bursts on HNSW one query in 14 went inline.
* The drain starts when the first query is queued and first yields once to the event loop, so
  every query issued in the same loop turn joins the first batch. No timer.
* Batches are cut per ``parts()``: a flat index batches best whole (one scan shared by every
  query), so one batch of up to ``max_batch`` searches at a time; an approximate index (HNSW, IVF)
  costs about the same per query in any batch, so the queue is split into one part per free
  search thread, and while one part searches the answered callers of another re-queue: the
  searches and the event loop's own work overlap instead of taking turns.
* Within a part, queries sharing a filter share one search with the largest ``top_k``; each caller
  gets its own row trimmed to its ``top_k`` (rows are sorted best first, so trimming is exact).
* A caller that was cancelled is skipped; an error in a search goes to the callers of that group
  only. The drain task and its parts are owned here and awaited by :meth:`close`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from .filters import filter_key
from .models import VectorMatch

__all__ = ["InlineFn", "QueryCoalescer", "SearchFn"]

logger = logging.getLogger(__name__)

Matrix = npt.NDArray[np.float32]
Filter = Mapping[str, Any] | None
Rows = list[list[VectorMatch]]
SearchFn = Callable[[Matrix, int, Filter], Awaitable[Rows]]
InlineFn = Callable[[Matrix, int, Filter], Rows | None]
#: vector, top_k, filter, future
_Pending = tuple[Matrix, int, Filter, "asyncio.Future[list[VectorMatch]]"]


class QueryCoalescer:
    def __init__(
        self,
        search: SearchFn,
        *,
        max_batch: int,
        name: str,
        inline: InlineFn | None = None,
        parts: Callable[[], int] = lambda: 1,
    ) -> None:
        self._search = search
        self._inline = inline
        self._parts = parts
        self._max_batch = max(1, max_batch)
        self._name = name
        self._queue: list[_Pending] = []
        self._drain_task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        #: The task answered inline in this loop turn (cleared by a callback at the turn's end).
        self._inline_owner: asyncio.Task[Any] | None = None
        #: Callers a search answered in this loop turn (reset by a callback at the turn's end).
        self._answered = 0
        self._answer_turns = 0  # _end_answers callbacks scheduled and not yet run
        #: Queries answered and FAISS searches run: their ratio is the coalescing achieved.
        self.queries = 0
        self.searches = 0

    async def query(self, vector: Matrix, top_k: int, flt: Filter) -> list[VectorMatch]:
        """``vector`` is one validated row; returns its best-first hits."""
        # not "no drain task": a drain lingers one loop turn after its last batch, and a caller
        # that never yields (a loop of inline queries) would keep it from ever ending
        if (
            self._inline is not None
            and not self._queue
            and not self._running
            and self._answered <= 1
        ):
            rows = self._try_inline(vector, top_k, flt)
            if rows is not None:
                return rows[0]
        future: asyncio.Future[list[VectorMatch]] = asyncio.get_running_loop().create_future()
        self._queue.append((vector, top_k, flt, future))
        if self._drain_task is None:
            self._drain_task = asyncio.create_task(
                self._drain(), name=f"vectors-coalesce-{self._name}"
            )
        return await future

    def _try_inline(self, vector: Matrix, top_k: int, flt: Filter) -> Rows | None:
        task = asyncio.current_task()
        owner = self._inline_owner
        if owner is not None and owner is not task:
            return None  # another task queried in this turn: concurrency, let them batch
        assert self._inline is not None
        rows = self._inline(vector, top_k, flt)
        if rows is not None:
            self.searches += 1
            self.queries += 1
            if owner is None:
                self._inline_owner = task
                asyncio.get_running_loop().call_soon(self._end_turn)
        return rows

    def _end_turn(self) -> None:
        self._inline_owner = None

    async def close(self) -> None:
        """Wait until every queued query has been answered."""
        task = self._drain_task
        if task is not None:
            await asyncio.shield(task)

    async def _drain(self) -> None:
        running = self._running
        try:
            await asyncio.sleep(0)  # let the callers of this loop turn join the first batch
            while self._queue or running:
                parts = max(1, self._parts())
                free = parts - len(running)
                if self._queue and free > 0:
                    for batch in self._cut(free, parts > 1):
                        running.add(asyncio.create_task(self._run(batch)))
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                # callers just answered often query again at once: let them join the next batch
                await asyncio.sleep(0)
        except BaseException as exc:  # cancelled: nobody may wait forever
            if running:
                await asyncio.wait(running)  # their searches hold the namespace's lock
            for pending in self._queue:
                _fail(pending[3], exc)
            self._queue.clear()
            raise
        finally:
            self._drain_task = None

    def _cut(self, free: int, split: bool) -> list[list[_Pending]]:
        """Take the next batches off the queue: one per free search thread when ``split``."""
        queue = self._queue
        if not split:
            batch = queue[: self._max_batch]
            del queue[: self._max_batch]
            return [batch]
        taken = min(len(queue), self._max_batch * free)
        size = -(-taken // free)  # ceil: at most ``free`` batches, as even as they come
        batches = [queue[start : min(start + size, taken)] for start in range(0, taken, size)]
        del queue[:taken]
        return batches

    async def _run(self, batch: list[_Pending]) -> None:
        """Search one batch. The task leaves ``_running`` in its own last step, before its callers
        resume (a done callback would run after them: a caller that then queries inline in a
        loop that never yields would find the search still "running" and queue instead)."""
        try:
            await self._search_batch(batch)
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._running.discard(task)

    async def _search_batch(self, batch: list[_Pending]) -> None:
        groups: dict[Any, list[_Pending]] = {}
        for pending in batch:
            if not pending[3].done():
                key = filter_key(pending[2]) if pending[2] else ()
                groups.setdefault(key, []).append(pending)
        if len(groups) == 1:  # the usual case: no task per group
            await self._run_group(next(iter(groups.values())))
        elif groups:
            await asyncio.gather(*(self._run_group(group) for group in groups.values()))

    async def _run_group(self, group: list[_Pending]) -> None:
        k = max(p[1] for p in group)
        matrix = np.vstack([p[0] for p in group])
        self.searches += 1
        self.queries += len(group)
        try:
            rows = await self._search(matrix, k, group[0][2])
        except Exception as exc:
            for pending in group:
                _fail(pending[3], exc)
            return
        for (_, top_k, _, future), row in zip(group, rows, strict=True):
            if not future.done():
                future.set_result(row if len(row) <= top_k else row[:top_k])
        self._answered += len(group)
        self._answer_turns += 1
        asyncio.get_running_loop().call_soon(self._end_answers)

    def _end_answers(self) -> None:
        """Runs after the callers of one search's answers have resumed (their wake-ups were
        scheduled first), and so after any next query of theirs was queued. Two parts answered
        in the same loop turn schedule two of these, the second after the second part's
        callers: the count is cleared by the last one only."""
        self._answer_turns -= 1
        if not self._answer_turns:
            self._answered = 0


def _fail(future: asyncio.Future[list[VectorMatch]], exc: BaseException) -> None:
    if future.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(exc)
