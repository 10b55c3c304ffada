"""Quorum group queues: a consumer process SIGKILLed by one message every time ends with that
message in the dead-letter queue after the delivery limit; existing classic queues are refused
with a clear error.

The module is also the consumer process: ``python -m tests.integration.test_quorum_queues
'<json>'`` subscribes a group, prints ``ready``, prints ``got <key>`` per event, and SIGKILLs
itself when it gets the poison key (before the ack, as a segfaulting handler would).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from satellites_es.bus import RabbitMQEventBus
from satellites_es.bus.partition import partition_for, queue_name
from satellites_es.config import RabbitMQConfig
from satellites_es.errors import ConfigurationError
from satellites_es.events import DataEvent
from tests.contract.support import Recorder, delete_topology, rabbit_config_for

ROOT = Path(__file__).resolve().parents[2]
GROUP = "crashing"
LIMIT = 3


def _rabbit(amqp_url: str, test_id: str) -> RabbitMQConfig:
    return rabbit_config_for(amqp_url, test_id, delivery_limit=LIMIT, partitions=2)


# -- the consumer process ---------------------------------------------------------------------


async def _main(args: dict[str, Any]) -> None:
    bus = RabbitMQEventBus(_rabbit(args["amqp_url"], args["test_id"]))

    async def handler(event: DataEvent) -> None:
        print(f"got {event.key}", flush=True)
        if event.key == args["poison"]:
            os.kill(os.getpid(), signal.SIGKILL)

    handler.subscriber_name = GROUP  # type: ignore[attr-defined]
    bus.subscribe_all(handler)
    await bus.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


# -- the tests --------------------------------------------------------------------------------


@pytest.fixture
async def rabbit(amqp_url: str, test_id: str) -> AsyncIterator[RabbitMQConfig]:
    config = _rabbit(amqp_url, test_id)
    yield config
    await delete_topology(amqp_url, config.exchange, [GROUP, "old"], config.partitions)


async def _run_consumer(amqp_url: str, test_id: str, poison: str, lines: list[str]) -> int | None:
    """One consumer process until it dies or has been idle for a while; its exit code."""
    args = {"amqp_url": amqp_url, "test_id": test_id, "poison": poison}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.test_quorum_queues", json.dumps(args),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    ready = False
    try:
        while True:
            try:  # starting may take long on a busy machine; once it runs, 2 s idle is the end
                line = await asyncio.wait_for(proc.stdout.readline(), 2.0 if ready else 60.0)
            except TimeoutError:
                return None  # alive and idle: nothing more to deliver
            if not line:
                return await proc.wait()
            lines.append(line.decode().strip())
            ready = ready or lines[-1] == "ready"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_message_that_kills_its_consumer_every_time_ends_in_the_dlq(
    rabbit: RabbitMQConfig, amqp_url: str, test_id: str
) -> None:
    poison = "k-poison"
    lines: list[str] = []
    assert await _run_consumer(amqp_url, test_id, poison, lines) is None  # declares the group
    assert lines == ["ready"]
    # the poison shares its partition with nothing else: see README on prefetched neighbours
    others = [f"k{i}" for i in range(40)
              if partition_for("r", f"k{i}", 2) != partition_for("r", poison, 2)]  # fmt: skip
    events = [DataEvent(type="t", resource="r", key=k, payload={}, source="test")
              for k in [others[0], poison, *others[1:]]]  # fmt: skip
    async with RabbitMQEventBus(rabbit) as publisher:
        await publisher.publish_many(events)
    exits = []
    for _ in range(LIMIT + 2):
        code = await _run_consumer(amqp_url, test_id, poison, lines)
        exits.append(code)
        if code is None:
            break
    got = [line.removeprefix("got ") for line in lines if line.startswith("got ")]
    assert got.count(poison) == LIMIT + 1, got  # the first delivery and LIMIT redeliveries
    assert exits[:LIMIT] == [-signal.SIGKILL] * LIMIT and exits[-1] is None, exits
    assert set(got) == {poison, *others}  # the other partition went on
    async with RabbitMQEventBus(rabbit) as bus:
        letters = await bus.dead_letters(GROUP)
    assert [d.event.key for d in letters if d.event] == [poison]
    assert letters[0].error_type == "rabbitmq.delivery_limit"
    assert "delivery limit" in letters[0].error


async def test_queues_of_another_type_are_refused_with_a_clear_error(
    rabbit: RabbitMQConfig, amqp_url: str
) -> None:
    """A group declared before quorum queues became the default (classic queues)."""
    classic = dataclasses.replace(rabbit, queue_type="classic")
    old = Recorder("old")
    async with RabbitMQEventBus(classic) as bus:
        bus.subscribe_all(old)
        await bus.wait_ready()
    bus = RabbitMQEventBus(rabbit)
    bus.subscribe_all(old)
    with pytest.raises(ConfigurationError, match="SATELLITES_RABBITMQ_QUEUE_TYPE") as info:
        await bus.start()
    assert "Migrating group queues" in str(info.value)
    # the classic queue is untouched, and still works for a classic-configured bus
    async with await aio_pika.connect(amqp_url) as conn:
        channel = await conn.channel()
        queue = await channel.declare_queue(queue_name(rabbit.exchange, "old", 0), passive=True)
        assert queue.declaration_result is not None


if __name__ == "__main__":
    asyncio.run(_main(json.loads(sys.argv[1])))
