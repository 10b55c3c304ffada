"""Re-embedding a collection with another model: a blue/green rebuild of its vector projection.

``await reembed(docs, WordLlamaEmbedder())`` takes the version the rebuild will build
(:func:`~satellites_es.projections.rebuild.target_version`), records in the log that the new
model builds it (:class:`~.vectorsink.EmbedderRegistry`: a resumed rebuild keeps its model, and
another model for a version being built is refused), then runs the ordinary rebuild
(:func:`~satellites_es.projections.rebuild.rebuild`): the log is replayed into a new namespace
version while live writes continue, and the vector sink embeds each batch of 1,000 events with
the new model in one call (the stored vectors are the old model's). It flips when caught up:
queries are then embedded by the new model, and this process's writes too. ``rollback`` flips
back to the old model's version, which the local follower brings up to date.

A progress bar (rich) shows events/s and the time left when a console is given.

``satellites-es reembed NAME --embedder MODEL`` (:func:`run_reembed`) does the same from the
command line for the vector projection ``NAME`` of a collection whose schema's projections the
command finds (``PROJECTIONS = schema.projections``), then saves the new version's snapshot;
serving processes follow the flip on their next pass, embedding with the new model, and
``satellites-es rollback NAME`` flips back.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from ..errors import ConfigurationError, ProjectorDownError
from ..projections import Progress as ReplayProgress
from ..projections import Projection, RebuildResult, rebuild, rollback
from ..projections.rebuild import target_version
from ..projections.supervisor import build_sink
from .embedders import Embedder

if TYPE_CHECKING:
    from ..config import DataLayerConfig
    from .store import SemanticStore

__all__ = ["reembed", "rollback_embeddings", "run_reembed"]


async def reembed(
    store: SemanticStore, embedder: Embedder, *, console: Console | None = None,
    batch_size: int = 1000,
) -> RebuildResult:  # fmt: skip
    """Rebuild the vector projection with ``embedder`` and flip (see the module docstring)."""
    schema, data = store.schema, store.data
    if schema.embedder(embedder.name) is None:
        raise ConfigurationError(
            "reembed", f"{embedder.name!r} is not one of the schema's embedders"
        )
    projection = schema.vectors
    checkpoints = store.checkpoints
    version, _ = await target_version(projection, checkpoints)
    assigned = await store.registry.assign(version, embedder)
    if assigned.embedder != embedder.name:
        raise ConfigurationError(
            "reembed", f"version {version} of {projection.name} is being built by "
            f"{assigned.embedder!r}; finish that rebuild first"
        )  # fmt: skip
    sink = build_sink(projection, data)
    if console is None:
        result = await rebuild(projection, sink, data.log, checkpoints, batch_size=batch_size)
    else:
        result = await _with_bar(store, embedder, console, batch_size)
    await _settle(store, result.version, result.position)
    store.forget_write_embedder()
    return result


async def _settle(store: SemanticStore, version: int, position: int) -> None:
    """Return once this process reads ``version``: its FAISS alias points there and its own
    follower (if it runs one) follows it. The rebuild flips the alias and then the row in
    Postgres; a follower that read the row just before may flip the alias back once, and
    flips it forward on its next pass, so this flips it again and waits for that pass."""
    projection, data = store.schema.vectors, store.data
    sink = build_sink(projection, data)
    for _ in range(100):
        await sink.activate(projection, version)
        try:
            await data.wait_for(position, [projection], timeout=60)
        except ProjectorDownError:
            return  # no follower here: nothing flips it back
        if await sink.active_version(projection) == version:
            return
        await asyncio.sleep(0.02)


async def _with_bar(
    store: SemanticStore, embedder: Embedder, console: Console, batch_size: int
) -> RebuildResult:
    data, projection = store.data, store.schema.vectors
    head = await data.log.head()
    columns = (TextColumn(f"[bold]re-embed {projection.name} with {embedder.name}"), BarColumn(),
               TaskProgressColumn(), TextColumn("{task.fields[rate]:>9} ev/s"),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("re-embed", total=head, rate="-")
        started = time.perf_counter()

        def progress(p: ReplayProgress) -> None:
            rate = p.events / max(time.perf_counter() - started, 1e-6)
            bar.update(task, completed=p.position, total=max(p.target, head), rate=f"{rate:,.0f}")

        return await rebuild(projection, build_sink(projection, data), data.log,
                             store.checkpoints, progress=progress, batch_size=batch_size)  # fmt: skip


async def rollback_embeddings(store: SemanticStore) -> tuple[int, int]:
    """Flip the vector projection back to its previous version (and model)."""
    projection = store.schema.vectors
    result = await rollback(projection, build_sink(projection, store.data), store.checkpoints)
    await _settle(store, result[0], await store.data.log.head())
    store.forget_write_embedder()
    return result


async def run_reembed(
    config: DataLayerConfig, projection: Projection, embedder_name: str, console: Console
) -> RebuildResult:
    """``satellites-es reembed``: re-embed ``projection`` (a semantic collection's vector
    projection) with its schema's embedder named ``embedder_name``, with a progress bar."""
    from ..facade import DataLayer
    from ..projections.discovery import upcasters_of
    from .store import SemanticStore
    from .vectorsink import schema_of

    schema = schema_of(projection)
    if schema is None:
        raise ConfigurationError(
            "reembed", f"{projection.name} is not the vector projection of a semantic collection"
        )
    embedder = schema.embedder(embedder_name)
    if embedder is None:
        names = ", ".join(e.name for e in schema.embedders)
        raise ConfigurationError(
            "--embedder",
            f"{embedder_name!r} is not one of {schema.collection}'s embedders ({names})",
        )
    async with DataLayer(config, upcasters=upcasters_of(config.projections_module)) as data:
        result = await reembed(SemanticStore(data, schema), embedder, console=console)
        await data.vectors.save(projection.target(result.version))
        return result
