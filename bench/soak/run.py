"""One soak run: the setup (namespace, proxies, pools, children), the production under faults,
the catch-up, and the verdict on what the stores hold. Every resource the setup makes is
undone by the exit stack, in reverse order, however the run ends."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from bench.soak.auditor import AuditRecord, declare_audit_queues
from bench.soak.catchup import Progress, Watch, wait_for_catchup
from bench.soak.evidence import audit_sinks, dump_sinks, read_log, read_parked
from bench.soak.faults import Faults, FaultStats, ensure_rabbit_started
from bench.soak.namespace import Namespace, cleanup, endpoint, via
from bench.soak.oracle import Evidence, Verdict, fold, judge
from bench.soak.poison import Poisoner, PoisonStats
from bench.soak.processes import Supervisor, make_children, stop_emulator, watchdog
from bench.soak.producers import Producer, ProducerStats
from bench.soak.report import log, report_lines
from bench.soak.sabotage import sabotage
from bench.soak.sink_cuts import SINKS, CutStats, SinkCuts, SinkProxies
from satellites_es.config import EventLogConfig, PostgresConfig
from satellites_es.demo.projections import PROJECTIONS
from satellites_es.migrate import upgrade
from satellites_es.projections import Checkpoints
from satellites_es.store import EventStore
from satellites_es.testing.services import EmulatedElasticsearch, find_service_url, unique_name


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.duration = args.seconds if args.seconds is not None else args.minutes * 60.0
        self.seed = args.seed if args.seed is not None else random.randrange(1 << 30)
        self.rng = random.Random(self.seed)
        self.producer_stats = ProducerStats()
        self.fault_stats = FaultStats()
        self.cut_stats = CutStats()
        self.poison_stats = PoisonStats()
        self.progress = Progress()
        self.produce_seconds = 0.0
        self.catchup_seconds = 0.0
        self.exit_code = 1
        self.started = False  # the setup is done: from here on, a failed run keeps its logs
        self.tasks: list[asyncio.Task[Any]] = []
        self.supervision: list[asyncio.Task[Any]] = []
        self.watchdog: subprocess.Popen[bytes] | None = None

    # -- setup ------------------------------------------------------------------------------------

    async def setup(self, stack: contextlib.AsyncExitStack) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="satellites-soak-"))
        stack.callback(self._remove_workdir)
        (self.workdir / "logs").mkdir()
        # This process's own library logging (aio-pika reconnects): to a file, not the console.
        logging.basicConfig(filename=self.workdir / "logs" / "soak.log", level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
        es_url = self._elasticsearch(stack)
        self.ns = ns = Namespace(
            run_id=unique_name("soak"), postgres_url=find_service_url("postgres"),
            redis_url=find_service_url("redis"), amqp_url=find_service_url("rabbitmq"),
            es_url=es_url, workdir=self.workdir,
        )  # fmt: skip
        ns.local_only()
        stack.push_async_callback(self._cleanup_namespace)
        self._proxies(stack)
        log(f"run {ns.run_id}: {self.duration:.0f}s at {self.args.rate}/s over {self.args.keys} "
            f"keys, seed {self.seed}; Elasticsearch "
            f"{'at ' + es_url if self.es_external else 'emulated (noida-db)'}; "
            f"work dir {self.workdir}")  # fmt: skip
        self.config = ns.config()
        await upgrade(self.config.postgres)
        await self._clients(stack)
        self._parts(stack)

    def _elasticsearch(self, stack: contextlib.AsyncExitStack) -> str:
        """The URL of Elasticsearch: ``SATELLITES_ES_URL``, else an emulator of the run's own
        (with a watchdog that stops it if this process is SIGKILLed)."""
        self.es_external = bool(os.environ.get("SATELLITES_ES_URL"))
        if self.es_external:
            return os.environ["SATELLITES_ES_URL"]
        self.emulator = EmulatedElasticsearch(data_dir=self.workdir / "es")
        stack.callback(lambda: stop_emulator(self.emulator, self.watchdog))
        url = self.emulator.start()
        self.watchdog = watchdog(self.emulator, self.workdir)
        return url

    def _proxies(self, stack: contextlib.AsyncExitStack) -> None:
        ns = self.ns
        self.proxies = SinkProxies({"redis": endpoint(ns.redis_url, 6379),
                                    "elasticsearch": endpoint(ns.es_url, 9200)})  # fmt: skip
        stack.callback(self.proxies.stop)
        ports = self.proxies.start()
        ns.redis_proxy_url = via(ns.redis_url, ports["redis"])
        ns.es_proxy_url = via(ns.es_url, ports["elasticsearch"])

    async def _clients(self, stack: contextlib.AsyncExitStack) -> None:
        ns = self.ns
        self.pool = await asyncpg.create_pool(
            ns.postgres_url, min_size=2, max_size=8,
            server_settings={"application_name": ns.app_name},
        )  # fmt: skip
        stack.push_async_callback(self.pool.close)
        self.verify_pool = await asyncpg.create_pool(
            ns.postgres_url, min_size=1, max_size=2,
            server_settings={"application_name": ns.app_name + "_verify"},
        )  # fmt: skip
        stack.push_async_callback(self.verify_pool.close)
        self.redis = aioredis.Redis.from_url(ns.redis_url)
        stack.push_async_callback(self.redis.aclose)
        self.store = EventStore(self.pool, schema=ns.schema, config=EventLogConfig(), dsn=None)
        self.verify_store = EventStore(self.verify_pool, schema=ns.schema,
                                       config=EventLogConfig(), dsn=None)  # fmt: skip
        self.checkpoints = Checkpoints(self.verify_pool, ns.schema)
        self.audit = AuditRecord(ns, self.redis)

    def _parts(self, stack: contextlib.AsyncExitStack) -> None:
        ns, args, seed = self.ns, self.args, self.seed
        pg_port = PostgresConfig(**PostgresConfig._from_url(ns.postgres_url)).port
        self.children = make_children(ns)
        self.supervisor = Supervisor(self.children)
        self.faults = Faults(ns, self.children, pg_port, self.rng, args.rabbit_every,
                             self.fault_stats)  # fmt: skip
        stack.push_async_callback(self._close_faults)
        stack.push_async_callback(self._stop_children)
        stack.push_async_callback(self._cancel_tasks)
        self.cuts = SinkCuts(self.proxies, self.children, random.Random(f"{seed}-cuts"),
                             self.cut_stats)  # fmt: skip
        self.poisoner = Poisoner(self.store, self.pool, random.Random(f"{seed}-poison"),
                                 self.poison_stats)  # fmt: skip
        self.started = True

    # -- teardown (the exit stack's callbacks) ----------------------------------------------------

    async def _cancel_tasks(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _stop_children(self) -> None:
        if self.supervisor.running:
            await self.supervisor.stop_all(timeout=10)

    async def _close_faults(self) -> None:
        if self.faults.rabbit_ok and not await ensure_rabbit_started(self.ns.amqp_url):
            print("WARNING: RabbitMQ is not answering after the soak", file=sys.stderr)
        await self.faults.close()

    async def _cleanup_namespace(self) -> None:
        problems = await cleanup(self.ns, self.es_external)
        if problems:
            print(f"cleanup problems: {problems}", file=sys.stderr)

    def _remove_workdir(self) -> None:
        failed = self.exit_code != 0 and not self.args.sabotage  # (a sabotaged run must fail)
        if self.started and (failed or self.args.keep):
            print(f"logs kept in {self.workdir / 'logs'}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- the run ----------------------------------------------------------------------------------

    async def produce(self) -> None:
        """Start the children, then append under faults until the time is up."""
        args = self.args
        await declare_audit_queues(self.config, self.redis, self.ns)
        for child in self.children:
            child.start()
        self.supervision = [self._task(self.supervisor.run(), "supervisor"),
                            self._task(self.supervisor.probe_relays(), "relay-probe")]  # fmt: skip
        started = time.monotonic()
        stop_at = started + self.duration
        fault_stop = stop_at - args.quiet
        count = max(1, min(16, math.ceil(args.rate / 25)))
        work = [
            self._task(Producer(i, self.store, self.pool, self.seed, self.producer_stats)
                       .run(args.rate / count, args.keys, stop_at), f"producer-{i}")
            for i in range(count)
        ]  # fmt: skip
        work.append(self._task(self.faults.run(fault_stop, args.fault_min, args.fault_max),
                               "faults"))  # fmt: skip
        work += [self._task(self.cuts.run(sink, fault_stop, (args.cut_gap_min, args.cut_gap_max),
                                          (args.cut_min, args.cut_max)), f"cut-{sink}")
                 for sink in SINKS]  # fmt: skip
        work.append(self._task(self.poisoner.run(fault_stop, (args.poison_min, args.poison_max)),
                               "poisoner"))  # fmt: skip
        await self._watch(started, stop_at)
        await asyncio.gather(*work)
        for sink in SINKS:
            await self.proxies.restore(sink)  # (each cut restores itself; this is belt and braces)
        self.produce_seconds = time.monotonic() - started

    def _task(self, work: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(work, name=name)
        self.tasks.append(task)
        return task

    async def _watch(self, started: float, stop_at: float) -> None:
        """Until ``stop_at``: fail as soon as a task fails, and say how it goes now and then."""
        last_report = started
        while time.monotonic() < stop_at:
            await asyncio.sleep(1.0)
            for t in self.tasks:
                if t.done() and t.exception() is not None:
                    raise RuntimeError(f"{t.get_name()} failed") from t.exception()
            if time.monotonic() - last_report >= self.args.report_every:
                last_report = time.monotonic()
                log(f"t={last_report - started:.0f}s appended={self.producer_stats.appended} "
                    f"faults={dict(self.fault_stats.counts)} cuts={dict(self.cut_stats.cuts)} "
                    f"poison={len(self.poison_stats.injected)} "
                    f"crashes={self.supervisor.crash_count}")  # fmt: skip

    async def catch_up(self) -> None:
        """Wait for everything to catch up, then stop the children gracefully (FAISS saves its
        snapshot)."""
        await ensure_rabbit_started(self.ns.amqp_url)
        log(f"faults stopped after {self.produce_seconds:.0f}s; waiting for the catch-up")
        faiss_child = next(c for c in self.children if c.name == "project-embeddings")
        watch = Watch(self.verify_pool, self.ns, self.checkpoints, faiss_child, self.audit)
        self.progress, self.catchup_seconds = await wait_for_catchup(
            watch, self.poison_stats.undeliverable(), self.args.catchup_timeout
        )
        await self.supervisor.stop_all()
        for t in self.supervision:
            t.cancel()
        await asyncio.gather(*self.supervision, return_exceptions=True)

    async def evidence(self) -> Evidence:
        """Read what the verdict looks at (damaged first, with ``--sabotage``)."""
        events = await read_log(self.verify_store)
        counts = await self.audit.counts()  # before --sabotage: it damages the positions only
        if self.args.sabotage:
            entities = {"entities": PROJECTIONS["entities"]}
            await sabotage(self.ns, self.redis, self.audit, fold(events, entities)["entities"])
        sinks, snapshot = await dump_sinks(self.ns, self.checkpoints, PROJECTIONS)
        return Evidence(
            events=events, injected=list(self.poison_stats.injected), counts=counts,
            delivered=await self.audit.positions(), sinks=sinks, snapshot_position=snapshot,
            parked=await read_parked(self.verify_pool, self.ns),
            audits=await audit_sinks(self.ns, self.verify_pool, PROJECTIONS),
            caught_up=self.progress.caught_up,
        )  # fmt: skip

    def conclude(self, evidence: Evidence) -> Verdict:
        verdict = judge(evidence, PROJECTIONS)
        for line in report_lines(self, evidence, verdict):
            print(line)
        self.exit_code = 0 if verdict.ok else 1
        return verdict


async def soak(args: argparse.Namespace) -> int:
    run = Soak(args)
    async with contextlib.AsyncExitStack() as stack:
        await run.setup(stack)
        await run.produce()
        await run.catch_up()
        verdict = run.conclude(await run.evidence())
    print(verdict.last_line(), flush=True)
    return run.exit_code
