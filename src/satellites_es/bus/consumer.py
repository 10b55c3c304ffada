"""One consumer group's side of the RabbitMQ bus: partition queues, retries, the dead-letter queue.

A group owns ``partitions`` durable queues ``{exchange}.{group}.p{i}`` declared with
``x-single-active-consumer``, plus ``{exchange}.{group}.dlq``: quorum queues (replicated on a
cluster) with ``x-delivery-limit`` by default, classic ones with ``queue_type="classic"``. Several processes may consume one
group: RabbitMQ delivers each partition queue to one of them at a time and fails over to another
when that consumer goes away, so the events of one key (which all hash to one partition) are
handled in order even with competing consumers.

Each partition queue is handled by one worker task, one message at a time: aio-pika runs every
delivery callback in its own task, so the callback only appends to the worker's buffer (FIFO) and
the worker keeps the order. Messages flow with ``prefetch``: the worker never waits for an ack
round trip, it queues the ack frame (``wait=False``) and goes on with the next buffered message.
A message is acked only after every handler of the group succeeded.

Retry in place, then dead-letter. A handler that raises is retried in this process with
exponential backoff (``retry_backoff * 2**n``, at most ``max_retries`` retries); only the
handlers that failed run again. We retry in place rather than through a delay queue because a
delayed copy would overtake nothing but be overtaken by the key's later events, breaking per-key
order. The trade-off is head-of-line blocking: while a poison message retries, the other keys of
*its partition* wait (for at most the sum of the backoffs); the other partitions keep flowing.
After the last retry the message is published, with confirms, to the group's DLQ with headers
``x-error``, ``x-error-type``, ``x-attempts``, ``x-original-routing-key`` and ``x-group``, and
only then acked. If that publish fails the message is rejected with ``requeue=True`` so it comes
back at the head of its queue (we ``reject`` rather than ``nack``: only a reject counts toward a
quorum queue's delivery limit, rabbitmq-server #15387).

Each handler call runs inside :func:`~satellites_es.envelope.handling` (an event it appends
gets the handled event as its cause and its correlation id) and, with OpenTelemetry
configured, in a span that continues the trace the event was appended in.

Delivery is at least once: a message whose ack is lost (connection cut, consumer killed) is
redelivered, possibly to another process. Handlers must be idempotent; the projections are, by
position.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from ..config import RabbitMQConfig
from ..envelope import handling
from ..errors import ConfigurationError, InvalidEventError
from ..events import DataEvent, EventHandler, handler_name
from ..faults import MAX_BACKOFF, backoff
from ..shielded import stop_task
from ..tracing import continued, enabled
from .partition import binding_key, dlq_name, queue_name

__all__ = [
    "RETRYABLE_ERRORS",
    "GroupConsumer",
    "HandlerLookup",
    "declare_group_queues",
    "dlq_arguments",
    "partition_arguments",
]

logger = logging.getLogger(__name__)

#: The errors of a lost connection or channel: safe to retry once the connection is back.
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    *aio_pika.exceptions.CONNECTION_EXCEPTIONS,
    TimeoutError,
)

#: Returns the handlers of this group for an event type (exact type first, then "all").
HandlerLookup = Callable[[str], Sequence[EventHandler]]

_DEAD_LETTER_ERRORS: tuple[type[BaseException], ...] = (
    *RETRYABLE_ERRORS,
    aio_pika.exceptions.DeliveryError,
)
_MAX_ERROR_TEXT = 2000


class GroupConsumer:
    """The queues and consumers of one consumer group in this process."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        config: RabbitMQConfig,
        group: str,
        lookup: HandlerLookup,
    ) -> None:
        self.group = group
        self._connection = connection
        self._config = config
        self._lookup = lookup
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._queues: list[AbstractQueue] = []
        self._workers: list[_PartitionWorker] = []
        self._consumer_tags: list[tuple[AbstractQueue, str]] = []
        self.dead_lettered = 0
        self.handler_errors = 0

    @property
    def queue_names(self) -> list[str]:
        names = [queue_name(self._config.exchange, self.group, i) for i in range(self._partitions)]
        return [*names, dlq_name(self._config.exchange, self.group)]

    @property
    def _partitions(self) -> int:
        return self._config.partitions

    async def start(self, bindings: Sequence[str | None]) -> None:
        """Declare the group's queues, bind them, and start one worker per partition."""
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        self._channel = channel
        await channel.set_qos(prefetch_count=self._config.prefetch)
        self._exchange = await channel.declare_exchange(
            self._config.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        self._queues = await declare_group_queues(channel, self._config, self.group)
        for event_type in bindings:
            await self.bind(event_type)
        for i, queue in enumerate(self._queues):
            worker = _PartitionWorker(self, i)
            self._workers.append(worker)
            self._consumer_tags.append((queue, await queue.consume(worker.offer)))

    async def bind(self, event_type: str | None) -> None:
        """Route ``event_type`` (every type for ``None``) to the group's partition queues."""
        assert self._exchange is not None
        for i, queue in enumerate(self._queues):
            await queue.bind(self._exchange, binding_key(event_type, i))

    async def unbind(self, event_type: str | None) -> None:
        assert self._exchange is not None
        for i, queue in enumerate(self._queues):
            await queue.unbind(self._exchange, binding_key(event_type, i))

    async def drained(self) -> bool:
        """Whether this process has handled everything the group's queues hold: none ready
        in the partition queues, and every worker idle."""
        if not all(w.idle for w in self._workers) or self._channel is None:
            return False
        underlay = await self._channel.get_underlay_channel()
        for queue in self._queues:
            declared = await underlay.queue_declare(queue.name, passive=True)
            if declared.message_count:
                return False
        return all(w.idle for w in self._workers)

    async def stop(self, grace: float) -> None:
        """Stop consuming; the message being handled may finish within ``grace`` seconds, the
        rest are left unacked and come back when the channel closes."""
        for queue, tag in self._consumer_tags:
            with contextlib.suppress(*RETRYABLE_ERRORS):
                await asyncio.wait_for(queue.cancel(tag), grace)
        await asyncio.gather(*(w.stop(grace) for w in self._workers))
        if self._channel is not None:
            with contextlib.suppress(*RETRYABLE_ERRORS):
                await asyncio.wait_for(self._channel.close(), grace)

    async def handle(self, message: AbstractIncomingMessage) -> None:
        """Deliver one message to the group's handlers; ack, or dead-letter after retries."""
        if _stale(message):
            return  # its channel is gone: the broker redelivers it on the new one
        try:
            event = DataEvent.from_json(message.body)
        except InvalidEventError as exc:
            await self._dead_letter(message, exc, attempts=1)
            return
        error, attempts = await self._deliver(event)
        if error is None:
            await _ack(message)
        else:
            await self._dead_letter(message, error, attempts)

    async def _deliver(self, event: DataEvent) -> tuple[Exception | None, int]:
        pending = list(self._lookup(event.type))
        error: Exception | None = None
        for attempt in range(self._config.max_retries + 1):
            if attempt:
                await asyncio.sleep(self._backoff(attempt))
            pending, error = await self._run(pending, event)
            if not pending:
                return None, attempt + 1
        return error, self._config.max_retries + 1

    def _backoff(self, attempt: int) -> float:
        """The project's one backoff policy (:func:`satellites_es.faults.backoff`), from the
        group's ``retry_backoff``."""
        return backoff(attempt, initial=self._config.retry_backoff, cap=MAX_BACKOFF)

    async def _run(
        self, handlers: Sequence[EventHandler], event: DataEvent
    ) -> tuple[list[EventHandler], Exception | None]:
        failed: list[EventHandler] = []
        error: Exception | None = None
        for handler in handlers:
            try:
                with handling(event):  # what the handler appends is caused by this event
                    if enabled():
                        with continued("handle", event, group=self.group,
                                       handler=handler_name(handler)):  # fmt: skip
                            await handler(event)
                    else:
                        await handler(event)
            except Exception as exc:
                self.handler_errors += 1
                failed.append(handler)
                error = exc
                logger.warning(
                    "group %s: handler %s failed on event %s (%s): %r",
                    self.group, handler_name(handler), event.id, event.type, exc,
                )  # fmt: skip
        return failed, error

    async def _dead_letter(
        self, message: AbstractIncomingMessage, error: Exception, attempts: int
    ) -> None:
        assert self._channel is not None
        letter = aio_pika.Message(
            message.body,
            headers={**(message.headers or {}), **self._error_headers(message, error, attempts)},
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message.message_id,
            content_type=message.content_type,
            correlation_id=message.correlation_id,
            type=message.type,
        )
        try:
            async with asyncio.timeout(self._config.publish_timeout):
                await self._channel.default_exchange.publish(
                    letter, routing_key=dlq_name(self._config.exchange, self.group), mandatory=True
                )
        except _DEAD_LETTER_ERRORS as exc:
            logger.error(
                "group %s: could not dead-letter %s: %r", self.group, message.message_id, exc
            )
            await _settle(functools.partial(message.reject, requeue=True))
            return
        self.dead_lettered += 1
        logger.error(
            "group %s: event %s dead-lettered after %d attempt(s): %r",
            self.group, message.message_id, attempts, error,
        )  # fmt: skip
        await _settle(message.ack)

    def _error_headers(
        self, message: AbstractIncomingMessage, error: Exception, attempts: int
    ) -> dict[str, Any]:
        return {
            "x-error": str(error)[:_MAX_ERROR_TEXT] or repr(error),
            "x-error-type": f"{type(error).__module__}.{type(error).__qualname__}",
            "x-attempts": attempts,
            "x-original-routing-key": message.routing_key or "",
            "x-group": self.group,
        }


async def declare_group_queues(
    channel: AbstractChannel, config: RabbitMQConfig, group: str
) -> list[AbstractQueue]:
    """Declare the DLQ and the partition queues of ``group``; returns the partition queues.

    A queue that exists with other arguments (typically a classic queue from before quorum
    queues were the default) is not touched: :class:`ConfigurationError` says how to go on.
    """
    dlq = dlq_name(config.exchange, group)
    try:
        await channel.declare_queue(dlq, durable=True, arguments=dlq_arguments(config))
        return [
            await channel.declare_queue(
                queue_name(config.exchange, group, i),
                durable=True,
                arguments=partition_arguments(config, dlq),
            )
            for i in range(config.partitions)
        ]
    except aio_pika.exceptions.ChannelPreconditionFailed as exc:
        raise ConfigurationError(
            "rabbitmq.queue_type",
            f"a queue of group {group!r} exists with other arguments than "
            f"queue_type={config.queue_type!r}, delivery_limit={config.delivery_limit} want "
            f"({exc}); drain and migrate it (README: 'Migrating group queues'), or set "
            "SATELLITES_RABBITMQ_QUEUE_TYPE / _DELIVERY_LIMIT to what it was declared with",
        ) from exc


def partition_arguments(config: RabbitMQConfig, dlq: str) -> dict[str, Any]:
    """A partition queue: single active consumer (per-key order), and on quorum queues a
    delivery limit whose overflow the broker dead-letters to ``dlq`` (reason
    ``delivery_limit`` in ``x-death``): a message that kills its consumer every time stops
    looping. RabbitMQ 3.10 counts every return (a crashed consumer, a reject or nack with
    requeue); from 4.3 a nack no longer counts, which is why ``_dead_letter`` rejects."""
    arguments: dict[str, Any] = {"x-single-active-consumer": True}
    if config.queue_type == "quorum":
        arguments["x-queue-type"] = "quorum"
        if config.delivery_limit:
            arguments["x-delivery-limit"] = config.delivery_limit
            arguments["x-dead-letter-exchange"] = ""
            arguments["x-dead-letter-routing-key"] = dlq
    return arguments


def dlq_arguments(config: RabbitMQConfig) -> dict[str, Any]:
    return {"x-queue-type": "quorum"} if config.queue_type == "quorum" else {}


class _PartitionWorker:
    """Handles one partition queue's messages one at a time, in delivery order."""

    def __init__(self, consumer: GroupConsumer, partition: int) -> None:
        self._consumer = consumer
        self._buffer: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()
        self._busy = False
        self._task = asyncio.create_task(
            self._run(), name=f"satellites-consumer-{consumer.group}-p{partition}"
        )
        self._task.add_done_callback(_log_worker_death)

    async def offer(self, message: AbstractIncomingMessage) -> None:
        self._buffer.put_nowait(message)  # synchronous: keeps the broker's delivery order

    @property
    def idle(self) -> bool:
        """Nothing buffered and nothing being handled."""
        return self._buffer.empty() and not self._busy

    async def _run(self) -> None:
        self._busy = False
        while (message := await self._buffer.get()) is not None:
            self._busy = True
            try:
                await self._consumer.handle(message)
            except Exception:  # a bug here must not stop the partition
                logger.exception("group %s: error handling a message", self._consumer.group)
            finally:
                self._busy = False

    async def stop(self, grace: float) -> None:
        self._buffer.put_nowait(None)
        # Messages still buffered behind the sentinel are never acked: redelivered later.
        done, _ = await asyncio.wait({self._task}, timeout=grace)
        if not done:
            stop_task(self._task)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _stale(message: AbstractIncomingMessage) -> bool:
    try:
        return bool(message.channel.is_closed)
    except aio_pika.exceptions.ChannelInvalidStateError:
        return True


async def _settle(operation: Callable[[], Awaitable[Any]]) -> None:
    """Ack or reject; on a lost channel the broker redelivers the message anyway. Takes a
    callable: even reaching a closed message's channel raises, and that is no error here."""
    try:
        await operation()
    except RETRYABLE_ERRORS as exc:
        logger.debug("ack/reject lost with the channel: %r", exc)


async def _ack(message: AbstractIncomingMessage) -> None:
    """Ack without waiting for the frame to reach the socket (an ack has no reply anyway):
    the worker moves on to the next message at once. The frame is queued on the connection in
    order; if the channel is lost first, the broker redelivers the message (at least once)."""
    tag = message.delivery_tag
    if tag is None:
        return
    await _settle(lambda: message.channel.basic_ack(tag, wait=False))


def _log_worker_death(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("consumer worker %s died", task.get_name(), exc_info=task.exception())
