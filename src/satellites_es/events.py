"""DataEvent, the EventBus protocol, and the in-process bus.

``DataEvent`` is the seed's event plus a unique ``id`` (what makes a retried append store the event
once, and the AMQP ``message_id``), a timezone-aware ``timestamp`` (the seed's
``datetime.utcnow`` is deprecated and naive) and a ``position`` that the event log assigns.
``to_json``/``from_json`` round-trip an event exactly. ``metadata`` is the envelope
(correlation, causation, actor, trace context, headers: :mod:`.envelope`) and ``schema_version``
the version of the payload's shape for its type (1 unless the producer says otherwise; readers
upcast older ones: :mod:`.upcasting`).

``InProcessEventBus`` delivery contract (the contract suite in ``tests/contract`` holds every bus
to it):

* ``publish`` returns after every matching handler has run once: handlers for the exact type in
  subscription order, then the ``subscribe_all`` handlers in subscription order.
* One event is delivered to the handlers before the next ``publish`` call's event; events from one
  publisher therefore arrive in publish order.
* A handler that raises does not keep the event from the other handlers. Its error is logged with
  the handler's name and counted in :attr:`InProcessEventBus.handler_errors`; ``publish`` does not
  raise for it (the publisher's write already happened; a failing subscriber is the subscriber's).
* Subscribing the same handler twice to one type delivers twice; ``unsubscribe`` removes one
  subscription and is a no-op for an unknown handler.
* A handler runs inside :func:`~satellites_es.envelope.handling` (what it appends is caused by
  the event) and, with OpenTelemetry configured, in a span continuing the event's trace.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from . import tracing
from .envelope import EMPTY, EventMetadata, ambient, handling, stamped
from .errors import InvalidEventError

__all__ = [
    "DataEvent",
    "EventBus",
    "EventHandler",
    "InProcessEventBus",
    "Publisher",
    "RelayBus",
    "handler_name",
]

logger = logging.getLogger(__name__)

EventHandler = Callable[["DataEvent"], Awaitable[None]]

_REQUIRED = ("type", "resource", "key", "source")


_json_str = json.encoder.encode_basestring_ascii  # what json.dumps does with a str
#: ``json.dumps(payload, separators=(",", ":"), sort_keys=True, allow_nan=False)``, made once:
#: ``json.dumps`` with arguments builds a new encoder per call, the larger part of encoding a
#: small payload (the relay encodes every event it publishes).
_PAYLOAD_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True, allow_nan=False)


def _json_int(value: int | None) -> str:
    """An int or None as json.dumps writes it (anything else: json.dumps itself)."""
    if value is None:
        return "null"
    return str(value) if type(value) is int else json.dumps(value)


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class DataEvent:
    type: str  # e.g. "user.created", "document.indexed"
    resource: str  # e.g. "users", "documents", "embeddings"
    key: str  # primary identifier
    payload: Mapping[str, Any]  # event data (JSON)
    source: str  # "redis" | "postgres" | "elasticsearch" | "faiss" | an app name
    timestamp: datetime = field(default_factory=_now)
    version: int | None = None  # the stream version; the log sets it on append
    id: str = field(default_factory=_new_id)
    #: Global position in the log; ``None`` until the event is appended.
    position: int | None = None
    #: The envelope: correlation, causation, actor, trace context, headers (a mapping is taken
    #: as :meth:`EventMetadata.from_dict <satellites_es.envelope.EventMetadata.from_dict>`).
    metadata: EventMetadata = EMPTY
    #: The version of this type's payload shape (readers upcast older ones to the latest).
    schema_version: int = 1

    def __post_init__(self) -> None:
        for name in _REQUIRED:
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise InvalidEventError(f"DataEvent.{name} must be a non-empty string")
        if not isinstance(self.payload, Mapping):
            raise InvalidEventError("DataEvent.payload must be a mapping")
        if not isinstance(self.timestamp, datetime) or self.timestamp.tzinfo is None:
            raise InvalidEventError("DataEvent.timestamp must be a timezone-aware datetime")
        if not self.id:
            raise InvalidEventError("DataEvent.id must be a non-empty string")
        if not isinstance(self.metadata, EventMetadata):
            object.__setattr__(self, "metadata", EventMetadata.from_dict(self.metadata))
        if type(self.schema_version) is not int or self.schema_version < 1:
            raise InvalidEventError("DataEvent.schema_version must be an integer >= 1")

    def payload_json(self) -> str:
        """The payload as compact JSON; :class:`InvalidEventError` if it is not JSON."""
        try:
            return _PAYLOAD_JSON.encode(self.payload)
        except (TypeError, ValueError) as exc:
            raise InvalidEventError(
                f"event {self.id} ({self.type}): payload is not JSON-serialisable: {exc}"
            ) from exc

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "resource": self.resource,
            "key": self.key,
            "payload": json.loads(self.payload_json()),
            "metadata": self.metadata.to_dict(),
            "schema_version": self.schema_version,
            "source": self.source,
            "timestamp": self.timestamp.isoformat(),
            "version": self.version,
            "position": self.position,
        }

    def to_json(self) -> str:
        """``json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)``, byte for byte,
        composed directly: the payload is encoded once (``to_dict`` round-trips it to detach
        it), which halves the cost on the relay's hot path."""
        s = _json_str
        return (
            f'{{"id":{s(self.id)},"key":{s(self.key)},"metadata":{self.metadata.to_json()},'
            f'"payload":{self.payload_json()},'
            f'"position":{_json_int(self.position)},"resource":{s(self.resource)},'
            f'"schema_version":{_json_int(self.schema_version)},'
            f'"source":{s(self.source)},"timestamp":{s(self.timestamp.isoformat())},'
            f'"type":{s(self.type)},"version":{_json_int(self.version)}}}'
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataEvent:
        missing = [name for name in (*_REQUIRED, "payload", "id") if name not in data]
        if missing:
            raise InvalidEventError(f"event is missing field(s): {', '.join(missing)}")
        try:
            ts = data.get("timestamp")
            timestamp = datetime.fromisoformat(ts) if isinstance(ts, str) else ts or _now()
            return cls(
                id=str(data["id"]),
                type=data["type"],
                resource=data["resource"],
                key=data["key"],
                payload=data["payload"],
                source=data["source"],
                timestamp=timestamp,
                version=data.get("version"),
                position=data.get("position"),
                metadata=data.get("metadata") or EMPTY,
                schema_version=data.get("schema_version", 1),
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, InvalidEventError):
                raise
            raise InvalidEventError(f"malformed event: {exc}") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> DataEvent:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidEventError(f"event is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidEventError("event JSON must be an object")
        return cls.from_dict(data)


def handler_name(handler: EventHandler) -> str:
    """A stable, readable name for a handler (used for logs and consumer groups)."""
    explicit = getattr(handler, "subscriber_name", None)
    if isinstance(explicit, str) and explicit:
        return explicit
    module = getattr(handler, "__module__", None) or type(handler).__module__
    qual = getattr(handler, "__qualname__", None) or type(handler).__qualname__
    return f"{module}.{qual}"


@runtime_checkable
class EventBus(Protocol):
    """Protocol for event bus implementations (in-process and RabbitMQ)."""

    def subscribe(self, event_type: str, handler: EventHandler) -> None: ...
    def subscribe_all(self, handler: EventHandler) -> None: ...
    def unsubscribe(self, event_type: str, handler: EventHandler) -> None: ...
    async def publish(self, event: DataEvent) -> None: ...


class Publisher(Protocol):
    """Sends events in call order, each with its own outcome (a confirm, for RabbitMQ).

    ``send`` returns at once with a future that resolves when the bus has taken the event, or
    raises :class:`~satellites_es.errors.PublishError` (an
    :class:`~satellites_es.errors.UnroutableError` when nobody subscribes to its type, an
    :class:`~satellites_es.errors.UndeliverableError` when it can never be published). Once a
    send failed, later ones may fail too (they are never delivered ahead of it); the caller
    bounds how many are outstanding.
    """

    def send(self, event: DataEvent) -> asyncio.Future[None]: ...


class RelayBus(EventBus, Protocol):
    """A bus the relay publishes the log through: an :class:`EventBus` with a
    :class:`Publisher` (the relay's one publish path: a rolling window of outcomes)."""

    async def publisher(self) -> Publisher: ...


class InProcessEventBus:
    """Simple in-process pub/sub; see the module docstring for its delivery contract."""

    ALL = "*"

    def __init__(self) -> None:
        self._handlers: dict[str, list[EventHandler]] = {}
        self._global_handlers: list[EventHandler] = []
        self.published = 0
        self.handler_errors = 0
        #: Optional hook for metrics: called with (handler name, exception).
        self.on_handler_error: Callable[[str, BaseException], None] | None = None

    def subscribe(self, event_type: str, handler: EventHandler) -> None:
        if event_type == self.ALL:
            self.subscribe_all(handler)
            return
        self._handlers.setdefault(event_type, []).append(handler)

    def subscribe_all(self, handler: EventHandler) -> None:
        self._global_handlers.append(handler)

    def unsubscribe(self, event_type: str, handler: EventHandler) -> None:
        bucket = self._global_handlers if event_type == self.ALL else self._handlers.get(event_type)
        if bucket and handler in bucket:
            bucket.remove(handler)

    async def publish(self, event: DataEvent) -> None:
        self.published += 1
        # Published inside a handler without the log: caused by the handled event. (No trace
        # capture: the relay publishes here too, inside its own span; handlers run in the
        # publisher's context anyway, so their spans continue its trace.)
        defaults = ambient(trace=False)
        if defaults is not None:
            (event,) = stamped([event], defaults)
        # Copy: a handler may (un)subscribe while we deliver.
        for handler in (*self._handlers.get(event.type, ()), *self._global_handlers):
            try:
                with tracing.continued("handle", event, handler=handler_name(handler)):
                    with handling(event):  # what the handler appends is caused by this event
                        await handler(event)
            except Exception as exc:
                self.handler_errors += 1
                logger.error(
                    "handler %s failed on event %s (%s): %s",
                    handler_name(handler),
                    event.id,
                    event.type,
                    exc,
                    exc_info=exc,
                )
                if self.on_handler_error is not None:
                    self.on_handler_error(handler_name(handler), exc)

    async def publisher(self) -> Publisher:
        """A :class:`Publisher` delivering in send order, each event once every earlier one was
        delivered (its future resolves after the handlers ran; a handler's error is counted, as
        for :meth:`publish`, and does not fail the send)."""
        return _InProcessPublisher(self)


class _InProcessPublisher:
    def __init__(self, bus: InProcessEventBus) -> None:
        self._bus = bus
        self._last: asyncio.Future[None] | None = None

    def send(self, event: DataEvent) -> asyncio.Future[None]:
        sent = asyncio.ensure_future(self._deliver(self._last, event))
        self._last = sent
        return sent

    async def _deliver(self, before: asyncio.Future[None] | None, event: DataEvent) -> None:
        if before is not None:
            await asyncio.wait([before])  # in send order, whatever became of the one before
        await self._bus.publish(event)


def built_event(**fields: Any) -> DataEvent:
    """A :class:`DataEvent` of ``fields`` (every field, by name) without ``__post_init__``'s
    checks: for events the library builds itself from values it has checked already (a stored
    row, a change set's operations), where the checks cost a bulk path more than the rest of the
    event (a change set of WordLlama documents: BENCHMARKS.md, issue 19). An append validates
    every event again (``store._checked``), whoever built it."""
    event = object.__new__(DataEvent)
    vars(event).update(fields)
    return event
