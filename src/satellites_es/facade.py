"""The DataLayer façade: one ``start()`` / ``stop()`` / ``health()`` and the native clients.

Lifecycle (httpx's ``ClientState``): ``NEW -> STARTING -> RUNNING -> STOPPING -> STOPPED``. A
layer starts once; starting twice or using a stopped layer raises :class:`LifecycleError`.

``start()`` connects every enabled backend concurrently, each with bounded retries
(:func:`~satellites_es.backends.connect_with_retry`). The first backend that gives up cancels the
others, everything already opened is closed again, and the error names that backend; the whole
start is bounded by ``connect_timeout``. A backend named in ``optional`` (Redis, Elasticsearch:
their clients connect per request) that does not answer in that time is started without: its
client reconnects by itself once the server is back, and ``health()`` reports it down until
then. ``satellites-es run`` starts so, so that an Elasticsearch outage does not keep the relay
and the other projectors from starting. ``stop()`` is graceful, bounded by ``stop_timeout`` per
backend, and idempotent. ``health()`` never raises.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import logging
from collections.abc import Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import asyncpg
import redis.asyncio as aioredis
from elasticsearch import AsyncElasticsearch

from .backends import (
    Backend,
    ElasticsearchBackend,
    LazyBackend,
    PostgresBackend,
    RedisBackend,
    connect_with_retry,
)
from .config import DataLayerConfig
from .errors import (
    BackendRefusedError,
    BackendUnavailableError,
    ConfigurationError,
    LifecycleError,
    SatellitesError,
)
from .events import EventBus, InProcessEventBus, RelayBus
from .health import BackendHealth, Health, probe
from .shielded import finished, stop_task
from .tls import rabbitmq_tls
from .tracing import span

if TYPE_CHECKING:
    from .bus.outbox import DurableEventBus
    from .bus.rabbitmq import RabbitMQEventBus
    from .projections import Projection
    from .projections.supervisor import ProjectionService
    from .relay import Relay
    from .store import EventStore
    from .upcasting import Upcasters
    from .vectors import VectorIndex

__all__ = ["DataLayer", "LayerState"]

logger = logging.getLogger(__name__)

BACKENDS = ("postgres", "redis", "elasticsearch", "faiss", "rabbitmq")
HEALTH_ENTRIES = (*BACKENDS, "relay")
#: At most this long, ``stop()`` lets what was published before it reach local subscribers.
DRAIN_TIMEOUT = 2.0


class LayerState(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class _VectorBackend:
    """Adapts the FAISS :class:`VectorIndex` (our only wrapper) to the backend lifecycle."""

    name = "faiss"

    def __init__(self, index: VectorIndex) -> None:
        self.index = index

    async def connect(self) -> None:
        await self.index.open()

    async def close(self) -> None:
        await self.index.close()

    async def check(self) -> Mapping[str, Any]:
        return self.index.stats()


class _BusBackend:
    """Adapts the RabbitMQ bus (a connection of its own) to the backend lifecycle."""

    name = "rabbitmq"

    def __init__(self, bus: RabbitMQEventBus) -> None:
        self.bus = bus

    async def connect(self) -> None:
        await self.bus.start()

    async def close(self) -> None:
        await self.bus.stop()

    async def check(self) -> Mapping[str, Any]:
        result: Mapping[str, Any] = await self.bus.health()
        # a TLS URL never falls back to plaintext: the config says what the connection is
        return {**result, **rabbitmq_tls(self.bus.config).to_details()}


def _broker(bus: RelayBus) -> RabbitMQEventBus | None:
    """``bus`` when it is the RabbitMQ bus (its connection is the layer's to start, check and
    stop), else None."""
    if isinstance(bus, InProcessEventBus):  # no broker: not even aio-pika to import
        return None
    from .bus.rabbitmq import RabbitMQEventBus

    return bus if isinstance(bus, RabbitMQEventBus) else None


class DataLayer:
    """Unified façade: lifecycle, health, and access to every backend."""

    def __init__(
        self,
        config: DataLayerConfig | None = None,
        *,
        bus: RelayBus | None = None,
        optional: Collection[str] = (),
        upcasters: Upcasters | None = None,
    ) -> None:
        self.config = config or DataLayerConfig()
        #: Schema upcasters every read of the log applies (checked at start).
        self.upcasters = upcasters
        self._state = LayerState.NEW
        self._stopping: asyncio.Future[None] | None = None
        self._backends: dict[str, Backend] = self._make_backends()
        self._optional = frozenset(optional)
        for name in self._optional:
            if name not in ("redis", "elasticsearch"):
                raise ConfigurationError(
                    "DataLayer(optional=...)", f"{name!r} cannot start without its server; "
                    "only 'redis' and 'elasticsearch' can"
                )  # fmt: skip
        self._bus: RelayBus = bus if bus is not None else self._make_bus()
        self._events: EventBus = self._bus
        #: The bus with a connection of its own (RabbitMQ), started and stopped with the layer;
        #: None for the in-process bus.
        self._broker = _broker(self._bus)
        #: The log-backed façade bus (``events`` once started with the log), with its catch-up
        #: subscriptions to close.
        self._durable: DurableEventBus | None = None
        self._store: EventStore | None = None
        self._relay: Relay | None = None
        self._relay_task: asyncio.Task[None] | None = None
        self._projection_services: list[ProjectionService] = []
        if self._broker is not None:
            self._backends["rabbitmq"] = _BusBackend(self._broker)

    # -- construction -------------------------------------------------------------------------

    def _make_backends(self) -> dict[str, Backend]:
        c = self.config
        made: dict[str, Backend] = {}
        if c.postgres.enabled:
            made["postgres"] = PostgresBackend(c.postgres)
        if c.redis.enabled:
            made["redis"] = RedisBackend(c.redis)
        if c.elasticsearch.enabled:
            made["elasticsearch"] = ElasticsearchBackend(c.elasticsearch)
        if c.faiss.enabled:
            from .vectors import VectorIndex

            made["faiss"] = _VectorBackend(VectorIndex(c.faiss))
        return made

    def _make_bus(self) -> RelayBus:
        if not self.config.rabbitmq.enabled:
            return InProcessEventBus()
        from .bus.rabbitmq import RabbitMQEventBus

        return RabbitMQEventBus(self.config.rabbitmq)

    def _secrets(self) -> tuple[str | None, ...]:
        c = self.config
        return (
            c.postgres.password,
            c.postgres.sslpassword,
            c.redis.password,
            c.rabbitmq.password,
            c.elasticsearch.password,
            c.elasticsearch.api_key,
        )

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def state(self) -> LayerState:
        return self._state

    async def start(self) -> None:
        """Connect all enabled backends concurrently; on failure close them and name the culprit."""
        if self._state is not LayerState.NEW:
            raise LifecycleError(
                f"DataLayer is {self._state.value}; a layer starts once (create a new DataLayer)"
            )
        if self.upcasters is not None:
            self.upcasters.check()  # a gap in a chain is a configuration error, before connecting
        self._state = LayerState.STARTING
        try:
            with span("datalayer.start", backends=",".join(self._backends)):
                await self._connect_all()
                await self._open_log()
        except BaseException:
            # a cancelled start is cleaned up all the same
            await finished(self._close_all(), limit=2 * self.config.stop_timeout)
            self._state = LayerState.STOPPED
            raise
        self._state = LayerState.RUNNING
        logger.info("data layer started: %s", ", ".join(self._backends) or "no backends")

    async def _connect_all(self) -> None:
        timeout, secrets = self.config.connect_timeout, self._secrets()
        tasks = {
            name: asyncio.create_task(
                connect_with_retry(b, timeout, secrets), name=f"connect-{name}"
            )
            for name, b in self._backends.items()
        }
        required = [t for name, t in tasks.items() if name not in self._optional]
        try:
            if required:
                await asyncio.wait(required, return_when=asyncio.FIRST_EXCEPTION)
            if not any(t.done() and not t.cancelled() and t.exception() for t in required):
                await asyncio.wait(tasks.values())  # the optional ones, for at most the timeout
        finally:
            for task in tasks.values():
                task.cancel()
            results = dict(zip(tasks, await asyncio.gather(*tasks.values(),
                                                          return_exceptions=True), strict=True))  # fmt: skip
        for name, result in results.items():
            backend = self._backends[name]
            if (
                name in self._optional
                and isinstance(result, BackendUnavailableError)
                and not isinstance(result, BackendRefusedError)  # a wrong CA is no outage
            ):
                assert isinstance(backend, LazyBackend)
                backend.open_lazily()
                logger.warning("%s; starting without it (it is used once it answers)", result)
                results[name] = None
        failures = [r for r in results.values() if isinstance(r, BackendUnavailableError)]
        if failures:
            raise failures[0]
        for r in results.values():
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                raise r

    async def _open_log(self) -> None:
        """With Postgres and the log enabled, ``events.publish`` becomes durable (the outbox)."""
        c = self.config
        if not (c.log.enabled and "postgres" in self._backends):
            return
        from .bus.outbox import DurableEventBus
        from .store import EventStore

        if c.log.auto_migrate:
            await self._migrate()
        self._store = EventStore(
            self.postgres, schema=c.postgres.schema, config=c.log, dsn=c.postgres.dsn,
            upcasters=self.upcasters,
        )  # fmt: skip
        retries = {} if self._broker is None else {"max_retries": self._broker.config.max_retries}
        self._events = self._durable = DurableEventBus(self._store, self._bus, **retries)
        if c.relay.enabled:
            self._start_relay(self._store)

    def _start_relay(self, store: EventStore) -> None:
        """The relay runs as a named, watched task; several layers elect one leader."""
        from .relay_lease import postgres_relay

        c = self.config
        self._relay = postgres_relay(
            store, self._bus, pool=self.postgres, schema=c.postgres.schema, config=c.relay,
            dsn=c.postgres.dsn,
        )  # fmt: skip
        # A context of its own: not the start span's (a trace of its own per batch, linked to
        # the events'), nor the caller's handled event.
        self._relay_task = asyncio.create_task(
            self._relay.run(), name="satellites-es-relay", context=contextvars.Context()
        )
        self._relay_task.add_done_callback(self._relay_done)

    def _relay_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("the relay stopped: %s", task.exception(), exc_info=task.exception())

    async def subscriptions_ready(self) -> None:
        """Wait until every subscription made since :meth:`start` is bound on the bus.

        ``subscribe``/``subscribe_all`` are synchronous (the seed's protocol); on RabbitMQ a
        subscription made after start is declared and bound by a background task, and the broker
        routes an event only to queues bound when it is published. Subscribe before ``start()``,
        or await this before producing events the new subscriber must see.
        """
        if self._state is not LayerState.RUNNING:
            raise LifecycleError(f"DataLayer is {self._state.value}: start() it first")
        if self._broker is not None:  # the in-process bus binds nothing: ready at once
            await self._broker.wait_ready()

    def background_error(self) -> BaseException | None:
        """The error that ended a background task (the relay), if one did."""
        task = self._relay_task
        if task is None or not task.done() or task.cancelled():
            return None
        return task.exception()

    async def _stop_relay(self) -> None:
        if self._relay is not None:
            await self._relay.stop(timeout=self.config.stop_timeout)
        if self._relay_task is not None and not self._relay_task.done():
            stop_task(self._relay_task)
            await asyncio.gather(self._relay_task, return_exceptions=True)

    async def _migrate(self) -> None:
        from .migrate import auto_upgrade

        try:
            await auto_upgrade(self.config.postgres)
        except ConfigurationError:
            raise  # a role that cannot migrate an outdated schema: the message says who can
        except Exception as exc:
            raise BackendUnavailableError("postgres", f"migration failed: {exc}") from exc

    async def stop(self) -> None:
        """Graceful and idempotent: close every backend, each within ``stop_timeout``.

        A stop runs to its end even if the caller is cancelled meanwhile (a timeout around it,
        Ctrl-C in an ``async with``): the caller waits for it, at most twice ``stop_timeout``
        more, and is then cancelled (:func:`satellites_es.shielded.finished`). A second
        ``stop()`` while one runs waits for the same one. Called from a handler the layer runs,
        it ends that handler's task as any other (after its grace) and never waits for itself."""
        if self._state is LayerState.NEW:
            self._state = LayerState.STOPPED
            return
        if self._stopping is None:
            if self._state is LayerState.STOPPED:
                return  # a start that failed has closed everything already
            self._state = LayerState.STOPPING
            self._stopping = asyncio.ensure_future(self._stop())
        await finished(self._stopping, limit=2 * self.config.stop_timeout)

    async def _stop(self) -> None:
        with span("datalayer.stop"):
            await self._drain()
            await self._close_all()
        self._state = LayerState.STOPPED
        logger.info("data layer stopped")

    async def _drain(self) -> None:
        """The seed publishes and stops at once: give the relay (when it leads) and this
        process's subscribers up to ``DRAIN_TIMEOUT`` to deliver what was committed before
        ``stop()``. Whatever is left stays in the log and the durable queues: nothing is lost
        either way, this only makes a short-lived process see its own events."""
        relay, store, task = self._relay, self._store, self._relay_task
        try:
            async with asyncio.timeout(min(DRAIN_TIMEOUT, self.config.stop_timeout)):
                if relay is not None and store is not None and task is not None:
                    from .relay import RelayState

                    head, leading = await store.head(), (RelayState.NEW, RelayState.ACTIVE)
                    while True:  # polled: the relay has no "published up to" signal
                        if task.done() or relay.state not in leading or relay.cursor >= head:
                            break
                        await asyncio.sleep(0.01)
                if self._broker is not None:
                    await self._broker.drain()
        except (TimeoutError, SatellitesError) as exc:
            logger.info("stop: not everything was delivered before stopping (%r)", exc)

    async def _close_all(self) -> None:
        await self._stop_relay()  # first: it publishes to the bus and reads Postgres
        if self._durable is not None:  # catch-up subscriptions read the log
            await self._durable.close()

        async def close(name: str, backend: Backend) -> None:
            try:
                async with asyncio.timeout(self.config.stop_timeout):
                    await backend.close()
            except Exception as exc:
                logger.warning("closing %s failed: %s", name, exc)

        # The bus first: it may still be delivering to handlers that use the other clients.
        order = sorted(self._backends.items(), key=lambda kv: kv[0] != "rabbitmq")
        for name, backend in order[:1]:
            await close(name, backend)
        await asyncio.gather(*(close(n, b) for n, b in order[1:]))

    async def __aenter__(self) -> DataLayer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- health -------------------------------------------------------------------------------

    async def health(self, timeout: float = 5.0) -> Health:
        """Per-backend state, latency and details. Never raises."""
        names = list(HEALTH_ENTRIES)
        with span("datalayer.health"):
            results = await asyncio.gather(*(self._health_of(n, timeout) for n in names))
        details = dict(zip(names, results, strict=True))
        return Health(ok=all(h.ok for h in details.values()), details=details)

    async def _health_of(self, name: str, timeout: float) -> BackendHealth:
        if name == "relay":
            return await self._relay_health(timeout)
        backend = self._backends.get(name)
        if backend is None:
            return BackendHealth("disabled")
        if self._state is not LayerState.RUNNING:
            return BackendHealth("down", error=f"data layer is {self._state.value}")
        return await probe(backend.check, timeout)

    async def _relay_health(self, timeout: float) -> BackendHealth:
        relay, task = self._relay, self._relay_task
        if relay is None or task is None:
            return BackendHealth("disabled")
        if task.done() and not task.cancelled() and task.exception() is not None:
            return BackendHealth("down", error=f"relay stopped: {task.exception()}")
        return await probe(relay.metrics, timeout)

    # -- read your own writes -----------------------------------------------------------------

    def attach_projections(self, service: ProjectionService) -> None:
        """Called by a :class:`ProjectionService` that runs on this layer as it starts, so that
        :meth:`wait_for` can wait on this process's own projectors."""
        if service not in self._projection_services:
            self._projection_services.append(service)

    def detach_projections(self, service: ProjectionService) -> None:
        if service in self._projection_services:
            self._projection_services.remove(service)

    async def wait_for(
        self,
        position: int,
        projections: Iterable[str | Projection] | None = None,
        *,
        timeout: float = 30.0,
    ) -> None:
        """Return once ``position`` is visible to this process's reads of each projection
        (every projection this process runs when None): FAISS on this process's own index, an
        Elasticsearch index searchable (refreshed), Redis applied. A projector of this process
        that is down raises :class:`~satellites_es.errors.ProjectorDownError` at once; a
        position not reached in ``timeout`` seconds raises
        :class:`~satellites_es.errors.NotCaughtUpError`. See :mod:`satellites_es.semantic.consistency`.
        """
        from .semantic.consistency import wait_for

        self._running("postgres")
        await wait_for(self, list(self._projection_services), position, projections, timeout)

    # -- native clients -----------------------------------------------------------------------

    def _running(self, name: str) -> Any:
        if self._state not in (LayerState.RUNNING, LayerState.STARTING):
            raise LifecycleError(
                f"DataLayer is {self._state.value}: start() it before using {name}"
            )
        backend = self._backends.get(name)
        if backend is None:
            raise LifecycleError(f"{name} is disabled in the configuration")
        return backend

    @property
    def redis(self) -> aioredis.Redis:
        client = self._running("redis").client
        assert client is not None
        return client  # type: ignore[no-any-return]

    @property
    def postgres(self) -> asyncpg.Pool:
        pool = self._running("postgres").pool
        assert pool is not None
        return pool  # type: ignore[no-any-return]

    @property
    def elasticsearch(self) -> AsyncElasticsearch:
        client = self._running("elasticsearch").client
        assert client is not None
        return client  # type: ignore[no-any-return]

    @property
    def vectors(self) -> VectorIndex:
        return self._running("faiss").index  # type: ignore[no-any-return]

    @property
    def events(self) -> EventBus:
        """The event bus; usable before start (to subscribe), not after stop."""
        if self._state in (LayerState.STOPPING, LayerState.STOPPED):
            raise LifecycleError(f"DataLayer is {self._state.value}")
        return self._events

    @property
    def log(self) -> EventStore:
        """The event log (the outbox): append inside your own transaction, read, replay."""
        self._running("postgres")
        if self._store is None:
            raise LifecycleError("the event log is disabled in the configuration")
        return self._store
