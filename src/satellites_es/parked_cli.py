"""``satellites-es parked list|retry|discard``: the parked events of a projection or a relay.

Only Postgres is needed (the ``parked_events`` table, :mod:`satellites_es.parking`); nothing is
migrated or created. ``retry`` marks the rows and waits for the consumer that owns them (a
running ``satellites-es run``/``project``/``relay``) to apply them, then says what happened to
each; ``discard`` says what it will delete and asks first (``--yes`` to skip the question). The
events themselves always stay in the log.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from .config import DataLayerConfig
from .errors import ConfigurationError, PersistenceError, SatellitesError
from .parking import ConsumerKind, ParkedEvent, ParkedEvents
from .pgpool import create_pool
from .store import DB_ERRORS

__all__ = ["parked_app"]

T = TypeVar("T")

parked_app = typer.Typer(
    help="Events set aside by a projection or the relay because they can never succeed as they "
    "are (poison events): list, retry after a fix, discard.",
    no_args_is_help=True,
)
console = Console()


def _say(message: str) -> None:
    """One line on stderr, as every CLI error is (plain text: rich would wrap it)."""
    print(f"satellites-es: {' '.join(message.split())}", file=sys.stderr, flush=True)


NameArg = Annotated[str, typer.Argument(help="The projection (or, with --relay, the relay).")]
RelayOpt = Annotated[bool, typer.Option("--relay", help="NAME is a relay, not a projection.")]
PositionsOpt = Annotated[
    list[int] | None,
    typer.Option("--position", help="Only the event at this log position (repeat)."),
]


def _run(work: Callable[[ParkedEvents, DataLayerConfig], Awaitable[T]]) -> T:
    """``work`` on the configured schema's parked events; one line and exit 1 on failure."""
    try:
        config = DataLayerConfig.from_env()
    except ConfigurationError as exc:
        _say(f"configuration error: {exc}")
        raise typer.Exit(2) from exc

    async def go() -> T:
        try:
            pool = await create_pool(config.postgres.dsn, min_size=1, max_size=2,
                                     timeout=config.connect_timeout)  # fmt: skip
        except DB_ERRORS as exc:
            raise PersistenceError(f"postgres {config.postgres.safe_dsn}: {exc}") from exc
        try:
            return await work(ParkedEvents(pool, config.postgres.schema), config)
        finally:
            await pool.close()

    try:
        return asyncio.run(go())
    except SatellitesError as exc:
        _say(str(exc))
        raise typer.Exit(1) from exc


def _kind(relay: bool) -> ConsumerKind:
    return "relay" if relay else "projection"


@parked_app.command("list")
def parked_list(
    name: Annotated[str | None, typer.Argument(help="Only this projection (or relay).")] = None,
    relay: RelayOpt = False,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 50,
) -> None:
    """Show parked events: consumer, position, key, event id, attempts and the error."""
    kind: ConsumerKind | None = _kind(relay) if (relay or name) else None
    rows = _run(lambda parked, _: parked.entries(kind, name, limit=limit))
    table = Table(title="parked events")
    for column in ("consumer", "version", "position", "key", "event id", "type", "attempts",
                   "status", "error"):  # fmt: skip
        table.add_column(column)
    for r in rows:
        table.add_row(f"{r.kind} {r.name}", str(r.version), str(r.position), r.key or "",
                      r.event_id or "", (r.event_type or "")[:40], str(r.attempts), r.status,
                      f"{r.error_type}: {r.error}"[:200])  # fmt: skip
    console.print(table)
    console.print(
        f"{len(rows)} parked event(s)" + (" (limit reached)" if len(rows) == limit else "")
    )


@parked_app.command("retry")
def parked_retry(
    name: NameArg,
    relay: RelayOpt = False,
    position: PositionsOpt = None,
    wait: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for the consumer to apply them.")
    ] = 15.0,
) -> None:
    """Apply parked events again (after fixing their cause), at their original positions.

    The running consumer (projector or relay) applies them within a second or so; an event
    that fails again is parked again with the new error. Exit 1 unless every one applied.
    """
    kind = _kind(relay)

    async def go(parked: ParkedEvents, _: DataLayerConfig) -> tuple[list[int], list[ParkedEvent]]:
        before = {r.position: r.attempts for r in await parked.entries(kind, name, limit=100_000)}
        marked = await parked.request_retry(kind, name, position)
        deadline = time.monotonic() + wait
        while True:
            left = [r for r in await parked.entries(kind, name, limit=100_000)
                    if r.position in marked]  # fmt: skip
            pending = [r for r in left if r.status == "retry"]
            if not pending or time.monotonic() >= deadline:
                failed = [r for r in left if r.status == "parked" and r.attempts > before.get(
                    r.position, 0)] + pending  # fmt: skip
                return marked, failed
            await asyncio.sleep(0.2)

    marked, failed = _run(go)
    if not marked:
        _say(f"no parked event of {kind} {name} matches")
        raise typer.Exit(1)
    console.print(f"{kind} {name}: {len(marked) - len(failed)} of {len(marked)} parked event(s) "
                  "applied", markup=False)  # fmt: skip
    for r in failed:
        why = ("marked for retry, but no consumer applied it yet (is one of it running? the "
               "next one that runs will)" if r.status == "retry"
               else f"failed again: {r.error_type}: {r.error}")  # fmt: skip
        _say(f"position {r.position} (key {r.key!r}): {why}"[:300])
    if failed:
        raise typer.Exit(1)


@parked_app.command("discard")
def parked_discard(
    name: NameArg,
    relay: RelayOpt = False,
    position: PositionsOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Forget parked events without applying them (they stay in the log)."""
    kind = _kind(relay)
    rows = _run(lambda parked, _: parked.entries(kind, name, limit=100_000))
    chosen = [r for r in rows if position is None or r.position in position]
    if not chosen:
        _say(f"no parked event of {kind} {name} matches")
        raise typer.Exit(1)
    shown = ", ".join(str(r.position) for r in chosen[:20]) + (" ..." if len(chosen) > 20 else "")
    console.print(f"this discards {len(chosen)} parked event(s) of {kind} {name} (positions "
                  f"{shown}) from parked_events; the events stay in the log", markup=False)  # fmt: skip
    if not yes and not typer.confirm("discard them?", default=False):
        raise typer.Exit(1)
    done = _run(lambda parked, _: parked.discard(kind, name, [r.position for r in chosen]))
    console.print(f"discarded {len(done)} parked event(s)")
