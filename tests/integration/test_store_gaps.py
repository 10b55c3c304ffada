"""Gap safety: a reader that has passed position N never later sees a lower position commit.

The store serialises appends under a table lock held to commit, so a second appender waits for
the first to end, and position order is commit order. The control test shows the anomaly the
lock prevents, on a plain bigserial table.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import asyncpg
import pytest

from satellites_es.events import DataEvent
from satellites_es.store import EventStore
from tests.integration.conftest import EventFactory

Pool = asyncpg.Pool


class Reader:
    """Follows the log the way the relay does: ``read(after=cursor)``, cursor = last seen."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.cursor = 0
        self.seen: list[DataEvent] = []

    async def poll(self) -> list[DataEvent]:
        new = [e async for batch in self.store.read(after=self.cursor) for e in batch]
        if new:
            self.cursor = new[-1].position or 0
        self.seen.extend(new)
        return new


async def test_second_appender_waits_and_reader_skips_nothing(
    store: EventStore, pool: Pool, make_event: EventFactory
) -> None:
    reader = Reader(store)
    e1, e2 = make_event("a"), make_event("b")
    t2_appended, t2_may_commit = asyncio.Event(), asyncio.Event()

    async def second() -> None:
        async with pool.acquire() as conn, conn.transaction():
            await store.append(e2, conn=conn)
            t2_appended.set()
            await t2_may_commit.wait()

    async with pool.acquire() as conn1:
        tx1 = conn1.transaction()
        await tx1.start()
        assert (await store.append(e1, conn=conn1)).last_position == 1
        t2 = asyncio.create_task(second(), name="t2")
        await asyncio.sleep(0.5)
        assert not t2_appended.is_set(), "T2 must wait for T1's lock"
        assert await reader.poll() == []  # readers are not blocked; nothing committed yet
        await tx1.commit()
    await asyncio.wait_for(t2_appended.wait(), 5)
    assert [e.id for e in await reader.poll()] == [e1.id]  # T2 appended but not committed
    t2_may_commit.set()
    await t2
    assert [e.id for e in await reader.poll()] == [e2.id]
    assert [(e.id, e.position) for e in reader.seen] == [(e1.id, 1), (e2.id, 2)]


async def test_control_a_bigserial_log_lets_the_reader_skip(pool: Pool, pg_schema: str) -> None:
    """The anomaly the lock prevents, on a plain bigserial table with no lock."""
    plain = f'"{pg_schema}".plain'
    await pool.execute(f"CREATE TABLE {plain} (position bigserial PRIMARY KEY, v text)")
    async with pool.acquire() as c1, pool.acquire() as c2:
        tx1 = c1.transaction()
        await tx1.start()
        await c1.execute(f"INSERT INTO {plain} (v) VALUES ('t1')")  # takes position 1
        await c2.execute(f"INSERT INTO {plain} (v) VALUES ('t2')")  # position 2, commits first
        cursor = await pool.fetchval(f"SELECT max(position) FROM {plain}")
        await tx1.commit()
    skipped = await pool.fetch(f"SELECT v FROM {plain} WHERE position > $1", cursor)
    assert cursor == 2 and skipped == []  # 't1' committed below the cursor: never seen


async def test_concurrent_writers_while_a_reader_follows(
    store: EventStore, pool: Pool, make_event: EventFactory
) -> None:
    writers, per_writer = 8, 200
    keys = [f"k{i}" for i in range(6)]
    done = asyncio.Event()
    rng = random.Random(7)

    async def writer(w: int) -> list[str]:
        ids = []
        async with pool.acquire() as conn:
            for i in range(per_writer):
                event = make_event(rng.choice(keys), payload={"w": w, "i": i})
                ids.append(event.id)
                if i % 2:  # half in a producer transaction that stays open a moment
                    async with conn.transaction():
                        await store.append(event, conn=conn)
                        await asyncio.sleep(rng.random() / 2000)
                else:
                    await store.append(event)
        return ids

    async def follow(reader: Reader) -> None:
        while not done.is_set() or await reader.poll():
            await reader.poll()
            await asyncio.sleep(0.002)

    reader = Reader(store)
    follower = asyncio.create_task(follow(reader), name="follower")
    written = await asyncio.gather(*(writer(w) for w in range(writers)))
    done.set()
    await asyncio.wait_for(follower, 30)

    positions = [e.position for e in reader.seen]
    assert len(reader.seen) == writers * per_writer
    assert {e.id for e in reader.seen} == {i for ids in written for i in ids}  # each once
    assert positions == list(range(1, writers * per_writer + 1))  # increasing, dense
    versions: dict[str, list[int | None]] = defaultdict(list)
    for event in reader.seen:
        versions[event.key].append(event.version)
    for key, seen in versions.items():
        assert seen == list(range(1, len(seen) + 1)), key


async def test_a_stale_repeatable_read_snapshot_is_refused_not_misnumbered(
    store: EventStore, pool: Pool, make_event: EventFactory
) -> None:
    from satellites_es.errors import ConcurrencyError

    async with pool.acquire() as conn:
        tx = conn.transaction(isolation="repeatable_read")
        await tx.start()
        await conn.fetchval("SELECT 1")  # the snapshot is taken here
        await store.append(make_event("a"))  # commits after that snapshot
        try:
            with_stale = store.append(make_event("a"), conn=conn)
            with pytest.raises(ConcurrencyError):
                await with_stale
        finally:
            await tx.rollback()
    assert [e.version for e in await store.read_stream("users", "a")] == [1]


async def test_a_stale_snapshot_retrying_a_stored_id_in_a_batch_is_refused(
    store: EventStore, pool: Pool, make_event: EventFactory
) -> None:
    from satellites_es.errors import ConcurrencyError

    event = make_event("a")
    async with pool.acquire() as conn:
        tx = conn.transaction(isolation="repeatable_read")
        await tx.start()
        await conn.fetchval("SELECT 1")  # the snapshot is taken here
        await store.append(event)  # commits after that snapshot
        try:
            with pytest.raises(ConcurrencyError):
                await store.append([event, make_event("b")], conn=conn)
        finally:
            await tx.rollback()
    assert [e.id for e in await store.read_stream("users", "a")] == [event.id]
    assert await store.read_stream("users", "b") == []
