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
    ProjectionError,
    PublishError,
    SatellitesError,
    UnroutableError,
    VectorIndexError,
)
from .events import DataEvent, EventBus, EventHandler, InProcessEventBus
from .facade import DataLayer, LayerState
from .health import BackendHealth, Health
from .projections import Delete, Projection, Upsert
from .store import AppendResult, EventStore
from .vectors import VectorIndex, VectorMatch

__all__ = [
    "AppendResult",
    "BackendHealth",
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
    "PersistenceError",
    "PostgresConfig",
    "Projection",
    "ProjectionError",
    "PublishError",
    "RabbitMQConfig",
    "RedisConfig",
    "RelayConfig",
    "SatellitesError",
    "UnroutableError",
    "Upsert",
    "VectorIndex",
    "VectorIndexError",
    "VectorMatch",
]
