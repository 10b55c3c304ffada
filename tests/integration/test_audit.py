"""``audit`` on each sink: keys deleted, corrupted and added behind the projector's back are
reported exactly; a repair rewrites exactly those, and a second audit is clean."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from satellites_es.audit import AuditReport, audit
from satellites_es.config import DataLayerConfig
from satellites_es.events import DataEvent
from satellites_es.facade import DataLayer
from satellites_es.projections import Checkpoints, Delete, Projection, Upsert, VectorFields, rebuild
from satellites_es.projections.sinks import Sink
from satellites_es.projections.supervisor import build_sink
from satellites_es.vectors.codec import encode_vector

DIM = 8  # SATELLITES_FAISS_DIMENSION in the tests' environment
KEYS = [f"k{i:02d}" for i in range(30)]
DELETED = KEYS[25:]


def _handler(event: DataEvent) -> Upsert | Delete | None:
    if event.type == "item.deleted":
        return Delete(event.key)
    return Upsert(event.key, {"title": event.payload["title"], "n": event.payload["n"]})


def _projection(sink: str) -> Projection:
    options: dict[str, Any] = {}
    handler: Any = _handler
    if sink == "faiss":
        options = {"dimension": DIM, "metric": "cosine"}
        handler = VectorFields(vector="vector", metadata=("title",), deletes=("item.deleted",))
    if sink == "elasticsearch":
        options = {"mappings": {"properties": {"title": {"type": "text"}, "n": {"type": "long"}}}}
    return Projection(name=f"audited_{sink}", version=1, sink=sink,  # type: ignore[arg-type]
                      event_types=("item.upserted", "item.deleted"), handler=handler,
                      options=options)  # fmt: skip


def _vector(i: int) -> list[float]:
    return list(np.random.default_rng(i).normal(size=DIM).astype(np.float32))


def _events() -> list[DataEvent]:
    out = []
    for rnd in range(2):  # every key twice: the audit must fold to the last
        for i, key in enumerate(KEYS):
            payload = {"title": f"{key} r{rnd}", "n": i, "vector": encode_vector(_vector(i + rnd))}
            out.append(DataEvent(type="item.upserted", resource="items", key=key,
                                 source="test", payload=payload))  # fmt: skip
    out += [DataEvent(type="item.deleted", resource="items", key=k, source="test", payload={})
            for k in DELETED]  # fmt: skip
    return out


@pytest.fixture
async def data(config_with_es: DataLayerConfig) -> AsyncIterator[DataLayer]:
    config = config_with_es.replace(relay=dataclasses.replace(config_with_es.relay, enabled=False))
    async with DataLayer(config) as layer:
        yield layer


async def _built(data: DataLayer, sink_kind: str) -> tuple[Projection, Sink]:
    projection = _projection(sink_kind)
    await data.log.append(_events())
    sink = build_sink(projection, data)
    await rebuild(projection, sink, data.log, Checkpoints(data.postgres, _schema(data)))
    return projection, sink


def _schema(data: DataLayer) -> str:
    return data.config.postgres.schema


async def _audit(data: DataLayer, projection: Projection, sink: Sink) -> AuditReport:
    return await audit(projection, sink, data.postgres, _schema(data), collect_fixes=True,
                       examples=100)  # fmt: skip


def _drift(report: AuditReport) -> dict[str, set[str]]:
    return {kind: set(keys) for kind, keys in report.examples.items() if keys}


async def _tamper(data: DataLayer, projection: Projection, sink: Sink) -> None:
    """Delete k01, k02 and the tombstone of k26; corrupt k03 and k04; add x1 and x2."""
    if projection.sink == "redis":
        r, key = data.redis, lambda k: f"{data.config.redis.key_prefix}{projection.target()}:{k}"
        await r.delete(key("k01"), key("k02"), key("k26"))
        await r.hset(key("k03"), "d", json.dumps({"title": "corrupted", "n": 3}))
        await r.hset(key("k04"), "p", "1")  # the right document at an older position
        await r.hset(key("x1"), mapping={"p": "5", "d": "{}"})
        await r.set(key("x2"), b"not even a hash")
    elif projection.sink == "elasticsearch":
        es, index = (
            data.elasticsearch,
            f"{data.config.elasticsearch.index_prefix}{projection.target()}",
        )
        for k in ("k01", "k02", "k26"):
            await es.delete(index=index, id=k)
        await es.index(index=index, id="k03", document={"title": "corrupted", "n": 3})
        doc = (await es.get(index=index, id="k04"))["_source"]
        await es.index(index=index, id="k04", document={**doc, "n": -1})
        for k in ("x1", "x2"):
            await es.index(index=index, id=k, document={"title": "added", "n": 0})
        await es.indices.refresh(index=index)
    else:
        v, ns = data.vectors, projection.target()
        await v.delete(ns, "k01")
        await v.delete(ns, "k02")
        await v.upsert(ns, "k26", _vector(99), {"title": "back from the dead"})
        await v.upsert(ns, "k03", _vector(77), {"title": "k03 r1"})  # another vector
        await v.upsert(ns, "k04", _vector(5), {"title": "wrong metadata"})
        await v.upsert(ns, "x1", _vector(1), {"title": "added"})
        await v.upsert(ns, "x2", _vector(2), None)


EXPECTED = {
    "redis": {"missing": {"k01", "k02", "k26"}, "stale": {"k03", "k04"}, "extra": {"x1", "x2"}},
    "elasticsearch": {"missing": {"k01", "k02", "k26"}, "stale": {"k03", "k04"},
                      "extra": {"x1", "x2"}},
    # FAISS keeps an id's position when its vector is deleted (that is what a tombstone is
    # there): k01 and k02 deleted from outside hold a tombstone where the log has a document
    "faiss": {"stale": {"k01", "k02", "k03", "k04", "k26"}, "extra": {"x1", "x2"}},
}  # fmt: skip


@pytest.mark.parametrize("sink_kind", ["redis", "elasticsearch", "faiss"])
async def test_audit_reports_exactly_the_tampered_keys_and_repair_fixes_them(
    data: DataLayer, sink_kind: str
) -> None:
    projection, sink = await _built(data, sink_kind)
    clean = await _audit(data, projection, sink)
    assert clean.clean, clean
    assert (clean.keys, clean.events) == (30, 65)

    await _tamper(data, projection, sink)
    drifted = await _audit(data, projection, sink)
    assert _drift(drifted) == EXPECTED[sink_kind]
    assert drifted.counts == {k: len(EXPECTED[sink_kind].get(k, ())) for k in drifted.counts}

    written = await sink.repair(projection, drifted.version, drifted.fixes)
    assert written == drifted.drifted
    again = await _audit(data, projection, sink)
    assert again.clean, _drift(again)
    # and the repaired keys are what a replay would give
    if sink_kind == "redis":
        doc = await data.redis.hgetall(f"{data.config.redis.key_prefix}{projection.target()}:k03")
        assert json.loads(doc[b"d"]) == {"title": "k03 r1", "n": 3}
