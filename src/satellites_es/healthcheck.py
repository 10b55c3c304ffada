"""A read-only health check of every configured backend, without starting a ``DataLayer``.

``satellites-es health`` must only look: starting a layer would create the database's schema
and tables (auto-migrate), take the relay's lead and bind the bus; on a wrong schema name it
once created one with five tables. :func:`check` instead opens one plain connection per
backend, all at once under one deadline, and asks questions that change nothing:

* Postgres: the server version, then, on a connection whose transactions are read-only
  (``default_transaction_read_only``), whether the schema holds the event log, its head, the
  relay cursors and each projection's active version and position (lag = head - position);
* Redis: ``INFO server``; Elasticsearch: the cluster info; RabbitMQ: an AMQP connection and a
  passive declare of the exchange (passive never creates it);
* FAISS: the snapshots under the index path, read from the directory listing (never created).

A backend that does not answer within the deadline is ``down`` with the reason; the others are
reported as they are. Each connection is made with the configured TLS, and each entry says
whether it is encrypted and verified (:mod:`satellites_es.tls`). Nothing here raises.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aio_pika
import asyncpg
import redis.asyncio as aioredis
from elasticsearch import AsyncElasticsearch
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .config import (
    DataLayerConfig,
    ElasticsearchConfig,
    FaissConfig,
    PostgresConfig,
    RabbitMQConfig,
    RedisConfig,
)
from .health import BackendHealth, Health, probe
from .pgpool import session_connection
from .sql import load, queries
from .tls import PG_SSL_IN_USE, elasticsearch_tls, postgres_tls, rabbitmq_tls, redis_tls
from .vectors.persistence import snapshot_namespaces

__all__ = ["check"]

#: The health entries, in the order the table shows them (the façade's, plus projections).
ENTRIES = ("postgres", "redis", "elasticsearch", "faiss", "rabbitmq", "relay", "projections")


async def check(config: DataLayerConfig, timeout: float = 5.0) -> Health:
    """Every backend's state within ``timeout`` seconds in total (they are checked at once)."""
    pg = config.postgres
    checks = {
        "postgres": (pg.enabled, lambda: _postgres(pg, config.log.enabled, timeout)),
        "redis": (config.redis.enabled, lambda: _redis(config.redis, timeout)),
        "elasticsearch": (config.elasticsearch.enabled,
                          lambda: _elasticsearch(config.elasticsearch, timeout)),
        "faiss": (config.faiss.enabled, lambda: _faiss(config.faiss)),
        "rabbitmq": (config.rabbitmq.enabled, lambda: _rabbitmq(config.rabbitmq, timeout)),
    }  # fmt: skip
    names = [n for n, (enabled, _) in checks.items() if enabled]
    results = await asyncio.gather(*(probe(checks[n][1], timeout) for n in names))
    details: dict[str, BackendHealth] = {n: BackendHealth("disabled") for n in checks}
    details.update(zip(names, results, strict=True))
    details.update(_log_entries(details["postgres"], config))
    details["postgres"] = _without_log(details["postgres"])
    ordered = {name: details[name] for name in ENTRIES}
    return Health(ok=all(h.ok for h in ordered.values()), details=ordered)


def _log_entries(postgres: BackendHealth, config: DataLayerConfig) -> dict[str, BackendHealth]:
    """The relay and projections entries, from what the Postgres check read."""
    if not (config.postgres.enabled and config.log.enabled):
        return {"relay": BackendHealth("disabled"), "projections": BackendHealth("disabled")}
    if postgres.status != "ok":
        why = "postgres is down: cannot read the log"
        return {"relay": BackendHealth("down", error=why),
                "projections": BackendHealth("down", error=why)}  # fmt: skip
    log: Mapping[str, Any] = postgres.details.get("log", {})
    if log.get("state") != "migrated":
        state = {"state": log.get("state", "unknown")}
        return {"relay": BackendHealth("ok", details=state),
                "projections": BackendHealth("ok", details=state)}  # fmt: skip
    relay = dict(log["relay"]) if config.relay.enabled else None
    return {
        "relay": BackendHealth("ok", details=relay) if relay is not None
        else BackendHealth("disabled"),
        "projections": BackendHealth("ok", details=dict(log["projections"])),
    }  # fmt: skip


def _without_log(postgres: BackendHealth) -> BackendHealth:
    """The Postgres entry with the log's state as one line (its parts have entries of their own)."""
    log = postgres.details.get("log")
    if not isinstance(log, Mapping):
        return postgres
    shown = dict(postgres.details)
    shown["log"] = log.get("state", "unknown")
    return BackendHealth(postgres.status, postgres.latency_ms, shown, postgres.error)


async def _postgres(pg: PostgresConfig, log_enabled: bool, timeout: float) -> Mapping[str, Any]:
    conn = await session_connection(
        dsn=pg.dsn, timeout=timeout,
        server_settings={"default_transaction_read_only": "on",
                         "application_name": f"{pg.application_name}-health"},
    )  # fmt: skip
    try:
        out: dict[str, Any] = {
            "version": await conn.fetchval(load("server_version")),
            "dsn": pg.safe_dsn,
            "schema": pg.schema,
            **postgres_tls(pg, bool(await conn.fetchval(PG_SSL_IN_USE))).to_details(),
        }
        if log_enabled:
            out["log"] = await _log_state(conn, pg.schema)
        return out
    finally:
        await conn.close(timeout=timeout)


async def _log_state(conn: asyncpg.Connection[Any], schema: str) -> Mapping[str, Any]:
    """Head, relay cursors and projection positions, or why there is no log to read."""
    sql = queries(schema)
    if not await conn.fetchval(sql["health_log_exists"]):
        return {"state": f"not migrated: schema {schema!r} has no event log "
                         "(run 'satellites-es migrate')"}  # fmt: skip
    head = int(await conn.fetchval(sql["head"]))
    cursors = await conn.fetch(sql["health_cursors"])
    relay: dict[str, Any] = {"head": head, "pending": int(await conn.fetchval(sql["pending"]))}
    if cursors:
        cursor = min(int(r["position"]) for r in cursors)
        relay.update(cursor=cursor, lag=max(0, head - cursor))
    else:
        relay.update(cursor=None, lag=head, state="no relay has run")
    rows = await conn.fetch(sql["health_projections"])
    projections = {
        r["projection"]: f"v{r['active_version']} at {r['position'] or 0} "
        f"(lag {max(0, head - int(r['position'] or 0))})"
        for r in rows
    }
    return {"state": "migrated", "relay": relay, "projections": projections}


async def _redis(config: RedisConfig, timeout: float) -> Mapping[str, Any]:
    client = aioredis.Redis(
        host=config.host, port=config.port, db=config.db, username=config.username,
        password=config.password, socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),  # redis-py retries a refused connect for seconds by default
        ssl=config.ssl, **config.tls_options(),
    )  # fmt: skip
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    return {"version": info.get("redis_version"), "url": f"{config.host}:{config.port}",
            **redis_tls(config).to_details()}  # fmt: skip


async def _elasticsearch(config: ElasticsearchConfig, timeout: float) -> Mapping[str, Any]:
    auth = (config.username or "", config.password) if config.password else None
    client = AsyncElasticsearch(
        hosts=list(config.hosts), basic_auth=auth, api_key=config.api_key,
        request_timeout=timeout, max_retries=0, **config.tls_options(),
    )  # fmt: skip
    try:
        info = await client.info()
    finally:
        await client.close()
    return {"version": info["version"]["number"], "cluster": info.get("cluster_name"),
            "hosts": list(config.hosts), **elasticsearch_tls(config).to_details()}  # fmt: skip


async def _rabbitmq(config: RabbitMQConfig, timeout: float) -> Mapping[str, Any]:
    connection = await aio_pika.connect(config.url, timeout=timeout)
    try:
        channel = await connection.channel()
        try:
            await channel.get_exchange(config.exchange, ensure=True)  # a passive declare
            exchange = "present"
        except aio_pika.exceptions.ChannelClosed:
            exchange = "missing (created when a layer starts)"
        return {"url": config.safe_url, "exchange": f"{config.exchange}: {exchange}",
                **rabbitmq_tls(config).to_details()}  # fmt: skip
    finally:
        await connection.close()


async def _faiss(config: FaissConfig) -> Mapping[str, Any]:
    root = config.index_path
    names = await asyncio.to_thread(snapshot_namespaces, root)
    if not await asyncio.to_thread(root.exists):
        return {"index_path": str(root), "state": "no snapshots yet (the directory is missing)"}
    return {"index_path": str(root), "snapshots": len(names), "namespaces": ", ".join(names)}
