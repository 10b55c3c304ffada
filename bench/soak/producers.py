"""The soak's producers: entity, document and embedding events (about 10% deletes) at a steady
rate over many keys, a failed append retried with the same event ids (the log stores an id
once, so a retry of an append whose answer was lost is absorbed as a duplicate)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from bench.soak.namespace import DIMENSION
from satellites_es.events import DataEvent
from satellites_es.store import AppendResult, EventStore

RESOURCES = (("entities", 0.45), ("documents", 0.35), ("embeddings", 0.20))
SINGULAR = {"entities": "entity", "documents": "document", "embeddings": "embedding"}
DELETE_SHARE = 0.10
TOPICS = ("ml", "db", "ops", "search", "web")
WORDS = ("vector", "index", "relay", "log", "queue", "shard", "cache", "model", "event", "key")
ATTEMPTS = 60


@dataclass
class ProducerStats:
    appended: int = 0
    duplicates: int = 0
    append_errors: int = 0
    abandoned: int = 0
    transactional: int = 0
    errors_seen: Counter[str] = field(default_factory=Counter)


async def with_retries(
    attempt: Callable[[], Awaitable[object]], on_error: Callable[[Exception], None]
) -> bool:
    """Run ``attempt`` (bounded at 30 s) until it succeeds, backing off after each failure (a
    terminated session, a timeout); False when it never did."""
    for n in range(ATTEMPTS):
        try:
            async with asyncio.timeout(30):
                await attempt()
            return True
        except Exception as exc:
            on_error(exc)
            await asyncio.sleep(min(0.05 * 2**n, 1.0))
    return False


def vector(rng: random.Random, dimension: int = DIMENSION) -> list[float]:
    return [round(rng.gauss(0.0, 1.0), 4) for _ in range(dimension)]


def _resource(rng: random.Random) -> str:
    r = rng.random()
    acc = 0.0
    for name, share in RESOURCES:
        acc += share
        if r < acc:
            return name
    return RESOURCES[-1][0]


def _payload(rng: random.Random, resource: str, seq: str) -> dict[str, Any]:
    if resource == "entities":
        return {
            "name": f"entity {seq}", "seq": seq, "score": rng.randrange(1_000_000) / 1000,
            "tags": rng.sample(WORDS, rng.randrange(0, 4)),
        }  # fmt: skip
    if resource == "documents":
        return {
            "title": f"title {seq}",
            "body": " ".join(rng.choice(WORDS) for _ in range(rng.randrange(5, 40))),
            "author_id": None if rng.random() < 0.1 else f"a{rng.randrange(50)}",
            "topic": rng.choice(TOPICS),
        }
    return {
        "vector": vector(rng),
        "title": f"embedding {seq}", "topic": rng.choice(TOPICS), "model": f"m-{seq}",
    }  # fmt: skip


def make_event(rng: random.Random, keys: int, seq: str) -> DataEvent:
    resource = _resource(rng)
    key = f"k{rng.randrange(keys):05d}"
    singular = SINGULAR[resource]
    if rng.random() < DELETE_SHARE:
        return DataEvent(type=f"{singular}.deleted", resource=resource, key=key,
                         payload={"seq": seq}, source="soak")  # fmt: skip
    return DataEvent(type=f"{singular}.upserted", resource=resource, key=key,
                     payload=_payload(rng, resource, seq), source="soak")  # fmt: skip


class Producer:
    """One producer: batches of 1-4 events, a fifth of them appended inside a transaction of
    the caller's, paced at ``rate`` events/s until ``stop_at``."""

    def __init__(
        self, index: int, store: EventStore, pool: asyncpg.Pool, seed: int, stats: ProducerStats
    ) -> None:
        self.index, self.store, self.pool, self.stats = index, store, pool, stats
        self.rng = random.Random(f"{seed}-producer-{index}")

    async def run(self, rate: float, keys: int, stop_at: float) -> None:
        n = 0
        next_at = time.monotonic()
        while time.monotonic() < stop_at:
            size = self.rng.randrange(1, 5)  # mean 2.5 events per append
            batch = [make_event(self.rng, keys, f"{self.index}.{n + i}") for i in range(size)]
            n += size
            await self._append(batch, in_tx=self.rng.random() < 0.2)
            next_at += size / rate
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -2.0:  # far behind (a fault held us up): do not burst to catch up
                next_at = time.monotonic()

    async def _append(self, batch: list[DataEvent], in_tx: bool) -> None:
        async def attempt() -> None:
            if in_tx:
                async with self.pool.acquire() as conn, conn.transaction():
                    result = await self.store.append(batch, conn=conn)
                self.stats.transactional += 1
            else:
                result = await self.store.append(batch)
            self._count(result)

        if not await with_retries(attempt, self._failed):
            self.stats.abandoned += len(batch)

    def _count(self, result: AppendResult) -> None:
        self.stats.appended += len(result.events)
        self.stats.duplicates += len(result.duplicates)

    def _failed(self, exc: Exception) -> None:
        self.stats.append_errors += 1
        self.stats.errors_seen[type(exc).__name__] += 1
