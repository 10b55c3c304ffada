"""``satellites-es snapshots list|create``: FAISS snapshots in the object store.

``list`` reads only the store (``SATELLITES_FAISS_SNAPSHOT_URL``): the snapshots each namespace's
pointer keeps, newest (the one replicas load) first. ``create NAME`` makes one now, as a new
replica would: it loads the newest verified snapshot (the store's, else the local one under
``SATELLITES_FAISS_INDEX_PATH``, else none), replays the log after it, uploads the result and
saves it locally. It uploads without the snapshotter's lease: the store's pointer never moves
back to an older position, whoever publishes. Errors are one line, exit 1 for a backend or
verification failure, 2 for configuration (no store configured, not a FAISS projection).

The commands are plain functions that ``cli.py`` declares into :data:`snapshots_app` with its
error policy (``handled``, one for every command) through :func:`register`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .config import DataLayerConfig
from .errors import ConfigurationError, ProjectionError
from .projections import Projection
from .vectors.snapshot_store import SnapshotStore

__all__ = ["register", "snapshots_app"]

snapshots_app = typer.Typer(
    help="FAISS snapshots in object storage (SATELLITES_FAISS_SNAPSHOT_URL): list, create now.",
    no_args_is_help=True,
)
console = Console()


def _store(config: DataLayerConfig) -> SnapshotStore:
    store = SnapshotStore.from_config(config.faiss)
    if store is None:
        raise ConfigurationError("SATELLITES_FAISS_SNAPSHOT_URL", "not set: no snapshot store")
    return store


def snapshots_list(
    namespace: Annotated[
        str | None, typer.Argument(help="Only this namespace (default: every one).")
    ] = None,
) -> None:
    """The snapshots in the store, newest first per namespace (the first is the one loaded)."""
    store = _store(DataLayerConfig.from_env())

    async def go() -> list[tuple[str, list[str]]]:
        names = [namespace] if namespace else await store.namespaces()
        rows = []
        for name in names:
            pointer = await store.pointer(name)
            for i, s in enumerate(pointer.snapshots if pointer else ()):
                rows.append((name, [s.id, f"{s.position:,}", f"{s.count:,}",
                                    f"{s.bytes / 1e6:,.1f} MB", s.created,
                                    "current" if i == 0 else ""]))  # fmt: skip
        return rows

    rows = asyncio.run(go())
    table = Table(title=f"snapshots in {store.where('')}")
    for column in ("namespace", "snapshot", "position", "vectors", "size", "created", ""):
        table.add_column(column)
    for name, cells in rows:
        table.add_row(name, *cells)
    console.print(table)
    if not rows:
        console.print("no snapshots" + (f" of {namespace}" if namespace else ""))


def snapshots_create(
    name: Annotated[str, typer.Argument(help="The FAISS projection.")],
) -> None:
    """Bring the projection's replica up to the log's head here, then upload a snapshot now."""
    from .service_runner import select_projections

    config = DataLayerConfig.from_env()
    config = config.replace(relay=dataclasses.replace(config.relay, enabled=False))
    try:
        (projection,) = select_projections(config, [name])
    except ProjectionError as exc:  # an unknown name is a usage error, as in every command
        raise ConfigurationError("NAME", str(exc)) from exc
    if projection.sink != "faiss":
        raise ConfigurationError("NAME", f"{name} is a {projection.sink} projection, not faiss")
    store = _store(config)
    namespace, position, published = asyncio.run(_create(config, projection, store))
    if published is None:
        console.print(f"{namespace}: the store already holds a snapshot at position {position:,}")
    else:
        console.print(f"{namespace}: published snapshot {published} at position {position:,}")


async def _create(
    config: DataLayerConfig, projection: Projection, store: SnapshotStore
) -> tuple[str, int, str | None]:
    from .facade import DataLayer
    from .projections import Checkpoints, Projector, ensure_active
    from .projections.replica import Replica
    from .projections.snapshotter import publish_now
    from .projections.supervisor import build_sink

    async with DataLayer(config) as data:
        checkpoints = Checkpoints(data.postgres, config.postgres.schema)
        sink = build_sink(projection, data, Replica(data.vectors, store))
        version = await ensure_active(projection, sink, checkpoints)
        await Projector(projection, sink, data.log, checkpoints, version=version).catch_up()
        namespace = projection.target(version)
        position, published = await publish_now(data.vectors, store, namespace)
        await data.vectors.save(namespace)
        return namespace, position, published


def register(handled: Callable[[Callable[..., None]], Callable[..., None]]) -> typer.Typer:
    """Declare the commands with the CLI's error policy (``handled``: an error becomes one line
    and a ``typer.Exit``); returns the group."""
    for name, fn in (("list", snapshots_list), ("create", snapshots_create)):
        snapshots_app.command(name)(handled(fn))
    return snapshots_app
