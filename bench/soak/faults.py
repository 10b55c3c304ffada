"""Process and service faults, at random intervals until the time is up: SIGKILL of a relay
(often the leader), of a projector process or of the auditor; ``pg_terminate_backend`` of the
soak's Postgres sessions (by the application name given in
``SATELLITES_POSTGRES_APPLICATION_NAME``, or every session of one process found by its client
ports, or the relay leader's lock session: the relay's lock session and the NOTIFY listeners
connect without the application name, so only the client-port modes reach them);
``rabbitmqctl stop_app`` / ``start_app`` at most once per ``--rabbit-every`` seconds (a
``finally`` makes sure the app is started and answering). The sink cuts and poison events run
beside these (:mod:`bench.soak.sink_cuts`, :mod:`bench.soak.poison`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aio_pika
import asyncpg

from bench.soak.namespace import Namespace
from bench.soak.processes import Child


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
TERMINATE_BY_NAME = (
    "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity "
    "WHERE application_name = $1 AND pid <> pg_backend_pid()"
)
TERMINATE_BY_PORT = (
    "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity "
    "WHERE client_port = ANY($1::int[]) AND client_addr = '127.0.0.1' "
    "AND pid <> pg_backend_pid()"
)


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
            kind, inject = self._pick(stop_at)
            try:
                await inject()
            except Exception as exc:  # a fault that could not be injected is counted, not fatal
                self.stats.skipped[f"{kind}:{type(exc).__name__}"] += 1

    def _pick(self, stop_at: float) -> tuple[str, Callable[[], Awaitable[None]]]:
        choices: list[tuple[str, float, Callable[[], Awaitable[None]]]] = [
            ("kill_relay", 3.0, self.kill_relay),
            ("kill_projector", 3.0, self.kill_projector),
            ("kill_audit", 1.0, self.kill_audit),
            ("pg_terminate", 3.0, self.pg_terminate),
        ]
        rabbit_due = time.monotonic() - self.last_rabbit >= self.rabbit_every
        if self.rabbit_ok and rabbit_due and stop_at - time.monotonic() > 10:
            choices.append(("rabbit_restart", 6.0, self.rabbit_restart))
        kind, _, inject = self.rng.choices(choices, [w for _, w, _ in choices])[0]
        return kind, inject

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
            rows = await conn.fetch(TERMINATE_BY_NAME, self.ns.app_name)
        else:
            ports = await self._client_ports(mode)
            if not ports:
                self.stats.skipped[f"pg_terminate:{mode}:no_session"] += 1
                return
            rows = await conn.fetch(TERMINATE_BY_PORT, ports)
        self.stats.counts[f"pg_terminate_{mode}"] += 1
        self.stats.terminated_backends += sum(1 for r in rows if r["ok"])

    async def _client_ports(self, mode: str) -> list[int]:
        """The relay leader's lock session, or every session of one live child at random."""
        if mode == "relay_lease":
            port = await self.leader_port()
            return [] if port is None else [port]
        alive = [c for c in self.children if c.alive and c.role != "audit"]
        return list(self.rng.choice(alive).pg_client_ports(self.pg_port)) if alive else []

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
