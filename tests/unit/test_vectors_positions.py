"""Exactly-once effect by position: stale writes are ignored, deletes leave tombstones."""

from __future__ import annotations

from pathlib import Path

import pytest

from satellites_es.config import FaissConfig
from satellites_es.vectors import VectorIndex

DIM = 4
V2, V3 = [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]


def _config(tmp_path: Path) -> FaissConfig:
    return FaissConfig(index_path=tmp_path / "faiss", dimension=DIM)


async def _meta(index: VectorIndex, vector_id: str) -> object:
    stored = await index.get("ns", vector_id)
    return None if stored is None else stored[1]


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
async def test_v3_v2_v3_holds_v3(index: VectorIndex, kind: str) -> None:
    await index.create_namespace("ns", index_kind=kind)  # type: ignore[arg-type]
    await index.upsert("ns", "a", V3, {"v": 3}, position=3)
    await index.upsert("ns", "a", V2, {"v": 2}, position=2)
    await index.upsert("ns", "a", V3, {"v": 3}, position=3)
    assert await _meta(index, "a") == {"v": 3}
    assert await index.count("ns") == 1
    assert index.applied_position("ns") == 3
    assert index.stats()["namespaces"]["ns"]["ntotal"] == 1


async def test_delete_then_late_upsert_stays_deleted(index: VectorIndex) -> None:
    await index.upsert("ns", "a", V2, position=1)
    assert await index.delete("ns", "a", position=5) is True
    await index.upsert("ns", "a", V3, {"late": True}, position=4)
    assert await index.get("ns", "a") is None
    assert await index.delete("ns", "a", position=5) is False  # same position: no effect
    await index.upsert("ns", "a", V3, {"newer": True}, position=6)
    assert await _meta(index, "a") == {"newer": True}
    assert index.applied_position("ns") == 6


async def test_delete_before_any_upsert_blocks_older_upserts(index: VectorIndex) -> None:
    assert await index.delete("ns", "a", position=9) is False  # creates ns to keep the tombstone
    assert await index.upsert_many("ns", [("a", V2, None)], positions=[8]) == 0
    assert await index.count("ns") == 0
    assert index.applied_position("ns") == 9


async def test_batch_counts_only_applied_items(index: VectorIndex) -> None:
    await index.upsert("ns", "a", V2, position=10)
    items = [("a", V3, {"v": 1}), ("b", V3, {"v": 1}), ("b", V2, {"v": 2}), ("b", V3, {"v": 0})]
    assert await index.upsert_many("ns", items, positions=[9, 3, 4, 2]) == 2
    assert await _meta(index, "a") is None  # the position-10 write, without metadata
    assert await _meta(index, "b") == {"v": 2}
    assert index.applied_position("ns") == 10


async def test_writes_without_position_always_apply(index: VectorIndex) -> None:
    await index.upsert("ns", "a", V2, {"v": 1}, position=10)
    await index.upsert("ns", "a", V3, {"v": 2})
    assert await _meta(index, "a") == {"v": 2}
    assert await index.delete("ns", "a") is True
    assert index.applied_position("ns") == 10


async def test_positions_survive_save_and_load(tmp_path: Path, index: VectorIndex) -> None:
    await index.upsert("ns", "a", V3, {"v": 3}, position=3)
    await index.upsert("ns", "gone", V3, position=4)
    await index.delete("ns", "gone", position=7)
    await index.save()
    reopened = VectorIndex(_config(tmp_path))
    await reopened.open()
    try:
        assert reopened.applied_position("ns") == 7
        await reopened.upsert("ns", "a", V2, {"v": 2}, position=2)
        await reopened.upsert("ns", "gone", V2, position=6)
        assert (await reopened.get("ns", "a") or (None, None))[1] == {"v": 3}
        assert await reopened.get("ns", "gone") is None
    finally:
        await reopened.close()
