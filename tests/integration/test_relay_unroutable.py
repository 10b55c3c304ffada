"""Events no subscriber group wants (no queue bound) do not stall the relay; a late subscriber
that waits until it is bound misses none."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from satellites_es.config import DataLayerConfig
from satellites_es.errors import LifecycleError, PublishError, UnroutableError
from satellites_es.events import DataEvent
from satellites_es.facade import DataLayer


async def test_relay_moves_past_events_nobody_subscribed_to(config: DataLayerConfig) -> None:
    cfg = config.replace(faiss=dataclasses.replace(config.faiss, enabled=False))
    async with DataLayer(cfg) as data:
        appended = await data.log.append(
            [DataEvent(type="nobody.listens", resource="r", key=f"k{i}", payload={}, source="t")
             for i in range(50)]
        )  # fmt: skip
        async with asyncio.timeout(20):
            while (metrics := (await data.health()).details["relay"].details)[
                "cursor"
            ] < appended.last_position:
                await asyncio.sleep(0.1)
        assert metrics["unroutable"] == 50 and metrics["lag"] == 0
        health = await data.health()
        assert health.ok, health.to_dict()
        # the bus's own publish still says so: mandatory, never silent
        with pytest.raises(UnroutableError) as info:
            await data.events.bus.publish(  # type: ignore[attr-defined]
                DataEvent(type="nobody.listens", resource="r", key="x", payload={}, source="t")
            )
        assert isinstance(info.value, PublishError)


async def test_a_subscription_made_after_start_sees_every_event_once_ready(
    config: DataLayerConfig,
) -> None:
    """subscribe() after start binds in the background; subscriptions_ready() awaits it, so no
    event produced afterwards is unroutable for the new group (the demo's race)."""
    cfg = config.replace(faiss=dataclasses.replace(config.faiss, enabled=False))
    async with DataLayer(cfg) as data:
        seen: list[str] = []

        async def late(event: DataEvent) -> None:
            seen.append(event.key)

        late.subscriber_name = "late-subscriber"  # type: ignore[attr-defined]
        data.events.subscribe_all(late)
        await data.subscriptions_ready()
        appended = await data.log.append(
            [DataEvent(type="late.seen", resource="r", key=f"k{i}", payload={}, source="t")
             for i in range(200)]
        )  # fmt: skip
        async with asyncio.timeout(20):
            while len(seen) < 200:
                await asyncio.sleep(0.02)
        relay = (await data.health()).details["relay"].details
        assert relay["unroutable"] == 0
        assert relay["cursor"] == appended.last_position
        assert sorted(seen) == sorted(f"k{i}" for i in range(200))


async def test_subscriptions_ready_needs_a_started_layer(config: DataLayerConfig) -> None:
    data = DataLayer(config.replace(faiss=dataclasses.replace(config.faiss, enabled=False)))
    with pytest.raises(LifecycleError):
        await data.subscriptions_ready()
