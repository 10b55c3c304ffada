"""Replay a range of the log into one subscriber group (``satellites-es replay``).

For a group that lost messages (its queues were deleted, a bug acked events it did not apply)
or a new consumer that wants the past: the events with ``after < position <= until`` (of the
given types) are published, with confirms and in position order, straight to the group's
partition queues through the default exchange. The other groups do not see them again. Each
message is the one the relay sends (same body, headers and partition), so per-key order holds
within the replayed range; events the relay delivers meanwhile are interleaved by partition as
they arrive. Handlers see duplicates where the range overlaps what they had: they are
idempotent by position, as for every redelivery.

The group's queues must exist (its subscriber has run once since they were created): replaying
into nothing would only be refused by the broker one message at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Collection

from ..config import DataLayerConfig
from ..errors import ConfigurationError
from ..store import EventStore
from .rabbitmq import RabbitMQEventBus

__all__ = ["replay_log", "run_replay"]


async def replay_log(
    store: EventStore,
    bus: RabbitMQEventBus,
    group: str,
    *,
    after: int = 0,
    until: int | None = None,
    types: Collection[str] | None = None,
) -> int:
    """Publish the log's ``(after, until]`` (``until``: the head now) to ``group``; returns how
    many events were confirmed."""
    await bus.require_group(group)
    until = await store.sequence() if until is None else until
    past = store.read(after, until=until, types=types or None, read_ahead=True)
    replayed = 0
    async with contextlib.aclosing(past) as batches:
        async for batch in batches:
            replayed += await bus.publish_to_group(group, batch)
    return replayed


async def run_replay(
    config: DataLayerConfig,
    group: str,
    *,
    after: int = 0,
    until: int | None = None,
    types: Collection[str] | None = None,
) -> int:
    """:func:`replay_log` with a data layer of Postgres and RabbitMQ only (and no relay)."""
    from ..facade import DataLayer

    if not config.rabbitmq.enabled:
        raise ConfigurationError("SATELLITES_RABBITMQ_ENABLED", "groups live in RabbitMQ")
    off = {n: dataclasses.replace(getattr(config, n), enabled=False)
           for n in ("redis", "elasticsearch", "faiss", "relay")}  # fmt: skip
    async with DataLayer(config.replace(**off)) as data:
        bus = getattr(data.events, "bus", None)
        assert isinstance(bus, RabbitMQEventBus)
        return await replay_log(data.log, bus, group, after=after, until=until, types=types)
