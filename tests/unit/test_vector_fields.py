"""``VectorFields``: a FAISS handler as fields. Called on an event it gives the change; on a
page of payloads it gives the same changes as runs of columns between the deletes."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from satellites_es.errors import ConfigurationError, ProjectionError
from satellites_es.events import DataEvent
from satellites_es.projections import Delete, Upsert, VectorFields, VectorRun
from satellites_es.store import PayloadBatch

FIELDS = VectorFields(vector="v", metadata=("title", "n"), deletes=("gone",))


def _page(rows: list[tuple[str, str, Any]]) -> PayloadBatch:
    return PayloadBatch(
        positions=list(range(10, 10 + len(rows))),
        keys=[key for key, _, _ in rows],
        types=[kind for _, kind, _ in rows],
        payloads=[payload for _, _, payload in rows],
    )


def _event(position: int, key: str, kind: str, payload: Any) -> DataEvent:
    event = DataEvent(type=kind, resource="r", key=key, payload={}, source="t")
    object.__setattr__(event, "payload", payload)
    object.__setattr__(event, "position", position)
    return event


def _one_by_one(page: PayloadBatch) -> list[Upsert | Delete]:
    """What the handler gives event by event, stamped with the positions (as Projection does)."""
    out: list[Upsert | Delete] = []
    for position, key, kind, payload in zip(
        page.positions, page.keys, page.types, page.payloads, strict=True
    ):
        change = FIELDS(_event(position, key, kind, payload))
        if isinstance(change, Upsert):
            out.append(Upsert(change.key, change.document, position))
        else:
            out.append(Delete(change.key, position))
    return out


def _flatten(runs: list[VectorRun | Delete]) -> list[Upsert | Delete]:
    out: list[Upsert | Delete] = []
    for run in runs:
        if isinstance(run, Delete):
            out.append(run)
            continue
        metadata = run.metadata or [None] * len(run.keys)
        out += [Upsert(k, {"vector": v, "metadata": m}, p)
                for k, v, m, p in zip(run.keys, run.vectors, metadata, run.positions, strict=True)]  # fmt: skip
    return out


@pytest.mark.parametrize(
    "kinds",
    [
        ["up"] * 5,
        ["gone", "up", "up", "gone", "up"],
        ["up", "up", "gone", "gone"],
        ["gone"],
        ["up", "gone"],
    ],
)
def test_runs_are_the_handlers_changes_in_order(kinds: list[str]) -> None:
    rows = [(f"k{i % 3}", kind, {} if kind == "gone" else {"v": f"f32:{i}", "title": f"t{i}"})
            for i, kind in enumerate(kinds)]  # fmt: skip
    page = _page(rows)
    runs = FIELDS.runs(page)
    assert _flatten(runs) == _one_by_one(page)
    # consecutive upserts form one run: no two runs are adjacent
    assert all(isinstance(a, Delete) or isinstance(b, Delete) for a, b in itertools.pairwise(runs))


def test_metadata_fields_missing_are_none_and_no_fields_means_no_metadata() -> None:
    page = _page([("a", "up", {"v": [1.0, 2.0], "title": "x", "other": 1})])
    [run] = FIELDS.runs(page)
    assert isinstance(run, VectorRun)
    assert run.metadata == [{"title": "x", "n": None}] and run.vectors == [[1.0, 2.0]]
    [bare] = VectorFields(vector="v").runs(page)
    assert isinstance(bare, VectorRun) and bare.metadata is None
    assert VectorFields().runs(_page([])) == []


@pytest.mark.parametrize("payload", [{"title": "no vector"}, [1, 2], "text"])
def test_a_payload_without_the_vector_names_its_position(payload: Any) -> None:
    page = _page([("a", "up", {"v": "f32:AAAA"}), ("b", "up", payload)])
    with pytest.raises(ProjectionError, match="position 11 has no 'v' field"):
        FIELDS.runs(page)
    with pytest.raises(ProjectionError, match="position 11"):
        FIELDS(_event(11, "b", "up", payload))


@pytest.mark.parametrize(
    "kwargs",
    [{"vector": ""}, {"vector": 3}, {"metadata": "title"}, {"metadata": ("a", "")},
     {"deletes": "gone"}, {"deletes": (1,)}],
)  # fmt: skip
def test_bad_fields_are_a_configuration_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        VectorFields(**kwargs)


def test_lists_are_taken_as_tuples() -> None:
    fields = VectorFields(metadata=["a", "b"], deletes=["x"])  # type: ignore[arg-type]
    assert fields.metadata == ("a", "b") and fields.deletes == ("x",)
    assert hash(fields) == hash(VectorFields(metadata=("a", "b"), deletes=("x",)))
