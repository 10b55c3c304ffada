"""The envelope's cost without OpenTelemetry (issue #17): append and relay, before against after,
in one process, alternated. Goal: within 3%.

Whole-bench runs of ``append`` and ``relay`` from two checkouts, alternated, moved by 15-30% from
one run to the next on the shared 2-core machine (load average ~10 from other engineers'
benches): far more than the 3% to show. So this stage loads the code *before* the change
(``BEFORE``, the issue-13 commit it was built on, from ``git archive``) beside the current code,
as a second package ``satellites_before``, and measures both in the same process on the same
Postgres and RabbitMQ, each in a log of its own (the before side's at migration 0004, this one's
at head), interleaved call by call or round by round, so any drift in load hits both alike.
"project" is the current code, "raw" the code before; ratio = after / before.

* ``batched_append``: events/s from the median time of 1,000-event batches, a before batch
  then an after batch, 30 of each.
* ``single_append_latency``: median ms of one-event appends (autocommitted), interleaved, 400 each.
* ``relay_throughput``: events/s of a relay publishing 5,000 events to RabbitMQ with confirms
  (the relay bench's measure), 12 rounds alternated, the median of each side. Paced by the
  broker's confirms, one round moves +-15% against the next on a quiet machine; the best of
  few rounds (the relay bench's statistic, made for load that drifts) then swings the ratio by
  as much, the median of many does not. Since it is still the broker's pace:
* ``relay_cpu_per_event``: the process's CPU per published event over the same runs (median;
  lower is better): what the relay's own work costs, which the broker's pace does not move.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import importlib.util
import io
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg

from satellites_es.config import DataLayerConfig, PostgresConfig
from satellites_es.migrate import upgrade
from satellites_es.pgpool import create_pool
from satellites_es.testing.services import find_service_url, unique_name

ROOT = Path(__file__).resolve().parents[2]
#: The commit this change was built on (issue 13's last): the "before" side.
BEFORE = "3628d53"
GOAL = "after within 3% of before"


def _load_before() -> ModuleType:
    """The package as it was at ``BEFORE``, importable as ``satellites_before``."""
    if "satellites_before" in sys.modules:
        return sys.modules["satellites_before"]
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE, "src/satellites_es"],
                             capture_output=True, check=True).stdout  # fmt: skip
    where = Path(tempfile.mkdtemp(prefix="satellites-before-"))
    atexit.register(shutil.rmtree, where, ignore_errors=True)  # imported from it until exit
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(where, filter="data")
    package = where / "src" / "satellites_es"
    spec = importlib.util.spec_from_file_location(
        "satellites_before", package / "__init__.py", submodule_search_locations=[str(package)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["satellites_before"] = module
    spec.loader.exec_module(module)
    return module


@dataclasses.dataclass
class Side:
    """One side's code (``pkg``: ``satellites_es`` or ``satellites_before``) and its own log."""

    name: str
    pkg: str
    pg: PostgresConfig
    pool: asyncpg.Pool
    store: Any

    def event(self, i: int, tag: str) -> Any:
        events = importlib.import_module(f"{self.pkg}.events")
        return events.DataEvent(type="document.indexed", resource="documents",
                                key=f"{tag}-{i % 97}", source="bench",
                                payload={"title": f"doc {i}", "words": 120 + i % 50})  # fmt: skip


@contextlib.asynccontextmanager
async def _side(name: str, pkg: str, revision: str) -> AsyncIterator[Side]:
    fields = PostgresConfig._from_url(find_service_url("postgres"))
    pg = PostgresConfig(**fields, schema=unique_name(f"bench_env_{name}"))
    await upgrade(pg, revision)  # frozen migration blocks: 0004 is the same in both trees
    pool = await create_pool(pg.dsn, min_size=2, max_size=6)  # as the layer makes it
    store_module = importlib.import_module(f"{pkg}.store")
    config_module = importlib.import_module(f"{pkg}.config")
    store = store_module.EventStore(pool, schema=pg.schema, dsn=pg.dsn,
                                    config=config_module.EventLogConfig())  # fmt: skip
    try:
        yield Side(name, pkg, pg, pool, store)
    finally:
        await pool.execute(f'DROP SCHEMA IF EXISTS "{pg.schema}" CASCADE')
        await pool.close()


async def _timed(action: Any) -> float:
    started = time.perf_counter()
    await action
    return time.perf_counter() - started


async def _appends(after: Side, before: Side, batches: int, singles: int) -> dict[str, Any]:
    for side in (before, after):  # warm up: prepared statements, plans
        await side.store.append([side.event(i, "w") for i in range(1000)])
        for i in range(20):
            await side.store.append(side.event(i, "w1"))
    times: dict[str, list[float]] = {"before": [], "after": []}
    for r in range(batches):
        for side in (before, after) if r % 2 else (after, before):
            batch = [side.event(i, f"b{r}") for i in range(1000)]
            times[side.name].append(await _timed(side.store.append(batch)))
    batched = {k: 1000 / statistics.median(v) for k, v in times.items()}
    single: dict[str, list[float]] = {"before": [], "after": []}
    for i in range(singles):
        for side in (before, after) if i % 2 else (after, before):
            single[side.name].append(await _timed(side.store.append(side.event(i, "s"))))
    latency = {k: statistics.median(v) * 1000 for k, v in single.items()}
    return {
        "batched_append": _figure(batched["after"], batched["before"], "events/s"),
        "single_append_latency": _figure(latency["after"], latency["before"], "ms"),
    }


async def _relay_rate(side: Side, rabbit: Any, n: int, name: str) -> tuple[float, float]:
    """Events/s of one relay run, and the process's CPU per event (us) meanwhile."""
    relay_module = importlib.import_module(f"{side.pkg}.relay")
    bus_module = importlib.import_module(f"{side.pkg}.bus.rabbitmq")
    config_module = importlib.import_module(f"{side.pkg}.config")
    cls = config_module.RabbitMQConfig  # the side's own class: fields may differ (TLS, #16)
    known = {f.name for f in dataclasses.fields(cls)}
    typed = cls(**{k: v for k, v in vars(rabbit).items() if k in known})
    bus = bus_module.RabbitMQEventBus(typed)
    await bus.start()
    try:
        await side.pool.execute(
            f'INSERT INTO "{side.pg.schema}".relay_cursors (name, position) VALUES ($1, $2)',
            name, await side.store.head(),
        )  # fmt: skip
        await side.store.append([side.event(i, name) for i in range(n)])
        head = await side.store.head()
        config = config_module.RelayConfig(batch_size=500, confirm_window=500, poll_interval=0.05)
        try:  # the relay on Postgres: a builder since issue 18, the constructor before it
            build = importlib.import_module(f"{side.pkg}.relay_lease").postgres_relay
        except ModuleNotFoundError:
            build = relay_module.Relay
        relay = build(side.store, bus, pool=side.pool, schema=side.pg.schema, config=config,
                      name=name, dsn=side.pg.dsn)  # fmt: skip
        started, cpu = time.perf_counter(), time.process_time()
        task = asyncio.create_task(relay.run())
        while relay.cursor < head:  # noqa: ASYNC110 - polled, as the relay bench does
            await asyncio.sleep(0.005)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        await relay.stop()
        await task
    finally:
        await bus.stop()
    return n / elapsed, cpu / n * 1e6


async def _relays(after: Side, before: Side, rounds: int, n: int) -> dict[str, Any]:
    env = {"SATELLITES_RABBITMQ_URL": find_service_url("rabbitmq")}
    rabbit = DataLayerConfig.from_env(env).rabbitmq
    rates: dict[str, list[float]] = {"before": [], "after": []}
    cpu: dict[str, list[float]] = {"before": [], "after": []}
    configs = {
        s.name: dataclasses.replace(rabbit, exchange=f"{unique_name('bench_env')}.events")
        for s in (before, after)
    }
    # a group bound to everything, so the relay's mandatory publishes are routable
    for side in (before, after):
        await _bind_sink(configs[side.name])
    try:
        for r in range(rounds):
            for side in (before, after) if r % 2 else (after, before):
                rate, per_event = await _relay_rate(side, configs[side.name], n, f"relay{r}")
                rates[side.name].append(rate)
                cpu[side.name].append(per_event)
    finally:
        for config in configs.values():
            await _drop(config)
    return {
        "relay_throughput": _figure(
            statistics.median(rates["after"]), statistics.median(rates["before"]), "events/s"
        ),
        "relay_cpu_per_event": _figure(
            statistics.median(cpu["after"]), statistics.median(cpu["before"]), "us CPU/event"
        ),
    }


async def _bind_sink(rabbit: Any) -> None:
    import aio_pika

    conn = await aio_pika.connect(rabbit.url)
    async with conn:
        channel = await conn.channel()
        exchange = await channel.declare_exchange(rabbit.exchange, "topic", durable=True)
        queue = await channel.declare_queue(f"{rabbit.exchange}.sink", durable=True,
                                            arguments={"x-queue-type": "quorum"})  # fmt: skip
        await queue.bind(exchange, "#")


async def _drop(rabbit: Any) -> None:
    import aio_pika

    conn = await aio_pika.connect(rabbit.url)
    async with conn:
        channel = await conn.channel()
        with contextlib.suppress(Exception):
            await channel.queue_delete(f"{rabbit.exchange}.sink")
        with contextlib.suppress(Exception):
            await channel.exchange_delete(rabbit.exchange)


def _figure(after: float, before: float, unit: str) -> dict[str, Any]:
    return {"project": after, "raw": before, "ratio": after / before if before else 0.0,
            "unit": unit, "goal": GOAL}  # fmt: skip


async def run(quick: bool) -> dict[str, dict[str, Any]]:
    _load_before()
    batches, singles, rounds, n = (20, 300, 6, 3000) if quick else (40, 600, 12, 5000)
    async with (
        _side("before", "satellites_before", "0004") as before,
        _side("after", "satellites_es", "head") as after,
    ):
        figures = await _appends(after, before, batches, singles)
        figures.update(await _relays(after, before, rounds, n))
    return figures


if __name__ == "__main__":
    for name, f in asyncio.run(run("--quick" in sys.argv)).items():
        print(f"envelope {name}: after={f['project']:,.3f} before={f['raw']:,.3f} "
              f"ratio={f['ratio']:.3f} {f['unit']} (goal {f['goal']})")  # fmt: skip
