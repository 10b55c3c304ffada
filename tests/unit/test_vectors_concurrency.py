"""Concurrency: queries during writes, coalescing of single queries, bounded memory."""

from __future__ import annotations

import asyncio
import random
import resource
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from satellites_es.config import FaissConfig
from satellites_es.vectors import VectorIndex, VectorMatch
from satellites_es.vectors.coalesce import QueryCoalescer
from satellites_es.vectors.namespace import COMPACT_FRACTION, COMPACT_MIN

DIM = 16
N = 1000
BASE = np.random.default_rng(3).normal(size=(N, DIM)).astype(np.float32)


def _vector(i: int, gen: int) -> np.ndarray:
    """Each (id, generation) has its own direction, so a score tells which version was seen."""
    return BASE[i] + np.float32(0.5) * np.sin(np.arange(DIM, dtype=np.float32) * (gen + 1))


def _generation_zero() -> list[tuple[str, np.ndarray, dict[str, Any]]]:
    return [(f"v{i}", _vector(i, 0), {"id": f"v{i}", "gen": 0, "odd": i % 2}) for i in range(N)]


@pytest.fixture
async def index(tmp_path: Path) -> AsyncIterator[VectorIndex]:
    vi = VectorIndex(FaissConfig(index_path=tmp_path / "faiss", dimension=DIM, threads=2))
    await vi.open()
    yield vi
    await vi.close()


def _check_hits(query: np.ndarray, hits: list[VectorMatch], flt: dict[str, Any] | None) -> None:
    assert len({h.id for h in hits}) == len(hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    q = query / np.linalg.norm(query)
    for hit in hits:
        meta = hit.metadata
        assert meta is not None and meta["id"] == hit.id
        assert flt is None or all(meta[k] == v for k, v in flt.items())
        v = _vector(int(hit.id[1:]), meta["gen"])
        assert hit.score == pytest.approx(float(q @ (v / np.linalg.norm(v))), abs=1e-4)


def _same_hits(got: list[VectorMatch], want: list[VectorMatch]) -> None:
    """Equal hits; a batch scored by BLAS may differ from a single FAISS scan in the last bit."""
    assert [(h.id, h.metadata) for h in got] == [(h.id, h.metadata) for h in want]
    np.testing.assert_allclose([h.score for h in got], [h.score for h in want], rtol=1e-5)


async def _writer(index: VectorIndex, stop: asyncio.Event, seed: int) -> int:
    rng, gen, writes = random.Random(seed), 1, 0
    while not stop.is_set():
        gen += 1
        ids = rng.sample(range(N), 50)
        items = [(f"v{i}", _vector(i, gen), {"id": f"v{i}", "gen": gen, "odd": i % 2}) for i in ids]
        await index.upsert_many("ns", items)
        for i in rng.sample(range(N), 10):
            await index.delete("ns", f"v{i}")
        writes += 1
    return writes


async def _reader(index: VectorIndex, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(rounds):
        query = BASE[rng.randrange(N)]
        flt = rng.choice([None, {"odd": 1}, {"odd": 0}])
        _check_hits(query, await index.query("ns", query, 10, filter=flt), flt)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
async def test_queries_during_upserts_and_deletes_stay_consistent(
    index: VectorIndex, kind: Any
) -> None:
    await index.create_namespace("ns", index_kind=kind)
    await index.upsert_many("ns", _generation_zero())
    stop = asyncio.Event()
    writers = [asyncio.create_task(_writer(index, stop, seed)) for seed in range(2)]
    try:
        await asyncio.gather(*(_reader(index, 60, seed) for seed in range(16)))
    finally:
        stop.set()
        writes = await asyncio.gather(*writers)
    assert all(w > 0 for w in writes)
    stats = index.stats()["namespaces"]["ns"]
    assert stats["count"] == await index.count("ns") <= N


async def test_concurrent_single_queries_are_coalesced(index: VectorIndex) -> None:
    await index.upsert_many("ns", _generation_zero())
    queries = np.stack([_vector(i, 0) for i in range(64)]) + 0.05
    expected = await index.query_many("ns", queries, 10)
    before = index.stats()["namespaces"]["ns"]["faiss_searches"]
    results = await asyncio.gather(*(index.query("ns", q, 10) for q in queries))
    searches = index.stats()["namespaces"]["ns"]["faiss_searches"] - before
    assert searches <= 2, searches
    for got, want in zip(results, expected, strict=True):  # each caller got its own row
        _same_hits(got, want)


async def test_coalesced_queries_with_different_top_k_and_filters(index: VectorIndex) -> None:
    await index.upsert_many("ns", _generation_zero())
    calls = [(_vector(i, 0), 1 + i % 7, [None, {"odd": 1}][i % 2]) for i in range(64)]
    before = index.stats()["namespaces"]["ns"]["faiss_searches"]
    results = await asyncio.gather(*(index.query("ns", q, k, filter=f) for q, k, f in calls))
    assert index.stats()["namespaces"]["ns"]["faiss_searches"] - before <= 4
    for (q, k, f), hits in zip(calls, results, strict=True):
        _same_hits(hits, (await index.query_many("ns", [q], k, filter=f))[0])
        assert len(hits) == k
        _check_hits(q, hits, f)


async def test_a_cancelled_query_does_not_disturb_the_others(index: VectorIndex) -> None:
    await index.upsert_many("ns", [(f"v{i}", BASE[i], None) for i in range(N)])
    tasks = [asyncio.create_task(index.query("ns", BASE[i], 3)) for i in range(20)]
    tasks[5].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[5], asyncio.CancelledError)
    for i, hits in enumerate(results):
        if i != 5:
            assert isinstance(hits, list) and hits[0].id == f"v{i}"


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
async def test_upsert_delete_cycles_keep_memory_bounded(index: VectorIndex, kind: Any) -> None:
    await index.create_namespace("ns", index_kind=kind)
    await index.upsert_many("ns", [(f"keep{i}", BASE[i], {"k": i}) for i in range(100)])
    namespace = index._slots["ns"].ns
    rss_after_warmup = 0
    for cycle in range(10_000):
        await index.upsert("ns", f"c{cycle}", BASE[cycle % N], {"cycle": cycle})
        assert await index.delete("ns", f"c{cycle}")
        if cycle % 10 == 0:
            await index.upsert("ns", f"p{cycle % 100 // 10}", BASE[0], position=cycle)
        if cycle == 1000:
            rss_after_warmup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if cycle % 500 == 0:
            _assert_bounded(index, namespace)
    _assert_bounded(index, namespace)
    growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_after_warmup
    assert growth_kib < 32 * 1024, f"peak RSS grew by {growth_kib} KiB"


def _assert_bounded(index: VectorIndex, namespace: Any) -> None:
    stats = index.stats()["namespaces"]["ns"]
    assert stats["count"] == 110 or stats["count"] <= 110
    assert stats["ntotal"] <= 110 + max(COMPACT_MIN, COMPACT_FRACTION * stats["ntotal"]) + 1
    assert len(namespace._entries) == len(namespace._label_of) == stats["count"]
    assert len(namespace._positions) <= 10
    assert len(namespace._filters) <= 100 + 1


async def test_concurrent_hnsw_queries_split_into_one_part_per_search_thread(
    index: VectorIndex,
) -> None:
    """On an approximate index a burst is cut into one part per search thread (the parts search
    side by side); a lone query before it is answered inline. ``ef_search`` is raised so that a
    part of 31 or 32 is too big for the event loop (``INLINE_MAX_WORK``; a part of 15 is not, and
    searches there)."""
    await index.create_namespace("ns", index_kind="hnsw", ef_search=256)
    await index.upsert_many("ns", _generation_zero())
    queries = np.stack([_vector(i, 0) for i in range(64)]) + 0.05
    expected = await index.query_many("ns", queries, 10)
    searcher = index._searcher
    assert searcher is not None and searcher.count == 2
    coalescer = index._slots["ns"].coalescer
    sizes: list[int] = []
    search = coalescer._search

    async def recording(matrix: np.ndarray, *args: Any) -> Any:
        sizes.append(len(matrix))  # a part, searched on a thread or, if small, on the event loop
        return await search(matrix, *args)

    coalescer._search = recording  # type: ignore[method-assign]
    before = index.stats()["namespaces"]["ns"]
    first: dict[int, list[VectorMatch]] = {}

    async def twice(i: int) -> list[VectorMatch]:
        first[i] = await index.query("ns", queries[i], 10)
        return await index.query("ns", queries[i], 10)

    results = await asyncio.gather(*(twice(i) for i in range(64)))
    after = index.stats()["namespaces"]["ns"]
    # the first caller of the turn is answered inline (twice: it never yields), the other 63 in
    # two parts of 32 and 31; those query again at once and all queue, none inline (that held
    # the event loop for a search while the others waited): 63 more in parts, however they fall
    assert sorted(sizes[:2]) == [31, 32] and sum(sizes) == 126, sizes
    assert after["faiss_searches"] - before["faiss_searches"] == len(sizes) + 2
    assert after["coalesced_queries"] - before["coalesced_queries"] == 128
    for i, (got, want) in enumerate(zip(results, expected, strict=True)):
        _same_hits(first[i], want)
        _same_hits(got, want)


async def test_callers_of_two_parts_answered_in_one_loop_turn_do_not_search_inline() -> None:
    """Two parts whose searches end in the same loop turn: every caller they answered queries
    again, and none of those queries is answered inline (only the lone first caller is)."""
    release = asyncio.Event()
    inline_calls = 0

    async def search(matrix: np.ndarray, k: int, flt: Any) -> list[list[VectorMatch]]:
        await release.wait()  # both parts resume in the same turn once it is set
        return [[VectorMatch(str(float(row[0])), 0.0)] for row in matrix]

    def inline(matrix: np.ndarray, k: int, flt: Any) -> list[list[VectorMatch]]:
        nonlocal inline_calls
        inline_calls += 1
        return [[VectorMatch(str(float(matrix[0][0])), 0.0)]]

    coalescer = QueryCoalescer(search, max_batch=64, name="t", inline=inline, parts=lambda: 2)

    async def twice(i: int) -> list[str]:
        row = np.full((1, 2), i, np.float32)
        first = await coalescer.query(row, 1, None)
        second = await coalescer.query(row, 1, None)
        return [first[0].id, second[0].id]

    callers = asyncio.gather(*(twice(i) for i in range(40)))
    for _ in range(5):
        await asyncio.sleep(0)
    release.set()
    results = await callers
    assert results == [[str(float(i))] * 2 for i in range(40)]
    assert inline_calls == 2  # the first caller's two queries, before anything was queued
    await coalescer.close()
