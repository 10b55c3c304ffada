"""OpenTelemetry spans and W3C trace context across the outbox; off unless configured.

With ``opentelemetry-api`` installed (the ``otel`` extra) spans go to whatever tracer provider the
application configured (an SDK with an exporter); this package never configures one itself.
Until the application sets a provider, every helper here returns at once without creating a
span or touching a context (:func:`enabled` is one global check, cached once it turns true), and
without the package they are plain no-ops: tracing costs nothing unless a user turns it on.

The trace crosses the outbox the way Debezium's ``tracingspancontext`` and FastStream's
middleware carry it: :func:`inject` captures the current span's ``traceparent``/``tracestate``
into an event's metadata when it is appended (:mod:`.envelope`); the subscriber's handler runs in
a child span of it (:func:`continued`), and the relay's publish and the projector's apply, which
handle a batch of many events, in one span per batch with a link to each event's context
(:func:`linked`, at most :data:`MAX_LINKS`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .envelope import EventMetadata
    from .events import DataEvent

__all__ = ["MAX_LINKS", "continued", "enabled", "inject", "linked", "span", "use"]

#: A batch span links to at most this many events (OTel's SDK keeps 128 links by default).
MAX_LINKS = 128

try:  # pragma: no cover - depends on the optional extra
    from opentelemetry import trace as _trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _tracer: Any = _trace.get_tracer("satellites_es")
    _propagator: Any = TraceContextTextMapPropagator()
except ImportError:  # pragma: no cover
    _trace = None  # type: ignore[assignment]
    _tracer = None
    _propagator = None

_on = False
_FAST_CHECK = _trace is not None and hasattr(_trace, "_TRACER_PROVIDER")


def enabled() -> bool:
    """Whether the application set an OpenTelemetry tracer provider, globally or with
    :func:`use` (cached once true: a global provider, once set, cannot be replaced)."""
    global _on
    if _on or _trace is None:
        return _on
    # The API keeps the global provider in a module attribute, None until one is set (an
    # OTEL_PYTHON_TRACER_PROVIDER one is set by our import's get_tracer). Reading it costs an
    # attribute lookup; get_tracer_provider() looks os.environ up on every call.
    if _FAST_CHECK and getattr(_trace, "_TRACER_PROVIDER", None) is None:
        return False
    _on = not isinstance(_trace.get_tracer_provider(), _trace.ProxyTracerProvider)
    return _on


def use(provider: Any) -> None:
    """Send this package's spans to ``provider`` (an SDK ``TracerProvider``) without making it
    the process's global one; ``None`` goes back to the global provider. For applications that
    keep several providers, and for tests (a global provider can be set only once)."""
    global _tracer, _on
    if _trace is None:  # pragma: no cover - without the extra there is nothing to use
        return
    _on = provider is not None
    _tracer = (provider or _trace).get_tracer("satellites_es")


#: What every helper returns while tracing is off: no generator, no span, no context change.
_OFF: contextlib.nullcontext[None] = contextlib.nullcontext()


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A span named ``satellites.<name>`` with ``attributes``; records and re-raises errors."""
    return _span(name, attributes) if enabled() else _OFF


@contextlib.contextmanager
def _span(name: str, attributes: dict[str, Any]) -> Iterator[Any]:
    clean = {k: v for k, v in attributes.items() if isinstance(v, str | bool | int | float)}
    with _tracer.start_as_current_span(f"satellites.{name}", attributes=clean) as current:
        yield current


def inject() -> dict[str, str] | None:
    """The current span's W3C context as ``{"traceparent": ..., "tracestate": ...}`` (the
    latter only when not empty), or ``None`` when there is no valid span, or no tracer provider
    (:func:`enabled`: one global check, before any context is looked at; every append asks)."""
    if not enabled() or not _trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier or None


def _context_of(metadata: EventMetadata) -> Any:
    """The OTel context an event's metadata carries (``None`` without a traceparent)."""
    if metadata.traceparent is None:
        return None
    carrier = {"traceparent": metadata.traceparent}
    if metadata.tracestate is not None:
        carrier["tracestate"] = metadata.tracestate
    return _propagator.extract(carrier)


def continued(
    name: str, event: DataEvent, /, **attributes: Any
) -> contextlib.AbstractContextManager[Any]:
    """A span for handling one ``event``: a child of the trace it was appended in (or a root
    span when it carries none)."""
    return _continued(name, event, attributes) if enabled() else _OFF


@contextlib.contextmanager
def _continued(name: str, event: DataEvent, attributes: dict[str, Any]) -> Iterator[Any]:
    attrs = {"event.id": event.id, "event.type": event.type, **attributes}
    clean = {k: v for k, v in attrs.items() if isinstance(v, str | bool | int | float)}
    parent = _context_of(event.metadata)
    with _tracer.start_as_current_span(
        f"satellites.{name}", context=parent, attributes=clean
    ) as current:
        yield current


def linked(
    name: str, batch: Iterable[DataEvent], /, **attributes: Any
) -> contextlib.AbstractContextManager[Any]:
    """A span for a batch of events, linked to the context of each (up to :data:`MAX_LINKS`)."""
    return _linked(name, batch, attributes) if enabled() else _OFF


@contextlib.contextmanager
def _linked(name: str, batch: Iterable[DataEvent], attributes: dict[str, Any]) -> Iterator[Any]:
    links = []
    for event in batch:
        parent = _context_of(event.metadata)
        if parent is None:
            continue
        context = _trace.get_current_span(parent).get_span_context()
        links.append(_trace.Link(context, {"event.id": event.id}))
        if len(links) >= MAX_LINKS:
            break
    clean = {k: v for k, v in attributes.items() if isinstance(v, str | bool | int | float)}
    with _tracer.start_as_current_span(
        f"satellites.{name}", links=links, attributes=clean
    ) as current:
        yield current
