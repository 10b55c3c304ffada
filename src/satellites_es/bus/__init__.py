"""Event buses beyond the in-process one: RabbitMQ, with partitioning and dead letters
(:mod:`.rabbitmq`), catch-up subscriptions that start in the log's past (:mod:`.catchup`), and
the bus the façade hands out when the log is on, whose ``publish`` appends to the log, the
outbox (:mod:`.outbox`)."""

from __future__ import annotations

from .catchup import CatchUp, Start
from .dlq import DeadLetter
from .partition import partition_for
from .rabbitmq import BusState, PublishBatchError, RabbitMQEventBus

__all__ = [
    "BusState",
    "CatchUp",
    "DeadLetter",
    "PublishBatchError",
    "RabbitMQEventBus",
    "Start",
    "partition_for",
]
