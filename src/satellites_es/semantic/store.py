"""SemanticStore: one collection's writes (change sets), search, consistency and re-embedding.

::

    schema = SemanticSchema("docs", text_fields=("title", "body"),
                            metadata_fields=("topic",), cached_fields=("title",),
                            embedders=(WordLlamaEmbedder(), HashingEmbedder()))
    docs = SemanticStore(data, schema)
    service = docs.serve()                       # this process's projectors (FAISS is local)
    await service.start()
    committed = await docs.changeset().put_document("d1", {...}).commit()
    hits = await docs.search("vector recall", k=10, filter={"topic": "search"},
                             consistent_at=committed.position)

The store declares its projections from the schema (:mod:`.schema`); any process can run them
(``docs.serve()``, or ``satellites-es run`` with ``PROJECTIONS = schema.projections``). A process
that searches must serve the vector projection itself: FAISS lives in each serving process.

**Which model.** The vector namespace's active version was built by one embedder (recorded in
the log, :mod:`.vectorsink`). Queries are embedded by that model, read from this process's own
FAISS alias, so a search after a flip or a rollback uses the right one. Writes are embedded by
the model of the active version as Postgres records it (read once and after this process's own
flips): a write embedded by an older model while another process flipped is re-embedded by the
vector sink, never wrong, only slower.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, ProjectorDownError
from ..projections import Checkpoints, Projection
from ..projections.sinks import translated
from ..projections.supervisor import ProjectionService, build_sink
from .changeset import ChangeSet
from .embedders import Embedder, embed_checked
from .hybrid import (
    CONFIDENCE,
    LEXICAL_WEIGHT,
    Mode,
    SearchHit,
    check_confidence,
    check_weights,
    fuse,
    text_hits,
    text_query,
)
from .schema import SemanticSchema
from .vectorsink import EmbedderRegistry

if TYPE_CHECKING:
    from ..facade import DataLayer
    from ..projections.redis_sink import RedisSink
    from ..vectors import VectorMatch

__all__ = ["SemanticStore"]

#: Hits each leg returns for fusion, at least (``search(depth=...)``).
DEPTH = 50
SNIPPET_FRAGMENT = 160


class SemanticStore:
    def __init__(
        self,
        data: DataLayer,
        schema: SemanticSchema,
        *,
        weights: tuple[float, float] = (1.0, 1.0),
        depth: int = DEPTH,
        confidence: float | None = None,
    ) -> None:
        """``weights``: the static (text, vector) weights of the fusion; ``confidence``: the
        exponent of each leg's per-query commitment (:mod:`.hybrid`), None for
        :data:`~.hybrid.CONFIDENCE`, or, with an embedder that declares ``lexical = True``,
        plain RRF with the vector weight scaled by :data:`~.hybrid.LEXICAL_WEIGHT` (0: the
        text leg's order, the vector leg ordering its ties and filling in)."""
        self.data = data
        self.schema = schema
        self.weights = check_weights(weights)
        self.depth = depth
        self.confidence = None if confidence is None else check_confidence(confidence)
        self._registry: EmbedderRegistry | None = None
        self._write: Embedder | None = None
        self._by_version: dict[int, Embedder] = {}

    @property
    def projections(self) -> list[Projection]:
        return list(self.schema.projections.values())

    @property
    def registry(self) -> EmbedderRegistry:
        if self._registry is None:
            self._registry = EmbedderRegistry(self.data.log, self.schema)
        return self._registry

    @property
    def checkpoints(self) -> Checkpoints:
        return Checkpoints(self.data.postgres, self.data.config.postgres.schema)

    def serve(self, *, poll_interval: float = 0.2) -> ProjectionService:
        """A service running every projection of the collection in this process (start it)."""
        return ProjectionService(self.data, self.projections, poll_interval=poll_interval)

    def changeset(self) -> ChangeSet:
        return ChangeSet(self)

    # -- models ----------------------------------------------------------------------------------

    async def write_embedder(self) -> Embedder:
        """The model of the vector projection's active version (the first embedder before the
        projection has one); read once, then after this process's own flips."""
        if self._write is None:
            row = await self.checkpoints.active(self.schema.vectors.name)
            self._write = (self.schema.embedders[0] if row is None
                           else await self.embedder_of(row[0]))  # fmt: skip
        return self._write

    def forget_write_embedder(self) -> None:
        """Read the write model again on the next commit (after a flip)."""
        self._write = None

    async def embedder_of(self, version: int) -> Embedder:
        if version not in self._by_version:
            self._by_version[version] = await self.registry.embedder_for(version)
        return self._by_version[version]

    async def query_embedder(self) -> Embedder:
        """The model of the version this process's FAISS alias points at."""
        name = self.schema.vectors.name
        target = self.data.vectors.alias_target(name)
        if target is None:
            raise ProjectorDownError(
                f"projection {name}: this process serves no vector index for it (serve() it)"
            )
        return await self.embedder_of(int(target.rsplit("_v", 1)[1]))

    # -- search ----------------------------------------------------------------------------------

    async def search(
        self,
        query: str,
        k: int = 10,
        *,
        filter: Mapping[str, Any] | None = None,
        mode: Mode = "hybrid",
        consistent_at: int | None = None,
        weights: tuple[float, float] | None = None,
        depth: int | None = None,
        confidence: float | None = None,
        timeout: float = 30.0,
    ) -> list[SearchHit]:
        """The ``k`` best documents for ``query`` (see :mod:`.hybrid`). ``consistent_at``: a
        position (``Committed.position``) the legs must show first (``DataLayer.wait_for``);
        ``weights``, ``depth`` and ``confidence`` override the store's for this search."""
        if mode not in ("hybrid", "vector", "text"):
            raise ConfigurationError("search(mode=...)", "'hybrid', 'vector' or 'text'")
        if k < 1:
            raise ConfigurationError("search(k=...)", "must be >= 1")
        if depth is not None and depth < 1:
            raise ConfigurationError("search(depth=...)", "must be >= 1")
        weights = self.weights if weights is None else check_weights(weights)
        confidence = self.confidence if confidence is None else check_confidence(confidence)
        use_text, use_vector = mode != "vector", mode != "text"
        if consistent_at is not None:
            legs = [p for p, used in ((self.schema.text, use_text),
                                      (self.schema.vectors, use_vector)) if used]  # fmt: skip
            await self.data.wait_for(consistent_at, legs, timeout=timeout)
        n = max(k, depth or self.depth) if mode == "hybrid" else k
        flt = dict(filter or {})
        text, (vector, embedder) = await asyncio.gather(
            self._text_leg(query, n, flt) if use_text else _nothing(),
            self._vector_leg(query, n, flt) if use_vector else _no_vector(),
        )
        if confidence is None and getattr(embedder, "lexical", False):
            # the leg repeats the text leg's evidence (see .hybrid): it orders ties and fills in
            confidence = 0.0
            if mode == "hybrid" and weights[0] > 0:
                weights = (weights[0], weights[1] * LEXICAL_WEIGHT)
        return fuse(
            text, vector, k, weights, confidence=CONFIDENCE if confidence is None else confidence
        )

    async def _text_leg(self, query: str, n: int, flt: dict[str, Any]) -> list[Any]:
        s = self.schema
        alias = f"{self.data.config.elasticsearch.index_prefix}{s.text.name}"
        highlight = {"fields": {f: {"fragment_size": SNIPPET_FRAGMENT, "number_of_fragments": 1}
                                for f in s.text_fields}}  # fmt: skip
        with translated("elasticsearch", f"search {alias}"):
            response = await self.data.elasticsearch.search(
                index=alias, query=text_query(query, s.text_fields, flt), size=n,
                highlight=highlight, source_includes=[*s.metadata_fields, *s.text_fields],
            )  # fmt: skip
        return text_hits(response.body, s.metadata_fields, s.text_fields)

    async def _vector_leg(
        self, query: str, n: int, flt: dict[str, Any]
    ) -> tuple[list[VectorMatch], Embedder]:
        embedder = await self.query_embedder()
        row = (await embed_checked(embedder, [query]))[0]
        found = await self.data.vectors.query(self.schema.vectors.name, row, n, filter=flt or None)
        return found, embedder

    # -- caches ----------------------------------------------------------------------------------

    async def entity(self, id: str) -> Mapping[str, Any] | None:
        """An entity from the Redis cache (None if absent or deleted)."""
        return await self._cached(self.schema.entities, id)

    async def cached(self, id: str) -> Mapping[str, Any] | None:
        """A document's cached fields from Redis (None without ``cached_fields``)."""
        cache = self.schema.cache
        return None if cache is None else await self._cached(cache, id)

    async def _cached(self, projection: Projection, id: str) -> Mapping[str, Any] | None:
        sink: RedisSink = build_sink(projection, self.data)  # type: ignore[assignment]
        return await sink.get(projection, id)


async def _nothing() -> list[Any]:
    return []


async def _no_vector() -> tuple[list[VectorMatch], None]:
    return [], None
