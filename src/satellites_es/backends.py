"""One small adapter per backend: connect, close, and a health check.

The façade connects every enabled backend concurrently through :func:`connect_with_retry`: each
attempt either yields a connected client or closes what it opened, attempts are retried with
backoff for at most ``connect_timeout`` seconds (tenacity), and the final failure becomes a
:class:`BackendUnavailableError` naming the backend. A refusal that no retry can change (a
certificate that does not verify, a refused login: :func:`~satellites_es.tls.is_refusal`) is
not retried: it is a :class:`BackendRefusedError` at once. Secrets are scrubbed from every
message.

Each client gets its TLS settings from the configuration in its driver's terms, and ``check``
reports whether the connection is encrypted and verified (:mod:`satellites_es.tls`).

Adapters expose the native clients untouched (the seed's first principle): ``redis.asyncio.Redis``,
``asyncpg.Pool``, ``AsyncElasticsearch``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import asyncpg
import redis.asyncio as aioredis
from elasticsearch import AsyncElasticsearch
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from .config import ElasticsearchConfig, PostgresConfig, RedisConfig
from .errors import BackendRefusedError, BackendUnavailableError
from .pgpool import create_pool
from .sql import load
from .tls import (
    PG_SSL_IN_USE,
    elasticsearch_tls,
    is_refusal,
    postgres_tls,
    redis_tls,
    refusal_reason,
)

__all__ = [
    "Backend",
    "ElasticsearchBackend",
    "LazyBackend",
    "PostgresBackend",
    "RedisBackend",
    "connect_with_retry",
    "scrub",
]

logger = logging.getLogger(__name__)


class Backend(Protocol):
    name: str

    async def connect(self) -> None: ...
    async def close(self) -> None: ...
    async def check(self) -> Mapping[str, Any]: ...


@runtime_checkable
class LazyBackend(Backend, Protocol):
    """A backend whose client can exist before its server answers (it connects per request):
    a layer can start without it and use it once it is back (Redis, Elasticsearch)."""

    def open_lazily(self) -> None: ...


def scrub(message: str, secrets: tuple[str | None, ...]) -> str:
    """Remove every secret from ``message`` (driver errors sometimes echo a DSN)."""
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return message


async def connect_with_retry(
    backend: Backend, timeout: float, secrets: tuple[str | None, ...] = ()
) -> None:
    """Connect ``backend``, retrying for at most ``timeout`` seconds, or raise a named error."""
    attempts = 0
    try:
        async with asyncio.timeout(timeout + 1.0):
            async for attempt in AsyncRetrying(
                stop=stop_after_delay(timeout),
                wait=wait_exponential(multiplier=0.1, max=1.0),
                # an Exception, not a cancellation, and not a refusal (it would recur)
                retry=retry_if_exception(lambda e: isinstance(e, Exception) and not is_refusal(e)),
                reraise=True,
            ):
                with attempt:
                    attempts += 1
                    await backend.connect()
    except TimeoutError as exc:
        raise BackendUnavailableError(
            backend.name, f"no connection within {timeout:g}s ({attempts} attempts)"
        ) from exc
    except Exception as exc:
        reason = scrub(f"{type(exc).__name__}: {exc}", secrets)
        if is_refusal(exc):
            why = scrub(refusal_reason(exc), secrets)
            raise BackendRefusedError(backend.name, f"refused: {why}") from exc
        raise BackendUnavailableError(
            backend.name, f"unreachable after {attempts} attempts in {timeout:g}s: {reason}"
        ) from exc


class RedisBackend:
    name = "redis"

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self.client: aioredis.Redis | None = None

    def _client(self) -> aioredis.Redis:
        c = self.config
        return aioredis.Redis(
            host=c.host,
            port=c.port,
            db=c.db,
            username=c.username,
            password=c.password,
            socket_timeout=c.socket_timeout,
            socket_connect_timeout=c.socket_connect_timeout,
            ssl=c.ssl,
            **c.tls_options(),
        )

    async def connect(self) -> None:
        client = self._client()
        try:
            await client.ping()
        except BaseException:
            await client.aclose()
            raise
        self.client = client

    def open_lazily(self) -> None:
        """A client that connects on its first command (the server is down now)."""
        self.client = self._client()

    async def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            await client.aclose()

    async def check(self) -> Mapping[str, Any]:
        assert self.client is not None
        info = await self.client.info("server")
        return {
            "version": info.get("redis_version"),
            "url": f"{self.config.host}:{self.config.port}",
            **redis_tls(self.config).to_details(),
        }


class PostgresBackend:
    name = "postgres"

    def __init__(self, config: PostgresConfig) -> None:
        self.config = config
        self.pool: asyncpg.Pool | None = None

    async def connect(self) -> None:
        c = self.config
        # asyncpg closes the connections of a pool whose initialisation failed. The layer's
        # statements hand their connections back without asyncpg's reset query (pgpool).
        self.pool = await create_pool(
            c.dsn,
            min_size=c.min_connections,
            max_size=c.max_connections,
            command_timeout=c.command_timeout,
            timeout=5.0,
            server_settings={
                "search_path": f"{c.schema},public",
                "application_name": c.application_name,
            },
        )

    async def close(self) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            try:
                await asyncio.wait_for(pool.close(), timeout=5.0)
            except TimeoutError:
                logger.warning("postgres pool did not close in 5s; terminating its connections")
                pool.terminate()

    async def check(self) -> Mapping[str, Any]:
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            version = await conn.fetchval(load("server_version"))
            ssl_in_use = bool(await conn.fetchval(PG_SSL_IN_USE))
        return {
            "version": version,
            "dsn": self.config.safe_dsn,
            "pool_size": self.pool.get_size(),
            "pool_idle": self.pool.get_idle_size(),
            **postgres_tls(self.config, ssl_in_use).to_details(),
        }


class ElasticsearchBackend:
    name = "elasticsearch"

    def __init__(self, config: ElasticsearchConfig) -> None:
        self.config = config
        self.client: AsyncElasticsearch | None = None

    def _client(self) -> AsyncElasticsearch:
        c = self.config
        auth = (c.username or "", c.password) if c.password else None
        return AsyncElasticsearch(
            hosts=list(c.hosts),
            basic_auth=auth,
            api_key=c.api_key,
            request_timeout=c.request_timeout,
            max_retries=0,
            **c.tls_options(),
        )

    async def connect(self) -> None:
        client = self._client()
        try:
            await client.info()
        except BaseException:
            await client.close()
            raise
        self.client = client

    def open_lazily(self) -> None:
        """A client that connects on its first request (the server is down now)."""
        self.client = self._client()

    async def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            await client.close()

    async def check(self) -> Mapping[str, Any]:
        assert self.client is not None
        info = await self.client.info()
        return {
            "version": info["version"]["number"],
            "cluster": info.get("cluster_name"),
            "hosts": list(self.config.hosts),
            **elasticsearch_tls(self.config).to_details(),
        }
