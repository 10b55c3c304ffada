"""Dead letters: list a group's dead-letter queue, and replay it into the group's partitions.

A dead letter is the original message (body = the event's JSON, its original headers) plus the
headers the consumer added: ``x-error``, ``x-error-type``, ``x-attempts``,
``x-original-routing-key``, ``x-group``; or, when a quorum queue dead-lettered it over its
delivery limit (its consumer died on it every time), the broker's ``x-death`` and
``x-first-death-reason = delivery_limit``, listed as error type ``rabbitmq.delivery_limit``. Listing peeks: it takes messages without acking them on
a channel of its own and closes that channel, which puts them back where they were. Replaying
publishes each dead letter, with confirms, straight to the partition queue of *that group* (by
the default exchange, so the other groups do not see it twice) and acks it in the DLQ only after
the confirm; a crash in between leaves a copy in both places, never none.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from ..config import RabbitMQConfig
from ..errors import InvalidEventError
from ..events import DataEvent
from .partition import dlq_name, partition_for, queue_name

__all__ = ["DeadLetter", "list_dead_letters", "replay_dead_letters"]

_DLQ_HEADERS = (
    "x-error", "x-error-type", "x-attempts", "x-original-routing-key", "x-group",
    # what the broker adds when a quorum queue dead-letters over its delivery limit
    "x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
    "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason", "x-delivery-count",
)  # fmt: skip


@dataclass(frozen=True)
class DeadLetter:
    """A message that failed every attempt, with the error of its last attempt."""

    event: DataEvent | None  # None when the body was not a valid event
    body: bytes
    error: str
    error_type: str
    attempts: int
    group: str
    routing_key: str
    message_id: str | None


async def list_dead_letters(
    connection: AbstractRobustConnection, config: RabbitMQConfig, group: str, limit: int
) -> list[DeadLetter]:
    """Up to ``limit`` dead letters of ``group``, oldest first; the queue is left as it was."""
    async with _channel(connection, confirms=False) as channel:
        queue = await _dlq(channel, config, group)
        if queue is None:
            return []
        letters: list[DeadLetter] = []
        while len(letters) < limit:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            letters.append(_to_dead_letter(message, group))
        return letters  # closing the channel requeues them in place


async def replay_dead_letters(
    connection: AbstractRobustConnection,
    config: RabbitMQConfig,
    group: str,
    limit: int | None,
) -> int:
    """Republish up to ``limit`` (default: all present now) dead letters; returns how many."""
    async with _channel(connection, confirms=True) as channel:
        queue = await _dlq(channel, config, group)
        if queue is None:
            return 0
        present = queue.declaration_result.message_count or 0
        budget = present if limit is None else min(limit, present)
        replayed = 0
        while replayed < budget:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            await _republish(channel, config, group, message)
            await message.ack()
            replayed += 1
        return replayed


async def _republish(
    channel: AbstractChannel, config: RabbitMQConfig, group: str, message: AbstractIncomingMessage
) -> None:
    headers: dict[str, Any] = {
        k: v for k, v in (message.headers or {}).items() if k not in _DLQ_HEADERS
    }
    headers["x-replayed"] = _int(headers.get("x-replayed")) + 1
    partition = _partition(message, config)
    async with asyncio.timeout(config.publish_timeout):
        await channel.default_exchange.publish(
            aio_pika.Message(
                message.body,
                headers=headers,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message.message_id,
                content_type=message.content_type,
                correlation_id=message.correlation_id,
                type=message.type,
            ),
            routing_key=queue_name(config.exchange, group, partition),
            mandatory=True,
        )


def _partition(message: AbstractIncomingMessage, config: RabbitMQConfig) -> int:
    headers = message.headers or {}
    resource, key = headers.get("resource"), headers.get("key")
    if isinstance(resource, str) and isinstance(key, str):
        return partition_for(resource, key, config.partitions)
    with contextlib.suppress(InvalidEventError):
        event = DataEvent.from_json(message.body)
        return partition_for(event.resource, event.key, config.partitions)
    return 0  # not an event at all: any partition will dead-letter it again


def _to_dead_letter(message: AbstractIncomingMessage, group: str) -> DeadLetter:
    headers = message.headers or {}
    try:
        event: DataEvent | None = DataEvent.from_json(message.body)
    except InvalidEventError:
        event = None
    error, error_type = str(headers.get("x-error", "")), str(headers.get("x-error-type", ""))
    reason = headers.get("x-first-death-reason")
    if not error_type and reason is not None:  # dead-lettered by the broker, not by a consumer
        reason = reason.decode() if isinstance(reason, bytes) else str(reason)
        error_type = f"rabbitmq.{reason}"
        error = (
            "over the queue's delivery limit: its consumer never acked it (it crashed or "
            "lost its connection on every delivery)"
            if reason == "delivery_limit"
            else f"dead-lettered by the broker: {reason}"
        )
    return DeadLetter(
        event=event,
        body=message.body,
        error=error,
        error_type=error_type,
        attempts=_int(headers.get("x-attempts")),
        group=str(headers.get("x-group", group)),
        routing_key=str(headers.get("x-original-routing-key", "")),
        message_id=message.message_id,
    )


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError):
        return 0


async def _dlq(
    channel: AbstractChannel, config: RabbitMQConfig, group: str
) -> AbstractQueue | None:
    try:
        return await channel.declare_queue(dlq_name(config.exchange, group), passive=True)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return None  # the group never consumed: no dead letters


@contextlib.asynccontextmanager
async def _channel(
    connection: AbstractRobustConnection, *, confirms: bool
) -> AsyncIterator[AbstractChannel]:
    channel = await connection.channel(publisher_confirms=confirms, on_return_raises=confirms)
    try:
        yield channel
    finally:
        if not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()
