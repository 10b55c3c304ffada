"""The ``satellites-es`` command line (typer).

Configuration comes from ``SATELLITES_*`` variables (see :mod:`satellites_es.config`); options
that a command adds name their variable in ``--help``. Exit codes: 0 success, 1 a backend or
operation failed, 2 bad usage or configuration.

Every command is declared with :func:`command`, which routes its errors through
:func:`_exit_for`: one line on stderr naming the cause (a ``ConfigurationError`` names the
variable or flag), the exit code of its kind, and the traceback only with ``-v``. Usage errors
that click finds itself (an unknown option, a missing argument) go through the same one-line
form in :class:`_OneLineErrors`. New command groups get the same behaviour by declaring their
commands with ``@command(group, "name")``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from typer._click.exceptions import ClickException  # typer vendors click as typer._click
from typer.core import TyperGroup

from .config import DataLayerConfig
from .errors import ConfigurationError, ProjectionError, SatellitesError
from .health import Health
from .projections import Projection
from .service_runner import ServiceOptions

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass
class _Flags:
    """The root options every command's error handling needs (set by :func:`main`)."""

    verbose: bool = False


_flags = _Flags()


def _say_error(message: str) -> None:
    # Plain text, not rich: a message may hold brackets (a pattern like [a-z_]) that markup
    # would eat, and rich wraps at the terminal width, which breaks "one line".
    print(f"satellites-es: {' '.join(message.split())}", file=sys.stderr, flush=True)


def _exit_for(exc: BaseException) -> typer.Exit:
    """The one-line message and exit code for an error a command raised."""
    if _flags.verbose:
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, ConfigurationError):
        _say_error(f"configuration error: {exc}")
        return typer.Exit(EXIT_USAGE)
    if isinstance(exc, SatellitesError):
        _say_error(f"error: {exc}")
        return typer.Exit(EXIT_FAILURE)
    if isinstance(exc, KeyboardInterrupt):
        _say_error("interrupted")
        return typer.Exit(130)
    _say_error(f"unexpected error: {type(exc).__name__}: {exc} (run with -v for the traceback)")
    return typer.Exit(EXIT_FAILURE)


def handled(fn: F) -> F:
    """Run ``fn`` with the CLI's error policy: see :func:`_exit_for`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except (Exception, KeyboardInterrupt) as exc:
            raise _exit_for(exc) from exc

    return wrapper  # type: ignore[return-value]


def command(group: typer.Typer, name: str | None = None, **options: Any) -> Callable[[F], F]:
    """``@group.command(name)`` with the CLI's error policy; every command is declared so."""

    def decorate(fn: F) -> F:
        group.command(name, **options)(handled(fn))
        return fn

    return decorate


class _OneLineErrors(TyperGroup):
    """The root group: click's own usage errors as one line and exit 2, as ours are."""

    def main(self, *args: Any, **kwargs: Any) -> NoReturn:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except ClickException as exc:
            _say_error(exc.format_message() + _usage_hint(exc))
            sys.exit(exc.exit_code)
        except typer.Abort:
            _say_error("aborted")
            sys.exit(EXIT_FAILURE)
        sys.exit(code if isinstance(code, int) else EXIT_OK)


def _usage_hint(exc: ClickException) -> str:
    ctx = getattr(exc, "ctx", None)
    return f" (see '{ctx.command_path} --help')" if ctx is not None else ""


app = typer.Typer(
    name="satellites-es",
    cls=_OneLineErrors,
    help="Event-sourced data layer: Postgres log -> RabbitMQ -> Redis, Elasticsearch, FAISS.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()


def load_config() -> DataLayerConfig:
    """The configuration from ``SATELLITES_*`` (a ``ConfigurationError`` exits 2 via ``handled``)."""
    return DataLayerConfig.from_env()


@app.callback()
def main(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            envvar="SATELLITES_VERBOSE",
            help="Debug logging, and a traceback with every error.",
        ),
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

    _flags.verbose = verbose
    if log_format not in ("console", "json"):
        _say_error(
            f"--log-format (SATELLITES_LOG_FORMAT) must be 'console' or 'json' (got {log_format!r})"
        )
        raise typer.Exit(EXIT_USAGE)
    level = logging.DEBUG if verbose else logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        _say_error(f"--log-level (SATELLITES_LOG_LEVEL): unknown level {log_level!r}")
        raise typer.Exit(EXIT_USAGE)
    configure(level, "json" if log_format == "json" else "console")


@contextlib.contextmanager
def _quiet_broker_logs() -> Iterator[None]:
    """aiormq logs every failed reconnect attempt at ERROR; an operator's one-shot command
    reports the outcome in one line instead (``-v`` shows them)."""
    loggers = [logging.getLogger(n) for n in ("aiormq", "aio_pika")]
    levels = [lg.level for lg in loggers]
    if not _flags.verbose:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


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


@command(app)
def health(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    timeout: Annotated[
        float,
        typer.Option(
            envvar="SATELLITES_HEALTH_TIMEOUT",
            min=0.1,
            help="Seconds for the whole check (every backend at once).",
        ),
    ] = 5.0,
) -> None:
    """Check every backend, read-only; exit 1 when one that is enabled is unreachable.

    Creates nothing, migrates nothing, takes no relay lead, publishes nothing.
    """
    from .healthcheck import check

    with _quiet_broker_logs():
        result = asyncio.run(check(load_config(), timeout=timeout))
    if as_json:
        console.print_json(json.dumps(result.to_dict()))
    else:
        console.print(_render_health(result))
    if not result.ok:
        down = [f"{n} ({h.error})" for n, h in result.details.items() if h.status == "down"]
        _say_error(f"unhealthy: {', '.join(down)}")
        raise typer.Exit(EXIT_FAILURE)


@command(app)
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

    asyncio.run(go())
    console.print(f"schema {config.postgres.schema!r} at {revision} on {config.postgres.safe_dsn}")


db_app = typer.Typer(help="The database: roles and grants (run as an administrator).",
                     no_args_is_help=True)  # fmt: skip
app.add_typer(db_app, name="db")


@command(db_app, "roles")
def db_roles(
    owner: Annotated[str, typer.Option(help="The login role that owns the schema and migrates.")],
    producer: Annotated[
        list[str] | None, typer.Option(help="A login role that may only append (repeat).")
    ] = None,
    reader: Annotated[
        list[str] | None,
        typer.Option(help="A login role for the relay and projectors (repeat)."),
    ] = None,
    password_file: Annotated[
        list[str] | None,
        typer.Option(help="ROLE=PATH: set ROLE's password from the file PATH (repeat)."),
    ] = None,
) -> None:
    """Create the least-privilege roles of SATELLITES_POSTGRES_SCHEMA (see README Production):
    the owner, producers (append only) and readers (relay, projectors); idempotent."""
    from .roles import create_roles

    config = load_config()
    passwords: dict[str, str] = {}
    for item in password_file or []:
        role, sep, path = item.partition("=")
        if not sep:
            raise ConfigurationError("--password-file", f"must be ROLE=PATH (got {item!r})")
        try:
            passwords[role] = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigurationError(
                "--password-file", f"cannot read {path}: {exc.strerror}"
            ) from None
    done = asyncio.run(create_roles(config.postgres, owner=owner, producers=producer or [],
                                    readers=reader or [], passwords=passwords))  # fmt: skip
    for line in done:
        console.print(line)


ProjectionsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--projection", "-p", envvar="SATELLITES_RUN_PROJECTIONS",
        help="Projections to run (repeat; 'all' for every one).",
    ),
]  # fmt: skip
HttpPortOpt = Annotated[
    int | None,
    typer.Option(envvar="SATELLITES_HTTP_PORT", min=1, max=65535,
                 help="Serve /health and /metrics on this port."),
]  # fmt: skip
HttpHostOpt = Annotated[
    str, typer.Option(envvar="SATELLITES_HTTP_HOST", help="Address for /health and /metrics.")
]
ProjectionArg = Annotated[str, typer.Argument(help="The projection's name.")]


def _projections(config: DataLayerConfig, names: Sequence[str]) -> list[Projection]:
    """The named projections; an unknown name is a usage error in every command (exit 2)."""
    from .service_runner import select_projections

    try:
        return select_projections(config, names)
    except ProjectionError as exc:
        raise ConfigurationError("--projection", str(exc)) from exc


def _serve(options: ServiceOptions) -> None:
    from .service_runner import run_service

    config = load_config()
    if options.projections:
        _projections(config, options.projections)  # unknown names fail before anything starts
    asyncio.run(run_service(config, options))


@command(app)
def run(
    projection: ProjectionsOpt = None,
    http_port: HttpPortOpt = None,
    http_host: HttpHostOpt = "127.0.0.1",
) -> None:
    """The relay and the chosen projectors as one service; graceful on SIGTERM and SIGINT."""
    _serve(ServiceOptions(relay=True, projections=tuple(projection or ["all"]),
                          http_port=http_port, http_host=http_host))  # fmt: skip


@command(app)
def relay(http_port: HttpPortOpt = None, http_host: HttpHostOpt = "127.0.0.1") -> None:
    """Only the relay (log -> bus); several may run, one leads, the others stand by."""
    _serve(ServiceOptions(relay=True, http_port=http_port, http_host=http_host))


@command(app)
def project(
    projection: ProjectionsOpt = None,
    http_port: HttpPortOpt = None,
    http_host: HttpHostOpt = "127.0.0.1",
) -> None:
    """Only projectors (no relay), following the log into their sinks."""
    _serve(ServiceOptions(relay=False, projections=tuple(projection or ["all"]),
                          http_port=http_port, http_host=http_host))  # fmt: skip


def _no_relay(config: DataLayerConfig) -> DataLayerConfig:
    return config.replace(relay=dataclasses.replace(config.relay, enabled=False))


@command(app)
def rebuild(
    name: ProjectionArg,
    on_poison: Annotated[
        str | None,
        typer.Option(help="An event that cannot be projected: 'stop' the rebuild there, or "
                     "'park' it and go on (default: the projection's PoisonPolicy.rebuild)."),
    ] = None,
) -> None:  # fmt: skip
    """Replay the log into a new version of a projection, then flip to it (blue/green)."""
    from .operations import run_rebuild

    config = _no_relay(load_config())
    (projection,) = _projections(config, [name])
    if on_poison is not None:
        if on_poison not in ("stop", "park"):
            raise ConfigurationError("--on-poison", f"must be 'stop' or 'park' (got {on_poison!r})")
        policy = dataclasses.replace(projection.poison, rebuild=on_poison)  # type: ignore[arg-type]
        projection = dataclasses.replace(projection, poison=policy)
    result = asyncio.run(run_rebuild(config, projection, console))
    console.print(
        f"{name}: version {result.version} is active (previous {result.previous}); "
        f"{result.events} events replayed{' (resumed)' if result.resumed else ''}"
        + (f"; {result.parked} event(s) parked (satellites-es parked list {name})"
           if result.parked else "")
    )  # fmt: skip


@command(app)
def reembed(
    name: ProjectionArg,
    embedder: Annotated[
        str,
        typer.Option("--embedder", help="The model to re-embed with: the name of one of the "
                     "collection's embedders (SemanticSchema.embedders)."),
    ],
) -> None:  # fmt: skip
    """Re-embed a semantic collection's vector projection with another of its models: a
    blue/green rebuild into a new version while writes go on, then a flip ('rollback NAME'
    flips back)."""
    from .semantic.reembed import run_reembed

    config = _no_relay(load_config())
    (projection,) = _projections(config, [name])
    result = asyncio.run(run_reembed(config, projection, embedder, console))
    console.print(f"{name}: version {result.version}, embedded by {embedder}, is active "
                  f"(previous {result.previous}); {result.events} events replayed")  # fmt: skip


@command(app)
def rollback(name: ProjectionArg) -> None:
    """Flip a projection back to the version it had before its last flip (nothing is deleted)."""
    from .operations import run_rollback

    config = _no_relay(load_config())
    (projection,) = _projections(config, [name])
    console.print(f"{name}: pointing readers of its {projection.sink} sink back to the previous "
                  "version (both versions are kept)")  # fmt: skip
    active, left = asyncio.run(run_rollback(config, projection))
    console.print(f"{name}: version {active} is active again (version {left} kept)")


@command(app)
def audit(
    name: ProjectionArg,
    repair: Annotated[
        bool,
        typer.Option("--repair", help="Rewrite the drifted keys from the log, then audit again."),
    ] = False,
    examples: Annotated[int, typer.Option(min=0, help="Keys shown per kind of drift.")] = 10,
) -> None:
    """Compare a projection's active version with the log, key by key; exit 1 on drift."""
    from .audit import run_audit

    config = _no_relay(load_config())
    (projection,) = _projections(config, [name])
    clean = asyncio.run(run_audit(config, projection, console, repair=repair, examples=examples))
    if not clean:
        hint = "" if repair else " (audit --repair rewrites them from the log)"
        _say_error(f"drift: {name} differs from the log{hint}")
        raise typer.Exit(EXIT_FAILURE)


dlq_app = typer.Typer(help="Dead letters of a subscriber group (RabbitMQ).", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")


@command(dlq_app, "list")
def dlq_list(
    group: Annotated[str, typer.Argument(help="The subscriber group.")],
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 20,
) -> None:
    """Show dead-lettered events with their error (they stay in the queue)."""
    from .operations import with_bus

    with _quiet_broker_logs():
        letters = asyncio.run(with_bus(load_config(), lambda bus: bus.dead_letters(group, limit)))
    table = Table(title=f"dead letters of {group}")
    for column in ("event", "type", "key", "attempts", "error"):
        table.add_column(column)
    for d in letters:
        table.add_row(d.event.id if d.event else "?", d.event.type if d.event else "?",
                      d.event.key if d.event else "?", str(d.attempts), d.error)  # fmt: skip
    console.print(table)


@command(dlq_app, "replay")
def dlq_replay(
    group: Annotated[str, typer.Argument(help="The subscriber group.")],
    limit: Annotated[
        int | None, typer.Option(min=1, help="At most this many (default all).")
    ] = None,
) -> None:
    """Deliver dead-lettered events to the group again, and remove them from the DLQ."""
    from .operations import with_bus

    with _quiet_broker_logs():
        count = asyncio.run(
            with_bus(load_config(), lambda bus: bus.replay_dead_letters(group, limit))
        )
    console.print(f"replayed {count} dead letter(s) of {group}")


groups_app = typer.Typer(help="Subscriber groups on the exchange (RabbitMQ).", no_args_is_help=True)
app.add_typer(groups_app, name="groups")


@command(groups_app, "list")
def groups_list() -> None:
    """The subscriber groups bound to the exchange, with their queues' message counts."""
    from .groups import list_groups

    config = load_config()
    found = asyncio.run(list_groups(config.rabbitmq))
    table = Table(title=f"subscriber groups of exchange {config.rabbitmq.exchange}")
    for column in ("group", "queues", "messages", "consumers", "dead letters"):
        table.add_column(column)
    for g in found:
        table.add_row(g.name, str(len(g.queues)), str(g.messages), str(g.consumers),
                      str(g.dead_letters))  # fmt: skip
    console.print(table)


@command(groups_app, "remove")
def groups_remove(
    group: Annotated[str, typer.Argument(help="The subscriber group to remove.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a group's partition queues and its dead-letter queue (their messages are lost)."""
    from .groups import describe_group, remove_group

    config = load_config()
    found = asyncio.run(describe_group(config.rabbitmq, group))
    console.print(f"will delete {len(found.queues)} queue(s) of group {group!r} with "
                  f"{found.messages} message(s) and {found.dead_letters} dead letter(s): "
                  + ", ".join(found.queues))  # fmt: skip
    if not yes and not typer.confirm("delete them?", default=False):
        _say_error("not confirmed: nothing deleted")
        raise typer.Exit(EXIT_FAILURE)
    deleted = asyncio.run(remove_group(config.rabbitmq, found))
    console.print(f"deleted {deleted} queue(s) of group {group!r}")


from .parked_cli import parked_app  # noqa: E402  (its own module: one command group)

app.add_typer(parked_app, name="parked")

from .snapshots_cli import register as register_snapshots  # noqa: E402  (its own module)

app.add_typer(register_snapshots(handled), name="snapshots")


@command(app)
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

    count = asyncio.run(
        run_replay(load_config(), group, after=after, until=until, types=event_type)
    )
    console.print(f"replayed {count} event(s) into {group}")


@command(app)
def demo(
    documents: Annotated[
        int,
        typer.Option(envvar="SATELLITES_DEMO_DOCUMENTS", min=1, help="Documents in the corpus."),
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
        typer.Option(
            envvar="SATELLITES_DEMO_DATA_DIR",
            help="Where the demo keeps its FAISS namespace and embedded servers' data.",
        ),
    ] = Path("./data/demo"),
) -> None:
    """Run the demo pipeline end to end in a namespace of its own: log, relay, projections,
    searches, a rebuild. It never touches the configured schema, prefixes or FAISS path."""
    from .demo import run_demo

    try:
        asyncio.run(
            run_demo(os.environ, data_dir, documents=documents, embedded=embedded, console=console)
        )
    except ConfigurationError:
        raise
    except (SatellitesError, RuntimeError, OSError) as exc:
        raise SatellitesError(f"demo failed: {type(exc).__name__}: {exc}") from exc


if __name__ == "__main__":  # pragma: no cover
    app()
