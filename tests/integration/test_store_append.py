"""Appending to the event log: versions, idempotency, expected versions, transactions."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from satellites_es.errors import ConcurrencyError
from satellites_es.events import EventMetadata
from satellites_es.store import EventStore
from tests.integration.conftest import EventFactory


async def all_events(store: EventStore) -> list[tuple[int | None, str, str, int | None]]:
    return [(e.position, e.id, e.key, e.version) async for b in store.read() for e in b]


async def test_append_assigns_positions_and_per_stream_versions(
    store: EventStore, make_event: EventFactory
) -> None:
    batch = [make_event("a"), make_event("b"), make_event("a")]
    result = await store.append(batch)
    assert [(e.id, e.position, e.version) for e in result.events] == [
        (batch[0].id, 1, 1), (batch[1].id, 2, 1), (batch[2].id, 3, 2)
    ]  # fmt: skip
    assert result.duplicates == ()
    assert result.last_position == 3
    single = await store.append(make_event("b"))
    assert (single.events[0].position, single.events[0].version) == (4, 2)
    assert await store.head() == 4


async def test_stored_event_round_trips(store: EventStore, make_event: EventFactory) -> None:
    event = make_event(payload={"name": "Zoë", "tags": ["a", "b"], "n": 1.5, "nested": {"x": None}})
    stored = (await store.append(event)).events[0]
    [read] = await store.read_stream("users", "k1")
    assert read == stored
    assert read.to_dict() == {**event.to_dict(), "position": 1, "version": 1}


@pytest.mark.parametrize("odd", ["plain", "key", "source", "payload"])
async def test_batch_text_columns_round_trip_joined_or_as_arrays(
    store: EventStore, make_event: EventFactory, odd: str
) -> None:
    """A batch's text columns travel as one string each, split by the server on the unit
    separator, unless a value holds that character (then as arrays): either way every field
    reads back exactly, odd characters, metadata and payloads included."""
    sep = "\x1f"
    odd_key = f"k{sep}1" if odd == "key" else 'k\u00e9\U0001f600 ,{}"\\'
    events = [
        make_event(key=odd_key, source=f"s{sep}" if odd == "source" else "s,{}",
                   payload={"t": f"a{sep}b" if odd == "payload" else "x", "q": '"{,}"'},
                   metadata=EventMetadata(actor="a\u00e9", headers={"h": "v,{}"})),
        make_event(key=odd_key, type="user.renamed"),
        make_event(key="k2", resource="orders", payload={"empty": ""}),
    ]  # fmt: skip
    stored = await store.append(events)
    assert [(e.version, e.position) for e in stored.events] == [(1, 1), (2, 2), (1, 3)]
    read = [e async for page in store.read() for e in page]
    assert read == list(stored.events)
    assert [e.to_dict() for e in read] == [
        {**e.to_dict(), "position": i + 1, "version": v}
        for i, (e, v) in enumerate(zip(events, (1, 2, 1), strict=True))
    ]


async def test_same_event_id_is_stored_once(store: EventStore, make_event: EventFactory) -> None:
    event = make_event()
    first = await store.append(event)
    again = await store.append([event, make_event()])
    assert again.duplicates == (event.id,)
    assert again.events[0] == first.events[0]  # the stored position and version
    assert again.events[1].position == 2
    within = make_event()
    twice = await store.append([within, within])
    assert twice.duplicates == (within.id,)
    assert [e.position for e in twice.events] == [3]
    assert await store.head() == 3


async def test_expected_version(store: EventStore, make_event: EventFactory) -> None:
    await store.append(make_event("a"), expected_version=0)
    await store.append([make_event("a"), make_event("a")], expected_version=1)
    with pytest.raises(ConcurrencyError) as info:
        await store.append(make_event("a"), expected_version=1)
    assert (info.value.resource, info.value.key, info.value.expected, info.value.actual) == (
        "users", "a", 1, 3
    )  # fmt: skip
    with pytest.raises(ConcurrencyError):
        await store.append(make_event("new"), expected_version=2)
    assert await store.head() == 3


async def test_retry_with_expected_version_reports_duplicates(
    store: EventStore, make_event: EventFactory
) -> None:
    event = make_event("a")
    await store.append(event, expected_version=0)
    retried = await store.append(event, expected_version=0)
    assert retried.duplicates == (event.id,)


async def test_concurrent_appends_expecting_one_version_one_wins(
    store: EventStore, make_event: EventFactory
) -> None:
    await store.append(make_event("a"))
    attempts = [store.append(make_event("a"), expected_version=1) for _ in range(5)]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, ConcurrencyError) and r.actual == 2 for r in losers)
    assert [e.version for e in await store.read_stream("users", "a")] == [1, 2]


async def test_append_in_producer_transaction_commits_with_it(
    store: EventStore, pool: asyncpg.Pool[asyncpg.Record], make_event: EventFactory
) -> None:
    async with pool.acquire() as conn:
        await conn.execute("CREATE TEMP TABLE users (id text)")
        async with conn.transaction():
            await conn.execute("INSERT INTO users VALUES ('k1')")
            result = await store.append(make_event(), conn=conn)
        assert await conn.fetchval("SELECT count(*) FROM users") == 1
    assert await all_events(store) == [(1, result.events[0].id, "k1", 1)]


async def test_inside_a_transaction_duplicates_and_conflicts_are_told_apart(
    store: EventStore, pool: asyncpg.Pool[asyncpg.Record], make_event: EventFactory
) -> None:
    """A single event appended inside the producer's transaction is the producer's own INSERT
    (migration 0007); when that inserts nothing the append function says why, exactly as for
    an autocommitted append: a stored id is a duplicate with its stored version, a stream not
    at ``expected_version`` a conflict, and the same id twice in one call is stored once."""
    stored = (await store.append(make_event("a"))).events[0]
    async with pool.acquire() as conn:
        async with conn.transaction():
            again = await store.append(stored, conn=conn)
            assert again.duplicates == (stored.id,)
            assert [(e.id, e.version) for e in again.events] == [(stored.id, 1)]
            retried = await store.append(stored, conn=conn, expected_version=0)
            assert retried.duplicates == (stored.id,)  # a retry, not a conflict
            with pytest.raises(ConcurrencyError) as info:
                await store.append(make_event("a"), conn=conn, expected_version=0)
            assert (info.value.expected, info.value.actual) == (0, 1)
        async with conn.transaction():
            twice = make_event("a")
            result = await store.append([twice, twice], conn=conn, expected_version=1)
            assert result.duplicates == (twice.id,)
            assert [(e.id, e.version, e.position) for e in result.events] == [(twice.id, 2, None)]
    assert [(e.id, e.version) for e in await store.read_stream("users", "a")] == [
        (stored.id, 1), (twice.id, 2)
    ]  # fmt: skip


async def test_rolled_back_producer_transaction_leaves_no_event(
    store: EventStore, pool: asyncpg.Pool[asyncpg.Record], make_event: EventFactory
) -> None:
    class Boom(Exception):
        pass

    async with pool.acquire() as conn:
        with pytest.raises(Boom):
            async with conn.transaction():
                await store.append(make_event(), conn=conn)
                raise Boom
    assert await store.head() == 0
    assert await all_events(store) == []
    # The rolled-back position is reused: positions stay dense, nobody saw the first one.
    assert (await store.append(make_event())).last_position == 1


async def test_empty_append_is_a_no_op(store: EventStore) -> None:
    result = await store.append([])
    assert (result.events, result.duplicates, result.last_position) == ((), (), 0)


async def test_stored_id_mid_batch_keeps_positions_dense_and_versions_contiguous(
    store: EventStore, make_event: EventFactory
) -> None:
    """A stored id in the middle of a multi-stream batch (the careful path) leaves no hole."""
    old_a, old_b = make_event("a"), make_event("b")
    await store.append([old_a, old_b])
    batch = [make_event("a"), old_b, make_event("b"), make_event("a"), old_a, make_event("c")]
    result = await store.append(batch)
    assert result.duplicates == (old_b.id, old_a.id)
    assert [(e.id, e.key, e.position, e.version) for e in result.events] == [
        (batch[0].id, "a", 3, 2), (old_b.id, "b", 2, 1), (batch[2].id, "b", 4, 2),
        (batch[3].id, "a", 5, 3), (old_a.id, "a", 1, 1), (batch[5].id, "c", 6, 1),
    ]  # fmt: skip
    assert [p for p, *_ in await all_events(store)] == [1, 2, 3, 4, 5, 6]
    assert (await store.append([make_event("a"), make_event("c")])).last_position == 8


async def test_batch_retry_with_expected_version_reports_duplicates(
    store: EventStore, make_event: EventFactory
) -> None:
    batch = [make_event("a"), make_event("a")]
    await store.append(batch, expected_version=0)
    retried = await store.append(batch, expected_version=0)
    assert retried.duplicates == (batch[0].id, batch[1].id)
    assert [(e.position, e.version) for e in retried.events] == [(1, 1), (2, 2)]
    with pytest.raises(ConcurrencyError) as info:
        await store.append([batch[0], make_event("a")], expected_version=0)
    assert info.value.actual == 2
    assert await store.head() == 2
