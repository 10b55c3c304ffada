"""Publishing through the outbox: ``data.events.publish(...)`` appends to the log.

When the event log is enabled, :class:`DurableEventBus` is the ``EventBus`` the façade hands out.
``publish`` appends the event to the Postgres log (the outbox) and returns once it is committed;
delivery to subscribers is the relay's job (log -> bus, at least once, in position order), so an
event published just before a crash is delivered after the restart instead of lost.
``publish_in`` appends inside the producer's own transaction, so a state change and its event
commit or roll back together. Subscriptions go to the underlying bus; one with a ``start``
(``"earliest"`` or a log position) first receives the log's past (:mod:`.catchup`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import asyncpg

from ..events import DataEvent, EventBus, EventHandler
from ..shielded import stop_task
from ..store import AppendResult, EventStore
from ..tracing import span
from .catchup import CatchUp, Start, start_position

__all__ = ["DurableEventBus"]

logger = logging.getLogger(__name__)


class DurableEventBus:
    ALL = "*"

    def __init__(self, store: EventStore, bus: EventBus, *, max_retries: int = 5) -> None:
        """``max_retries``: how often a catch-up retries a handler that raises before the event
        is dead-lettered; the façade passes the bus's own setting, so that the log's past and
        the live events treat a failing handler alike."""
        self.store = store
        self.bus = bus
        self.max_retries = max_retries
        self._catchups: dict[tuple[str, EventHandler], list[CatchUp]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def subscribe(self, event_type: str, handler: EventHandler, *, start: Start = "latest") -> None:
        """Subscribe ``handler``; with ``start`` it first gets the log after that position
        (``"earliest"``: all of it), then the live events (:meth:`caught_up` awaits the past)."""
        catchup = self._catch_up(event_type, handler, start)
        self.bus.subscribe(event_type, catchup or handler)
        self._begin(catchup)

    def subscribe_all(self, handler: EventHandler, *, start: Start = "latest") -> None:
        catchup = self._catch_up(self.ALL, handler, start)
        self.bus.subscribe_all(catchup or handler)
        self._begin(catchup)

    @property
    def catchups(self) -> list[CatchUp]:
        return [c for bucket in self._catchups.values() for c in bucket]

    async def caught_up(self) -> None:
        """Until every catch-up subscription has delivered the past and gone live."""
        await asyncio.gather(*(c.wait() for c in self.catchups))

    def unsubscribe(self, event_type: str, handler: EventHandler) -> None:
        wrapped = self._catchups.get((event_type, handler))
        self.bus.unsubscribe(event_type, wrapped.pop() if wrapped else handler)

    def _catch_up(self, event_type: str, handler: EventHandler, start: Start) -> CatchUp | None:
        after = start_position(start)
        if after is None:
            return None
        catchup = CatchUp(
            handler, store=self.store, bus=self.bus, after=after, max_retries=self.max_retries,
            event_type=None if event_type == self.ALL else event_type,
        )  # fmt: skip
        self._catchups.setdefault((event_type, handler), []).append(catchup)
        return catchup

    def _begin(self, catchup: CatchUp | None) -> None:
        if catchup is not None:
            task = catchup.begin()
            self._tasks.add(task)
            task.add_done_callback(self._catchup_done)

    def _catchup_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s failed", task.get_name(), exc_info=task.exception())

    async def close(self) -> None:
        """Cancel the catch-ups still running (a later subscribe starts them again)."""
        for task in list(self._tasks):
            stop_task(task)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def publish(self, event: DataEvent) -> None:
        with span("events.publish", type=event.type):
            await self.store.append(event)

    async def publish_many(self, events: Sequence[DataEvent]) -> AppendResult:
        return await self.store.append(events)

    async def publish_in(
        self,
        conn: asyncpg.Connection,
        events: DataEvent | Sequence[DataEvent],
        *,
        expected_version: int | None = None,
    ) -> AppendResult:
        """Append inside the caller's transaction on ``conn``. The events have no position
        until it commits: then ``await data.log.sequenced(result)`` gives them."""
        return await self.store.append(events, conn=conn, expected_version=expected_version)
