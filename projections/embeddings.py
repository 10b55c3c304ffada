"""embeddings -> a FAISS namespace (cosine, d=384) with the title and topic as metadata."""

from __future__ import annotations

from satellites_es.events import DataEvent
from satellites_es.projections import Delete, Projection, Upsert

DIMENSION = 384


def to_change(event: DataEvent) -> Upsert | Delete | None:
    if event.type == "embedding.deleted":
        return Delete(event.key)
    p = event.payload
    metadata = {"title": p.get("title"), "topic": p.get("topic"), "model": p.get("model")}
    return Upsert(event.key, {"vector": p["vector"], "metadata": metadata})


embeddings = Projection(
    name="embeddings",
    version=1,
    sink="faiss",
    event_types=("embedding.upserted", "embedding.deleted"),
    handler=to_change,
    options={"dimension": DIMENSION, "metric": "cosine", "index_kind": "flat"},
)
