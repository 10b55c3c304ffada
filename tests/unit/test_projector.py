"""The projector, follow loop and rebuild on the in-memory twins (log, checkpoints, parking,
sink): no service, in milliseconds. Faults are injected at the seams: a handler that raises on
one event, a sink that refuses one change, a sink that is unreachable on its n-th call. The same
code on Postgres and the real sinks: ``tests/integration/test_projections*.py``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from satellites_es.errors import BackendUnavailableError, PoisonEventError, ProjectionError
from satellites_es.events import DataEvent
from satellites_es.memory import InMemoryCheckpoints, InMemoryEventLog, InMemorySink
from satellites_es.projections import (
    Change,
    Delete,
    PoisonPolicy,
    Projection,
    Projector,
    Upsert,
    follow_active,
    rebuild,
    rollback,
)
from satellites_es.projections.projector import FollowerStatus
from tests.contract.support import eventually


def _handler(event: DataEvent) -> Upsert | Delete | None:
    if event.type == "item.deleted":
        return Delete(event.key)
    if event.payload.get("bad"):
        raise ValueError(f"cannot project {event.key}")
    return Upsert(event.key, {"n": event.payload["n"]})


def _projection(version: int = 1, poison: PoisonPolicy | None = None) -> Projection:
    return Projection(name="items", version=version, sink="redis", handler=_handler,
                      event_types=("item.upserted", "item.deleted"),
                      poison=poison or PoisonPolicy(attempts=1))  # fmt: skip


def _item(key: str, n: int, *, deleted: bool = False, **payload: object) -> DataEvent:
    return DataEvent(type="item.deleted" if deleted else "item.upserted", resource="items",
                     key=key, payload={} if deleted else {"n": n, **payload}, source="test")  # fmt: skip


class FaultySink(InMemorySink):
    """The in-memory sink with a fault per ``apply`` call: ``fault(call, changes)`` returns the
    error to raise (nothing is applied then), or None."""

    def __init__(self, fault: Callable[[int, Sequence[Change]], Exception | None]) -> None:
        super().__init__()
        self.fault = fault
        self.calls = 0

    async def apply(self, projection: Projection, version: int, changes: Sequence[Change]) -> int:
        self.calls += 1
        error = self.fault(self.calls, changes)
        if error is not None:
            raise error
        return await super().apply(projection, version, changes)


@pytest.fixture
def log() -> InMemoryEventLog:
    return InMemoryEventLog()


@pytest.fixture
def checkpoints() -> InMemoryCheckpoints:
    return InMemoryCheckpoints()


async def test_catch_up_applies_the_log_in_batches_and_checkpoints_each(
    log: InMemoryEventLog, checkpoints: InMemoryCheckpoints
) -> None:
    await log.append([_item(f"k{i % 4}", i) for i in range(10)])
    await log.append(_item("k1", 0, deleted=True))
    await log.append(DataEvent(type="other.type", resource="x", key="x", payload={}, source="t"))
    sink, p = InMemorySink(), _projection()
    seen: list[int] = []
    projector = Projector(p, sink, log, checkpoints, batch_size=3)
    result = await projector.catch_up(progress=lambda pr: seen.append(pr.position))
    assert (result.position, result.target, result.events, result.applied) == (12, 12, 11, 11)
    assert seen == [3, 6, 9, 11, 12]  # a checkpoint per batch, then the head read past
    assert await checkpoints.get("items", 1) == 12
    assert await sink.dump(p, 1) == {"k0": {"n": 8}, "k1": None, "k2": {"n": 6}, "k3": {"n": 7}}
    await projector.wait_for(12, timeout=1.0)


async def test_a_handler_error_parks_only_its_event(
    log: InMemoryEventLog, checkpoints: InMemoryCheckpoints
) -> None:
    await log.append([_item("a", 1), _item("b", 2, bad=True), _item("c", 3)])
    sink, p = InMemorySink(), _projection()
    projector = Projector(p, sink, log, checkpoints)
    await projector.catch_up()
    assert set(await sink.dump(p, 1)) == {"a", "c"}
    assert projector.parked_count == 1
    assert set(checkpoints.parked.rows) == {("projection", "items", 1, 2)}
    assert checkpoints.parked.rows[("projection", "items", 1, 2)]["poison"].event_id is not None


async def test_a_change_the_sink_refuses_is_isolated_and_parked(
    log: InMemoryEventLog, checkpoints: InMemoryCheckpoints
) -> None:
    await log.append([_item(f"k{i}", i) for i in range(8)])

    def refuse_k5(_call: int, changes: Sequence[Change]) -> Exception | None:
        if any(c.key == "k5" for c in changes):
            return ProjectionError("mapping rejects k5")
        return None

    sink, p = FaultySink(refuse_k5), _projection()
    projector = Projector(p, sink, log, checkpoints)
    result = await projector.catch_up()
    assert result.applied == 7 and set(await sink.dump(p, 1)) == {f"k{i}" for i in range(8)} - {
        "k5"
    }
    assert set(checkpoints.parked.rows) == {("projection", "items", 1, 6)}
    assert await checkpoints.get("items", 1) == 8


async def test_a_poison_event_stops_a_rebuild_under_the_stop_policy(
    log: InMemoryEventLog, checkpoints: InMemoryCheckpoints
) -> None:
    await log.append([_item("a", 1), _item("b", 2, bad=True)])
    sink = InMemorySink()
    with pytest.raises(PoisonEventError) as raised:
        await rebuild(_projection(poison=PoisonPolicy(attempts=1, rebuild="stop")), sink, log,
                      checkpoints, max_outage=0)  # fmt: skip
    assert raised.value.position == 2


async def test_an_unreachable_sink_leaves_the_checkpoint_and_the_next_pass_resumes(
    log: InMemoryEventLog, checkpoints: InMemoryCheckpoints
) -> None:
    await log.append([_item(f"k{i}", i) for i in range(9)])
    sink = FaultySink(
        lambda call, _c: BackendUnavailableError("redis", "down") if call == 2 else None
    )
    p = _projection()
    projector = Projector(p, sink, log, checkpoints, batch_size=3)
    with pytest.raises(BackendUnavailableError):
        await projector.catch_up()
    assert await checkpoints.get("items", 1) == 3  # the batch before the outage
    assert not checkpoints.parked.rows  # an outage is not the event's fault
    await projector.catch_up()
    assert await checkpoints.get("items", 1) == 9
    assert len(await sink.dump(p, 1)) == 9


async def test_follow_active_rides_out_an_outage_and_follows_new_events(
    log: InMemoryEventLog, checkpoints: InMemoryCheckpoints
) -> None:
    down = asyncio.Event()
    sink = FaultySink(lambda _call, _c: BackendUnavailableError("redis", "down")
                      if down.is_set() else None)  # fmt: skip
    p, stop, status = _projection(), asyncio.Event(), FollowerStatus()
    follower = asyncio.create_task(follow_active(p, sink, log, checkpoints, stop=stop,
                                                 poll_interval=0.2, status=status))  # fmt: skip
    try:
        await log.append(_item("a", 1))
        await eventually(lambda: status.state == "running" and "items_v1" in sink.targets
                         and "a" in sink.targets["items_v1"], timeout=5)  # fmt: skip
        down.set()
        await log.append(_item("b", 2))
        await eventually(lambda: status.state == "backend_down", timeout=5)
        assert status.backend == "redis"
        down.clear()
        await eventually(lambda: "b" in sink.targets["items_v1"], timeout=5)
        await eventually(lambda: status.state == "running", timeout=5)
        assert await checkpoints.get("items", 1) == 2
        assert await sink.active_version(p) == 1
    finally:
        stop.set()
        await follower


async def test_follow_active_retries_parked_events_an_operator_marked(
    log: InMemoryEventLog, checkpoints: InMemoryCheckpoints
) -> None:
    fixed = False

    def handler(event: DataEvent) -> Upsert | None:
        if event.payload.get("bad") and not fixed:
            raise ValueError("not yet")
        return Upsert(event.key, {"n": event.payload["n"]})

    p = Projection(name="items", version=1, sink="redis", handler=handler,
                   event_types=("item.upserted",))  # fmt: skip
    sink, stop = InMemorySink(), asyncio.Event()
    follower = asyncio.create_task(follow_active(p, sink, log, checkpoints, stop=stop,
                                                 poll_interval=0.05, retry_interval=0.01))  # fmt: skip
    try:
        await log.append([_item("a", 1), _item("b", 2, bad=True)])
        await eventually(lambda: bool(checkpoints.parked.rows), timeout=5)
        fixed = True
        assert await checkpoints.parked.request_retry("projection", "items") == [2]
        await eventually(lambda: not checkpoints.parked.rows, timeout=5)
        assert (await sink.dump(p, 1))["b"] == {"n": 2}
    finally:
        stop.set()
        await follower


async def test_a_rebuild_builds_a_new_version_flips_and_rolls_back(
    log: InMemoryEventLog, checkpoints: InMemoryCheckpoints
) -> None:
    await log.append([_item(f"k{i}", i) for i in range(20)])
    sink, v1 = InMemorySink(), _projection(1)
    await Projector(v1, sink, log, checkpoints).catch_up()
    await checkpoints.set_active("items", 1)
    await sink.activate(v1, 1)
    result = await rebuild(_projection(2), sink, log, checkpoints, batch_size=7)
    assert (result.version, result.previous, result.position, result.resumed) == (2, 1, 20, False)
    assert await sink.active_version(v1) == 2
    assert await sink.dump(v1, 2) == await sink.dump(v1, 1)
    assert await rollback(v1, sink, checkpoints) == (1, 2)
    assert await sink.active_version(v1) == 1
