"""TLS settings and secret files: every parameter round-trips through ``from_env`` and reaches
the driver's own input (asyncpg's DSN, redis-py's and elasticsearch-py's keyword arguments,
aiormq's URL); a parameter nobody honours is an error naming it."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiormq
import pytest
import redis.asyncio as aioredis
from yarl import URL

from satellites_es.backends import ElasticsearchBackend, RedisBackend
from satellites_es.config import DataLayerConfig, PostgresConfig, RabbitMQConfig
from satellites_es.errors import ConfigurationError
from tests.tls.support import make_pki


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Real certificate and key files (elasticsearch-py loads them when the client is made)."""
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    return {"ca.pem": pki.ca, "client.pem": pki.client_pem, "client.key": pki.client_key}


def test_postgres_tls_parameters_reach_the_dsn_from_the_url(files: dict[str, str]) -> None:
    params = {"sslmode": "verify-ca", "sslrootcert": files["ca.pem"],
              "sslcert": files["client.pem"], "sslkey": files["client.key"],
              "sslpassword": "key-s3cret"}  # fmt: skip
    query = "&".join(f"{k}={v}" for k, v in params.items())
    c = DataLayerConfig.from_env({"SATELLITES_POSTGRES_URL": f"postgresql://u:pw@db/app?{query}"})
    pg = c.postgres
    assert (pg.sslmode, pg.sslrootcert, pg.sslcert, pg.sslkey, pg.sslpassword) == tuple(
        params.values()
    )
    dsn = parse_qs(urlsplit(pg.dsn).query)  # what asyncpg parses, for every connection
    assert {k: v[0] for k, v in dsn.items() if k.startswith("ssl")} == params
    assert "key-s3cret" not in pg.safe_dsn + repr(c) and "sslpassword=***" in pg.safe_dsn


def test_postgres_tls_from_fields_and_verified_by_default(files: dict[str, str]) -> None:
    c = DataLayerConfig.from_env({
        "SATELLITES_POSTGRES_URL": "postgresql://u:pw@db/app",
        "SATELLITES_POSTGRES_SSLROOTCERT": files["ca.pem"],
    })  # fmt: skip
    # a CA without a mode asks to be verified: verify-full, not libpq's unverified "prefer"
    assert c.postgres.effective_sslmode == "verify-full"
    assert "sslmode=verify-full" in c.postgres.dsn
    assert "sslmode" not in PostgresConfig().dsn  # nothing asked: the driver's default
    with pytest.raises(ConfigurationError, match="SATELLITES_POSTGRES_SSLMODE"):
        DataLayerConfig.from_env({"SATELLITES_POSTGRES_SSLMODE": "verify-everything"})


def test_redis_tls_parameters_reach_redis_py(files: dict[str, str]) -> None:
    url = (f"rediss://:pw@cache:6380/2?ssl_ca_certs={files['ca.pem']}"
           f"&ssl_certfile={files['client.pem']}&ssl_keyfile={files['client.key']}"
           "&ssl_cert_reqs=optional&ssl_check_hostname=false")  # fmt: skip
    c = DataLayerConfig.from_env({"SATELLITES_REDIS_URL": url}).redis
    assert c.ssl and (c.port, c.db, c.password) == (6380, 2, "pw")
    backend = RedisBackend(c)
    backend.open_lazily()  # the client the backend uses, made without connecting
    client = backend.client
    assert client is not None
    kwargs = client.connection_pool.connection_kwargs
    assert client.connection_pool.connection_class is aioredis.SSLConnection
    assert (kwargs["ssl_ca_certs"], kwargs["ssl_certfile"], kwargs["ssl_keyfile"]) == (
        files["ca.pem"], files["client.pem"], files["client.key"],
    )  # fmt: skip
    assert (kwargs["ssl_cert_reqs"], kwargs["ssl_check_hostname"]) == ("optional", False)
    # the URL form (used with Redis.from_url) keeps them too
    again = aioredis.Redis.from_url(c.url).connection_pool
    assert again.connection_class is aioredis.SSLConnection
    assert again.connection_kwargs["ssl_ca_certs"] == files["ca.pem"]
    assert again.connection_kwargs["password"] == "pw"


async def test_rabbitmq_tls_parameters_reach_aiormq(files: dict[str, str]) -> None:
    url = (f"amqps://u:pw@mq/vh?cafile={files['ca.pem']}&certfile={files['client.pem']}"
           f"&keyfile={files['client.key']}&no_verify_ssl=1")  # fmt: skip
    c = DataLayerConfig.from_env({"SATELLITES_RABBITMQ_URL": url}).rabbitmq
    assert c.ssl and c.port == 5671 and c.no_verify_ssl  # amqps' port when the URL has none
    certs = aiormq.Connection(URL(c.url)).ssl_certs
    assert (certs.cafile, certs.cert, certs.key, certs.verify) == (
        files["ca.pem"], files["client.pem"], files["client.key"], False,
    )  # fmt: skip
    assert RabbitMQConfig().port == 5672 and RabbitMQConfig(ssl=True).port == 5671
    assert aiormq.Connection(URL(RabbitMQConfig(ssl=True).url)).ssl_certs.verify is True


async def test_elasticsearch_tls_settings_reach_the_client(files: dict[str, str]) -> None:
    c = DataLayerConfig.from_env({
        "SATELLITES_ELASTICSEARCH_URL": "https://es1:9200,https://es2:9200",
        "SATELLITES_ELASTICSEARCH_CA_CERTS": files["ca.pem"],
        "SATELLITES_ELASTICSEARCH_CLIENT_CERT": files["client.pem"],
        "SATELLITES_ELASTICSEARCH_CLIENT_KEY": files["client.key"],
        "SATELLITES_ELASTICSEARCH_VERIFY_CERTS": "true",
        "SATELLITES_ELASTICSEARCH_SSL_ASSERT_FINGERPRINT": "ab" * 32,
    }).elasticsearch  # fmt: skip
    backend = ElasticsearchBackend(c)
    backend.open_lazily()  # the client the backend uses, made without connecting
    client = backend.client
    assert client is not None
    try:
        for node in client.transport.node_pool.all():
            cfg = node.config
            assert (cfg.ca_certs, cfg.client_cert, cfg.client_key) == (
                files["ca.pem"], files["client.pem"], files["client.key"],
            )  # fmt: skip
            assert cfg.verify_certs is True and cfg.ssl_assert_fingerprint == "ab" * 32
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("var", "url", "param"),
    [
        ("SATELLITES_POSTGRES_URL", "postgresql://u:pw@h/db?sslmode=require&sslcrl=/x", "sslcrl"),
        ("SATELLITES_POSTGRES_URL", "postgresql://u:pw@h/db?connect_timeout=3", "connect_timeout"),
        ("SATELLITES_REDIS_URL", "rediss://h/0?ssl_ca_path=/x", "ssl_ca_path"),
        ("SATELLITES_RABBITMQ_URL", "amqps://u:pw@h/?capath=/x", "capath"),
        ("SATELLITES_RABBITMQ_URL", "amqp://u:pw@h/?heartbeat=5", "heartbeat"),
    ],
)
def test_an_unknown_url_parameter_is_an_error_naming_it(var: str, url: str, param: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        DataLayerConfig.from_env({var: url})
    assert var in str(info.value) and repr(param) in str(info.value)
    assert "pw" not in str(info.value).replace("supported", "")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SATELLITES_REDIS_URL": "redis://h/0?ssl_ca_certs=/ca.pem"}, "ssl_ca_certs"),
        ({"SATELLITES_REDIS_SSL_CERTFILE": "/c.pem"}, "SATELLITES_REDIS_SSL_CERTFILE"),
        ({"SATELLITES_RABBITMQ_CAFILE": "/ca.pem"}, "SATELLITES_RABBITMQ_CAFILE"),
        ({"SATELLITES_ELASTICSEARCH_CA_CERTS": "/ca.pem"}, "SATELLITES_ELASTICSEARCH_CA_CERTS"),
        (
            {"SATELLITES_POSTGRES_URL": "postgresql://h/db?sslmode=disable&sslrootcert=/ca.pem"},
            "sslrootcert",
        ),
        ({"SATELLITES_ELASTICSEARCH_URL": "https://es:9200/?ca_certs=/x"}, "query parameters"),
        ({"SATELLITES_REDIS_URL": "http://h/0"}, "scheme"),
    ],
)
def test_tls_options_without_tls_are_refused(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        DataLayerConfig.from_env(env)


def test_secrets_come_from_files(tmp_path: Path) -> None:
    secrets = {"SATELLITES_POSTGRES_PASSWORD": "pg-s3cret", "SATELLITES_POSTGRES_SSLPASSWORD":
               "key-s3cret", "SATELLITES_REDIS_PASSWORD": "redis-s3cret",
               "SATELLITES_RABBITMQ_PASSWORD": "mq-s3cret",
               "SATELLITES_ELASTICSEARCH_PASSWORD": "es-s3cret",
               "SATELLITES_ELASTICSEARCH_API_KEY": "es-k3y"}  # fmt: skip
    env = {}
    for var, value in secrets.items():
        (tmp_path / var).write_text(value + "\n")  # as `echo secret > file` writes it
        env[f"{var}_FILE"] = str(tmp_path / var)
    c = DataLayerConfig.from_env(env)
    got = (c.postgres.password, c.postgres.sslpassword, c.redis.password, c.rabbitmq.password,
           c.elasticsearch.password, c.elasticsearch.api_key)  # fmt: skip
    assert got == tuple(secrets.values())
    assert not any(s in repr(c) for s in secrets.values())
    # the file wins over the URL's password, like any field variable
    url = {"SATELLITES_POSTGRES_URL": "postgresql://u:url-pw@h/db"}
    assert DataLayerConfig.from_env({**url, **env}).postgres.password == "pg-s3cret"


def test_a_secret_file_that_cannot_be_read_or_is_ambiguous_is_an_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(ConfigurationError, match="SATELLITES_REDIS_PASSWORD_FILE"):
        DataLayerConfig.from_env({"SATELLITES_REDIS_PASSWORD_FILE": missing})
    (tmp_path / "pw").write_text("s3cret")
    with pytest.raises(ConfigurationError, match="not both") as info:
        DataLayerConfig.from_env({"SATELLITES_REDIS_PASSWORD_FILE": str(tmp_path / "pw"),
                                  "SATELLITES_REDIS_PASSWORD": "other"})  # fmt: skip
    assert "s3cret" not in str(info.value) and "other" not in str(info.value)


@pytest.mark.parametrize(
    ("var", "value", "section", "field"),
    [
        ("SATELLITES_POSTGRES_SSLMODE", "require", "postgres", "sslmode"),
        ("SATELLITES_POSTGRES_SSLROOTCERT", "/ca.pem", "postgres", "sslrootcert"),
        ("SATELLITES_POSTGRES_SSLCERT", "/c.pem", "postgres", "sslcert"),
        ("SATELLITES_POSTGRES_SSLKEY", "/c.key", "postgres", "sslkey"),
        ("SATELLITES_POSTGRES_SSLPASSWORD", "key-s3cret", "postgres", "sslpassword"),
        ("SATELLITES_REDIS_SSL_CA_CERTS", "/ca.pem", "redis", "ssl_ca_certs"),
        ("SATELLITES_REDIS_SSL_CERTFILE", "/c.pem", "redis", "ssl_certfile"),
        ("SATELLITES_REDIS_SSL_KEYFILE", "/c.key", "redis", "ssl_keyfile"),
        ("SATELLITES_REDIS_SSL_CERT_REQS", "optional", "redis", "ssl_cert_reqs"),
        ("SATELLITES_RABBITMQ_CAFILE", "/ca.pem", "rabbitmq", "cafile"),
        ("SATELLITES_RABBITMQ_CERTFILE", "/c.pem", "rabbitmq", "certfile"),
        ("SATELLITES_RABBITMQ_KEYFILE", "/c.key", "rabbitmq", "keyfile"),
        ("SATELLITES_ELASTICSEARCH_CA_CERTS", "/ca.pem", "elasticsearch", "ca_certs"),
        ("SATELLITES_ELASTICSEARCH_CLIENT_CERT", "/c.pem", "elasticsearch", "client_cert"),
        ("SATELLITES_ELASTICSEARCH_CLIENT_KEY", "/c.key", "elasticsearch", "client_key"),
    ],
)
def test_every_tls_field_variable_sets_its_field_and_the_driver_form(
    var: str, value: str, section: str, field: str
) -> None:
    tls_on = {"SATELLITES_REDIS_SSL": "true", "SATELLITES_RABBITMQ_SSL": "true",
              "SATELLITES_ELASTICSEARCH_URL": "https://es:9200"}  # fmt: skip
    config = getattr(DataLayerConfig.from_env({**tls_on, var: value}), section)
    assert getattr(config, field) == value
    assert config.tls_options()[field] == value  # what the adapter hands to the driver
    if section == "postgres":
        assert f"{field}={value}" in config.dsn
    if section == "rabbitmq":
        assert f"{field}={value}" in config.url
