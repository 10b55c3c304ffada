"""embeddings -> a FAISS namespace (cosine, d=384) with the title, topic and model as metadata.

The handler is written as fields (:class:`~satellites_es.projections.VectorFields`), so a rebuild
replays it a batch of columns at a time instead of an object per event.
"""

from __future__ import annotations

from satellites_es.projections import Projection, VectorFields

DIMENSION = 384

embeddings = Projection(
    name="embeddings",
    version=1,
    sink="faiss",
    event_types=("embedding.upserted", "embedding.deleted"),
    handler=VectorFields(
        vector="vector", metadata=("title", "topic", "model"), deletes=("embedding.deleted",)
    ),
    options={"dimension": DIMENSION, "metric": "cosine", "index_kind": "flat"},
)
