"""The semantic layer on the real stores: a change set is one append (all or nothing), it
reaches the text index, the vector namespace and the caches, and a search with
``consistent_at`` sees it, in this process and in another one; wait_for raises at once when
the projector is down. Elasticsearch here is the noida-db emulator the fixtures start (not
Elasticsearch itself)."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from satellites_es.config import DataLayerConfig
from satellites_es.errors import (
    ConfigurationError,
    InvalidDocumentError,
    InvalidEventError,
    ProjectorDownError,
)
from satellites_es.facade import DataLayer
from satellites_es.semantic import HashingEmbedder, SearchHit, SemanticStore
from satellites_es.semantic.hybrid import LEXICAL_WEIGHT, RRF_K
from tests.integration.semantic_support import MODEL_A, env_without_bus, make_schema

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(config_env: dict[str, str], es_url: str) -> dict[str, str]:
    return env_without_bus({**config_env, "SATELLITES_ELASTICSEARCH_URL": es_url,
                            "SATELLITES_ELASTICSEARCH_ENABLED": "true",
                            "SATELLITES_LOG_MAX_PAYLOAD_BYTES": "20000"})  # fmt: skip


@pytest.fixture
async def data(env: dict[str, str]) -> AsyncIterator[DataLayer]:
    async with DataLayer(DataLayerConfig.from_env(env)) as layer:
        yield layer


@pytest.fixture
async def docs(data: DataLayer) -> AsyncIterator[SemanticStore]:
    store = SemanticStore(data, make_schema())
    service = store.serve(poll_interval=0.1)
    await service.start()
    yield store
    await service.stop()


def doc(i: int, topic: str = "search", words: str = "") -> dict[str, str]:
    return {"title": f"note {i} on {words or 'relevance'}",
            "body": f"document {i} about {words or 'bm25 ranking'} and more", "topic": topic}  # fmt: skip


async def _stored_operations(docs: SemanticStore) -> list[str]:
    """Keys of the document and entity events in the log (the embedder assignment the vector
    projection appends when it starts is not one)."""
    kinds = (*docs.schema.document_types, *docs.schema.entity_types)
    return [e.key async for batch in docs.data.log.read(0) for e in batch if e.type in kinds]


async def test_a_change_set_failing_midway_stores_nothing(docs: SemanticStore) -> None:
    # refused by the change set's own checks: a document without text, in the middle
    bad = docs.changeset().put_document("d1", doc(1)).put_document("d2", {"topic": "x"})
    bad.put_document("d3", doc(3))
    with pytest.raises(InvalidDocumentError, match=r"operation 1 .*'d2'.*no text"):
        await bad.commit()
    # refused by the log itself: one payload over the configured maximum, after good ones
    big = docs.changeset().put_document("d4", doc(4)).put_entity("e1", {"name": "Ada"})
    big.put_document("d5", {"title": "huge", "body": "word " * 10_000})
    with pytest.raises(InvalidEventError):
        await big.commit()
    # inside the caller's transaction, rolled back after the commit call
    async with docs.data.postgres.acquire() as conn:
        with pytest.raises(RuntimeError, match="caller fails"):
            async with conn.transaction():
                await docs.changeset().put_document("d6", doc(6)).commit(conn=conn)
                raise RuntimeError("caller fails after the change set")
    assert await _stored_operations(docs) == []
    probe = await docs.changeset().put_entity("probe", {"name": "p"}).commit()
    assert probe.position is not None
    await docs.data.wait_for(probe.position, timeout=30)
    for mode in ("text", "vector"):
        assert await docs.search("note relevance bm25", k=10, mode=mode) == []  # type: ignore[arg-type]
    assert await docs.cached("d1") is None and await docs.entity("e1") is None


async def test_a_committed_change_set_reaches_all_three_sinks_and_search_sees_it(
    docs: SemanticStore,
) -> None:
    changes = docs.changeset()
    for i in range(20):
        changes.put_document(f"d{i}", doc(i, topic="search" if i % 2 else "vectors"))
    changes.put_document("target", doc(99, words="quorum queues"))
    changes.put_entity("author-1", {"name": "Ada Lovelace"})
    committed = await changes.commit()
    assert committed.position is not None
    assert set(committed.routes) == {"docs_text", "docs_vectors", "docs_cache", "docs_entities"}
    for mode in ("hybrid", "text", "vector"):
        hits = await docs.search("quorum queues", k=3, mode=mode,  # type: ignore[arg-type]
                                 consistent_at=committed.position)  # fmt: skip
        assert hits[0].id == "target", mode
    hit = (await docs.search("quorum queues", k=1))[0]
    assert hit.text_rank == 1 and hit.vector_rank == 1 and hit.metadata == {"topic": "search"}
    assert "quorum" in hit.snippet
    await docs.data.wait_for(committed.position, timeout=30)  # every projection, cache included
    assert await docs.cached("target") == {"title": "note 99 on quorum queues"}
    assert await docs.entity("author-1") == {"name": "Ada Lovelace"}
    deleted = await docs.changeset().delete_document("target").delete_entity("author-1").commit()
    assert deleted.position is not None
    hits = await docs.search("quorum queues", k=3, consistent_at=deleted.position)
    assert "target" not in [h.id for h in hits]
    await docs.data.wait_for(deleted.position, timeout=30)
    assert await docs.cached("target") is None and await docs.entity("author-1") is None


async def test_metadata_filters_apply_to_both_legs(docs: SemanticStore) -> None:
    changes = docs.changeset()
    for i in range(30):
        changes.put_document(f"d{i}", doc(i, topic=("a", "b", "c")[i % 3]))
    committed = await changes.commit()
    for mode in ("hybrid", "text", "vector"):
        hits = await docs.search("note relevance", k=10, filter={"topic": "b"}, mode=mode,  # type: ignore[arg-type]
                                 consistent_at=committed.position)  # fmt: skip
        assert len(hits) == 10 and {h.metadata["topic"] for h in hits} == {"b"}, mode
    hybrid = await docs.search("note relevance", k=10, filter={"topic": "b"})
    assert all(h.text_rank is not None and h.vector_rank is not None for h in hybrid)


async def test_an_embedding_given_by_the_caller_is_stored_and_checked(docs: SemanticStore) -> None:
    vector = (await MODEL_A.embed(["quorum queues"]))[0]
    committed = await docs.changeset().put_document("mine", doc(1), embedding=vector).commit()
    hits = await docs.search("quorum queues", k=1, mode="vector", consistent_at=committed.position)
    assert hits[0].id == "mine" and hits[0].vector_rank == 1
    with pytest.raises(InvalidDocumentError, match="embedding of shape"):
        await docs.changeset().put_document("bad", doc(2), embedding=[0.1, 0.2]).commit()


async def test_a_change_set_in_the_callers_transaction_resolves_its_position_after_commit(
    docs: SemanticStore,
) -> None:
    async with docs.data.postgres.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1")  # the caller's own work
        committed = (
            await docs.changeset().put_document("tx", doc(7, words="outbox")).commit(conn=conn)
        )
        assert committed.position is None  # numbered by the log after the commit (issue #13)
    position = await committed.sequenced()
    [stored] = await docs.data.log.read_at([position])
    assert stored.key == "tx" and stored.payload["embedder"] == "hashing-64"
    hits = await docs.search("outbox", k=1, consistent_at=position)
    assert hits[0].id == "tx"


async def test_search_with_consistent_at_sees_the_write_from_another_process(
    docs: SemanticStore, env: dict[str, str]
) -> None:
    """The reader process serves its own FAISS index; each round's document must be its top
    hit for a query only that document matches, searched at the round's position."""
    reader = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.semantic_support", json.dumps(env),
        cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert reader.stdin is not None and reader.stdout is not None
    try:
        assert await asyncio.wait_for(reader.stdout.readline(), 60) == b"ready\n"
        for round_ in range(3):
            changes = docs.changeset()
            for i in range(50):
                changes.put_document(f"r{round_}-{i}", doc(i))
            changes.put_document(f"fresh-{round_}", doc(0, words=f"kafka{round_} zookeeper"))
            committed = await changes.commit()
            reader.stdin.write(f"{committed.position} kafka{round_} zookeeper\n".encode())
            await reader.stdin.drain()
            seen = json.loads(await asyncio.wait_for(reader.stdout.readline(), 60))
            assert seen[0] == f"fresh-{round_}"
    finally:
        reader.stdin.close()
        await asyncio.wait_for(reader.wait(), 30)
    assert reader.returncode == 0


async def test_wait_for_raises_at_once_when_the_projector_is_down(
    docs: SemanticStore, env: dict[str, str], tmp_path: Path
) -> None:
    committed = await docs.changeset().put_document("x", doc(1)).commit()
    assert committed.position is not None
    await docs.data.wait_for(committed.position, timeout=30)
    # another process whose schema lacks the model that built the active vector version
    # (hashing-64): its follower fails with a configuration error, and a wait on it says so at
    # once instead of sitting out the 60 s
    other_env = {**env, "SATELLITES_FAISS_INDEX_PATH": str(tmp_path / "other-faiss")}
    async with DataLayer(DataLayerConfig.from_env(other_env)) as other_data:
        other = SemanticStore(other_data, make_schema(HashingEmbedder(16)))
        broken = other.serve(poll_interval=0.1)
        await broken.start()
        try:
            with pytest.raises(ProjectorDownError, match=r"docs_vectors is failed.*hashing-64"):
                await other_data.wait_for(committed.position, [other.schema.vectors], timeout=60)
        finally:
            await broken.stop()
        # stopped: no projector of that process serves its FAISS index any more
        with pytest.raises(ProjectorDownError, match="no projector of this process"):
            await other_data.wait_for(committed.position, [other.schema.vectors], timeout=60)


def _leg_weights(hits: list[SearchHit]) -> tuple[float, float]:
    """The (text, vector) weights a fused list was made with, solved from the two hits found by
    both legs whose ranks differ most (score = w_t / (60 + text rank) + w_v / (60 + vector
    rank))."""
    rows = [(1 / (RRF_K + h.text_rank), 1 / (RRF_K + h.vector_rank), h.score)
            for h in hits if h.text_rank is not None and h.vector_rank is not None]  # fmt: skip
    a, b = max(itertools.combinations(rows, 2),
               key=lambda p: abs(p[0][0] * p[1][1] - p[0][1] * p[1][0]))  # fmt: skip
    det = a[0] * b[1] - a[1] * b[0]
    assert abs(det) > 1e-7, "no two hits to solve the weights from"
    return (a[2] * b[1] - a[1] * b[2]) / det, (a[0] * b[2] - a[2] * b[0]) / det


async def test_hybrid_weighs_the_legs_by_their_commitment_and_a_lexical_leg_by_0(
    docs: SemanticStore,
) -> None:
    changes = docs.changeset()
    for i in range(40):
        changes.put_document(f"d{i}", doc(i, words=("ranking fusion", "bm25 scores")[i % 2]
                                              + " and more words" * (i % 5)))  # fmt: skip
    committed = await changes.commit()
    query = "bm25 ranking"
    # the hashing embedder is lexical: its leg's weight is scaled by LEXICAL_WEIGHT (0)
    lexical = await docs.search(query, k=10, consistent_at=committed.position)
    assert _leg_weights(lexical) == pytest.approx((1.0, LEXICAL_WEIGHT), abs=1e-9)
    text_only = await docs.search(query, k=10, mode="text")
    assert [h.text_rank for h in lexical] == sorted(h.text_rank for h in text_only)
    # asked for, plain RRF (confidence 0, the static weights)
    plain = await docs.search(query, k=10, confidence=0.0)
    assert _leg_weights(plain) == pytest.approx((1.0, 1.0))
    # only a hybrid search scales it: one leg alone keeps its scores
    assert all(h.score > 0 for h in await docs.search(query, k=10, mode="vector"))
    # asked for, the legs' commitments tilt the weights, which keep their sum
    tilted = _leg_weights(await docs.search(query, k=10, confidence=6.0))
    assert sum(tilted) == pytest.approx(2.0) and abs(tilted[0] - tilted[1]) > 0.01
    store_wide = SemanticStore(docs.data, docs.schema, confidence=6.0)
    assert _leg_weights(await store_wide.search(query, k=10)) == pytest.approx(tilted)
    for bad in ({"confidence": -1.0}, {"depth": 0}, {"weights": (0.0, 0.0)}):
        with pytest.raises(ConfigurationError, match=next(iter(bad))):
            await docs.search(query, k=10, **bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="confidence"):
        SemanticStore(docs.data, docs.schema, confidence=float("nan"))


async def test_the_two_legs_of_a_hybrid_search_run_concurrently(
    docs: SemanticStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each leg held 0.5 s inside its real call (the Elasticsearch client's search, the vector
    index's query): a hybrid search takes about one hold, not two."""
    committed = await docs.changeset().put_document("d1", doc(1)).commit()
    await docs.data.wait_for(committed.position, timeout=30)  # type: ignore[arg-type]
    es, vectors = docs.data.elasticsearch, docs.data.vectors
    for obj, name in ((es, "search"), (vectors, "query")):
        real = getattr(obj, name)

        async def held(*args: object, _real: Any = real, **kwargs: object) -> Any:
            await asyncio.sleep(0.5)
            return await _real(*args, **kwargs)

        monkeypatch.setattr(obj, name, held)
    started = time.perf_counter()
    hits = await docs.search("note relevance", k=5)
    elapsed = time.perf_counter() - started
    assert [h.id for h in hits] == ["d1"] and hits[0].text_rank == hits[0].vector_rank == 1
    assert 0.5 <= elapsed < 0.9, elapsed  # one after the other would be >= 1.0 s
