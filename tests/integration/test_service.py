"""The service process: a dead background task stops it with its error."""

from __future__ import annotations

import asyncio

import pytest

from satellites_es.config import DataLayerConfig
from satellites_es.errors import BackgroundTaskError
from satellites_es.relay import Relay
from satellites_es.service import ServiceOptions, run_service


async def test_a_dead_relay_stops_the_service_and_says_why(
    config: DataLayerConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def explode(self: Relay) -> None:
        raise RuntimeError("relay exploded")

    monkeypatch.setattr(Relay, "_cycle", explode)
    with pytest.raises(BackgroundTaskError, match="relay exploded"):
        async with asyncio.timeout(30):
            await run_service(config, ServiceOptions(relay=True))


async def test_the_service_stops_when_asked(config: DataLayerConfig) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(config, ServiceOptions(relay=True), stop))
    await asyncio.sleep(1.0)
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, timeout=20)
