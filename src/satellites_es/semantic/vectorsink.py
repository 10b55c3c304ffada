"""The vector projection's sink: each version is built by one embedder, named in the log.

**Which model built which version.** A vector projection version is versioned by its
embedder's name and dimension: ``{collection}_vectors`` v1 may be ``hashing-384`` and v2
``wordllama-l2supercat-256``. The assignment is an event in the log itself (type
``semantic.{collection}.embedder.assigned``, stream ``({collection}_vectors, embedders)``), so every
process, and every replay, agrees on it without a new table; it is appended with
``expected_version`` on that stream, so two processes assigning the same version race safely
and the loser reads the winner's choice. A version never changes model.

**Embedding in batches, at the sink.** The projection's handler (a pure function, called per
event) hands over both the vector stored with the event and the text it came from. This sink
keeps the stored vector when the event was embedded with the version's own model (the usual
case: embeddings are computed at write time) and embeds the rest with that model, in one call
per batch the projector applies (1,000 events): that is a re-embed (:mod:`.reembed`), and a
write made with the old model while the new version is live. The namespace is created with the
model's dimension, not the projection's default.

Everything else is the FAISS sink's, by delegation (this is not a column sink: re-embedding
needs the text, which the column replay does not read).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConcurrencyError, ConfigurationError, ProjectionError
from ..events import DataEvent
from ..projections import Change, Delete, Projection, Sink, SinkDump, Upsert
from ..projections.sinks import Fix, Held
from ..store import EventStore
from ..vectors.codec import encode_vector
from .embedders import Embedder, embed_checked

if TYPE_CHECKING:
    from ..facade import DataLayer
    from .schema import SemanticSchema

__all__ = ["EmbedderRegistry", "EmbeddingSink", "adapter", "schema_of"]

_KEY = "embedders"


@dataclasses.dataclass(frozen=True)
class Assignment:
    version: int
    embedder: str
    dimension: int


class EmbedderRegistry:
    """Version -> embedder of a collection's vector projection, kept in the log."""

    def __init__(self, store: EventStore, schema: SemanticSchema) -> None:
        self.store = store
        self.schema = schema
        self._known: dict[int, Assignment] = {}
        self._seen = 0  # events of the stream read so far

    @property
    def resource(self) -> str:
        return self.schema.vectors.name

    async def assignment(self, version: int) -> Assignment | None:
        if version not in self._known:
            await self._refresh()
        return self._known.get(version)

    async def embedder_for(self, version: int, *, default: Embedder | None = None) -> Embedder:
        """The embedder that builds ``version``; an unassigned version gets ``default`` (the
        schema's first embedder when None) assigned first."""
        found = await self.assignment(version)
        if found is None:
            found = await self.assign(version, default or self.schema.embedders[0])
        embedder = self.schema.embedder(found.embedder)
        if embedder is None:
            raise ConfigurationError(
                f"SemanticSchema({self.schema.collection!r}).embedders",
                f"version {version} of {self.resource} was built by {found.embedder!r}, "
                "which this process does not have",
            )
        return embedder

    async def assign(self, version: int, embedder: Embedder) -> Assignment:
        """Record that ``embedder`` builds ``version``; the first assignment of a version wins."""
        while True:
            await self._refresh()
            if version in self._known:
                return self._known[version]
            event = DataEvent(
                type=f"semantic.{self.schema.collection}.embedder.assigned",
                resource=self.resource, key=_KEY, source="satellites-es.semantic",
                payload={"version": version, "embedder": embedder.name,
                         "dimension": embedder.dimension},
            )  # fmt: skip
            try:
                await self.store.append(event, expected_version=self._seen)
            except ConcurrencyError:
                continue  # another process assigned something meanwhile: read it
            self._known[version] = Assignment(version, embedder.name, embedder.dimension)
            self._seen += 1
            return self._known[version]

    async def _refresh(self) -> None:
        for event in await self.store.read_stream(self.resource, _KEY, after_version=self._seen):
            p = event.payload
            version = int(p["version"])
            self._known.setdefault(version, Assignment(version, str(p["embedder"]),
                                                       int(p["dimension"])))  # fmt: skip
            self._seen = max(self._seen, event.version or self._seen + 1)


class EmbeddingSink:
    """A FAISS sink whose upserts are embedded by the version's model where they were not."""

    kind = "faiss"

    def __init__(self, inner: Sink, registry: EmbedderRegistry) -> None:
        self.inner = inner
        self.registry = registry

    async def _sized(self, projection: Projection, version: int) -> tuple[Projection, Embedder]:
        embedder = await self.registry.embedder_for(version)
        options = {**projection.options, "dimension": embedder.dimension}
        return dataclasses.replace(projection, options=options), embedder

    async def prepare(self, projection: Projection, version: int) -> None:
        sized, _ = await self._sized(projection, version)
        await self.inner.prepare(sized, version)

    async def apply(self, projection: Projection, version: int, changes: Sequence[Change]) -> int:
        sized, embedder = await self._sized(projection, version)
        return await self.inner.apply(sized, version, await _embedded(changes, embedder))

    async def expected(
        self, projection: Projection, version: int, changes: Sequence[Change]
    ) -> list[Change]:
        """What ``apply`` would write for ``changes`` (the audit's hook): a version built by
        another model than the one that embedded an event holds that event's text embedded by
        its own model, so the audit compares with that, not with the stored vector."""
        _, embedder = await self._sized(projection, version)
        return await _embedded(changes, embedder)

    # -- the rest is the FAISS sink's ----------------------------------------------------------

    async def activate(self, projection: Projection, version: int) -> None:
        await self.inner.activate(projection, version)

    async def active_version(self, projection: Projection) -> int | None:
        return await self.inner.active_version(projection)

    async def drop(self, projection: Projection, version: int) -> None:
        await self.inner.drop(projection, version)

    async def dump(self, projection: Projection, version: int) -> SinkDump:
        return await self.inner.dump(projection, version)

    async def local_checkpoint(self, projection: Projection, version: int) -> int | None:
        return await self.inner.local_checkpoint(projection, version)

    async def flush(self, projection: Projection, version: int) -> None:
        await self.inner.flush(projection, version)

    def scan_keys(
        self, projection: Projection, version: int, chunk: int
    ) -> AsyncIterator[list[str]]:
        return self.inner.scan_keys(projection, version, chunk)

    async def read_keys(
        self, projection: Projection, version: int, keys: Sequence[str]
    ) -> dict[str, Held]:
        return await self.inner.read_keys(projection, version, keys)

    def same(
        self, projection: Projection, expected: Mapping[str, Any] | None,
        held: Mapping[str, Any] | None,
    ) -> bool:  # fmt: skip
        return self.inner.same(projection, expected, held)

    async def repair(self, projection: Projection, version: int, fixes: Sequence[Fix]) -> int:
        return await self.inner.repair(projection, version, fixes)


async def _embedded(changes: Sequence[Change], embedder: Embedder) -> list[Change]:
    """The changes as the FAISS sink takes them (vector and metadata), the upserts that were
    not embedded by ``embedder`` embedded by it, in one call."""
    missing = [
        i for i, c in enumerate(changes)
        if isinstance(c, Upsert) and (c.document.get("model") != embedder.name
                                      or not c.document.get("vector"))
    ]  # fmt: skip
    vectors: dict[int, str] = {}
    if missing:
        texts = [str(changes[i].document.get("text") or "") for i in missing]  # type: ignore[union-attr]
        try:
            matrix = await embed_checked(embedder, texts)
        except Exception as exc:
            raise ProjectionError(f"embedder {embedder.name}: {exc}") from exc
        vectors = {i: encode_vector(row) for i, row in zip(missing, matrix, strict=True)}
    out: list[Change] = []
    for i, c in enumerate(changes):
        if isinstance(c, Delete):
            out.append(c)
            continue
        vector = vectors.get(i, c.document.get("vector"))
        out.append(Upsert(c.key, {"vector": vector, "metadata": c.document.get("metadata")},
                          c.position))  # fmt: skip
    return out


class _Adapter:
    """The ``sink_adapter`` of a schema's vector projection; it keeps the schema, so that a
    command given only the projection (``satellites-es reembed NAME``) finds its embedders."""

    def __init__(self, schema: SemanticSchema) -> None:
        self.schema = schema

    def __call__(self, sink: Sink, data: DataLayer) -> Sink:
        return EmbeddingSink(sink, EmbedderRegistry(data.log, self.schema))


def adapter(schema: SemanticSchema) -> Any:
    """The ``sink_adapter`` of a schema's vector projection."""
    return _Adapter(schema)


def schema_of(projection: Projection) -> SemanticSchema | None:
    """The semantic schema whose vector projection this is, None for any other projection."""
    found = projection.sink_adapter
    return found.schema if isinstance(found, _Adapter) else None
