"""``satellites-es groups``: list the subscriber groups of an exchange, remove one after saying
what it will delete and asking."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import aio_pika
import pytest

from satellites_es.bus.partition import dlq_name, queue_name
from satellites_es.config import DataLayerConfig
from satellites_es.events import DataEvent
from satellites_es.facade import DataLayer

CLI = [sys.executable, "-m", "satellites_es.cli"]


def _cli(args: list[str], env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("SATELLITES_")}
    full.update(env, COLUMNS="200")
    return subprocess.run([*CLI, *args], env=full, input=stdin, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


async def _make_group(config: DataLayerConfig, group: str) -> None:
    async def handler(event: DataEvent) -> None:
        return None

    handler.subscriber_name = group  # type: ignore[attr-defined]
    async with DataLayer(config) as data:
        data.events.subscribe_all(handler)
        await data.subscriptions_ready()


async def _exists(url: str, name: str) -> bool:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        try:
            await channel.declare_queue(name, passive=True)
            return True
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return False
    finally:
        await connection.close()


@pytest.mark.skipif(not __import__("shutil").which("rabbitmqctl"), reason="no rabbitmqctl here")
def test_groups_list_shows_a_group_with_its_queues(
    config: DataLayerConfig, config_env: dict[str, str]
) -> None:
    asyncio.run(_make_group(config, "listed-group"))
    result = _cli(["groups", "list"], config_env)
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = [line for line in result.stdout.splitlines() if "listed-group" in line]
    assert f"│ {config.rabbitmq.partitions + 1} " in line  # its partition queues and its DLQ


def test_groups_remove_says_what_it_deletes_asks_and_deletes_only_that(
    config: DataLayerConfig, config_env: dict[str, str], amqp_url: str
) -> None:
    asyncio.run(_make_group(config, "old-group"))
    asyncio.run(_make_group(config, "kept-group"))
    exchange = config.rabbitmq.exchange
    names = [queue_name(exchange, "old-group", i) for i in range(config.rabbitmq.partitions)]
    names.append(dlq_name(exchange, "old-group"))

    refused = _cli(["groups", "remove", "old-group"], config_env, stdin="n\n")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert all(n in refused.stdout for n in names)  # it said what it would delete
    assert "nothing deleted" in refused.stderr
    assert all(asyncio.run(_exists(amqp_url, n)) for n in names)

    done = _cli(["groups", "remove", "old-group", "--yes"], config_env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"deleted {len(names)} queue(s)" in done.stdout
    assert not any(asyncio.run(_exists(amqp_url, n)) for n in names)
    assert asyncio.run(_exists(amqp_url, queue_name(exchange, "kept-group", 0)))

    again = _cli(["groups", "remove", "old-group", "--yes"], config_env)
    assert again.returncode == 2 and "no group 'old-group'" in again.stderr
