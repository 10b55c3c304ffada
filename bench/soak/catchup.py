"""Waiting for everything to catch up once the faults stop: the relay (cursor == head), the
projections (checkpoints == head, the FAISS process's own position == head) and the audit
subscriber (every deliverable position seen)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from bench.soak.auditor import AuditRecord
from bench.soak.namespace import Namespace
from bench.soak.processes import Child
from bench.soak.report import log
from satellites_es.projections import Checkpoints

PROJECTION_NAMES = ("entities", "documents", "embeddings")


@dataclass
class Progress:
    head: int = 0
    events: int = 0
    relay_cursor: int = 0
    checkpoints: dict[str, int] = field(default_factory=dict)
    faiss: int = -1
    audit_distinct: int = 0
    deliverable: int = 0  # events minus those the relay must park (the bus never carries them)

    @property
    def caught_up(self) -> bool:
        return (
            self.relay_cursor >= self.head
            and all(v >= self.head for v in self.checkpoints.values())
            and self.faiss >= self.head
            and self.audit_distinct >= self.deliverable
        )

    def __str__(self) -> str:
        return (
            f"head={self.head} relay_cursor={self.relay_cursor} checkpoints={self.checkpoints} "
            f"faiss={self.faiss} audit={self.audit_distinct}/{self.deliverable}"
        )


async def active_version(checkpoints: Checkpoints, name: str) -> int | None:
    row = await checkpoints.active(name)
    return None if row is None else row[0]


async def faiss_position(child: Child) -> int:
    body = await child.health()
    try:
        return int((body or {})["projections"]["embeddings"]["position"] or -1)
    except (KeyError, TypeError, ValueError):
        return -1


@dataclass
class Watch:
    """What :func:`progress` reads."""

    pool: asyncpg.Pool
    ns: Namespace
    checkpoints: Checkpoints
    faiss_child: Child
    audit: AuditRecord


async def progress(watch: Watch, undeliverable: Sequence[str]) -> Progress:
    """How far everything got; ``undeliverable``: ids of events the relay must park."""
    pool, s = watch.pool, f'"{watch.ns.schema}"'
    p = Progress()
    p.head = int(await pool.fetchval(f"SELECT coalesce(max(position), 0) FROM {s}.events"))
    p.events = int(await pool.fetchval(f"SELECT count(*) FROM {s}.events"))
    p.deliverable = p.events - int(await pool.fetchval(
        f"SELECT count(*) FROM {s}.events WHERE id = ANY($1::text[])", list(undeliverable)))  # fmt: skip
    p.relay_cursor = int(
        await pool.fetchval(f"SELECT coalesce(max(position), 0) FROM {s}.relay_cursors") or 0
    )
    for name in PROJECTION_NAMES:
        version = await active_version(watch.checkpoints, name)
        p.checkpoints[name] = -1 if version is None else await watch.checkpoints.get(name, version)
    p.faiss = await faiss_position(watch.faiss_child)
    p.audit_distinct = (await watch.audit.counts()).distinct
    return p


async def wait_for_catchup(
    watch: Watch, undeliverable: Sequence[str], timeout: float
) -> tuple[Progress, float]:
    """Poll :func:`progress` every second until caught up or ``timeout``; the last progress
    and the seconds it took. Says every 10 s which part is behind."""
    started = time.monotonic()
    deadline = started + timeout
    p = Progress()
    said = started
    for _ in range(100_000):
        if time.monotonic() >= deadline:
            break
        p = await progress(watch, undeliverable)
        if p.caught_up:
            break
        if time.monotonic() - said >= 10:
            said = time.monotonic()
            log(f"catching up ({said - started:.0f}s): {p}")
        await asyncio.sleep(1.0)
    seconds = time.monotonic() - started
    log(f"{'caught up' if p.caught_up else 'NOT caught up'} in {seconds:.1f}s: {p}")
    return p, seconds
