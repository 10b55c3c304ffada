"""Catch-up subscriptions: ``start="earliest"`` or a position, then live, with no gap."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from satellites_es.bus.outbox import DurableEventBus
from satellites_es.config import DataLayerConfig
from satellites_es.errors import ConfigurationError
from satellites_es.events import DataEvent
from satellites_es.facade import DataLayer
from tests.contract.support import IdempotentSink, assert_per_key_order, eventually

KEYS = 37


def _events(start: int, n: int, kind: str = "doc.changed") -> list[DataEvent]:
    return [
        DataEvent(type=kind, resource="docs", key=f"k{i % KEYS}", payload={"n": i}, source="t")
        for i in range(start, start + n)
    ]


def _layer_config(config: DataLayerConfig, bus: str) -> DataLayerConfig:
    cfg = config.replace(faiss=dataclasses.replace(config.faiss, enabled=False))
    if bus == "in-process":
        cfg = cfg.replace(rabbitmq=dataclasses.replace(cfg.rabbitmq, enabled=False))
    return cfg


def _durable(data: DataLayer) -> DurableEventBus:
    events = data.events
    assert isinstance(events, DurableEventBus)
    return events


@pytest.mark.parametrize("bus", ["rabbitmq", "in-process"])
async def test_earliest_while_appending_gets_everything_in_key_order_then_live(
    config: DataLayerConfig, bus: str
) -> None:
    async with DataLayer(_layer_config(config, bus)) as data:
        events = _durable(data)

        some_in = asyncio.Event()

        async def produce() -> None:
            for start in range(0, 5000, 100):
                await data.log.append(_events(start, 100))
                if start >= 1000:
                    some_in.set()
                await asyncio.sleep(0.002)

        producer = asyncio.create_task(produce())
        await some_in.wait()  # some are in the log already, more are coming
        sink = IdempotentSink(f"catchup-earliest-{bus}")
        events.subscribe("doc.changed", sink, start="earliest")
        await producer
        head = await data.log.head()
        await eventually(lambda: len(sink.applied) >= 5000, timeout=60)
        (catchup,) = events.catchups
        assert catchup.high is not None and 0 < catchup.high <= head
        assert catchup.delivered > 0, "the subscription started after some events were in"
        live = await data.log.append(_events(5000, 50))
        await eventually(lambda: len(sink.applied) == 5050, timeout=30)
    assert set(sink.applied) == set(range(1, live.last_position + 1))  # no gap
    assert_per_key_order(sink.deliveries)
    # the seam's duplicates are removed by position: each event was handed over once
    assert sink.duplicates == set()


async def test_from_position_n_gets_exactly_the_events_after_n(config: DataLayerConfig) -> None:
    async with DataLayer(_layer_config(config, "rabbitmq")) as data:
        events = _durable(data)
        first = await data.log.append(_events(0, 300))
        n = first.events[149].position
        assert n is not None
        sink = IdempotentSink("catchup-from-n")
        events.subscribe_all(sink, start=n)
        await events.caught_up()
        later = await data.log.append(_events(300, 40, kind="doc.other"))
        await eventually(lambda: len(sink.applied) == 190, timeout=30)
        await asyncio.sleep(0.3)  # nothing more comes
    positions = [e.position for e in sink.deliveries]
    # the catch-up part in position order, then the live part (in order per key only: it comes
    # through several partitions), each event once and nothing at or below n
    assert positions[:150] == list(range(n + 1, n + 151))
    assert sorted(positions[150:]) == list(range(n + 151, later.last_position + 1))
    assert_per_key_order(sink.deliveries)


async def test_a_start_that_is_no_position_is_refused(config: DataLayerConfig) -> None:
    async with DataLayer(_layer_config(config, "in-process")) as data:
        sink = IdempotentSink("catchup-bad")
        with pytest.raises(ConfigurationError, match="start"):
            _durable(data).subscribe("x", sink, start=-1)
        with pytest.raises(ConfigurationError, match="start"):
            _durable(data).subscribe("x", sink, start="beginning")  # type: ignore[arg-type]
