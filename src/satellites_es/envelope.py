"""The event envelope: metadata that travels with an event from producer to every consumer.

:class:`EventMetadata` is what an event carries beside its payload: the *correlation id* (the
conversation it belongs to: every event caused, directly or not, by one request shares it), the
*causation id* (the id of the event whose handling produced this one), the *actor* (who did it:
a user, a service), the W3C trace context (``traceparent``/``tracestate``, see
:mod:`.tracing`) and free ``headers`` (string to string). It is stored with the event (the
``metadata`` column, migration 0005), returned by every read, carried on the bus (the body's
``metadata``, the AMQP ``correlation_id`` and headers) and kept through the dead-letter queue and
its replay. Like the payload it is validated on the way in: strings only, no NUL character
(jsonb cannot store one), at most :data:`MAX_METADATA_BYTES` as JSON, else
:class:`~satellites_es.errors.InvalidEventError`.

**Causation without passing it.** A subscriber's handler runs inside :func:`handling` (the
RabbitMQ consumer, the in-process bus and catch-up subscriptions call it around every handler
call), which sets a context variable; an event appended or published inside the handler, that
states no causation or correlation itself, gets ``causation_id`` = the handled event's id and
its correlation id (or, when it had none, the handled event's id: the conversation starts
there). :func:`ambient` reads it, with the current trace context, once per append call: when
there is neither (the common case outside handlers and without OpenTelemetry) the append does
no per-event work at all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import tracing
from .errors import InvalidEventError

if TYPE_CHECKING:
    from .events import DataEvent

__all__ = [
    "EMPTY",
    "MAX_METADATA_BYTES",
    "EventMetadata",
    "ambient",
    "handled_event",
    "handling",
    "stamped",
]

#: The largest metadata an event may carry, as compact JSON (a header map is not a payload).
MAX_METADATA_BYTES = 16_384

#: The named fields, in the order of the JSON object (sorted, as ``json.dumps(sort_keys=True)``).
_FIELDS = ("actor", "causation_id", "correlation_id", "traceparent", "tracestate")
_KNOWN = frozenset((*_FIELDS, "headers"))
_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=True)

_handling: ContextVar[DataEvent | None] = ContextVar("satellites_handling", default=None)


@dataclass(frozen=True, slots=True)
class EventMetadata:
    """Correlation, causation, actor, trace context and free headers; every field optional."""

    correlation_id: str | None = None
    causation_id: str | None = None
    actor: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in _FIELDS:
            value = getattr(self, name)
            if value is not None:
                _check_text(f"metadata.{name}", value, empty_ok=False)
        if not isinstance(self.headers, Mapping):
            raise InvalidEventError("metadata.headers must be a mapping of strings to strings")
        for key, value in self.headers.items():
            _check_text("a metadata.headers name", key, empty_ok=False)
            _check_text(f"metadata.headers[{key!r}]", value, empty_ok=True)
        object.__setattr__(self, "headers", dict(self.headers))

    def __bool__(self) -> bool:
        return any(getattr(self, name) is not None for name in _FIELDS) or bool(self.headers)

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set (``headers`` only when not empty): the JSON form."""
        out: dict[str, Any] = {n: v for n in _FIELDS if (v := getattr(self, n)) is not None}
        if self.headers:
            out["headers"] = dict(self.headers)
        return out

    def to_json(self) -> str:
        """Compact, key-sorted JSON (``{}`` when nothing is set)."""
        if self is EMPTY:  # the usual event: no work on the relay's hot path
            return "{}"
        return _JSON.encode(self.to_dict()) if self else "{}"

    def filled(self, defaults: Mapping[str, str]) -> EventMetadata:
        """This metadata with the named fields it leaves unset taken from ``defaults``."""
        missing = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        if not missing:
            return self
        values = {n: getattr(self, n) for n in _FIELDS}
        return EventMetadata(**{**values, **missing}, headers=self.headers)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EventMetadata:
        """The metadata of a JSON object (unknown keys are refused: they would be lost)."""
        if not isinstance(data, Mapping):
            raise InvalidEventError("metadata must be a JSON object")
        unknown = set(data) - {*_FIELDS, "headers"}
        if unknown:
            raise InvalidEventError(f"metadata has unknown field(s): {', '.join(sorted(unknown))}")
        return cls(**data) if data else EMPTY


#: The metadata of an event that has none (shared: it is immutable).
EMPTY = EventMetadata()


def _check_text(what: str, value: object, *, empty_ok: bool) -> None:
    if not isinstance(value, str) or (not value and not empty_ok):
        raise InvalidEventError(f"{what} must be a {'' if empty_ok else 'non-empty '}string")
    if "\x00" in value:
        raise InvalidEventError(f"{what} holds a NUL character")


def stored_json(metadata: EventMetadata, schema_version: int) -> str:
    """What the ``metadata`` column holds: the metadata, plus ``schema_version`` when it is not
    1; :class:`InvalidEventError` when it is larger than :data:`MAX_METADATA_BYTES`."""
    if metadata is EMPTY and schema_version == 1:
        return "{}"
    data = metadata.to_dict()
    if schema_version != 1:
        data["schema_version"] = schema_version
    text = _JSON.encode(data)
    if len(text) > MAX_METADATA_BYTES:  # ASCII: one byte per character
        raise InvalidEventError(f"metadata is {len(text)} bytes as JSON, over {MAX_METADATA_BYTES}")
    return text


def from_stored(data: dict[str, Any]) -> tuple[EventMetadata, int]:
    """The metadata and schema version of a decoded ``metadata`` column."""
    version = data.pop("schema_version", 1)
    if not data:
        return EMPTY, version
    known = {k: v for k, v in data.items() if k in _KNOWN}  # a later release's field: ignored
    return EventMetadata(**known), version


class handling:
    """Around a handler call: what it appends is caused by ``event`` (see the module docs).
    A class, not a generator: it runs around every delivered message."""

    __slots__ = ("_event", "_token")

    def __init__(self, event: DataEvent) -> None:
        self._event = event

    def __enter__(self) -> None:
        self._token = _handling.set(self._event)

    def __exit__(self, *exc: object) -> None:
        _handling.reset(self._token)


def handled_event() -> DataEvent | None:
    """The event whose handler is running in this context, if any."""
    return _handling.get()


def ambient(*, trace: bool = True) -> dict[str, str] | None:
    """The metadata an event appended now inherits: causation and correlation from the event
    being handled, trace context from the current span (unless ``trace`` is false: a bus
    publish the relay may make, inside its own span); ``None`` when there is neither."""
    handled = _handling.get()
    carrier = tracing.inject() if trace else None
    if handled is None and carrier is None:
        return None
    out: dict[str, str] = carrier or {}
    if handled is not None:
        out["causation_id"] = handled.id
        out["correlation_id"] = handled.metadata.correlation_id or handled.id
    return out


def stamped(events: Sequence[DataEvent], defaults: Mapping[str, str]) -> list[DataEvent]:
    """``events`` with the metadata fields each leaves unset taken from ``defaults``."""
    out: list[DataEvent] = []
    for event in events:
        current = getattr(event, "metadata", None)
        if not isinstance(current, EventMetadata):  # not an event: the append's checks say so
            out.append(event)
            continue
        metadata = current.filled(defaults)
        if metadata is current:
            out.append(event)
            continue
        copy = object.__new__(type(event))  # the event was validated already: no second pass
        vars(copy).update(vars(event), metadata=metadata)
        out.append(copy)
    return out
