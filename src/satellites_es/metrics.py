"""Prometheus metrics of a satellites-es process.

Gauges are refreshed from the live objects when ``/metrics`` is scraped (:func:`refresh`), so
nothing on the hot path pays for them; the vector query latency is a histogram observed by the
caller that times the query. The append rate is ``rate(satellites_log_head_position[1m])``: the
head of a dense log only grows by one per appended event.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from .facade import DataLayer
    from .projections.supervisor import ProjectionService

__all__ = ["Metrics"]

logger = logging.getLogger(__name__)


class Metrics:
    """One registry per process (or per test), so figures never leak between layers."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.log_head = Gauge("satellites_log_head_position", "Last position in the event log "
                              "(its rate is the append rate).", registry=r)  # fmt: skip
        self.log_pending = Gauge(
            "satellites_log_pending_events", "Events committed inside producers' transactions "
            "and not numbered yet (near 0 while a relay leader ticks the sequencer).", registry=r,
        )  # fmt: skip
        self.relay_lag = Gauge("satellites_relay_lag_events", "Events in the log not yet "
                               "published by the relay.", registry=r)  # fmt: skip
        self.relay_oldest = Gauge("satellites_relay_oldest_unpublished_seconds", "Age of the "
                                  "oldest event the relay has not published.", registry=r)  # fmt: skip
        self.relay_published = Gauge("satellites_relay_published_events", "Events this process's "
                                     "relay published with a confirm.", registry=r)  # fmt: skip
        self.projection_lag = Gauge("satellites_projection_lag_events", "Events in the log not "
                                    "yet applied, per projection.", ["projection"], registry=r)  # fmt: skip
        self.projection_position = Gauge("satellites_projection_position", "Last applied "
                                         "position, per projection.", ["projection"], registry=r)  # fmt: skip
        self.projection_up = Gauge("satellites_projection_up", "1 if the projection is running "
                                   "with its sink reachable.", ["projection"], registry=r)  # fmt: skip
        self.parked = Gauge("satellites_parked_events", "Events parked (set aside as poison), "
                            "per projection.", ["projection"], registry=r)  # fmt: skip
        self.dead_letters = Gauge("satellites_dead_letters", "Messages in a dead-letter queue, "
                                  "per subscriber group.", ["group"], registry=r)  # fmt: skip
        self.snapshots_refused = Gauge("satellites_snapshots_refused", "FAISS snapshots of the "
                                       "object store refused at bootstrap (failed verification), "
                                       "per projection.", ["projection"], registry=r)  # fmt: skip
        self.snapshot_store_up = Gauge("satellites_snapshot_store_up", "1 if the FAISS snapshot "
                                       "store answered this replica's last call.", ["projection"],
                                       registry=r)  # fmt: skip
        self.backend_up = Gauge("satellites_backend_up", "1 if the backend answers its health "
                                "check.", ["backend"], registry=r)  # fmt: skip
        self.vector_query_seconds = Histogram(
            "satellites_vector_query_seconds", "Latency of vector queries.", ["namespace"],
            registry=r, buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )  # fmt: skip

    async def refresh(self, data: DataLayer, service: ProjectionService | None = None) -> None:
        health = await data.health()
        for name, h in health.details.items():
            if h.status != "disabled" and name != "relay":
                self.backend_up.labels(name).set(1.0 if h.ok else 0.0)
        relay = health.details.get("relay")
        if relay is not None and relay.status == "ok":
            self._relay(relay.details)
        rabbit = health.details.get("rabbitmq")
        if rabbit is not None and rabbit.status == "ok":
            for group, info in rabbit.details.get("groups", {}).items():
                if "dlq" in info:
                    self.dead_letters.labels(group).set(info["dlq"])
        if data.config.log.enabled and data.config.postgres.enabled:
            self.log_head.set(await data.log.head())
            self.log_pending.set(await data.log.pending())
        if service is not None:
            await self._projections(service)

    def _relay(self, details: Any) -> None:
        self.relay_lag.set(details.get("lag", 0))
        self.relay_oldest.set(details.get("oldest_unpublished_age", 0.0))
        self.relay_published.set(details.get("published", 0))

    async def _projections(self, service: ProjectionService) -> None:
        for name, lag in (await service.lag()).items():
            self.projection_lag.labels(name).set(lag)
        for name, projector in service.projectors.items():
            self.projection_position.labels(name).set(max(projector.position, 0))
        for name, info in service.health().items():
            self.projection_up.labels(name).set(1.0 if info["ok"] else 0.0)
            self.parked.labels(name).set(info["parked"])
            if "replica" in info:
                self.snapshots_refused.labels(name).set(len(info["replica"]["refused"]))
                down = info.get("snapshotter", {}).get("store_down", False)
                up = info["replica"]["store"] == "ok" and not down
                self.snapshot_store_up.labels(name).set(1.0 if up else 0.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
