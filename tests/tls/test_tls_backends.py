"""TLS against real servers (``support.py``): each backend alone and all four together start
encrypted and verified with the right CA, refuse a CA from an unrelated authority at once
(naming the backend, no secret in the message), and the hostssl-only Postgres cluster refuses
``sslmode=disable``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from satellites_es import DataEvent, DataLayer, DataLayerConfig
from satellites_es.errors import BackendRefusedError
from satellites_es.healthcheck import check

from .conftest import BACKENDS, ES_PASSWORD, EnvFor
from .support import (
    CLIENT_KEY_PASSPHRASE,
    PG_ADMIN_PASSWORD,
    REDIS_PASSWORD,
    PgCluster,
    Pki,
    TlsProxy,
)

pytestmark = pytest.mark.es
SECRETS = (PG_ADMIN_PASSWORD, REDIS_PASSWORD, ES_PASSWORD, CLIENT_KEY_PASSPHRASE, "guest:guest")
OPTIONAL = ("redis", "elasticsearch")  # lazily startable: a refusal must still fail start()


def _assert_tls(details: dict[str, Any], *, verified: bool = True) -> None:
    assert details["encrypted"] is True, details
    assert details["verified"] is verified, details


async def _wait_relay_leads(data: DataLayer) -> None:
    for _ in range(200):
        relay = (await data.health()).details["relay"].details
        if relay.get("state") == "active":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the relay did not take the lead: {relay}")


async def _pg_sessions(cluster: PgCluster, schema: str) -> list[asyncpg.Record]:
    """Every session of the cluster but ours, with the server's word on its TLS."""
    conn = await asyncpg.connect(cluster.url())
    try:
        return await conn.fetch(
            "SELECT a.application_name, s.ssl FROM pg_stat_activity a"
            " JOIN pg_stat_ssl s USING (pid)"
            " WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_each_backend_alone_starts_encrypted_and_verified(
    tls_env: EnvFor, pg_cluster: PgCluster, backend: str
) -> None:
    config = DataLayerConfig.from_env(tls_env((backend,)))
    async with DataLayer(config) as data:
        health = await data.health()
        assert health.ok, health.to_dict()
        _assert_tls(dict(health.details[backend].details))
        if backend == "postgres":  # the pool, the NOTIFY listener and the relay's lock session
            await _wait_relay_leads(data)
            sessions = await _pg_sessions(pg_cluster, config.postgres.schema)
            assert len(sessions) >= 3 and all(s["ssl"] for s in sessions), sessions
    if backend == "postgres":  # every session the server ever authorised, migrations too
        lines = pg_cluster.connection_log()
        assert lines and all("SSL enabled" in line for line in lines), lines


async def test_all_four_together_carry_events_over_tls(tls_env: EnvFor) -> None:
    config = DataLayerConfig.from_env(tls_env())
    got: list[DataEvent] = []
    data = DataLayer(config)

    async def handler(event: DataEvent) -> None:
        got.append(event)

    data.events.subscribe("doc.created", handler)
    async with data:
        health = await data.health()
        assert health.ok, health.to_dict()
        for name in BACKENDS:
            _assert_tls(dict(health.details[name].details))
        await data.events.publish(DataEvent(type="doc.created", resource="docs", key="1",
                                            payload={"n": 1}, source="test"))  # fmt: skip
        await data.redis.set(f"{config.redis.key_prefix}k", b"v")
        assert await data.redis.get(f"{config.redis.key_prefix}k") == b"v"
        index = f"{config.elasticsearch.index_prefix}docs"
        await data.elasticsearch.index(index=index, id="1", document={"n": 1}, refresh=True)
        assert (await data.elasticsearch.get(index=index, id="1"))["_source"] == {"n": 1}
        for _ in range(200):  # the log -> the relay -> amqps -> the subscriber
            if got:
                break
            await asyncio.sleep(0.05)
        assert [e.key for e in got] == ["1"]
        await data.elasticsearch.indices.delete(index=index)
        await data.redis.delete(f"{config.redis.key_prefix}k")
    # the operator's read-only health check opens its own connections, with the same TLS
    report = await check(config)
    assert report.ok, report.to_dict()
    for name in BACKENDS:
        _assert_tls(dict(report.details[name].details))


@pytest.mark.parametrize("backends", [(b,) for b in BACKENDS] + [BACKENDS])
async def test_a_ca_from_an_unrelated_authority_fails_start_at_once(
    tls_env: EnvFor, pki: Pki, backends: tuple[str, ...]
) -> None:
    config = DataLayerConfig.from_env(tls_env(backends, ca=pki.rogue))
    layer = DataLayer(config, optional=[b for b in backends if b in OPTIONAL])
    started = time.monotonic()
    with pytest.raises(BackendRefusedError) as info:
        await layer.start()
    assert time.monotonic() - started < config.connect_timeout  # not waited out: refused
    assert info.value.backend in backends and str(info.value).startswith(info.value.backend)
    assert "certificate verify failed" in str(info.value).lower()
    assert not any(secret in str(info.value) for secret in SECRETS), str(info.value)


async def test_sslmode_disable_is_refused_by_the_hostssl_only_cluster(
    tls_env: EnvFor, pg_cluster: PgCluster
) -> None:
    env = tls_env(("postgres",))
    env["SATELLITES_POSTGRES_URL"] = (
        f"postgresql://admin:{PG_ADMIN_PASSWORD}@127.0.0.1:{pg_cluster.port}/postgres"
        "?sslmode=disable"
    )
    with pytest.raises(BackendRefusedError, match="no encryption") as info:
        await DataLayer(DataLayerConfig.from_env(env)).start()
    assert info.value.backend == "postgres" and PG_ADMIN_PASSWORD not in str(info.value)


async def test_postgres_needs_the_client_certificate_and_checks_the_chain_in_verify_ca(
    tls_env: EnvFor, pg_cluster: PgCluster, pki: Pki
) -> None:
    env = tls_env(("postgres",))
    env["SATELLITES_POSTGRES_URL"] = pg_cluster.url(sslmode="verify-ca")
    async with DataLayer(DataLayerConfig.from_env(env)) as data:
        details = (await data.health()).details["postgres"].details
        _assert_tls(dict(details))
        assert "hostname not checked" in details["tls"]
    # without sslcert/sslkey the server's clientcert=verify-ca refuses: they reached asyncpg
    bare = (f"postgresql://admin:{PG_ADMIN_PASSWORD}@127.0.0.1:{pg_cluster.port}/postgres"
            f"?sslrootcert={pki.ca}")  # fmt: skip
    env["SATELLITES_POSTGRES_URL"] = bare
    with pytest.raises(BackendRefusedError, match="postgres"):
        await DataLayer(DataLayerConfig.from_env(env)).start()


@pytest.mark.parametrize(
    ("backend", "insecure"),
    [
        ("redis", {"SATELLITES_REDIS_SSL_CERT_REQS": "none"}),
        ("rabbitmq", {"SATELLITES_RABBITMQ_NO_VERIFY_SSL": "true"}),
        ("elasticsearch", {"SATELLITES_ELASTICSEARCH_VERIFY_CERTS": "false"}),
        (
            "postgres",
            {
                "SATELLITES_POSTGRES_SSLMODE": "require",
                "SATELLITES_POSTGRES_SSLROOTCERT": "/nonexistent-ca.pem",
            },
        ),
    ],
)
async def test_verification_turned_off_on_purpose_says_so_in_health(
    tls_env: EnvFor, pki: Pki, backend: str, insecure: dict[str, str]
) -> None:
    env = {**tls_env((backend,), ca=pki.rogue), **insecure}
    if backend == "postgres":  # require without a readable root certificate: encrypt only
        env.pop("SATELLITES_POSTGRES_SSLROOTCERT")
        env["SATELLITES_POSTGRES_URL"] = env["SATELLITES_POSTGRES_URL"].replace(
            f"sslrootcert={pki.rogue}&", ""
        )
    with pytest.warns(Warning) if backend == "elasticsearch" else contextlib.nullcontext():
        async with DataLayer(DataLayerConfig.from_env(env)) as data:
            details = (await data.health()).details[backend].details
    _assert_tls(dict(details), verified=False)


def _pin(pem: str) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(Path(pem).read_text())).hexdigest()


async def test_elasticsearch_fingerprint_pinning(pki: Pki, es_url: str) -> None:
    """A pinned server certificate is verified without any CA. (elasticsearch-py's aiohttp node
    sends no client certificate when pinning, so this proxy asks for none.)"""
    pin = _pin(pki.server_pem)
    target = urlsplit(es_url)
    async with TlsProxy(target.hostname or "", target.port or 9200, pki, client_cert=False) as p:
        env = {"SATELLITES_ELASTICSEARCH_URL": f"https://127.0.0.1:{p.port}",
               "SATELLITES_ELASTICSEARCH_SSL_ASSERT_FINGERPRINT": pin,
               "SATELLITES_CONNECT_TIMEOUT": "20",
               **{f"SATELLITES_{b.upper()}_ENABLED": "false"
                  for b in ("postgres", "redis", "rabbitmq", "faiss")}}  # fmt: skip
        async with DataLayer(DataLayerConfig.from_env(env)) as data:
            _assert_tls(dict((await data.health()).details["elasticsearch"].details))
        env["SATELLITES_ELASTICSEARCH_SSL_ASSERT_FINGERPRINT"] = "00" * 32
        layer = DataLayer(DataLayerConfig.from_env(env), optional=["elasticsearch"])
        with pytest.raises(BackendRefusedError, match="elasticsearch"):
            await layer.start()
