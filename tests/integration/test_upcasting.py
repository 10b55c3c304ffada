"""Upcasting on read: a log of v1 events, rebuilt through a v1 -> v2 upcaster by a handler that
knows only v2, equals the same events appended natively as v2, on every sink (Redis,
Elasticsearch, FAISS by handler, FAISS by ``VectorFields`` columns); the stored rows do not
change by a byte; a newer version than the code knows is an error naming the event, on every
read path and in the long-running readers (the relay, a live projection), which stop at it and
resume once the code knows its version."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from satellites_es.audit import audit
from satellites_es.config import DataLayerConfig, EventLogConfig, PostgresConfig
from satellites_es.errors import UpcastError
from satellites_es.events import DataEvent
from satellites_es.facade import DataLayer
from satellites_es.migrate import upgrade
from satellites_es.projections import Checkpoints, Projection, Sink, rebuild
from satellites_es.projections.supervisor import ProjectionService
from satellites_es.store import EventStore
from satellites_es.upcasting import Upcasters
from tests.contract.support import Recorder, eventually
from tests.integration.sinks_support import item, kind_of, make_projection

EVENTS = 1000


def v2_to_v1(event: DataEvent) -> DataEvent:
    """The same event as an older producer wrote it: ``title`` was ``name``, ``vector`` was
    ``embedding`` (schema version 1)."""
    p = dict(event.payload)
    if "title" in p:
        p["name"] = p.pop("title")
        p["embedding"] = p.pop("vector")
    return dataclasses.replace(event, payload=p, schema_version=1)


def upcasters() -> Upcasters:
    registry = Upcasters()

    @registry.upcaster("item.upserted", 1)
    def renamed(payload: dict[str, Any]) -> dict[str, Any]:
        payload["title"] = payload.pop("name")
        payload["vector"] = payload.pop("embedding")
        return payload

    registry.register("item.deleted", 1, lambda payload: payload)  # same shape, both at v2
    return registry


def native_v2() -> list[list[DataEvent]]:
    """1,000 events in batches (10 rounds of 100 keys, ~10% deletes), at schema version 2."""
    rng = random.Random(7)
    return [
        [dataclasses.replace(item(f"k{k}", r, deleted=rng.random() < 0.1), schema_version=2)
         for k in range(EVENTS // 10)]
        for r in range(10)
    ]  # fmt: skip


@pytest.fixture
async def native_schema(migrated: PostgresConfig) -> AsyncIterator[PostgresConfig]:
    """A second log beside the test's own, for the events appended natively as v2."""
    config = dataclasses.replace(migrated, schema=f"{migrated.schema}_v2")
    await upgrade(config)
    yield config
    conn = await asyncpg.connect(migrated.dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{config.schema}" CASCADE')
    finally:
        await conn.close()


async def checksum(pool: asyncpg.Pool[asyncpg.Record], schema: str) -> str:
    """Every stored row, every column, as Postgres prints it."""
    query = f"SELECT md5(string_agg(e::text, E'\\n' ORDER BY position)) FROM \"{schema}\".events e"
    return str(await pool.fetchval(query))


async def test_a_v1_log_rebuilt_through_an_upcaster_equals_a_native_v2_log(
    sink: Sink, pool: asyncpg.Pool[asyncpg.Record], migrated: PostgresConfig,
    native_schema: PostgresConfig,
) -> None:  # fmt: skip
    config = EventLogConfig(max_payload_bytes=4096)
    legacy = EventStore(pool, schema=migrated.schema, config=config, upcasters=upcasters())
    native = EventStore(pool, schema=native_schema.schema, config=config, upcasters=upcasters())
    for batch in native_v2():
        await legacy.append([v2_to_v1(e) for e in batch])
        await native.append(batch)
    before = await checksum(pool, migrated.schema)
    kind = kind_of(sink)
    p_legacy, p_native = make_projection(kind, "legacy"), make_projection(kind, "native")
    built = await rebuild(p_legacy, sink, legacy, Checkpoints(pool, migrated.schema))
    again = await rebuild(p_native, sink, native, Checkpoints(pool, native_schema.schema))
    assert built.events == again.events == EVENTS
    legacy_dump = await sink.dump(p_legacy, built.version)
    assert len(legacy_dump) > EVENTS // 20  # every key (FAISS leaves no tombstone)
    assert legacy_dump == await sink.dump(p_native, again.version)
    assert await checksum(pool, migrated.schema) == before  # no row was rewritten
    # the audit folds the log through the same upcasters: the sink is what the log says
    report = await audit(p_legacy, sink, pool, migrated.schema, upcasters=legacy.upcasters)
    assert report.clean and report.events == EVENTS


async def test_every_read_path_upcasts_and_the_rows_keep_their_version(
    store: EventStore, pool: asyncpg.Pool[asyncpg.Record], migrated: PostgresConfig
) -> None:
    old = v2_to_v1(item("a", 1))
    await store.append(old)
    config = EventLogConfig(max_payload_bytes=4096)
    reader = EventStore(pool, schema=migrated.schema, config=config, upcasters=upcasters())
    (read,) = [e async for b in reader.read() for e in b]
    assert read.schema_version == 2 and read.payload == item("a", 1).payload
    assert [e.payload for e in await reader.read_stream("items", "a")] == [read.payload]
    assert [e.payload for e in await reader.read_at([1])] == [read.payload]
    (page,) = [p async for p in reader.read_payloads(types=["item.upserted"], text_field="vector")]
    assert page.payloads == [read.payload]
    # the plain store (no upcasters) still sees what was written, at v1
    (raw,) = [e async for b in store.read() for e in b]
    assert raw.schema_version == 1 and raw.payload == old.payload


async def test_a_schema_version_newer_than_the_code_knows_is_an_error_naming_the_event(
    store: EventStore, pool: asyncpg.Pool[asyncpg.Record], migrated: PostgresConfig
) -> None:
    future = dataclasses.replace(item("a", 1), schema_version=3, id="from-the-future")
    await store.append(future)
    config = EventLogConfig(max_payload_bytes=4096)
    reader = EventStore(pool, schema=migrated.schema, config=config, upcasters=upcasters())
    with pytest.raises(UpcastError, match=r"from-the-future \(item.upserted\) has schema "
                                          r"version 3.*up to v2"):  # fmt: skip
        [e async for b in reader.read() for e in b]
    with pytest.raises(UpcastError, match=r"at position 1 .*schema version 3"):
        [p async for p in reader.read_payloads(types=["item.upserted"], text_field="vector")]
    with pytest.raises(UpcastError, match="up to v1"):  # no upcasters: every type is at v1
        await store.read_stream("items", "a")


def knowing_v3() -> Upcasters:
    """The registry of a newer release: ``item.upserted`` has a v3 (same shape as v2)."""
    registry = upcasters()
    registry.register("item.upserted", 2, lambda payload: payload)
    return registry


@contextlib.asynccontextmanager
async def release(
    cfg: DataLayerConfig, registry: Upcasters, subscriber: Recorder, projection: Projection
) -> AsyncIterator[tuple[DataLayer, ProjectionService]]:
    """A running release of the application: a layer with these upcasters, the subscriber on
    its bus and the projection followed."""
    async with DataLayer(cfg, upcasters=registry) as data:
        data.events.subscribe("item.upserted", subscriber)
        await data.subscriptions_ready()
        service = ProjectionService(data, [projection], poll_interval=0.1)
        await service.start()
        try:
            yield data, service
        finally:
            await service.stop()


async def test_the_relay_and_a_projection_stop_at_an_event_they_cannot_upcast_and_resume(
    config: DataLayerConfig,
) -> None:
    """The long-running readers meet an event written by newer code (schema version 3, the
    registry knows up to 2): neither skips it nor passes anything after it. Both say why, naming
    the event, and keep retrying; a release that knows v3 delivers it and the rest, in order,
    once."""
    cfg = config.replace(faiss=dataclasses.replace(config.faiss, enabled=False),
                         rabbitmq=dataclasses.replace(config.rabbitmq, enabled=False))  # fmt: skip
    projection = make_projection("redis", "items_future")
    first = v2_to_v1(item("a", 1))
    future = dataclasses.replace(item("b", 1), schema_version=3, id="from-the-future")
    after = v2_to_v1(item("c", 1))
    old_subscriber = Recorder("old-release")
    async with release(cfg, upcasters(), old_subscriber, projection) as (data, service):
        await data.log.append([first, future, after])
        status = service.status[projection.name]
        await eventually(lambda: status.state == "restarting", timeout=20)
        assert status.error is not None and "from-the-future" in status.error
        await eventually(lambda: old_subscriber.ids == [first.id], timeout=20)
        for _ in range(100):  # the relay's failure is recorded before its first retry
            relay = (await data.health()).details["relay"].details
            if relay.get("last_error"):
                break
            await asyncio.sleep(0.05)
        assert "UpcastError" in relay["last_error"]
        assert "from-the-future" in relay["last_error"]
        await asyncio.sleep(1.0)  # retries meanwhile: still nothing past the event
        assert old_subscriber.ids == [first.id]
        assert relay["cursor"] == 1
        saved = Checkpoints(data.postgres, cfg.postgres.schema)
        assert await saved.get(projection.name, projection.version) <= 1
    new_subscriber = Recorder("old-release")  # the same group, on the newer release
    async with release(cfg, knowing_v3(), new_subscriber, projection) as (data, service):
        await eventually(lambda: len(new_subscriber.events) == 2, timeout=20)
        assert new_subscriber.ids == [future.id, after.id]
        assert [e.schema_version for e in new_subscriber.events] == [3, 3]
        await data.wait_for(3, timeout=20)
        saved = Checkpoints(data.postgres, cfg.postgres.schema)
        assert await saved.get(projection.name, projection.version) == 3
        await eventually(lambda: service.status[projection.name].state == "running")


async def test_a_page_gives_the_events_before_an_unreadable_one_then_the_error(
    store: EventStore, pool: asyncpg.Pool[asyncpg.Record], migrated: PostgresConfig
) -> None:
    """Where the followers' stop comes from: both reads of a page (whole events and the
    ``VectorFields`` columns) yield what precedes the event first, then raise naming it."""
    future = dataclasses.replace(item("b", 1), schema_version=3, id="from-the-future")
    await store.append([v2_to_v1(item("a", 1)), future, v2_to_v1(item("c", 1))])
    config = EventLogConfig(max_payload_bytes=4096)
    reader = EventStore(pool, schema=migrated.schema, config=config, upcasters=upcasters())
    pages: list[list[DataEvent]] = []
    with pytest.raises(UpcastError, match="from-the-future"):
        async for page in reader.read():
            pages.append(page)
    assert [[e.key for e in page] for page in pages] == [["a"]]
    positions: list[list[int]] = []
    with pytest.raises(UpcastError, match="at position 2"):
        async for batch in reader.read_payloads(types=["item.upserted"], text_field="vector"):
            positions.append(batch.positions)
    assert positions == [[1]]
