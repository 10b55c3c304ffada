"""The vector stage's approximate-index figures (HNSW, IVF) and recall/throughput curves.

Imported by :mod:`bench.stages.vectors` (not a stage of its own). Each kind is built twice from
the same clustered data, with the same parameters: a project namespace through ``upsert_arrays``
and a raw FAISS index through ``add_with_ids`` (IVF: ``IVF<nlist>,Flat`` trained on the batches
the namespace trains on: the first ones holding ``nlist * 39`` vectors). Then, per kind, in alternated rounds:

* ``<kind>_query_latency``: p50 ms of one ``query`` at a time against one raw ``search``.
* ``<kind>_concurrent_vs_batched``: queries/s of 64 concurrent callers issuing single queries
  against raw FAISS searching the same queries 64 to a batch (the ceiling).
* ``<kind>_concurrent_vs_single``: the same project rate against raw FAISS one query at a time.
* ``<kind>_filtered_latency``: p50 ms of one query with a metadata filter matching 10% of the
  vectors against raw FAISS with an ``IDSelectorBatch`` of those labels (built once).

``curves``: for flat, HNSW at several ``efSearch`` and IVF at several ``nprobe``, recall@10
against exact search and queries/s, single and 64-concurrent, project and raw side by side
(raw's "concurrent" is its batched search). ``bench/plot_vectors.py`` draws them.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import faiss
import numpy as np

from satellites_es.vectors import VectorIndex

TOP_K = 10
CONCURRENCY = 64
BATCH = 10_000
HNSW = {"hnsw_m": 32, "ef_construction": 40, "ef_search": 64}
SELECTIVITY = 10  # the filter matches one vector in 10


def clustered(n: int, dim: int, seed: int, centers: int = 1000) -> np.ndarray:
    """Points around shared cluster centres (ANN indexes are built for such data, not noise)."""
    middle = np.random.default_rng(0).normal(size=(centers, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(n, dim)).astype(np.float32)
    return np.ascontiguousarray(middle[rng.integers(0, centers, n)] + noise)


def _raw_index(kind: str, data: np.ndarray, nlist: int) -> Any:
    dim = data.shape[1]
    if kind == "hnsw":
        index = faiss.IndexIDMap2(faiss.IndexHNSWFlat(dim, HNSW["hnsw_m"], faiss.METRIC_L2))
        faiss.downcast_index(index.index).hnsw.efConstruction = HNSW["ef_construction"]
    elif kind == "ivf":
        index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_L2)
        # the namespace trains once an upsert batch brings it to nlist * 39 vectors, on them all
        index.train(data[: -(-nlist * 39 // BATCH) * BATCH])
    else:
        index = faiss.IndexIDMap2(faiss.IndexFlatL2(dim))
    for start in range(0, len(data), BATCH):
        chunk = data[start : start + BATCH]
        index.add_with_ids(chunk, np.arange(start, start + len(chunk), dtype=np.int64))
    return index


def _set_raw(index: Any, kind: str, value: int) -> None:
    if kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efSearch = value
    elif kind == "ivf":
        index.nprobe = value


class Side:
    """One kind built on both sides; ``raw_params`` adds the filter's selector to raw searches."""

    def __init__(self, kind: str, vi: VectorIndex, raw: Any, n: int) -> None:
        self.kind, self.vi, self.raw, self.name = kind, vi, raw, f"ann-{kind}"
        labels = np.arange(3, n, SELECTIVITY, dtype=np.int64)  # i % 10 == 3
        self.selector = faiss.IDSelectorBatch(labels)
        self.value = HNSW["ef_search"] if kind == "hnsw" else 8

    async def tune(self, value: int) -> None:
        self.value = value
        _set_raw(self.raw, self.kind, value)
        if self.kind == "hnsw":
            await self.vi.tune_namespace(self.name, ef_search=value)
        elif self.kind == "ivf":
            await self.vi.tune_namespace(self.name, nprobe=value)

    def raw_filtered(self, q: np.ndarray) -> Any:
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=self.value, sel=self.selector)
        elif self.kind == "ivf":
            params = faiss.SearchParametersIVF(nprobe=self.value, sel=self.selector)
        else:
            params = faiss.SearchParameters(sel=self.selector)
        return self.raw.search(q, TOP_K, params=params)


async def build(kind: str, vi: VectorIndex, data: np.ndarray, nlist: int) -> Side:
    name = f"ann-{kind}"
    tuning = HNSW if kind == "hnsw" else {"nlist": nlist, "nprobe": 8} if kind == "ivf" else {}
    await vi.create_namespace(name, dimension=data.shape[1], metric="l2", index_kind=kind, **tuning)
    ids = [str(i) for i in range(len(data))]
    metas = [{"tenth": i % SELECTIVITY} for i in range(len(data))]
    for start in range(0, len(data), BATCH):
        end = start + BATCH
        await vi.upsert_arrays(name, ids[start:end], data[start:end], metas[start:end])
    side = Side(kind, vi, _raw_index(kind, data, nlist), len(data))
    await side.tune(side.value)
    return side


async def _latencies(side: Side, queries: np.ndarray, filtered: bool) -> tuple[float, float]:
    """p50 ms of single queries, project and raw alternated query by query, and which side goes
    first alternated too: with raw always first, IVF's project latency came out 1.2-1.5x raw while
    FAISS's own search on the project's index, alternated with raw, came out 0.82-0.84x raw (the
    order, not the async path, made the gap)."""
    flt = {"tenth": 3} if filtered else None
    project: list[float] = []
    raw: list[float] = []

    def raw_search(row: np.ndarray) -> None:
        side.raw_filtered(row) if filtered else side.raw.search(row, TOP_K)

    for i, q in enumerate(queries):
        row = q.reshape(1, -1)
        if i % 2:
            started = time.perf_counter()
            raw_search(row)
            raw.append(time.perf_counter() - started)
        started = time.perf_counter()
        await side.vi.query(side.name, q, TOP_K, filter=flt)
        project.append(time.perf_counter() - started)
        if not i % 2:
            started = time.perf_counter()
            raw_search(row)
            raw.append(time.perf_counter() - started)
    return statistics.median(project) * 1000, statistics.median(raw) * 1000


async def concurrent(side: Side, queries: np.ndarray) -> tuple[float, list[list[str]]]:
    """Queries/s of 64 callers each awaiting single queries in turn, and the hits' ids."""
    per_caller = len(queries) // CONCURRENCY
    found: list[list[str]] = [[] for _ in range(per_caller * CONCURRENCY)]

    async def caller(c: int) -> None:
        for i in range(c * per_caller, (c + 1) * per_caller):
            found[i] = [m.id for m in await side.vi.query(side.name, queries[i], TOP_K)]

    started = time.perf_counter()
    await asyncio.gather(*(caller(c) for c in range(CONCURRENCY)))
    return len(found) / (time.perf_counter() - started), found


def raw_single(side: Side, queries: np.ndarray) -> float:
    started = time.perf_counter()
    for q in queries:
        side.raw.search(q.reshape(1, -1), TOP_K)
    return len(queries) / (time.perf_counter() - started)


def raw_batched(side: Side, queries: np.ndarray) -> tuple[float, np.ndarray]:
    labels = []
    started = time.perf_counter()
    for start in range(0, len(queries), CONCURRENCY):
        labels.append(side.raw.search(queries[start : start + CONCURRENCY], TOP_K)[1])
    return len(queries) / (time.perf_counter() - started), np.vstack(labels)


async def project_single(side: Side, queries: np.ndarray) -> float:
    started = time.perf_counter()
    for q in queries:
        await side.vi.query(side.name, q, TOP_K)
    return len(queries) / (time.perf_counter() - started)


def recall(found: Any, truth: np.ndarray) -> float:
    hits = sum(len({int(x) for x in row} & set(truth[i].tolist())) for i, row in enumerate(found))
    return hits / truth.size


def _figure(project: float, raw: float, unit: str, goal: str, **extra: Any) -> dict[str, Any]:
    return {"project": project, "raw": raw, "ratio": project / raw if raw else 1.0, "unit": unit,
            "goal": goal, **extra}  # fmt: skip


async def goal_figures(side: Side, queries: np.ndarray, rounds: int) -> dict[str, dict[str, Any]]:
    """The issue's goals on one kind at its default parameters (see the module docstring); for
    flat only the filtered one (the stage's own figures cover the rest)."""
    kind, few = side.kind, queries[: CONCURRENCY * 2]
    filtered = await _latencies(side, few, filtered=True)
    filtered_figure = _figure(
        *filtered, "ms", "<= 1.5x",
        note="p50 of one query, filter matching 10%; raw: IDSelectorBatch built once",
    )  # fmt: skip
    if kind == "flat":
        return {"flat_filtered_latency": filtered_figure}
    latency = await _latencies(side, few, filtered=False)
    rates: dict[str, list[float]] = {"project": [], "single": [], "batched": []}
    for _ in range(rounds):
        rates["single"].append(raw_single(side, few))
        rates["batched"].append(raw_batched(side, queries)[0])
        rates["project"].append((await concurrent(side, queries))[0])
    p50 = {name: statistics.median(values) for name, values in rates.items()}
    note = f"{CONCURRENCY} concurrent callers of single queries"
    return {
        f"{kind}_query_latency": _figure(*latency, "ms", "<= 1.3x", note="p50, top 10"),
        f"{kind}_concurrent_vs_batched": _figure(
            p50["project"], p50["batched"], "queries/s", ">= 0.8x",
            note=f"{note}; raw: the same queries {CONCURRENCY} to a batch",
        ),
        f"{kind}_concurrent_vs_single": _figure(
            p50["project"], p50["single"], "queries/s", ">= 1.5x",
            note=f"{note}; raw: one search at a time",
        ),
        f"{kind}_filtered_latency": filtered_figure,
    }  # fmt: skip


async def curve(
    side: Side, values: list[int], queries: np.ndarray, truth: np.ndarray
) -> list[dict[str, Any]]:
    """One point per parameter value: recall@10 and queries/s, project and raw."""
    points = []
    few = queries[: CONCURRENCY * 2]
    for value in values:
        await side.tune(value)
        raw_rate, raw_found = raw_batched(side, queries)
        rate, found = await concurrent(side, queries)
        points.append({
            "kind": side.kind, "param": value,
            "project_recall": recall(found, truth), "raw_recall": recall(raw_found, truth),
            "project_concurrent": rate, "raw_batched": raw_rate,
            "project_single": await project_single(side, few), "raw_single": raw_single(side, few),
        })  # fmt: skip
    await side.tune(HNSW["ef_search"] if side.kind == "hnsw" else 8)
    return points


def exact_truth(data: np.ndarray, queries: np.ndarray) -> np.ndarray:
    index = faiss.IndexFlatL2(data.shape[1])
    index.add(data)
    return np.asarray(index.search(queries, TOP_K)[1])
