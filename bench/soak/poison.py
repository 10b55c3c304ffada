"""Poison events of every kind, each on a key of its own (``poison-{kind}-{n}``), and the
consumer that must park it (:data:`POISON_KINDS`):

* ``handler_documents``: a document without ``title``, which the ``documents`` handler raises on;
* ``handler_embeddings``: an embedding without ``vector``, which ``VectorFields`` raises on;
* ``mapping``: a document whose ``topic`` is an object, which the keyword mapping refuses;
* ``dimension``: a vector of 383 numbers for the d=384 ``embeddings`` namespace;
* ``routing_key``: an event whose type is too long for an AMQP routing key. ``append`` refuses
  such a type, so it goes in through the store's SQL function (``append_one``), as in logs
  written before that check: the relay must park it.

``entities`` gets none: its handler takes any payload (a mapping, as the log guarantees) and its
Redis sink any JSON document, so no event the log can hold is poison to it."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from bench.soak.oracle import Consumer, Injected
from bench.soak.producers import vector, with_retries
from satellites_es.events import DataEvent
from satellites_es.sql import queries
from satellites_es.store import AppendResult, EventStore

POISON_KINDS: dict[str, Consumer] = {
    "handler_documents": ("projection", "documents", 1),  # no "title": the handler raises
    "handler_embeddings": ("projection", "embeddings", 1),  # no "vector": VectorFields raises
    "mapping": ("projection", "documents", 1),  # "topic" an object: the keyword mapping refuses
    "dimension": ("projection", "embeddings", 1),  # a vector of DIMENSION - 1
    "routing_key": ("relay", "default", 0),  # a type too long for an AMQP routing key
}
POISON_SOURCE = "soak-poison"
#: over the 255 bytes of a routing key with its ``p{partition}.`` head; ``append`` refuses it
LONG_TYPE = "soak.unroutable." + "x" * 250


def poison_event(kind: str, n: int, rng: random.Random) -> DataEvent:
    """A poison event of ``kind`` on a key of its own (``poison-{kind}-{n}``)."""
    key = f"poison-{kind}-{n:04d}"
    numbers = vector(rng)
    if kind == "handler_documents":
        resource, type_ = "documents", "document.upserted"
        payload: dict[str, Any] = {"body": "no title", "topic": "ml"}
    elif kind == "mapping":
        resource, type_ = "documents", "document.upserted"
        payload = {"title": f"poison {n}", "body": "b", "topic": {"not": "a keyword"}}
    elif kind == "handler_embeddings":
        resource, type_ = "embeddings", "embedding.upserted"
        payload = {"title": f"poison {n}", "topic": "ml", "model": "m"}
    elif kind == "dimension":
        resource, type_ = "embeddings", "embedding.upserted"
        payload = {"vector": numbers[:-1], "title": f"poison {n}", "topic": "ml", "model": "m"}
    elif kind == "routing_key":
        resource, type_ = "entities", LONG_TYPE
        payload = {"name": f"poison {n}"}
    else:
        raise ValueError(kind)
    return DataEvent(type=type_, resource=resource, key=key, payload=payload,
                     source=POISON_SOURCE)  # fmt: skip


@dataclass
class PoisonStats:
    injected: list[Injected] = field(default_factory=list)
    append_errors: int = 0
    abandoned: int = 0

    def undeliverable(self) -> list[str]:
        """The ids of the poison events the relay must park: the bus never carries them."""
        return [i.event_id for i in self.injected if i.consumer[0] == "relay"]


async def append_raw(pool: asyncpg.Pool, store: EventStore, event: DataEvent) -> int:
    """Append ``event`` through the store's own SQL function (``append_one``), past
    ``append``'s validation: the way an event with a type too long for a routing key got into
    logs written before ``append`` refused it. Returns its position (a retried id: the stored
    one)."""
    sql = queries(store.schema)["append_one"]
    row = await pool.fetchrow(
        sql, event.id, event.resource, event.key, event.type, event.source,
        json.dumps(dict(event.payload)), event.timestamp, None, store.channel, True,
    )  # fmt: skip
    assert row is not None  # the function returns one row
    if row["out_position"] is None:  # stored pending (the sequencer was busy): number it
        return (await store.sequenced(AppendResult(events=(event,)))).last_position
    return int(row["out_position"])


class Poisoner:
    """Appends a poison event every ``gap`` seconds: first one of each kind in a random order,
    then kinds at random. Each is recorded before its append (an append whose answer was lost
    may still have stored it: the verdict reads positions from the log, by event id)."""

    def __init__(
        self, store: EventStore, pool: asyncpg.Pool, rng: random.Random, stats: PoisonStats
    ) -> None:
        self.store, self.pool, self.rng, self.stats = store, pool, rng, stats

    async def run(self, stop_at: float, gap: tuple[float, float]) -> None:
        kinds = list(POISON_KINDS)
        self.rng.shuffle(kinds)
        for n in range(100_000):
            wait = self.rng.uniform(*gap)
            if time.monotonic() + wait >= stop_at:
                return
            await asyncio.sleep(wait)
            kind = kinds[n] if n < len(kinds) else self.rng.choice(sorted(POISON_KINDS))
            await self._inject(kind, poison_event(kind, n, self.rng))

    async def _inject(self, kind: str, event: DataEvent) -> None:
        self.stats.injected.append(Injected(kind, POISON_KINDS[kind], event.id, event.key))

        async def attempt() -> None:
            if kind == "routing_key":
                await append_raw(self.pool, self.store, event)
            else:
                await self.store.append([event])

        if not await with_retries(attempt, self._failed):
            self.stats.abandoned += 1

    def _failed(self, exc: Exception) -> None:
        self.stats.append_errors += 1
