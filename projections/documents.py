"""documents -> Elasticsearch: title and body as full text, author and topic as keywords."""

from __future__ import annotations

from satellites_es.events import DataEvent
from satellites_es.projections import Delete, Projection, Upsert

MAPPINGS = {
    "properties": {
        "title": {"type": "text"},
        "body": {"type": "text"},
        "author_id": {"type": "keyword"},
        "topic": {"type": "keyword"},
        "updated_at": {"type": "date"},
    }
}


def to_change(event: DataEvent) -> Upsert | Delete | None:
    if event.type == "document.deleted":
        return Delete(event.key)
    p = event.payload
    return Upsert(
        event.key,
        {
            "title": p["title"],
            "body": p["body"],
            "author_id": p.get("author_id"),
            "topic": p.get("topic"),
            "updated_at": event.timestamp.isoformat(),
        },
    )


documents = Projection(
    name="documents",
    version=1,
    sink="elasticsearch",
    event_types=("document.upserted", "document.deleted"),
    handler=to_change,
    options={"mappings": MAPPINGS},
)
