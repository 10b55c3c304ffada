"""An S3-compatible server on 127.0.0.1 for tests and benchmarks: moto's, in a process of its own.

``with S3Server() as s3:`` starts ``moto.server`` on a free port, creates a bucket and gives the
``SATELLITES_FAISS_SNAPSHOT_*`` and ``AWS_*`` variables that point a process at it
(:meth:`S3Server.env`); the credentials are moto's dummies, read by the client's standard
chain as real ones would be. :meth:`stop` and :meth:`start` again on the same port make an
outage; the server keeps its objects only while it runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

from .services import ServiceNotFound, free_port, port_open

__all__ = ["S3Server"]

#: The variables the object store client reads (its standard credential chain).
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "satellites-test-key",
    "AWS_SECRET_ACCESS_KEY": "satellites-test-secret-never-logged",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Server:
    bucket: str = "satellites-snapshots"
    port: int = field(default_factory=free_port)
    startup_timeout: float = 30.0
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def env(self, prefix: str) -> dict[str, str]:
        """Variables for a process using ``s3://bucket/prefix`` on this server."""
        return {**AWS_ENV, "SATELLITES_FAISS_SNAPSHOT_URL": self.url(prefix),
                "SATELLITES_FAISS_SNAPSHOT_ENDPOINT": self.endpoint}  # fmt: skip

    def start(self, create_bucket: bool = True) -> S3Server:
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, **AWS_ENV},
        )  # fmt: skip
        deadline = time.monotonic() + self.startup_timeout
        while not port_open("127.0.0.1", self.port, timeout=0.2):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ServiceNotFound(f"moto.server did not answer on {self.endpoint}")
            time.sleep(0.1)
        if create_bucket:
            request = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
            with urllib.request.urlopen(request, timeout=10):
                pass
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
