"""Projections under everyday faults, on the real stores (issue 12).

* Poison events: for each sink (Redis, Elasticsearch, FAISS with a handler, FAISS with
  ``VectorFields``) and each way an event can be poison (the handler raises on it, or the sink
  refuses its change for good: a document the ES mapping rejects, a vector of the wrong
  dimension, a document Redis cannot hold), one poison event in the middle of a batch of 1,000:
  every other event is applied, the poison event is parked once with its position, key, id and
  error, later events flow, a retry after the fix applies it at its position, a discard removes
  it.
* Outages: Redis and Elasticsearch cut through a TCP proxy while events are appended (and a
  follower started while its sink is down): the follower stays up, says which backend is down,
  and the sink equals a fresh replay key by key afterwards. FAISS, whose faults are local: a
  snapshot directory that cannot be written.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from elasticsearch import AsyncElasticsearch

from satellites_es.config import DataLayerConfig, FaissConfig
from satellites_es.errors import PoisonEventError
from satellites_es.events import DataEvent
from satellites_es.facade import DataLayer
from satellites_es.parking import ParkedEvents
from satellites_es.projections import Checkpoints, Delete, Projection, Projector, Sink, Upsert
from satellites_es.projections.es_sink import ElasticsearchSink
from satellites_es.projections.faiss_sink import FaissSink
from satellites_es.projections.projector import FollowerStatus, follow_active
from satellites_es.projections.redis_sink import RedisSink
from satellites_es.projections.supervisor import ProjectionService
from satellites_es.store import EventStore
from satellites_es.testing.network_faults import TcpProxy
from satellites_es.vectors import VectorIndex
from tests.contract.support import cancelled_midway
from tests.integration.sinks_support import DIM, ITEM_FIELDS, item, kind_of, make_projection

Handler = Callable[[DataEvent], Upsert | Delete | None]


# -- poison events ---------------------------------------------------------------------------


def poison_event(kind: str, how: str, key: str = "poison") -> DataEvent:
    """An event the projection of ``kind`` cannot take, ``how``: the handler raises on it
    (no title, no vector), or the sink refuses it (see :func:`refusing_handler`)."""
    if how == "handler":
        payload: dict[str, Any] = {"n": 1}
    elif kind == "elasticsearch":
        payload = {"title": "t", "n": "not a number", "vector": [0.0] * DIM}  # mapping: long
    elif kind.startswith("faiss"):
        payload = {"title": "t", "n": 1, "vector": [0.5] * (DIM + 1)}  # wrong dimension
    else:  # redis: a document that is not JSON (the handler below makes a set of it)
        payload = {"title": "t", "n": 1, "tags": ["a", "b"]}
    return DataEvent(type="item.upserted", resource="items", key=key, payload=payload,
                     source="test")  # fmt: skip


def handler_of(kind: str, *, fixed: bool) -> Handler | Any:
    """The test projection's handler; ``fixed``: the version deployed after the fault was
    understood, which takes the poison events too."""
    if kind == "faiss_fields" and not fixed:
        return ITEM_FIELDS
    base = make_projection(kind.removesuffix("_fields") if kind == "faiss_fields" else kind)

    def handle(event: DataEvent) -> Upsert | Delete | None:
        p = event.payload
        if fixed and event.key.startswith("poison"):
            doc: dict[str, Any] = {"title": "fixed", "n": 0}
            if kind.startswith("faiss"):
                return Upsert(event.key, {"vector": [0.25] * DIM, "metadata": {"title": "fixed"}})
            return Upsert(event.key, doc)
        if kind == "redis" and "tags" in p:
            return Upsert(event.key, {"title": p["title"], "tags": set(p["tags"])})
        return base.handler(event)

    return handle


def projection_of(kind: str, *, fixed: bool = False, **kw: Any) -> Projection:
    base = make_projection(kind)
    return Projection(name=base.name, version=1, sink=base.sink, event_types=base.event_types,
                      handler=handler_of(kind, fixed=fixed), options=base.options, **kw)  # fmt: skip


async def applied_keys(sink: Sink, projection: Projection) -> dict[str, Any]:
    return {k: v for k, v in (await sink.dump(projection, 1)).items() if v is not None}


@pytest.mark.parametrize("how", ["handler", "sink"])
async def test_one_poison_event_in_a_batch_is_parked_and_everything_else_applied(
    sink: Sink, store: EventStore, checkpoints: Checkpoints, how: str
) -> None:
    kind = kind_of(sink)
    p = projection_of(kind)
    good = [item(f"k{i % 200}", i) for i in range(999)]
    await store.append(good[:499])
    poison = (await store.append(poison_event(kind, how))).events[0]
    await store.append(good[499:])
    assert poison.position == 500

    projector = Projector(p, sink, store, checkpoints)  # one batch of 1,000
    await projector.catch_up()
    assert await checkpoints.get("items", 1) == 1000
    got = await applied_keys(sink, p)
    reference = make_projection(kind, name="fresh")  # the same handler, no poison in its way
    await Projector(reference, sink, store, checkpoints).catch_up()
    want = {k: v for k, v in (await applied_keys(sink, reference)).items() if k != "poison"}
    assert got == want and len(got) == 200

    parked = ParkedEvents(checkpoints.pool, checkpoints.schema_name)
    [row] = await parked.entries("projection", "items")
    assert (row.position, row.key, row.event_id, row.version) == (500, "poison", poison.id, 1)
    assert row.error and row.error_type and row.status == "parked"
    assert projector.parked_count == 1

    # later events keep flowing, and the same poison read again is not parked twice
    await store.append([item("k1", 5000)])
    await Projector(p, sink, store, checkpoints).catch_up()
    assert (await applied_keys(sink, p))["k1"] is not None
    assert len(await parked.entries("projection", "items")) == 1

    # retried after the fix: applied at its own position, the row gone
    assert await parked.request_retry("projection", "items") == [500]
    fixed = Projector(projection_of(kind, fixed=True), sink, store, checkpoints)
    assert await fixed.retry_parked() == 1
    assert "poison" in await applied_keys(sink, p)
    assert await parked.entries("projection", "items") == []

    # a second poison, discarded: gone from the list, never applied
    await store.append([poison_event(kind, how, key="poison2")])
    await Projector(p, sink, store, checkpoints).catch_up()
    [second] = await parked.entries("projection", "items")
    assert second.key == "poison2"
    assert await parked.discard("projection", "items") == [second.position]
    assert await parked.entries("projection", "items") == []
    assert "poison2" not in await applied_keys(sink, p)


async def test_a_retried_event_whose_key_moved_on_changes_nothing(
    sink: Sink, store: EventStore, checkpoints: Checkpoints
) -> None:
    """Exactly-once effect holds for retries: a newer event of the key still wins."""
    kind = kind_of(sink)
    p = projection_of(kind)
    await store.append([poison_event(kind, "handler", key="poison")])
    await Projector(p, sink, store, checkpoints).catch_up()
    await store.append([item("poison", 7)])  # a good event for the same key, later
    await Projector(p, sink, store, checkpoints).catch_up()
    before = await applied_keys(sink, p)
    parked = ParkedEvents(checkpoints.pool, checkpoints.schema_name)
    await parked.request_retry("projection", "items")
    assert await Projector(projection_of(kind, fixed=True), sink, store, checkpoints).retry_parked()
    assert await applied_keys(sink, p) == before  # the retried older position was a no-op
    assert await parked.entries("projection", "items") == []


async def test_a_poison_event_stops_a_rebuild_pass_by_default_and_names_it(
    sink: Sink, store: EventStore, checkpoints: Checkpoints
) -> None:
    kind = kind_of(sink)
    await store.append([item(f"k{i}", i) for i in range(10)])
    poison = (await store.append(poison_event(kind, "sink"))).events[0]
    projector = Projector(projection_of(kind), sink, store, checkpoints, mode="rebuild")
    with pytest.raises(PoisonEventError) as raised:
        await projector.catch_up()
    error = raised.value
    assert (error.position, error.key, error.event_id) == (11, "poison", poison.id)
    assert f"position 11 (key 'poison', id {poison.id})" in str(error)
    assert len(await applied_keys(sink, projection_of(kind))) == 10  # its batch's good ones
    parked = ParkedEvents(checkpoints.pool, checkpoints.schema_name)
    assert await parked.entries() == []


def test_a_bad_poison_policy_is_a_configuration_error() -> None:
    from satellites_es.errors import ConfigurationError
    from satellites_es.projections.model import PoisonPolicy

    for bad in ({"attempts": 0}, {"live": "ignore"}, {"rebuild": ""}):
        with pytest.raises(ConfigurationError):
            PoisonPolicy(**bad)  # type: ignore[arg-type]


# -- outages ---------------------------------------------------------------------------------


async def _until(check: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.1)


class Cuttable:
    """A sink of ``kind`` reached through a TCP proxy, and the same sink reached directly."""

    def __init__(self, kind: str, proxy: TcpProxy, sink: Sink, direct: Sink) -> None:
        self.kind, self.proxy, self.sink, self.direct = kind, proxy, sink, direct


@pytest.fixture
async def cuttable(
    request: pytest.FixtureRequest, redis_url: str, redis_prefix: str, es_url: str, test_id: str
) -> AsyncIterator[Callable[[str], Any]]:
    opened: list[Any] = []

    async def make(kind: str) -> Cuttable:
        if kind == "redis":
            direct_client = aioredis.Redis.from_url(redis_url)
            host, port = direct_client.connection_pool.connection_kwargs["host"], int(
                direct_client.connection_pool.connection_kwargs["port"])  # fmt: skip
            proxy = await TcpProxy(host, port).start()
            via = aioredis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=2,
                                 socket_connect_timeout=2)  # fmt: skip
            opened.extend([proxy, via, direct_client])
            return Cuttable(kind, proxy, RedisSink(via, redis_prefix),
                            RedisSink(direct_client, redis_prefix))  # fmt: skip
        from urllib.parse import urlsplit

        target = urlsplit(es_url)
        proxy = await TcpProxy(target.hostname or "127.0.0.1", target.port or 9200).start()
        via_es = AsyncElasticsearch(f"http://127.0.0.1:{proxy.port}", request_timeout=2,
                                    max_retries=0)  # fmt: skip
        direct_es = AsyncElasticsearch(es_url)
        opened.extend([proxy, via_es, direct_es])
        prefix = f"{test_id}-"
        return Cuttable(kind, proxy, ElasticsearchSink(via_es, prefix),
                        ElasticsearchSink(direct_es, prefix))  # fmt: skip

    yield make
    for thing in reversed(opened):
        if isinstance(thing, TcpProxy):
            await thing.stop()
        elif isinstance(thing, aioredis.Redis):
            await thing.aclose()
        else:
            if isinstance(thing, AsyncElasticsearch):
                found = await thing.indices.get(index=f"{test_id}-*", allow_no_indices=True)
                for name in found.body:
                    await thing.indices.delete(index=name)
            await thing.close()


async def _ride_out_a_cut(
    c: Cuttable, store: EventStore, checkpoints: Checkpoints, seconds: float, *,
    start_cut: bool = False,
) -> None:  # fmt: skip
    """Follow live; cut the sink for ``seconds`` while events are appended; then the sink must
    equal a fresh replay, key by key."""
    name = f"cut_{c.kind}"
    p = make_projection(c.kind, name=name)
    await store.append([item(f"k{i}", 0) for i in range(50)])
    status, stop = FollowerStatus(), asyncio.Event()
    if start_cut:
        c.proxy.cut()
    follower = asyncio.create_task(follow_active(p, c.sink, store, checkpoints, stop=stop,
                                                 poll_interval=0.2, status=status))  # fmt: skip
    try:
        if not start_cut:
            await _until(lambda: checkpoints.get(name, 1), 20, "the first events")
            await _until(lambda: status.state == "running", 20, "a running follower")
            c.proxy.cut()
        cut_at = time.monotonic()
        rounds, seen_down = 0, False
        while time.monotonic() - cut_at < seconds:  # events keep coming during the outage
            await store.append([item(f"k{(rounds * 7 + i) % 80}", rounds + 1,
                                     deleted=(rounds + i) % 9 == 0) for i in range(10)])  # fmt: skip
            rounds += 1
            await asyncio.sleep(min(0.5, seconds / 10))
            seen_down = seen_down or status.state == "backend_down"
            assert not follower.done()
        # the driver's own retries may take a few seconds before the first failure shows
        await _until(lambda: seen_down or status.state == "backend_down", 15, "backend_down")
        assert status.state == "backend_down" and status.backend == c.kind and status.error
        assert not follower.done()
        c.proxy.restore()
        head = await store.head()
        await _until(lambda: _at(checkpoints, head, name), 60, "the follower to catch up")
        await _until(lambda: status.state == "running", 10, "the follower to report running")
    finally:
        c.proxy.restore()
        stop.set()
        await asyncio.wait_for(follower, 30)
    fresh = make_projection(c.kind, name=f"fresh_{c.kind}")
    await Projector(fresh, c.direct, store, checkpoints).catch_up()
    assert await c.direct.dump(p, 1) == await c.direct.dump(fresh, 1)


async def _at(checkpoints: Checkpoints, head: int, name: str = "items") -> bool:
    return await checkpoints.get(name, 1) >= head


@pytest.mark.es
@pytest.mark.parametrize("kind", ["redis", "elasticsearch"])
async def test_a_five_second_sink_cut_is_ridden_out(
    kind: str, cuttable: Any, store: EventStore, checkpoints: Checkpoints
) -> None:
    await _ride_out_a_cut(await cuttable(kind), store, checkpoints, 5)


@pytest.mark.es
@pytest.mark.parametrize("kind", ["redis", "elasticsearch"])
async def test_a_follower_started_while_its_sink_is_down_waits_for_it(
    kind: str, cuttable: Any, store: EventStore, checkpoints: Checkpoints
) -> None:
    await _ride_out_a_cut(await cuttable(kind), store, checkpoints, 4, start_cut=True)


@pytest.mark.es
@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_a_sixty_second_cut_of_redis_and_of_elasticsearch_is_ridden_out(
    cuttable: Any, store: EventStore, checkpoints: Checkpoints
) -> None:
    """Both sinks at once (one minute of the suite, not two), two projections of one log."""
    redis_side = await cuttable("redis")
    es_side = await cuttable("elasticsearch")
    await asyncio.gather(
        _ride_out_a_cut(redis_side, store, checkpoints, 60),
        _ride_out_a_cut(es_side, store, checkpoints, 60),
    )


async def test_a_snapshot_that_cannot_be_written_is_reported_and_saved_later(
    tmp_path: Path, store: EventStore, checkpoints: Checkpoints
) -> None:
    """FAISS's faults are local: its directory unwritable (here: no longer a directory)."""
    root = tmp_path / "faiss"
    index = VectorIndex(FaissConfig(index_path=root, dimension=DIM))
    await index.open()
    p = make_projection("faiss")
    status, stop = FollowerStatus(), asyncio.Event()
    follower = asyncio.create_task(follow_active(p, FaissSink(index), store, checkpoints,
                                                 stop=stop, poll_interval=0.1, status=status,
                                                 flush_every=20))  # fmt: skip
    away = tmp_path / "faiss.away"
    try:
        await store.append([item(f"k{i}", 0) for i in range(30)])
        await _until(lambda: _at(checkpoints, 30), 20, "the first snapshot")
        root.rename(away)
        root.write_text("not a directory: every save fails")
        await store.append([item(f"k{i}", 1) for i in range(30)])
        await _until(lambda: status.save_error is not None, 20, "the failed save reported")
        assert not status.ok and status.state == "running"
        await _until(lambda: _at(checkpoints, 60), 20, "following on")  # still following
        hits = await index.query("items_v1", [0.1] * DIM, top_k=3)  # still serving
        assert len(hits) == 3
        root.unlink()
        away.rename(root)
        await _until(lambda: status.save_error is None, 40, "a save once writable again")
    finally:
        if root.is_file():
            root.unlink()
        if away.exists():
            away.rename(root)
        stop.set()
        await asyncio.wait_for(follower, 30)
        await index.close()
    reloaded = VectorIndex(FaissConfig(index_path=root, dimension=DIM))
    await reloaded.open()
    try:
        assert reloaded.applied_position("items_v1") == 60
    finally:
        await reloaded.close()


async def test_a_postgres_cut_under_a_follower_is_ridden_out(
    migrated: Any,
    store: EventStore,
    checkpoints: Checkpoints,
    redis_client: aioredis.Redis,
    redis_prefix: str,
) -> None:
    """The log itself unreachable (pool, checkpoints, listener through a proxy) for 5 s while a
    producer that still reaches it appends: the follower waits and catches up."""
    import asyncpg

    from satellites_es.config import EventLogConfig

    async with TcpProxy(migrated.host, migrated.port) as proxy:
        dsn = migrated.dsn.replace(f"{migrated.host}:{migrated.port}", f"127.0.0.1:{proxy.port}")
        assert str(proxy.port) in dsn
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=3, timeout=2)
        try:
            via = EventStore(pool, schema=migrated.schema, config=EventLogConfig(), dsn=dsn)
            via_checkpoints = Checkpoints(pool, migrated.schema)
            p = make_projection("redis", name="pg_cut")
            sink = RedisSink(redis_client, redis_prefix)
            status, stop = FollowerStatus(), asyncio.Event()
            follower = asyncio.create_task(follow_active(p, sink, via, via_checkpoints, stop=stop,
                                                         poll_interval=0.2, status=status))  # fmt: skip
            try:
                await store.append([item(f"k{i}", 0) for i in range(20)])
                await _until(lambda: _at(checkpoints, 20, "pg_cut"), 20, "the first events")
                proxy.cut()
                for r in range(5):
                    await store.append([item(f"k{i}", r + 1) for i in range(20)])  # direct
                    await asyncio.sleep(1.0)
                await _until(lambda: status.state == "backend_down", 15, "backend_down")
                assert not follower.done() and "PersistenceError" in (status.error or "")
                proxy.restore()
                head = await store.head()
                await _until(lambda: _at(checkpoints, head, "pg_cut"), 60, "catching up")
            finally:
                proxy.restore()
                stop.set()
                await asyncio.wait_for(follower, 30)
            fresh = make_projection("redis", name="pg_fresh")
            await Projector(fresh, sink, store, checkpoints).catch_up()
            assert await sink.dump(p, 1) == await sink.dump(fresh, 1)
        finally:
            await pool.close()


@pytest.mark.es
@pytest.mark.parametrize("kind", ["redis", "elasticsearch"])
async def test_a_rebuild_waits_out_a_sink_cut_and_completes(
    kind: str, cuttable: Any, store: EventStore, checkpoints: Checkpoints
) -> None:
    """A rebuild is long-running too: a cut in the middle is waited out, not fatal."""
    from satellites_es.projections import rebuild

    c = await cuttable(kind)
    p = make_projection(kind, name=f"rb_{kind}")
    for r in range(6):
        await store.append([item(f"k{i}", r) for i in range(500)])
    cut_done = asyncio.Event()

    def progress(step: Any) -> None:
        if step.position >= 1000 and not c.proxy.blocked and not cut_done.is_set():
            c.proxy.cut()
            asyncio.get_running_loop().call_later(3.0, c.proxy.restore)
            cut_done.set()

    result = await asyncio.wait_for(
        rebuild(p, c.sink, store, checkpoints, progress=progress, batch_size=250), 120
    )
    assert cut_done.is_set() and result.position == await store.head()
    fresh = make_projection(kind, name=f"rbf_{kind}")
    await Projector(fresh, c.direct, store, checkpoints).catch_up()
    assert await c.direct.dump(p, result.version) == await c.direct.dump(fresh, 1)


async def test_a_projection_service_cancelled_in_its_stop_still_stops_every_follower(
    config: DataLayerConfig,
) -> None:
    """A service stopped by a task that is cancelled meanwhile (a shutdown with a deadline): the
    stop still returns only once every follower has ended (the layer's clients may be closed
    next), and nothing keeps running or is left unclosed."""
    quiet = config.replace(  # no relay nor bus: their own tasks would count as "left running"
        rabbitmq=dataclasses.replace(config.rabbitmq, enabled=False),
        relay=dataclasses.replace(config.relay, enabled=False),
    )
    async with DataLayer(quiet) as data:
        await data.log.append([item(f"k{i}", i) for i in range(50)])

        async def attempt() -> None:
            service = ProjectionService(data, [make_projection("redis")], poll_interval=0.05)
            await service.start()
            try:
                await asyncio.sleep(0.05)  # the follower is catching up when the stop comes
            finally:
                try:
                    await service.stop()
                finally:  # cancelled or not, a stop that returned has ended every follower
                    assert all(task.done() for task in service.tasks.values())

        cancelled, errors = await cancelled_midway(attempt, times=40, longest=0.2)
    assert cancelled >= 20, f"only {cancelled} of 40 stops were cancelled midway"
    assert errors == []
