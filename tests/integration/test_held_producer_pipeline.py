"""A producer that keeps its transaction open delays only itself, through the whole pipeline.

The store-level proofs are in ``test_store_gaps.py``; here the readers are the real ones: the
relay (publishing to RabbitMQ, a subscriber group receiving) and a projector following the log
into Redis, with the appends made the way web handlers make them, each in a transaction of its
own (which sends no NOTIFY: the relay leader's sequencer tick announces them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from satellites_es.config import DataLayerConfig
from satellites_es.events import DataEvent
from satellites_es.facade import DataLayer
from satellites_es.projections import Checkpoints, Projection, Upsert
from satellites_es.projections.projector import follow_active
from satellites_es.projections.redis_sink import RedisSink

HOLD = 2.5
LATENCY = 0.5


def _event(key: str, n: int) -> DataEvent:
    return DataEvent(type="doc.put", resource="docs", key=key, payload={"n": n}, source="test")


async def test_a_held_transaction_delays_neither_the_bus_nor_a_projection(
    config: DataLayerConfig, redis_prefix: str, test_id: str
) -> None:
    subscribed: dict[str, float] = {}
    projected: dict[str, float] = {}

    class Recorder:
        subscriber_name = f"held-{test_id}"

        async def __call__(self, event: DataEvent) -> None:
            subscribed.setdefault(event.id, time.monotonic())

    def handle(event: DataEvent) -> Upsert:
        projected.setdefault(event.id, time.monotonic())
        return Upsert(event.key, {"n": event.payload["n"]})

    projection = Projection(name="held", version=1, sink="redis", event_types=("doc.put",),
                            handler=handle)  # fmt: skip
    cfg = config.replace(faiss=dataclasses.replace(config.faiss, enabled=False))
    async with DataLayer(cfg) as data:
        data.events.subscribe("doc.put", Recorder())
        await data.subscriptions_ready()
        stop = asyncio.Event()
        sink = RedisSink(data.redis, redis_prefix)
        checkpoints = Checkpoints(data.postgres, cfg.postgres.schema)
        follower = asyncio.create_task(
            follow_active(projection, sink, data.log, checkpoints, stop=stop)
        )
        committed: dict[str, float] = {}
        try:
            async with data.postgres.acquire() as held_conn:
                tx = held_conn.transaction()
                await tx.start()
                held = _event("held", 0)
                await data.log.append(held, conn=held_conn)
                started = time.monotonic()
                n = 0
                async with data.postgres.acquire() as conn:
                    while time.monotonic() - started < HOLD:
                        event = _event(f"k{n % 10}", n)
                        async with conn.transaction():
                            await data.log.append(event, conn=conn)
                        committed[event.id] = time.monotonic()
                        n += 1
                        await asyncio.sleep(0.005)
                await asyncio.sleep(LATENCY)
                assert held.id not in subscribed and held.id not in projected
                await tx.commit()
                held_at = time.monotonic()
            deadline = time.monotonic() + 10
            while held.id not in subscribed or held.id not in projected:
                assert time.monotonic() < deadline, "the held event never arrived"
                await asyncio.sleep(0.01)
        finally:
            stop.set()
            await asyncio.wait_for(follower, 10)

    assert len(committed) >= 100, "the other producer was held up"
    for name, arrived in (("subscriber", subscribed), ("projection", projected)):
        late = {i: arrived[i] - at for i, at in committed.items() if arrived[i] - at > LATENCY}
        assert not late, f"{name}: {len(late)} events later than {LATENCY}s after commit"
        assert arrived[held.id] >= held_at
