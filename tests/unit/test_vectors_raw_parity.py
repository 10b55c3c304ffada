"""Results equal raw FAISS's, ids and scores, per index kind and metric, single and coalesced,
with and without a filter, while upserts and deletes run on the same namespace.

The reference is a raw FAISS index that the test builds itself beside the namespace and applies
the same writes to, as a caller of FAISS would: the same index type and parameters, the same
``add_with_ids`` batches and labels, ``remove_ids`` for deletes (HNSW, which has none, searches
with an ``IDSelectorNot`` of the deleted labels), an ``IDSelectorBatch`` of the matching labels for a
filter. FAISS runs on one OpenMP thread here so that HNSW insertion and IVF training are
deterministic on both sides: the two graphs, the two sets of centroids are then the same.

The writer applies its steps one by one while the queries run; every answer must equal the
reference's on one of the states the namespace passed through while that query was in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from satellites_es.config import FaissConfig
from satellites_es.vectors import VectorIndex, VectorMatch
from satellites_es.vectors.validation import check_vectors

DIM = 24
N = 1200
K = 10
FILTER = {"g": 3}
TUNING: dict[str, dict[str, int]] = {
    "flat": {},
    "hnsw": {"hnsw_m": 16, "ef_construction": 40, "ef_search": 32},
    "ivf": {"nlist": 8, "nprobe": 3},
}
#: Writes while queries run: (fresh vectors to upsert, existing ids to delete) per step. HNSW's
#: 6 x 6 = 36 tombstones stay under COMPACT_MIN, so neither side rebuilds its graph.
STEPS = 6
UPSERTS, DELETES = 16, 6

Row = list[tuple[str, float]]


@pytest.fixture(autouse=True)
def one_openmp_thread() -> Iterator[None]:
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture
async def vi(tmp_path: Path) -> AsyncIterator[VectorIndex]:
    index = VectorIndex(FaissConfig(index_path=tmp_path / "faiss", dimension=DIM, threads=2))
    await index.open()
    yield index
    await index.close()


@dataclass
class Reference:
    """Raw FAISS with the namespace's settings, and what a caller keeps beside it."""

    kind: str
    metric: str
    index: Any = None
    ids: list[str] = field(default_factory=list)  # label -> id
    groups: list[int] = field(default_factory=list)  # label -> metadata "g"
    dead: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.faiss_metric = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT

    def add(self, ids: list[str], vectors: np.ndarray, groups: list[int]) -> None:
        stored = check_vectors(vectors, DIM, normalise=self.metric == "cosine")
        labels = np.arange(len(self.ids), len(self.ids) + len(ids), dtype=np.int64)
        if self.index is None:
            self.index = self._new(stored)
        self.index.add_with_ids(stored, labels)
        self.ids += ids
        self.groups += groups

    def _new(self, first: np.ndarray) -> Any:
        tuning = TUNING[self.kind]
        if self.kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(DIM, tuning["hnsw_m"], self.faiss_metric)
            hnsw.hnsw.efConstruction = tuning["ef_construction"]
            return faiss.IndexIDMap2(hnsw)
        if self.kind == "ivf":  # trained on the first batch, as the namespace is
            index = faiss.index_factory(DIM, f"IVF{tuning['nlist']},Flat", self.faiss_metric)
            index.train(first)
            index.set_direct_map_type(faiss.DirectMap.Hashtable)
            return index
        return faiss.IndexIDMap2(faiss.IndexFlat(DIM, self.faiss_metric))

    def delete(self, ids: list[str]) -> None:
        labels = [self.ids.index(i) for i in ids]
        if self.kind == "hnsw":
            self.dead.update(labels)
        else:
            self.index.remove_ids(np.array(labels, np.int64))
            self.dead.update(labels)  # gone from the index; kept out of filters below

    def search(self, queries: np.ndarray, flt: dict[str, int] | None) -> list[Row]:
        rows = check_vectors(queries, DIM, normalise=self.metric == "cosine")
        params = self._params(flt)
        scores, labels = self.index.search(rows, K, params=params)
        return [
            [(self.ids[label], float(score)) for score, label in zip(s, ls, strict=True)]
            for s, ls in zip(scores, labels, strict=True)
        ]

    def _params(self, flt: dict[str, int] | None) -> Any:
        tuning = TUNING[self.kind]
        if flt is not None:
            allowed = [
                label
                for label, g in enumerate(self.groups)
                if g == flt["g"] and label not in self.dead
            ]
            selector = faiss.IDSelectorBatch(np.array(allowed, np.int64))
        elif self.kind == "hnsw" and self.dead:
            inner = faiss.IDSelectorBatch(np.array(sorted(self.dead), np.int64))
            selector = faiss.IDSelectorNot(inner)
            selector.inner = inner  # keep the inner selector alive beside its pointer
        else:
            selector = None
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(tuning["ef_search"], K))
        elif self.kind == "ivf":
            params = faiss.SearchParametersIVF(nprobe=tuning["nprobe"])
        else:
            params = faiss.SearchParameters()
        if selector is not None:
            params.sel = selector
            params.keep = selector
        return params


def _matches(got: list[VectorMatch], candidates: list[Row]) -> bool:
    """``got`` equals one candidate row: the same ids in the same order, scores to float32
    precision (a coalesced batch on a flat index is scored by numpy's BLAS, not FAISS)."""
    ids = [m.id for m in got]
    for want in candidates:
        if ids == [i for i, _ in want] and np.allclose(
            [m.score for m in got], [s for _, s in want], rtol=1e-5, atol=1e-5
        ):
            return True
    return False


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
async def test_results_equal_raw_faiss_while_writes_run(
    vi: VectorIndex, kind: str, metric: str
) -> None:
    rng = np.random.default_rng(11)
    data = rng.normal(size=(N + STEPS * UPSERTS, DIM)).astype(np.float32)
    groups = [i % 10 for i in range(len(data))]
    ids = [f"v{i}" for i in range(len(data))]
    queries = rng.normal(size=(40, DIM)).astype(np.float32)

    await vi.create_namespace("p", dimension=DIM, metric=metric, index_kind=kind, **TUNING[kind])  # type: ignore[arg-type]
    await vi.upsert_arrays("p", ids[:N], data[:N], [{"g": g} for g in groups[:N]])
    reference = Reference(kind, metric)
    reference.add(ids[:N], data[:N], groups[:N])

    # delete hits the queries do see, so a deleted id still found fails the comparison
    seen = [hit for rows in (reference.search(queries, f) for f in (None, FILTER)) for row in rows
            for hit, _ in row[:3]]  # fmt: skip
    deleted = list(dict.fromkeys(seen))[: STEPS * DELETES]
    writes: list[slice | str] = []  # each one write: a batch upsert, or one delete
    for step in range(STEPS):
        writes.append(slice(N + step * UPSERTS, N + (step + 1) * UPSERTS))
        writes += deleted[step * DELETES : (step + 1) * DELETES]

    def expect() -> dict[int | None, list[Row]]:
        return {None: reference.search(queries, None), 3: reference.search(queries, FILTER)}

    expected = [expect()]  # expected[n]: the reference's rows after n writes
    for write in writes:
        if isinstance(write, slice):
            reference.add(ids[write], data[write], groups[write])
        else:
            reference.delete([write])
        expected.append(expect())

    done = 0  # writes the namespace has completed
    checked = {"coalesced": 0, "single": 0}

    async def writer() -> None:
        nonlocal done
        for write in writes:
            await asyncio.sleep(0.001)
            if isinstance(write, slice):
                metas = [{"g": g} for g in groups[write]]
                await vi.upsert_arrays("p", ids[write], data[write], metas)
            else:
                assert await vi.delete("p", write)
            done += 1

    def check(i: int, got: list[VectorMatch], flt: dict[str, int] | None, lo: int, hi: int) -> None:
        states = range(lo, min(hi + 1, len(writes)) + 1)
        candidates = [expected[s][None if flt is None else 3][i] for s in states]
        assert _matches(got, candidates), (kind, metric, flt, i, list(states), got, candidates)

    async def coalesced(flt: dict[str, int] | None) -> None:
        while True:
            lo, last = done, done == len(writes)
            hits = await asyncio.gather(*(vi.query("p", q, K, filter=flt) for q in queries))
            for i, got in enumerate(hits):
                check(i, got, flt, lo, done)
            checked["coalesced"] += len(hits)
            if last:
                return

    async def single(flt: dict[str, int] | None) -> None:
        while True:
            last = done == len(writes)
            for i, q in enumerate(queries[:8]):
                lo = done
                check(i, await vi.query("p", q, K, filter=flt), flt, lo, done)
                checked["single"] += 1
            if last:
                return

    await asyncio.gather(writer(), coalesced(None), coalesced(FILTER), single(None), single(FILTER))
    assert checked["coalesced"] >= 4 * len(queries) and checked["single"] >= 32
    stats = vi.stats()["namespaces"]["p"]
    assert stats["coalesced_queries"] > stats["faiss_searches"]  # some queries did share a search


async def test_a_single_query_on_a_small_index_runs_without_a_thread_hop(
    vi: VectorIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One HNSW query is answered on the event loop once its plan is built (the first query
    after a write builds it on a search thread)."""
    data = np.random.default_rng(5).normal(size=(500, DIM)).astype(np.float32)
    await vi.create_namespace("h", dimension=DIM, metric="l2", index_kind="hnsw")
    await vi.upsert_arrays("h", [str(i) for i in range(500)], data)
    hops = 0
    searcher = vi._searcher
    assert searcher is not None
    submit = searcher.submit

    def counting(fn: Any, *args: Any) -> Any:
        nonlocal hops
        hops += 1
        return submit(fn, *args)

    monkeypatch.setattr(searcher, "submit", counting)
    first = await vi.query("h", data[0], K)
    assert hops == 1 and first[0].id == "0"
    for i in range(1, 20):
        assert (await vi.query("h", data[i], K))[0].id == str(i)
    assert hops == 1
    await vi.upsert_arrays("h", ["new"], data[:1] + 1)  # a write: the plan is built again
    await vi.query("h", data[0], K)
    assert hops == 2
    await vi.query("h", data[0], K)
    assert hops == 2


async def test_lone_queries_after_a_queued_one_are_answered_without_yielding(
    vi: VectorIndex,
) -> None:
    """Once the plan is built, a caller querying in a loop is answered on the spot each time: no
    query waits for a loop turn (a queued one would let the ``call_soon`` callback run). The
    first, queued query's drain and search task must not hold later ones in the queue."""
    data = np.random.default_rng(6).normal(size=(500, DIM)).astype(np.float32)
    await vi.create_namespace("h", dimension=DIM, metric="l2", index_kind="hnsw")
    await vi.upsert_arrays("h", [str(i) for i in range(500)], data)
    assert (await vi.query("h", data[0], K))[0].id == "0"  # builds the plan on a search thread
    turns: list[int] = []
    asyncio.get_running_loop().call_soon(turns.append, 1)
    for i in range(1, 30):
        assert (await vi.query("h", data[i], K))[0].id == str(i)
    assert turns == []
    await asyncio.sleep(0)
    assert turns == [1]


async def test_an_inline_query_searches_with_one_openmp_thread_and_restores_the_width(
    vi: VectorIndex,
) -> None:
    """A query answered on the event loop runs FAISS with a team of one (a parallel region for
    one query only wakes and waits for the team) and leaves the thread's width as it found it."""
    data = np.random.default_rng(7).normal(size=(500, DIM)).astype(np.float32)
    await vi.create_namespace("h", dimension=DIM, metric="l2", index_kind="hnsw")
    await vi.upsert_arrays("h", [str(i) for i in range(500)], data)
    await vi.query("h", data[0], K)  # builds the plan on a search thread
    namespace = vi._slots["h"].ns
    search = namespace._faiss_search
    widths: list[int] = []

    def recording(*args: Any) -> Any:
        widths.append(faiss.omp_get_max_threads())
        return search(*args)

    namespace._faiss_search = recording  # type: ignore[method-assign]
    faiss.omp_set_num_threads(3)
    assert (await vi.query("h", data[1], K))[0].id == "1"
    assert widths == [1]
    assert faiss.omp_get_max_threads() == 3
