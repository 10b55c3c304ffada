"""Finding the services the tests, the benchmarks and the demo run against, and naming things
so that tests sharing a service do not collide.

Service discovery, in order (the same for the test suite, the benchmarks and the demo):

1. a URL in the environment (``SATELLITES_POSTGRES_URL``, ``SATELLITES_REDIS_URL``,
   ``SATELLITES_RABBITMQ_URL``, ``SATELLITES_ES_URL``);
2. the service on its standard port on localhost, if something answers there;
3. a testcontainers container, where a Docker engine exists;
4. for Elasticsearch only: the ``noida-db`` Elasticsearch-compatible server (a dev dependency),
   started on a free port (:class:`EmulatedElasticsearch`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "EmulatedElasticsearch",
    "ServiceNotFound",
    "elasticsearch_url",
    "find_service_url",
    "free_port",
    "port_open",
    "unique_name",
]

logger = logging.getLogger(__name__)

_LOCAL = {
    "postgres": ("SATELLITES_POSTGRES_URL", 5432, "postgresql://postgres@127.0.0.1:5432/test"),
    "redis": ("SATELLITES_REDIS_URL", 6379, "redis://127.0.0.1:6379/0"),
    "rabbitmq": ("SATELLITES_RABBITMQ_URL", 5672, "amqp://guest:guest@127.0.0.1:5672/"),
}

_keep_alive: list[Any] = []  # containers started by find_service_url live for the process


class ServiceNotFound(RuntimeError):
    """No URL in the environment, nothing on localhost, and no Docker engine."""


def unique_name(prefix: str = "t") -> str:
    """A short name that is unique per call, safe as a schema, key prefix or queue name."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _docker_available() -> bool:
    return shutil.which("docker") is not None and (
        os.path.exists("/var/run/docker.sock") or "DOCKER_HOST" in os.environ
    )


def find_service_url(name: str, env: Mapping[str, str] | None = None) -> str:
    """The URL of a running ``postgres``, ``redis`` or ``rabbitmq``; see the module docstring."""
    env = os.environ if env is None else env
    var, port, local_url = _LOCAL[name]
    if env.get(var):
        return env[var]
    if port_open("127.0.0.1", port):
        return local_url
    if _docker_available():
        return _start_container(name)
    raise ServiceNotFound(
        f"{name}: set {var}, run it on 127.0.0.1:{port}, or provide a Docker engine"
    )


def _start_container(name: str) -> str:  # pragma: no cover - needs a Docker engine
    if name == "postgres":
        from testcontainers.postgres import PostgresContainer

        pg = PostgresContainer("postgres:16-alpine", driver=None).start()
        _keep_alive.append(pg)
        return str(pg.get_connection_url())
    if name == "redis":
        from testcontainers.redis import RedisContainer

        rc = RedisContainer("redis:7-alpine").start()
        _keep_alive.append(rc)
        return f"redis://{rc.get_container_host_ip()}:{rc.get_exposed_port(6379)}/0"
    from testcontainers.rabbitmq import RabbitMqContainer

    mq = RabbitMqContainer("rabbitmq:3-management").start()
    _keep_alive.append(mq)
    return f"amqp://guest:guest@{mq.get_container_host_ip()}:{mq.get_exposed_port(5672)}/"


@dataclass
class EmulatedElasticsearch:
    """The noida-db Elasticsearch-compatible server on a free port, for tests and the demo.

    It is not Elasticsearch; the differences we rely on not hitting are listed in the README.
    """

    data_dir: Path | None = None
    port: int = field(default_factory=free_port)
    startup_timeout: float = 30.0
    _proc: subprocess.Popen[bytes] | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def binary() -> str:
        here = Path(sys.executable).parent / "noida-db"
        found = str(here) if here.exists() else shutil.which("noida-db")
        if not found:
            raise ServiceNotFound("elasticsearch: noida-db is not installed (pip install noida-db)")
        return found

    def start(self) -> str:
        if self.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="satellites-noida-")
            self.data_dir = Path(self._tmp.name)
        cmd = [
            self.binary(), "start", "--only", "elasticsearch",
            "--elasticsearch-port", str(self.port), "--data-dir", str(self.data_dir),
        ]  # fmt: skip
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServiceNotFound(f"noida-db exited with code {self._proc.returncode}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(self.url, timeout=1) as resp:
                    if resp.status == 200:
                        return self.url
            time.sleep(0.1)
        self.stop()
        raise ServiceNotFound(f"noida-db did not answer on {self.url} in {self.startup_timeout}s")

    def stop(self) -> None:
        # The console script is a wrapper around the server binary: signal the whole process
        # group (it was started in a session of its own), or the server outlives the wrapper.
        if self._proc is not None:
            self._signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self._proc.wait(timeout=10)
            self._wait_group_gone()
        self._proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _signal(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def _wait_group_gone(self, timeout: float = 10.0) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(self._proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        self._signal(signal.SIGKILL)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def elasticsearch_url(env: Mapping[str, str] | None = None) -> Iterator[str]:
    """``SATELLITES_ES_URL`` when set, else a noida-db server for the block's lifetime."""
    env = os.environ if env is None else env
    if env.get("SATELLITES_ES_URL"):
        yield env["SATELLITES_ES_URL"]
        return
    with EmulatedElasticsearch() as url:
        yield url
