"""FaissSink writes a run of upserts as one matrix: encoded and plain vectors alike, metadata kept
or absent, positions honoured across runs split by deletes, and a bad document is a
ProjectionError that writes nothing."""

from __future__ import annotations

import numpy as np
import pytest

from satellites_es.errors import ProjectionError
from satellites_es.projections import Delete, Projection, Upsert
from satellites_es.projections.faiss_sink import FaissSink
from satellites_es.vectors import VectorIndex
from satellites_es.vectors.codec import encode_vector

DIM = 6


def _projection() -> Projection:
    return Projection(
        name="docs", version=1, sink="faiss", event_types=("doc.set",), handler=lambda e: None,
        options={"dimension": DIM, "metric": "l2"},
    )  # fmt: skip


async def test_runs_of_upserts_and_deletes_apply_in_position_order(index: VectorIndex) -> None:
    sink, p = FaissSink(index), _projection()
    await sink.prepare(p, 1)
    rng = np.random.default_rng(5)
    v = rng.standard_normal((5, DIM)).astype(np.float32)
    changes = [
        Upsert("a", {"vector": encode_vector(v[0]), "metadata": {"k": 1}}, 1),
        Upsert("b", {"vector": v[1].tolist()}, 2),  # a plain list in the same run
        Delete("a", 3),
        Upsert("a", {"vector": encode_vector(v[2])}, 2),  # late: stays deleted
        Upsert("c", {"vector": encode_vector(v[3])}, 4),
        Upsert("b", {"vector": encode_vector(v[4]), "metadata": {"k": 2}}, 5),
    ]
    assert await sink.apply(p, 1, changes) == 5
    assert await sink.apply(p, 1, changes) == 0  # a replay changes nothing
    dump = await sink.dump(p, 1)
    assert sorted(dump) == ["b", "c"]
    assert np.array_equal(np.array(dump["b"]["vector"], np.float32), v[4])  # type: ignore[index]
    assert dump["b"]["metadata"] == {"k": 2} and dump["c"]["metadata"] is None  # type: ignore[index]


@pytest.mark.parametrize(
    "document",
    [{"metadata": {}}, {"vector": "f32:!!!!"}, {"vector": encode_vector([1.0, 2.0])}],
    ids=["no-vector", "bad-base64", "wrong-dimension"],
)
async def test_a_bad_document_is_a_projection_error_and_writes_nothing(
    index: VectorIndex, document: dict[str, object]
) -> None:
    sink, p = FaissSink(index), _projection()
    await sink.prepare(p, 1)
    good = Upsert("ok", {"vector": encode_vector(np.ones(DIM))}, 1)
    with pytest.raises(ProjectionError):
        await sink.apply(p, 1, [good, Upsert("bad", document, 2)])
    assert await sink.dump(p, 1) == {}
