"""What a semantic collection is, and the projections that serve it (the routing).

A :class:`SemanticSchema` says which document fields are full text, which are embedded into the
vector, which are metadata (filterable in both legs of a search) and which are cached, and the
embedders the collection may use (the first is its initial one). From that alone it declares
its projections on the existing framework, so the common case needs no hand-written one:

==========================  =============  ====================================================
projection                  sink           events (``semantic.{collection}.``...)
==========================  =============  ====================================================
``{collection}_text``       Elasticsearch  ``document.upserted``/``deleted``: text + metadata
``{collection}_vectors``    FAISS          ``document.upserted``/``deleted``: vector + metadata
``{collection}_cache``      Redis          ``document.upserted``/``deleted``: cached fields
``{collection}_entities``   Redis          ``entity.upserted``/``deleted``: the entity
==========================  =============  ====================================================

Routing is by event type: a document operation reaches the text index, the vector namespace and
the cache; an entity operation reaches the entity cache (:meth:`SemanticSchema.routes`). The
cache projection exists only when ``cached_fields`` is not empty. A custom projection of the
same events is an ordinary :class:`~satellites_es.projections.Projection` beside these.

The vector projection's versions are built by one embedder each (see :mod:`.vectorsink`): its
handler hands the sink the stored embedding *and* the text, and the sink embeds with the
version's own model whatever was embedded with another one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError
from ..events import DataEvent
from ..projections import Delete, Projection, Upsert
from .embedders import Embedder

__all__ = ["EMBEDDER_FIELD", "EMBEDDING_FIELD", "SNIPPET", "SemanticSchema"]

#: Payload fields the layer owns in a document event.
EMBEDDING_FIELD = "embedding"
EMBEDDER_FIELD = "embedder"
#: Metadata key under which the vector namespace keeps a document's snippet.
SNIPPET = "_snippet"
SNIPPET_CHARS = 200
_RESERVED = frozenset({EMBEDDING_FIELD, EMBEDDER_FIELD, SNIPPET})
_COLLECTION = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


@dataclass(frozen=True)
class SemanticSchema:
    """A collection of documents and entities (see the module docstring)."""

    collection: str
    text_fields: tuple[str, ...]
    embedders: tuple[Embedder, ...]
    #: Fields concatenated (". ") into the text that is embedded; default: the text fields.
    embed_fields: tuple[str, ...] = ()
    metadata_fields: tuple[str, ...] = ()
    cached_fields: tuple[str, ...] = ()
    #: FAISS index kind of the vector namespace ("flat", "hnsw", "ivf").
    index_kind: str = "flat"
    #: Elasticsearch analyzer of the text fields (None: the index default, ``standard``), e.g.
    #: ``"english"`` to stem (``queues`` matches ``queue``). Fixed when an index version is
    #: created: after a change, a rebuild of the text projection builds a version with it.
    text_analyzer: str | None = None
    projections: Mapping[str, Projection] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"SemanticSchema({self.collection!r})"
        if not _COLLECTION.match(self.collection):
            raise ConfigurationError(where, "collection must match [a-z][a-z0-9_]{0,40}")
        for name in ("text_fields", "embed_fields", "metadata_fields", "cached_fields"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
                raise ConfigurationError(f"{where}.{name}", "must be a tuple of field names")
            if _RESERVED.intersection(value):
                raise ConfigurationError(f"{where}.{name}", f"{sorted(_RESERVED)} are reserved")
            object.__setattr__(self, name, tuple(value))
        if not self.text_fields:
            raise ConfigurationError(f"{where}.text_fields", "needs at least one field")
        if self.text_analyzer is not None and not (
            isinstance(self.text_analyzer, str) and self.text_analyzer
        ):
            raise ConfigurationError(f"{where}.text_analyzer", "an analyzer name, or None")
        if not self.embed_fields:
            object.__setattr__(self, "embed_fields", self.text_fields)
        if not self.embedders or not all(isinstance(e, Embedder) for e in self.embedders):
            raise ConfigurationError(f"{where}.embedders", "needs at least one Embedder")
        names = [e.name for e in self.embedders]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"{where}.embedders", f"names must differ: {names}")
        object.__setattr__(self, "embedders", tuple(self.embedders))
        object.__setattr__(self, "projections", self._declare())

    # -- names ---------------------------------------------------------------------------------

    def event_type(self, kind: str, action: str) -> str:
        """``semantic.{collection}.{kind}.{action}``: kind document or entity."""
        return f"semantic.{self.collection}.{kind}.{action}"

    @property
    def document_types(self) -> tuple[str, str]:
        return (self.event_type("document", "upserted"), self.event_type("document", "deleted"))

    @property
    def entity_types(self) -> tuple[str, str]:
        return (self.event_type("entity", "upserted"), self.event_type("entity", "deleted"))

    @property
    def document_resource(self) -> str:
        return self.collection

    @property
    def entity_resource(self) -> str:
        return f"{self.collection}_entities"

    @property
    def text(self) -> Projection:
        return self.projections[f"{self.collection}_text"]

    @property
    def vectors(self) -> Projection:
        return self.projections[f"{self.collection}_vectors"]

    @property
    def entities(self) -> Projection:
        return self.projections[f"{self.collection}_entities"]

    @property
    def cache(self) -> Projection | None:
        return self.projections.get(f"{self.collection}_cache")

    def embedder(self, name: str) -> Embedder | None:
        return next((e for e in self.embedders if e.name == name), None)

    def routes(self, event_type: str) -> tuple[str, ...]:
        """The projections an event of this type reaches."""
        return tuple(n for n, p in self.projections.items() if event_type in p.event_types)

    def embed_text(self, fields: Mapping[str, Any]) -> str:
        """The text a document's vector is made from."""
        return ". ".join(str(fields[f]) for f in self.embed_fields if fields.get(f))

    # -- the projections -----------------------------------------------------------------------

    def _declare(self) -> dict[str, Projection]:
        c = self.collection
        keyword = {"type": "keyword"}
        text: dict[str, Any] = {"type": "text"}
        if self.text_analyzer is not None:
            text["analyzer"] = self.text_analyzer
        mappings = {
            "properties": {
                **{f: text for f in self.text_fields},
                **{f: keyword for f in self.metadata_fields if f not in self.text_fields},
            }
        }
        declared = [
            Projection(name=f"{c}_text", version=1, sink="elasticsearch",
                       event_types=self.document_types, handler=self._text_change,
                       options={"mappings": mappings}),
            Projection(name=f"{c}_vectors", version=1, sink="faiss",
                       event_types=self.document_types, handler=self._vector_change,
                       options={"dimension": self.embedders[0].dimension, "metric": "cosine",
                                "index_kind": self.index_kind},
                       sink_adapter=_embedding_sink(self)),
            Projection(name=f"{c}_entities", version=1, sink="redis",
                       event_types=self.entity_types, handler=_entity_change),
        ]  # fmt: skip
        if self.cached_fields:
            declared.append(
                Projection(name=f"{c}_cache", version=1, sink="redis",
                           event_types=self.document_types, handler=self._cache_change)
            )  # fmt: skip
        return {p.name: p for p in declared}

    def _deleted(self, event: DataEvent) -> bool:
        return event.type == self.document_types[1]

    def _text_change(self, event: DataEvent) -> Upsert | Delete:
        if self._deleted(event):
            return Delete(event.key)
        p = event.payload
        names = dict.fromkeys((*self.text_fields, *self.metadata_fields))
        return Upsert(event.key, {f: p.get(f) for f in names})

    def _vector_change(self, event: DataEvent) -> Upsert | Delete:
        if self._deleted(event):
            return Delete(event.key)
        p = event.payload
        text = self.embed_text(p)
        meta: dict[str, Any] = {f: p.get(f) for f in self.metadata_fields}
        meta[SNIPPET] = snippet(p, self.text_fields)
        return Upsert(event.key, {"vector": p.get(EMBEDDING_FIELD), "model": p.get(EMBEDDER_FIELD),
                                  "text": text, "metadata": meta})  # fmt: skip

    def _cache_change(self, event: DataEvent) -> Upsert | Delete:
        if self._deleted(event):
            return Delete(event.key)
        return Upsert(event.key, {f: event.payload.get(f) for f in self.cached_fields})


def _entity_change(event: DataEvent) -> Upsert | Delete:
    if event.type.endswith(".deleted"):
        return Delete(event.key)
    return Upsert(event.key, dict(event.payload))


def snippet(fields: Mapping[str, Any], text_fields: Sequence[str]) -> str:
    """The first ``SNIPPET_CHARS`` characters of the document's text fields."""
    text = " ".join(str(fields[f]) for f in text_fields if fields.get(f))
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1] + "…"


def _embedding_sink(schema: SemanticSchema) -> Any:
    from .vectorsink import adapter

    return adapter(schema)
