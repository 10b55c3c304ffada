"""Re-embedding a collection with a second model while live writes continue: the new vector
version is built, flips, equals a fresh replay with that model, audits clean against the log
(and still reports real drift), and a rollback restores the old model's results. (FAISS only:
the text and cache projections do not change with a model.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from satellites_es.audit import AuditReport, audit
from satellites_es.config import DataLayerConfig
from satellites_es.facade import DataLayer
from satellites_es.projections import Projector, SinkDump
from satellites_es.projections.supervisor import ProjectionService, build_sink
from satellites_es.semantic import SemanticStore, reembed, rollback_embeddings
from tests.integration.semantic_support import MODEL_A, MODEL_B, env_without_bus, make_schema

DOCUMENTS = 10_000
QUERIES = ("note 17 on relevance", "document 4242 about ranking", "live update 3 of")


@pytest.fixture
async def docs(config_env: dict[str, str]) -> AsyncIterator[SemanticStore]:
    async with DataLayer(DataLayerConfig.from_env(env_without_bus(config_env))) as data:
        store = SemanticStore(data, make_schema())
        service = ProjectionService(data, [store.schema.vectors], poll_interval=0.1)  # FAISS only
        await service.start()
        yield store
        await service.stop()


async def _fill(docs: SemanticStore) -> int:
    position = 0
    for start in range(0, DOCUMENTS, 1000):
        changes = docs.changeset()
        for i in range(start, start + 1000):
            changes.put_document(f"d{i}", {"title": f"note {i} on relevance",
                                           "body": f"document {i} about ranking", "topic": "t"})  # fmt: skip
        committed = await changes.commit()
        assert committed.position is not None
        position = committed.position
    return position


async def _live_writes(docs: SemanticStore, stop: asyncio.Event, written: list[int]) -> None:
    n = 0
    while not stop.is_set():
        changes = docs.changeset()
        for _ in range(20):
            n += 1
            changes.put_document(f"d{n % 500}", {"title": f"live update {n} of",
                                                 "body": f"rewritten {n}", "topic": "live"})  # fmt: skip
        committed = await changes.commit()
        assert committed.position is not None
        written.append(committed.position)
        await asyncio.sleep(0.01)


async def _fresh(docs: SemanticStore, version: int, model: object) -> SinkDump:
    """The vector projection replayed from scratch with ``model`` into an unused version."""
    projection = docs.schema.vectors
    await docs.registry.assign(version, model)  # type: ignore[arg-type]
    sink = build_sink(projection, docs.data)
    await Projector(projection, sink, docs.data.log, docs.checkpoints, version=version).catch_up()
    return await sink.dump(projection, version)


async def _audit(docs: SemanticStore) -> AuditReport:
    data, projection = docs.data, docs.schema.vectors
    return await audit(projection, build_sink(projection, data), data.postgres,
                       data.config.postgres.schema, collect_fixes=True)  # fmt: skip


async def _ids(docs: SemanticStore) -> list[list[str]]:
    return [[h.id for h in await docs.search(q, k=10, mode="vector")] for q in QUERIES]


async def test_reembed_while_writing_flips_equals_a_fresh_replay_and_rolls_back(
    docs: SemanticStore,
) -> None:
    data, projection = docs.data, docs.schema.vectors
    await data.wait_for(await _fill(docs), timeout=120)
    stop, written = asyncio.Event(), list[int]()
    writer = asyncio.create_task(_live_writes(docs, stop, written))
    try:
        result = await reembed(docs, MODEL_B, batch_size=1000)
    finally:
        stop.set()
        await writer
    assert (result.version, result.previous) == (2, 1) and len(written) > 1
    assert await docs.query_embedder() is MODEL_B and await docs.write_embedder() is MODEL_B
    head = written[-1]
    await data.wait_for(head, timeout=120)
    sink = build_sink(projection, data)
    flipped = await sink.dump(projection, 2)
    assert len(flipped) == DOCUMENTS
    assert flipped == await _fresh(docs, 50, MODEL_B)
    assert len(next(iter(flipped.values()))["vector"]) == MODEL_B.dimension  # type: ignore[index]
    with_b = await _ids(docs)

    # the audit compares v2 with the log's texts embedded by v2's model, not with the vectors
    # stored in the events (model A's): clean; and real drift is still seen and repaired
    clean = await _audit(docs)
    assert clean.clean and (clean.version, clean.keys) == (2, DOCUMENTS), clean.counts
    wrong = (await MODEL_B.embed(["nothing this document says"]))[0]
    await data.vectors.upsert("docs_vectors_v2", "d7", wrong, {"topic": "t"})
    drifted = await _audit(docs)
    assert drifted.counts == {"missing": 0, "extra": 0, "stale": 1}
    assert drifted.examples["stale"] == ["d7"]
    assert await sink.repair(projection, 2, drifted.fixes) == 1
    assert (await _audit(docs)).clean

    assert await rollback_embeddings(docs) == (1, 2)
    await data.wait_for(head, [projection], timeout=120)  # the follower brings v1 up to date
    assert await docs.query_embedder() is MODEL_A
    fresh_a = await _fresh(docs, 51, MODEL_A)
    assert await sink.dump(projection, 1) == fresh_a
    # v1 holds model A's vectors, the live writes made with model B re-embedded
    rolled_back = await _audit(docs)
    assert rolled_back.clean and rolled_back.version == 1, rolled_back.counts
    restored = await _ids(docs)
    expected = [[m.id for m in await data.vectors.query(
        "docs_vectors_v51", (await MODEL_A.embed([q]))[0], 10)] for q in QUERIES]  # fmt: skip
    assert restored == expected and restored != with_b
