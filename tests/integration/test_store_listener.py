"""The log listener: woken by a committed append, not by a rolled-back one; survives a
lost connection (it listens again, and reports the reconnect as a possible missed wake-up)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from satellites_es.config import EventLogConfig, PostgresConfig
from satellites_es.store import EventStore
from tests.integration.conftest import EventFactory


async def test_listener_wakes_on_commit_only(
    store: EventStore, pool: asyncpg.Pool, make_event: EventFactory
) -> None:
    async with store.listener() as listener:
        assert await listener.wait(0.05) is False
        async with pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            await store.append(make_event(), conn=conn)
            assert await listener.wait(0.3) is False  # not committed yet
            await tx.rollback()
        assert await listener.wait(0.3) is False  # rolled back: no wake-up
        await store.append(make_event())
        assert await listener.wait(5) is True
        assert await listener.wait(0.05) is False  # one wake-up per notification burst
        await store.append([make_event(), make_event()])
        assert await listener.wait(5) is True


async def test_a_wake_up_between_waits_is_not_lost(
    store: EventStore, make_event: EventFactory
) -> None:
    async with store.listener() as listener:
        await store.append(make_event())
        await asyncio.sleep(0.2)  # notified while nobody waits
        assert await listener.wait(0.01) is True


async def test_listeners_in_other_schemas_are_not_woken(
    store: EventStore, pool: asyncpg.Pool, migrated: PostgresConfig, make_event: EventFactory
) -> None:
    other = EventStore(
        pool, schema=f"{migrated.schema}_x", config=EventLogConfig(), dsn=migrated.dsn
    )
    assert other.channel != store.channel
    async with other.listener() as listener:
        await store.append(make_event())
        assert await listener.wait(0.3) is False


async def test_listener_listens_again_after_its_connection_is_killed(
    store: EventStore, pool: asyncpg.Pool, make_event: EventFactory
) -> None:
    async with store.listener() as listener:
        (before,) = await _listening(pool, store.channel)  # the listener's session, found as
        await pool.execute("SELECT pg_terminate_backend($1)", before)  # an operator would
        # The loss (or the reconnect after it) wakes the caller, who polls: a notification
        # may have been missed meanwhile. At most one more wake-up follows for the same event.
        assert await listener.wait(5) is True
        await listener.wait(0.2)
        (after,) = await _listening(pool, store.channel)
        assert after != before  # a new session LISTENs on the channel
        await store.append(make_event())
        assert await listener.wait(5) is True


async def _listening(pool: asyncpg.Pool, channel: str) -> list[int]:
    """The server pids of the sessions whose last statement was LISTEN on ``channel``."""
    rows = await pool.fetch(
        "SELECT pid FROM pg_stat_activity WHERE query = 'LISTEN ' || quote_ident($1)", channel
    )
    return [int(r["pid"]) for r in rows]


@pytest.mark.parametrize("channel", ["x" * 60])
def test_a_channel_too_long_for_postgres_is_refused(
    pool: asyncpg.Pool, migrated: PostgresConfig, channel: str
) -> None:
    from satellites_es.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        EventStore(pool, schema=migrated.schema, config=EventLogConfig(notify_channel=channel))


async def test_listener_rides_out_an_outage(
    store: EventStore, migrated: PostgresConfig, pool: asyncpg.Pool, make_event: EventFactory
) -> None:
    from satellites_es.testing.network_faults import TcpProxy

    async with TcpProxy(migrated.host, migrated.port) as proxy:
        via_proxy = PostgresConfig(**{**vars(migrated), "host": "127.0.0.1", "port": proxy.port})
        flaky = EventStore(pool, schema=migrated.schema, config=EventLogConfig(),
                           dsn=via_proxy.dsn)  # fmt: skip
        async with flaky.listener() as listener:
            proxy.cut()  # sever and refuse new connections
            answers = [await listener.wait(0.2) for _ in range(4)]
            assert answers[-1] is False  # cannot reconnect: no error, the caller just polls
            proxy.restore()
            for _ in range(10):  # reconnected within a few waits
                if await listener.wait(0.5):
                    break
            else:
                pytest.fail("the listener did not reconnect")
            await store.append(make_event())
            assert await listener.wait(5) is True
