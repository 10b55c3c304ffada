"""The projector, follow loop and rebuild on the in-memory twins (log, checkpoints, parking,
sink): no service, in milliseconds. Faults are injected at the seams: a handler that raises on
one event, a sink that refuses one change, a sink that is unreachable on its n-th call. The same
code on Postgres and the real sinks: ``tests/integration/test_projections*.py``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

import pytest

from satellites_es.errors import (
    BackendUnavailableError,
    PoisonEventError,
    ProjectionError,
    UpcastError,
)
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


class FaultyLog(InMemoryEventLog):
    """The in-memory log with a fault per page read (what a query is on Postgres): ``fault(read)``
    returns the error to raise instead of the ``read``-th page since :attr:`reads` was last
    zeroed, or None."""

    def __init__(self, fault: Callable[[int], Exception | None]) -> None:
        super().__init__()
        self.fault = fault
        self.reads = 0

    async def read(self, after: int = 0, **options: Any) -> AsyncGenerator[list[DataEvent], None]:
        async for page in super().read(after, **options):
            self.reads += 1
            error = self.fault(self.reads)
            if error is not None:
                raise error
            yield page


def _postgres_down() -> BackendUnavailableError:
    return BackendUnavailableError("postgres", "connection lost")


async def _fold(log: InMemoryEventLog, projection: Projection) -> dict[str, Any]:
    """What the projection of the whole log holds, built on fault-free twins."""
    plain, sink = InMemoryEventLog(), InMemorySink()
    await plain.append(list(log.events))
    await Projector(projection, sink, plain, InMemoryCheckpoints()).catch_up()
    return dict(await sink.dump(projection, projection.version))


async def _live_v1(log: InMemoryEventLog, checkpoints: InMemoryCheckpoints) -> InMemorySink:
    """A sink serving version 1 of the projection, built and flipped to on the whole log."""
    sink, v1 = InMemorySink(), _projection(1)
    await Projector(v1, sink, log, checkpoints).catch_up()
    await checkpoints.set_active("items", 1)
    await sink.activate(v1, 1)
    return sink


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


async def test_a_rebuild_waits_out_a_log_read_failing_on_its_nth_call(
    checkpoints: InMemoryCheckpoints,
) -> None:
    """A transient read failure halfway (Postgres lost on the 3rd page) is retried from the
    checkpoint; the rebuild completes equal to the log and flips."""
    fired: list[int] = []

    def lost_on_third(read: int) -> Exception | None:
        if read == 3 and not fired:
            fired.append(read)
            return _postgres_down()
        return None

    log = FaultyLog(lost_on_third)
    await log.append([_item(f"k{i % 7}", i) for i in range(20)])
    sink = await _live_v1(log, checkpoints)
    log.reads = 0
    result = await rebuild(_projection(2), sink, log, checkpoints, batch_size=4)
    assert fired == [3]  # the fault fired, once
    assert (result.version, result.previous, result.position) == (2, 1, 20)
    assert await sink.dump(_projection(), 2) == await _fold(log, _projection())
    assert await sink.active_version(_projection()) == 2
    active = await checkpoints.active("items")
    assert active is not None and (active.active, active.previous) == (2, 1)


async def test_a_permanent_log_failure_stops_a_rebuild_typed_with_nothing_flipped(
    checkpoints: InMemoryCheckpoints,
) -> None:
    """A read that can never succeed (an upcaster failing on a stored event) is raised as it
    is, at once; version 1 keeps serving, version 2 keeps its checkpoint and a rerun resumes."""
    broken = True
    log = FaultyLog(lambda read: UpcastError("item.upserted v3: upcaster failed")
                    if broken and read == 2 else None)  # fmt: skip
    await log.append([_item(f"k{i % 7}", i) for i in range(20)])
    sink = await _live_v1(log, checkpoints)
    log.reads = 0
    with pytest.raises(UpcastError, match="upcaster failed"):
        await rebuild(_projection(2), sink, log, checkpoints, batch_size=4)
    assert await sink.active_version(_projection()) == 1
    active = await checkpoints.active("items")
    assert active is not None and (active.active, active.previous) == (1, None)
    assert await checkpoints.get("items", 2) == 4  # the page before the failure, applied
    broken = False  # the upcaster fixed: the same rebuild resumes version 2
    result = await rebuild(_projection(2), sink, log, checkpoints, batch_size=4)
    assert (result.version, result.resumed, result.position) == (2, True, 20)
    assert await sink.dump(_projection(), 2) == await _fold(log, _projection())
    assert await sink.active_version(_projection()) == 2


async def test_a_log_down_longer_than_max_outage_fails_the_rebuild_unflipped(
    checkpoints: InMemoryCheckpoints,
) -> None:
    down = False
    log = FaultyLog(lambda read: _postgres_down() if down and read >= 2 else None)
    await log.append([_item(f"k{i}", i) for i in range(12)])
    sink = await _live_v1(log, checkpoints)
    log.reads, down = 0, True
    with pytest.raises(BackendUnavailableError, match="postgres"):
        await rebuild(_projection(2), sink, log, checkpoints, batch_size=4, max_outage=0.05)
    assert await sink.active_version(_projection()) == 1
    active = await checkpoints.active("items")
    assert active is not None and active.active == 1
    assert await checkpoints.get("items", 2) == 4


async def test_a_rebuild_waits_out_a_sink_failing_on_its_nth_call(
    log: InMemoryEventLog, checkpoints: InMemoryCheckpoints
) -> None:
    await log.append([_item(f"k{i % 5}", i) for i in range(15)])
    sink = FaultySink(lambda call, _c: BackendUnavailableError("redis", "down")
                      if call in (2, 3) else None)  # fmt: skip
    result = await rebuild(_projection(1), sink, log, checkpoints, batch_size=4)
    assert sink.calls > 3 and (result.version, result.position) == (1, 15)
    assert await sink.dump(_projection(), 1) == await _fold(log, _projection())
    assert await sink.active_version(_projection()) == 1


async def test_follow_active_rides_out_a_log_read_failing_and_reports_postgres_down(
    checkpoints: InMemoryCheckpoints,
) -> None:
    down = asyncio.Event()
    log = FaultyLog(lambda _read: _postgres_down() if down.is_set() else None)
    sink, p, stop, status = InMemorySink(), _projection(), asyncio.Event(), FollowerStatus()
    follower = asyncio.create_task(follow_active(p, sink, log, checkpoints, stop=stop,
                                                 poll_interval=0.05, status=status))  # fmt: skip
    try:
        await log.append(_item("a", 1))
        await eventually(lambda: status.state == "running" and "a" in sink.targets.get(
            "items_v1", {}), timeout=5)  # fmt: skip
        down.set()
        await log.append(_item("b", 2))
        await eventually(lambda: status.state == "backend_down", timeout=5)
        assert status.backend == "postgres" and "b" not in sink.targets["items_v1"]
        down.clear()
        await eventually(lambda: "b" in sink.targets["items_v1"], timeout=5)
        await eventually(lambda: status.state == "running", timeout=5)
        assert await checkpoints.get("items", 1) == 2
    finally:
        stop.set()
        await follower
