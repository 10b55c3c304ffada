"""The demo's semantic layer part: the same corpus written through a change set, searched three
ways, read back through search right after a write, and re-embedded with another model.

With the ``wordllama`` extra installed, the collection is embedded by WordLlama's bundled 256-d
model and re-embedded with the hashing embedder; without it, the other way round is not possible,
so it starts with the hashing embedder and re-embeds with a hashing embedder of another
dimension (the output says which).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from ..facade import DataLayer
from ..semantic import (
    Embedder,
    HashingEmbedder,
    SearchHit,
    SemanticSchema,
    SemanticStore,
    WordLlamaEmbedder,
    reembed,
)
from ..semantic.evaluation import document_fields
from .corpus import Author, Document

__all__ = ["semantic_demo"]

QUERY = "rabbitmq consumers acking deliveries"
BATCH = 500


def _models() -> tuple[Embedder, Embedder]:
    try:
        return WordLlamaEmbedder(), HashingEmbedder(384)
    except Exception:  # the extra is not installed: the dependency-free fallback
        return HashingEmbedder(384), HashingEmbedder(256)


async def semantic_demo(
    out: Console, data: DataLayer, authors: Sequence[Author], docs: Sequence[Document]
) -> None:
    first, second = _models()
    # the corpus is English: stemmed text fields find "queues" in a document about a queue
    schema = SemanticSchema("library", text_fields=("title", "body"),
                            metadata_fields=("topic", "author_id"), cached_fields=("title",),
                            embedders=(first, second), text_analyzer="english")  # fmt: skip
    store = SemanticStore(data, schema)
    out.print(f"[bold]Semantic layer[/]: collection {schema.collection!r}, embedded by "
              f"{first.name}" + ("" if isinstance(first, WordLlamaEmbedder)
                                 else " (install the wordllama extra for a real model)"))  # fmt: skip
    service = store.serve()
    await service.start()
    try:
        started = time.perf_counter()
        position = 0
        for start in range(0, len(docs), BATCH):
            changes = store.changeset()
            for d in docs[start : start + BATCH]:
                changes.put_document(d.id, document_fields(d))
            if start == 0:
                for a in authors:
                    changes.put_entity(a.id, {"name": a.name, "topic": a.topic})
            position = (await changes.commit()).position or position
        await data.wait_for(position, timeout=300)
        out.print(f"Wrote {len(docs)} documents and {len(authors)} authors through change sets "
                  f"(embedded at write time, one append each) and projected them in "
                  f"{time.perf_counter() - started:.1f}s: routed to "
                  f"{', '.join(schema.projections)}.")  # fmt: skip
        for mode in ("hybrid", "text", "vector"):
            _table(out, f"{mode} search: {QUERY!r}", await store.search(QUERY, k=5, mode=mode))
        await _read_your_writes(out, store)
        await _reembed(out, store, second)
    finally:
        await service.stop()


async def _read_your_writes(out: Console, store: SemanticStore) -> None:
    fields = {"title": "Zeppelin mooring for message brokers",
              "body": "A freshly written note about zeppelin moorings.", "topic": "messaging",
              "author_id": "author-0001"}  # fmt: skip
    committed = await store.changeset().put_document("doc-new", fields).commit()
    started = time.perf_counter()
    hits = await store.search("zeppelin mooring", k=1, consistent_at=committed.position)
    waited = (time.perf_counter() - started) * 1000
    seen = hits[0].id if hits else None
    out.print(f"[bold]Read your writes through search[/]: position {committed.position} found by "
              f"a hybrid search in {waited:.0f} ms: {seen}")  # fmt: skip
    if seen != "doc-new":
        raise RuntimeError("search with consistent_at did not see the write")


async def _reembed(out: Console, store: SemanticStore, model: Embedder) -> None:
    result = await reembed(store, model, console=out)
    out.print(f"Re-embedded {store.schema.vectors.name} with {model.name} into version "
              f"{result.version} (previous {result.previous}) and flipped; "
              f"{result.events} events replayed.")  # fmt: skip
    _table(out, f"vector search after the re-embed ({model.name}): {QUERY!r}",
           await store.search(QUERY, k=5, mode="vector"))  # fmt: skip


def _table(out: Console, title: str, hits: Sequence[SearchHit]) -> None:
    table = Table(title=title)
    for col in ("id", "score", "text rank", "vector rank", "topic", "snippet"):
        table.add_column(col)
    for h in hits:
        table.add_row(h.id, f"{h.score:.4f}", str(h.text_rank or "-"), str(h.vector_rank or "-"),
                      str(h.metadata.get("topic")), h.snippet[:60])  # fmt: skip
    out.print(table)
    if not hits:
        raise RuntimeError(f"{title}: no hits")
