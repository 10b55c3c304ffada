"""The EventLog contract, written once and run against the Postgres log and its in-memory twin
(:class:`~satellites_es.memory.InMemoryEventLog`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from satellites_es.errors import ConcurrencyError, InvalidEventError
from satellites_es.events import DataEvent
from satellites_es.memory import InMemoryEventLog
from satellites_es.protocols import EventLog
from satellites_es.store import EventStore


@pytest.fixture(params=["memory", "postgres"])
def log(request: pytest.FixtureRequest) -> EventLog:
    if request.param == "memory":
        return InMemoryEventLog(max_payload_bytes=4096)
    store: EventStore = request.getfixturevalue("store")
    return store


def _event(key: str = "k1", type_: str = "doc.put", n: int = 0, **fields: object) -> DataEvent:
    return DataEvent(type=type_, resource="docs", key=key, payload={"n": n, "text": f"t{n}"},
                     source="test", **fields)  # type: ignore[arg-type]  # fmt: skip


async def _all(batches: AsyncGenerator[list[DataEvent], None]) -> list[list[DataEvent]]:
    return [batch async for batch in batches]


async def test_appends_get_dense_positions_and_per_stream_versions(log: EventLog) -> None:
    result = await log.append([_event("a"), _event("b"), _event("a")])
    assert [e.position for e in result.events] == [1, 2, 3]
    assert [e.version for e in result.events] == [1, 1, 2]
    assert result.last_position == 3 and result.duplicates == ()
    assert await log.head() == 3 and await log.sequence() == 3


async def test_an_event_id_is_stored_once(log: EventLog) -> None:
    first = _event("a", n=1)
    await log.append(first)
    again = await log.append([first, _event("b")])
    assert again.duplicates == (first.id,)
    assert [e.position for e in again.events] == [1, 2]
    assert await log.head() == 2


async def test_expected_version_is_checked(log: EventLog) -> None:
    await log.append(_event("a"), expected_version=0)
    await log.append(_event("a"), expected_version=1)
    with pytest.raises(ConcurrencyError):
        await log.append(_event("a"), expected_version=1)
    with pytest.raises(ConcurrencyError):
        await log.append(_event("new"), expected_version=3)
    with pytest.raises(InvalidEventError):
        await log.append([_event("a"), _event("b")], expected_version=2)
    assert await log.head() == 2


async def test_an_invalid_event_is_refused_and_nothing_is_stored(log: EventLog) -> None:
    too_big = DataEvent(type="doc.put", resource="docs", key="k", source="test",
                        payload={"text": "x" * 5000})  # fmt: skip
    with pytest.raises(InvalidEventError):
        await log.append([_event("a"), too_big])
    assert await log.head() == 0


async def test_read_is_ordered_bounded_batched_and_filtered(log: EventLog) -> None:
    await log.append([_event(f"k{i}", "doc.put" if i % 3 else "doc.gone", n=i) for i in range(10)])
    batches = await _all(log.read(2, batch_size=3))
    assert [[e.position for e in b] for b in batches] == [[3, 4, 5], [6, 7, 8], [9, 10]]
    assert [e.payload["n"] for e in batches[0]] == [2, 3, 4]
    until = await _all(log.read(0, until=4, batch_size=100))
    assert [e.position for b in until for e in b] == [1, 2, 3, 4]
    gone = await _all(log.read(0, types=["doc.gone"], batch_size=2))
    assert [[e.position for e in b] for b in gone] == [[1, 4], [7, 10]]
    assert await _all(log.read(10)) == []
    assert await _all(log.read(0, types=["nobody.reads.this"])) == []


async def test_read_payloads_gives_the_same_range_as_columns(log: EventLog) -> None:
    await log.append([_event(f"k{i}", "doc.put" if i % 2 else "doc.gone", n=i) for i in range(6)])
    pages = [p async for p in log.read_payloads(1, types=["doc.put"], text_field="text",
                                               batch_size=2)]  # fmt: skip
    assert [p.positions for p in pages] == [[2, 4], [6]]
    assert pages[0].keys == ["k1", "k3"] and pages[0].types == ["doc.put", "doc.put"]
    assert pages[0].payloads == [{"n": 1, "text": "t1"}, {"n": 3, "text": "t3"}]


async def test_read_at_returns_the_existing_positions_in_order(log: EventLog) -> None:
    await log.append([_event(f"k{i}") for i in range(5)])
    found = await log.read_at([4, 2, 99, 2])
    assert [(e.position, e.key) for e in found] == [(2, "k1"), (4, "k3")]


async def test_oldest_after_is_the_first_unread_events_record_time(log: EventLog) -> None:
    assert await log.oldest_after(0) is None
    await log.append([_event("a"), _event("b")])
    first, second = await log.oldest_after(0), await log.oldest_after(1)
    assert first is not None and second is not None and first <= second
    assert first.tzinfo is not None
    assert await log.oldest_after(2) is None


async def test_the_listener_wakes_on_an_append_and_times_out_otherwise(log: EventLog) -> None:
    async with log.listener() as wakeups:
        assert await wakeups.wait(0.05) is False
        waiting = asyncio.create_task(wakeups.wait(10.0))
        await asyncio.sleep(0.05)
        await log.append(_event("a"))
        assert await waiting is True
