"""The demo's own namespace, and the marker that lets it clear that namespace and nothing else.

The demo starts from an empty log on every run, so it clears what an earlier run left. It once
did that in the *configured* namespace: ``SATELLITES_POSTGRES_SCHEMA=myapp satellites-es demo``
dropped the user's schema, their Redis keys, ES indices and FAISS directory. Now:

* the demo always works in :data:`DEMO_ENV` (schema ``satellites_demo``, key prefix ``demo:``,
  index prefix ``demo-``, exchange ``satellites.demo.events``, FAISS under its ``--data-dir``),
  whatever the environment says; only the connection settings come from the environment;
* each part of that namespace carries a marker the demo wrote when it created it (a comment on
  the schema, a Redis key, an Elasticsearch index, a file in the FAISS directory);
* before clearing anything, :func:`claim` looks at every part: one that holds anything but has
  no marker was not made by the demo, and the demo refuses, naming what it found, before it
  has touched any part;
* two demos on the same services would clear each other's namespace mid-run (the second's
  :func:`claim` empties what the first is building), so a run holds :func:`exclusive` from
  before its claim to its end: a Postgres advisory lock for the schema and a Redis lock under
  the key prefix (the parts two runs can share; each may share one and not the other). A
  second run waits for the first, saying so, and gives up after ``wait`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis
from elasticsearch import AsyncElasticsearch
from elasticsearch.exceptions import ApiError, TransportError
from redis.asyncio.lock import Lock
from redis.exceptions import RedisError

from ..config import DataLayerConfig
from ..errors import BackendUnavailableError, SatellitesError
from ..pgpool import session_connection
from ..sql import load, queries, quote_schema, render

__all__ = ["DEMO_ENV", "DemoBusyError", "DemoNamespaceError", "claim", "exclusive"]

logger = logging.getLogger(__name__)

DEMO_ENV: Mapping[str, str] = {
    "SATELLITES_POSTGRES_SCHEMA": "satellites_demo",
    "SATELLITES_REDIS_KEY_PREFIX": "demo:",
    "SATELLITES_RABBITMQ_EXCHANGE": "satellites.demo.events",
    "SATELLITES_ELASTICSEARCH_INDEX_PREFIX": "demo-",
    "SATELLITES_FAISS_DIMENSION": "384",
    "SATELLITES_PROJECTIONS_MODULE": "satellites_es.demo.projections",
}
MARKER = "created by satellites-es demo; the demo clears it on every run"
REDIS_MARKER = "__satellites_demo__"
ES_MARKER = "satellites-demo-marker"
FAISS_MARKER = ".satellites-demo"


class DemoNamespaceError(SatellitesError):
    """Part of the demo's namespace holds data the demo did not create: nothing was cleared."""


class DemoBusyError(SatellitesError):
    """Another demo run held the demo's namespace for longer than this run would wait."""


REDIS_LOCK = "__satellites_demo_lock__"
#: How long the Redis lock outlives a run that died without releasing it, in seconds; a live
#: run extends it every third of that.
LOCK_TTL = 30.0


@contextlib.contextmanager
def _backend(name: str) -> Iterator[None]:
    """Driver errors of the reset as the backend being unreachable, naming it."""
    try:
        yield
    except (OSError, TimeoutError, asyncpg.PostgresError, RedisError, ApiError,
            TransportError) as exc:  # fmt: skip
        raise BackendUnavailableError(name, f"{type(exc).__name__}: {exc}") from exc


async def claim(config: DataLayerConfig) -> None:
    """Check every part of the demo's namespace, then clear it and mark it as the demo's."""
    with _backend("postgres"):
        postgres = await _postgres_foreign(config)
    with _backend("redis"):
        redis = await _redis_foreign(config)
    with _backend("elasticsearch"):
        es = await _es_foreign(config)
    found = [p for p in (postgres, redis, es, _faiss_foreign(config.faiss.index_path)) if p]
    if found:
        raise DemoNamespaceError(
            "refusing to clear the demo's namespace, which holds data it did not create: "
            + "; ".join(found)
            + " (remove it yourself, or run the demo against other services)"
        )
    with _backend("postgres"):
        await _reset_postgres(config)
    with _backend("redis"):
        await _reset_redis(config)
    with _backend("elasticsearch"):
        await _reset_es(config)
    _reset_faiss(config.faiss.index_path)


async def _pg(config: DataLayerConfig) -> asyncpg.Connection[asyncpg.Record]:
    return await session_connection(dsn=config.postgres.dsn, timeout=config.connect_timeout)


async def _postgres_foreign(config: DataLayerConfig) -> str | None:
    schema = config.postgres.schema
    conn = await _pg(config)
    try:
        row = await conn.fetchrow(load("demo_schema_marker"), schema)
    finally:
        await conn.close()
    if row is None or row["marker"] == MARKER:
        return None
    return f"Postgres schema {schema!r} ({row['relations']} relations, no demo marker)"


async def _reset_postgres(config: DataLayerConfig) -> None:
    sql = queries(config.postgres.schema)
    conn = await _pg(config)
    try:
        async with conn.transaction():
            await conn.execute(sql["demo_drop_schema"])
            await conn.execute(sql["demo_create_schema"])
            # COMMENT takes a literal, not a parameter; MARKER is ours and holds no quote
            await conn.execute(render("demo_mark_schema", schema=quote_schema(config.postgres.schema),
                                      marker=f"'{MARKER}'"))  # fmt: skip
    finally:
        await conn.close()


def _redis(config: DataLayerConfig) -> aioredis.Redis | None:
    if not config.redis.enabled:
        return None
    return aioredis.Redis.from_url(config.redis.url, socket_timeout=config.redis.socket_timeout)


async def _redis_keys(client: aioredis.Redis, prefix: str) -> list[bytes]:
    """The keys under ``prefix`` but the run lock (:func:`exclusive`): that one is this run's,
    taken before the claim looks, and must outlive the reset."""
    lock = f"{prefix}{REDIS_LOCK}".encode()
    return [k async for k in client.scan_iter(match=f"{prefix}*", count=1000) if k != lock]


async def _redis_foreign(config: DataLayerConfig) -> str | None:
    client = _redis(config)
    if client is None:
        return None
    prefix = config.redis.key_prefix
    try:
        if await client.exists(f"{prefix}{REDIS_MARKER}"):
            return None
        keys = await _redis_keys(client, prefix)
    finally:
        await client.aclose()
    if not keys:
        return None
    return f"{len(keys)} Redis key(s) under {prefix!r} (e.g. {keys[0].decode(errors='replace')!r})"


async def _reset_redis(config: DataLayerConfig) -> None:
    client = _redis(config)
    if client is None:
        return
    prefix = config.redis.key_prefix
    try:
        keys = await _redis_keys(client, prefix)
        for start in range(0, len(keys), 1000):
            await client.unlink(*keys[start : start + 1000])
        await client.set(f"{prefix}{REDIS_MARKER}", MARKER)
    finally:
        await client.aclose()


def _es(config: DataLayerConfig) -> AsyncElasticsearch | None:
    es = config.elasticsearch
    if not es.enabled:
        return None
    auth = (es.username or "", es.password) if es.password else None
    return AsyncElasticsearch(hosts=list(es.hosts), basic_auth=auth, api_key=es.api_key,
                              request_timeout=es.request_timeout)  # fmt: skip


async def _es_indices(client: AsyncElasticsearch, prefix: str) -> list[str]:
    found = await client.indices.get(index=f"{prefix}*", allow_no_indices=True)
    return sorted(found.body)


async def _es_foreign(config: DataLayerConfig) -> str | None:
    client = _es(config)
    if client is None:
        return None
    prefix = config.elasticsearch.index_prefix
    try:
        indices = await _es_indices(client, prefix)
    finally:
        await client.close()
    if not indices or f"{prefix}{ES_MARKER}" in indices:
        return None
    return f"{len(indices)} Elasticsearch index(es) under {prefix!r} (e.g. {indices[0]!r})"


async def _reset_es(config: DataLayerConfig) -> None:
    client = _es(config)
    if client is None:
        return
    prefix = config.elasticsearch.index_prefix
    marker = f"{prefix}{ES_MARKER}"
    try:
        for name in await _es_indices(client, prefix):
            if name != marker:
                await client.indices.delete(index=name)
        if not await client.indices.exists(index=marker):
            await client.indices.create(index=marker, mappings={"_meta": {"marker": MARKER}})
    finally:
        await client.close()


def _faiss_foreign(path: Path) -> str | None:
    if not path.exists() or (path / FAISS_MARKER).is_file():
        return None
    if path.is_dir() and not any(path.iterdir()):
        return None
    return f"FAISS directory {str(path)!r} (not empty, no demo marker)"


def _reset_faiss(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    (path / FAISS_MARKER).write_text(MARKER + "\n", encoding="utf-8")


@contextlib.asynccontextmanager
async def exclusive(
    config: DataLayerConfig, *, wait: float = 600.0, say: Callable[[str], None] = logger.warning
) -> AsyncIterator[None]:
    """Hold the demo's namespace for one run (see the module docstring): waits up to ``wait``
    seconds for a run holding it (``say`` tells the user once), then :class:`DemoBusyError`."""
    deadline = time.monotonic() + wait
    told = False

    def waiting(part: str) -> None:
        nonlocal told
        if time.monotonic() > deadline:
            raise DemoBusyError(
                f"another demo run has held the demo's namespace ({part}) for over {wait:.0f}s; "
                "wait for it to finish, or run this one against other services"
            )
        if not told:
            say(f"another demo run is using the demo's namespace ({part}): waiting for it")
            told = True

    schema = config.postgres.schema
    with _backend("postgres"):
        conn = await _pg(config)
    try:
        with _backend("postgres"):
            while not await conn.fetchval(load("demo_try_lock"), schema):
                waiting(f"Postgres schema {schema!r}")
                await asyncio.sleep(0.5)
        client = _redis(config)
        if client is None:
            yield
            return
        lock = client.lock(f"{config.redis.key_prefix}{REDIS_LOCK}", timeout=LOCK_TTL)
        try:
            with _backend("redis"):
                while not await lock.acquire(blocking=False):
                    waiting(f"Redis prefix {config.redis.key_prefix!r}")
                    await asyncio.sleep(0.5)
            keeper = asyncio.create_task(_keep(lock))
            try:
                yield
            finally:
                keeper.cancel()
                await asyncio.gather(keeper, return_exceptions=True)
                with contextlib.suppress(RedisError):  # expired: another run may hold it now
                    await lock.release()
        finally:
            await client.aclose()
    finally:
        await conn.close()  # ends the session: the advisory lock goes with it


async def _keep(lock: Lock) -> None:
    """Extend the Redis lock while the run lasts (it expires LOCK_TTL after a crash)."""
    while True:
        await asyncio.sleep(LOCK_TTL / 3)
        with contextlib.suppress(RedisError):
            await lock.reacquire()
