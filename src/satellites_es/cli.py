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
from .projections import Projection
from .service import ServiceOptions

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
    log_format: Annotated[
        str,
        typer.Option(envvar="SATELLITES_LOG_FORMAT", help="Log lines as 'console' or 'json'."),
    ] = "console",
    log_level: Annotated[
        str, typer.Option(envvar="SATELLITES_LOG_LEVEL", help="Log level (WARNING, INFO, ...).")
    ] = "WARNING",
) -> None:
    from .logs import configure

    if log_format not in ("console", "json"):
        err_console.print("[red]--log-format must be 'console' or 'json'[/red]")
        raise typer.Exit(EXIT_USAGE)
    level = logging.DEBUG if verbose else logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        err_console.print(f"[red]unknown log level {log_level!r}[/red]")
        raise typer.Exit(EXIT_USAGE)
    configure(level, "json" if log_format == "json" else "console")


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


def _fail(exc: BaseException) -> typer.Exit:
    err_console.print(f"[red]failed:[/red] {exc}")
    return typer.Exit(EXIT_FAILURE)


@app.command()
def migrate(
    revision: Annotated[str, typer.Option(help="Alembic revision to upgrade to.")] = "head",
    create_database: Annotated[
        bool, typer.Option(help="Create the database first if it does not exist.")
    ] = True,
) -> None:
    """Upgrade the event log's schema (SATELLITES_POSTGRES_*) to a revision."""
    from .migrate import ensure_database, upgrade

    config = load_config()

    async def go() -> None:
        if create_database:
            await ensure_database(config.postgres)
        await upgrade(config.postgres, revision)

    try:
        asyncio.run(go())
    except SatellitesError as exc:
        raise _fail(exc) from exc
    console.print(f"schema {config.postgres.schema!r} at {revision} on {config.postgres.safe_dsn}")


ProjectionsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--projection", "-p", envvar="SATELLITES_RUN_PROJECTIONS",
        help="Projections to run (repeat; 'all' for every one).",
    ),
]  # fmt: skip
HttpPortOpt = Annotated[
    int | None,
    typer.Option(envvar="SATELLITES_HTTP_PORT", help="Serve /health and /metrics on this port."),
]
HttpHostOpt = Annotated[
    str, typer.Option(envvar="SATELLITES_HTTP_HOST", help="Address for /health and /metrics.")
]


def _serve(options: ServiceOptions) -> None:
    from .service import run_service

    config = load_config()
    try:
        asyncio.run(run_service(config, options))
    except SatellitesError as exc:
        raise _fail(exc) from exc


@app.command()
def run(
    projection: ProjectionsOpt = None,
    http_port: HttpPortOpt = None,
    http_host: HttpHostOpt = "127.0.0.1",
) -> None:
    """The relay and the chosen projectors as one service; graceful on SIGTERM and SIGINT."""
    _serve(ServiceOptions(relay=True, projections=tuple(projection or ["all"]),
                          http_port=http_port, http_host=http_host))  # fmt: skip


@app.command()
def relay(http_port: HttpPortOpt = None, http_host: HttpHostOpt = "127.0.0.1") -> None:
    """Only the relay (log -> bus); several may run, one leads, the others stand by."""
    _serve(ServiceOptions(relay=True, http_port=http_port, http_host=http_host))


@app.command()
def project(
    projection: ProjectionsOpt = None,
    http_port: HttpPortOpt = None,
    http_host: HttpHostOpt = "127.0.0.1",
) -> None:
    """Only projectors (no relay), following the log into their sinks."""
    _serve(ServiceOptions(relay=False, projections=tuple(projection or ["all"]),
                          http_port=http_port, http_host=http_host))  # fmt: skip


def _one_projection(config: DataLayerConfig, name: str) -> Projection:
    from .service import select_projections

    try:
        return select_projections(config, [name])[0]
    except SatellitesError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_USAGE) from exc


def _no_relay(config: DataLayerConfig) -> DataLayerConfig:
    return config.replace(relay=dataclasses.replace(config.relay, enabled=False))


@app.command()
def rebuild(
    name: Annotated[str, typer.Argument(help="The projection to rebuild.")],
    on_poison: Annotated[
        str | None,
        typer.Option(help="An event that cannot be projected: 'stop' the rebuild there, or "
                     "'park' it and go on (default: the projection's PoisonPolicy.rebuild)."),
    ] = None,
) -> None:
    """Replay the log into a new version of a projection, then flip to it (blue/green)."""
    from .operations import run_rebuild

    config = _no_relay(load_config())
    projection = _one_projection(config, name)
    if on_poison is not None:
        if on_poison not in ("stop", "park"):
            err_console.print("--on-poison must be 'stop' or 'park'", markup=False)
            raise typer.Exit(EXIT_USAGE)
        policy = dataclasses.replace(projection.poison, rebuild=on_poison)  # type: ignore[arg-type]
        projection = dataclasses.replace(projection, poison=policy)
    try:
        result = asyncio.run(run_rebuild(config, projection, console))
    except SatellitesError as exc:
        raise _fail(exc) from exc
    console.print(
        f"{name}: version {result.version} is active (previous {result.previous}); "
        f"{result.events} events replayed{' (resumed)' if result.resumed else ''}"
        + (f"; {result.parked} event(s) parked (satellites-es parked list {name})"
           if result.parked else "")
    )  # fmt: skip


@app.command()
def rollback(name: Annotated[str, typer.Argument(help="The projection to roll back.")]) -> None:
    """Flip a projection back to the version it had before its last flip."""
    from .operations import run_rollback

    config = _no_relay(load_config())
    projection = _one_projection(config, name)
    try:
        active, left = asyncio.run(run_rollback(config, projection))
    except SatellitesError as exc:
        raise _fail(exc) from exc
    console.print(f"{name}: version {active} is active again (version {left} kept)")


dlq_app = typer.Typer(help="Dead letters of a subscriber group (RabbitMQ).", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")


@dlq_app.command("list")
def dlq_list(
    group: Annotated[str, typer.Argument(help="The subscriber group.")],
    limit: Annotated[int, typer.Option(help="At most this many.")] = 20,
) -> None:
    """Show dead-lettered events with their error (they stay in the queue)."""
    from .operations import with_bus

    letters = asyncio.run(with_bus(load_config(), lambda bus: bus.dead_letters(group, limit)))
    table = Table(title=f"dead letters of {group}")
    for column in ("event", "type", "key", "attempts", "error"):
        table.add_column(column)
    for d in letters:
        table.add_row(d.event.id if d.event else "?", d.event.type if d.event else "?",
                      d.event.key if d.event else "?", str(d.attempts), d.error)  # fmt: skip
    console.print(table)


@dlq_app.command("replay")
def dlq_replay(
    group: Annotated[str, typer.Argument(help="The subscriber group.")],
    limit: Annotated[int | None, typer.Option(help="At most this many (default all).")] = None,
) -> None:
    """Deliver dead-lettered events to the group again, and remove them from the DLQ."""
    from .operations import with_bus

    count = asyncio.run(with_bus(load_config(), lambda bus: bus.replay_dead_letters(group, limit)))
    console.print(f"replayed {count} dead letter(s) of {group}")


from .parked_cli import parked_app  # noqa: E402  (its own module: one command group)

app.add_typer(parked_app, name="parked")


@app.command()
def replay(
    group: Annotated[str, typer.Argument(help="The subscriber group to deliver to.")],
    after: Annotated[int, typer.Option(help="Replay the events after this position.")] = 0,
    until: Annotated[
        int | None, typer.Option(help="Up to this position (default: the head).")
    ] = None,
    event_type: Annotated[
        list[str] | None, typer.Option("--type", help="Only this event type (repeatable).")
    ] = None,
) -> None:
    """Deliver a range of the log to one subscriber group again (its queues must exist)."""
    from .bus.replay import run_replay

    try:
        count = asyncio.run(
            run_replay(load_config(), group, after=after, until=until, types=event_type)
        )
    except SatellitesError as exc:
        raise _fail(exc) from exc
    console.print(f"replayed {count} event(s) into {group}")


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
