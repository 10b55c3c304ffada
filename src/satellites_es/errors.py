"""The errors satellites-es raises, one tree under :class:`SatellitesError`.

Driver errors (asyncpg, aio-pika, redis, elasticsearch, faiss) are translated at the edge of each
adapter with ``raise X(...) from exc``; they never escape the public API untranslated.

::

    SatellitesError
    ├── ConfigurationError            a setting is missing or has a wrong value (names the field)
    ├── LifecycleError                started twice, used before start or after stop
    ├── BackendUnavailableError       a backend could not be reached (names the backend)
    │   └── BackendRefusedError       ... and retrying cannot help: its certificate does not
    │                                 verify, the login or the TLS handshake is refused
    ├── InvalidEventError (ValueError) an event is malformed: missing field, not JSON, too large
    │   └── InvalidDocumentError      a change set operation is malformed (names the operation)
    ├── PersistenceError              the event log could not read or write
    │   └── ConcurrencyError          an append's expected version did not match the stream
    ├── PublishError                  a message was not confirmed: nacked, unroutable, timed out
    │   ├── UnroutableError           no queue is bound for it: no subscriber group wants it
    │   └── UndeliverableError        the broker can never take it (a routing key over 255 bytes)
    ├── ProjectionError               a projection could not apply, rebuild or flip
    │   ├── RejectedChangesError      a sink refused some changes of a call and applied the rest
    │   ├── PoisonEventError          one event cannot be projected (names projection, position, key)
    │   ├── ProjectorDownError        wait_for: the projector that would apply it is not running
    │   └── NotCaughtUpError          wait_for: the position was not applied within the timeout
    ├── BackgroundTaskError           a task a service depends on (the relay) died
    ├── UpcastError                   a stored event's schema version is newer than known, or
    │                                 its upcaster failed (names the event)
    └── VectorIndexError              the FAISS wrapper refused or failed an operation
        ├── InvalidVectorError (ValueError)      wrong dimension, NaN or infinity
        ├── InvalidNamespaceError (ValueError)   a namespace name that is not a safe identifier
        ├── NamespaceNotFoundError (KeyError)    the namespace does not exist
        └── CorruptIndexError                    a snapshot on disk is truncated or inconsistent
"""

from __future__ import annotations

__all__ = [
    "BackendRefusedError",
    "BackendUnavailableError",
    "BackgroundTaskError",
    "ConcurrencyError",
    "ConfigurationError",
    "CorruptIndexError",
    "InvalidDocumentError",
    "InvalidEventError",
    "InvalidNamespaceError",
    "InvalidVectorError",
    "LifecycleError",
    "NamespaceNotFoundError",
    "NotCaughtUpError",
    "PersistenceError",
    "PoisonEventError",
    "ProjectionError",
    "ProjectorDownError",
    "PublishError",
    "RejectedChangesError",
    "SatellitesError",
    "UndeliverableError",
    "UnroutableError",
    "UpcastError",
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


class BackendRefusedError(BackendUnavailableError):
    """The backend answered and refused us for good: a server certificate that does not verify
    against the configured CA, a TLS handshake or a login that is refused. Waiting would not
    change it, so ``start()`` fails at once, even for a backend it may start without."""


class InvalidEventError(SatellitesError, ValueError):
    """An event is malformed; raised before anything is written."""


class InvalidDocumentError(InvalidEventError):
    """A change set operation is malformed (no text, a vector of the wrong dimension, a value
    that is not JSON); raised by ``commit`` before anything is written. Names the operation."""


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


class UndeliverableError(PublishError):
    """The broker can never take this message as it is (a routing key over 255 bytes): retrying
    it cannot succeed, so the relay parks it instead (see :mod:`satellites_es.faults`)."""


class ProjectionError(SatellitesError):
    """A projection could not apply an event, rebuild, or flip."""


class RejectedChangesError(ProjectionError):
    """A sink refused some changes of one call for good (an Elasticsearch mapping rejection, a
    vector of the wrong dimension) and applied every other change of that call.

    ``rejected`` maps the refused changes' positions to the reason, one line each; ``applied``
    is how many of the others the store took (older positions it skipped are not counted).
    """

    def __init__(self, target: str, rejected: dict[int, str], applied: int = 0) -> None:
        first = next(iter(rejected.items()), (None, ""))
        super().__init__(
            f"{target}: {len(rejected)} change(s) refused, first at position {first[0]}: {first[1]}"
        )
        self.target = target
        self.rejected = rejected
        self.applied = applied


class PoisonEventError(ProjectionError):
    """One event cannot be projected, whatever the retries: the handler raised on it, or the
    sink refused its change for good. Names the projection, position, key, event id and cause."""

    def __init__(
        self,
        projection: str,
        version: int,
        position: int,
        key: str | None,
        event_id: str | None,
        error_type: str,
        error: str,
    ) -> None:
        super().__init__(
            f"projection {projection} v{version}: the event at position {position} "
            f"(key {key!r}, id {event_id}) cannot be projected: {error_type}: {error}"
        )
        self.projection, self.version, self.position = projection, version, position
        self.key, self.event_id = key, event_id
        self.error_type, self.error = error_type, error


class ProjectorDownError(ProjectionError):
    """``wait_for`` found the projector that would apply the position not running (failed,
    restarting, stopped, or not served by this process): raised at once, not at the timeout."""


class NotCaughtUpError(ProjectionError):
    """``wait_for``: a projection did not apply the position within the timeout."""

    def __init__(self, projection: str, position: int, reached: int, timeout: float) -> None:
        super().__init__(
            f"projection {projection} did not reach position {position} in {timeout:g}s "
            f"(it is at {reached})"
        )
        self.projection, self.position, self.reached = projection, position, reached


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


class UpcastError(SatellitesError):
    """A stored event cannot be read as the current schema version of its type: its version
    is newer than this code knows (the producer runs newer code), or an upcaster failed. The
    message names the event and the versions; the row itself is never changed."""
