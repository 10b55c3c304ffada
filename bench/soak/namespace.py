"""The soak's namespace: a fresh Postgres schema, Redis key prefix, RabbitMQ exchange,
Elasticsearch index prefix and FAISS directory, handed to the child processes as
``SATELLITES_*`` variables, and removed afterwards (:func:`cleanup`)."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import asyncpg
import redis.asyncio as aioredis

from bench.common import unlink_prefix
from satellites_es.bus.partition import dlq_name, queue_name
from satellites_es.config import DataLayerConfig

PARTITIONS = 4
DIMENSION = 384
AUDIT_GROUP = "soak-audit"


@dataclass
class Namespace:
    run_id: str
    postgres_url: str
    redis_url: str
    amqp_url: str
    es_url: str
    workdir: Path
    #: Redis and Elasticsearch as the projector processes reach them: through the soak's
    #: cuttable proxies (:class:`bench.soak.sink_cuts.SinkProxies`); everything else uses the
    #: direct URLs.
    redis_proxy_url: str | None = None
    es_proxy_url: str | None = None

    @property
    def schema(self) -> str:
        return self.run_id

    @property
    def app_name(self) -> str:
        return self.run_id

    @property
    def redis_prefix(self) -> str:
        return f"{self.run_id}:"

    @property
    def exchange(self) -> str:
        return f"{self.run_id}.events"

    @property
    def es_prefix(self) -> str:
        return f"{self.run_id}-"

    @property
    def faiss_dir(self) -> Path:
        return self.workdir / "faiss"

    def env(self) -> dict[str, str]:
        return {
            "SATELLITES_POSTGRES_URL": self.postgres_url,
            "SATELLITES_POSTGRES_SCHEMA": self.schema,
            "SATELLITES_POSTGRES_APPLICATION_NAME": self.app_name,
            "SATELLITES_POSTGRES_MIN_CONNECTIONS": "1",
            "SATELLITES_POSTGRES_MAX_CONNECTIONS": "4",
            "SATELLITES_REDIS_URL": self.redis_url,
            "SATELLITES_REDIS_KEY_PREFIX": self.redis_prefix,
            "SATELLITES_RABBITMQ_URL": self.amqp_url,
            "SATELLITES_RABBITMQ_EXCHANGE": self.exchange,
            "SATELLITES_RABBITMQ_PARTITIONS": str(PARTITIONS),
            "SATELLITES_ELASTICSEARCH_URL": self.es_url,
            "SATELLITES_ELASTICSEARCH_ENABLED": "true",
            "SATELLITES_ELASTICSEARCH_INDEX_PREFIX": self.es_prefix,
            "SATELLITES_FAISS_INDEX_PATH": str(self.faiss_dir),
            "SATELLITES_FAISS_DIMENSION": str(DIMENSION),
            "SATELLITES_FAISS_ENABLED": "false",
            "SATELLITES_RELAY_STANDBY_INTERVAL": "0.5",
            "SATELLITES_RELAY_POLL_INTERVAL": "0.5",
            "SATELLITES_CONNECT_TIMEOUT": "10",
            "SATELLITES_STOP_TIMEOUT": "10",
            "SATELLITES_LOG_LEVEL": "WARNING",
        }

    def projector_env(self) -> dict[str, str]:
        """:meth:`env` with Redis and Elasticsearch reached through the proxies."""
        env = self.env()
        if self.redis_proxy_url is not None:
            env["SATELLITES_REDIS_URL"] = self.redis_proxy_url
        if self.es_proxy_url is not None:
            env["SATELLITES_ELASTICSEARCH_URL"] = self.es_proxy_url
        return env

    def config(self, app_suffix: str = "") -> DataLayerConfig:
        env = self.env()
        env["SATELLITES_POSTGRES_APPLICATION_NAME"] = self.app_name + app_suffix
        return DataLayerConfig.from_env(env)

    def local_only(self) -> None:
        """Refuse any service off this machine: the soak kills and cuts what it talks to."""
        for url in (self.postgres_url, self.redis_url, self.amqp_url, self.es_url):
            host = url.split("@")[-1].split("//")[-1].split(":")[0].split("/")[0]
            if host not in ("127.0.0.1", "localhost"):
                raise SystemExit(f"soak: every service must be on 127.0.0.1, not {host}")


def endpoint(url: str, default_port: int) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def via(url: str, port: int) -> str:
    """``url`` with its host and port replaced by the proxy's (user, path and query kept)."""
    parts = urllib.parse.urlsplit(url)
    user, _, _ = parts.netloc.rpartition("@")
    netloc = f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


async def cleanup(ns: Namespace, es_external: bool) -> list[str]:
    """Remove everything the run made; returns what could not be removed."""
    steps = [("postgres", _drop_postgres), ("redis", _drop_redis), ("rabbitmq", _drop_rabbitmq)]
    if es_external:
        steps.append(("elasticsearch", _drop_elasticsearch))
    problems: list[str] = []
    for name, step in steps:
        try:
            await step(ns)
        except Exception as exc:
            problems.append(f"{name}: {exc!r}")
    return problems


async def _drop_postgres(ns: Namespace) -> None:
    conn = await asyncpg.connect(ns.postgres_url)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name LIKE $1 AND pid <> pg_backend_pid()",
            f"{ns.app_name}%",
        )
        await conn.execute(f'DROP SCHEMA IF EXISTS "{ns.schema}" CASCADE')
    finally:
        await conn.close()


async def _drop_redis(ns: Namespace) -> None:
    redis = aioredis.Redis.from_url(ns.redis_url)
    try:
        await unlink_prefix(redis, ns.redis_prefix)
    finally:
        await redis.aclose()


async def _drop_rabbitmq(ns: Namespace) -> None:
    conn = await aio_pika.connect(ns.amqp_url, timeout=10)
    async with conn:
        channel = await conn.channel()
        names = [queue_name(ns.exchange, AUDIT_GROUP, i) for i in range(PARTITIONS)]
        for name in [*names, dlq_name(ns.exchange, AUDIT_GROUP)]:
            await channel.queue_delete(name)
        await channel.exchange_delete(ns.exchange)


async def _drop_elasticsearch(ns: Namespace) -> None:
    from elasticsearch import AsyncElasticsearch

    es = AsyncElasticsearch(ns.es_url)
    try:
        found = await es.indices.get(index=f"{ns.es_prefix}*", allow_no_indices=True)
        for index in found.body:
            await es.indices.delete(index=index, ignore_unavailable=True)
    finally:
        await es.close()
