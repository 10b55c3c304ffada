"""Event buses beyond the in-process one: RabbitMQ, with partitioning and dead letters."""

from __future__ import annotations

from .dlq import DeadLetter
from .partition import partition_for
from .rabbitmq import BusState, PublishBatchError, RabbitMQEventBus

__all__ = [
    "BusState",
    "DeadLetter",
    "PublishBatchError",
    "RabbitMQEventBus",
    "partition_for",
]
