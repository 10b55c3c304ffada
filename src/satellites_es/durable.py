"""Durable publishing: the seed's ``data.events.publish(...)`` goes through the log.

When the event log is enabled, :class:`DurableEventBus` is the ``EventBus`` the façade hands out.
``publish`` appends the event to the Postgres log (the outbox) and returns once it is committed;
delivery to subscribers is the relay's job (log -> bus, at least once, in position order), so an
event published just before a crash is delivered after the restart instead of lost.
``publish_in`` appends inside the producer's own transaction, so a state change and its event
commit or roll back together. Subscriptions go to the underlying bus unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from .events import DataEvent, EventBus, EventHandler
from .store import AppendResult, EventStore

__all__ = ["DurableEventBus"]


class DurableEventBus:
    def __init__(self, store: EventStore, bus: EventBus) -> None:
        self.store = store
        self.bus = bus

    def subscribe(self, event_type: str, handler: EventHandler) -> None:
        self.bus.subscribe(event_type, handler)

    def subscribe_all(self, handler: EventHandler) -> None:
        self.bus.subscribe_all(handler)

    def unsubscribe(self, event_type: str, handler: EventHandler) -> None:
        self.bus.unsubscribe(event_type, handler)

    async def publish(self, event: DataEvent) -> None:
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
        """Append inside the caller's transaction on ``conn``."""
        return await self.store.append(events, conn=conn, expected_version=expected_version)
