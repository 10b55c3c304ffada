"""Tracing and structured logs: spans reach a configured provider; logs render as JSON."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from satellites_es import logs, tracing
from satellites_es.config import FaissConfig
from satellites_es.metrics import Metrics
from satellites_es.vectors import VectorIndex


def test_spans_go_to_the_configured_provider() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        with tracing.span("projector.apply", projection="docs", events=3, ignored=object()):
            pass
        with pytest.raises(ValueError), tracing.span("datalayer.start"):
            raise ValueError("boom")
    finally:
        tracing.use(None)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["satellites.projector.apply"].attributes == {"projection": "docs", "events": 3}
    assert spans["satellites.datalayer.start"].status.status_code == trace.StatusCode.ERROR


def test_without_a_provider_spans_are_free_no_ops() -> None:
    """No span object at all, no context attached: nothing to record, nothing to propagate."""
    assert not tracing.enabled()
    with tracing.span("anything", n=1) as current:
        assert current is None
        assert tracing.inject() is None


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


async def test_vector_query_latency_reaches_the_histogram(tmp_path: Path) -> None:
    metrics = Metrics()
    seen: list[tuple[str, float]] = []
    async with VectorIndex(FaissConfig(index_path=tmp_path, dimension=4)) as index:
        index.on_query = lambda ns, s: (
            seen.append((ns, s)),
            metrics.vector_query_seconds.labels(ns).observe(s),
        )
        await index.upsert("docs", "a", [1.0, 0.0, 0.0, 0.0])
        await index.query("docs", [1.0, 0.0, 0.0, 0.0], top_k=1)
    assert seen and seen[0][0] == "docs" and seen[0][1] >= 0
    text = metrics.render().decode()
    assert 'satellites_vector_query_seconds_count{namespace="docs"} 1.0' in text
