"""Relays as separate processes, killed with SIGKILL.

The module is also the relay process: ``python -m tests.integration.test_relay_processes
'<json>'`` runs one relay and prints ``state <name>`` on each state change. With ``kill_after``
it SIGKILLs itself right after that many batches were confirmed, *before* the cursor moves
(its lease kills the process instead of moving the cursor).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from satellites_es.bus import RabbitMQEventBus
from satellites_es.config import EventLogConfig, PostgresConfig, RabbitMQConfig, RelayConfig
from satellites_es.events import DataEvent
from satellites_es.parking import ParkedEvents
from satellites_es.relay import Relay
from satellites_es.relay_lease import PostgresRelayLease
from satellites_es.store import EventStore
from tests.contract.support import (
    IdempotentSink,
    assert_per_key_order,
    delete_topology,
    eventually,
    rabbit_config_for,
)

ROOT = Path(__file__).resolve().parents[2]


# -- the relay process ------------------------------------------------------------------------


class _KillingLease(PostgresRelayLease):
    """A lease whose ``kill_after``-th cursor move SIGKILLs the process instead: the events up
    to ``position`` were confirmed, the cursor never moves (0: never). It prints ``killing
    <cursor> <position>`` first."""

    def __init__(self, *args: Any, kill_after: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kill_after = kill_after
        self.moves = 0
        self.cursor = 0

    async def advance(self, position: int) -> None:
        self.moves += 1
        if self.kill_after and self.moves >= self.kill_after:
            print(f"killing {self.cursor} {position}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        await super().advance(position)
        self.cursor = position


async def _main(args: dict[str, Any]) -> None:
    pool = await asyncpg.create_pool(args["dsn"], min_size=1, max_size=4)
    store = EventStore(pool, schema=args["schema"], config=EventLogConfig(), dsn=args["dsn"])
    bus = RabbitMQEventBus(rabbit_config_for(args["amqp_url"], args["test_id"]))
    await bus.start()
    lease = _KillingLease(pool, args["schema"], "default", dsn=args["dsn"],
                          kill_after=args["kill_after"])  # fmt: skip
    relay = Relay(
        store, bus, lease=lease, parking=ParkedEvents(pool, args["schema"]),
        config=RelayConfig(batch_size=args["batch_size"], confirm_window=100, poll_interval=0.2,
                           standby_interval=0.2),
    )  # fmt: skip
    task = asyncio.create_task(relay.run())
    state = None
    while not task.done():
        if relay.state is not state:
            state = relay.state
            print(f"state {state.value}", flush=True)
        await asyncio.sleep(0.02)
    await task


# -- the tests --------------------------------------------------------------------------------


class RelayProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode().strip())

    @property
    def state(self) -> str | None:
        states = [line.split()[1] for line in self.lines if line.startswith("state ")]
        return states[-1] if states else None

    async def finished(self) -> None:
        """Once the process has ended: every line it printed is read."""
        await self._reader

    async def kill(self) -> int:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        code = await self.proc.wait()
        await self._reader
        return code


@pytest.fixture
async def spawn(
    migrated: PostgresConfig, amqp_url: str, test_id: str
) -> AsyncIterator[Callable[..., Any]]:
    procs: list[RelayProcess] = []

    async def start(*, kill_after: int = 0, batch_size: int = 100) -> RelayProcess:
        args = {"dsn": migrated.dsn, "schema": migrated.schema, "amqp_url": amqp_url,
                "test_id": test_id, "kill_after": kill_after, "batch_size": batch_size}  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.integration.test_relay_processes", json.dumps(args),
            cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        procs.append(RelayProcess(proc))
        return procs[-1]

    yield start
    for p in procs:
        await p.kill()


@pytest.fixture
async def sink(amqp_url: str, test_id: str) -> AsyncIterator[IdempotentSink]:
    """An idempotent consumer; its queues exist before any relay publishes."""
    rabbit: RabbitMQConfig = rabbit_config_for(amqp_url, test_id)
    consumer = IdempotentSink()
    bus = RabbitMQEventBus(rabbit, connect_timeout=5.0)
    bus.subscribe_all(consumer)
    await bus.start()
    yield consumer
    await bus.stop()
    await delete_topology(amqp_url, rabbit.exchange, [consumer.subscriber_name], rabbit.partitions)


async def _append(store: EventStore, make_event: Callable[..., DataEvent], n: int) -> list[int]:
    result = await store.append([make_event(key=f"k{i % 11}") for i in range(n)])
    return [e.position or 0 for e in result.events]


async def test_sigkill_between_confirms_and_cursor_update_loses_nothing(
    store: EventStore, pool: asyncpg.Pool[asyncpg.Record], sink: IdempotentSink,
    spawn: Callable[..., Any], make_event: Callable[..., DataEvent],
) -> None:  # fmt: skip
    positions = await _append(store, make_event, 300)
    first = await spawn(kill_after=2, batch_size=100)
    assert await asyncio.wait_for(first.proc.wait(), 30) == -signal.SIGKILL
    await first.finished()
    (killing,) = [line.split() for line in first.lines if line.startswith("killing ")]
    moved, confirmed = int(killing[1]), int(killing[2])
    cursor = await pool.fetchval(
        f'SELECT position FROM "{store.schema}".relay_cursors WHERE name = $1', "default"
    )
    assert cursor == moved < confirmed  # confirmed up to there, the cursor never moved
    assert moved % 100 == 0 and confirmed % 100 == 0  # the cursor moves at batch ends
    unmoved = {p for p in positions if moved < p <= confirmed}
    await eventually(lambda: set(sink.applied) >= unmoved)

    await spawn()  # the restarted relay
    await eventually(lambda: set(sink.applied) == set(positions), timeout=20)
    assert sink.applies == 300  # each applied exactly once
    assert sink.duplicates >= unmoved  # the confirmed events past the cursor came twice
    assert_per_key_order(sink.deliveries)


async def test_two_relay_processes_one_leader_and_takeover_after_sigkill(
    store: EventStore, sink: IdempotentSink, spawn: Callable[..., Any],
    make_event: Callable[..., DataEvent],
) -> None:  # fmt: skip
    a, b = await spawn(), await spawn()
    await eventually(lambda: {a.state, b.state} == {"active", "standby"}, timeout=15)
    positions = await _append(store, make_event, 400)
    await eventually(lambda: set(sink.applied) == set(positions), timeout=15)
    assert sink.duplicates == set()  # no duplicate storm: only the leader published
    leader, standby = (a, b) if a.state == "active" else (b, a)

    assert await leader.kill() == -signal.SIGKILL
    killed_at = time.monotonic()
    more = await _append(store, make_event, 200)
    await eventually(lambda: standby.state == "active", timeout=10)
    took_over = time.monotonic() - killed_at
    await eventually(lambda: set(sink.applied) >= set(more), timeout=15)
    assert took_over < 5.0, took_over
    assert_per_key_order(sink.deliveries)
    assert len(sink.applied) == 600


if __name__ == "__main__":
    asyncio.run(_main(json.loads(sys.argv[1])))
