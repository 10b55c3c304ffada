"""Replacing known ids on flat storage overwrites their vectors in place (issue #6): the index
keeps one vector per id and its labels, and reads, filters, snapshots and exact batch searches see
the new vectors and metadata. HNSW keeps the remove-and-add path; both give the same answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from satellites_es.config import FaissConfig
from satellites_es.vectors import VectorIndex

DIM = 8


def _rows(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _labels(index: VectorIndex, namespace: str) -> list[int]:
    ns = index._slots[namespace].ns
    return sorted(ns._label_of.values())


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])  # ivf stays untrained (flat) here
async def test_replacing_known_ids_gives_the_new_vectors_and_metadata(
    index: VectorIndex, metric: str, kind: str
) -> None:
    await index.create_namespace("ns", metric=metric, index_kind=kind)  # type: ignore[arg-type]
    first, second = _rows(1, 200), _rows(2, 200)
    ids = [f"v{i}" for i in range(200)]
    await index.upsert_arrays("ns", ids, first, [{"round": 1, "i": i} for i in range(200)])
    labels = _labels(index, "ns")
    # a batch of 150 known ids (every other one) and 50 new ones
    batch = (
        [f"v{i}" for i in range(0, 200, 2)]
        + [f"v{i}" for i in range(50, 150)]
        + [f"new{i}" for i in range(50)]
    )
    batch = list(dict.fromkeys(batch))
    matrix = second[: len(batch)]
    await index.upsert_arrays("ns", batch, matrix, [{"round": 2, "id": b} for b in batch])
    stats = index.stats()["namespaces"]["ns"]
    assert await index.count("ns") == 250 and stats["ntotal"] == 250
    if kind != "hnsw":  # overwritten in place: the known ids kept their labels
        assert set(labels) <= set(_labels(index, "ns"))
    for row, vector_id in enumerate(batch):
        got = await index.get("ns", vector_id)
        assert got is not None and got[1] == {"round": 2, "id": vector_id}
        expected = matrix[row] / np.linalg.norm(matrix[row]) if metric == "cosine" else matrix[row]
        np.testing.assert_allclose(got[0], expected, rtol=1e-6)
    untouched = await index.get("ns", "v1")
    assert untouched is not None and untouched[1] == {"round": 1, "i": 1}
    # single and batched (exact, on FAISS's storage) searches agree with a brute force over the
    # final vectors: the new ones, and no trace of the replaced ones
    final = {vector_id: first[i] for i, vector_id in enumerate(ids)}
    final.update({vector_id: matrix[row] for row, vector_id in enumerate(batch)})
    names = list(final)
    stored = np.stack([final[n] for n in names])
    queries = np.concatenate([matrix[:10], first[:20:2]])
    if metric == "cosine":
        stored = stored / np.linalg.norm(stored, axis=1, keepdims=True)
        scores = stored @ (queries / np.linalg.norm(queries, axis=1, keepdims=True)).T
    elif metric == "ip":
        scores = stored @ queries.T
    else:
        scores = -((stored[:, None, :] - queries[None, :, :]) ** 2).sum(axis=2)
    expected_top = [names[i] for i in scores.argmax(axis=0)]
    batched = await index.query_many("ns", queries, 1)
    if kind == "hnsw":  # approximate: the batch and the single path agree
        singles = [(await index.query("ns", q, 1))[0].id for q in queries]
        assert singles == [hits[0].id for hits in batched]
    else:
        assert [hits[0].id for hits in batched] == expected_top
        assert [(await index.query("ns", q, 1))[0].id for q in queries] == expected_top


async def test_filters_follow_metadata_replaced_in_place(index: VectorIndex) -> None:
    await index.upsert_arrays("ns", ["a", "b", "c"], _rows(3, 3),
                              [{"tag": "x"}, {"tag": "x"}, {"tag": "y"}])  # fmt: skip
    probe = _rows(4, 1)[0]
    assert {h.id for h in await index.query("ns", probe, 10, filter={"tag": "x"})} == {"a", "b"}
    await index.upsert_arrays("ns", ["b", "c"], _rows(5, 2), [{"tag": "y"}, {"tag": "x"}])
    assert {h.id for h in await index.query("ns", probe, 10, filter={"tag": "x"})} == {"a", "c"}
    assert {h.id for h in await index.query("ns", probe, 10, filter={"tag": "y"})} == {"b"}


async def test_vectors_overwritten_in_place_survive_a_snapshot(tmp_path: Path) -> None:
    config = FaissConfig(index_path=tmp_path / "faiss", dimension=DIM, metric="l2")
    first = VectorIndex(config)
    await first.open()
    new = _rows(7, 10)
    try:
        await first.upsert_arrays("ns", [f"v{i}" for i in range(30)], _rows(6, 30),
                                  positions=list(range(1, 31)))  # fmt: skip
        await first.upsert_arrays("ns", [f"v{i}" for i in range(10)], new,
                                  [{"n": i} for i in range(10)], positions=list(range(31, 41)))  # fmt: skip
        await first.save("ns")
    finally:
        await first.close()
    second = VectorIndex(config)
    await second.open()
    try:
        assert await second.count("ns") == 30
        assert second.applied_position("ns") == 40
        for i in range(10):
            got = await second.get("ns", f"v{i}")
            assert got is not None and got[1] == {"n": i}
            np.testing.assert_allclose(got[0], new[i], rtol=1e-6)
    finally:
        await second.close()
