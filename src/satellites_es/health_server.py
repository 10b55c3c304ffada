"""``/health`` and ``/metrics`` over HTTP for ``satellites-es run`` (aiohttp).

``/health`` answers 200 with the JSON health of every backend, the relay and the projectors, or
503 when one is down or a projector is not running (its sink down, restarting, failed, or its
snapshot not saved). Parked events are reported per projection but do not make it 503: they are
set aside so that the projection keeps running. ``/metrics`` is the Prometheus text format.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .metrics import Metrics
from .shielded import finished

if TYPE_CHECKING:
    from .facade import DataLayer
    from .projections.supervisor import ProjectionService

__all__ = ["HealthServer"]


class HealthServer:
    def __init__(
        self, data: DataLayer, service: ProjectionService | None, *, host: str, port: int,
        metrics: Metrics | None = None,
    ) -> None:  # fmt: skip
        self.data, self.service = data, service
        self.host, self.port = host, port
        self.metrics = metrics or Metrics()
        self._runner: web.AppRunner | None = None
        if data.config.faiss.enabled:
            data.vectors.on_query = self._observe_query

    def _observe_query(self, namespace: str, seconds: float) -> None:
        self.metrics.vector_query_seconds.labels(namespace).observe(seconds)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:  # the port taken, or a start cancelled: nothing left listening
            await finished(runner.cleanup())
            raise
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, request: web.Request) -> web.Response:
        health = await self.data.health()
        body = health.to_dict()
        projectors = self.service.health() if self.service is not None else {}
        body["projections"] = projectors
        ok = health.ok and all(p["ok"] for p in projectors.values())
        body["ok"] = ok
        return web.Response(
            text=json.dumps(body, default=str), content_type="application/json",
            status=200 if ok else 503,
        )  # fmt: skip

    async def _metrics(self, request: web.Request) -> web.Response:
        await self.metrics.refresh(self.data, self.service)
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
