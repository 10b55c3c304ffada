"""Projections on the real stores: exactly-once effect by position, crash recovery, blue/green
rebuild while live events arrive, resume after a kill, rollback. Every test runs against the
three sinks: Redis, Elasticsearch (the ES endpoint of the harness) and FAISS, and FAISS twice:
with a handler function, and with the same mapping as ``VectorFields`` (replayed as columns)."""

from __future__ import annotations

import asyncio
import gc
import random
from typing import Any

import pytest

from satellites_es.errors import PoisonEventError, ProjectionError
from satellites_es.events import DataEvent
from satellites_es.projections import (
    Checkpoints,
    Projection,
    Projector,
    Sink,
    SinkDump,
    ensure_active,
    rebuild,
    rollback,
)
from satellites_es.projections.faiss_sink import FaissSink
from satellites_es.store import EventStore
from satellites_es.vectors import VectorIndex
from tests.integration.sinks_support import (
    DIM,
    ITEM_FIELDS,
    item,
    kind_of,
    make_projection,
)


async def fresh_replay(sink: Sink, store: EventStore, checkpoints: Checkpoints) -> SinkDump:
    """A projection of the same handler replayed from scratch under another name."""
    fresh = make_projection(kind_of(sink), name="fresh")
    await Projector(fresh, sink, store, checkpoints).catch_up()
    return await sink.dump(fresh, 1)


async def append_items(store: EventStore, keys: int, rounds: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    for r in range(rounds):
        batch = [item(f"k{k}", r, deleted=rng.random() < 0.1) for k in range(keys)]
        await store.append(batch)


async def test_duplicates_and_late_events_change_nothing(sink: Sink) -> None:
    p = make_projection(kind_of(sink))
    await sink.prepare(p, 1)
    v3 = p.change_for(_at(item("a", 3), 3))
    v2 = p.change_for(_at(item("a", 2), 2))
    assert v3 is not None and v2 is not None
    assert await sink.apply(p, 1, [v3]) == 1
    assert await sink.apply(p, 1, [v2, v3]) == 0  # late, then duplicate
    dump = await sink.dump(p, 1)
    assert _title(dump["a"]) == "item a number 3"
    # a delete, then a late upsert: stays deleted
    gone = p.change_for(_at(item("a", 0, deleted=True), 5))
    late = p.change_for(_at(item("a", 4), 4))
    assert gone is not None and late is not None
    assert await sink.apply(p, 1, [gone]) == 1
    assert await sink.apply(p, 1, [late]) == 0
    assert (await sink.dump(p, 1)).get("a") is None


def _at(event: DataEvent, position: int) -> DataEvent:
    from dataclasses import replace

    return replace(event, position=position)


def _title(doc: Any) -> str:
    return str(doc["metadata"]["title"] if "metadata" in doc else doc["title"])


class Crash(BaseException):
    """The process dying (as SystemExit would): not an error the projector handles, unlike an
    ``Exception`` from a sink, which it classifies as transient or as one event's fault."""


class CrashAfterWrite:
    """Delegates to a real sink, and dies after the n-th batch is written (before checkpoint)."""

    def __init__(self, inner: Sink, after: int) -> None:
        self.inner, self.after, self.kind = inner, after, inner.kind

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def apply(self, projection: Projection, version: int, changes: Any) -> int:
        return self._counted(await self.inner.apply(projection, version, changes))

    async def apply_runs(self, projection: Projection, version: int, runs: Any) -> int:
        apply_runs = self.inner.apply_runs  # type: ignore[attr-defined]  # FAISS only
        return self._counted(await apply_runs(projection, version, runs))

    def _counted(self, applied: int) -> int:
        self.after -= 1
        if self.after == 0:
            raise Crash("killed between the sink write and the checkpoint")
        return applied


async def test_crash_between_sink_write_and_checkpoint_converges(
    sink: Sink, store: EventStore, checkpoints: Checkpoints
) -> None:
    p = make_projection(kind_of(sink))
    await append_items(store, keys=50, rounds=6)
    crashing = CrashAfterWrite(sink, after=3)
    with pytest.raises(Crash):
        await Projector(p, crashing, store, checkpoints, batch_size=40).catch_up()  # type: ignore[arg-type]
    assert await checkpoints.get("items", 1) == 80  # two batches recorded, the third written only
    result = await Projector(p, sink, store, checkpoints, batch_size=40).catch_up()
    assert result.position == await store.head()
    assert await sink.dump(p, 1) == await fresh_replay(sink, store, checkpoints)


async def test_rebuild_while_live_events_arrive_then_flip_and_rollback(
    sink: Sink, store: EventStore, checkpoints: Checkpoints
) -> None:
    p = make_projection(kind_of(sink))
    await append_items(store, keys=100, rounds=5)
    assert await ensure_active(p, sink, checkpoints) == 1
    await Projector(p, sink, store, checkpoints).catch_up()
    before = await sink.dump(p, 1)

    async def live() -> None:  # 1,000 live events while the rebuild runs
        for r in range(10):
            await store.append([item(f"k{k}", 100 + r) for k in range(0, 200, 2)])
            await asyncio.sleep(0.01)

    seen: list[int] = []
    producer = asyncio.create_task(live())
    result = await rebuild(p, sink, store, checkpoints, batch_size=100,
                           progress=lambda pr: seen.append(pr.position))  # fmt: skip
    await producer
    assert (result.version, result.previous) == (2, 1)
    assert seen == sorted(seen) and seen
    assert await sink.active_version(p) == 2
    assert (await checkpoints.active("items")) == (2, 1)
    # the live tail after the flip is applied by whoever follows the active version next
    await Projector(p, sink, store, checkpoints, version=2).catch_up()
    assert await sink.dump(p, 2) == await fresh_replay(sink, store, checkpoints)
    # rollback restores the previous version as it was
    assert await rollback(p, sink, checkpoints) == (1, 2)
    assert await sink.active_version(p) == 1
    assert await sink.dump(p, 1) == before


async def test_rebuild_killed_halfway_resumes_and_completes(
    sink: Sink, store: EventStore, checkpoints: Checkpoints
) -> None:
    p = make_projection(kind_of(sink))
    await append_items(store, keys=100, rounds=6)
    await ensure_active(p, sink, checkpoints)
    crashing = CrashAfterWrite(sink, after=3)
    with pytest.raises(Crash):
        await rebuild(p, crashing, store, checkpoints, batch_size=100)  # type: ignore[arg-type]
    assert await checkpoints.active("items") == (1, None)  # nothing flipped
    halfway = await checkpoints.get("items", 2)
    assert 0 < halfway < await store.head()
    result = await rebuild(p, sink, store, checkpoints, batch_size=100)
    assert result.resumed and result.version == 2
    assert result.events < await store.head()  # it did not start over
    assert await sink.dump(p, 2) == await fresh_replay(sink, store, checkpoints)


async def test_other_event_types_are_not_read_and_the_checkpoint_reaches_the_head(
    sink: Sink, store: EventStore, checkpoints: Checkpoints
) -> None:
    p = make_projection(kind_of(sink))

    def viewed(key: str) -> DataEvent:  # a type the projection does not take
        return DataEvent(type="item.viewed", resource="items", key=key, payload={}, source="test")

    for r in range(3):
        await append_items(store, keys=20, rounds=1, seed=r)
        await store.append([viewed(f"k{k}") for k in range(30)])  # the last 30: none for us
    head = await store.head()
    seen: list[int] = []
    result = await Projector(p, sink, store, checkpoints, batch_size=7).catch_up(
        progress=lambda pr: seen.append(pr.position)
    )
    assert (result.position, result.events) == (head, 60)  # the 90 others were skipped
    assert seen[-1] == head and seen == sorted(seen)
    assert await checkpoints.get("items", 1) == head
    assert await sink.dump(p, 1) == await fresh_replay(sink, store, checkpoints)


async def test_a_rebuild_freezes_the_heap_it_starts_with_and_unfreezes_it(
    sink: Sink, store: EventStore, checkpoints: Checkpoints
) -> None:
    p = make_projection(kind_of(sink))
    await append_items(store, keys=30, rounds=2)
    frozen: list[int] = []
    assert gc.get_freeze_count() == 0
    await rebuild(p, sink, store, checkpoints, batch_size=10,
                  progress=lambda _: frozen.append(gc.get_freeze_count()))  # fmt: skip
    assert frozen and min(frozen) > 0 and gc.get_freeze_count() == 0
    crashing = CrashAfterWrite(sink, after=2)  # a failing rebuild unfreezes too
    with pytest.raises(Crash):
        await rebuild(p, crashing, store, checkpoints, batch_size=10)  # type: ignore[arg-type]
    assert gc.get_freeze_count() == 0
    gc.freeze()  # the application froze its heap itself: a rebuild leaves that as it is
    try:
        await rebuild(p, sink, store, checkpoints, batch_size=10)
        assert gc.get_freeze_count() > 0  # not unfrozen by the rebuild
    finally:
        gc.unfreeze()


async def test_vector_fields_replay_as_columns_gives_what_the_handler_gives(
    vectors: VectorIndex, store: EventStore, checkpoints: Checkpoints
) -> None:
    """The column path (payloads read with the vector apart, runs between deletes) against the
    same mapping called event by event: encoded and list vectors, deletes, a missing metadata
    field, other event types in between, batches that split runs."""
    from satellites_es.vectors.codec import encode_vector

    rng = random.Random(5)
    events: list[DataEvent] = []
    for r in range(6):
        for k in range(25):
            vector = [rng.uniform(-1, 1) for _ in range(DIM)]
            payload: dict[str, Any] = {"vector": encode_vector(vector) if k % 3 else vector}
            if k % 4:
                payload["title"] = f"k{k} r{r}"
            deleted = rng.random() < 0.15
            events.append(DataEvent(type="item.deleted" if deleted else "item.upserted",
                                    resource="items", key=f"k{k}", source="test",
                                    payload={} if deleted else payload))  # fmt: skip
        events.append(DataEvent(type="item.viewed", resource="items", key="x", payload={},
                                source="test"))  # fmt: skip
    await store.append(events)
    sink = FaissSink(vectors)
    columns = make_projection("faiss_fields", name="columns")
    by_event = Projection(name="by_event", version=1, sink="faiss", event_types=columns.event_types,
                          handler=lambda e: ITEM_FIELDS(e), options=columns.options)  # fmt: skip
    reads: list[str] = []
    for name in ("read", "read_payloads"):
        original = getattr(store, name)

        def spy(*args: Any, _name: str = name, _original: Any = original, **kw: Any) -> Any:
            reads.append(_name)
            return _original(*args, **kw)

        setattr(store, name, spy)
    await Projector(columns, sink, store, checkpoints, batch_size=7).catch_up()
    assert set(reads) == {"read_payloads"}
    reads.clear()
    await Projector(by_event, sink, store, checkpoints, batch_size=7).catch_up()
    assert set(reads) == {"read"}
    got, expected = await sink.dump(columns, 1), await sink.dump(by_event, 1)
    assert got == expected
    last = {e.key: e.type for e in events if e.type != "item.viewed"}
    live = {key for key, kind in last.items() if kind == "item.upserted"}
    assert {key for key, d in got.items() if d is not None} == live
    assert 10 < len(live) < 25  # and the rest were deleted last
    assert any(d is not None and d["metadata"] == {"title": None} for d in got.values())


async def test_a_payload_without_its_vector_stops_a_rebuild_pass_naming_it(
    vectors: VectorIndex, store: EventStore, checkpoints: Checkpoints
) -> None:
    """The rebuild policy ``stop``: a typed error naming the event; the good events of its
    batch are applied, the checkpoint stays before the batch (tests/integration/
    test_projection_faults.py has the live policy, which parks it and goes on)."""
    p = make_projection("faiss_fields")
    await store.append([item(f"k{k}", 0) for k in range(10)])
    await store.append(DataEvent(type="item.upserted", resource="items", key="bad",
                                 payload={"title": "no vector"}, source="test"))  # fmt: skip
    await store.append([item(f"k{k}", 1) for k in range(10)])
    sink = FaissSink(vectors)
    projector = Projector(p, sink, store, checkpoints, batch_size=5, mode="rebuild")
    with pytest.raises(PoisonEventError, match=r"position 11 \(key 'bad', id [0-9a-f-]{36}\)"
                       r".*has no 'vector'") as raised:  # fmt: skip
        await projector.catch_up()
    assert (raised.value.position, raised.value.key) == (11, "bad")
    assert await checkpoints.get("items", 1) == 10  # the two batches before it, no further
    assert len([d for d in (await sink.dump(p, 1)).values() if d is not None]) == 10
    with pytest.raises(ProjectionError, match="has no 'vector'"):
        ITEM_FIELDS(_at(DataEvent(type="item.upserted", resource="items", key="bad",
                                  payload={"title": "no vector"}, source="test"), 11))  # fmt: skip
