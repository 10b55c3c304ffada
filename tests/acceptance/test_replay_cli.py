"""``satellites-es replay``: a group whose queues were deleted and recreated gets the log again."""

from __future__ import annotations

import asyncio
import dataclasses

import aio_pika

from satellites_es.bus.partition import dlq_name, queue_name
from satellites_es.config import DataLayerConfig
from satellites_es.events import DataEvent
from satellites_es.facade import DataLayer
from tests.acceptance.conftest import run_cli
from tests.contract.support import IdempotentSink, assert_per_key_order, eventually

GROUP = "replay-target"


def _env(config_env: dict[str, str]) -> dict[str, str]:
    return {**config_env, "SATELLITES_ELASTICSEARCH_ENABLED": "false",
            "SATELLITES_FAISS_ENABLED": "false"}  # fmt: skip


async def _delete_group(amqp_url: str, config: DataLayerConfig) -> None:
    rabbit = config.rabbitmq
    names = [queue_name(rabbit.exchange, GROUP, i) for i in range(rabbit.partitions)]
    async with await aio_pika.connect(amqp_url) as conn:
        channel = await conn.channel()
        for name in [*names, dlq_name(rabbit.exchange, GROUP)]:
            await channel.queue_delete(name)


async def test_replay_refills_a_group_that_was_deleted_and_recreated(
    config_env: dict[str, str], amqp_url: str
) -> None:
    env = _env(config_env)
    config = DataLayerConfig.from_env(env)
    first = IdempotentSink(GROUP)
    async with DataLayer(config) as data:
        data.events.subscribe_all(first)
        await data.subscriptions_ready()
        appended = await data.log.append(
            [DataEvent(type=f"t{i % 3}", resource="r", key=f"k{i % 17}", payload={"i": i},
                       source="test") for i in range(500)]
        )  # fmt: skip
        await eventually(lambda: len(first.applied) == 500, timeout=30)
    await _delete_group(amqp_url, config)  # the group lost everything

    no_relay = config.replace(relay=dataclasses.replace(config.relay, enabled=False))
    again = IdempotentSink(GROUP)
    async with DataLayer(no_relay) as data:
        data.events.subscribe_all(again)  # recreates the group's queues, empty
        await data.subscriptions_ready()
        result = await asyncio.to_thread(run_cli, ["replay", GROUP, "--after", "0"], env, 120)
        assert result.returncode == 0, result.stderr
        assert "replayed 500 event(s)" in result.stdout
        await eventually(lambda: len(again.applied) == 500, timeout=30)
        partial = await asyncio.to_thread(
            run_cli, ["replay", GROUP, "--after", "450", "--type", "t1"], env, 120
        )
        assert partial.returncode == 0, partial.stderr
        wanted = [e for e in appended.events if e.position > 450 and e.type == "t1"]
        assert f"replayed {len(wanted)} event(s)" in partial.stdout
        await eventually(lambda: len(again.deliveries) == 500 + len(wanted), timeout=30)
    assert set(again.applied) == {e.position for e in appended.events}
    assert_per_key_order(again.deliveries)
    assert sorted(e.id for e in again.deliveries[500:]) == sorted(e.id for e in wanted)


def test_replay_into_a_group_without_queues_is_a_clear_error(config_env: dict[str, str]) -> None:
    result = run_cli(["replay", "nobody-here"], _env(config_env), 120)
    assert result.returncode == 2  # naming a group that does not exist: a usage error
    assert "has no queues" in result.stderr and len(result.stderr.strip().splitlines()) == 1
