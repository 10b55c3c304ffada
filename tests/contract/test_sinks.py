"""The Sink contract, written once and run against every sink: Redis, Elasticsearch (the test
harness's endpoint), FAISS, and the in-memory twin (:class:`~satellites_es.memory.InMemorySink`).

What every sink promises (:mod:`satellites_es.projections.sinks`): ``apply`` is conditional on
each change's position (a duplicate, a late event, a late upsert after a delete change
nothing), versions are separate targets, ``activate`` is the flip, ``drop`` removes a version,
and the audit reads keys with their positions and repairs only what it read."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis
from elasticsearch import AsyncElasticsearch

from satellites_es.memory import InMemorySink
from satellites_es.projections import Change, Projection, Sink
from satellites_es.projections.es_sink import ElasticsearchSink
from satellites_es.projections.faiss_sink import FaissSink
from satellites_es.projections.redis_sink import RedisSink
from satellites_es.projections.sinks import Fix
from satellites_es.vectors import VectorIndex
from tests.integration.sinks_support import item, make_projection


@pytest.fixture(params=["memory", "redis", "elasticsearch", "faiss"])
def sink(request: pytest.FixtureRequest) -> Sink:
    kind = request.param
    if kind == "memory":
        return InMemorySink()
    test_id: str = request.getfixturevalue("test_id")
    if kind == "redis":
        client: aioredis.Redis = request.getfixturevalue("redis_client")
        return RedisSink(client, request.getfixturevalue("redis_prefix"))
    if kind == "elasticsearch":
        es: AsyncElasticsearch = request.getfixturevalue("es_client")
        return ElasticsearchSink(es, f"{test_id}-")
    vectors: VectorIndex = request.getfixturevalue("vectors")
    return FaissSink(vectors)


def _projection(sink: Sink, name: str = "items") -> Projection:
    # the in-memory sink takes any document: it is given the Redis projection's
    return make_projection("redis" if sink.kind == "memory" else sink.kind, name=name)


def _change(p: Projection, key: str, n: int, position: int, *, deleted: bool = False) -> Change:
    change = p.change_for(replace(item(key, n, deleted=deleted), position=position))
    assert change is not None
    return change


def _title(doc: Any) -> str:
    return str(doc["metadata"]["title"] if "metadata" in doc else doc["title"])


async def _refreshed(sink: Sink) -> None:
    """Elasticsearch: make what was written visible to search (``dump`` searches)."""
    if isinstance(sink, ElasticsearchSink):
        await sink.client.indices.refresh(index=f"{sink.prefix}*")


async def test_apply_is_conditional_on_the_position(sink: Sink) -> None:
    p = _projection(sink)
    await sink.prepare(p, 1)
    await sink.prepare(p, 1)  # idempotent
    assert await sink.apply(p, 1, [_change(p, "a", 3, 3)]) == 1
    assert await sink.apply(p, 1, [_change(p, "a", 2, 2), _change(p, "a", 3, 3)]) == 0
    await _refreshed(sink)
    assert _title((await sink.dump(p, 1))["a"]) == "item a number 3"
    assert await sink.apply(p, 1, [_change(p, "a", 0, 5, deleted=True)]) == 1
    assert await sink.apply(p, 1, [_change(p, "a", 4, 4)]) == 0  # late upsert after a delete
    await _refreshed(sink)
    assert (await sink.dump(p, 1)).get("a") is None


async def test_a_batch_applies_in_order_and_counts_what_it_applied(sink: Sink) -> None:
    p = _projection(sink)
    await sink.prepare(p, 1)
    changes = [_change(p, "a", 1, 1), _change(p, "b", 1, 2), _change(p, "a", 2, 3),
               _change(p, "b", 0, 4, deleted=True), _change(p, "c", 5, 5)]  # fmt: skip
    assert await sink.apply(p, 1, changes) == 5
    await _refreshed(sink)
    dump = await sink.dump(p, 1)
    assert _title(dump["a"]) == "item a number 2" and _title(dump["c"]) == "item c number 5"
    assert dump.get("b") is None


async def test_versions_are_separate_and_activate_flips_between_them(sink: Sink) -> None:
    p = _projection(sink)
    assert await sink.active_version(p) is None
    for version in (1, 2):
        await sink.prepare(p, version)
    await sink.apply(p, 1, [_change(p, "a", 1, 1)])
    await sink.apply(p, 2, [_change(p, "b", 1, 1)])
    await sink.activate(p, 1)
    assert await sink.active_version(p) == 1
    await sink.activate(p, 2)
    assert await sink.active_version(p) == 2
    await _refreshed(sink)
    assert set(await sink.dump(p, 1)) == {"a"} and set(await sink.dump(p, 2)) == {"b"}
    await sink.drop(p, 1)
    await sink.prepare(p, 1)  # made again: empty
    await _refreshed(sink)
    assert await sink.dump(p, 1) == {}
    assert set(await sink.dump(p, 2)) == {"b"}


async def test_the_audit_reads_keys_with_positions_and_repairs_what_it_read(sink: Sink) -> None:
    p = _projection(sink)
    await sink.prepare(p, 1)
    await sink.apply(p, 1, [_change(p, "a", 1, 1), _change(p, "b", 1, 2)])
    await _refreshed(sink)
    keys = [k async for chunk in sink.scan_keys(p, 1, 10) for k in chunk]
    assert sorted(keys) == ["a", "b"]
    held = await sink.read_keys(p, 1, ["a", "b", "nobody"])
    assert set(held) == {"a", "b"} and held["a"].position == 1 and held["b"].position == 2
    want = _change(p, "a", 7, 7)
    assert held["a"].document is not None
    assert sink.same(p, held["a"].document, held["a"].document)
    assert not sink.same(p, getattr(want, "document", None), held["a"].document)
    written = await sink.repair(p, 1, [Fix("a", want, held["a"], floor=7)])
    assert written == 1
    await _refreshed(sink)
    assert _title((await sink.dump(p, 1))["a"]) == "item a number 7"
