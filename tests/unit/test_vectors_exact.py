"""The numpy-BLAS path for batched flat searches returns what FAISS's own search returns."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from satellites_es.vectors import VectorIndex, exact
from satellites_es.vectors._faiss import faiss

DIM = 24


def _flat(metric: str, data: np.ndarray) -> Any:
    inner = faiss.IndexFlatL2(DIM) if metric == "l2" else faiss.IndexFlatIP(DIM)
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(data, np.arange(1000, 1000 + len(data), dtype=np.int64))
    return index


def _same_as_faiss(metric: str, n: int, nq: int, k: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(n, DIM)).astype(np.float32)
    queries = rng.normal(size=(nq, DIM)).astype(np.float32)
    index = _flat(metric, data)
    vectors, labels = exact.flat_storage(index)
    norms = exact.squared_norms(vectors) if metric == "l2" else None
    scores, found = exact.search(vectors, labels, queries, k, l2_norms=norms)
    want_scores, want = index.search(queries, k)
    assert found.shape == (nq, k) and scores.dtype == np.float32
    np.testing.assert_array_equal(found, want)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize(
    ("n", "k"),
    [
        (5, 10),  # fewer stored than asked: k is trimmed by the caller, here n == k
        (40, 10),  # fewer runs than k: plain argpartition
        (3000, 10),  # the run-maxima bound, with a tail shorter than a run
        (5000, 1),
        (2600, 100),
    ],
)
def test_matches_faiss_search(metric: str, n: int, k: int) -> None:
    _same_as_faiss(metric, n, nq=16, k=min(k, n))


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_blocks_bound_memory_and_merge_exactly(
    metric: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exact, "BLOCK_SCORES", 16 * 1024)  # 16 queries -> 3+ blocks of 2,560
    _same_as_faiss(metric, n=9000, nq=16, k=10, seed=3)


def test_storage_views_are_zero_copy_and_empty_safe() -> None:
    data = np.random.default_rng(1).normal(size=(100, DIM)).astype(np.float32)
    index = _flat("ip", data)
    vectors, labels = exact.flat_storage(index)
    np.testing.assert_array_equal(vectors, data)
    assert labels.tolist() == list(range(1000, 1100))
    assert not vectors.flags.owndata  # a view of FAISS's buffer, not a copy
    empty_vectors, empty_labels = exact.flat_storage(faiss.IndexIDMap2(faiss.IndexFlatIP(DIM)))
    assert empty_vectors.shape == (0, DIM) and empty_labels.shape == (0,)


def test_ties_still_give_k_distinct_hits() -> None:
    data = np.ones((2048, DIM), dtype=np.float32)
    data[7] *= 2  # one clear winner, then 2,047 equal scores
    index = _flat("ip", data)
    vectors, labels = exact.flat_storage(index)
    scores, found = exact.search(vectors, labels, np.ones((8, DIM), np.float32), 5)
    assert (found[:, 0] == 1007).all()
    assert np.allclose(scores[:, 1:], DIM) and len(set(found[0].tolist())) == 5


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("kind", ["flat", "ivf"])
async def test_batched_queries_equal_single_queries(
    index: VectorIndex, metric: Any, kind: Any
) -> None:
    """A batch (numpy path) and the same queries one by one (FAISS path) agree, after deletes
    and replacements moved FAISS's storage around."""
    rng = np.random.default_rng(5)
    data = rng.normal(size=(1500, DIM)).astype(np.float32)
    await index.create_namespace("ns", metric=metric, index_kind=kind, nlist=64)
    await index.upsert_many("ns", [(f"v{i}", v, {"i": i}) for i, v in enumerate(data)])
    for i in range(0, 1500, 7):
        await index.delete("ns", f"v{i}")
    await index.upsert_many("ns", [(f"v{i}", -data[i], None) for i in range(1, 300, 5)])
    queries = rng.normal(size=(exact.MIN_QUERIES * 2, DIM)).astype(np.float32)
    batched = await index.query_many("ns", queries, 10)
    for q, hits in zip(queries, batched, strict=True):
        one = await index.query_many("ns", q.reshape(1, -1), 10)
        assert [h.id for h in hits] == [h.id for h in one[0]]
        assert [h.metadata for h in hits] == [h.metadata for h in one[0]]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in one[0]], atol=1e-4)


def test_l2_distances_stay_exact_far_from_the_origin() -> None:
    """Norms large next to the distances: the expansion |q|^2 - 2q.x + |x|^2 cancels, so the
    winners' distances are recomputed directly (an exact match scores 0, not ~0.01)."""
    rng = np.random.default_rng(4)
    data = (rng.normal(size=(3000, DIM)) + 300.0).astype(np.float32)
    index = _flat("l2", data)
    vectors, labels = exact.flat_storage(index)
    queries = data[:16].copy()
    scores, found = exact.search(vectors, labels, queries, 3, l2_norms=exact.squared_norms(vectors))
    assert found[:, 0].tolist() == list(range(1000, 1016))
    assert np.abs(scores[:, 0]).max() < 1e-6
    direct = ((data[found[:, 1:] - 1000] - queries[:, None, :]) ** 2).sum(axis=2)
    np.testing.assert_allclose(scores[:, 1:], direct, rtol=1e-5)
    assert (np.diff(scores, axis=1) >= 0).all()
