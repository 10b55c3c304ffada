"""The RelayLease contract, written once and run against Postgres (a session advisory lock and
the cursor row) and the in-memory twin (:class:`~satellites_es.memory.InMemoryRelayLease`).

``kill`` ends a lease's session the way a crash or a cut network does: on Postgres the backend
is terminated, in memory the lease is revoked."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from satellites_es.config import PostgresConfig
from satellites_es.memory import InMemoryRelayLease, LeaseBoard
from satellites_es.protocols import LeadershipLost, RelayLease
from satellites_es.relay_lease import PostgresRelayLease


@dataclasses.dataclass
class Leases:
    make: Callable[[str], RelayLease]
    kill_session: Callable[[RelayLease], object]
    made: list[RelayLease] = dataclasses.field(default_factory=list)

    def __call__(self, name: str = "default") -> RelayLease:
        lease = self.make(name)
        self.made.append(lease)
        return lease

    async def kill(self, lease: RelayLease) -> None:
        outcome = self.kill_session(lease)
        if hasattr(outcome, "__await__"):
            await outcome


@pytest.fixture(params=["memory", "postgres"])
def leases(request: pytest.FixtureRequest) -> Leases:
    if request.param == "memory":
        board = LeaseBoard()
        return Leases(lambda name: InMemoryRelayLease(board, name),
                      lambda lease: lease.revoke())  # type: ignore[attr-defined]  # fmt: skip
    pool: asyncpg.Pool[asyncpg.Record] = request.getfixturevalue("pool")
    pg: PostgresConfig = request.getfixturevalue("migrated")

    async def terminate(lease: RelayLease) -> None:
        await pool.execute("SELECT pg_terminate_backend($1)", lease.holder)

    return Leases(lambda name: PostgresRelayLease(pool, pg.schema, name, dsn=pg.dsn), terminate)


@pytest.fixture(autouse=True)
async def released(leases: Leases) -> AsyncIterator[None]:
    """Every lease a test made is released (its session closed) afterwards."""
    yield
    for lease in leases.made:
        await lease.release()


async def test_one_holder_at_a_time_per_name(leases: Leases) -> None:
    a, b, other = leases(), leases(), leases("other")
    assert await a.acquire() is True
    assert await a.acquire() is True  # already ours
    assert await b.acquire() is False
    assert await other.acquire() is True  # another relay name
    await a.release()
    assert await b.acquire() is True
    assert await a.acquire() is False


async def test_the_cursor_starts_at_zero_and_moves_only_forward(leases: Leases) -> None:
    a = leases()
    assert await a.read_cursor() == 0
    assert await a.acquire()
    assert await a.load_cursor() == 0
    await a.advance(10)
    await a.advance(4)  # a late write of a fenced leader: never back
    assert await a.load_cursor() == 10
    await a.release()
    b = leases()
    assert await b.read_cursor() == 10  # without the lease
    assert await b.acquire() and await b.load_cursor() == 10


async def test_only_the_holder_moves_the_cursor(leases: Leases) -> None:
    a, b = leases(), leases()
    assert await a.acquire() and not await b.acquire()
    with pytest.raises(LeadershipLost):
        await b.advance(5)
    with pytest.raises(LeadershipLost):
        await b.load_cursor()
    assert await a.read_cursor() == 0


async def test_a_dead_session_fences_its_holder_and_frees_the_lease(leases: Leases) -> None:
    a, b = leases(), leases()
    assert await a.acquire()
    await a.load_cursor()
    await a.advance(3)
    assert not a.lost() and await a.wait_lost(0.05) is False
    await leases.kill(a)
    assert await a.wait_lost(1.0) is True
    assert a.lost()
    with pytest.raises(LeadershipLost):
        await a.advance(7)
    assert await b.acquire() is True
    assert await b.load_cursor() == 3
