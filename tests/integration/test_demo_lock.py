"""One demo run at a time on shared services: a second run waits for the first (a second claim
would clear the first's namespace mid-run), on whichever part the two share."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import redis.asyncio as aioredis

from satellites_es.config import DataLayerConfig
from satellites_es.demo import namespace
from satellites_es.demo.namespace import DemoBusyError, exclusive


def _other(config: DataLayerConfig, *, schema: str | None = None, prefix: str | None = None,
           ) -> DataLayerConfig:  # fmt: skip
    """The same services with another schema and/or key prefix."""
    postgres = dataclasses.replace(config.postgres, schema=schema or config.postgres.schema)
    redis = dataclasses.replace(config.redis, key_prefix=prefix or config.redis.key_prefix)
    return dataclasses.replace(config, postgres=postgres, redis=redis)


async def test_a_second_run_waits_for_the_first_and_then_runs(config: DataLayerConfig) -> None:
    said: list[str] = []
    order: list[str] = []

    async def second() -> None:
        async with exclusive(config, wait=30, say=said.append):
            order.append("second")

    async with exclusive(config):
        waiting = asyncio.create_task(second())
        await asyncio.sleep(1.2)
        assert not waiting.done()  # held off while the first runs
        order.append("first done")
    await asyncio.wait_for(waiting, 10)
    assert order == ["first done", "second"]
    assert len(said) == 1 and "another demo run" in said[0] and "waiting" in said[0]


@pytest.mark.parametrize("shared", ["postgres", "redis"])
async def test_runs_sharing_one_part_exclude_each_other(
    config: DataLayerConfig, shared: str
) -> None:
    if shared == "postgres":  # same schema, another Redis prefix
        other = _other(config, prefix=f"{config.redis.key_prefix}other:")
        part = f"Postgres schema {config.postgres.schema!r}"
    else:  # same Redis prefix, another schema
        other = _other(config, schema=f"{config.postgres.schema}_other")
        part = f"Redis prefix {config.redis.key_prefix!r}"
    async with exclusive(config):
        with pytest.raises(DemoBusyError) as caught:
            async with exclusive(other, wait=0.6, say=lambda _: None):
                pytest.fail("entered while another run held the namespace")
    assert part in str(caught.value)
    async with exclusive(other, wait=5):  # released at the first run's end
        pass


async def test_runs_on_separate_namespaces_do_not_wait(config: DataLayerConfig) -> None:
    other = _other(config, schema=f"{config.postgres.schema}_b",
                   prefix=f"{config.redis.key_prefix}b:")  # fmt: skip
    async with exclusive(config), exclusive(other, wait=0.1):
        pass


async def test_a_dead_runs_redis_lock_expires(
    config: DataLayerConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed without releasing leaves its Redis lock (its Postgres session, and with it
    the advisory lock, ends with the process): the lock outlives it by LOCK_TTL at most."""
    monkeypatch.setattr(namespace, "LOCK_TTL", 1.0)
    client = aioredis.Redis.from_url(config.redis.url)
    try:
        stale = client.lock(f"{config.redis.key_prefix}{namespace.REDIS_LOCK}", timeout=1.0)
        assert await stale.acquire(blocking=False)  # held by a run that then died
        async with exclusive(config, wait=10, say=lambda _: None):
            assert await client.get(f"{config.redis.key_prefix}{namespace.REDIS_LOCK}")
        assert await client.get(f"{config.redis.key_prefix}{namespace.REDIS_LOCK}") is None
    finally:
        await client.aclose()


async def test_a_live_run_keeps_its_redis_lock_past_the_ttl(
    config: DataLayerConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(namespace, "LOCK_TTL", 0.9)
    other = _other(config, schema=f"{config.postgres.schema}_c")  # shares only the Redis lock
    async with exclusive(config):
        await asyncio.sleep(2.0)  # over twice the TTL: extended meanwhile
        with pytest.raises(DemoBusyError):
            async with exclusive(other, wait=0.3, say=lambda _: None):
                pytest.fail("the live run's lock expired")


async def test_the_run_lock_is_not_foreign_data_to_the_claim(config: DataLayerConfig) -> None:
    """On a fresh Redis the lock is the only key under the prefix: the claim that follows it
    must neither refuse it as someone else's data nor clear it."""
    from satellites_es.demo.namespace import claim

    client = aioredis.Redis.from_url(config.redis.url)
    try:
        async with exclusive(config):
            await claim(config)
            assert await client.get(f"{config.redis.key_prefix}{namespace.REDIS_LOCK}")
    finally:
        await client.aclose()
