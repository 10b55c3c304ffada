"""The sequencer's floor (migration 0006): sequencing costs the same however many events were
appended inside transactions since the last VACUUM, and the floor never passes a pending number
whose transaction may still commit.

The cost is counted in buffers (``EXPLAIN (ANALYZE, BUFFERS)`` of one sequencer call with nothing
to number, which counts the function's own statements), not in time: the count does not depend
on the machine's load. The timings are in BENCHMARKS.md (issue 13).
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import asyncpg
import pytest

from satellites_es.config import PostgresConfig
from satellites_es.migrate import downgrade, upgrade
from satellites_es.store import EventStore
from tests.integration.conftest import EventFactory

Pool = asyncpg.Pool


async def _state(pool: Pool, schema: str) -> tuple[int, int, int | None]:
    row = await pool.fetchrow(f'SELECT floor, candidate, horizon FROM "{schema}".sequencer_state')
    assert row is not None
    return row["floor"], row["candidate"], row["horizon"]


async def _allocated(pool: Pool, schema: str) -> int:
    value = await pool.fetchval(
        f"SELECT coalesce(pg_sequence_last_value('\"{schema}\".events_pending_seq'), 0)"
    )
    return int(value)


async def _floor_reaches(store: EventStore, pool: Pool, target: int, timeout: float = 30) -> None:
    """Sequence until the floor reaches ``target`` (it trails by a run or two; a transaction
    elsewhere on the server that holds an id holds it back for as long as it runs)."""
    deadline = time.monotonic() + timeout
    while (await _state(pool, store.schema))[0] < target:
        assert time.monotonic() < deadline, (
            f"the floor stayed at {await _state(pool, store.schema)}"
        )
        await store.sequence()
        await asyncio.sleep(0.02)


async def _buffers(pool: Pool, schema: str) -> int:
    """Shared buffers one sequencer call touches (hits and reads)."""
    plan = await pool.fetchval(
        f'EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT "{schema}".sequence_events_v1(NULL)'
    )
    node = json.loads(plan)[0]["Plan"]
    return int(node["Shared Hit Blocks"]) + int(node["Shared Read Blocks"])


async def _append_in_transactions(store: EventStore, pool: Pool, make_event: EventFactory,
                                  n: int) -> None:  # fmt: skip
    """``n`` events appended inside transactions (pending, then numbered: each leaves a dead
    index entry behind), 200 per transaction."""
    for start in range(0, n, 200):
        async with pool.acquire() as conn, conn.transaction():
            await store.append([make_event(f"k{i % 50}") for i in range(start, start + 200)],
                               conn=conn)  # fmt: skip
        await store.sequence()


async def test_an_idle_sequencer_call_costs_the_same_after_many_sequenced_events(
    store: EventStore, pool: Pool, make_event: EventFactory
) -> None:
    await store.sequence()
    empty = await _buffers(pool, store.schema)
    await _append_in_transactions(store, pool, make_event, 10_000)
    await _floor_reaches(store, pool, await _allocated(pool, store.schema))
    after = await _buffers(pool, store.schema)
    # The same call without the floor (the scan from 0, as before migration 0006) steps over
    # the 10,000 dead entries the numbered rows left in the primary key.
    await pool.execute(f'UPDATE "{store.schema}".sequencer_state SET floor = 0, candidate = 0,'
                       " horizon = NULL")  # fmt: skip
    without_floor = await _buffers(pool, store.schema)
    # ~300 buffers without the floor, 8 with it and 12 on the empty log when run alone; the
    # state row's dead versions, which another session's old snapshot keeps from being pruned,
    # add the same to all three, so the margins are checked, not the counts
    assert without_floor - after >= 100, (empty, after, without_floor)
    assert after <= without_floor / 3, (empty, after, without_floor)
    assert await store.pending() == 0


async def test_a_held_transaction_holds_the_floor_back_not_the_numbering(
    store: EventStore, pool: Pool, make_event: EventFactory
) -> None:
    await store.append(make_event("warm"))
    held_event = make_event("held")
    async with pool.acquire() as holder:
        tx = holder.transaction()
        await tx.start()
        try:
            await store.append(held_event, conn=holder)
            held_number = await _allocated(pool, store.schema)
            # others commit meanwhile, and are numbered at once
            for _ in range(5):
                async with pool.acquire() as conn, conn.transaction():
                    await store.append([make_event("other") for _ in range(20)], conn=conn)
            head = await store.sequence()
            for _ in range(10):
                await store.sequence()
                await asyncio.sleep(0.01)
            floor = (await _state(pool, store.schema))[0]
            assert floor < held_number, "the floor passed a number still held by a transaction"
            assert await store.head() == head
            read = [e async for page in store.read() for e in page]
            assert len(read) == 101 and held_event.id not in {e.id for e in read}
        finally:
            await tx.commit()
    head = await store.sequence()
    [last] = [e async for page in store.read(after=head - 1) for e in page]
    assert last.id == held_event.id  # numbered once it committed, above everything read
    await _floor_reaches(store, pool, held_number)


async def test_the_v3_append_functions_are_gone_and_come_back_on_downgrade(
    pg_config: PostgresConfig,
) -> None:
    """A process still calling v3 (which took pending numbers before an id) fails loudly."""
    await upgrade(pg_config, "0005")
    await upgrade(pg_config)
    conn = await asyncpg.connect(pg_config.dsn)
    try:
        with pytest.raises(asyncpg.UndefinedFunctionError):
            await conn.fetch(f"SELECT * FROM \"{pg_config.schema}\".append_event_v3('i', 'r',"
                             " 'k', 't', 's', '{}', now(), '{}', NULL, 'c', false)")  # fmt: skip
        await downgrade(pg_config, "0005")  # and back: v3 as it was, no floor
        names = await conn.fetchval(
            "SELECT array_agg(proname ORDER BY proname) FROM pg_proc"
            " WHERE pronamespace = $1::regnamespace AND proname LIKE 'append%'",
            pg_config.schema,
        )  # fmt: skip
        assert names == ["append_event_v3", "append_events_v3"]
        assert not await conn.fetchval(
            "SELECT to_regclass($1)", f'"{pg_config.schema}".sequencer_state'
        )
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{pg_config.schema}" CASCADE')
        await conn.close()


def test_the_v4_append_functions_take_the_transaction_id_before_anything_else() -> None:
    """The v4 functions are the frozen v3 blocks with one call first; nothing else differs."""
    from satellites_es.sql import load, transaction_id_first

    for old, new in (("append_event_v3", "append_event_v4"),
                     ("append_events_v3", "append_events_v4")):  # fmt: skip
        v3 = load(f"create_{old}")
        v4 = transaction_id_first(v3, old, new)
        body = v4[v4.index("\nBEGIN\n") + 1 :]
        first = body.splitlines()[1].strip()
        assert first.startswith("PERFORM pg_current_xact_id();")
        assert v4.replace(new, old).replace(body.splitlines()[1] + "\n", "", 1) == v3
        assert "nextval" not in v4[: v4.index("PERFORM pg_current_xact_id()")]
    with pytest.raises(ValueError):
        transaction_id_first(load("create_append_event_v3"), "append_event_v2", "x")
    paragraph = load("create_sequencer_state_v1")
    assert re.search(r"append_event_v4, append_events_v4", paragraph)


async def test_an_autocommitted_append_numbers_waiting_events_first(
    store: EventStore, pool: Pool, make_event: EventFactory
) -> None:
    """The fast path of an autocommitted append numbers the committed pending events before its
    own event (a stream's version order stays its position order), then takes head + 1."""
    async with pool.acquire() as conn, conn.transaction():
        waiting = (await store.append(make_event("s"), conn=conn)).events[0]
    assert waiting.position is None  # committed, pending: nobody has sequenced since
    after = (await store.append(make_event("s"))).events[0]  # autocommitted, same stream
    assert (after.position, after.version) == (2, 2)
    assert [(e.id, e.position, e.version) for e in await store.read_stream("users", "s")] == [
        (waiting.id, 1, 1), (after.id, 2, 2)
    ]  # fmt: skip
    alone = (await store.append(make_event("t"))).events[0]  # nothing waits now
    assert alone.position == 3
    assert [e.position async for page in store.read() for e in page] == [1, 2, 3]
