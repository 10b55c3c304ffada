"""Throwaway TLS servers for the TLS tests: a CA, a Postgres cluster, Redis, TLS proxies.

Everything runs on free local ports and is removed afterwards; the machine's shared services
are only reached through :class:`TlsProxy` (RabbitMQ), never changed.

* :func:`make_pki` writes two unrelated CAs with ``openssl``: ``ca`` signs the servers' and the
  client's certificates (SAN ``localhost`` and ``127.0.0.1``); ``rogue`` signs nothing we use,
  it is "a CA from an unrelated authority". The client key also exists encrypted
  (``client-enc.key``, passphrase :data:`CLIENT_KEY_PASSPHRASE`), for libpq's ``sslpassword``.
* :class:`PgCluster`: Postgres 15 (``initdb``/``pg_ctl`` of the installed server, as the
  ``postgres`` OS user when we are root, since initdb refuses root) with ``ssl=on`` and a
  ``pg_hba.conf`` of one ``hostssl`` line that also asks for a client certificate
  (``clientcert=verify-ca``) and a SCRAM password: no plaintext TCP, no socket login, and a
  connection that does not present ``sslcert``/``sslkey`` is refused too.
  ``log_connections`` records every session with its TLS state.
* :class:`RedisTls`: ``redis-server --port 0 --tls-port P`` (TLS only), client certificates
  required, a password set.
* :class:`TlsProxy`: the project's :class:`~satellites_es.testing.network_faults.TcpProxy` with a TLS listener
  that requires a client certificate: TLS in front of RabbitMQ and of the Elasticsearch
  emulator.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from satellites_es.testing.network_faults import TcpProxy
from satellites_es.testing.services import free_port, port_open

CLIENT_KEY_PASSPHRASE = "client-key-passphrase"
PG_ADMIN_PASSWORD = "pg-admin-s3cret"
REDIS_PASSWORD = "redis-s3cret"


@dataclass(frozen=True)
class Pki:
    dir: Path

    def __getattr__(self, name: str) -> str:  # ca, rogue, server_pem, client_key, ...
        return str(self.dir / _FILES[name])


_FILES = {
    "ca": "ca.pem",
    "rogue": "rogue-ca.pem",
    "server_pem": "server.pem",
    "server_key": "server.key",
    "client_pem": "client.pem",
    "client_key": "client.key",
    "client_key_encrypted": "client-enc.key",
}


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(directory: Path) -> Pki:
    """Two CAs, a server and a client certificate signed by the first (see the module doc)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"]  # fmt: skip
    for name, cn in (("ca", "satellites test CA"), ("rogue-ca", "unrelated CA")):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN={cn}",
                 *ca_ext, cwd=directory)  # fmt: skip
    (directory / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    )
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, cn in (("server", "localhost"), ("client", "satellites client")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=directory)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-out", f"{name}.pem",
                 "-extfile", f"{name}.ext", cwd=directory)  # fmt: skip
    _openssl("pkey", "-in", "client.key", "-out", "client-enc.key", "-aes256",
             "-passout", f"pass:{CLIENT_KEY_PASSPHRASE}", cwd=directory)  # fmt: skip
    for key in directory.glob("*.key"):
        key.chmod(0o600)
    return Pki(directory)


class _Server(Protocol):
    def start(self) -> object: ...
    def stop(self) -> None: ...


S = TypeVar("S", bound=_Server)


def running(server: S) -> Iterator[S]:
    """Yield ``server`` started; stop it afterwards, whatever happened (for fixtures)."""
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _as_postgres() -> list[str]:
    """initdb and the server refuse to run as root: run them as the ``postgres`` OS user."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class PgCluster:
    """A Postgres 15 cluster with TLS only (see the module docstring); ``start``/``stop``."""

    def __init__(self, pki: Pki) -> None:
        bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                check=True).stdout.strip()  # fmt: skip
        self.bin = Path(bindir)
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="satellites-pgtls-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.pki = pki

    def start(self) -> PgCluster:
        root, data = self.root, self.data
        (root / "pw").write_text(PG_ADMIN_PASSWORD)
        for name in ("server_pem", "server_key", "ca"):
            shutil.copy(getattr(self.pki, name), root / Path(getattr(self.pki, name)).name)
        root.chmod(0o755)
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
            for child in root.iterdir():
                shutil.chown(child, "postgres", "postgres")
        run = [*_as_postgres()]
        subprocess.run([*run, str(self.bin / "initdb"), "-D", str(data), "-U", "admin",
                        f"--pwfile={root / 'pw'}", "-A", "scram-sha-256", "--no-sync",
                        "--no-instructions"], check=True, capture_output=True, timeout=120)  # fmt: skip
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{root}'",
            "ssl": "on",
            "ssl_cert_file": f"'{root / 'server.pem'}'",
            "ssl_key_file": f"'{root / 'server.key'}'",
            "ssl_ca_file": f"'{root / 'ca.pem'}'",
            "log_connections": "on",
            "fsync": "off",
            "max_connections": "60",
        }
        with (data / "postgresql.conf").open("a") as f:
            f.writelines(f"{k} = {v}\n" for k, v in conf.items())
        # One line: TLS, a client certificate from our CA, and a SCRAM password. Nothing else
        # (no "host", no "local"): a plaintext connection finds no entry and is refused.
        (data / "pg_hba.conf").write_text(
            "hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\n"
        )
        subprocess.run([*run, str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.log),
                        "-w", "-t", "60", "start"], check=True, capture_output=True, timeout=90)  # fmt: skip
        return self

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run([*_as_postgres(), str(self.bin / "pg_ctl"), "-D", str(self.data),
                            "-m", "immediate", "-w", "stop"], capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)

    def url(
        self,
        user: str = "admin",
        password: str = PG_ADMIN_PASSWORD,
        *,
        database: str = "postgres",
        ca: str | None = None,
        **params: str,
    ) -> str:
        """A URL with the client certificate and its encrypted key (``ca``: sslrootcert)."""
        query = {
            "sslrootcert": ca or self.pki.ca,
            "sslcert": self.pki.client_pem,
            "sslkey": self.pki.client_key_encrypted,
            "sslpassword": CLIENT_KEY_PASSPHRASE,
            **params,
        }
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}?{q}"

    def connection_log(self) -> list[str]:
        """The server's "connection authorized" lines (each names its TLS state)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line for line in text.splitlines() if "connection authorized" in line]


class RedisTls:
    """``redis-server`` listening on TLS only, with client certificates and a password."""

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="satellites-redistls-"))
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisTls:
        self._proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
             "--tls-cert-file", self.pki.server_pem, "--tls-key-file", self.pki.server_key,
             "--tls-ca-cert-file", self.pki.ca, "--tls-auth-clients", "yes",
             "--requirepass", REDIS_PASSWORD, "--save", "", "--appendonly", "no",
             "--dir", str(self.root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server --tls-port {self.port} did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


class TlsProxy(TcpProxy):
    """A TLS-terminating proxy: TLS with a client certificate in front, plain TCP behind."""

    def __init__(
        self, target_host: str, target_port: int, pki: Pki, *, client_cert: bool = True
    ) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki.ca)
        context.load_cert_chain(pki.server_pem, pki.server_key)
        context.verify_mode = ssl.CERT_REQUIRED if client_cert else ssl.CERT_NONE
        super().__init__(target_host, target_port, tls=context)
