"""The projections the demo (and a typical retrieval backend) uses, shipped in the package.

* ``documents``: document events -> an Elasticsearch index with full-text fields;
* ``embeddings``: embedding events -> a FAISS namespace with metadata (d=384, cosine), written
  as fields (:class:`~satellites_es.projections.VectorFields`) so a rebuild replays it a batch
  of columns at a time;
* ``entities``: entity events -> a Redis cache of authors, kept for a day after their last
  change (TTL policy).

They are what ``satellites-es`` runs when no projections of the user's are installed (see
:func:`satellites_es.projections.discovery.load_projections`), so the demo, ``rebuild`` and
``audit`` work from an installed wheel, outside any checkout.
"""

from __future__ import annotations

from ..events import DataEvent
from ..projections import Delete, Projection, Upsert, VectorFields

__all__ = ["DIMENSION", "PROJECTIONS", "documents", "embeddings", "entities"]

DIMENSION = 384
ONE_DAY = 24 * 3600

MAPPINGS = {
    "properties": {
        "title": {"type": "text"},
        "body": {"type": "text"},
        "author_id": {"type": "keyword"},
        "topic": {"type": "keyword"},
        "updated_at": {"type": "date"},
    }
}


def document_change(event: DataEvent) -> Upsert | Delete | None:
    if event.type == "document.deleted":
        return Delete(event.key)
    p = event.payload
    return Upsert(event.key, {"title": p["title"], "body": p["body"],
                              "author_id": p.get("author_id"), "topic": p.get("topic"),
                              "updated_at": event.timestamp.isoformat()})  # fmt: skip


def entity_change(event: DataEvent) -> Upsert | Delete | None:
    if event.type == "entity.deleted":
        return Delete(event.key)
    return Upsert(event.key, dict(event.payload))


documents = Projection(
    name="documents",
    version=1,
    sink="elasticsearch",
    event_types=("document.upserted", "document.deleted"),
    handler=document_change,
    options={"mappings": MAPPINGS},
)

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

entities = Projection(
    name="entities",
    version=1,
    sink="redis",
    event_types=("entity.upserted", "entity.deleted"),
    handler=entity_change,
    ttl_seconds=ONE_DAY,
)

PROJECTIONS: dict[str, Projection] = {p.name: p for p in (documents, embeddings, entities)}
