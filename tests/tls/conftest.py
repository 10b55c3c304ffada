"""Session-wide TLS servers (see ``support.py``) and the environment that points a layer at
them. Each test that starts a layer gets its own schema, key prefix, exchange and index prefix
on these servers, as in the rest of the suite."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from satellites_es.testing.services import unique_name

from .support import REDIS_PASSWORD, PgCluster, Pki, RedisTls, TlsProxy, make_pki, running

ES_PASSWORD = "es-s3cret"
BACKENDS = ("postgres", "redis", "rabbitmq", "elasticsearch")

#: (backends, ca, extra variables) -> a SATELLITES_* environment
EnvFor = Callable[..., dict[str, str]]


@pytest.fixture(scope="session")
def pki() -> Iterator[Pki]:
    with tempfile.TemporaryDirectory(prefix="satellites-pki-") as d:
        yield make_pki(Path(d))


@pytest.fixture(scope="session")
def pg_cluster(pki: Pki) -> Iterator[PgCluster]:
    yield from running(PgCluster(pki))


@pytest.fixture(scope="session")
def redis_tls(pki: Pki) -> Iterator[RedisTls]:
    yield from running(RedisTls(pki))


@pytest.fixture
async def amqp_tls(pki: Pki, amqp_url: str) -> AsyncIterator[TlsProxy]:
    """TLS in front of the shared broker (which is not changed)."""
    target = urlsplit(amqp_url)
    async with TlsProxy(target.hostname or "127.0.0.1", target.port or 5672, pki) as proxy:
        yield proxy


@pytest.fixture
async def es_tls(pki: Pki, es_url: str) -> AsyncIterator[TlsProxy]:
    """TLS in front of the Elasticsearch emulator."""
    target = urlsplit(es_url)
    async with TlsProxy(target.hostname or "127.0.0.1", target.port or 9200, pki) as proxy:
        yield proxy


@pytest.fixture
def tls_env(
    pki: Pki,
    pg_cluster: PgCluster,
    redis_tls: RedisTls,
    amqp_tls: TlsProxy,
    es_tls: TlsProxy,
    tmp_path: Path,
) -> EnvFor:
    """``tls_env(backends, ca=...)``: the environment of a layer using those backends over TLS
    with ``ca`` as the trusted CA (the others disabled), each with a client certificate."""
    test_id = unique_name("t")

    def build(backends: tuple[str, ...] = BACKENDS, ca: str | None = None) -> dict[str, str]:
        ca = ca or pki.ca
        env = {
            "SATELLITES_CONNECT_TIMEOUT": "20",
            "SATELLITES_FAISS_ENABLED": "false",
            "SATELLITES_POSTGRES_SCHEMA": test_id,
            "SATELLITES_POSTGRES_MIN_CONNECTIONS": "1",
            "SATELLITES_POSTGRES_MAX_CONNECTIONS": "3",
            "SATELLITES_REDIS_KEY_PREFIX": f"{test_id}:",
            "SATELLITES_RABBITMQ_EXCHANGE": f"{test_id}.events",
            "SATELLITES_RABBITMQ_QUEUE_TYPE": "classic",
            "SATELLITES_ELASTICSEARCH_INDEX_PREFIX": f"{test_id}-",
        }
        for name in BACKENDS:
            if name not in backends:
                env[f"SATELLITES_{name.upper()}_ENABLED"] = "false"
        if "postgres" in backends:
            env["SATELLITES_POSTGRES_URL"] = pg_cluster.url(ca=ca)
        if "redis" in backends:
            env["SATELLITES_REDIS_URL"] = (
                f"rediss://:{REDIS_PASSWORD}@127.0.0.1:{redis_tls.port}/0?ssl_ca_certs={ca}"
                f"&ssl_certfile={pki.client_pem}&ssl_keyfile={pki.client_key}"
            )
        if "rabbitmq" in backends:
            env["SATELLITES_RABBITMQ_URL"] = (
                f"amqps://guest:guest@127.0.0.1:{amqp_tls.port}/?cafile={ca}"
                f"&certfile={pki.client_pem}&keyfile={pki.client_key}"
            )
        if "elasticsearch" in backends:
            (tmp_path / "es-password").write_text(ES_PASSWORD + "\n")
            env.update({
                "SATELLITES_ELASTICSEARCH_URL": f"https://127.0.0.1:{es_tls.port}",
                "SATELLITES_ELASTICSEARCH_USERNAME": "elastic",
                "SATELLITES_ELASTICSEARCH_PASSWORD_FILE": str(tmp_path / "es-password"),
                "SATELLITES_ELASTICSEARCH_CA_CERTS": ca,
                "SATELLITES_ELASTICSEARCH_CLIENT_CERT": pki.client_pem,
                "SATELLITES_ELASTICSEARCH_CLIENT_KEY": pki.client_key,
            })  # fmt: skip
        return env

    return build
