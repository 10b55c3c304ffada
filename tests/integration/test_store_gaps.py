"""Gap safety without a log-wide lock: a reader that has passed position N never later sees a
lower position commit, and no producer waits for another (unless they append to one stream).

Appends inside a producer's transaction are stored pending and numbered by the sequencer after
they commit (``EventStore`` module docstring). These tests hold transactions open, roll some
back, race producers on one stream and follow the log with readers while they do. The control
test shows the anomaly on a plain bigserial table.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import Iterable

import asyncpg
import pytest

from satellites_es.config import EventLogConfig, PostgresConfig
from satellites_es.errors import ConcurrencyError, PersistenceError
from satellites_es.events import DataEvent
from satellites_es.store import EventStore
from tests.integration.conftest import EventFactory

Pool = asyncpg.Pool


class Reader:
    """Follows the log the way the relay does: ``read(after=cursor)``, cursor = last seen.
    ``read`` without ``until`` sequences first, as every follower does before it reads."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.cursor = 0
        self.seen: list[DataEvent] = []
        self.arrived: dict[str, float] = {}  # event id -> monotonic time it was read

    async def poll(self) -> list[DataEvent]:
        new = [e async for batch in self.store.read(after=self.cursor) for e in batch]
        if new:
            assert (new[0].position or 0) > self.cursor, "read below the cursor"
            self.cursor = new[-1].position or 0
        now = time.monotonic()
        self.arrived.update((e.id, now) for e in new)
        self.seen.extend(new)
        return new

    async def follow(self, done: asyncio.Event) -> None:
        """Read whenever the log's NOTIFY wakes us (or every 50 ms), until ``done`` and idle."""
        async with self.store.listener() as listener:
            while True:
                finished = done.is_set()
                await self.poll()
                if finished and not await self.poll():
                    return
                await listener.wait(0.05)

    def check(self, committed: Iterable[str], rolled_back: Iterable[str]) -> None:
        """Each committed event read exactly once, none rolled back, positions strictly
        increasing and dense, each key's versions 1..n in position order."""
        ids = [e.id for e in self.seen]
        assert len(ids) == len(set(ids)), "an event was read twice"
        assert set(ids) == set(committed)
        assert not set(ids) & set(rolled_back)
        assert [e.position for e in self.seen] == list(range(1, len(self.seen) + 1))
        versions: dict[str, list[int | None]] = defaultdict(list)
        for event in self.seen:
            versions[event.key].append(event.version)
        for key, seen in versions.items():
            assert seen == list(range(1, len(seen) + 1)), key


async def test_a_held_transaction_delays_only_itself(
    store: EventStore, pool: Pool, make_event: EventFactory
) -> None:
    """One producer appends and keeps its transaction open 2.5 s. Others (autocommitted and in
    transactions of their own, other streams) commit hundreds of events meanwhile, each read
    within 0.5 s by a follower; the held event is read once it commits, above them all."""
    reader = Reader(store)
    done = asyncio.Event()
    follower = asyncio.create_task(reader.follow(done), name="follower")
    held = make_event("held")
    committed: list[tuple[str, float]] = []  # (id, when it committed)

    async def others(stop: asyncio.Event, p: int) -> None:
        async with pool.acquire() as conn:
            i = 0
            while not stop.is_set():
                event = make_event(f"other-{p}-{i % 5}", payload={"i": i})
                if i % 2:
                    await store.append(event)
                else:
                    async with conn.transaction():
                        await store.append(event, conn=conn)
                committed.append((event.id, time.monotonic()))
                i += 1
                await asyncio.sleep(0.002)

    stop = asyncio.Event()
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        assert (await store.append(held, conn=conn)).last_position == 0  # pending: no position
        producers = [asyncio.create_task(others(stop, p)) for p in range(4)]
        await asyncio.sleep(2.5)
        stop.set()
        await asyncio.gather(*producers)
        assert held.id not in reader.arrived
        await asyncio.sleep(0.2)  # the follower reads the others' last events
        read_before = [e.position or 0 for e in reader.seen]
        await tx.commit()
        committed_at = time.monotonic()
    done.set()
    await asyncio.wait_for(follower, 30)

    assert len(committed) >= 200, "other producers were held up"
    late = [(i, reader.arrived[i] - at) for i, at in committed if reader.arrived[i] - at > 0.5]
    assert not late, f"{len(late)} events read later than 0.5 s after commit: {late[:3]}"
    [read_held] = [e for e in reader.seen if e.id == held.id]
    assert reader.arrived[held.id] >= committed_at  # read once it committed, not before
    assert (read_held.position or 0) > max(read_before)  # numbered above all read meanwhile
    reader.check([i for i, _ in committed] + [held.id], [])


async def test_a_second_producer_does_not_wait_for_the_first(
    store: EventStore, pool: Pool, make_event: EventFactory
) -> None:
    async with pool.acquire() as c1, pool.acquire() as c2:
        tx1 = c1.transaction()
        await tx1.start()
        await store.append(make_event("a"), conn=c1)
        async with asyncio.timeout(1):  # no lock to wait for: both kinds go through at once
            async with c2.transaction():
                await store.append([make_event("b"), make_event("c")], conn=c2)
            assert (await store.append(make_event("d"))).last_position == 3
            assert (await store.append([make_event("e"), make_event("f")])).last_position == 5
        assert [e.key for e in await Reader(store).poll()] == ["b", "c", "d", "e", "f"]
        await tx1.rollback()
    assert await store.sequence() == 5  # the rolled-back append left no hole and no row


async def test_sixteen_writers_with_rollbacks_while_two_readers_follow(
    store: EventStore,
    migrated: PostgresConfig,
    log_config: EventLogConfig,
    make_event: EventFactory,
) -> None:
    """16 producers: random transaction lengths, single and batched appends, autocommitted and
    in transactions, 10% rolled back, streams shared between producers. Two readers follow."""
    pool = await asyncpg.create_pool(migrated.dsn, min_size=1, max_size=24)  # all at once
    store = EventStore(pool, schema=migrated.schema, config=log_config, dsn=migrated.dsn)
    try:
        await _sixteen_writers(store, pool, make_event)
    finally:
        await pool.close()


async def _sixteen_writers(store: EventStore, pool: Pool, make_event: EventFactory) -> None:
    writers, per_writer = 16, 60
    keys = [f"k{i}" for i in range(12)]
    rng = random.Random(13)
    committed: list[str] = []
    rolled_back: list[str] = []

    async def writer(w: int) -> None:
        async with pool.acquire() as conn:
            for i in range(per_writer):
                events = [make_event(rng.choice(keys), payload={"w": w, "i": i, "j": j})
                          for j in range(rng.choice((1, 1, 1, 3)))]  # fmt: skip
                if i % 4 == 0:  # autocommitted (the fast path when the sequencer lock is free)
                    await store.append(events)
                    committed.extend(e.id for e in events)
                    continue
                rollback = rng.random() < 0.1
                tx = conn.transaction()
                await tx.start()
                try:
                    await store.append(events, conn=conn)
                    await asyncio.sleep(rng.random() * 0.02)  # the producer's other work
                finally:
                    await (tx.rollback() if rollback else tx.commit())
                (rolled_back if rollback else committed).extend(e.id for e in events)

    done = asyncio.Event()
    readers = [Reader(store), Reader(store)]
    followers = [asyncio.create_task(r.follow(done), name=f"reader{n}")
                 for n, r in enumerate(readers)]  # fmt: skip
    await asyncio.gather(*(writer(w) for w in range(writers)))
    done.set()
    await asyncio.wait_for(asyncio.gather(*followers), 60)
    assert rolled_back, "the mix had no rollback"
    for reader in readers:
        reader.check(committed, rolled_back)


async def test_one_stream_from_many_producers_keeps_version_order(
    store: EventStore, pool: Pool, make_event: EventFactory
) -> None:
    """Eight producers append to ONE stream at once, without expected_version: each append
    waits only for the in-flight one before it, none fails, versions 1..n in position order."""

    async def producer(p: int) -> list[str]:
        ids = []
        async with pool.acquire() as conn:
            for i in range(25):
                event = make_event("shared", payload={"p": p, "i": i})
                if (p + i) % 2:
                    async with conn.transaction():
                        await store.append(event, conn=conn)
                else:
                    await store.append(event)
                ids.append(event.id)
        return ids

    written = await asyncio.gather(*(producer(p) for p in range(8)))
    reader = Reader(store)
    await reader.poll()
    reader.check([i for ids in written for i in ids], [])
    assert [e.version for e in await store.read_stream("users", "shared")] == list(range(1, 201))


async def test_same_expected_version_from_two_producers_one_wins(
    store: EventStore, pool: Pool, make_event: EventFactory
) -> None:
    await store.append(make_event("acct"))
    # Held: the second producer waits for the first's version, then loses.
    async with pool.acquire() as c1, pool.acquire() as c2:
        tx1 = c1.transaction()
        await tx1.start()
        await store.append(make_event("acct"), conn=c1, expected_version=1)

        async def second() -> None:
            async with c2.transaction():
                await store.append(make_event("acct"), conn=c2, expected_version=1)

        loser = asyncio.create_task(second())
        await asyncio.sleep(0.3)
        assert not loser.done(), "the same stream's append must wait for the in-flight one"
        await tx1.commit()
        with pytest.raises(ConcurrencyError) as caught:
            await asyncio.wait_for(loser, 5)
    assert caught.value.actual == 2
    # Raced: 20 autocommitted appends with expected_version=2, exactly one wins.
    outcomes = await asyncio.gather(
        *(store.append(make_event("acct"), expected_version=2) for _ in range(20)),
        return_exceptions=True,
    )
    assert sum(not isinstance(o, BaseException) for o in outcomes) == 1
    assert all(isinstance(o, ConcurrencyError) for o in outcomes if isinstance(o, BaseException))
    assert [e.version for e in await store.read_stream("users", "acct")] == [1, 2, 3]


async def test_an_unrelated_long_transaction_does_not_stall_readers(
    store: EventStore, pool: Pool, make_event: EventFactory
) -> None:
    """Idle in transaction with an old snapshot (REPEATABLE READ, having read the log), and
    one that holds a row lock elsewhere: readers and producers go on as if they were not there."""
    async with pool.acquire() as idle, pool.acquire() as locker:
        tx_idle = idle.transaction(isolation="repeatable_read")
        await tx_idle.start()
        await idle.fetchval(f'SELECT count(*) FROM "{store.schema}".events')
        tx_lock = locker.transaction()
        await tx_lock.start()
        await locker.execute(f'LOCK TABLE "{store.schema}".relay_cursors IN EXCLUSIVE MODE')
        try:
            reader = Reader(store)
            async with asyncio.timeout(2):
                async with pool.acquire() as conn, conn.transaction():
                    in_tx = make_event("x")
                    await store.append(in_tx, conn=conn)
                auto = make_event("y")
                await store.append(auto)
                assert [e.id for e in await reader.poll()] == [in_tx.id, auto.id]
        finally:
            await tx_lock.rollback()
            await tx_idle.rollback()


async def test_positions_of_an_append_inside_a_transaction_come_after_commit(
    store: EventStore, pool: Pool, make_event: EventFactory
) -> None:
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        result = await store.append([make_event("a"), make_event("b")], conn=conn)
        assert [e.position for e in result.events] == [None, None]
        assert [e.version for e in result.events] == [1, 1]
        with pytest.raises(PersistenceError, match="committed"):
            await store.sequenced(result)  # not committed yet: no positions to give
        assert await store.pending() == 0  # not committed: nobody sees it
        await tx.commit()
    assert await store.pending() == 2  # committed, not numbered yet (no reader has run)
    done = await store.sequenced(result)
    assert [e.position for e in done.events] == [1, 2]
    assert await store.pending() == 0
    retried = await store.append(result.events[0])  # a retry of a sequenced event
    assert retried.duplicates == (result.events[0].id,) and retried.last_position == 1


async def test_the_fast_path_never_holds_the_sequencer_behind_a_held_stream(
    store: EventStore, pool: Pool, make_event: EventFactory
) -> None:
    """An autocommitted append to a stream whose in-flight append is held open must wait for
    it, but not while holding the sequencer: other producers' events are still numbered and
    read meanwhile, and the waiting append lands right after the held one commits."""
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await store.append(make_event("busy"), conn=conn)
        waiting = asyncio.create_task(store.append(make_event("busy")))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        async with asyncio.timeout(1):
            async with pool.acquire() as other, other.transaction():
                free = make_event("free")
                await store.append(free, conn=other)
            assert [e.id for e in await Reader(store).poll()] == [free.id]
        await tx.commit()
    result = await asyncio.wait_for(waiting, 5)
    assert (result.events[0].version, result.last_position) == (2, 3)


async def test_control_a_bigserial_log_lets_the_reader_skip(pool: Pool, pg_schema: str) -> None:
    """The anomaly positions-after-commit prevent, on a plain bigserial table."""
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


async def test_a_stale_repeatable_read_snapshot_is_refused_not_misnumbered(
    store: EventStore, pool: Pool, make_event: EventFactory
) -> None:
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
