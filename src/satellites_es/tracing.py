"""OpenTelemetry spans around façade, relay and projector operations; off unless configured.

With ``opentelemetry-api`` installed (the ``otel`` extra) spans go to whatever tracer provider the
application configured (an SDK with an exporter); with no provider the API is a no-op, and
without the package :func:`span` is a plain ``nullcontext``. So tracing costs nothing unless a
user turns it on, and this package never configures exporters itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["span"]

try:  # pragma: no cover - depends on the optional extra
    from opentelemetry import trace as _trace

    _tracer: Any = _trace.get_tracer("satellites_es")
except ImportError:  # pragma: no cover
    _tracer = None


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """A span named ``satellites.<name>`` with ``attributes``; records and re-raises errors."""
    if _tracer is None:
        yield None
        return
    clean = {k: v for k, v in attributes.items() if isinstance(v, str | bool | int | float)}
    with _tracer.start_as_current_span(f"satellites.{name}", attributes=clean) as current:
        yield current
