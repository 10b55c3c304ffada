"""Soak test: steady producers, random faults, then every sink compared with the log key by key.

``python bench/soak.py --minutes N [--rate 200] [--keys 500] [--seed S]`` (or ``--seconds``).

What runs, all in a namespace of its own (a fresh Postgres schema, Redis key prefix, RabbitMQ
exchange, Elasticsearch index prefix and FAISS directory, handed to the subprocesses as
``SATELLITES_*`` variables and removed afterwards):

* producers in this process append entity, document and embedding events (about 10% deletes)
  at ``--rate`` events/s over ``--keys`` keys per resource, retrying a failed append with the
  same event ids (the log stores an id once);
* two ``satellites-es relay`` processes (one leads, one stands by);
* two ``satellites-es project -p entities -p documents`` processes (competing on the same
  position-conditional sinks) and one ``satellites-es project -p embeddings`` (FAISS); the
  projector processes reach Redis and Elasticsearch only through TCP proxies
  (:class:`satellites_es.testing.TcpProxy`) that this process runs on a loop of its own, in a
  thread;
* an auditor process (``bench/soak_audit.py``), group ``soak-audit`` on the RabbitMQ bus, which
  records every delivered position in a Redis set and bumps a counter only when the SADD was new
  (one Lua call): the counter is non-idempotent, so a position counted twice would show; it also
  counts first deliveries that arrive behind a later event of their key (per-key order).

Faults, at random intervals until the time is up: SIGKILL of a relay (often the leader), of a
projector process or of the auditor; ``pg_terminate_backend`` of the soak's Postgres sessions (by the
application name given in ``SATELLITES_POSTGRES_APPLICATION_NAME``, or every session of one
process found by its client ports, or the relay leader's lock session: the relay's lock session
and the NOTIFY listeners connect without the application name, so only the client-port modes
reach them); ``rabbitmqctl
stop_app`` / ``start_app`` at most once per ``--rabbit-every`` seconds (a ``finally`` makes sure
the app is started and answering). A process that exits, killed or crashed, is restarted.
Meanwhile, independently: each of Redis and Elasticsearch is cut at its proxy (every
connection severed, new ones refused) for ``--cut-min`` to ``--cut-max`` seconds (5-60) after
gaps of ``--cut-gap-min`` to ``--cut-gap-max`` (10-50), the shared servers never stopped (the
soak asks the projectors' ``/health`` during a cut and counts the cuts they reported
``backend_down``); and every ``--poison-min`` to ``--poison-max`` seconds (2-12) a poison event
is appended on a key of its own (``poison-{kind}-{n}``), first one of each kind, then kinds at
random (:data:`POISON_KINDS`):

* ``handler_documents``: a document without ``title``, which the ``documents`` handler raises on;
* ``handler_embeddings``: an embedding without ``vector``, which ``VectorFields`` raises on;
* ``mapping``: a document whose ``topic`` is an object, which the keyword mapping refuses;
* ``dimension``: a vector of 383 numbers for the d=384 ``embeddings`` namespace;
* ``routing_key``: an event whose type is too long for an AMQP routing key. ``append`` refuses
  such a type, so it goes in through the store's SQL function (``append_one``), as in logs
  written before that check: the relay must park it.

``entities`` gets none: its handler takes any payload and Redis any JSON document, so no event
the log can hold is poison to it. Each injection is recorded (kind, event id, key, the consumer
that must park it) before its append; the verdict reads its position from the log by id.

Then the faults stop, the soak waits for the relay (cursor == head), the projections
(checkpoints == head, the FAISS process's own position == head) and the audit subscriber to
catch up, stops the processes gracefully (FAISS saves its snapshot), and compares:

* expected = the log without its poison events, folded per key in position order through
  ``projections.PROJECTIONS[name].change_for(event)``;
* actual = ``sink.dump(projection, active_version)`` for Redis and Elasticsearch, and the FAISS
  snapshot the embeddings process saved, loaded here into a ``VectorIndex`` (deleted vectors are
  absent there, not tombstones).

``lost`` = log positions never delivered to the audit subscriber (but the relay's poison
events, which the bus can never carry) + sink keys missing or extra (poison keys left out);
``mismatched`` = keys present on both sides whose document differs; ``duplicated_effects`` = the
mismatched keys that hold an *older* state of the key (a late or repeated write won) + audit
counter increments beyond the distinct positions. ``parked=N/M``: of the M poison events in the
log, N have their one row in ``parked_events`` (one row per (kind, name, version, position))
by the consumer they should hit (``documents`` v1, ``embeddings`` v1 or the relay
``default``), per consumer on the ``parked:`` line; a row for anything else, or a poison key
found in a sink, fails the run too. The last line is
``lost=… duplicated_effects=… mismatched=… parked=N/M``; the exit code is 0 only when the first
three are 0, N = M, nothing else was parked, no poison key reached a sink, and everything caught
up.
Every loop is bounded in count and time; all traffic is on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aio_pika  # noqa: E402
import asyncpg  # noqa: E402
import psutil  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402

from bench.common import unlink_prefix  # noqa: E402
from bench.soak_audit import GROUP as AUDIT_GROUP  # noqa: E402
from bench.soak_audit import AuditHandler, audit_keys  # noqa: E402
from satellites_es.bus.partition import dlq_name, queue_name  # noqa: E402
from satellites_es.bus.rabbitmq import RabbitMQEventBus  # noqa: E402
from satellites_es.config import (  # noqa: E402
    DataLayerConfig,
    EventLogConfig,
    FaissConfig,
    PostgresConfig,
)
from satellites_es.events import DataEvent  # noqa: E402
from satellites_es.migrate import upgrade  # noqa: E402
from satellites_es.parking import ConsumerKind  # noqa: E402
from satellites_es.projections import Checkpoints, Delete, Upsert  # noqa: E402
from satellites_es.sql import queries  # noqa: E402
from satellites_es.store import EventStore  # noqa: E402
from satellites_es.testing import (  # noqa: E402
    EmulatedElasticsearch,
    TcpProxy,
    find_service_url,
    free_port,
    unique_name,
)

PARTITIONS = 4
RESOURCES = (("entities", 0.45), ("documents", 0.35), ("embeddings", 0.20))
SINGULAR = {"entities": "entity", "documents": "document", "embeddings": "embedding"}
DELETE_SHARE = 0.10
TOPICS = ("ml", "db", "ops", "search", "web")
WORDS = ("vector", "index", "relay", "log", "queue", "shard", "cache", "model", "event", "key")
DIMENSION = 384


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- the namespace -------------------------------------------------------------------------------


@dataclass
class Namespace:
    run_id: str
    postgres_url: str
    redis_url: str
    amqp_url: str
    es_url: str
    workdir: Path
    #: Redis and Elasticsearch as the projector processes reach them: through the soak's
    #: cuttable proxies (:class:`SinkProxies`); everything else uses the direct URLs.
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


# -- the sink proxies ----------------------------------------------------------------------------


def _endpoint(url: str, default_port: int) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def _via(url: str, port: int) -> str:
    """``url`` with its host and port replaced by the proxy's (user, path and query kept)."""
    parts = urllib.parse.urlsplit(url)
    user, _, _ = parts.netloc.rpartition("@")
    netloc = f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class SinkProxies:
    """TCP proxies (:class:`satellites_es.testing.TcpProxy`) in front of Redis and
    Elasticsearch, which the projector processes reach only through them: a cut severs their
    connections and refuses new ones, while the shared servers themselves run on for everyone
    else. They run on an event loop of their own in a thread of this process, so that the
    soak's own work (producers, fault injection, the comparison) never stalls their traffic:
    a pause there would be an unplanned cut. They die with the soak; nothing outlives it."""

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

    async def _on_loop(self, fn: Any) -> None:
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


# -- the processes -------------------------------------------------------------------------------


def _stop_emulator(
    emulator: EmulatedElasticsearch | None, watchdog: subprocess.Popen[bytes] | None
) -> None:
    if watchdog is not None and watchdog.poll() is None:
        watchdog.kill()  # first, so it can never signal a process group id reused later
        watchdog.wait(10)
    if emulator is not None:
        emulator.stop()


_WATCHDOG = """
import os, shutil, signal, sys
def gone(*_):
    try:
        os.killpg(int(sys.argv[1]), signal.SIGKILL)
    except OSError:
        pass
    shutil.rmtree(sys.argv[2], ignore_errors=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, gone)
while True:
    signal.pause()
"""


def _watchdog(emulator: EmulatedElasticsearch, workdir: Path) -> subprocess.Popen[bytes] | None:
    """The Elasticsearch emulator runs in a session of its own (``satellites_es.testing``):
    if the soak is SIGKILLed, a watchdog that gets SIGTERM when the soak dies (PDEATHSIG)
    kills the emulator's process group and removes the work dir. After a normal end the
    watchdog is SIGKILLed first (:func:`_stop_emulator`)."""
    proc = emulator._proc
    if proc is None:
        return None
    return subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(proc.pid), str(workdir)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=lambda: _die_with_parent(signal.SIGTERM), start_new_session=True,
    )  # fmt: skip


def _die_with_parent(sig: int = signal.SIGKILL) -> None:
    """In the child, before exec: SIGKILL it when the soak dies, however it dies (Linux
    PR_SET_PDEATHSIG), so a killed soak leaves no relay or projector behind. Children are
    started from the event loop's thread only: the signal follows the thread that forked."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig))  # 1 = PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    role: str  # "relay" | "projector"
    args: list[str]
    env: dict[str, str]
    log_path: Path
    http_port: int | None = None
    script: Path | None = None  # run this script instead of the ``satellites-es`` command
    proc: subprocess.Popen[bytes] | None = None
    killed_by_us: bool = False
    starts: int = 0
    crashes: list[str] = field(default_factory=list)

    def start(self) -> None:
        head = [str(self.script)] if self.script else ["-m", "satellites_es.cli"]
        cmd = [sys.executable, *head, *self.args]
        if self.http_port is not None:
            cmd += ["--http-port", str(self.http_port)]
        full = {k: v for k, v in os.environ.items() if not k.startswith("SATELLITES_")}
        full.update(self.env)
        out = self.log_path.open("ab")
        out.write(f"\n=== start {self.starts + 1} at {time.strftime('%H:%M:%S')}\n".encode())
        out.flush()
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=full, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
        out.close()
        self.killed_by_us = False
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.alive and self.proc is not None else None

    def kill(self) -> bool:
        if not self.alive or self.proc is None:
            return False
        self.killed_by_us = True
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        return True

    def tail(self, lines: int = 6) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def pg_client_ports(self, pg_port: int) -> set[int]:
        pid = self.pid
        if pid is None:
            return set()
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except (psutil.Error, OSError):
            return set()
        return {c.laddr.port for c in conns if c.raddr and c.raddr.port == pg_port}


class Supervisor:
    """Restarts any child that exits (killed by a fault or crashed), bounded in count."""

    MAX_STARTS = 400

    def __init__(self, children: list[Child]) -> None:
        self.children = children
        self.running = True
        self.restarts = 0
        self.crash_count = 0
        self.dead_relays = 0
        self.dead_relay_notes: list[str] = []
        self.graceful_exit_codes: dict[str, int | None] = {}

    async def probe_relays(self) -> None:
        """A liveness probe, as Kubernetes would run one: a relay process whose relay task has
        died (its /health says ``relay stopped: ...``) but which is still running is killed
        here, and restarted by :meth:`run`. Counted as ``dead_relays``."""
        for _ in range(1_000_000):
            if not self.running:
                return
            for child in self.children:
                if child.role != "relay" or not child.alive or child.http_port is None:
                    continue
                url = f"http://127.0.0.1:{child.http_port}/health"
                try:
                    body = await asyncio.to_thread(_http_json, url)
                except (OSError, ValueError):
                    continue  # starting up, or just killed
                relay = (body.get("backends") or {}).get("relay") or {}
                error = str(relay.get("error") or "")
                if (
                    relay.get("status") == "down"
                    and error.startswith("relay stopped")
                    and (self.running and child.kill())
                ):
                    self.dead_relays += 1
                    self.dead_relay_notes.append(f"{child.name}: {error[:200]}")
                    if self.dead_relays <= 3:
                        log(f"dead relay in a live process: {child.name}: {error[:200]}")
            await asyncio.sleep(2.0)

    async def run(self) -> None:
        while self.running:
            for child in self.children:
                if child.proc is None or child.alive:
                    continue
                code = child.proc.returncode
                if not child.killed_by_us:
                    self.crash_count += 1
                    note = f"{child.name} exited {code}: {child.tail(3)}"
                    child.crashes.append(note)
                    if len(child.crashes) <= 3:
                        log(f"crash: {note[:400]}")
                if child.starts >= self.MAX_STARTS:
                    raise RuntimeError(f"{child.name} restarted {child.starts} times; giving up")
                await asyncio.sleep(0.3)
                if self.running:
                    child.start()
                    self.restarts += 1
            await asyncio.sleep(0.3)

    async def stop_all(self, timeout: float = 30.0) -> None:
        self.running = False
        for child in self.children:
            if child.alive and child.proc is not None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            if child.proc is None:
                continue
            for _ in range(int(timeout * 10) + 1):
                if child.proc.poll() is not None or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.1)
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait(10)
                self.graceful_exit_codes[child.name] = None
            else:
                self.graceful_exit_codes[child.name] = child.proc.returncode


# -- producers -----------------------------------------------------------------------------------


@dataclass
class ProducerStats:
    appended: int = 0
    duplicates: int = 0
    append_errors: int = 0
    abandoned: int = 0
    transactional: int = 0
    errors_seen: Counter[str] = field(default_factory=Counter)


def make_event(rng: random.Random, keys: int, seq: str) -> DataEvent:
    r = rng.random()
    acc = 0.0
    resource = RESOURCES[-1][0]
    for name, share in RESOURCES:
        acc += share
        if r < acc:
            resource = name
            break
    key = f"k{rng.randrange(keys):05d}"
    singular = SINGULAR[resource]
    if rng.random() < DELETE_SHARE:
        return DataEvent(type=f"{singular}.deleted", resource=resource, key=key,
                         payload={"seq": seq}, source="soak")  # fmt: skip
    if resource == "entities":
        payload: dict[str, Any] = {
            "name": f"entity {seq}", "seq": seq, "score": rng.randrange(1_000_000) / 1000,
            "tags": rng.sample(WORDS, rng.randrange(0, 4)),
        }  # fmt: skip
    elif resource == "documents":
        payload = {
            "title": f"title {seq}",
            "body": " ".join(rng.choice(WORDS) for _ in range(rng.randrange(5, 40))),
            "author_id": None if rng.random() < 0.1 else f"a{rng.randrange(50)}",
            "topic": rng.choice(TOPICS),
        }
    else:
        payload = {
            "vector": [round(rng.gauss(0.0, 1.0), 4) for _ in range(DIMENSION)],
            "title": f"embedding {seq}", "topic": rng.choice(TOPICS), "model": f"m-{seq}",
        }  # fmt: skip
    return DataEvent(type=f"{singular}.upserted", resource=resource, key=key, payload=payload,
                     source="soak")  # fmt: skip


async def producer(
    index: int, store: EventStore, pool: asyncpg.Pool, rate: float, keys: int, seed: int,
    stop_at: float, stats: ProducerStats,
) -> None:  # fmt: skip
    rng = random.Random(f"{seed}-producer-{index}")
    n = 0
    next_at = time.monotonic()
    while time.monotonic() < stop_at:
        size = rng.randrange(1, 5)  # mean 2.5 events per append
        batch = [make_event(rng, keys, f"{index}.{n + i}") for i in range(size)]
        n += size
        in_tx = rng.random() < 0.2
        for attempt in range(60):
            try:
                if in_tx:
                    async with asyncio.timeout(30), pool.acquire() as conn, conn.transaction():
                        result = await store.append(batch, conn=conn)
                    stats.transactional += 1
                else:
                    async with asyncio.timeout(30):
                        result = await store.append(batch)
                stats.appended += len(result.events)
                stats.duplicates += len(result.duplicates)
                break
            except Exception as exc:  # a terminated session, a timeout: retry with the same ids
                stats.append_errors += 1
                stats.errors_seen[type(exc).__name__] += 1
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
        else:
            stats.abandoned += len(batch)
        next_at += size / rate
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -2.0:  # far behind (a fault held us up): do not burst to catch up
            next_at = time.monotonic()


# -- the audit subscriber ------------------------------------------------------------------------


class Audit:
    """Reads what the auditor process (``bench/soak_audit.py``) recorded in Redis."""

    def __init__(self, ns: Namespace, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.keys = audit_keys(ns.redis_prefix)

    async def counts(self) -> tuple[int, int, int, int]:
        """(distinct positions, guarded counter, deliveries, order violations)."""
        k = self.keys
        distinct = int(await self.redis.scard(k["positions"]))
        values = await self.redis.mget(k["counter"], k["deliveries"], k["order_violations"])
        counter, deliveries, violations = (int(v or 0) for v in values)
        return distinct, counter, deliveries, violations

    async def positions(self) -> set[int]:
        out: set[int] = set()
        async for member in self.redis.sscan_iter(self.keys["positions"], count=5000):
            out.add(int(member))
        return out


# -- faults --------------------------------------------------------------------------------------


@dataclass
class FaultStats:
    counts: Counter[str] = field(default_factory=Counter)
    terminated_backends: int = 0
    rabbit_downtime: float = 0.0
    skipped: Counter[str] = field(default_factory=Counter)


LEADER_SQL = """
SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
  AND l.classid::bigint = (hashtext('satellites.relay')::bigint & 4294967295)
  AND l.objid::bigint = (hashtext($1)::bigint & 4294967295)
"""


def rabbitmqctl(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)  # fmt: skip


async def ensure_rabbit_started(amqp_url: str, timeout: float = 120.0) -> bool:
    """start_app (a no-op when running), then wait until the broker accepts an AMQP login."""
    if shutil.which("rabbitmqctl"):
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            await asyncio.to_thread(rabbitmqctl, "start_app")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = await aio_pika.connect(amqp_url, timeout=5)
            await conn.close()
            return True
        except Exception:
            await asyncio.sleep(0.5)
    return False


class Faults:
    def __init__(
        self, ns: Namespace, children: list[Child], pg_port: int, rng: random.Random,
        rabbit_every: float, stats: FaultStats,
    ) -> None:  # fmt: skip
        self.ns, self.children, self.pg_port, self.rng = ns, children, pg_port, rng
        self.rabbit_every = rabbit_every
        self.stats = stats
        self.rabbit_ok = shutil.which("rabbitmqctl") is not None and os.geteuid() == 0
        self.last_rabbit = time.monotonic() - rabbit_every + 15.0  # the first after ~15 s
        self.conn: asyncpg.Connection | None = None

    async def _sql(self) -> asyncpg.Connection:
        if self.conn is None or self.conn.is_closed():
            self.conn = await asyncpg.connect(
                self.ns.postgres_url, server_settings={"application_name": "soak-control"}
            )
        return self.conn

    async def close(self) -> None:
        if self.conn is not None and not self.conn.is_closed():
            await self.conn.close()

    async def run(self, stop_at: float, min_gap: float, max_gap: float) -> None:
        for _ in range(100_000):
            wait = self.rng.uniform(min_gap, max_gap)
            if time.monotonic() + wait >= stop_at:
                return
            await asyncio.sleep(wait)
            choices: list[tuple[str, float]] = [
                ("kill_relay", 3.0),
                ("kill_projector", 3.0),
                ("kill_audit", 1.0),
                ("pg_terminate", 3.0),
            ]
            rabbit_due = time.monotonic() - self.last_rabbit >= self.rabbit_every
            if self.rabbit_ok and rabbit_due and stop_at - time.monotonic() > 10:
                choices.append(("rabbit_restart", 6.0))
            kind = self.rng.choices([c for c, _ in choices], [w for _, w in choices])[0]
            try:
                await getattr(self, kind)()
            except Exception as exc:  # a fault that could not be injected is counted, not fatal
                self.stats.skipped[f"{kind}:{type(exc).__name__}"] += 1

    async def leader_port(self) -> int | None:
        conn = await self._sql()
        row = await conn.fetchrow(LEADER_SQL, f"{self.ns.schema}.default")
        return None if row is None else int(row["client_port"])

    def owner_of(self, port: int) -> Child | None:
        for child in self.children:
            if port in child.pg_client_ports(self.pg_port):
                return child
        return None

    async def kill_relay(self) -> None:
        relays = [c for c in self.children if c.role == "relay" and c.alive]
        leader = None
        port = await self.leader_port()
        if port is not None:
            leader = self.owner_of(port)
        if leader is not None and self.rng.random() < 0.7:
            target, kind = leader, "relay_leader_kills"
        elif relays:
            target, kind = self.rng.choice(relays), "relay_kills"
        else:
            self.stats.skipped["kill_relay:none_alive"] += 1
            return
        if target.kill():
            self.stats.counts[kind] += 1

    async def kill_projector(self) -> None:
        projectors = [c for c in self.children if c.role == "projector" and c.alive]
        if not projectors:
            self.stats.skipped["kill_projector:none_alive"] += 1
            return
        target = self.rng.choice(projectors)
        if target.kill():
            key = "faiss_projector_kills" if "embeddings" in target.args else "projector_kills"
            self.stats.counts[key] += 1

    async def kill_audit(self) -> None:
        for child in self.children:
            if child.role == "audit" and child.kill():
                self.stats.counts["audit_subscriber_kills"] += 1

    async def pg_terminate(self) -> None:
        conn = await self._sql()
        mode = self.rng.choice(("application_name", "one_process", "relay_lease"))
        if mode == "application_name":
            rows = await conn.fetch(
                "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity "
                "WHERE application_name = $1 AND pid <> pg_backend_pid()",
                self.ns.app_name,
            )
        else:
            if mode == "relay_lease":
                port = await self.leader_port()
                ports = [] if port is None else [port]
            else:
                alive = [c for c in self.children if c.alive and c.role != "audit"]
                ports = list(self.rng.choice(alive).pg_client_ports(self.pg_port)) if alive else []
            if not ports:
                self.stats.skipped[f"pg_terminate:{mode}:no_session"] += 1
                return
            rows = await conn.fetch(
                "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity "
                "WHERE client_port = ANY($1::int[]) AND client_addr = '127.0.0.1' "
                "AND pid <> pg_backend_pid()",
                ports,
            )
        self.stats.counts[f"pg_terminate_{mode}"] += 1
        self.stats.terminated_backends += sum(1 for r in rows if r["ok"])

    async def rabbit_restart(self) -> None:
        self.last_rabbit = time.monotonic()
        started = time.monotonic()
        try:
            stopped = await asyncio.to_thread(rabbitmqctl, "stop_app")
            if stopped.returncode != 0:
                self.stats.skipped["rabbit_restart:stop_app_failed"] += 1
                return
            self.stats.counts["rabbit_restarts"] += 1
            await asyncio.sleep(self.rng.uniform(2.0, 6.0))
        finally:
            if not await ensure_rabbit_started(self.ns.amqp_url):
                raise RuntimeError("RabbitMQ did not come back after start_app")
            self.stats.rabbit_downtime += time.monotonic() - started
            self.last_rabbit = time.monotonic()


@dataclass
class CutStats:
    cuts: Counter[str] = field(default_factory=Counter)
    seconds: Counter[str] = field(default_factory=Counter)
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
            if child.role != "projector" or not child.alive or child.http_port is None:
                continue
            url = f"http://127.0.0.1:{child.http_port}/health"
            try:
                body = await asyncio.to_thread(_http_json, url)
            except (OSError, ValueError):
                continue
            for state in (body.get("projections") or {}).values():
                if state.get("state") == "backend_down" and state.get("backend") == sink:
                    return True
        return False


# -- poison events -------------------------------------------------------------------------------

#: Each kind of poison event, and the consumer that must park it: (kind, name, version).
#: ``entities`` has none: its handler takes any payload (a mapping, as the log guarantees) and
#: its Redis sink any JSON document, so no event the log can hold is poison to it.
POISON_KINDS: dict[str, tuple[ConsumerKind, str, int]] = {
    "handler_documents": ("projection", "documents", 1),  # no "title": the handler raises
    "handler_embeddings": ("projection", "embeddings", 1),  # no "vector": VectorFields raises
    "mapping": ("projection", "documents", 1),  # "topic" an object: the keyword mapping refuses
    "dimension": ("projection", "embeddings", 1),  # a vector of DIMENSION - 1
    "routing_key": ("relay", "default", 0),  # a type too long for an AMQP routing key
}
POISON_SOURCE = "soak-poison"
#: over the 255 bytes of a routing key with its ``p{partition}.`` head; ``append`` refuses it
LONG_TYPE = "soak.unroutable." + "x" * 250


def poison_event(kind: str, n: int, rng: random.Random) -> DataEvent:
    """A poison event of ``kind`` on a key of its own (``poison-{kind}-{n}``)."""
    key = f"poison-{kind}-{n:04d}"
    vector = [round(rng.gauss(0.0, 1.0), 4) for _ in range(DIMENSION)]
    if kind == "handler_documents":
        resource, type_ = "documents", "document.upserted"
        payload: dict[str, Any] = {"body": "no title", "topic": "ml"}
    elif kind == "mapping":
        resource, type_ = "documents", "document.upserted"
        payload = {"title": f"poison {n}", "body": "b", "topic": {"not": "a keyword"}}
    elif kind == "handler_embeddings":
        resource, type_ = "embeddings", "embedding.upserted"
        payload = {"title": f"poison {n}", "topic": "ml", "model": "m"}
    elif kind == "dimension":
        resource, type_ = "embeddings", "embedding.upserted"
        payload = {"vector": vector[:-1], "title": f"poison {n}", "topic": "ml", "model": "m"}
    elif kind == "routing_key":
        resource, type_ = "entities", LONG_TYPE
        payload = {"name": f"poison {n}"}
    else:
        raise ValueError(kind)
    return DataEvent(type=type_, resource=resource, key=key, payload=payload,
                     source=POISON_SOURCE)  # fmt: skip


@dataclass(frozen=True)
class Injected:
    kind: str
    consumer: tuple[ConsumerKind, str, int]
    event_id: str
    key: str


@dataclass
class PoisonStats:
    injected: list[Injected] = field(default_factory=list)
    append_errors: int = 0
    abandoned: int = 0


async def append_raw(pool: asyncpg.Pool, store: EventStore, event: DataEvent) -> int:
    """Append ``event`` through the store's own SQL function (``append_one``), past
    ``append``'s validation: the way an event with a type too long for a routing key got into
    logs written before ``append`` refused it. Returns its position (a retried id: the stored
    one)."""
    sql = queries(store.schema)["append_one"]
    row = await pool.fetchrow(
        sql, event.id, event.resource, event.key, event.type, event.source,
        json.dumps(dict(event.payload)), event.timestamp, "{}", None, store.channel, True,
    )  # fmt: skip
    return int(row["out_position"])


async def poisoner(
    store: EventStore, pool: asyncpg.Pool, rng: random.Random, stop_at: float,
    gap: tuple[float, float], stats: PoisonStats,
) -> None:  # fmt: skip
    """Append a poison event every ``gap`` seconds: first one of each kind in a random order,
    then kinds at random. Each is recorded before its append (an append whose answer was lost
    may still have stored it: the verdict reads positions from the log, by event id)."""
    kinds = list(POISON_KINDS)
    rng.shuffle(kinds)
    for n in range(100_000):
        wait = rng.uniform(*gap)
        if time.monotonic() + wait >= stop_at:
            return
        await asyncio.sleep(wait)
        kind = kinds[n] if n < len(kinds) else rng.choice(sorted(POISON_KINDS))
        event = poison_event(kind, n, rng)
        stats.injected.append(Injected(kind, POISON_KINDS[kind], event.id, event.key))
        for attempt in range(60):
            try:
                async with asyncio.timeout(30):
                    if kind == "routing_key":
                        await append_raw(pool, store, event)
                    else:
                        await store.append([event])
                break
            except Exception:  # a terminated session, a timeout: retry with the same id
                stats.append_errors += 1
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
        else:
            stats.abandoned += 1


# -- verification --------------------------------------------------------------------------------
# -- verification --------------------------------------------------------------------------------


@dataclass
class KeyState:
    document: Mapping[str, Any] | None = None  # None: deleted (a tombstone)
    position: int = 0
    history: list[Mapping[str, Any] | None] = field(default_factory=list)  # older states


@dataclass
class Verdict:
    lost: int = 0
    duplicated_effects: int = 0
    mismatched: int = 0
    poison_applied: int = 0  # poison keys found in a sink
    details: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    examples: list[str] = field(default_factory=list)

    def note(self, projection: str, what: str, example: str) -> None:
        self.details[projection][what] += 1
        if len(self.examples) < 12:
            self.examples.append(f"{projection}: {what}: {example}")


def fold(
    events: list[DataEvent], projections: Mapping[str, Any], skip: frozenset[int] = frozenset()
) -> dict[str, dict[str, KeyState]]:
    """The expected state of every projection: the log folded per key, without the events at
    the ``skip`` positions (the poison events, which must have no effect)."""
    expected: dict[str, dict[str, KeyState]] = {name: {} for name in projections}
    for event in events:  # position order
        if event.position in skip:
            continue
        for name, projection in projections.items():
            change = projection.change_for(event)
            if change is None:
                continue
            state = expected[name].setdefault(change.key, KeyState())
            if state.position:
                state.history.append(state.document)
            state.document = change.document if isinstance(change, Upsert) else None
            state.position = change.position
            assert isinstance(change, Upsert | Delete)
    return expected


def _same(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, vectors: bool) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if not vectors:
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    if a.get("metadata") != b.get("metadata"):
        return False
    va, vb = a.get("vector") or [], b.get("vector") or []
    return len(va) == len(vb) and all(abs(x - y) <= 1e-4 for x, y in zip(va, vb, strict=True))


def _unit(document: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """An expected FAISS document as the index stores it: the vector at unit length."""
    if document is None:
        return None
    vector = list(document["vector"])
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return {"vector": [x / norm for x in vector], "metadata": dict(document["metadata"] or {})}


def compare(
    name: str, expected: dict[str, KeyState], actual: Mapping[str, Mapping[str, Any] | None],
    verdict: Verdict, *, vectors: bool = False, poison_keys: frozenset[str] = frozenset(),
) -> None:  # fmt: skip
    """Key by key; the poison keys (only poison events were appended on them) are left out
    and must simply be absent: one there means a poison event had an effect after all."""
    for key in poison_keys & actual.keys():
        verdict.poison_applied += 1
        verdict.note(name, "poison_applied", f"{key}: {str(actual[key])[:80]}")
    actual = {k: v for k, v in actual.items() if k not in poison_keys}
    if vectors:  # FAISS keeps no tombstones: a deleted id is simply absent
        expected = {k: s for k, s in expected.items() if s.document is not None}
    for key, state in expected.items():
        if key not in actual:
            verdict.lost += 1
            verdict.note(name, "missing", key)
            continue
        want = _unit(state.document) if vectors else state.document
        got = actual[key]
        if _same(want, got, vectors):
            continue
        verdict.mismatched += 1
        older = [_unit(h) if vectors else h for h in state.history]
        if any(_same(h, got, vectors) for h in older):
            verdict.duplicated_effects += 1
            verdict.note(name, "older_state_won", f"{key} (last position {state.position})")
        else:
            verdict.note(name, "differs", f"{key}: want {str(want)[:80]} got {str(got)[:80]}")
    for key in actual.keys() - expected.keys():
        verdict.lost += 1
        verdict.note(name, "extra", key)


@dataclass
class ParkedVerdict:
    """The poison events against ``parked_events``: each must have exactly one row, by the
    consumer it should hit, and no other row may exist."""

    injected: int = 0  # poison events in the log (M)
    parked: int = 0  # of those, parked once by the consumer they should hit (N)
    per_consumer: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    not_in_log: int = 0  # injections abandoned before any append stored them
    unexpected: list[str] = field(default_factory=list)  # rows for no injected poison
    missing: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)  # (poison kind, error type)

    @property
    def ok(self) -> bool:
        return self.parked == self.injected and not self.unexpected and not self.missing

    def __str__(self) -> str:
        consumers = " ".join(f"{name}={got}/{want}"
                             for name, (got, want) in sorted(self.per_consumer.items()))  # fmt: skip
        return (f"{consumers} unexpected={len(self.unexpected)} missing={len(self.missing)} "
                f"not_in_log={self.not_in_log} errors={dict(sorted(self.errors.items()))}")  # fmt: skip


async def check_parked(
    pool: asyncpg.Pool, ns: Namespace, injected: list[Injected], by_id: Mapping[str, DataEvent]
) -> ParkedVerdict:
    v = ParkedVerdict()
    rows = await pool.fetch(
        f'SELECT kind, name, version, position, key, error_type, status FROM "{ns.schema}".'
        "parked_events ORDER BY kind, name, version, position"
    )
    found = {(r["kind"], r["name"], r["version"], r["position"]): r for r in rows}
    expected: dict[tuple[str, str, int, int], Injected] = {}
    for inj in injected:
        event = by_id.get(inj.event_id)
        if event is None or event.position is None:
            v.not_in_log += 1
            continue
        expected[(*inj.consumer, event.position)] = inj
    for k, inj in expected.items():
        consumer = v.per_consumer[inj.consumer[1] if inj.consumer[0] == "projection" else "relay"]
        consumer[1] += 1
        v.injected += 1
        row = found.get(k)  # the primary key makes a second row for one event impossible
        if row is None or row["key"] != inj.key or row["status"] != "parked":
            v.missing.append(f"{inj.kind} {k} ({'no row' if row is None else dict(row)})")
            continue
        consumer[0] += 1
        v.parked += 1
        v.errors[f"{inj.kind}:{row['error_type']}"] += 1
    v.unexpected = [f"{k}: {dict(r)}" for k, r in found.items() if k not in expected]
    return v


# -- the run -------------------------------------------------------------------------------------


def make_children(ns: Namespace) -> list[Child]:
    base = ns.env()
    logs = ns.workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    children = [
        Child(
            f"relay-{i}", "relay", ["relay"], base, logs / f"relay-{i}.log", http_port=free_port()
        )
        for i in (1, 2)
    ]
    sinks = ns.projector_env()  # Redis and Elasticsearch through the cuttable proxies
    children += [
        Child(f"project-{i}", "projector", ["project", "-p", "entities", "-p", "documents"], sinks,
              logs / f"project-{i}.log", http_port=free_port())
        for i in (1, 2)
    ]  # fmt: skip
    children.append(
        Child(
            "audit", "audit", [], base, logs / "audit.log", script=ROOT / "bench" / "soak_audit.py"
        )
    )
    faiss_env = {**sinks, "SATELLITES_FAISS_ENABLED": "true"}
    children.append(
        Child("project-embeddings", "projector", ["project", "-p", "embeddings"], faiss_env,
              logs / "project-embeddings.log", http_port=free_port())
    )  # fmt: skip
    return children


def _http_json(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))


async def faiss_position(child: Child) -> int:
    if not child.alive or child.http_port is None:
        return -1
    try:
        body = await asyncio.to_thread(_http_json, f"http://127.0.0.1:{child.http_port}/health")
        return int(body["projections"]["embeddings"]["position"] or -1)
    except (OSError, ValueError, KeyError, TypeError):
        return -1


@dataclass
class Progress:
    head: int = 0
    events: int = 0
    relay_cursor: int = 0
    checkpoints: dict[str, int] = field(default_factory=dict)
    faiss: int = -1
    audit_distinct: int = 0
    deliverable: int = 0  # events minus those the relay must park (the bus never carries them)

    @property
    def caught_up(self) -> bool:
        return (
            self.relay_cursor >= self.head
            and all(v >= self.head for v in self.checkpoints.values())
            and self.faiss >= self.head
            and self.audit_distinct >= self.deliverable
        )

    def __str__(self) -> str:
        return (
            f"head={self.head} relay_cursor={self.relay_cursor} checkpoints={self.checkpoints} "
            f"faiss={self.faiss} audit={self.audit_distinct}/{self.deliverable}"
        )


async def progress(
    pool: asyncpg.Pool, ns: Namespace, checkpoints: Checkpoints, faiss_child: Child, audit: Audit,
    undeliverable: list[str],
) -> Progress:  # fmt: skip
    """How far everything got; ``undeliverable``: ids of events the relay must park."""
    s = f'"{ns.schema}"'
    p = Progress()
    p.head = int(await pool.fetchval(f"SELECT coalesce(max(position), 0) FROM {s}.events"))
    p.events = int(await pool.fetchval(f"SELECT count(*) FROM {s}.events"))
    p.deliverable = p.events - int(await pool.fetchval(
        f"SELECT count(*) FROM {s}.events WHERE id = ANY($1::text[])", undeliverable))  # fmt: skip
    p.relay_cursor = int(
        await pool.fetchval(f"SELECT coalesce(max(position), 0) FROM {s}.relay_cursors") or 0
    )
    for name in ("entities", "documents", "embeddings"):
        row = await checkpoints.active(name)
        p.checkpoints[name] = -1 if row is None else await checkpoints.get(name, row[0])
    p.faiss = await faiss_position(faiss_child)
    p.audit_distinct = (await audit.counts())[0]
    return p


async def read_log(store: EventStore) -> list[DataEvent]:
    events: list[DataEvent] = []
    async for batch in store.read(after=0, batch_size=5000):
        events += batch
    return events


async def dump_sinks(
    ns: Namespace, checkpoints: Checkpoints, projections: Mapping[str, Any]
) -> tuple[dict[str, Mapping[str, Mapping[str, Any] | None]], int]:
    """Every sink's active version as ``{projection: {key: document}}``, and the position the
    FAISS snapshot holds."""
    from elasticsearch import AsyncElasticsearch

    from satellites_es.projections.es_sink import ElasticsearchSink
    from satellites_es.projections.faiss_sink import FaissSink
    from satellites_es.projections.redis_sink import RedisSink
    from satellites_es.vectors import VectorIndex

    async def version(name: str) -> int:
        row = await checkpoints.active(name)
        return projections[name].version if row is None else row[0]

    out: dict[str, Mapping[str, Mapping[str, Any] | None]] = {}
    redis = aioredis.Redis.from_url(ns.redis_url)
    try:
        sink = RedisSink(redis, ns.redis_prefix)
        out["entities"] = await sink.dump(projections["entities"], await version("entities"))
    finally:
        await redis.aclose()
    es = AsyncElasticsearch(ns.es_url, request_timeout=60)
    try:
        es_sink = ElasticsearchSink(es, ns.es_prefix)
        out["documents"] = await es_sink.dump(projections["documents"], await version("documents"))
    finally:
        await es.close()
    index = VectorIndex(FaissConfig(index_path=ns.faiss_dir, dimension=DIMENSION))
    await index.open()
    try:
        v = await version("embeddings")
        out["embeddings"] = await FaissSink(index).dump(projections["embeddings"], v)
        snapshot = index.applied_position(projections["embeddings"].target(v)) or 0
    finally:
        await index.close()
    return out, snapshot


async def audit_sinks(
    ns: Namespace, pool: asyncpg.Pool, projections: Mapping[str, Any]
) -> dict[str, Any]:
    """The operator's check (:func:`satellites_es.audit.audit`) of every sink, beside the soak's
    own comparison above: both must find the sinks equal to the log."""
    from elasticsearch import AsyncElasticsearch

    from satellites_es.audit import audit as audit_projection
    from satellites_es.projections.es_sink import ElasticsearchSink
    from satellites_es.projections.faiss_sink import FaissSink
    from satellites_es.projections.redis_sink import RedisSink
    from satellites_es.vectors import VectorIndex

    out: dict[str, Any] = {}
    redis = aioredis.Redis.from_url(ns.redis_url)
    es = AsyncElasticsearch(ns.es_url, request_timeout=60)
    index = VectorIndex(FaissConfig(index_path=ns.faiss_dir, dimension=DIMENSION))
    await index.open()
    try:
        sinks = {"entities": RedisSink(redis, ns.redis_prefix),
                 "documents": ElasticsearchSink(es, ns.es_prefix),
                 "embeddings": FaissSink(index)}  # fmt: skip
        for name, sink in sinks.items():
            out[name] = await audit_projection(projections[name], sink, pool, ns.schema)
    finally:
        await index.close()
        await es.close()
        await redis.aclose()
    return out


async def sabotage(
    ns: Namespace, redis: aioredis.Redis, audit: Audit, entities: dict[str, KeyState],
    positions: list[int],
) -> None:  # fmt: skip
    """``--sabotage``: damage the results on purpose, to show the checks are not vacuous. One
    entity gets an older state back (mismatched + duplicated_effects), one loses its key and one
    position its audit record (lost 2), and one parked row is deleted: expect
    ``lost=2 duplicated_effects=1 mismatched=1 parked=M-1/M``."""
    older = [k for k, st in entities.items() if st.document is not None and st.history
             and st.history[-1] is not None]  # fmt: skip
    others = [k for k in entities if k not in older[:1]]
    if not older or not others or not positions:
        raise RuntimeError("--sabotage needs a longer run (no entity with an older state)")
    hkey = f"{ns.redis_prefix}entities_v1:{older[0]}"
    state = json.dumps(entities[older[0]].history[-1], separators=(",", ":"))
    await redis.hset(hkey, "d", state)
    await redis.delete(f"{ns.redis_prefix}entities_v1:{others[0]}")
    await redis.srem(audit.keys["positions"], positions[len(positions) // 2])
    conn = await asyncpg.connect(ns.postgres_url)
    try:
        await conn.execute(f'DELETE FROM "{ns.schema}".parked_events WHERE position = '
                           f'(SELECT min(position) FROM "{ns.schema}".parked_events)')  # fmt: skip
    finally:
        await conn.close()


async def declare_audit_queues(
    config: DataLayerConfig, redis: aioredis.Redis, ns: Namespace
) -> None:
    """Declare and bind the audit group's durable queues once, before any relay publishes (a
    publish no queue is bound for is refused), so events wait there while the auditor is down."""
    bus = RabbitMQEventBus(config.rabbitmq, group=AUDIT_GROUP)
    bus.subscribe_all(AuditHandler(redis, ns.redis_prefix))
    await bus.start()
    try:
        await bus.wait_ready()
    finally:
        await bus.stop()


async def cleanup(ns: Namespace, es_external: bool) -> list[str]:
    problems: list[str] = []
    try:
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
    except Exception as exc:
        problems.append(f"postgres: {exc!r}")
    try:
        redis = aioredis.Redis.from_url(ns.redis_url)
        try:
            await unlink_prefix(redis, ns.redis_prefix)
        finally:
            await redis.aclose()
    except Exception as exc:
        problems.append(f"redis: {exc!r}")
    try:
        conn_mq = await aio_pika.connect(ns.amqp_url, timeout=10)
        async with conn_mq:
            channel = await conn_mq.channel()
            names = [queue_name(ns.exchange, AUDIT_GROUP, i) for i in range(PARTITIONS)]
            for name in [*names, dlq_name(ns.exchange, AUDIT_GROUP)]:
                await channel.queue_delete(name)
            await channel.exchange_delete(ns.exchange)
    except Exception as exc:
        problems.append(f"rabbitmq: {exc!r}")
    if es_external:
        from elasticsearch import AsyncElasticsearch

        es = AsyncElasticsearch(ns.es_url)
        try:
            found = await es.indices.get(index=f"{ns.es_prefix}*", allow_no_indices=True)
            for index in found.body:
                await es.indices.delete(index=index, ignore_unavailable=True)
        except Exception as exc:
            problems.append(f"elasticsearch: {exc!r}")
        finally:
            await es.close()
    return problems


async def soak(args: argparse.Namespace) -> int:
    duration = args.seconds if args.seconds is not None else args.minutes * 60.0
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix="satellites-soak-"))
    (workdir / "logs").mkdir()
    # This process's own library logging (aio-pika reconnects): to a file, not the console.
    logging.basicConfig(filename=workdir / "logs" / "soak.log", level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    es_external = bool(os.environ.get("SATELLITES_ES_URL"))
    emulator: EmulatedElasticsearch | None = None
    watchdog: subprocess.Popen[bytes] | None = None
    ns: Namespace | None = None
    proxies: SinkProxies | None = None
    try:  # the setup: a failure here still stops the emulator and removes what it made
        if es_external:
            es_url = os.environ["SATELLITES_ES_URL"]
        else:
            emulator = EmulatedElasticsearch(data_dir=workdir / "es")
            es_url = emulator.start()
            watchdog = _watchdog(emulator, workdir)
        ns = Namespace(
            run_id=unique_name("soak"), postgres_url=find_service_url("postgres"),
            redis_url=find_service_url("redis"), amqp_url=find_service_url("rabbitmq"),
            es_url=es_url, workdir=workdir,
        )  # fmt: skip
        for url in (ns.postgres_url, ns.redis_url, ns.amqp_url, ns.es_url):
            host = url.split("@")[-1].split("//")[-1].split(":")[0].split("/")[0]
            if host not in ("127.0.0.1", "localhost"):
                raise SystemExit(f"soak: every service must be on 127.0.0.1, not {host}")
        proxies = SinkProxies({"redis": _endpoint(ns.redis_url, 6379),
                               "elasticsearch": _endpoint(ns.es_url, 9200)})  # fmt: skip
        ports = proxies.start()
        ns.redis_proxy_url = _via(ns.redis_url, ports["redis"])
        ns.es_proxy_url = _via(ns.es_url, ports["elasticsearch"])
        log(f"run {ns.run_id}: {duration:.0f}s at {args.rate}/s over {args.keys} keys, seed {seed}; "
            f"Elasticsearch {'at ' + es_url if es_external else 'emulated (noida-db)'}; "
            f"work dir {workdir}")  # fmt: skip
        pg_port = PostgresConfig(**PostgresConfig._from_url(ns.postgres_url)).port
        config = ns.config()
        await upgrade(config.postgres)

        from projections import PROJECTIONS

        pool = await asyncpg.create_pool(
            ns.postgres_url, min_size=2, max_size=8,
            server_settings={"application_name": ns.app_name},
        )  # fmt: skip
        verify_pool = await asyncpg.create_pool(
            ns.postgres_url, min_size=1, max_size=2,
            server_settings={"application_name": ns.app_name + "_verify"},
        )  # fmt: skip
        store = EventStore(pool, schema=ns.schema, config=EventLogConfig(), dsn=None)
        verify_store = EventStore(verify_pool, schema=ns.schema, config=EventLogConfig(), dsn=None)
        checkpoints = Checkpoints(verify_pool, ns.schema)
        redis = aioredis.Redis.from_url(ns.redis_url)
        audit = Audit(ns, redis)
        children = make_children(ns)
        faiss_child = next(c for c in children if c.name == "project-embeddings")
        supervisor = Supervisor(children)
        fstats = FaultStats()
        faults = Faults(ns, children, pg_port, rng, args.rabbit_every, fstats)
        pstats = ProducerStats()
        cstats = CutStats()
        cuts = SinkCuts(proxies, children, random.Random(f"{seed}-cuts"), cstats)
        poisons = PoisonStats()
        tasks: list[asyncio.Task[Any]] = []
        exit_code = 1
        verdict = Verdict()
        parked = ParkedVerdict()
    except BaseException:
        if proxies is not None:
            proxies.stop()
        if ns is not None:
            await cleanup(ns, es_external)
        _stop_emulator(emulator, watchdog)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    try:
        await declare_audit_queues(config, redis, ns)
        for child in children:
            child.start()
        sup_task = asyncio.create_task(supervisor.run(), name="supervisor")
        probe_task = asyncio.create_task(supervisor.probe_relays(), name="relay-probe")
        started = time.monotonic()
        stop_at = started + duration
        producers = max(1, min(16, math.ceil(args.rate / 25)))
        producer_tasks = [
            asyncio.create_task(producer(i, store, pool, args.rate / producers, args.keys,
                                         seed, stop_at, pstats))
            for i in range(producers)
        ]  # fmt: skip
        fault_task = asyncio.create_task(
            faults.run(stop_at - args.quiet, args.fault_min, args.fault_max), name="faults"
        )
        fault_stop = stop_at - args.quiet
        cut_tasks = [
            asyncio.create_task(cuts.run(sink, fault_stop, (args.cut_gap_min, args.cut_gap_max),
                                         (args.cut_min, args.cut_max)), name=f"cut-{sink}")
            for sink in ("redis", "elasticsearch")
        ]  # fmt: skip
        poison_task = asyncio.create_task(
            poisoner(store, pool, random.Random(f"{seed}-poison"), fault_stop,
                     (args.poison_min, args.poison_max), poisons), name="poisoner",
        )  # fmt: skip
        tasks += [sup_task, probe_task, fault_task, *cut_tasks, poison_task, *producer_tasks]
        last_report = started
        while time.monotonic() < stop_at:
            await asyncio.sleep(1.0)
            for t in tasks:
                if t.done() and t.exception() is not None:
                    raise RuntimeError(f"{t.get_name()} failed") from t.exception()
            if time.monotonic() - last_report >= args.report_every:
                last_report = time.monotonic()
                log(f"t={last_report - started:.0f}s appended={pstats.appended} "
                    f"faults={dict(fstats.counts)} cuts={dict(cstats.cuts)} "
                    f"poison={len(poisons.injected)} crashes={supervisor.crash_count}")  # fmt: skip
        await asyncio.gather(*producer_tasks)
        await fault_task
        await asyncio.gather(*cut_tasks, poison_task)
        for sink in ("redis", "elasticsearch"):
            await proxies.restore(sink)  # (each cut restores itself; this is belt and braces)
        produce_seconds = time.monotonic() - started
        await ensure_rabbit_started(ns.amqp_url)
        log(f"faults stopped after {produce_seconds:.0f}s; waiting for the catch-up")
        undeliverable = [i.event_id for i in poisons.injected if i.consumer[0] == "relay"]
        catchup_started = time.monotonic()
        deadline = catchup_started + args.catchup_timeout
        p = Progress()
        said = catchup_started
        for _ in range(100_000):
            if time.monotonic() >= deadline:
                break
            p = await progress(verify_pool, ns, checkpoints, faiss_child, audit, undeliverable)
            if p.caught_up:
                break
            if time.monotonic() - said >= 10:  # which part is behind, when one is slow
                said = time.monotonic()
                log(f"catching up ({said - catchup_started:.0f}s): {p}")
            await asyncio.sleep(1.0)
        catchup_seconds = time.monotonic() - catchup_started
        log(f"{'caught up' if p.caught_up else 'NOT caught up'} in {catchup_seconds:.1f}s: {p}")
        await supervisor.stop_all()
        for t in (sup_task, probe_task):
            t.cancel()
        await asyncio.gather(sup_task, probe_task, return_exceptions=True)

        # -- compare ------------------------------------------------------------------------
        events = await read_log(verify_store)
        positions = [e.position for e in events if e.position is not None]
        delivered = await audit.positions()
        distinct, counter, deliveries, order_violations = await audit.counts()
        by_id = {e.id: e for e in events}
        poison_at = {by_id[i.event_id].position: i for i in poisons.injected if i.event_id in by_id}
        poison_keys = frozenset(i.key for i in poisons.injected)
        expected = fold(events, PROJECTIONS, skip=frozenset(q for q in poison_at if q))
        if args.sabotage:
            await sabotage(ns, redis, audit, expected["entities"], positions)
            delivered = await audit.positions()  # the counter check keeps the counts before
        never_on_bus = {q for q, i in poison_at.items() if i.consumer[0] == "relay"}
        undelivered = [q for q in positions if q not in delivered and q not in never_on_bus]
        if delivered & never_on_bus:
            verdict.lost += len(delivered & never_on_bus)  # impossible: counted, not hidden
            verdict.note("bus", "delivered_unroutable", str(sorted(delivered & never_on_bus)))
        verdict.lost += len(undelivered)
        if undelivered:
            verdict.note("bus", "undelivered", f"{len(undelivered)}, e.g. {undelivered[:5]}")
        if counter != distinct:
            verdict.duplicated_effects += abs(counter - distinct)
            verdict.note("bus", "counter_vs_distinct", f"counter={counter} distinct={distinct}")
        actual, snapshot_position = await dump_sinks(ns, checkpoints, PROJECTIONS)
        for name in ("entities", "documents", "embeddings"):
            compare(name, expected[name], actual[name], verdict, vectors=name == "embeddings",
                    poison_keys=poison_keys)  # fmt: skip
        parked = await check_parked(verify_pool, ns, poisons.injected, by_id)
        audits = await audit_sinks(ns, verify_pool, PROJECTIONS)
        head = positions[-1] if positions else 0

        # -- report -------------------------------------------------------------------------
        kills = {k: v for k, v in sorted(fstats.counts.items())}
        rates = len(events) / produce_seconds if produce_seconds else 0.0
        sizes = {n: len(actual[n]) for n in ("entities", "documents", "embeddings")}
        print(f"events={len(events)} head={head} rate={rates:.1f}/s over {produce_seconds:.0f}s "
              f"(target {args.rate}/s) keys={args.keys} seed={seed}")  # fmt: skip
        print(f"producers: appends_retried={pstats.append_errors} "
              f"duplicates_absorbed={pstats.duplicates} abandoned={pstats.abandoned} "
              f"transactional_appends={pstats.transactional} "
              f"errors={dict(pstats.errors_seen.most_common(4))}")  # fmt: skip
        print(f"faults: {kills} terminated_backends={fstats.terminated_backends} "
              f"rabbit_downtime={fstats.rabbit_downtime:.1f}s "
              f"fault_rate={sum(fstats.counts.values()) / max(produce_seconds, 1) * 60:.1f}/min "
              f"not_injected={dict(fstats.skipped)}")  # fmt: skip
        print(f"processes: restarts={supervisor.restarts} unexpected_exits={supervisor.crash_count}"
              f" dead_relays_in_live_processes={supervisor.dead_relays}"
              f" graceful_stop_codes={supervisor.graceful_exit_codes}")  # fmt: skip
        print(
            f"bus: deliveries={deliveries} distinct={distinct} "
            f"redelivered={deliveries - distinct} order_violations={order_violations}"
        )
        print(f"sink cuts: {dict(sorted(cstats.cuts.items()))} seconds="
              f"{ {k: round(v, 1) for k, v in sorted(cstats.seconds.items())} } longest="
              f"{ {k: round(v, 1) for k, v in sorted(cstats.longest.items())} } "
              f"health_said_down={dict(sorted(cstats.seen_down.items()))}")  # fmt: skip
        kinds = Counter(i.kind for i in poisons.injected)
        print(f"poison: injected={dict(sorted(kinds.items()))} in_log={parked.injected} "
              f"appends_retried={poisons.append_errors} abandoned={poisons.abandoned} "
              f"applied_to_a_sink={verdict.poison_applied}")  # fmt: skip
        print(f"parked: {parked}")
        for line in (parked.missing + parked.unexpected)[:8]:
            print(f"  problem: parked: {line[:300]}")
        print(
            f"catch-up: {catchup_seconds:.1f}s caught_up={p.caught_up} relay_lag="
            f"{max(0, p.head - p.relay_cursor)} faiss_snapshot_position={snapshot_position}"
        )
        print(f"sinks: keys={sizes} expected_keys="
              f"{ {n: len(v) for n, v in expected.items()} }")  # fmt: skip
        for example in verdict.examples:
            print(f"  problem: {example}")
        last_vector = max((s.position for s in expected["embeddings"].values()), default=0)
        if snapshot_position < last_vector:
            verdict.note("embeddings", "snapshot_behind", f"{snapshot_position} < {last_vector}")
            print(
                f"  problem: the FAISS snapshot holds position {snapshot_position}, "
                f"the last embedding event is at {last_vector}"
            )
        print("audit (satellites-es audit): " + " ".join(
            f"{name}={'clean' if r.clean else r.counts}" for name, r in audits.items()))  # fmt: skip
        ok = verdict.lost == 0 and verdict.duplicated_effects == 0 and verdict.mismatched == 0
        ok = ok and verdict.poison_applied == 0 and parked.ok
        ok = ok and all(r.clean for r in audits.values())
        exit_code = 0 if ok and p.caught_up else 1
        if not ok or not p.caught_up:
            for child in children:
                if child.crashes:
                    print(f"  {child.name}: {len(child.crashes)} unexpected exit(s); last: "
                          f"{child.crashes[-1][:300]}")  # fmt: skip
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if supervisor.running:
            await supervisor.stop_all(timeout=10)
        if faults.rabbit_ok and not await ensure_rabbit_started(ns.amqp_url):
            print("WARNING: RabbitMQ is not answering after the soak", file=sys.stderr)
        await faults.close()
        proxies.stop()
        await redis.aclose()
        await pool.close()
        await verify_pool.close()
        problems = await cleanup(ns, es_external)
        if problems:
            print(f"cleanup problems: {problems}", file=sys.stderr)
        _stop_emulator(emulator, watchdog)
        if exit_code == 0 and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir / 'logs'}", file=sys.stderr)
    print(f"lost={verdict.lost} duplicated_effects={verdict.duplicated_effects} "
          f"mismatched={verdict.mismatched} parked={parked.parked}/{parked.injected}",
          flush=True)  # fmt: skip
    return exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="How long to produce.")
    parser.add_argument("--seconds", type=float, default=None, help="Overrides --minutes.")
    parser.add_argument("--rate", type=float, default=200.0, help="Events per second.")
    parser.add_argument("--keys", type=int, default=500, help="Keys per resource.")
    parser.add_argument("--seed", type=int, default=None, help="Random seed (printed).")
    parser.add_argument(
        "--fault-min", type=float, default=2.0, help="Least seconds between faults."
    )
    parser.add_argument("--fault-max", type=float, default=6.0, help="Most seconds between faults.")
    parser.add_argument("--rabbit-every", type=float, default=120.0,
                        help="At most one RabbitMQ restart per this many seconds.")  # fmt: skip
    parser.add_argument("--quiet", type=float, default=5.0,
                        help="No new fault in the last seconds of production.")  # fmt: skip
    parser.add_argument("--cut-min", type=float, default=5.0,
                        help="Shortest cut of Redis or Elasticsearch, in seconds.")  # fmt: skip
    parser.add_argument("--cut-max", type=float, default=60.0, help="Longest cut.")
    parser.add_argument("--cut-gap-min", type=float, default=10.0,
                        help="Least seconds between two cuts of one sink.")  # fmt: skip
    parser.add_argument("--cut-gap-max", type=float, default=50.0)
    parser.add_argument("--poison-min", type=float, default=2.0,
                        help="Least seconds between two poison events.")  # fmt: skip
    parser.add_argument("--poison-max", type=float, default=12.0)
    parser.add_argument("--catchup-timeout", type=float, default=240.0)
    parser.add_argument("--report-every", type=float, default=30.0)
    parser.add_argument("--keep", action="store_true", help="Keep the work dir and logs.")
    parser.add_argument("--sabotage", action="store_true",
                        help="Damage the results on purpose before the comparison (checks the "
                             "checker): expect lost=2 duplicated_effects=1 mismatched=1 "
                             "parked=M-1/M.")  # fmt: skip
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.keys < 1:
        parser.error("--rate and --keys must be positive")
    return asyncio.run(_cancellable(soak(args)))


async def _cancellable(work: Any) -> int:
    """Run ``work``; SIGTERM or SIGINT cancels it, so its ``finally`` stops the children,
    restarts RabbitMQ if it was stopped, and removes the namespace."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return int(await task)
    except asyncio.CancelledError:
        print("soak: interrupted; cleaned up", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
