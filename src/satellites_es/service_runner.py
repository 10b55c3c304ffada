"""The long-running service behind ``satellites-es run``, ``relay`` and ``project``.

One process: a ``DataLayer`` (whose relay publishes the log, leader-elected), the chosen
projectors in watched tasks, and optionally the HTTP endpoints ``/health`` and ``/metrics``.
SIGTERM and SIGINT start a graceful stop: projectors finish the batch in flight (or leave it to be
read again: a batch is applied before its checkpoint moves, so nothing is half applied), the
relay finishes or abandons its window (the cursor moves only after confirms), FAISS snapshots
are saved, then the connections close.

One failing part does not stop the others: Redis and Elasticsearch may be down when the service
starts (it starts without them and uses them once they answer), each projector rides out its
sink's outages and is restarted with backoff when it fails otherwise, and the relay restarts
itself the same way; ``/health`` says what is down meanwhile (503). The service exits only on
SIGTERM/SIGINT or a configuration error (exit 2), which no restart can mend.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import DataLayerConfig
from .errors import BackgroundTaskError, ProjectionError
from .facade import DataLayer
from .projections import Projection
from .projections.discovery import load_projections, upcasters_of
from .projections.supervisor import ProjectionService
from .shielded import finished

if TYPE_CHECKING:
    from .health_server import HealthServer

__all__ = ["ServiceOptions", "run_service", "select_projections"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceOptions:
    relay: bool = True
    projections: tuple[str, ...] = ()  # names; empty = none
    http_port: int | None = None
    http_host: str = "127.0.0.1"
    poll_interval: float = 1.0


def select_projections(config: DataLayerConfig, names: Sequence[str]) -> list[Projection]:
    """The projections called ``names`` (``all``: every one) from the configured module."""
    available = load_projections(config.projections_module)
    if list(names) == ["all"]:
        return list(available.values())
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ProjectionError(
            f"unknown projection(s) {', '.join(unknown)}; known: {', '.join(sorted(available))}"
        )
    return [available[n] for n in names]


async def run_service(
    config: DataLayerConfig, options: ServiceOptions, stop: asyncio.Event | None = None
) -> None:
    """Run until ``stop`` is set or SIGTERM/SIGINT arrives; raise if a projector dies."""
    stop = stop or asyncio.Event()
    config = config.replace(relay=dataclasses.replace(config.relay, enabled=options.relay))
    projections = select_projections(config, options.projections) if options.projections else []
    with _signals(stop):
        enabled = {"redis": config.redis.enabled, "elasticsearch": config.elasticsearch.enabled}
        optional = [name for name, on in enabled.items() if on]
        upcasters = upcasters_of(config.projections_module)
        async with DataLayer(config, optional=optional, upcasters=upcasters) as data:
            service = ProjectionService(data, projections, poll_interval=options.poll_interval)
            http: HealthServer | None = None
            try:
                await service.start()
                http = await _start_http(data, service, options)
                await _until_stopped(stop, data, service)
            finally:
                logger.info("stopping: projectors, then the relay and the connections")
                # to its end even if this task is cancelled: the layer's clients close next
                await finished(
                    _stop_serving(http, service, config.stop_timeout),
                    limit=2 * config.stop_timeout,
                )


async def _stop_serving(
    http: HealthServer | None, service: ProjectionService, timeout: float
) -> None:
    if http is not None:
        await http.stop()
    await service.stop(timeout=timeout)


async def _until_stopped(stop: asyncio.Event, data: DataLayer, service: ProjectionService) -> None:
    """Wait for a stop. The relay and the projectors restart themselves on failure; one that
    ended for good (a configuration error) stops the service with its error instead of leaving
    a process that looks alive but no longer publishes or projects."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                await stop.wait()
        service.raise_if_failed()
        error = data.background_error()
        if error is not None:
            raise BackgroundTaskError(
                f"the relay stopped: {type(error).__name__}: {error}"
            ) from error


async def _start_http(
    data: DataLayer, service: ProjectionService, options: ServiceOptions
) -> HealthServer | None:
    if options.http_port is None:
        return None
    from .health_server import HealthServer

    server = HealthServer(data, service, host=options.http_host, port=options.http_port)
    await server.start()
    return server


@contextlib.contextmanager
def _signals(stop: asyncio.Event):  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, _on_signal, stop, sig)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    logger.warning("received %s: stopping gracefully", sig.name)
    stop.set()
