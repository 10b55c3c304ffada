"""The CheckpointStore and Parking contracts, written once and run against Postgres and the
in-memory twins (:class:`~satellites_es.memory.InMemoryCheckpoints`,
:class:`~satellites_es.memory.InMemoryParking`)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from satellites_es.config import PostgresConfig
from satellites_es.errors import ProjectionError
from satellites_es.memory import InMemoryCheckpoints
from satellites_es.parking import Poison
from satellites_es.projections import Checkpoints
from satellites_es.protocols import CheckpointStore, Parking


@pytest.fixture(params=["memory", "postgres"])
def checkpoints(request: pytest.FixtureRequest) -> CheckpointStore:
    if request.param == "memory":
        return InMemoryCheckpoints()
    pool: asyncpg.Pool[asyncpg.Record] = request.getfixturevalue("pool")
    migrated: PostgresConfig = request.getfixturevalue("migrated")
    return Checkpoints(pool, migrated.schema)


@pytest.fixture
def parking(checkpoints: CheckpointStore) -> Parking:
    return checkpoints.parked


async def test_a_checkpoint_starts_at_zero_and_only_moves_forward(
    checkpoints: CheckpointStore,
) -> None:
    assert await checkpoints.get("items", 1) == 0
    await checkpoints.save("items", 1, 10)
    await checkpoints.save("items", 1, 7)  # a slower projector's late save
    assert await checkpoints.get("items", 1) == 10
    await checkpoints.save("items", 2, 3)
    await checkpoints.save("other", 5, 1)
    assert await checkpoints.versions("items") == [1, 2]
    await checkpoints.forget("items", 1)
    assert await checkpoints.versions("items") == [2]
    assert await checkpoints.get("items", 1) == 0


async def test_activation_keeps_the_previous_version_for_a_rollback(
    checkpoints: CheckpointStore,
) -> None:
    assert await checkpoints.active("items") is None
    assert await checkpoints.set_active("items", 1) is None
    assert await checkpoints.set_active("items", 1) is None  # the same again: no previous
    assert await checkpoints.set_active("items", 2) == 1
    row = await checkpoints.active("items")
    assert row is not None and (row.active, row.previous) == (2, 1)
    assert await checkpoints.rollback("items") == (1, 2)
    row = await checkpoints.active("items")
    assert row is not None and (row.active, row.previous) == (1, 2)


async def test_a_rollback_without_a_previous_version_is_refused(
    checkpoints: CheckpointStore,
) -> None:
    with pytest.raises(ProjectionError):
        await checkpoints.rollback("items")
    await checkpoints.set_active("items", 1)
    with pytest.raises(ProjectionError):
        await checkpoints.rollback("items")


async def test_wait_for_returns_once_the_active_version_is_there(
    checkpoints: CheckpointStore,
) -> None:
    await checkpoints.set_active("items", 2)
    await checkpoints.save("items", 1, 50)  # not the active version: does not count
    waiting = asyncio.create_task(checkpoints.wait_for("items", 5, timeout=10.0))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await checkpoints.save("items", 2, 5)
    await waiting
    with pytest.raises(ProjectionError):
        await checkpoints.wait_for("items", 6, timeout=0.05)


def _poison(position: int, error: str = "boom") -> Poison:
    return Poison(position, "ValueError", error, key=f"k{position}", event_id=f"id{position}",
                  event_type="doc.put")  # fmt: skip


async def test_parked_events_are_counted_once_per_position(parking: Parking) -> None:
    await parking.park("projection", "items", 1, [_poison(3), _poison(5)])
    await parking.park("projection", "items", 1, [_poison(3, "again")])
    await parking.park("projection", "items", 2, [_poison(3)])
    await parking.park("relay", "default", 0, [_poison(9)])
    await parking.park("relay", "default", 0, [])
    assert await parking.counts() == {("projection", "items"): 3, ("relay", "default"): 1}


async def test_a_retry_request_reaches_its_consumer_until_resolved(parking: Parking) -> None:
    await parking.park("projection", "items", 1, [_poison(3), _poison(5), _poison(7)])
    await parking.park("projection", "items", 2, [_poison(3)])
    assert await parking.retries("projection", "items", 1) == []
    assert await parking.request_retry("projection", "items", [5, 7]) == [5, 7]
    assert await parking.retries("projection", "items", 1) == [5, 7]
    assert await parking.retries("projection", "items", 2) == []
    await parking.park("projection", "items", 1, [_poison(7, "failed again")])  # parked again
    assert await parking.retries("projection", "items", 1) == [5]
    await parking.resolve("projection", "items", 1, [5])
    assert await parking.retries("projection", "items", 1) == []
    assert await parking.counts() == {("projection", "items"): 3}
    assert await parking.request_retry("projection", "items") == [3, 3, 7]  # every version
