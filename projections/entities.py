"""entities -> a Redis cache of authors, kept for a day after their last change (TTL policy)."""

from __future__ import annotations

from satellites_es.events import DataEvent
from satellites_es.projections import Delete, Projection, Upsert

ONE_DAY = 24 * 3600


def to_change(event: DataEvent) -> Upsert | Delete | None:
    if event.type == "entity.deleted":
        return Delete(event.key)
    return Upsert(event.key, dict(event.payload))


entities = Projection(
    name="entities",
    version=1,
    sink="redis",
    event_types=("entity.upserted", "entity.deleted"),
    handler=to_change,
    ttl_seconds=ONE_DAY,
)
