"""Tracing and structured logs: spans reach a configured provider; logs render as JSON."""

from __future__ import annotations

import json
import logging

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from satellites_es import logs, tracing


def test_spans_go_to_the_configured_provider() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("satellites_es")
    original = tracing._tracer
    tracing._tracer = tracer
    try:
        with tracing.span("projector.apply", projection="docs", events=3, ignored=object()):
            pass
        with pytest.raises(ValueError), tracing.span("datalayer.start"):
            raise ValueError("boom")
    finally:
        tracing._tracer = original
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["satellites.projector.apply"].attributes == {"projection": "docs", "events": 3}
    assert spans["satellites.datalayer.start"].status.status_code == trace.StatusCode.ERROR


def test_without_a_provider_spans_are_free_no_ops() -> None:
    with tracing.span("anything", n=1) as current:
        assert not current.is_recording()


def test_logs_render_as_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logs.configure(logging.INFO, "json")
        logging.getLogger("satellites_es.relay").info("published %d events", 42)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["event"] == "published 42 events"
    assert record["level"] == "info" and record["logger"] == "satellites_es.relay"
    assert "timestamp" in record
