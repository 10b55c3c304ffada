"""satellites-es: an event-sourced data layer over Postgres, RabbitMQ, Redis, Elasticsearch, FAISS.

The public API; everything else is importable from its module but may change.
"""

from __future__ import annotations

from .config import (
    DataLayerConfig,
    ElasticsearchConfig,
    EventLogConfig,
    FaissConfig,
    PostgresConfig,
    RabbitMQConfig,
    RedisConfig,
    RelayConfig,
)
from .errors import (
    BackendRefusedError,
    BackendUnavailableError,
    BackgroundTaskError,
    ConcurrencyError,
    ConfigurationError,
    CorruptIndexError,
    InvalidEventError,
    InvalidNamespaceError,
    InvalidVectorError,
    LifecycleError,
    NamespaceNotFoundError,
    PersistenceError,
    PoisonEventError,
    ProjectionError,
    PublishError,
    RejectedChangesError,
    SatellitesError,
    UndeliverableError,
    UnroutableError,
    VectorIndexError,
)
from .events import DataEvent, EventBus, EventHandler, InProcessEventBus
from .facade import DataLayer, LayerState
from .health import BackendHealth, Health
from .parking import ParkedEvent, ParkedEvents
from .projections import Delete, PoisonPolicy, Projection, Upsert
from .store import AppendResult, EventStore
from .vectors import VectorIndex, VectorMatch

__all__ = [
    "AppendResult",
    "BackendHealth",
    "BackendRefusedError",
    "BackendUnavailableError",
    "BackgroundTaskError",
    "ConcurrencyError",
    "ConfigurationError",
    "CorruptIndexError",
    "DataEvent",
    "DataLayer",
    "DataLayerConfig",
    "Delete",
    "ElasticsearchConfig",
    "EventBus",
    "EventHandler",
    "EventLogConfig",
    "EventStore",
    "FaissConfig",
    "Health",
    "InProcessEventBus",
    "InvalidEventError",
    "InvalidNamespaceError",
    "InvalidVectorError",
    "LayerState",
    "LifecycleError",
    "NamespaceNotFoundError",
    "ParkedEvent",
    "ParkedEvents",
    "PersistenceError",
    "PoisonEventError",
    "PoisonPolicy",
    "PostgresConfig",
    "Projection",
    "ProjectionError",
    "PublishError",
    "RabbitMQConfig",
    "RedisConfig",
    "RejectedChangesError",
    "RelayConfig",
    "SatellitesError",
    "UndeliverableError",
    "UnroutableError",
    "Upsert",
    "VectorIndex",
    "VectorIndexError",
    "VectorMatch",
]
