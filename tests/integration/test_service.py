"""The service process: a failing part is restarted; one that cannot be (a configuration error) stops it with its error."""

from __future__ import annotations

import asyncio
import socket

import pytest

from satellites_es.config import DataLayerConfig
from satellites_es.errors import BackgroundTaskError, ConfigurationError
from satellites_es.relay import Relay
from satellites_es.service_runner import ServiceOptions, run_service
from satellites_es.testing.services import free_port
from tests.contract.support import cancelled_midway


async def test_a_failing_relay_is_restarted_and_reported_not_fatal(
    config: DataLayerConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the relay (any error but a configuration one) restarts it with backoff; the
    service keeps running and health names the error (issue 12: one part failing does not
    stop the others)."""
    calls = 0
    original = Relay._cycle

    async def explode_twice(self: Relay) -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError("relay exploded")
        await original(self)

    monkeypatch.setattr(Relay, "_cycle", explode_twice)
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(config, ServiceOptions(relay=True), stop))
    async with asyncio.timeout(20):
        while calls < 3:
            assert not task.done()
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, timeout=20)


async def test_a_relay_with_a_configuration_error_stops_the_service_and_says_why(
    config: DataLayerConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def misconfigured(self: Relay) -> None:
        raise ConfigurationError("SATELLITES_RELAY_NAME", "relay misconfigured")

    monkeypatch.setattr(Relay, "_cycle", misconfigured)
    with pytest.raises(BackgroundTaskError, match="relay misconfigured"):
        async with asyncio.timeout(30):
            await run_service(config, ServiceOptions(relay=True))


async def test_the_service_stops_when_asked(config: DataLayerConfig) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(config, ServiceOptions(relay=True), stop))
    await asyncio.sleep(1.0)
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, timeout=20)


async def test_a_service_cancelled_at_any_point_leaves_nothing_running_or_open(
    config: DataLayerConfig,
) -> None:
    """``run_service`` awaited by a task that is cancelled (an embedding application's own
    shutdown), anywhere from the first connect to serving with a projection and the HTTP
    endpoint: it stops its parts before the layer's clients close, and leaves no task running,
    no connection open and nothing logged as an unretrieved error."""
    options = ServiceOptions(
        relay=True, projections=("entities",), http_port=free_port(), poll_interval=0.1
    )

    async def attempt() -> None:
        await run_service(config, options, asyncio.Event())

    cancelled, errors = await cancelled_midway(attempt, times=30, longest=1.0)
    assert cancelled == 30  # it serves until stopped: every attempt ends by its cancel
    assert errors == []


async def test_a_taken_http_port_fails_the_service_and_leaves_nothing_running(
    config: DataLayerConfig,
) -> None:
    """The health endpoint cannot listen (its port is taken) once the projectors have started:
    the service fails with the OS's error, and stops its projectors before the layer closes."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    options = ServiceOptions(
        relay=True, projections=("entities",), http_port=taken.getsockname()[1],
        poll_interval=0.1,
    )  # fmt: skip
    before = asyncio.all_tasks()
    try:
        with pytest.raises(OSError):
            await run_service(config, options, asyncio.Event())
    finally:
        taken.close()
    await asyncio.sleep(0.5)
    assert [t.get_name() for t in asyncio.all_tasks() - before - {asyncio.current_task()}] == []
