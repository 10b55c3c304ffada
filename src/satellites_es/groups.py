"""Subscriber-group housekeeping on RabbitMQ: which groups an exchange has, and removing one.

A group owns ``{exchange}.{group}.p0 .. p{N-1}`` and ``{exchange}.{group}.dlq`` (names from
:mod:`satellites_es.bus.partition`). A group that is gone from the code keeps its queues, which
go on collecting every event the exchange routes to them; ``satellites-es groups remove``
deletes them after saying what it will delete.

* :func:`describe_group` and :func:`remove_group` speak AMQP only: passive declares (which
  never create anything) find the queues and their depths; ``queue.delete`` removes them.
  Partition queues past the configured ``partitions`` are found too (a group declared when the
  exchange had more partitions), by probing upward until one is missing.
* :func:`list_groups` needs a listing of queues, which AMQP does not offer: it runs
  ``rabbitmqctl list_queues`` (on the broker's host, or wherever ``rabbitmqctl`` reaches it).
"""

from __future__ import annotations

import asyncio
import re
import shutil
from dataclasses import dataclass, field

import aio_pika
from aio_pika.abc import AbstractConnection

from .bus.partition import dlq_name, queue_name
from .config import RabbitMQConfig
from .errors import BackendUnavailableError, ConfigurationError

__all__ = ["Group", "describe_group", "list_groups", "remove_group"]

#: Beyond the configured partitions, how many more to probe for leftovers.
_MAX_PARTITIONS = 1024


@dataclass
class Group:
    name: str
    queues: list[str] = field(default_factory=list)
    messages: int = 0  # waiting in the partition queues
    consumers: int = 0
    dead_letters: int = 0


async def _connect(config: RabbitMQConfig) -> AbstractConnection:
    try:
        return await aio_pika.connect(config.url, timeout=config.publish_timeout)
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
        raise BackendUnavailableError("rabbitmq", f"{config.safe_url}: {exc}") from exc


async def _depth(connection: AbstractConnection, name: str) -> tuple[int, int] | None:
    """(messages, consumers) of queue ``name``, or None if it does not exist. A failed passive
    declare closes its channel, hence one channel per probe."""
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return None
    try:
        result = queue.declaration_result
        return int(result.message_count or 0), int(result.consumer_count or 0)
    finally:
        await channel.close()


async def describe_group(config: RabbitMQConfig, group: str) -> Group:
    """The queues group ``group`` has on the exchange, with their depths."""
    if not group.strip():
        raise ConfigurationError("GROUP", "must not be empty")
    connection = await _connect(config)
    found = Group(group)
    try:
        for partition in range(_MAX_PARTITIONS):
            name = queue_name(config.exchange, group, partition)
            depth = await _depth(connection, name)
            if depth is None:
                if partition >= config.partitions:
                    break
                continue
            found.queues.append(name)
            found.messages += depth[0]
            found.consumers += depth[1]
        dlq = await _depth(connection, dlq_name(config.exchange, group))
        if dlq is not None:
            found.queues.append(dlq_name(config.exchange, group))
            found.dead_letters = dlq[0]
    except aio_pika.exceptions.AMQPError as exc:
        raise BackendUnavailableError("rabbitmq", f"describing group {group!r}: {exc}") from exc
    finally:
        await connection.close()
    if not found.queues:
        raise ConfigurationError(
            "GROUP", f"no group {group!r} on exchange {config.exchange!r} (no queue "
                     f"{queue_name(config.exchange, group, 0)} or {dlq_name(config.exchange, group)})"
        )  # fmt: skip
    return found


async def remove_group(config: RabbitMQConfig, group: Group) -> int:
    """Delete the queues :func:`describe_group` found (their messages with them)."""
    connection = await _connect(config)
    deleted = 0
    try:
        for name in group.queues:
            channel = await connection.channel()
            try:
                await channel.queue_delete(name)
                deleted += 1
            except aio_pika.exceptions.ChannelNotFoundEntity:
                pass  # removed meanwhile
            finally:
                if not channel.is_closed:
                    await channel.close()
    except aio_pika.exceptions.AMQPError as exc:
        raise BackendUnavailableError("rabbitmq", f"removing group {group.name!r}: {exc}") from exc
    finally:
        await connection.close()
    return deleted


async def list_groups(config: RabbitMQConfig) -> list[Group]:
    """Every group with queues on the exchange, from ``rabbitmqctl list_queues``."""
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        raise ConfigurationError(
            "rabbitmqctl", "listing groups needs rabbitmqctl on PATH (AMQP cannot list queues); "
                           "'groups remove GROUP' works without it"
        )  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        tool, "-q", "list_queues", "-p", config.vhost, "name", "messages", "consumers",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(config.publish_timeout * 3):
            out, err = await process.communicate()
    except TimeoutError as exc:
        process.kill()
        raise BackendUnavailableError("rabbitmq", "rabbitmqctl list_queues did not answer") from exc
    if process.returncode != 0:
        reason = " ".join(err.decode(errors="replace").split())
        raise BackendUnavailableError("rabbitmq", f"rabbitmqctl list_queues failed: {reason}")
    return _groups(config.exchange, out.decode(errors="replace"))


def _groups(exchange: str, listing: str) -> list[Group]:
    """Groups from ``name messages consumers`` lines: ``{exchange}.{slug}.p{i}|dlq``."""
    pattern = re.compile(rf"^{re.escape(exchange)}\.(?P<slug>.+)\.(?P<part>p\d+|dlq)$")
    groups: dict[str, Group] = {}
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) != 3 or not parts[1].isdigit():
            continue  # the header, or a line of another shape
        match = pattern.match(parts[0])
        if match is None:
            continue
        group = groups.setdefault(match["slug"], Group(match["slug"]))
        group.queues.append(parts[0])
        if match["part"] == "dlq":
            group.dead_letters += int(parts[1])
        else:
            group.messages += int(parts[1])
            group.consumers += int(parts[2])
    return [groups[name] for name in sorted(groups)]
