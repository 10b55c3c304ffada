"""The errors satellites-es raises, one tree under :class:`SatellitesError`.

Driver errors (asyncpg, aio-pika, redis, elasticsearch, faiss) are translated at the edge of each
adapter with ``raise X(...) from exc``; they never escape the public API untranslated.

::

    SatellitesError
    ├── ConfigurationError            a setting is missing or has a wrong value (names the field)
    ├── LifecycleError                started twice, used before start or after stop
    ├── BackendUnavailableError       a backend could not be reached (names the backend)
    ├── InvalidEventError (ValueError) an event is malformed: missing field, not JSON, too large
    ├── PersistenceError              the event log could not read or write
    │   └── ConcurrencyError          an append's expected version did not match the stream
    ├── PublishError                  a message was not confirmed: nacked, unroutable, timed out
    │   └── UnroutableError           no queue is bound for it: no subscriber group wants it
    ├── ProjectionError               a projection could not apply, rebuild or flip
    ├── BackgroundTaskError           a task a service depends on (the relay) died
    └── VectorIndexError              the FAISS wrapper refused or failed an operation
        ├── InvalidVectorError (ValueError)      wrong dimension, NaN or infinity
        ├── InvalidNamespaceError (ValueError)   a namespace name that is not a safe identifier
        ├── NamespaceNotFoundError (KeyError)    the namespace does not exist
        └── CorruptIndexError                    a snapshot on disk is truncated or inconsistent
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "BackgroundTaskError",
    "ConcurrencyError",
    "ConfigurationError",
    "CorruptIndexError",
    "InvalidEventError",
    "InvalidNamespaceError",
    "InvalidVectorError",
    "LifecycleError",
    "NamespaceNotFoundError",
    "PersistenceError",
    "ProjectionError",
    "PublishError",
    "SatellitesError",
    "UnroutableError",
    "VectorIndexError",
]


class SatellitesError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigurationError(SatellitesError):
    """A setting is missing or invalid. The message names the field (never its secret value)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class LifecycleError(SatellitesError):
    """The object is not in a state that allows the call (start twice, use after stop)."""


class BackendUnavailableError(SatellitesError):
    """A backend could not be reached or answered with an error."""

    def __init__(self, backend: str, message: str) -> None:
        super().__init__(f"{backend}: {message}")
        self.backend = backend


class InvalidEventError(SatellitesError, ValueError):
    """An event is malformed; raised before anything is written."""


class PersistenceError(SatellitesError):
    """The event log failed to read or write."""


class ConcurrencyError(PersistenceError):
    """An append named an expected stream version that did not match the stored one."""

    def __init__(self, resource: str, key: str, expected: int | None, actual: int | None) -> None:
        super().__init__(
            f"stream {resource}/{key}: expected version {expected}, but it is at {actual}"
        )
        self.resource = resource
        self.key = key
        self.expected = expected
        self.actual = actual


class PublishError(SatellitesError):
    """A message could not be published with a confirm (nacked, unroutable, timed out)."""


class UnroutableError(PublishError):
    """The broker returned a mandatory message: no queue is bound for it (nobody subscribed)."""


class ProjectionError(SatellitesError):
    """A projection could not apply an event, rebuild, or flip."""


class BackgroundTaskError(SatellitesError):
    """A background task a service depends on (the relay) died; the service stops with it."""


class VectorIndexError(SatellitesError):
    """The vector index refused or failed an operation."""


class InvalidVectorError(VectorIndexError, ValueError):
    """A vector has the wrong dimension or holds NaN or infinity."""


class InvalidNamespaceError(VectorIndexError, ValueError):
    """A namespace name is not a safe identifier."""


class NamespaceNotFoundError(VectorIndexError, KeyError):
    """The namespace does not exist."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class CorruptIndexError(VectorIndexError):
    """A snapshot on disk is truncated, corrupt or inconsistent; names the file."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
