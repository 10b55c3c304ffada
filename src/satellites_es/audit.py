"""Does a projection's sink still equal the log? ``satellites-es audit NAME [--repair]``.

The audit folds the log per key into what the projection's active version must hold, and
compares that with the sink key by key, in two streaming passes:

1. **log -> sink.** Postgres sends the projection's events up to the sink's checkpoint ordered
   by key, then position (``audit_fold``), so the client folds one key at a time: the
   projection's handler gives each event's change, and the last change is what the key must
   hold (a document or a tombstone, at that position; no change at all: nothing). Keys are
   read back from the sink a chunk at a time, with their positions.
2. **sink -> log.** The sink's keys stream into a temporary table of the audit's session and
   Postgres returns those that no event has (``audit_unlogged_keys``).

Memory stays bounded by a chunk, however long the log. A key is

* **missing** when the log says it holds a document or a tombstone and the sink has nothing;
* **extra** when the sink holds it and the log has no change for it;
* **stale** when the content differs, when the sink's position is below the log's (it missed
  an event), or above the log's head (it would refuse the events to come).

A sink position above the checkpoint but within the head is a key a live projector wrote after
the audit's bound: it is counted as ``newer`` and not judged. A position between the log's and
the head with the same content is harmless (every later event has a higher position) and is
what an Elasticsearch repair leaves where the document's version was pushed up from outside.

A sink that does not hold what the handler gives (the semantic layer's vector sink embeds an
event with the version's own model when another model embedded it: a re-embedded version) has
an ``expected(projection, version, changes)`` method, and a chunk's changes pass through it
before they are compared (and repaired with).

``--repair`` hands the drifted keys to the sink's :meth:`~.projections.sinks.Sink.repair`
(each key written at its log position, extras removed; a key changed meanwhile is left alone),
then audits again. FAISS is local to each process: the audit reads and repairs the snapshot on
disk, so repair it with its projectors stopped.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from .config import DataLayerConfig
from .errors import PersistenceError, ProjectionError
from .parking import ParkedEvents
from .projections import Checkpoints, Projection
from .projections.model import Change, Upsert
from .projections.sinks import Fix, Held, Sink
from .sql import load, queries
from .store import stored_event
from .upcasting import NONE, Upcasters

__all__ = ["AuditReport", "audit", "run_audit"]

CHUNK = 500
KINDS = ("missing", "extra", "stale")


@dataclass(frozen=True)
class Expected:
    """What the log says one key must hold: ``change`` None means nothing at all."""

    key: str
    change: Change | None


@dataclass
class AuditReport:
    projection: str
    version: int
    checkpoint: int
    head: int
    keys: int = 0  # keys the log has a change or an event for
    events: int = 0
    newer: int = 0  # written after the audit's bound by a live projector: not judged
    #: parked events (or events the handler raises on, which a projector parks): not folded
    poison: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    examples: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})
    fixes: list[Fix] = field(default_factory=list, repr=False)
    seconds: float = 0.0
    examples_kept: int = 10

    @property
    def clean(self) -> bool:
        return not any(self.counts.values())

    @property
    def drifted(self) -> int:
        return sum(self.counts.values())

    def add(self, kind: str, fix: Fix, keep_fix: bool) -> None:
        self.counts[kind] += 1
        if len(self.examples[kind]) < self.examples_kept:
            self.examples[kind].append(fix.key)
        if keep_fix:
            self.fixes.append(fix)


Step = Callable[[int], None]
if TYPE_CHECKING:  # asyncpg's classes are generic for the type checker only
    #: A connection, pooled or not.
    Conn: TypeAlias = asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]


async def audit(
    projection: Projection, sink: Sink, pool: asyncpg.Pool, schema: str, *,
    collect_fixes: bool = False, examples: int = 10, progress: Step | None = None,
    upcasters: Upcasters = NONE,
) -> AuditReport:  # fmt: skip
    """Compare the active version of ``projection`` with the log, key by key.

    With ``collect_fixes`` the report keeps every drifted key's fix (for a repair: the drift's
    size, not the log's, bounds that list). ``upcasters``: the ones the projectors read with
    (the fold must see the payloads they saw)."""
    checkpoints = Checkpoints(pool, schema)
    active = await checkpoints.active(projection.name)
    if active is None:
        raise ProjectionError(f"projection {projection.name} has no active version: nothing to "
                              "audit (run it or rebuild it first)")  # fmt: skip
    version = active[0]
    local = await sink.local_checkpoint(projection, version)
    bound = local if local is not None else await checkpoints.get(projection.name, version)
    sql = queries(schema)
    types = list(projection.event_types)
    rows = await ParkedEvents(pool, schema).entries("projection", projection.name, limit=2**31 - 1)
    parked = {r.position for r in rows if r.version == version}
    started = time.perf_counter()
    try:
        async with pool.acquire() as conn:
            head = int(await conn.fetchval(sql["head"]))
            report = AuditReport(projection.name, version, bound, head, examples_kept=examples)
            judge = _Judge(projection, sink, version, report, conn, sql["head"], collect_fixes)
            async for chunk in _folded(conn, sql["audit_fold"], types, bound, projection, report,
                                       progress, parked, upcasters):  # fmt: skip
                await judge.log_side(chunk)
            await _unlogged(conn, sql["audit_unlogged_keys"], types, bound, sink, judge)
    except (asyncpg.PostgresError, OSError) as exc:
        raise PersistenceError(f"audit of {projection.name}: cannot read the log: {exc}") from exc
    report.seconds = time.perf_counter() - started
    return report


async def _folded(
    conn: Conn, sql: str, types: list[str], bound: int,
    projection: Projection, report: AuditReport, progress: Step | None, parked: set[int],
    upcasters: Upcasters,
) -> AsyncIterator[list[Expected]]:  # fmt: skip
    """The log folded per key, a chunk of keys at a time (see the module docstring). Parked
    events are left out, as the projector left them (issue 12), and so is an event the handler
    raises on (a projector parks it)."""
    chunk: list[Expected] = []
    key: str | None = None
    last: Change | None = None
    seen = 0
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        async for row in conn.cursor(sql, types, bound, prefetch=2000):
            if row["key"] != key:
                if key is not None:
                    chunk.append(Expected(key, last))
                    if len(chunk) >= CHUNK:
                        yield chunk
                        chunk = []
                key, last = row["key"], None
            change = None
            if row["position"] in parked:
                report.poison += 1
            else:
                try:
                    change = projection.change_for(stored_event(row, upcasters))
                except Exception:
                    report.poison += 1
            if change is not None:
                if change.key != key:
                    raise ProjectionError(
                        f"audit of {projection.name}: its handler maps key {key!r} to "
                        f"{change.key!r}; the audit folds by the event's key"
                    )
                last = change
            report.events += 1
            seen += 1
            if progress is not None and seen % 1000 == 0:
                progress(seen)
    if key is not None:
        chunk.append(Expected(key, last))
    if progress is not None:
        progress(seen)
    if chunk:
        yield chunk


async def _unlogged(
    conn: Conn, sql: str, types: list[str], bound: int, sink: Sink,
    judge: _Judge,
) -> None:  # fmt: skip
    """Keys the sink holds and no event has (pass 2)."""
    projection, version = judge.projection, judge.version
    async with conn.transaction():
        await conn.execute(load("audit_keys_create"))
        async for keys in sink.scan_keys(projection, version, CHUNK * 4):
            await conn.copy_records_to_table("audit_keys", records=[(k,) for k in keys])
        await conn.execute(load("audit_keys_analyze"))
        batch: list[Expected] = []
        async for row in conn.cursor(sql, types, bound, prefetch=2000):
            batch.append(Expected(row["key"], None))
            if len(batch) >= CHUNK:
                await judge.sink_side(batch)
                batch = []
        if batch:
            await judge.sink_side(batch)


class _Judge:
    """Reads a chunk of keys from the sink and classifies each (see the module docstring)."""

    def __init__(
        self, projection: Projection, sink: Sink, version: int, report: AuditReport,
        conn: Conn, head_sql: str, collect: bool,
    ) -> None:  # fmt: skip
        self.projection, self.sink, self.version, self.report = projection, sink, version, report
        self.conn, self.head_sql, self.collect = conn, head_sql, collect

    async def log_side(self, chunk: Sequence[Expected]) -> None:
        self.report.keys += len(chunk)
        await self._judge(chunk)

    async def sink_side(self, chunk: Sequence[Expected]) -> None:
        await self._judge(chunk)

    async def _judge(self, chunk: Sequence[Expected]) -> None:
        chunk = await self._as_held(chunk)
        held = await self.sink.read_keys(self.projection, self.version, [e.key for e in chunk])
        for expected in chunk:
            kind = await self._kind(expected, held.get(expected.key))
            if kind is not None:
                fix = Fix(
                    expected.key, expected.change, held.get(expected.key), self.report.checkpoint
                )
                self.report.add(kind, fix, self.collect)

    async def _as_held(self, chunk: Sequence[Expected]) -> Sequence[Expected]:
        """The chunk's changes as the sink holds them (its ``expected`` hook, if it has one)."""
        hook = getattr(self.sink, "expected", None)
        changed = [e for e in chunk if e.change is not None]
        if hook is None or not changed:
            return chunk
        mapped = iter(await hook(self.projection, self.version, [e.change for e in changed]))
        return [Expected(e.key, next(mapped)) if e.change is not None else e for e in chunk]

    async def _kind(self, expected: Expected, held: Held | None) -> str | None:
        want = expected.change
        if held is not None and held.position is not None:
            if held.position > self.report.head and held.position > await self._head():
                return "stale"  # ahead of the log: it would refuse the events to come
            if held.position > self.report.checkpoint:
                self.report.newer += 1
                return None
        if want is None:
            return None if held is None else "extra"
        if held is None:
            return "missing"
        document = want.document if isinstance(want, Upsert) else None
        if held.position is None or held.position < want.position:
            return "stale"
        return None if self.sink.same(self.projection, document, held.document) else "stale"

    async def _head(self) -> int:
        self.report.head = int(await self.conn.fetchval(self.head_sql))
        return self.report.head


# -- the command ---------------------------------------------------------------------------------


async def run_audit(
    config: DataLayerConfig, projection: Projection, console: Console, *, repair: bool = False,
    examples: int = 10,
) -> bool:  # fmt: skip
    """``satellites-es audit``: audit (and repair) one projection; True when clean."""
    from .facade import DataLayer
    from .projections.discovery import upcasters_of
    from .projections.supervisor import build_sink

    upcasters = upcasters_of(config.projections_module)
    async with DataLayer(config, upcasters=upcasters) as data:
        sink = build_sink(projection, data)
        schema = config.postgres.schema
        report = await _audit_with_bar(console, "audit", projection, sink, data.postgres, schema,
                                       collect_fixes=repair, examples=examples,
                                       upcasters=data.log.upcasters)  # fmt: skip
        show(console, report)
        if report.clean or not repair:
            return report.clean
        written = await sink.repair(projection, report.version, report.fixes)
        console.print(f"repaired {written} of {report.drifted} drifted key(s) of "
                      f"{projection.name} v{report.version} from the log; auditing again")  # fmt: skip
        again = await _audit_with_bar(console, "re-audit", projection, sink, data.postgres,
                                      schema, examples=examples,
                                      upcasters=data.log.upcasters)  # fmt: skip
        show(console, again)
        return again.clean


async def _audit_with_bar(
    console: Console, label: str, projection: Projection, sink: Sink, pool: asyncpg.Pool,
    schema: str, **options: Any,
) -> AuditReport:  # fmt: skip
    checkpoints = Checkpoints(pool, schema)
    active = await checkpoints.active(projection.name)
    total = 0
    if active is not None:
        local = await sink.local_checkpoint(projection, active[0])
        bound = local if local is not None else await checkpoints.get(projection.name, active[0])
        total = int(await pool.fetchval(queries(schema)["audit_count"],
                                        list(projection.event_types), bound))  # fmt: skip
    started = time.perf_counter()
    columns = (TextColumn(f"[bold]{label} {projection.name}"), BarColumn(), TaskProgressColumn(),
               TextColumn("{task.completed:>9,.0f}/{task.total:,.0f} events"),
               TextColumn("{task.fields[rate]:>9} events/s"), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(label, total=max(total, 1), rate="-")

        def step(done: int) -> None:
            rate = done / max(time.perf_counter() - started, 1e-6)
            bar.update(task, completed=done, rate=f"{rate:,.0f}")

        return await audit(projection, sink, pool, schema, progress=step, **options)


def show(console: Console, report: AuditReport) -> None:
    """The counts and examples, and one line saying whether the sink equals the log."""
    rate = report.keys / max(report.seconds, 1e-9)
    console.print(
        f"{report.projection} v{report.version}: {report.keys:,} keys from {report.events:,} "
        f"events up to position {report.checkpoint:,} (head {report.head:,}) in "
        f"{report.seconds:.2f}s ({rate:,.0f} keys/s); {report.newer} newer than the checkpoint"
    )
    if report.clean:
        console.print(f"[green]clean:[/] {report.projection} equals the log")
        return
    table = Table(title=f"drift in {report.projection} v{report.version}")
    for column in ("kind", "keys", "examples"):
        table.add_column(column)
    for kind in KINDS:
        shown = ", ".join(report.examples[kind])
        table.add_row(kind, str(report.counts[kind]), shown)
    console.print(table)
    console.print(f"[red]drift:[/] {report.drifted} key(s) of {report.projection} differ from "
                  f"the log: " + ", ".join(f"{k}={v}" for k, v in report.counts.items()))  # fmt: skip


def summary(report: AuditReport) -> Mapping[str, int]:
    """The counts as one mapping (the soak's checker prints these)."""
    return {"keys": report.keys, **report.counts}
