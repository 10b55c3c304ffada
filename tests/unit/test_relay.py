"""The relay's algorithm on the in-memory twins (log, bus, lease, parking): no service, in
milliseconds. Faults are injected at the seams: a publisher that fails or never confirms a
send, a lease that dies. The same relay on Postgres and RabbitMQ: ``tests/integration``."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable

import pytest

from satellites_es.config import RelayConfig
from satellites_es.errors import PublishError, UndeliverableError, UnroutableError
from satellites_es.events import DataEvent, InProcessEventBus, Publisher
from satellites_es.memory import InMemoryEventLog, InMemoryParking, InMemoryRelayLease, LeaseBoard
from satellites_es.relay import Relay, RelayState
from tests.contract.support import IdempotentSink, assert_per_key_order, eventually

FAST = RelayConfig(batch_size=10, confirm_window=8, poll_interval=0.05, standby_interval=0.02,
                   sequence_interval=0.01)  # fmt: skip

#: What a faulty publisher does with one event: None sends it, an exception fails its send,
#: "hold" leaves its confirm pending for ever.
Outcome = BaseException | str | None


class FaultyPublisher:
    def __init__(self, inner: Publisher, outcome: Callable[[DataEvent], Outcome]) -> None:
        self.inner, self.outcome = inner, outcome

    def send(self, event: DataEvent) -> asyncio.Future[None]:
        outcome = self.outcome(event)
        if outcome is None:
            return self.inner.send(event)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        return future


class FaultyBus(InProcessEventBus):
    """The in-process bus with faults injected into its publisher (``outcome`` per event)."""

    def __init__(self, outcome: Callable[[DataEvent], Outcome] = lambda _e: None) -> None:
        super().__init__()
        self.outcome = outcome

    async def publisher(self) -> Publisher:
        return FaultyPublisher(await super().publisher(), self.outcome)


@dataclasses.dataclass
class World:
    log: InMemoryEventLog
    bus: FaultyBus
    sink: IdempotentSink
    board: LeaseBoard
    parking: InMemoryParking
    relays: list[tuple[Relay, asyncio.Task[None]]] = dataclasses.field(default_factory=list)

    def relay(self, config: RelayConfig = FAST) -> tuple[Relay, InMemoryRelayLease]:
        lease = InMemoryRelayLease(self.board)
        relay = Relay(self.log, self.bus, lease=lease, parking=self.parking, config=config)
        self.relays.append((relay, asyncio.create_task(relay.run())))
        return relay, lease

    async def append(self, n: int, type_: str = "doc.put") -> list[DataEvent]:
        events = [DataEvent(type=type_, resource="docs", key=f"k{i % 7}", payload={"i": i},
                            source="test") for i in range(n)]  # fmt: skip
        return list((await self.log.append(events)).events)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    sink = IdempotentSink()
    bus = FaultyBus()
    bus.subscribe_all(sink)
    w = World(InMemoryEventLog(), bus, sink, LeaseBoard(), InMemoryParking())
    yield w
    for relay, task in w.relays:
        await relay.stop(timeout=1.0)
        await asyncio.gather(task, return_exceptions=True)  # a test may have stopped it


async def test_the_backlog_and_then_new_events_are_published_in_order(world: World) -> None:
    events = await world.append(95)
    relay, _ = world.relay()
    await eventually(lambda: relay.cursor == 95, timeout=5)
    assert [e.id for e in world.sink.deliveries] == [e.id for e in events]
    more = await world.append(12)  # woken by the log, not the poll
    await eventually(lambda: relay.cursor == 107, timeout=5)
    assert [e.id for e in world.sink.deliveries[95:]] == [e.id for e in more]
    assert relay.state is RelayState.ACTIVE and relay.published == 107
    metrics = await relay.metrics()
    assert metrics["lag"] == 0 and metrics["oldest_unpublished_age"] == 0.0
    assert await world.board.holders["default"].read_cursor() == 107


async def test_the_cursor_moves_only_over_confirmed_batches(world: World) -> None:
    await world.append(40)
    world.bus.outcome = lambda e: "hold" if e.position == 25 else None  # never confirmed
    relay, _ = world.relay()
    await eventually(lambda: relay.cursor == 20, timeout=5)  # the batch before position 25
    await asyncio.sleep(0.1)
    assert relay.cursor == 20 and world.board.cursors["default"] == 20
    await relay.stop(timeout=0.2)  # its window never drains: abandoned, the cursor stays
    assert world.board.cursors["default"] == 20

    world.bus.outcome = lambda _e: None
    successor, _ = world.relay()  # a restart republishes after the cursor: duplicates, no gap
    await eventually(lambda: successor.cursor == 40, timeout=5)
    assert set(world.sink.applied) == set(range(1, 41))
    assert world.sink.duplicates and min(world.sink.duplicates) > 20


async def test_a_failed_send_restarts_from_the_cursor_and_loses_nothing(world: World) -> None:
    await world.append(60)
    failed: list[int] = []

    def once(event: DataEvent) -> Outcome:
        if event.position == 33 and not failed:
            failed.append(33)
            return PublishError("nacked")
        return None

    world.bus.outcome = once
    relay, _ = world.relay()
    await eventually(lambda: relay.cursor == 60, timeout=5)
    assert failed == [33]
    assert set(world.sink.applied) == set(range(1, 61))
    assert world.sink.duplicates <= set(range(31, 61))  # only what came after the cursor
    assert_per_key_order(world.sink.deliveries)


async def test_unroutable_events_are_passed_and_undeliverable_ones_parked(world: World) -> None:
    await world.append(5)
    await world.append(1, type_="nobody.listens")
    await world.append(1, type_="too.long")
    await world.append(5)

    def outcome(event: DataEvent) -> Outcome:
        if event.type == "nobody.listens":
            return UnroutableError("no queue is bound")
        if event.type == "too.long":
            return UndeliverableError("routing key over 255 bytes")
        return None

    world.bus.outcome = outcome
    relay, _ = world.relay()
    await eventually(lambda: relay.cursor == 12, timeout=5)
    metrics = await relay.metrics()
    assert metrics["unroutable"] == 1 and metrics["parked"] == 1
    assert set(world.parking.rows) == {("relay", "default", 0, 7)}
    assert set(world.sink.applied) == set(range(1, 13)) - {6, 7}

    world.bus.outcome = lambda _e: None  # the cause is fixed: an operator asks for a retry
    assert await world.parking.request_retry("relay", "default") == [7]
    await eventually(lambda: 7 in world.sink.applied, timeout=5)
    await eventually(lambda: not world.parking.rows, timeout=5)


async def test_one_leader_and_a_fenced_one_hands_over(world: World) -> None:
    first, first_lease = world.relay()
    second, _ = world.relay()
    await eventually(lambda: {first.state, second.state} ==
                     {RelayState.ACTIVE, RelayState.STANDBY}, timeout=5)  # fmt: skip
    leader, lease = (first, first_lease) if first.state is RelayState.ACTIVE else (second, None)
    await world.append(30)
    await eventually(lambda: leader.cursor == 30, timeout=5)
    assert world.sink.duplicates == set()  # only the leader published
    standby = second if leader is first else first
    if lease is None:  # the second relay leads: find its lease on the board
        lease = world.board.holders["default"]  # type: ignore[assignment]
    assert lease is not None
    lease.revoke()  # its session died
    await eventually(lambda: standby.state is RelayState.ACTIVE, timeout=5)
    await world.append(10)
    await eventually(lambda: standby.cursor == 40, timeout=5)
    assert set(world.sink.applied) == set(range(1, 41))
    assert_per_key_order(world.sink.deliveries)
