"""The ``satellites-es`` command line (typer).

Configuration comes from ``SATELLITES_*`` variables (see :mod:`satellites_es.config`); options
that a command adds name their variable in ``--help``. Exit codes: 0 success, 1 a backend or
operation failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .config import DataLayerConfig
from .errors import ConfigurationError, SatellitesError
from .facade import DataLayer
from .health import Health

app = typer.Typer(
    name="satellites-es",
    help="Event-sourced data layer: Postgres log -> RabbitMQ -> Redis, Elasticsearch, FAISS.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

EXIT_FAILURE = 1
EXIT_USAGE = 2


def load_config() -> DataLayerConfig:
    try:
        return DataLayerConfig.from_env()
    except ConfigurationError as exc:
        err_console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(EXIT_USAGE) from exc


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", envvar="SATELLITES_VERBOSE", help="Debug logging.")
    ] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _render_health(health: Health) -> Table:
    table = Table(title="satellites-es health")
    for column in ("backend", "status", "latency", "details"):
        table.add_column(column)
    colours = {"ok": "green", "down": "red", "disabled": "dim"}
    for name, h in health.details.items():
        latency = "" if h.latency_ms is None else f"{h.latency_ms:.1f} ms"
        info = h.error or ", ".join(f"{k}={v}" for k, v in h.details.items())
        table.add_row(name, f"[{colours[h.status]}]{h.status}[/]", latency, info)
    return table


async def _health(config: DataLayerConfig) -> Health:
    layer = DataLayer(config)
    try:
        await layer.start()
    except SatellitesError as exc:
        err_console.print(f"[red]start failed:[/red] {exc}")
        return await _health_without_start(config, exc)
    try:
        return await layer.health()
    finally:
        await layer.stop()


async def _health_without_start(config: DataLayerConfig, exc: SatellitesError) -> Health:
    """Check each backend on its own, so the table shows every one that is down."""
    from .health import BackendHealth

    details: dict[str, BackendHealth] = {}
    for name in ("postgres", "redis", "elasticsearch", "faiss", "rabbitmq"):
        only = _only(config, name)
        if only is None:
            details[name] = BackendHealth("disabled")
            continue
        layer = DataLayer(only)
        try:
            await layer.start()
            details[name] = (await layer.health()).details[name]
        except SatellitesError as single:
            details[name] = BackendHealth("down", error=str(single))
        finally:
            await layer.stop()
    return Health(ok=False, details=details)


def _only(config: DataLayerConfig, name: str) -> DataLayerConfig | None:
    section = getattr(config, name)
    if not section.enabled:
        return None
    changes = {
        n: _disabled(getattr(config, n))
        for n in ("postgres", "redis", "elasticsearch", "faiss", "rabbitmq")
        if n != name
    }
    return config.replace(**changes)


def _disabled(section: object) -> object:
    return dataclasses.replace(section, enabled=False)  # type: ignore[type-var]


@app.command()
def health(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Check every backend; exit 1 when one that is enabled is unreachable."""
    result = asyncio.run(_health(load_config()))
    if as_json:
        console.print_json(json.dumps(result.to_dict()))
    else:
        console.print(_render_health(result))
    if not result.ok:
        down = [n for n, h in result.details.items() if h.status == "down"]
        err_console.print(f"[red]unhealthy:[/red] {', '.join(down)}")
        raise typer.Exit(EXIT_FAILURE)


@app.command()
def demo(
    documents: Annotated[
        int, typer.Option(envvar="SATELLITES_DEMO_DOCUMENTS", help="Documents in the corpus.")
    ] = 3000,
    embedded: Annotated[
        bool,
        typer.Option(
            "--embedded",
            envvar="SATELLITES_DEMO_EMBEDDED",
            help="Use embedded Postgres, Valkey and the ES emulator even if services run locally.",
        ),
    ] = False,
    data_dir: Annotated[
        Path,
        typer.Option(envvar="SATELLITES_DEMO_DATA_DIR", help="Where embedded servers keep data."),
    ] = Path("./data/demo"),
) -> None:
    """Run the demo pipeline end to end: log, relay, projections, searches, a rebuild."""
    from .demo import run_demo

    try:
        asyncio.run(
            run_demo(os.environ, data_dir, documents=documents, embedded=embedded, console=console)
        )
    except (SatellitesError, RuntimeError, OSError) as exc:
        err_console.print(f"[red]demo failed:[/red] {type(exc).__name__}: {exc}")
        raise typer.Exit(EXIT_FAILURE) from exc


if __name__ == "__main__":  # pragma: no cover
    app()
