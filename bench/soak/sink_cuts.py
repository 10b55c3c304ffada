"""Redis and Elasticsearch cut at TCP proxies in front of the projector processes: every
connection severed and new ones refused for ``--cut-min`` to ``--cut-max`` seconds, after gaps
of ``--cut-gap-min`` to ``--cut-gap-max``, while the shared servers keep running for everyone
else. During a cut the soak asks the projectors' ``/health`` and counts the cuts they reported
``backend_down``."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bench.soak.processes import Child
from satellites_es.testing.network_faults import TcpProxy

SINKS = ("redis", "elasticsearch")


class SinkProxies:
    """TCP proxies (:class:`satellites_es.testing.network_faults.TcpProxy`) in front of Redis and
    Elasticsearch, which the projector processes reach only through them. They run on an event
    loop of their own in a thread of this process, so that the soak's own work (producers,
    fault injection, the comparison) never stalls their traffic: a pause there would be an
    unplanned cut. They die with the soak; nothing outlives it."""

    def __init__(self, targets: Mapping[str, tuple[str, int]]) -> None:
        self.targets = dict(targets)
        self.proxies: dict[str, TcpProxy] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sink-proxies",
                                        daemon=True)  # fmt: skip

    def start(self) -> dict[str, int]:
        """Start every proxy; returns their local ports by sink."""
        self._thread.start()
        for name, (host, port) in self.targets.items():
            proxy = TcpProxy(host, port)
            asyncio.run_coroutine_threadsafe(proxy.start(), self._loop).result(10)
            self.proxies[name] = proxy
        return {name: proxy.port for name, proxy in self.proxies.items()}

    async def _on_loop(self, fn: Callable[[], None]) -> None:
        async def call() -> None:
            fn()

        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(), self._loop))

    async def cut(self, name: str) -> None:
        await self._on_loop(self.proxies[name].cut)

    async def restore(self, name: str) -> None:
        await self._on_loop(self.proxies[name].restore)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        for proxy in self.proxies.values():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(proxy.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()


@dataclass
class CutStats:
    cuts: Counter[str] = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    longest: dict[str, float] = field(default_factory=dict)
    #: cuts during which a projector's /health said that sink down (``backend_down``)
    seen_down: Counter[str] = field(default_factory=Counter)


class SinkCuts:
    """Cuts one sink (``redis`` or ``elasticsearch``) through its proxy for ``--cut-min`` to
    ``--cut-max`` seconds at a time, at random gaps, until the time is up. A task per sink,
    so the two overlap at random and the other faults go on meanwhile. The restore is in a
    ``finally``, and a cut never outlasts the fault period."""

    def __init__(
        self, proxies: SinkProxies, children: list[Child], rng: random.Random, stats: CutStats
    ) -> None:
        self.proxies, self.children, self.rng, self.stats = proxies, children, rng, stats

    async def run(
        self, sink: str, stop_at: float, gap: tuple[float, float], length: tuple[float, float]
    ) -> None:
        for _ in range(100_000):
            wait = self.rng.uniform(*gap)
            if time.monotonic() + wait + length[0] >= stop_at:
                return
            await asyncio.sleep(wait)
            seconds = min(self.rng.uniform(*length), stop_at - time.monotonic())
            await self._cut(sink, seconds)

    async def _cut(self, sink: str, seconds: float) -> None:
        started = time.monotonic()
        await self.proxies.cut(sink)
        try:
            self.stats.cuts[sink] += 1
            if await self._watch(sink, started + seconds):
                self.stats.seen_down[sink] += 1
        finally:
            await self.proxies.restore(sink)
            took = time.monotonic() - started
            self.stats.seconds[sink] += took
            self.stats.longest[sink] = max(self.stats.longest.get(sink, 0.0), took)

    async def _watch(self, sink: str, until: float) -> bool:
        """Wait until ``until``, asking the projectors' /health every 2 s; True if one of
        them said ``sink`` down meanwhile."""
        seen = False
        while (left := until - time.monotonic()) > 0:
            await asyncio.sleep(min(2.0, left))
            if not seen and time.monotonic() < until:
                seen = await self._reported_down(sink)
        return seen

    async def _reported_down(self, sink: str) -> bool:
        for child in self.children:
            body = await child.health() if child.role == "projector" else None
            for state in ((body or {}).get("projections") or {}).values():
                if state.get("state") == "backend_down" and state.get("backend") == sink:
                    return True
        return False
