"""The façade on the real services: lifecycle, health, failures and secrets."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import asyncpg
import pytest

from satellites_es.config import DataLayerConfig
from satellites_es.errors import BackendUnavailableError, LifecycleError
from satellites_es.events import DataEvent
from satellites_es.facade import DataLayer, LayerState
from satellites_es.testing.services import free_port
from tests.contract.support import cancelled_midway


def _without(config: DataLayerConfig, *names: str) -> DataLayerConfig:
    return config.replace(
        **{n: dataclasses.replace(getattr(config, n), enabled=False) for n in names}
    )


async def test_start_health_native_clients_stop(config_with_es: DataLayerConfig) -> None:
    async with DataLayer(config_with_es) as data:
        assert data.state is LayerState.RUNNING
        health = await data.health()
        assert health.ok, health.to_dict()
        assert set(health.details) == {
            "postgres", "redis", "elasticsearch", "faiss", "rabbitmq", "relay",
        }  # fmt: skip
        for name, h in health.details.items():
            assert h.status == "ok", (name, h)
            assert h.latency_ms is not None and h.latency_ms >= 0
        assert health.details["elasticsearch"].details["version"].startswith("8.")
        # the native clients, as the seed shows them
        prefix = config_with_es.redis.key_prefix
        await data.redis.set(f"{prefix}session:1", b"user")
        assert await data.redis.get(f"{prefix}session:1") == b"user"
        assert await data.postgres.fetchval("SELECT 40 + 2") == 42
        info = await data.elasticsearch.info()
        assert info["version"]["number"].startswith("8.")
        await data.vectors.upsert("embeddings", "doc-1", [1.0] * 8, {"source": "test"})
        matches = await data.vectors.query("embeddings", [1.0] * 8, top_k=1)
        assert matches[0].id == "doc-1" and matches[0].metadata == {"source": "test"}
    assert data.state is LayerState.STOPPED


async def test_start_twice_and_use_after_stop_are_clear_errors(config: DataLayerConfig) -> None:
    data = DataLayer(_without(config, "rabbitmq", "faiss"))
    with pytest.raises(LifecycleError, match="start"):
        _ = data.redis
    await data.start()
    try:
        with pytest.raises(LifecycleError, match="once"):
            await data.start()
    finally:
        await data.stop()
    await data.stop()  # idempotent
    with pytest.raises(LifecycleError, match="stopped"):
        _ = data.postgres
    with pytest.raises(LifecycleError):
        _ = data.events
    with pytest.raises(LifecycleError, match="once"):
        await data.start()


async def test_disabled_backend_is_reported_and_refused(config: DataLayerConfig) -> None:
    async with DataLayer(_without(config, "elasticsearch", "rabbitmq", "faiss")) as data:
        health = await data.health()
        assert health.ok
        assert health.details["elasticsearch"].status == "disabled"
        assert health.details["rabbitmq"].status == "disabled"
        with pytest.raises(LifecycleError, match="disabled"):
            _ = data.elasticsearch


async def _our_pg_connections(url: str, app_name: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app_name
            )
        )
    finally:
        await conn.close()


async def test_unreachable_backend_fails_bounded_named_and_leaks_nothing(
    config: DataLayerConfig, postgres_url: str, test_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    closed = free_port()
    cfg = config.replace(
        redis=dataclasses.replace(config.redis, port=closed, password="hunter2-secret"),
        postgres=dataclasses.replace(config.postgres, application_name=test_id),
        connect_timeout=1.5,
    )
    caplog.set_level(logging.DEBUG)
    data = DataLayer(cfg)
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError) as info:
        await data.start()
    elapsed = time.monotonic() - started
    assert info.value.backend == "redis"
    assert str(closed) in str(info.value) or "redis" in str(info.value)
    assert elapsed < cfg.connect_timeout + 3.0
    assert data.state is LayerState.STOPPED
    # the backends that did connect were closed again
    assert await _our_pg_connections(postgres_url, test_id) == 0
    assert "hunter2-secret" not in str(info.value) + caplog.text


async def test_health_of_a_layer_not_started_never_raises(config: DataLayerConfig) -> None:
    data = DataLayer(_without(config, "rabbitmq"))
    health = await data.health()
    assert not health.ok
    assert health.details["postgres"].status == "down"


async def test_publish_through_the_seed_api(config: DataLayerConfig) -> None:
    cfg = _without(config, "rabbitmq", "elasticsearch", "faiss")
    async with DataLayer(cfg) as data:
        seen: list[str] = []

        async def on_document_indexed(event: DataEvent) -> None:
            seen.append(event.key)

        data.events.subscribe("document.indexed", on_document_indexed)
        await data.events.publish(
            DataEvent(
                type="document.indexed",
                resource="documents",
                key="doc-9",
                payload={"text": "..."},
                source="elasticsearch",
            )
        )
        # durable: the event is in the log, and the relay delivers it to the subscriber
        assert await data.log.head() == 1
        async with asyncio.timeout(10):
            while not seen:
                await asyncio.sleep(0.02)
        assert seen == ["doc-9"]


@pytest.mark.es
async def test_a_start_or_stop_cancelled_at_any_point_leaves_nothing_running_or_open(
    config_with_es: DataLayerConfig,
) -> None:
    """A layer whose ``start()`` or ``stop()`` is cancelled, anywhere from the first connect to
    the last close (a timeout around it, Ctrl-C in an ``async with``): no task keeps running (the
    relay, a consumer, a heartbeat), no connection or session is left open, nothing is logged
    as an unretrieved error. Before, a stop cancelled midway left the layer "stopping" with its
    relay and every connection alive, and the next stop() returned at once."""
    started = time.perf_counter()
    async with DataLayer(config_with_es):
        pass
    whole = time.perf_counter() - started  # start and stop: the cancels spread over it

    async def attempt() -> None:
        data = DataLayer(config_with_es)
        try:
            await data.start()
        finally:
            await data.stop()
            assert data.state is LayerState.STOPPED

    cancelled, errors = await cancelled_midway(attempt, times=80, longest=1.5 * whole)
    assert cancelled >= 40, f"only {cancelled} of 80 attempts were cancelled midway"
    assert errors == []


async def test_a_second_stop_waits_for_the_first(config: DataLayerConfig) -> None:
    data = DataLayer(_without(config, "faiss"))
    await data.start()
    first = asyncio.create_task(data.stop())
    await asyncio.sleep(0)
    assert data.state is LayerState.STOPPING
    await data.stop()  # returns only once the layer is stopped, not at once
    assert data.state is LayerState.STOPPED
    await first


@pytest.mark.parametrize("bus", ["rabbitmq", "in-process"])
async def test_a_handler_that_stops_the_layer_stops_it(config: DataLayerConfig, bus: str) -> None:
    """A subscriber that calls ``stop()`` from inside the layer's own task (a RabbitMQ
    consumer's worker; the relay, which calls in-process handlers itself): the stop waits for
    that task as for any other (its grace), cancels it, and ends; it never waits for itself."""
    cfg = _without(config, "faiss") if bus == "rabbitmq" else _without(config, "faiss", "rabbitmq")
    data = DataLayer(cfg.replace(stop_timeout=2.0))
    await data.start()
    ended = asyncio.Event()

    async def handler(event: DataEvent) -> None:
        try:
            await data.stop()
        finally:
            ended.set()

    handler.subscriber_name = "stops-the-layer"  # type: ignore[attr-defined]
    data.events.subscribe("layer.stop_requested", handler)
    await data.subscriptions_ready()
    await data.events.publish(DataEvent("layer.stop_requested", "layer", "k", {}, "test"))
    async with asyncio.timeout(30):
        await ended.wait()
        while data.state is not LayerState.STOPPED:
            await asyncio.sleep(0.05)
