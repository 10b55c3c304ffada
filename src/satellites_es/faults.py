"""What a failure means, decided once: *transient* (try again later) or *permanent* (this input
will never succeed), and the one backoff policy every long-running part retries with.

Every long-running part (the relay, the projectors, the service's supervisor) asks
:func:`is_transient` and nothing else:

* **transient**: a backend unreachable, a timeout, a connection reset, Elasticsearch answering
  429/502/503/504, a broker restart, a Postgres session ended. The part backs off
  (:func:`backoff`: exponential with jitter, capped at :data:`MAX_BACKOFF`) and tries the same
  work again, forever: an outage of any length is survived, and the work resumes from its
  checkpoint when the backend is back.
* **permanent**: a handler that raises on an event, a document the Elasticsearch mapping
  rejects, a vector of the wrong dimension, a routing key the broker can never take. Retrying
  cannot help; the part isolates the one bad input and parks it (:mod:`satellites_es.parking`)
  so the rest flows.

Our own errors say which they are by type (:class:`~satellites_es.errors.BackendUnavailableError`
is transient, :class:`~satellites_es.errors.PoisonEventError` permanent); a driver error that
reached a part untranslated is classified by its driver type, and a wrapped one by its cause
chain. Unknown errors are permanent: a bug must not look like an outage and retry forever.
"""

from __future__ import annotations

import random

import aio_pika
import asyncpg
import elastic_transport
import redis.exceptions as redis_errors
from elasticsearch import ApiError

from .errors import (
    BackendUnavailableError,
    ConfigurationError,
    PersistenceError,
    PoisonEventError,
    PublishError,
    RejectedChangesError,
    UndeliverableError,
)

__all__ = ["MAX_BACKOFF", "TRANSIENT_STATUS", "backoff", "is_transient"]

#: The longest pause between two tries of the same work, in seconds.
MAX_BACKOFF = 5.0
#: Elasticsearch statuses that mean "not now" rather than "never".
TRANSIENT_STATUS = frozenset({408, 429, 502, 503, 504})

_PERMANENT: tuple[type[BaseException], ...] = (
    ConfigurationError,
    PoisonEventError,
    RejectedChangesError,
    UndeliverableError,
)
_TRANSIENT: tuple[type[BaseException], ...] = (
    BackendUnavailableError,
    PersistenceError,
    PublishError,
    OSError,  # ConnectionError, and TimeoutError since Python 3.11
    redis_errors.ConnectionError,  # not an OSError (BusyLoadingError is one of these)
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,  # a replica promoted under us: writable again after failover
    redis_errors.TryAgainError,
    elastic_transport.ConnectionError,  # not an OSError either
    elastic_transport.ConnectionTimeout,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a terminated session can leave a connection mid-operation
    asyncpg.CannotConnectNowError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.AdminShutdownError,
    aio_pika.exceptions.AMQPConnectionError,
    aio_pika.exceptions.ChannelInvalidStateError,
)


def is_transient(exc: BaseException) -> bool:
    """True if the same work may succeed later unchanged (see the module docstring)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _PERMANENT):
            return False
        if isinstance(current, ApiError):
            return current.status_code in TRANSIENT_STATUS
        if isinstance(current, _TRANSIENT):
            return True
        current = current.__cause__
    return False


def backoff(failures: int, *, initial: float = 0.1, cap: float = MAX_BACKOFF) -> float:
    """Seconds to wait after ``failures`` failures in a row (1, 2, ...): exponential from
    ``initial``, capped at ``cap``, with up to 20% jitter so that parts cut by the same outage
    do not all come back in the same instant."""
    base = min(cap, initial * 2.0 ** min(max(0, failures - 1), 60))
    return float(min(cap, base * (1.0 + 0.2 * random.random())))
