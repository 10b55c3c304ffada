"""Operator actions behind the CLI: a rebuild with a progress bar, a rollback, dead letters.

Each opens a ``DataLayer`` without its relay (an operator's command must not start publishing),
does one thing, and closes it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from .config import DataLayerConfig
from .errors import ConfigurationError
from .facade import DataLayer
from .projections import Checkpoints, Projection, RebuildResult, rebuild, rollback
from .projections.discovery import upcasters_of
from .projections.projector import Progress as RebuildProgress
from .projections.supervisor import build_sink

__all__ = ["progress_bar", "run_rebuild", "run_rollback", "with_bus"]

T = TypeVar("T")


def progress_bar(console: Console, name: str) -> Progress:
    return Progress(
        TextColumn(f"[bold]rebuild {name}"), BarColumn(), TaskProgressColumn(),
        TextColumn("{task.completed:>9,.0f}/{task.total:,.0f}"),
        TextColumn("{task.fields[rate]:>9} events/s"), TextColumn("ETA"), TimeRemainingColumn(),
        console=console,
    )  # fmt: skip


async def run_rebuild(
    config: DataLayerConfig, projection: Projection, console: Console
) -> RebuildResult:
    async with DataLayer(config, upcasters=upcasters_of(config.projections_module)) as data:
        checkpoints = Checkpoints(data.postgres, config.postgres.schema)
        sink = build_sink(projection, data)
        started = time.perf_counter()
        with progress_bar(console, projection.name) as bar:
            task = bar.add_task("rebuild", total=max(await data.log.head(), 1), rate="-")

            def show(p: RebuildProgress) -> None:
                rate = p.events / max(time.perf_counter() - started, 1e-6)
                bar.update(task, completed=p.position, total=max(p.target, 1), rate=f"{rate:,.0f}")

            result = await rebuild(projection, sink, data.log, checkpoints, progress=show)
        if projection.sink == "faiss":
            await data.vectors.save(projection.target(result.version))
        return result


async def run_rollback(config: DataLayerConfig, projection: Projection) -> tuple[int, int]:
    async with DataLayer(config) as data:
        checkpoints = Checkpoints(data.postgres, config.postgres.schema)
        return await rollback(projection, build_sink(projection, data), checkpoints)


async def with_bus(config: DataLayerConfig, action: Callable[[Any], Awaitable[T]]) -> T:
    if not config.rabbitmq.enabled:
        raise ConfigurationError("SATELLITES_RABBITMQ_ENABLED", "dead letters live in RabbitMQ")
    from .bus.rabbitmq import RabbitMQEventBus

    async with RabbitMQEventBus(config.rabbitmq) as bus:
        return await action(bus)
