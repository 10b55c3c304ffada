"""A semantic schema declares its projections and routes each operation's events to them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from satellites_es.errors import ConfigurationError
from satellites_es.events import DataEvent
from satellites_es.projections import Delete, Upsert
from satellites_es.semantic import HashingEmbedder, SemanticSchema
from satellites_es.semantic.schema import SNIPPET

MODEL = HashingEmbedder(16)


def schema(**overrides: object) -> SemanticSchema:
    args: dict[str, object] = {
        "collection": "docs", "text_fields": ("title", "body"), "metadata_fields": ("topic",),
        "cached_fields": ("title",), "embedders": (MODEL,),
    }  # fmt: skip
    return SemanticSchema(**{**args, **overrides})  # type: ignore[arg-type]


def event(type_: str, payload: dict[str, object]) -> DataEvent:
    return DataEvent(type=type_, resource="docs", key="d1", payload=payload, source="t",
                     timestamp=datetime(2026, 1, 1, tzinfo=UTC), position=7)  # fmt: skip


def test_it_declares_one_projection_per_sink_and_routes_by_event_type() -> None:
    s = schema()
    assert {p.name: p.sink for p in s.projections.values()} == {
        "docs_text": "elasticsearch", "docs_vectors": "faiss", "docs_entities": "redis",
        "docs_cache": "redis",
    }  # fmt: skip
    assert s.routes("semantic.docs.document.upserted") == (
        "docs_text",
        "docs_vectors",
        "docs_cache",
    )
    assert s.routes("semantic.docs.entity.deleted") == ("docs_entities",)
    assert schema(cached_fields=()).cache is None
    mappings = s.text.options["mappings"]["properties"]
    assert mappings == {"title": {"type": "text"}, "body": {"type": "text"},
                        "topic": {"type": "keyword"}}  # fmt: skip
    assert s.vectors.options["dimension"] == 16 and s.vectors.sink_adapter is not None


def test_the_text_fields_take_the_analyzer_asked_for() -> None:
    mappings = schema(text_analyzer="english").text.options["mappings"]["properties"]
    assert mappings == {"title": {"type": "text", "analyzer": "english"},
                        "body": {"type": "text", "analyzer": "english"},
                        "topic": {"type": "keyword"}}  # fmt: skip


def test_the_handlers_give_each_sink_its_part_of_the_document() -> None:
    s = schema()
    put = event("semantic.docs.document.upserted", {"title": "T", "body": "B", "topic": "x",
                "other": 1, "embedding": "f32:AAAA", "embedder": "hashing-16"})  # fmt: skip
    assert s.text.change_for(put) == Upsert("d1", {"title": "T", "body": "B", "topic": "x"}, 7)
    vector = s.vectors.change_for(put)
    assert isinstance(vector, Upsert) and vector.document == {
        "vector": "f32:AAAA", "model": "hashing-16", "text": "T. B",
        "metadata": {"topic": "x", SNIPPET: "T B"},
    }  # fmt: skip
    assert s.cache is not None and s.cache.change_for(put) == Upsert("d1", {"title": "T"}, 7)
    gone = event("semantic.docs.document.deleted", {})
    assert s.text.change_for(gone) == s.vectors.change_for(gone) == Delete("d1", 7)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"collection": "Docs"}, "collection must match"),
        ({"text_fields": ()}, "at least one field"),
        ({"metadata_fields": ("embedding",)}, "reserved"),
        ({"text_fields": "title"}, "tuple of field names"),
        ({"embedders": ()}, "at least one Embedder"),
        ({"embedders": (MODEL, HashingEmbedder(16))}, "names must differ"),
        ({"text_analyzer": ""}, "text_analyzer"),
    ],
)
def test_a_wrong_schema_is_a_configuration_error(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        schema(**overrides)
