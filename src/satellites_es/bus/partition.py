"""Key → partition hashing and the names of the exchange's routing keys and queues.

Per-key order with competing consumers rests on one rule: every event of a stream
``(resource, key)`` goes to the same partition, and each partition queue has a single active
consumer. The partition is ``crc32(resource + "\\x1f" + key) % partitions``: CRC-32 is stable
across processes, machines and Python versions (unlike ``hash()``, which is salted per process),
so a relay and every consumer agree on it without talking to each other. ``partitions`` must be
the same for every publisher and consumer of one exchange (``RabbitMQConfig.partitions``);
changing it re-maps keys, so drain the queues first.

Routing: the exchange is a topic exchange and the routing key is ``p{partition}.{event type}``
(``p2.user.created``). A consumer group binds each of its partition queues ``p{i}`` with
``p{i}.{type}`` for :meth:`subscribe` and ``p{i}.#`` for :meth:`subscribe_all`; a plain AMQP
client that wants one type from every partition binds ``*.{type}``.
"""

from __future__ import annotations

import re
import zlib

__all__ = [
    "binding_key",
    "dlq_name",
    "group_slug",
    "partition_for",
    "queue_name",
    "routing_key",
]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]+")
_MAX_GROUP = 120  # queue names are at most 255 bytes; leave room for the exchange and suffix


def partition_for(resource: str, key: str, partitions: int) -> int:
    """The partition of the stream ``(resource, key)``; stable across processes."""
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    return zlib.crc32(f"{resource}\x1f{key}".encode()) % partitions


def routing_key(event_type: str, partition: int) -> str:
    return f"p{partition}.{event_type}"


def binding_key(event_type: str | None, partition: int) -> str:
    """The binding of partition queue ``partition`` for one type, or every type (``None``)."""
    return f"p{partition}.#" if event_type is None else f"p{partition}.{event_type}"


def group_slug(group: str) -> str:
    """``group`` made safe and short enough for a queue name (a hash keeps long names unique)."""
    slug = _UNSAFE.sub("_", group).strip("_") or "group"
    if len(slug) <= _MAX_GROUP and slug == group:
        return slug
    digest = f"{zlib.crc32(group.encode()):08x}"
    return f"{slug[: _MAX_GROUP - 9]}-{digest}"


def queue_name(exchange: str, group: str, partition: int) -> str:
    return f"{exchange}.{group_slug(group)}.p{partition}"


def dlq_name(exchange: str, group: str) -> str:
    return f"{exchange}.{group_slug(group)}.dlq"
