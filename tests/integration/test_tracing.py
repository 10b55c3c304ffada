"""W3C trace context across the outbox, with OpenTelemetry's in-memory exporter: an event
published inside a request span is appended in that trace, the relay's publish span and the
projector's apply span link to it, the subscriber's handler span continues it, and what the
handler appends is caused by the event and traced under the handler. Without a tracer provider
nothing is captured."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from satellites_es import tracing
from satellites_es.config import DataLayerConfig
from satellites_es.envelope import EMPTY
from satellites_es.events import DataEvent
from satellites_es.facade import DataLayer
from satellites_es.projections import Checkpoints, Projection, Projector, Upsert
from satellites_es.projections.redis_sink import RedisSink
from tests.contract.support import Recorder, eventually


@pytest.fixture
def provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)  # not the global provider: that can be set once per process
    yield provider, exporter
    tracing.use(None)


def _named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == f"satellites.{name}"]


def _links_to(span: ReadableSpan, trace_id: int) -> bool:
    return any(link.context.trace_id == trace_id for link in span.links)


async def test_one_trace_from_the_request_to_the_relay_the_handler_and_the_projector(
    config: DataLayerConfig, redis_prefix: str,
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:  # fmt: skip
    sdk, exporter = provider
    cfg = config.replace(faiss=dataclasses.replace(config.faiss, enabled=False))
    follow_ups = Recorder("traced-follow-ups")
    handled: list[DataEvent] = []
    async with DataLayer(cfg) as data:

        async def on_order(order: DataEvent) -> None:
            handled.append(order)
            await data.events.publish(DataEvent(type="invoice.created", resource="invoices",
                                                key=order.key, payload={}, source="billing"))  # fmt: skip

        on_order.subscriber_name = "traced-billing"  # type: ignore[attr-defined]
        data.events.subscribe("order.placed", on_order)
        data.events.subscribe("invoice.created", follow_ups)
        await data.subscriptions_ready()
        order = DataEvent(type="order.placed", resource="orders", key="o1", payload={},
                          source="shop")  # fmt: skip
        with sdk.get_tracer("app").start_as_current_span("request") as request:
            await data.events.publish(order)
        trace_id = request.get_span_context().trace_id
        await eventually(lambda: len(follow_ups.events) == 1, timeout=20)
        projection = Projection(name="orders", version=1, sink="redis",
                                event_types=("order.placed",),
                                handler=lambda e: Upsert(e.key, {"placed": 1}))  # fmt: skip
        projector = Projector(projection, RedisSink(data.redis, redis_prefix), data.log,
                              Checkpoints(data.postgres, cfg.postgres.schema))  # fmt: skip
        await projector.catch_up()
        (stored,) = await data.log.read_stream("orders", "o1")
    spans = exporter.get_finished_spans()
    # the producer side: publish and append are children of the request span
    request_id = request.get_span_context().span_id
    (publish,) = [
        s for s in _named(spans, "events.publish") if s.parent and s.parent.span_id == request_id
    ]
    assert publish.context.trace_id == trace_id
    (append,) = [
        s
        for s in _named(spans, "log.append")
        if s.parent and s.parent.span_id == publish.context.span_id
    ]
    assert append.context.trace_id == trace_id
    assert stored.metadata.traceparent is not None
    assert stored.metadata.traceparent.split("-")[1] == format(trace_id, "032x")
    # the relay's batch span links to it
    assert any(_links_to(s, trace_id) for s in _named(spans, "relay.publish"))
    # the subscriber's handler span continues it
    (handle,) = [s for s in _named(spans, "handle") if s.attributes["event.id"] == order.id]  # type: ignore[index]
    assert handle.context.trace_id == trace_id
    assert handle.attributes["group"] == "traced-billing"  # type: ignore[index]
    # the projector's apply span links to it
    assert any(_links_to(s, trace_id) for s in _named(spans, "projector.apply"))
    # what the handler appended: caused by the order, traced under the handler's span
    (invoice,) = follow_ups.events
    assert invoice.metadata.causation_id == order.id == handled[0].id
    assert invoice.metadata.correlation_id == order.id
    assert invoice.metadata.traceparent is not None
    _, invoice_trace, invoice_parent, _ = invoice.metadata.traceparent.split("-")
    assert invoice_trace == format(trace_id, "032x")
    handler_appends = [s for s in _named(spans, "events.publish") if s.parent is not None
                       and s.parent.span_id == handle.context.span_id]  # fmt: skip
    assert handler_appends and all(s.context.trace_id == trace_id for s in handler_appends)
    assert int(invoice_parent, 16) in {s.context.span_id for s in handler_appends}


async def test_without_a_tracer_provider_nothing_is_captured(
    config: DataLayerConfig,
) -> None:
    assert not tracing.enabled()
    cfg = config.replace(faiss=dataclasses.replace(config.faiss, enabled=False),
                         rabbitmq=dataclasses.replace(config.rabbitmq, enabled=False))  # fmt: skip
    async with DataLayer(cfg) as data:
        # the application's own tracer without a provider: the API's no-op spans
        with trace.get_tracer("app").start_as_current_span("request"):
            result = await data.log.append(
                DataEvent(type="t", resource="r", key="k", payload={}, source="s")
            )
        (stored,) = await data.log.read_stream("r", "k")
    assert result.events[0].metadata is EMPTY and stored.metadata is EMPTY
