"""Catch-up subscriptions: a group that starts at ``earliest`` or after a log position.

``data.events.subscribe(type, handler, start="earliest")`` (or ``start=N``: the events after
position ``N``; ``"latest"``, the default, is a plain subscription) delivers the log's past and
then the live stream, in per-key order, with no gap between the two parts:

1. The handler is registered on the bus wrapped in a :class:`CatchUp`, so the group's queues are
   declared and bound as for any subscription, but every live delivery waits in the wrapper
   (on RabbitMQ it stays unacked in its partition queue, so a crash loses nothing).
2. Once the bus says the subscription is bound, the catch-up reads the log's head ``H``
   (:meth:`~satellites_es.store.EventStore.head`: nothing at or below it can still commit) and
   hands the handler every matching event with ``start < position <= H``, in position order.
3. Then the live deliveries go through, minus those at or below ``H``: they were handed over in
   step 2 (this is the seam's only duplicate check, by position).

No gap: the relay publishes in position order and only what it can read, which is at or below
the head at that moment; so every event it published before the binding existed has a position
``<= H``, and every event above ``H`` was published after the binding and is in the queue.
No reordering: the catch-up part is in position order and ends before the live part starts.
Delivery is at least once, like the live bus: a crash during catch-up starts it again at the
next subscribe, so handlers must be idempotent (by position).

A handler that raises during catch-up is retried ``max_retries`` times with backoff, then the
event is logged, counted in :attr:`CatchUp.failed` and skipped (it stays in the log; the
``replay`` command delivers a range again). A log that cannot be read is retried until it can:
"the backend is away" is never "this event is bad".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Literal

from tenacity import AsyncRetrying, retry_if_exception

from ..envelope import handling
from ..errors import ConfigurationError
from ..events import DataEvent, EventHandler, handler_name
from ..faults import backoff, is_transient
from ..store import EventStore
from ..tracing import continued

__all__ = ["CatchUp", "Start", "start_position"]

logger = logging.getLogger(__name__)

#: Where a subscription starts: ``"latest"`` (live events only), ``"earliest"`` or a position.
Start = Literal["latest", "earliest"] | int


def start_position(start: Start) -> int | None:
    """The position a subscription reads the log after (``None``: no catch-up)."""
    if start == "latest":
        return None
    if start == "earliest":
        return 0
    if isinstance(start, int) and not isinstance(start, bool) and start >= 0:
        return start
    raise ConfigurationError("start", f"'latest', 'earliest' or a position >= 0, not {start!r}")


class CatchUp:
    """A handler that first receives the log after ``after``, then the live events after it."""

    def __init__(
        self,
        handler: EventHandler,
        *,
        store: EventStore,
        bus: Any,
        event_type: str | None,
        after: int,
        max_retries: int = 5,
        retry_backoff: float = 0.2,
    ) -> None:
        self.handler = handler
        group_for = getattr(bus, "group_for", handler_name)
        #: The consumer group: the wrapped handler's, so its queues are the same.
        self.subscriber_name: str = group_for(handler)
        self.after = after
        self.event_type = event_type
        #: The log head the catch-up read up to; live events at or below it are skipped.
        self.high: int | None = None
        self.delivered = 0
        self.failed = 0
        self._store = store
        self._bus = bus
        self._retries = max_retries
        self._backoff = retry_backoff
        self._caught_up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, event: DataEvent) -> None:
        await self._caught_up.wait()
        assert self.high is not None
        if event.position is not None and event.position <= self.high:
            return  # handed over by the catch-up already
        await self.handler(event)

    def begin(self) -> asyncio.Task[None]:
        """Start the catch-up in a named task (the caller watches and cancels it)."""
        self._task = asyncio.create_task(
            self._run(), name=f"satellites-catchup-{self.subscriber_name}"
        )
        return self._task

    async def wait(self) -> None:
        """Until the past is delivered and live events flow."""
        await self._caught_up.wait()

    async def _run(self) -> None:
        wait_ready = getattr(self._bus, "wait_ready", None)
        if wait_ready is not None:
            await wait_ready()  # bound first: from here on, live events queue up for us
        retrying = AsyncRetrying(
            retry=retry_if_exception(is_transient),
            wait=lambda state: backoff(state.attempt_number),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._read_past()
        self._caught_up.set()
        logger.info(
            "group %s caught up: %d event(s) after position %d (up to %s), %d failed",
            self.subscriber_name, self.delivered, self.after, self.high, self.failed,
        )  # fmt: skip

    async def _read_past(self) -> None:
        high = self.high if self.high is not None else await self._store.sequence()
        self.high = high
        types = None if self.event_type is None else [self.event_type]
        past = self._store.read(self.after, until=high, types=types, read_ahead=True)
        async with contextlib.aclosing(past) as batches:
            async for batch in batches:
                for event in batch:
                    await self._deliver(event)
                    self.after = event.position or self.after  # a retry resumes here

    async def _deliver(self, event: DataEvent) -> None:
        for attempt in range(self._retries + 1):
            if attempt:
                await asyncio.sleep(backoff(attempt, initial=self._backoff))
            try:
                with continued("handle", event, group=self.subscriber_name, catch_up=True):
                    with handling(event):  # what the handler appends is caused by this event
                        await self.handler(event)
            except Exception as exc:
                error = exc
                continue
            self.delivered += 1
            return
        self.failed += 1
        logger.error(
            "group %s: catch-up skipped event %s at position %s after %d attempts: %r",
            self.subscriber_name, event.id, event.position, self._retries + 1, error,
        )  # fmt: skip
