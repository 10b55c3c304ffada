"""RabbitMQEventBus: the :class:`~satellites_es.events.EventBus` over a RabbitMQ topic exchange.

Topology (see :mod:`.partition` for the names)::

    exchange {exchange} (topic, durable)
      routing key  p{partition}.{event type}      partition = crc32(resource, key) % partitions
        └─ {exchange}.{group}.p0 .. p{N-1}        durable, x-single-active-consumer
    {exchange}.{group}.dlq                        dead letters of the group, with their error

Publishing. Every message is persistent, ``message_id`` = the event id, body = the event's JSON,
headers ``position``, ``resource``, ``key``, ``version``, ``partition``, ``x-contract-version``,
``schema-version``, and from the event's metadata (:mod:`..envelope`) the AMQP ``correlation_id``
and headers ``causation-id``, ``actor``, ``traceparent``, ``tracestate`` and ``h-<name>`` per
free header, each only when set (the contract for consumers in any language is
``docs/contract/``); it is published
``mandatory`` on a channel with publisher confirms and ``on_return_raises``: a message no queue is
bound for, a nack, a lost connection or no confirm within ``publish_timeout`` (aio-pika #636: a
robust channel can hang) raises :class:`~satellites_es.errors.PublishError`. Nothing is silent.
:meth:`RabbitMQEventBus.publish_many` keeps up to ``window`` confirms outstanding and settles
them oldest first; on the first failure it raises :class:`PublishBatchError` whose
``confirmed`` is the length of the confirmed prefix, the part a relay may advance its cursor over.
A batch is pinned to one underlying AMQP channel: if the connection drops mid-batch, every later
publish of that batch fails too instead of going out on the reconnected channel, so a retried
suffix can never land behind messages that overtook it (per-key order survives reconnects).

Consuming. ``subscribe``/``subscribe_all`` are synchronous (the seed's protocol): they register
the handler under its consumer group (``handler.subscriber_name``, else the bus's ``group``, else
:func:`~satellites_es.events.handler_name`); the group's queues are declared, bound and consumed
at :meth:`start`, or by a watched background task when the bus is already started
(:meth:`wait_ready` awaits those).

Publish after subscribe. The seed subscribes after ``start()`` and publishes at once. A topic
exchange routes a message only to the queues bound when it arrives, and a ``mandatory`` message
no queue wants is returned (unroutable). So every publishing path of this bus (``publish``,
``publish_many`` and the relay's :class:`ConfirmPublisher`) first waits for the bindings that
earlier ``subscribe`` calls of this process started: an event published after ``subscribe``
returned is routed to the new group. The wait costs nothing when no subscription is changing.
A subscriber in *another* process is bound when its own ``subscribe`` completes; what was
published before that is in the log: subscribe with ``start=`` (:mod:`.catchup`) or replay it
(:func:`.replay.replay_log`). Processes sharing a group share its queues: each partition is
consumed by one of them at a time, so per-key order holds with competing consumers. All members
of a group must subscribe to the same types. Retries, the dead-letter queue and the head-of-line
trade-off are described in :mod:`.consumer`; delivery is at least once, so handlers must be
idempotent (redelivered messages come again after a lost ack or a reconnect).

Reconnection. ``connect_robust`` reconnects and re-declares the exchange, queues, bindings and
consumers; messages that were in flight are redelivered. A publish in flight when the connection
drops raises ``PublishError``; the caller (the relay) retries it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import deque
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustChannel, AbstractRobustConnection
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from ..config import RabbitMQConfig
from ..envelope import EMPTY, EventMetadata, ambient, stamped
from ..errors import (
    BackendUnavailableError,
    ConfigurationError,
    LifecycleError,
    PublishError,
    UndeliverableError,
    UnroutableError,
)
from ..events import DataEvent, EventHandler, handler_name
from ..shielded import connect_shielded, finished, stop_task
from ..tls import is_refusal
from .consumer import RETRYABLE_ERRORS, GroupConsumer
from .dlq import DeadLetter, list_dead_letters, replay_dead_letters
from .partition import dlq_name, partition_for, queue_name, routing_key

__all__ = ["BusState", "ConfirmPublisher", "PublishBatchError", "RabbitMQEventBus"]

logger = logging.getLogger(__name__)

_DEFAULT_WINDOW = 256
#: The message contract (docs/contract/): header ``x-contract-version``.
CONTRACT_VERSION = 1
_PERSISTENT = int(aio_pika.DeliveryMode.PERSISTENT)
_DRAIN_ERRORS: tuple[type[BaseException], ...] = (*RETRYABLE_ERRORS, aiormq.exceptions.AMQPError)


class _Outgoing(NamedTuple):
    body: bytes
    properties: aiormq.spec.Basic.Properties
    routing_key: str


class BusState(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    STARTED = "started"
    STOPPED = "stopped"


class PublishBatchError(PublishError):
    """``publish_many`` failed; the first ``confirmed`` events were confirmed, the rest may not."""

    def __init__(self, message: str, confirmed: int) -> None:
        super().__init__(message)
        self.confirmed = confirmed


@dataclass
class _Group:
    """The handlers this process registered under one consumer group."""

    name: str
    handlers: dict[str | None, list[EventHandler]] = field(default_factory=dict)
    consumer: GroupConsumer | None = None
    bound: set[str | None] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def lookup(self, event_type: str) -> list[EventHandler]:
        return [*self.handlers.get(event_type, ()), *self.handlers.get(None, ())]

    def wanted(self) -> set[str | None]:
        return {t for t, handlers in self.handlers.items() if handlers}


class RabbitMQEventBus:
    """Event bus over RabbitMQ; see the module docstring for routing, order and delivery."""

    ALL = "*"

    def __init__(
        self,
        config: RabbitMQConfig,
        *,
        group: str | None = None,
        connect_timeout: float = 10.0,
        stop_timeout: float = 10.0,
        reconnect_interval: float = 1.0,
    ) -> None:
        self.config = config
        self.group = group
        self.connect_timeout = connect_timeout
        self.stop_timeout = stop_timeout
        self.reconnect_interval = reconnect_interval
        self.published = 0
        self._state = BusState.NEW
        self._stopping: asyncio.Future[None] | None = None
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._groups: dict[str, _Group] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._task_errors: list[str] = []

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def state(self) -> BusState:
        return self._state

    @property
    def groups(self) -> list[str]:
        """The consumer groups subscribed on this bus, each with its queues
        ``{exchange}.{group}.p{i}`` and its dead-letter queue."""
        return list(self._groups)

    async def start(self) -> None:
        if self._state is not BusState.NEW:
            raise LifecycleError(f"RabbitMQEventBus cannot start: it is {self._state.value}")
        self._state = BusState.STARTING
        self._connection = await self._connect()
        try:
            channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
            self._channel = channel
            await channel.declare_exchange(
                self.config.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            for group in list(self._groups.values()):
                await self._reconcile(group)
        except RETRYABLE_ERRORS as exc:
            await self._close_connection()
            self._state = BusState.STOPPED
            raise BackendUnavailableError(
                "rabbitmq", f"declaring the topology failed: {self._redact(repr(exc))}"
            ) from exc
        except BaseException:  # a ConfigurationError (queues of another type): nothing leaks
            await self._close_connection()
            self._state = BusState.STOPPED
            raise
        self._state = BusState.STARTED

    async def stop(self) -> None:
        """Stop consuming and close the connection (idempotent). Runs to its end though the
        caller be cancelled meanwhile, then lets the cancel through (see ``shielded.finished``);
        a second ``stop()`` waits for the first."""
        if self._stopping is None:
            if self._state is BusState.STOPPED:
                return
            self._state = BusState.STOPPED
            self._stopping = asyncio.ensure_future(self._stop())
        await finished(self._stopping, limit=2 * self.stop_timeout)

    async def _stop(self) -> None:
        for task in list(self._tasks):
            stop_task(task)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for group in self._groups.values():
            if group.consumer is not None:
                await group.consumer.stop(self.stop_timeout)
                group.consumer = None
                group.bound = set()
        await self._close_connection()

    async def __aenter__(self) -> RabbitMQEventBus:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _connect(self) -> AbstractRobustConnection:
        retrying = AsyncRetrying(
            stop=stop_after_delay(self.connect_timeout),
            wait=wait_exponential(multiplier=0.1, max=2.0),
            # a certificate that does not verify fails the same way every time: no retry
            retry=retry_if_exception(
                lambda e: isinstance(e, RETRYABLE_ERRORS) and not is_refusal(e)
            ),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    connect = aio_pika.connect_robust(
                        self.config.url,
                        timeout=max(1.0, min(5.0, self.connect_timeout)),
                        reconnect_interval=self.reconnect_interval,
                    )
                    # a stop while connecting must not cut the handshake (see shielded)
                    return await connect_shielded(connect, lambda conn: conn.close())
        except RETRYABLE_ERRORS as exc:
            raise BackendUnavailableError(
                "rabbitmq",
                f"could not connect to {self.config.safe_url} within {self.connect_timeout:g}s: "
                f"{self._redact(repr(exc))}",
            ) from exc
        raise AssertionError("unreachable")  # pragma: no cover - tenacity reraises

    def _redact(self, text: str) -> str:
        password = self.config.password
        return text.replace(password, "***") if password else text

    async def _close_connection(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(*RETRYABLE_ERRORS):
                await asyncio.wait_for(self._connection.close(), self.stop_timeout)
        self._connection = None
        self._channel = None

    # -- subscriptions -----------------------------------------------------------------------

    def group_for(self, handler: EventHandler) -> str:
        """The consumer group of ``handler``: its ``subscriber_name``, the bus's group, or its
        qualified name."""
        explicit = getattr(handler, "subscriber_name", None)
        if isinstance(explicit, str) and explicit:
            return explicit
        return self.group or handler_name(handler)

    def subscribe(self, event_type: str, handler: EventHandler) -> None:
        self._register(None if event_type == self.ALL else event_type, handler)

    def subscribe_all(self, handler: EventHandler) -> None:
        self._register(None, handler)

    def unsubscribe(self, event_type: str, handler: EventHandler) -> None:
        """Remove one subscription (a no-op if unknown); the handler gets no further event."""
        key = None if event_type == self.ALL else event_type
        group = self._groups.get(self.group_for(handler))
        bucket = group.handlers.get(key) if group else None
        if group is None or not bucket or handler not in bucket:
            return
        bucket.remove(handler)
        self._after_change(group)

    def _register(self, event_type: str | None, handler: EventHandler) -> None:
        if self._state is BusState.STOPPED:
            raise LifecycleError("RabbitMQEventBus is stopped")
        name = self.group_for(handler)
        group = self._groups.setdefault(name, _Group(name))
        group.handlers.setdefault(event_type, []).append(handler)
        self._after_change(group)

    def _after_change(self, group: _Group) -> None:
        if self._state is BusState.STARTED:
            self._spawn(self._reconcile(group), f"satellites-bus-subscribe-{group.name}")

    async def drain(self) -> None:
        """Until this process's groups have handled what their queues hold (checked twice,
        a beat apart: a delivery may be on the wire). The caller bounds it in time."""
        quiet = 0
        while quiet < 2:
            await asyncio.sleep(0.02)
            groups = [g.consumer for g in self._groups.values() if g.consumer is not None]
            try:
                drained = [await c.drained() for c in groups]
            except _DRAIN_ERRORS:
                return  # no broker: nothing more will arrive before stop
            quiet = quiet + 1 if all(drained) else 0

    async def wait_ready(self) -> None:
        """Wait until every subscription made since start is declared, bound and consuming."""
        while pending := [t for t in self._tasks if not t.done()]:
            await asyncio.wait(pending)
        if self._task_errors:
            raise BackendUnavailableError("rabbitmq", "; ".join(self._task_errors))

    async def _reconcile(self, group: _Group) -> None:
        """Make the group's queues, bindings and consumer match its registered handlers."""
        assert self._connection is not None
        async with group.lock:
            wanted = group.wanted()
            if group.consumer is None:
                if wanted:
                    await self._start_group(group, wanted)
                return
            for event_type in wanted - group.bound:
                await group.consumer.bind(event_type)
            for event_type in group.bound - wanted:
                await group.consumer.unbind(event_type)
            group.bound = wanted
            if not wanted:
                await group.consumer.stop(self.stop_timeout)
                group.consumer = None

    async def _start_group(self, group: _Group, wanted: set[str | None]) -> None:
        assert self._connection is not None
        consumer = GroupConsumer(self._connection, self.config, group.name, group.lookup)
        try:
            await consumer.start(sorted(wanted, key=lambda t: t or ""))
        except BaseException:
            await consumer.stop(self.stop_timeout)
            raise
        group.consumer, group.bound = consumer, wanted

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        error = f"{task.get_name()}: {task.exception()!r}"
        self._task_errors.append(self._redact(error))
        logger.error("background task failed: %s", error, exc_info=task.exception())

    # -- publishing --------------------------------------------------------------------------

    def pending_bindings(self) -> list[asyncio.Task[None]]:
        """The subscription changes still being declared and bound on the broker."""
        return [t for t in self._tasks if not t.done()]

    async def _bindings_settled(self) -> None:
        """Publish-after-subscribe: wait (at most ``publish_timeout``) for the bindings that
        ``subscribe`` started, so an event published after it returned is routed to the new
        group instead of being returned as unroutable. A failed binding is reported by
        :meth:`wait_ready` and health; the publish then goes on and says what the broker says."""
        if pending := self.pending_bindings():
            await asyncio.wait(pending, timeout=self.config.publish_timeout)

    async def publish(self, event: DataEvent) -> None:
        """Publish one event and wait for its confirm; :class:`PublishError` otherwise. An
        application publishing straight to the bus (no log) inside a handler or a span gets
        the envelope an append would (:func:`~satellites_es.envelope.ambient`)."""
        defaults = ambient()
        if defaults is not None:
            (event,) = stamped([event], defaults)
        channel = await self._underlay()
        await self._bindings_settled()
        await self._confirm(channel, event, self._message(event))
        self.published += 1

    async def publish_many(self, events: Iterable[DataEvent], *, window: int | None = None) -> int:
        """Publish ``events`` in order, up to ``window`` confirms outstanding; returns the count.

        Raises :class:`PublishBatchError` on the first failure, with ``confirmed`` = how many
        leading events were confirmed.
        """
        size = max(1, window or _DEFAULT_WINDOW)
        channel = await self._underlay()
        await self._bindings_settled()
        pending: deque[asyncio.Task[None]] = deque()
        confirmed = 0
        try:
            for event in events:
                if len(pending) >= size:
                    await pending.popleft()
                    confirmed += 1
                message = self._message(event)
                pending.append(asyncio.create_task(self._confirm(channel, event, message)))
            while pending:
                await pending.popleft()
                confirmed += 1
        except Exception as exc:
            raise PublishBatchError(
                f"published {confirmed} event(s), then: {exc}", confirmed
            ) from exc
        finally:
            self.published += confirmed
            await _cancel_all(pending)
        return confirmed

    async def require_group(self, group: str) -> None:
        """:class:`ConfigurationError` unless every partition queue of ``group`` exists."""
        channel = await self._require_connection().channel(publisher_confirms=False)
        try:
            for i in range(self.config.partitions):
                await channel.declare_queue(
                    queue_name(self.config.exchange, group, i), passive=True
                )
        except aio_pika.exceptions.ChannelNotFoundEntity as exc:
            raise ConfigurationError(
                "group", f"{group!r} has no queues on exchange {self.config.exchange!r}: start "
                "its subscriber once (it declares them), then replay",
            ) from exc  # fmt: skip
        finally:
            with contextlib.suppress(*RETRYABLE_ERRORS):
                await channel.close()

    async def publish_to_group(self, group: str, events: Iterable[DataEvent]) -> int:
        """Publish ``events`` to ``group``'s partition queues only (by the default exchange),
        the messages the exchange would route; returns how many were confirmed."""
        channel = await self._underlay()
        confirms = []
        for event in events:
            message = self._message(event)
            partition = partition_for(event.resource, event.key, self.config.partitions)
            target = message._replace(
                routing_key=queue_name(self.config.exchange, group, partition)
            )
            confirms.append(asyncio.ensure_future(self._confirm(channel, event, target, "")))
        try:
            for confirm in confirms:
                await confirm
        finally:
            await _cancel_all(confirms)
        self.published += len(confirms)
        return len(confirms)

    async def publisher(self) -> ConfirmPublisher:
        """A :class:`ConfirmPublisher` pinned to the current AMQP channel (for rolling windows)."""
        return ConfirmPublisher(self, await self._underlay())

    async def _underlay(self) -> aiormq.abc.AbstractChannel:
        """The AMQP channel under the robust one, once connected (bounded by publish_timeout)."""
        if self._state is not BusState.STARTED or self._channel is None:
            raise LifecycleError(f"RabbitMQEventBus is {self._state.value}, not started")
        try:
            async with asyncio.timeout(self.config.publish_timeout):
                await self._channel.ready()
                return await self._channel.get_underlay_channel()
        except RETRYABLE_ERRORS as exc:
            raise PublishError(
                f"rabbitmq {self.config.safe_url}: no channel to publish on: {exc!r}"
            ) from exc

    def _message(self, event: DataEvent) -> _Outgoing:
        """Body, properties and routing key of ``event``. The AMQP properties are built
        directly (what ``aio_pika.Message(...).properties`` yields, without its per-attribute
        checks: a fifth of the relay's time per event went there)."""
        partition = partition_for(event.resource, event.key, self.config.partitions)
        headers: dict[str, Any] = {
            "resource": event.resource, "key": event.key, "partition": partition,
            "x-contract-version": CONTRACT_VERSION,
        }  # fmt: skip
        if event.position is not None:
            headers["position"] = event.position
        if event.version is not None:
            headers["version"] = event.version
        headers["schema-version"] = event.schema_version
        metadata = event.metadata
        if metadata is not EMPTY:
            headers.update(envelope_headers(metadata))
        properties = aiormq.spec.Basic.Properties(
            content_type="application/json", headers=headers, delivery_mode=_PERSISTENT,
            message_id=event.id, message_type=event.type, correlation_id=metadata.correlation_id,
        )  # fmt: skip
        return _Outgoing(event.to_json().encode(), properties, routing_key(event.type, partition))

    async def _confirm(self, channel: aiormq.abc.AbstractChannel, event: DataEvent,
                       message: _Outgoing, exchange: str | None = None) -> None:  # fmt: skip
        exchange = self.config.exchange if exchange is None else exchange
        try:
            async with asyncio.timeout(self.config.publish_timeout):
                # wait=False: do not hold the channel lock until the socket drained (the
                # frames are queued in order under the lock; the confirm is what we await)
                result = await channel.basic_publish(
                    message.body, exchange=exchange, routing_key=message.routing_key,
                    properties=message.properties, mandatory=True, wait=False,
                )  # type: ignore[call-arg]  # fmt: skip
        except aiormq.exceptions.PublishError as exc:
            raise UnroutableError(f"{self._what(event, message)} is unroutable: "
                                  "no queue is bound for it") from exc  # fmt: skip
        except ValueError as exc:  # pamqp cannot encode it (a routing key over 255 bytes)
            raise UndeliverableError(f"{self._what(event, message)}: {exc}") from exc
        except aiormq.exceptions.DeliveryError as exc:
            raise PublishError(f"{self._what(event, message)} was nacked by the broker") from exc
        except TimeoutError as exc:
            raise PublishError(f"{self._what(event, message)}: no confirm in "
                               f"{self.config.publish_timeout:g}s") from exc  # fmt: skip
        except RETRYABLE_ERRORS as exc:
            raise PublishError(f"{self._what(event, message)}: connection lost: "
                               f"{self._redact(repr(exc))}") from exc  # fmt: skip
        if not isinstance(result, aiormq.spec.Basic.Ack):
            raise PublishError(f"{self._what(event, message)} was not confirmed: "
                               f"{type(result).__name__}")  # fmt: skip

    def _what(self, event: DataEvent, message: _Outgoing) -> str:
        """How an error names the message (built only when there is an error)."""
        return f"event {event.id} ({event.type}) to {self.config.exchange}/{message.routing_key}"

    # -- dead letters and health ------------------------------------------------------------

    async def dead_letters(self, group: str, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` dead letters of ``group`` (oldest first), left in the queue."""
        return await list_dead_letters(self._require_connection(), self.config, group, limit)

    async def replay_dead_letters(self, group: str, limit: int | None = None) -> int:
        """Republish dead letters of ``group`` to its partitions and remove them from the DLQ."""
        return await replay_dead_letters(self._require_connection(), self.config, group, limit)

    def _require_connection(self) -> AbstractRobustConnection:
        if self._state is not BusState.STARTED or self._connection is None:
            raise LifecycleError(f"RabbitMQEventBus is {self._state.value}, not started")
        return self._connection

    async def health(self) -> dict[str, Any]:
        """Connection state and, per group, the depth of each partition queue and of the DLQ."""
        connected = bool(
            self._connection is not None
            and not self._connection.is_closed
            and self._connection.connected.is_set()
        )
        report: dict[str, Any] = {
            "backend": "rabbitmq", "url": self.config.safe_url, "state": self._state.value,
            "connected": connected, "exchange": self.config.exchange,
            "published": self.published, "errors": list(self._task_errors), "groups": {},
        }  # fmt: skip
        if connected:
            try:
                report["groups"] = await asyncio.wait_for(self._group_health(), 5.0)
            except RETRYABLE_ERRORS as exc:
                report["errors"].append(f"queue depths: {exc!r}")
        return report

    async def _group_health(self) -> dict[str, Any]:
        assert self._connection is not None
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            return {n: await self._one_group_health(channel, g) for n, g in self._groups.items()}
        finally:
            with contextlib.suppress(*RETRYABLE_ERRORS):
                await channel.close()

    async def _one_group_health(self, channel: AbstractChannel, group: _Group) -> dict[str, Any]:
        consumer = group.consumer
        report: dict[str, Any] = {
            "consuming": consumer is not None,
            "dead_lettered": consumer.dead_lettered if consumer else 0,
            "handler_errors": consumer.handler_errors if consumer else 0,
        }
        if consumer is None:
            return report
        underlay = await channel.get_underlay_channel()
        exchange = self.config.exchange
        names = [queue_name(exchange, group.name, i) for i in range(self.config.partitions)]
        depths = {n: (await underlay.queue_declare(n, passive=True)).message_count for n in names}
        dlq = await underlay.queue_declare(dlq_name(self.config.exchange, group.name), passive=True)
        return {**report, "queues": depths, "dlq": dlq.message_count}


class ConfirmPublisher:
    """Publishes events one by one on one pinned AMQP channel, each confirm a future.

    :meth:`send` queues the message at once (in call order, so per-key order is the order of
    the calls) and returns a future that resolves on the broker's ack or raises
    :class:`~satellites_es.errors.PublishError` (nack, unroutable, lost connection, no confirm
    within ``publish_timeout``). The channel is pinned: once the connection drops, every later
    ``send`` fails too instead of going out on a reconnected channel, so a message can never
    overtake one that failed before it. The caller bounds how many are outstanding.
    """

    def __init__(self, bus: RabbitMQEventBus, channel: aiormq.abc.AbstractChannel) -> None:
        self._bus = bus
        self._channel = channel
        self._held: asyncio.Task[None] | None = None

    def send(self, event: DataEvent) -> asyncio.Task[None]:
        message = self._bus._message(event)
        pending = self._bus.pending_bindings()
        if pending or self._held is not None:
            task = asyncio.ensure_future(self._held_send(pending, self._held, event, message))
            self._held = task
            task.add_done_callback(self._release)
        else:
            task = asyncio.ensure_future(self._bus._confirm(self._channel, event, message))
        task.add_done_callback(self._count)
        return task

    async def _held_send(
        self, pending: list[asyncio.Task[None]], previous: asyncio.Task[None] | None,
        event: DataEvent, message: _Outgoing,
    ) -> None:  # fmt: skip
        """A send made while a subscription is being bound waits for that binding (see
        :meth:`RabbitMQEventBus._bindings_settled`), and every later send waits for the one
        before it until the held ones are through, so none overtakes another: per-key order
        holds across the hold. If an earlier held send failed (other than unroutable or
        undeliverable, which the relay moves past) this one fails too rather than go out ahead of its retry."""
        if pending:
            await asyncio.wait(pending, timeout=self._bus.config.publish_timeout)
        if previous is not None:
            try:
                await previous
            except (UnroutableError, UndeliverableError):
                pass  # the relay moves past these (counts or parks them)
            except PublishError as exc:
                raise PublishError(
                    f"{self._bus._what(event, message)} not sent: an earlier one failed"
                ) from exc
        await self._bus._confirm(self._channel, event, message)

    def _release(self, task: asyncio.Task[None]) -> None:
        if self._held is task:
            self._held = None

    def _count(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is None:
            self._bus.published += 1


def envelope_headers(metadata: EventMetadata) -> dict[str, str]:
    """The AMQP headers of an event's metadata (the correlation id is the ``correlation_id``
    property): W3C ``traceparent``/``tracestate`` under their own names, as OpenTelemetry's
    AMQP instrumentations look for them, and each free header as ``h-<name>``."""
    out = {f"h-{name}": value for name, value in metadata.headers.items()}
    for name, header in _METADATA_HEADERS:
        value = getattr(metadata, name)
        if value is not None:
            out[header] = value
    return out


_METADATA_HEADERS = (("causation_id", "causation-id"), ("actor", "actor"),
                     ("traceparent", "traceparent"), ("tracestate", "tracestate"))  # fmt: skip


async def _cancel_all(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel what is still running and collect every outcome (no "never retrieved" noise)."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
