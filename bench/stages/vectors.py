"""Vector benchmark: VectorIndex against raw FAISS on the same data, in the same run.

* ``add_throughput``: vectors/s of ``upsert_arrays`` (string ids, validation, id map) of the same
  ready-made float32 matrices, in batches of 10,000, against
  ``IndexIDMap2(IndexFlatIP).add_with_ids`` of those matrices with int64 ids.
  ``add_throughput_from_items``: ``upsert_many`` of ``(str id, vector, None)`` items against a raw
  caller starting from the same items (stack the rows, number the ids in a dict, add).
* ``query_latency``: p50 ms of one ``query`` at a time (top 10) against ``index.search`` of one
  vector on an index holding the same vectors.
* ``coalesced_query_throughput``: queries/s of 64 concurrent callers each issuing single
  ``query`` calls (coalesced into batched searches) against raw FAISS answering the same queries
  one ``search`` at a time, as a caller without coalescing would.

The add figures' ratio is the median of the rounds' own ratios (see ``paired``): each side builds a
150 MB index from nothing, which is page-fault bound in this VM, and one round's ratio ranges from
0.3x to 2.4x; ``round_ratios`` in the JSON lists them.

Both sides use the ``ip`` metric on a flat index so FAISS does the same work (cosine would add the
project's normalisation). Full size: 100k x 384 (``--quick``: 20k x 384, named in the note).
Rounds alternate between the two sides so that drift on a shared machine hits both.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from bench.stages import vectors_ann as ann
from satellites_es.config import FaissConfig
from satellites_es.vectors import VectorIndex

DIM = 384
BATCH = 10_000
CONCURRENCY = 64
TOP_K = 10


def _figure(project: float, raw: float, unit: str, goal: str, **extra: Any) -> dict[str, Any]:
    ratio = project / raw if raw else 1.0
    return {"project": project, "raw": raw, "ratio": ratio, "unit": unit, "goal": goal, **extra}


def _data(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


Batch = list[tuple[str, np.ndarray, None]]


def _batches(data: np.ndarray) -> list[Batch]:
    """The caller's view: (string id, vector, metadata) items, 10,000 to a batch."""
    return [
        [(f"doc-{i}", data[i], None) for i in range(start, min(start + BATCH, len(data)))]
        for start in range(0, len(data), BATCH)
    ]


def _raw_add(data: np.ndarray) -> tuple[Any, float]:
    """add_with_ids of ready-made float32 matrices and int64 ids: FAISS's own speed."""
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    started = time.perf_counter()
    for start in range(0, len(data), BATCH):
        chunk = data[start : start + BATCH]
        index.add_with_ids(chunk, np.arange(start, start + len(chunk), dtype=np.int64))
    return index, len(data) / (time.perf_counter() - started)


def _raw_add_items(batches: list[Batch]) -> float:
    """The least a raw caller does with the same items: stack the rows, number the ids."""
    index, labels, n = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM)), {}, 0
    started = time.perf_counter()
    for batch in batches:
        matrix = np.array([v for _, v, _ in batch], dtype=np.float32)
        ids = np.arange(n, n + len(batch), dtype=np.int64)
        labels.update(zip((i for i, _, _ in batch), ids.tolist(), strict=True))
        index.add_with_ids(matrix, ids)
        n += len(batch)
    return n / (time.perf_counter() - started)


async def _project_add(vi: VectorIndex, name: str, data: np.ndarray) -> float:
    await vi.create_namespace(name, dimension=DIM, metric="ip", index_kind="flat")
    ids = [f"doc-{i}" for i in range(len(data))]
    started = time.perf_counter()
    for start in range(0, len(data), BATCH):
        await vi.upsert_arrays(name, ids[start : start + BATCH], data[start : start + BATCH])
    return len(data) / (time.perf_counter() - started)


async def _project_add_items(vi: VectorIndex, name: str, batches: list[Batch]) -> float:
    await vi.create_namespace(name, dimension=DIM, metric="ip", index_kind="flat")
    started = time.perf_counter()
    for batch in batches:
        await vi.upsert_many(name, batch)
    return sum(map(len, batches)) / (time.perf_counter() - started)


async def _add_figures(
    vi: VectorIndex, data: np.ndarray, rounds: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each side builds its index from nothing and frees it before the next side runs, in an
    order rotated every round: freeing 150 MB hands it back to the OS, and whoever builds next
    pays the page faults again, so no side may inherit warm memory from another."""
    batches = _batches(data)
    rates: dict[str, list[float]] = {"project": [], "raw": [], "items": [], "raw_items": []}

    async def project() -> float:
        rate = await _project_add(vi, "bench-add", data)
        await vi.drop_namespace("bench-add")
        return rate

    async def items() -> float:
        rate = await _project_add_items(vi, "bench-add-items", batches)
        await vi.drop_namespace("bench-add-items")
        return rate

    async def raw() -> float:
        return _raw_add(data)[1]

    async def raw_items() -> float:
        return _raw_add_items(batches)

    sides = [("project", project), ("raw", raw), ("items", items), ("raw_items", raw_items)]
    for r in range(rounds):
        for name, side in sides[r % 4 :] + sides[: r % 4]:
            rates[name].append(await side())
    p50 = {name: statistics.median(values) for name, values in rates.items()}

    def paired(project: str, raw: str, note: str) -> dict[str, Any]:
        """The ratio is the median of the rounds' own ratios: building 150 MB from nothing is
        page-fault bound in this VM, and the raw side alone moves by 2x between rounds, which
        a ratio of medians would carry in whole."""
        ratios = [p / r for p, r in zip(rates[project], rates[raw], strict=True)]
        figure = _figure(p50[project], p50[raw], "vectors/s", ">= 0.8x", note=note)
        figure["ratio"] = statistics.median(ratios)
        figure["round_ratios"] = [round(r, 2) for r in ratios]
        return figure

    return (
        paired("project", "raw", "upsert_arrays(str ids, float32 matrix) in batches of 10,000; "
               "raw: add_with_ids; ratio = median of per-round ratios"),
        paired("items", "raw_items", "upsert_many of (str id, row, None) items in batches of "
               "10,000; raw: stack the same items, dict of ids, add_with_ids; ratio = median of "
               "per-round ratios"),
    )  # fmt: skip


async def _query_indexes(vi: VectorIndex, data: np.ndarray) -> Any:
    """The raw index and the namespace ``bench-0`` the query figures search (not timed)."""
    index, _ = _raw_add(data)
    await _project_add(vi, "bench-0", data)
    return index


async def _latency_figure(vi: VectorIndex, raw_index: Any, queries: np.ndarray) -> dict[str, Any]:
    project, raw = [], []
    for q in queries:
        started = time.perf_counter()
        raw_index.search(q.reshape(1, -1), TOP_K)
        raw.append(time.perf_counter() - started)
        started = time.perf_counter()
        await vi.query("bench-0", q, TOP_K)
        project.append(time.perf_counter() - started)
    p50 = statistics.median
    return _figure(p50(project) * 1000, p50(raw) * 1000, "ms", "<= 1.3x", note="p50, top 10")


async def _coalesced_rate(vi: VectorIndex, queries: np.ndarray) -> float:
    per_caller = len(queries) // CONCURRENCY

    async def caller(c: int) -> None:
        for q in queries[c * per_caller : (c + 1) * per_caller]:
            await vi.query("bench-0", q, TOP_K)

    started = time.perf_counter()
    await asyncio.gather(*(caller(c) for c in range(CONCURRENCY)))
    return per_caller * CONCURRENCY / (time.perf_counter() - started)


def _one_at_a_time_rate(raw_index: Any, queries: np.ndarray) -> float:
    started = time.perf_counter()
    for q in queries:
        raw_index.search(q.reshape(1, -1), TOP_K)
    return len(queries) / (time.perf_counter() - started)


def _batched_rate(raw_index: Any, queries: np.ndarray) -> float:
    """Raw FAISS searching the 64 queries as one batch: the best coalescing could reach."""
    started = time.perf_counter()
    for start in range(0, len(queries), CONCURRENCY):
        raw_index.search(queries[start : start + CONCURRENCY], TOP_K)
    return len(queries) / (time.perf_counter() - started)


async def _throughput_figure(
    vi: VectorIndex, raw_index: Any, queries: np.ndarray, rounds: int
) -> dict[str, Any]:
    project, raw, batched = [], [], []
    before = vi.stats()["namespaces"]["bench-0"]
    for _ in range(rounds):
        raw.append(_one_at_a_time_rate(raw_index, queries[: CONCURRENCY * 2]))
        batched.append(_batched_rate(raw_index, queries))
        project.append(await _coalesced_rate(vi, queries))
    after = vi.stats()["namespaces"]["bench-0"]
    searches = after["faiss_searches"] - before["faiss_searches"]
    batch = (after["coalesced_queries"] - before["coalesced_queries"]) / max(1, searches)
    return _figure(
        statistics.median(project),
        statistics.median(raw),
        "queries/s",
        ">= 8x",
        raw_batched=statistics.median(batched),
        note=(
            f"{CONCURRENCY} concurrent callers; mean coalesced batch {batch:.1f}; "
            f"raw_batched = raw FAISS on batches of {CONCURRENCY}, the ceiling"
        ),
    )


#: Curve points: HNSW efSearch and IVF nprobe values (quick: two each).
CURVES = {"flat": [0], "hnsw": [16, 32, 64, 128, 256], "ivf": [1, 2, 4, 8, 16, 32]}
QUICK_CURVES = {"flat": [0], "hnsw": [16, 64], "ivf": [2, 8]}


#: The issue's larger run (``python -m bench.stages.vectors --large``): vectors, dimension, and
#: IVF lists (~sqrt(n), as at 100k: 256).
LARGE = (1_000_000, 128, 1024)


async def _ann_figures(
    vi: VectorIndex, quick: bool, n: int = 0, dim: int = DIM, nlist: int = 0
) -> dict[str, dict[str, Any]]:
    """HNSW and IVF goals, filtered queries and the recall/throughput curves (:mod:`.vectors_ann`),
    on clustered ``n`` x ``dim`` l2 data (default 100k x 384, quick: 20k), one kind in memory at
    a time."""
    n = n or (20_000 if quick else 100_000)
    nlist = nlist or (64 if quick else 256)
    data = ann.clustered(n, dim, 3)
    queries = ann.clustered(CONCURRENCY * (4 if quick else 8), dim, 4)
    truth = ann.exact_truth(data, queries)
    figures: dict[str, dict[str, Any]] = {}
    for kind, values in (QUICK_CURVES if quick else CURVES).items():
        side = await ann.build(kind, vi, data, nlist=nlist)
        figures.update(await ann.goal_figures(side, queries, rounds=2 if quick else 3))
        for point in await ann.curve(side, values, queries, truth):
            figures.update(_curve_figures(point))
        await vi.drop_namespace(side.name)
        del side
    count = f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"
    size = f"{count} x {dim} clustered l2, nlist {nlist}" + (" (quick)" if quick else "")
    for figure in figures.values():
        figure["note"] = f"{size}; " + figure.get("note", "")
    return figures


def _curve_figures(point: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A curve point as two printed figures; the recall rides in the goal text."""
    kind, param = point["kind"], point["param"]
    name = {"flat": "curve_flat", "hnsw": f"curve_hnsw_ef{param}", "ivf": f"curve_ivf_np{param}"}
    recall = f"informational; recall@10 {point['project_recall']:.3f} raw {point['raw_recall']:.3f}"
    return {
        f"{name[kind]}_single": _figure(
            point["project_single"], point["raw_single"], "queries/s", recall, point=point
        ),
        f"{name[kind]}_concurrent": _figure(
            point["project_concurrent"], point["raw_batched"], "queries/s", recall,
            note="64 concurrent single queries; raw: batches of 64",
        ),
    }  # fmt: skip


async def run(quick: bool) -> dict[str, dict[str, Any]]:
    """Every figure's note ends with the 1-minute load average before and after the stage: on a
    shared 2-core machine it says how far to trust the run."""
    load_before = os.getloadavg()[0]
    n = 20_000 if quick else 100_000
    size = f"{n // 1000}k x {DIM} flat ip" + (" (quick)" if quick else "")
    data, queries = _data(n, 1), _data(CONCURRENCY * (4 if quick else 8), 2)
    with tempfile.TemporaryDirectory(prefix="bench-vectors-") as tmp:
        config = FaissConfig(index_path=Path(tmp), dimension=DIM, metric="ip", threads=2)
        async with VectorIndex(config) as vi:
            add, add_items = await _add_figures(vi, data, rounds=4 if quick else 8)
            raw_index = await _query_indexes(vi, data)
            latency = await _latency_figure(vi, raw_index, queries[: 20 if quick else 50])
            coalesced = await _throughput_figure(vi, raw_index, queries, rounds=2 if quick else 3)
            await vi.drop_namespace("bench-0")
            del raw_index
            ann_figures = await _ann_figures(vi, quick)
    figures = {
        "add_throughput": add,
        "add_throughput_from_items": add_items,
        "query_latency": latency,
        "coalesced_query_throughput": coalesced,
    }
    for figure in figures.values():
        figure["note"] = f"{size}; " + figure.get("note", "")
    load = f"; load {load_before:.1f}-{os.getloadavg()[0]:.1f}"
    print(f"# vectors: 1-minute load average{load[6:]} (start-end of the stage)", flush=True)
    for figure in (figures | ann_figures).values():
        figure["note"] += load
    return figures | ann_figures


async def run_large() -> dict[str, dict[str, Any]]:
    """The approximate-index figures and curves at :data:`LARGE` (1M x 128), the issue's larger
    run: not part of ``bench/run.py vectors``, building HNSW twice at 1M takes most of the time."""
    load_before = os.getloadavg()[0]
    n, dim, nlist = LARGE
    with tempfile.TemporaryDirectory(prefix="bench-vectors-") as tmp:
        config = FaissConfig(index_path=Path(tmp), dimension=dim, metric="l2", threads=2)
        async with VectorIndex(config) as vi:
            figures = await _ann_figures(vi, False, n, dim, nlist)
    load = f"; load {load_before:.1f}-{os.getloadavg()[0]:.1f}"
    print(f"# vectors --large: 1-minute load average{load[6:]} (start-end)", flush=True)
    for figure in figures.values():
        figure["note"] += load
    return figures


def _print(figures: dict[str, dict[str, Any]]) -> None:
    for name, f in figures.items():
        ceiling = f" raw_batched={f['raw_batched']:,.3f}" if "raw_batched" in f else ""
        print(
            f"vectors {name}: project={f['project']:,.3f} raw={f['raw']:,.3f}{ceiling} "
            f"ratio={f['ratio']:.2f} {f['unit']} (goal {f['goal']}) [{f['note']}]"
        )


if __name__ == "__main__":
    # python -m bench.stages.vectors [--quick | --large] [--json PATH] (PATH: for plot_vectors.py)
    args = sys.argv[1:]
    results = asyncio.run(run_large() if "--large" in args else run("--quick" in args))
    _print(results)
    if "--json" in args:
        Path(args[args.index("--json") + 1]).write_text(json.dumps({"vectors": results}))
