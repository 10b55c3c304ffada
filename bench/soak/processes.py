"""The soak's child processes: two relays, three projectors and the bus auditor, each restarted
by the :class:`Supervisor` when it exits, and the Elasticsearch emulator's watchdog. Every
child dies with the soak, however the soak dies (:func:`die_with_parent`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.soak.namespace import Namespace
from bench.soak.report import log
from satellites_es.testing.services import EmulatedElasticsearch, free_port

ROOT = Path(__file__).resolve().parents[2]


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """In the child, before exec: SIGKILL it when the soak dies, however it dies (Linux
    PR_SET_PDEATHSIG), so a killed soak leaves no relay or projector behind. Children are
    started from the event loop's thread only: the signal follows the thread that forked."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig))  # 1 = PR_SET_PDEATHSIG


def _http_json(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))


@dataclass
class Child:
    name: str
    role: str  # "relay" | "projector" | "audit"
    args: list[str]
    env: dict[str, str]
    log_path: Path
    http_port: int | None = None
    module: str = "satellites_es.cli"  # run as ``python -m module``
    proc: subprocess.Popen[bytes] | None = None
    killed_by_us: bool = False
    starts: int = 0
    crashes: list[str] = field(default_factory=list)

    def start(self) -> None:
        cmd = [sys.executable, "-m", self.module, *self.args]
        if self.http_port is not None:
            cmd += ["--http-port", str(self.http_port)]
        full = {k: v for k, v in os.environ.items() if not k.startswith("SATELLITES_")}
        full.update(self.env)
        out = self.log_path.open("ab")
        out.write(f"\n=== start {self.starts + 1} at {time.strftime('%H:%M:%S')}\n".encode())
        out.flush()
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=full, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent,
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

    async def health(self) -> dict[str, Any] | None:
        """The child's ``/health`` body; None while it is down, starting or has no port."""
        if not self.alive or self.http_port is None:
            return None
        url = f"http://127.0.0.1:{self.http_port}/health"
        try:
            return await asyncio.to_thread(_http_json, url)
        except (OSError, ValueError):
            return None


def make_children(ns: Namespace) -> list[Child]:
    base = ns.env()
    logs = ns.workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    children = [
        Child(f"relay-{i}", "relay", ["relay"], base, logs / f"relay-{i}.log",
              http_port=free_port())
        for i in (1, 2)
    ]  # fmt: skip
    sinks = ns.projector_env()  # Redis and Elasticsearch through the cuttable proxies
    children += [
        Child(f"project-{i}", "projector", ["project", "-p", "entities", "-p", "documents"], sinks,
              logs / f"project-{i}.log", http_port=free_port())
        for i in (1, 2)
    ]  # fmt: skip
    children.append(
        Child("audit", "audit", [], base, logs / "audit.log", module="bench.soak.auditor")
    )
    faiss_env = {**sinks, "SATELLITES_FAISS_ENABLED": "true"}
    children.append(
        Child("project-embeddings", "projector", ["project", "-p", "embeddings"], faiss_env,
              logs / "project-embeddings.log", http_port=free_port())
    )  # fmt: skip
    return children


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
                if child.role == "relay":
                    await self._probe(child)
            await asyncio.sleep(2.0)

    async def _probe(self, child: Child) -> None:
        body = await child.health()
        relay = ((body or {}).get("backends") or {}).get("relay") or {}
        error = str(relay.get("error") or "")
        if relay.get("status") != "down" or not error.startswith("relay stopped"):
            return
        if self.running and child.kill():
            self.dead_relays += 1
            self.dead_relay_notes.append(f"{child.name}: {error[:200]}")
            if self.dead_relays <= 3:
                log(f"dead relay in a live process: {child.name}: {error[:200]}")

    async def run(self) -> None:
        while self.running:
            for child in self.children:
                if child.proc is not None and not child.alive:
                    await self._restart(child)
            await asyncio.sleep(0.3)

    async def _restart(self, child: Child) -> None:
        assert child.proc is not None
        if not child.killed_by_us:
            self.crash_count += 1
            note = f"{child.name} exited {child.proc.returncode}: {child.tail(3)}"
            child.crashes.append(note)
            if len(child.crashes) <= 3:
                log(f"crash: {note[:400]}")
        if child.starts >= self.MAX_STARTS:
            raise RuntimeError(f"{child.name} restarted {child.starts} times; giving up")
        await asyncio.sleep(0.3)
        if self.running:
            child.start()
            self.restarts += 1

    async def stop_all(self, timeout: float = 30.0) -> None:
        self.running = False
        for child in self.children:
            if child.alive and child.proc is not None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            if child.proc is not None:
                self.graceful_exit_codes[child.name] = await _reap(child.proc, deadline)


async def _reap(proc: subprocess.Popen[bytes], deadline: float) -> int | None:
    """Its exit code once it exits by ``deadline``; else SIGKILL it and return None."""
    for _ in range(100_000):
        if proc.poll() is not None or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
        return None
    return proc.returncode


# -- the Elasticsearch emulator's watchdog -------------------------------------------------------

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


def watchdog(emulator: EmulatedElasticsearch, workdir: Path) -> subprocess.Popen[bytes] | None:
    """The Elasticsearch emulator runs in a session of its own (``satellites_es.testing.services``):
    if the soak is SIGKILLed, a watchdog that gets SIGTERM when the soak dies (PDEATHSIG)
    kills the emulator's process group and removes the work dir. After a normal end the
    watchdog is SIGKILLed first (:func:`stop_emulator`)."""
    proc = emulator._proc
    if proc is None:
        return None
    return subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(proc.pid), str(workdir)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=lambda: die_with_parent(signal.SIGTERM), start_new_session=True,
    )  # fmt: skip


def stop_emulator(
    emulator: EmulatedElasticsearch | None, dog: subprocess.Popen[bytes] | None
) -> None:
    if dog is not None and dog.poll() is None:
        dog.kill()  # first, so it can never signal a process group id reused later
        dog.wait(10)
    if emulator is not None:
        emulator.stop()
