"""Bad input is refused with a typed error and nothing is written (in memory or on disk)."""

from __future__ import annotations

import datetime
import decimal
import enum
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from satellites_es.errors import (
    InvalidNamespaceError,
    InvalidVectorError,
    NamespaceNotFoundError,
    VectorIndexError,
)
from satellites_es.vectors import VectorIndex
from satellites_es.vectors.validation import check_metadata

DIM = 8
GOOD = [0.5] * DIM

BAD_NAMES = ["..", ".", "a/b", "/abs", "a\x00b", "x" * 300, "it's", 'q"', "a;b", "", " a", "-a"]


async def _nothing_written(index: VectorIndex, tmp_path: Path) -> None:
    await index.save()
    assert await index.namespaces() in ([], ["ns"])
    if await index.namespaces() == ["ns"]:
        assert await index.count("ns") == 1  # only the vector stored before the bad call
    assert _files_outside(tmp_path) == []


def _files_outside(tmp_path: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("*") if not p.is_relative_to(tmp_path / "faiss")]


def _listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_unsafe_namespace_names_refused(
    index: VectorIndex, tmp_path: Path, name: str
) -> None:
    for call in (
        index.upsert(name, "a", GOOD),
        index.create_namespace(name),
        index.query(name, GOOD),
        index.delete(name, "a", position=3),
        index.drop_namespace(name),
        index.load(name),
    ):
        with pytest.raises(InvalidNamespaceError):
            await call
    with pytest.raises(InvalidNamespaceError):
        index.applied_position(name)
    assert await index.namespaces() == []
    assert _listing(tmp_path / "faiss") == []
    assert _listing(tmp_path) == ["faiss"]


@pytest.mark.parametrize(
    "vector",
    [
        [0.5] * (DIM - 1),
        [0.5] * (DIM + 1),
        [float("nan")] + [0.5] * (DIM - 1),
        [float("inf")] + [0.5] * (DIM - 1),
        [0.0] * DIM,  # no cosine direction
        ["a"] * DIM,
        np.ones((2, DIM)),
        [[0.5] * DIM, [0.5]],
    ],
)
async def test_bad_vectors_refused(index: VectorIndex, tmp_path: Path, vector: Any) -> None:
    await index.upsert("ns", "keep", GOOD)
    with pytest.raises(InvalidVectorError):
        await index.upsert("ns", "bad", vector)
    with pytest.raises(InvalidVectorError):
        await index.upsert("new", "bad", vector)  # would create a namespace: it must not
    with pytest.raises(InvalidVectorError):
        await index.upsert_many("ns", [("ok", GOOD, None), ("bad", vector, None)])
    if not isinstance(vector, np.ndarray):
        with pytest.raises(InvalidVectorError):
            await index.query("ns", vector)
    await _nothing_written(index, tmp_path)


@pytest.mark.parametrize(
    "metadata",
    [{"x": object()}, {"x": float("nan")}, {"x": {1, 2}}, {1: "int key"}, ["not", "a", "dict"]],
)
async def test_bad_metadata_refused(index: VectorIndex, tmp_path: Path, metadata: Any) -> None:
    await index.upsert("ns", "keep", GOOD)
    with pytest.raises(InvalidVectorError, match="metadata"):
        await index.upsert("ns", "bad", GOOD, metadata)
    with pytest.raises(InvalidVectorError, match="metadata"):
        await index.upsert_many("ns", [("ok", GOOD, {"fine": 1}), ("bad", GOOD, metadata)])
    await _nothing_written(index, tmp_path)


@pytest.mark.parametrize(
    "kwargs",
    [{"positions": [1]}, {"positions": [1, -1]}, {"positions": [1, True]}, {"positions": ["1", 2]}],
)
async def test_bad_positions_refused(index: VectorIndex, tmp_path: Path, kwargs: Any) -> None:
    await index.upsert("ns", "keep", GOOD)
    with pytest.raises(InvalidVectorError):
        await index.upsert_many("ns", [("a", GOOD, None), ("b", GOOD, None)], **kwargs)
    await _nothing_written(index, tmp_path)


@pytest.mark.parametrize("bad_id", ["", 5, None, "x" * 2000])
async def test_bad_ids_refused(index: VectorIndex, tmp_path: Path, bad_id: Any) -> None:
    await index.upsert("ns", "keep", GOOD)
    with pytest.raises(InvalidVectorError):
        await index.upsert("ns", bad_id, GOOD)
    await _nothing_written(index, tmp_path)


async def test_bad_query_arguments(index: VectorIndex) -> None:
    await index.upsert("ns", "a", GOOD)
    for top_k in (0, -1, 1.5, True):
        with pytest.raises(InvalidVectorError):
            await index.query("ns", GOOD, top_k)
    with pytest.raises(InvalidVectorError):
        await index.query("ns", GOOD, filter=[("a", 1)])  # type: ignore[arg-type]
    with pytest.raises(NamespaceNotFoundError):
        await index.query("missing", GOOD)
    with pytest.raises(NamespaceNotFoundError):
        await index.get("missing", "a")
    with pytest.raises(NamespaceNotFoundError):
        await index.save("missing")
    assert index.applied_position("missing") is None


async def test_errors_share_the_vector_index_root(index: VectorIndex) -> None:
    with pytest.raises(VectorIndexError):
        await index.upsert("a/b", "x", GOOD)
    with pytest.raises(ValueError):
        await index.upsert("ns", "x", [1.0])
    with pytest.raises(KeyError):
        await index.count("missing")


class _FailingAdd:
    """Wraps a FAISS index whose add fails (out of memory, say); everything else passes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def add_with_ids(self, vectors: Any, labels: Any) -> None:
        raise RuntimeError("std::bad_alloc")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("n", [3, 1500])  # added alone / in the helper thread (OVERLAP_MIN)
async def test_a_failed_faiss_add_leaves_the_namespace_as_it_was(
    index: VectorIndex, n: int
) -> None:
    rng = np.random.default_rng(0)
    await index.upsert_many("ns", [(f"v{i}", rng.normal(size=DIM), {"i": i}) for i in range(10)])
    before_ids, before = await index.ids("ns"), await index.query("ns", GOOD, 10)
    ns = index._slots["ns"].ns  # the namespace under test
    ns._index = _FailingAdd(ns._index)
    # v8 and v9 are known (overwritten in place, after the add of the new ones succeeds)
    batch = [(f"v{i}", rng.normal(size=DIM), {"new": True}) for i in range(8, 8 + n)]
    with pytest.raises(VectorIndexError, match="bad_alloc"):
        await index.upsert_many("ns", batch)
    ns._index = ns._index.inner
    assert await index.ids("ns") == before_ids
    assert await index.query("ns", GOOD, 10) == before
    stored = await index.get("ns", "v9")
    assert stored is not None and stored[1] == {"i": 9}
    assert await index.query("ns", GOOD, 3, filter={"new": True}) == []


@pytest.mark.parametrize(
    ("poison", "finite"),
    [
        (None, True),
        (np.nan, False),
        (np.inf, False),
        (-np.inf, False),
        ("inf and -inf", False),  # the row sum is NaN, still caught
        (3e38, True),  # finite values whose row sum overflows: the element-wise check decides
    ],
)
def test_the_finite_check_catches_every_non_finite_value(poison: Any, finite: bool) -> None:
    from satellites_es.vectors.validation import _all_finite

    array = np.random.default_rng(0).normal(size=(50, 384)).astype(np.float32)
    if poison == "inf and -inf":
        array[17, 3], array[17, 200] = np.inf, -np.inf
    elif poison is not None:
        array[17, 3:9] = poison
    assert _all_finite(array) is finite


@pytest.mark.parametrize(
    "items",
    [
        [("a", GOOD)],  # two fields
        [("a", GOOD, None, "extra")],
        [("a", GOOD, None), ("b", GOOD)],  # one good, one short: nothing written
        [42],
        [None],
        [{"id": "a", "vector": GOOD, "meta": None}],  # a mapping of three keys, not a tuple
        [("a", GOOD, None), "abc"],  # a string of three characters
    ],
)
async def test_malformed_items_refused(index: VectorIndex, tmp_path: Path, items: Any) -> None:
    await index.upsert("ns", "kept", GOOD)
    with pytest.raises(InvalidVectorError):
        await index.upsert_many("ns", items)
    await _nothing_written(index, tmp_path)


class _Colour(enum.StrEnum):
    RED = "red"


class _Plain(enum.Enum):
    ONE = 1


@pytest.mark.parametrize(
    "metadata",
    [
        {"when": datetime.date(2026, 11, 30)},  # msgspec would write a string
        {"deep": [1, {"x": float("nan")}]},  # msgspec would write null
        {"x": float("-inf")},
        {"x": decimal.Decimal("1.5")},
        {"x": np.int64(3)},
        {"x": b"bytes"},
        {"x": _Plain.ONE},
        {3: "int key"},
    ],
)
def test_metadata_check_is_json_dumps_rule_not_msgspecs(metadata: Any) -> None:
    """The fast path (msgspec, compared with the input) refuses exactly what the rule refuses."""
    with pytest.raises(InvalidVectorError, match="metadata #1"):
        check_metadata([{"ok": 1}, metadata])


def test_metadata_check_accepts_what_json_accepts_and_copies_it() -> None:
    items: list[Any] = [
        {"tuple": (1, 2), "colour": _Colour.RED, "f": np.float64(1.5), "big": 2**80},
        None,
        {"nested": {"list": [1, None, True, "é"]}},
    ]
    copied = check_metadata(items)
    assert copied == [
        {"tuple": [1, 2], "colour": "red", "f": 1.5, "big": 2**80},
        None,
        {"nested": {"list": [1, None, True, "é"]}},
    ]
    assert type(copied[0]["colour"]) is str and type(copied[0]["f"]) is float  # type: ignore[index]
    assert copied[2] is not items[2] and copied[2]["nested"] is not items[2]["nested"]  # type: ignore[index]
    mapping = types.MappingProxyType({"a": 1})  # a Mapping that is not a dict
    assert check_metadata([mapping]) == [{"a": 1}]
