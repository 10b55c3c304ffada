"""VectorIndex behaviour: ids, replace, delete, metrics and recall, filters, index kinds."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest

from satellites_es.config import FaissConfig
from satellites_es.errors import LifecycleError, NamespaceNotFoundError, VectorIndexError
from satellites_es.vectors import VectorIndex, VectorMatch
from satellites_es.vectors.models import match_rows
from satellites_es.vectors.namespace import COMPACT_MIN
from tests.contract.support import cancelled_midway

DIM = 16


def _data(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def _items(vectors: np.ndarray, prefix: str = "v") -> list[tuple[str, Any, dict[str, Any]]]:
    return [(f"{prefix}{i}", v, {"i": i, "group": i % 3}) for i, v in enumerate(vectors)]


def _brute_force(metric: str, data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    if metric == "cosine":
        data = data / np.linalg.norm(data, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    if metric == "l2":
        scores = ((queries[:, None, :] - data[None, :, :]) ** 2).sum(-1)
        return np.argsort(scores, axis=1)[:, :k]
    return np.argsort(-(queries @ data.T), axis=1)[:, :k]


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
async def test_flat_recall_at_10_is_exact(index: VectorIndex, metric: Any) -> None:
    data, queries = _data(2000), _data(50, seed=1)
    await index.create_namespace("ns", metric=metric)
    await index.upsert_many("ns", _items(data))
    results = await index.query_many("ns", queries, 10)
    expected = _brute_force(metric, data, queries, 10)
    for row, hits in zip(expected, results, strict=True):
        assert [h.id for h in hits] == [f"v{i}" for i in row]


@pytest.mark.parametrize(
    ("metric", "better"), [("cosine", "higher"), ("ip", "higher"), ("l2", "lower")]
)
async def test_scores_are_sorted_best_first_with_documented_meaning(
    index: VectorIndex, metric: Any, better: str
) -> None:
    data = _data(200)
    await index.create_namespace("ns", metric=metric)
    await index.upsert_many("ns", _items(data))
    hits = await index.query("ns", data[7], 20)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=better == "higher")
    assert hits[0].id == "v7" or metric == "ip"
    if metric == "cosine":
        assert all(-1.0 <= s <= 1.0 for s in scores) and scores[0] == pytest.approx(1.0)
    if metric == "l2":  # squared Euclidean distance
        assert scores[0] == pytest.approx(0.0, abs=1e-4)
        assert scores[1] == pytest.approx(float(((data[7] - _row(data, hits[1])) ** 2).sum()), 1e-4)
    if metric == "ip":
        assert scores[0] == pytest.approx(float(data.dot(data[7]).max()), rel=1e-4)


def _row(data: np.ndarray, hit: VectorMatch) -> np.ndarray:
    return data[int(hit.id[1:])]


async def test_upsert_replaces_and_never_keeps_two_vectors(index: VectorIndex) -> None:
    data = _data(3)
    await index.upsert("ns", "a", data[0], {"v": 1})
    await index.upsert("ns", "a", data[1], {"v": 2})
    assert await index.count("ns") == 1
    hits = await index.query("ns", data[0], 10)
    assert [(h.id, dict(h.metadata or {})) for h in hits] == [("a", {"v": 2})]
    stored = await index.get("ns", "a")
    assert stored is not None
    vector, meta = stored
    np.testing.assert_allclose(vector, data[1] / np.linalg.norm(data[1]), rtol=1e-5)
    assert meta == {"v": 2}


async def test_duplicate_ids_in_one_batch_keep_the_last(index: VectorIndex) -> None:
    data = _data(3)
    applied = await index.upsert_many("ns", [("a", data[0], None), ("a", data[1], {"last": 1})])
    assert applied == 2
    assert await index.count("ns") == 1
    assert (await index.query("ns", data[1], 5))[0].metadata == {"last": 1}


async def test_delete_reports_whether_something_was_deleted(index: VectorIndex) -> None:
    await index.upsert("ns", "a", _data(1)[0])
    assert await index.delete("ns", "a") is True
    assert await index.delete("ns", "a") is False
    assert await index.delete("missing", "a") is False
    assert await index.count("ns") == 0
    assert await index.get("ns", "a") is None
    assert await index.query("ns", _data(1)[0], 5) == []


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
async def test_filter_still_returns_top_k(index: VectorIndex, kind: Any) -> None:
    data = _data(3000)
    await index.create_namespace("ns", index_kind=kind, nlist=16)
    items = [(f"v{i}", v, {"rare": i % 100 == 0, "i": i}) for i, v in enumerate(data)]
    await index.upsert_many("ns", items)
    hits = await index.query("ns", data[1], 10, filter={"rare": True})
    assert len(hits) == 10
    assert all(h.metadata is not None and h.metadata["rare"] is True for h in hits)
    matching = np.array([i for i in range(3000) if i % 100 == 0])
    best = _brute_force("cosine", data[matching], data[1:2], 10)[0]
    if kind == "flat":
        assert [h.id for h in hits] == [f"v{matching[j]}" for j in best]
    assert await index.query("ns", data[1], 10, filter={"rare": "no such"}) == []
    assert len(await index.query("ns", data[1], 50, filter={"i": 5, "rare": False})) == 1


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
async def test_approximate_kinds_replace_and_delete(index: VectorIndex, kind: Any) -> None:
    data = _data(1000)
    await index.create_namespace("ns", index_kind=kind, nlist=8)
    await index.upsert_many("ns", _items(data))
    for i in range(0, 1000, 2):
        assert await index.delete("ns", f"v{i}")
    await index.upsert("ns", "v1", data[3], {"moved": True})
    hits = await index.query("ns", data[3], 10)
    assert hits[0].id in {"v1", "v3"} and len(hits) == 10
    assert all(int(h.id[1:]) % 2 == 1 for h in hits)
    assert await index.count("ns") == 500
    stats = index.stats()["namespaces"]["ns"]
    if kind == "hnsw":  # tombstones were compacted away as they grew
        assert stats["tombstones"] <= max(COMPACT_MIN, 0.25 * stats["ntotal"])
    else:
        assert stats["trained"] is True and stats["ntotal"] == 500


async def test_ivf_buffers_in_flat_until_it_can_train(index: VectorIndex) -> None:
    await index.create_namespace("ns", index_kind="ivf", nlist=4)
    data = _data(4 * 39)
    await index.upsert_many("ns", _items(data[:-1]))
    assert index.stats()["namespaces"]["ns"]["trained"] is False
    assert (await index.query("ns", data[0], 1))[0].id == "v0"
    await index.upsert("ns", "last", data[-1])
    assert index.stats()["namespaces"]["ns"]["trained"] is True
    assert (await index.query("ns", data[-1], 1))[0].id == "last"


async def test_namespaces_are_separate(index: VectorIndex) -> None:
    data = _data(2)
    await index.upsert("a", "x", data[0])
    await index.create_namespace("b", dimension=4, metric="l2")
    await index.upsert("b", "x", [1.0, 2.0, 3.0, 4.0])
    assert await index.namespaces() == ["a", "b"]
    assert (await index.query("b", [1.0, 2.0, 3.0, 4.0], 1))[0].score == pytest.approx(0.0)
    assert await index.drop_namespace("a") is True
    assert await index.drop_namespace("a") is False
    with pytest.raises(NamespaceNotFoundError):
        await index.query("a", data[0])
    with pytest.raises(NamespaceNotFoundError):
        await index.count("a")
    stats = index.stats()
    assert stats["namespaces"]["b"]["dimension"] == 4 and stats["total_vectors"] == 1


async def test_create_namespace_conflicting_settings_refused(index: VectorIndex) -> None:
    await index.create_namespace("ns", metric="ip")
    await index.create_namespace("ns", metric="ip")  # same settings: no-op
    with pytest.raises(VectorIndexError):
        await index.create_namespace("ns", metric="l2")
    with pytest.raises(VectorIndexError):
        await index.create_namespace("other", index_kind="annoy")  # type: ignore[arg-type]


async def test_lifecycle_errors(tmp_path: Path) -> None:
    vi = VectorIndex(FaissConfig(index_path=tmp_path, dimension=DIM))
    with pytest.raises(LifecycleError):
        await vi.upsert("ns", "a", _data(1)[0])
    await vi.open()
    with pytest.raises(LifecycleError):
        await vi.open()
    await vi.close()
    with pytest.raises(LifecycleError):
        await vi.query("ns", _data(1)[0])


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
async def test_upsert_arrays_equals_upsert_many(index: VectorIndex, metric: Any) -> None:
    data, queries = _data(300), _data(9, seed=4)
    original = data.copy()
    ids = [f"v{i}" for i in range(300)]
    metas = [{"i": i} for i in range(300)]
    await index.create_namespace("arrays", metric=metric)
    await index.create_namespace("items", metric=metric)
    assert await index.upsert_arrays("arrays", ids, data, metas, positions=np.arange(300)) == 300
    await index.upsert_many("items", list(zip(ids, data, metas, strict=True)))
    np.testing.assert_array_equal(data, original)  # cosine normalised a copy, not the caller's
    assert await index.count("arrays") == 300
    for a, b in zip(await index.query_many("arrays", queries, 5),
                    await index.query_many("items", queries, 5), strict=True):  # fmt: skip
        assert [(h.id, h.metadata) for h in a] == [(h.id, h.metadata) for h in b]
    stored = await index.get("arrays", "v3")
    assert stored is not None and stored[1] == {"i": 3}
    # stale positions skip, as in upsert_many
    assert await index.upsert_arrays("arrays", ["v3"], data[:1], positions=[2]) == 0


async def test_upsert_arrays_refuses_mismatched_input(index: VectorIndex) -> None:
    data = _data(4)
    await index.upsert_arrays("ns", ["a", "b", "c", "d"], data)
    bad: list[tuple[Any, Any, Any]] = [
        (["a", "b"], data, None),  # 2 ids, 4 rows
        (["a", "b", "c", "d"], data, [{}]),  # 1 metadata, 4 rows
        (["a", "b", "c", "d"], data[:, :3], None),  # wrong dimension
        (["a", "b", "c", ""], data, None),  # empty id
        (["w", "x", "y", "z"], np.where(np.eye(4, DIM) > 0, np.nan, data), None),  # NaN
        (["w", "x", "y", "z"], data, [{"f": object()}, None, None, None]),  # not JSON
    ]
    for ids, vectors, metas in bad:
        with pytest.raises(VectorIndexError):
            await index.upsert_arrays("ns", ids, vectors, metas)
    assert await index.ids("ns") == ["a", "b", "c", "d"]  # nothing written


def _expected_ids(live: dict[str, dict[str, Any]], flt: dict[str, Any]) -> set[str]:
    return {i for i, meta in live.items() if all(meta.get(k) == v for k, v in flt.items())}


async def test_filter_keys_are_indexed_on_first_use_and_kept_current(index: VectorIndex) -> None:
    """Writes before a key is filtered on index nothing; the first filter on it indexes it from
    the namespace; later upserts, replacements and deletes keep it exact."""
    rng = np.random.default_rng(9)
    live: dict[str, dict[str, Any]] = {}

    async def put(n: int, start: int) -> None:
        metas = [{"g": int(g), "h": int(g) % 2, "title": f"t{start + j}"}
                 for j, g in enumerate(rng.integers(0, 5, n))]  # fmt: skip
        ids = [f"v{start + j}" for j in range(n)]
        await index.upsert_arrays("ns", ids, rng.normal(size=(n, DIM)), metas)
        live.update(zip(ids, metas, strict=True))

    async def check(flt: dict[str, Any]) -> None:
        hits = await index.query("ns", rng.normal(size=DIM), 5000, filter=flt)
        assert {h.id for h in hits} == _expected_ids(live, flt), flt

    await put(500, 0)
    filters = index._slots["ns"].ns._filters
    assert filters.keys == frozenset()  # nothing indexed by the writes
    await check({"g": 3})
    assert filters.keys == {"g"}
    await put(300, 400)  # 100 replacements, 200 new
    for i in range(0, 700, 9):
        await index.delete("ns", f"v{i}")
        live.pop(f"v{i}", None)
    await check({"g": 3})
    await check({"g": 1, "h": 1})  # a second key, indexed now, from the current state
    assert filters.keys == {"g", "h"}
    await put(50, 1000)
    await check({"h": 0})
    await check({"g": 4, "h": 0})
    assert "title" not in filters.keys


async def test_concurrent_first_filters_index_each_key_once(index: VectorIndex) -> None:
    rng = np.random.default_rng(3)
    metas = [{"a": i % 3, "b": i % 4} for i in range(900)]
    await index.upsert_arrays("ns", [f"v{i}" for i in range(900)], rng.normal(size=(900, DIM)),
                              metas)  # fmt: skip
    live = {f"v{i}": m for i, m in enumerate(metas)}
    flts: list[dict[str, Any]] = [
        {"a": i % 3} if i % 2 else {"b": i % 4, "a": 1} for i in range(40)
    ]
    results = await asyncio.gather(
        *(index.query("ns", rng.normal(size=DIM), 1000, filter=f) for f in flts)
    )
    for flt, hits in zip(flts, results, strict=True):
        assert {h.id for h in hits} == _expected_ids(live, flt)


def test_match_rows_build_ordinary_frozen_matches() -> None:
    """The fast row builder's matches are indistinguishable from ``VectorMatch(...)``: equal,
    hashed alike (without metadata), frozen, with the namespace's read-only metadata shared by
    every hit of a vector; padded labels (-1) are skipped."""
    entries: dict[int, tuple[str, Mapping[str, Any] | None]] = {
        7: ("a", MappingProxyType({"k": 1})),
        9: ("b", None),
    }
    rows = match_rows([[0.5, 1.5, 9.0], [2.0, 0.0, 0.0]], [[7, 9, -1], [9, -1, -1]], entries.get)
    assert rows == [
        [VectorMatch("a", 0.5, {"k": 1}), VectorMatch("b", 1.5, None)],
        [VectorMatch("b", 2.0, None)],
    ]
    hit = rows[0][0]
    assert hash(rows[1][0]) == hash(VectorMatch("b", 2.0, None))
    assert repr(rows[1][0]) == repr(VectorMatch("b", 2.0, None))
    with pytest.raises(AttributeError):
        hit.score = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        hit.metadata["k"] = 2  # type: ignore[index]
    assert hit.metadata is entries[7][1]  # shared, not wrapped per hit
    assert not hasattr(hit, "__dict__")


async def test_a_close_cancelled_midway_still_stops_every_thread(tmp_path: Path) -> None:
    """An index closed by a task cancelled meanwhile (a shutdown deadline), with queries in
    flight: the close still answers them and stops its search and worker threads before it
    returns, and nothing is left running or unretrieved."""
    data = _data(2000)

    def index_threads() -> list[str]:  # its workers ("faiss_N") and search threads
        return [t.name for t in threading.enumerate() if t.name.startswith("faiss")]

    assert index_threads() == []

    async def attempt() -> None:
        vi = VectorIndex(FaissConfig(index_path=tmp_path, dimension=DIM))
        await vi.open()
        try:
            if "docs" not in await vi.namespaces():
                await vi.create_namespace("docs", dimension=DIM, metric="l2")
                await vi.upsert_many("docs", _items(data))
            queries = [asyncio.ensure_future(vi.query("docs", q, 5)) for q in data[:64]]
            await asyncio.sleep(0)
        finally:
            try:
                await vi.close()
            finally:  # cancelled or not, a close that returned has stopped every thread
                assert index_threads() == []
        assert [len(await q) for q in queries] == [5] * len(queries)

    cancelled, errors = await cancelled_midway(attempt, times=40, longest=0.05)
    assert cancelled >= 20, f"only {cancelled} of 40 closes were cancelled midway"
    assert errors == []
