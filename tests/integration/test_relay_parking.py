"""The relay never wedges on an event the broker can never take (issue 12): it parks it, goes on
publishing the rest, and a restart republishes nothing that was confirmed; ``append`` refuses
such events in the first place."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime

import pytest

from satellites_es.config import DataLayerConfig
from satellites_es.errors import InvalidEventError
from satellites_es.events import DataEvent
from satellites_es.facade import DataLayer
from satellites_es.parking import ParkedEvents
from satellites_es.sql import queries
from satellites_es.store import AppendResult

LONG_TYPE = "t." + "x" * 300  # its routing key p<n>.<type> is over 255 bytes


def ev(key: str, type_: str = "parking.ok") -> DataEvent:
    return DataEvent(type=type_, resource="r", key=key, payload={"k": key}, source="test")


async def test_append_refuses_a_type_that_could_never_be_routed(config: DataLayerConfig) -> None:
    cfg = config.replace(faiss=dataclasses.replace(config.faiss, enabled=False))
    async with DataLayer(cfg) as data:
        head = await data.log.head()
        for bad in (LONG_TYPE, "é" * 121):  # 241 UTF-8 bytes: the limit counts bytes
            with pytest.raises(InvalidEventError, match="routing key"):
                await data.log.append([ev("a"), ev("b", type_=bad)])
        assert await data.log.head() == head  # nothing of the batch was stored
        await data.log.append(ev("c", type_="y" * 240))  # the longest type that routes


async def _append_unchecked(data: DataLayer, event: DataEvent) -> int:
    """Store ``event`` with the log's own SQL function, as an older version of the library (or
    another writer) would have, past ``append``'s check."""
    sql = queries(data.config.postgres.schema)["append_one"]
    row = await data.postgres.fetchrow(
        sql, event.id, event.resource, event.key, event.type, event.source,
        '{"k": "bad"}', datetime.now(UTC), None, data.log.channel, True,
    )  # fmt: skip
    assert row is not None
    if row["out_position"] is None:  # stored pending (the relay's sequencer tick was busy)
        return (await data.log.sequenced(AppendResult(events=(event,)))).last_position
    return int(row["out_position"])


async def test_the_relay_parks_an_unpublishable_event_and_publishes_the_rest_once(
    config: DataLayerConfig,
) -> None:
    cfg = config.replace(faiss=dataclasses.replace(config.faiss, enabled=False))
    seen: list[str] = []

    async def subscriber(event: DataEvent) -> None:
        seen.append(event.key)

    subscriber.subscriber_name = "parking-sub"  # type: ignore[attr-defined]
    async with DataLayer(cfg) as data:
        data.events.subscribe_all(subscriber)
        await data.subscriptions_ready()
        await data.log.append([ev(f"a{i}") for i in range(10)])
        bad_id = str(uuid.uuid4())
        bad = await _append_unchecked(data, dataclasses.replace(ev("bad", type_=LONG_TYPE),
                                                                 id=bad_id))  # fmt: skip
        last = (await data.log.append([ev(f"b{i}") for i in range(10)])).last_position
        async with asyncio.timeout(30):
            while len(seen) < 20 or (await _relay(data))["cursor"] < last:
                await asyncio.sleep(0.05)
        relay = await _relay(data)
        assert relay["parked"] == 1 and relay["lag"] == 0
        parked = ParkedEvents(data.postgres, cfg.postgres.schema)
        [row] = await parked.entries("relay")
        assert (row.position, row.event_id, row.key) == (bad, bad_id, "bad")
        assert row.error_type == "UndeliverableError" and "Routing key too long" in row.error
        assert sorted(seen) == sorted([f"a{i}" for i in range(10)] + [f"b{i}" for i in range(10)])

        # a retry that fails again parks it again: one row, two attempts
        await parked.request_retry("relay", "default")
        async with asyncio.timeout(20):
            while (rows := await parked.entries("relay"))[0].status == "retry":
                await asyncio.sleep(0.1)
        assert rows[0].attempts == 2 and rows[0].status == "parked"

    # a restart (a new process, in effect) neither wedges nor republishes what was confirmed
    async with DataLayer(cfg) as again:
        await asyncio.sleep(2.0)
        relay = await _relay(again)
        assert relay["state"] == "active" and relay["cursor"] == last
        assert relay["published"] == 0 and relay["lag"] == 0
        parked = ParkedEvents(again.postgres, cfg.postgres.schema)
        assert await parked.discard("relay", "default") == [bad]
        assert await parked.entries("relay") == []


async def _relay(data: DataLayer) -> dict[str, object]:
    return dict((await data.health()).details["relay"].details)
