"""Events no subscriber group wants (no queue bound) do not stall the relay."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from satellites_es.config import DataLayerConfig
from satellites_es.errors import PublishError, UnroutableError
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
