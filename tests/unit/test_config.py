from __future__ import annotations

import logging
from pathlib import Path

import pytest

from satellites_es.config import DataLayerConfig, PostgresConfig, RabbitMQConfig, redact_url
from satellites_es.errors import ConfigurationError


def test_defaults_follow_the_seed() -> None:
    c = DataLayerConfig()
    assert (c.redis.host, c.redis.port, c.redis.db) == ("localhost", 6379, 0)
    assert (c.postgres.database, c.postgres.user) == ("satellites", "postgres")
    assert (c.postgres.min_connections, c.postgres.max_connections) == (2, 10)
    assert c.elasticsearch.hosts == ("http://localhost:9200",)
    assert c.faiss.dimension == 1536
    assert c.faiss.index_path == Path("./data/faiss")


def test_from_env_reads_prefixed_fields_and_urls() -> None:
    c = DataLayerConfig.from_env(
        {
            "SATELLITES_POSTGRES_URL": "postgresql://app:s3cret@db.example:5433/prod",
            "SATELLITES_POSTGRES_MAX_CONNECTIONS": "20",
            "SATELLITES_REDIS_PORT": "6380",
            "SATELLITES_REDIS_ENABLED": "false",
            "SATELLITES_ELASTICSEARCH_URL": "http://es1:9200,http://es2:9200",
            "SATELLITES_FAISS_INDEX_PATH": "/tmp/idx",
            "SATELLITES_FAISS_METRIC": "l2",
            "SATELLITES_RABBITMQ_URL": "amqp://bob:pw@mq:5673/vh",
            "SATELLITES_CONNECT_TIMEOUT": "2.5",
        }
    )
    assert (c.postgres.host, c.postgres.port, c.postgres.database) == ("db.example", 5433, "prod")
    assert (c.postgres.user, c.postgres.password) == ("app", "s3cret")
    assert c.postgres.max_connections == 20
    assert c.redis.port == 6380 and c.redis.enabled is False
    assert c.elasticsearch.hosts == ("http://es1:9200", "http://es2:9200")
    assert c.faiss.index_path == Path("/tmp/idx") and c.faiss.metric == "l2"
    assert (c.rabbitmq.host, c.rabbitmq.port, c.rabbitmq.vhost) == ("mq", 5673, "vh")
    assert c.rabbitmq.user == "bob" and c.rabbitmq.password == "pw"
    assert c.connect_timeout == 2.5


def test_a_field_variable_wins_over_the_url() -> None:
    c = DataLayerConfig.from_env(
        {"SATELLITES_REDIS_URL": "redis://h:1/2", "SATELLITES_REDIS_PORT": "3"}
    )
    assert (c.redis.host, c.redis.port, c.redis.db) == ("h", 3, 2)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("SATELLITES_REDIS_PORT", "sixty"),
        ("SATELLITES_FAISS_METRIC", "hamming"),
        ("SATELLITES_POSTGRES_SCHEMA", "bad;schema"),
        ("SATELLITES_CONNECT_TIMEOUT", "soon"),
        ("SATELLITES_RABBITMQ_PARTITIONS", "0"),
    ],
)
def test_a_wrong_value_names_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        DataLayerConfig.from_env({var: value})
    assert var in str(info.value)


def test_a_wrong_password_value_is_not_echoed() -> None:
    with pytest.raises(ConfigurationError) as info:
        DataLayerConfig.from_env(
            {"SATELLITES_REDIS_DB": "x", "SATELLITES_REDIS_PASSWORD": "hunter2"}
        )
    assert "hunter2" not in str(info.value)


def test_passwords_never_appear_in_repr_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    c = DataLayerConfig.from_env(
        {
            "SATELLITES_POSTGRES_URL": "postgresql://app:pg-secret@db/prod",
            "SATELLITES_REDIS_PASSWORD": "redis-secret",
            "SATELLITES_RABBITMQ_URL": "amqp://u:mq-secret@mq/",
            "SATELLITES_ELASTICSEARCH_URL": "http://elastic:es-secret@es:9200",
        }
    )
    caplog.set_level(logging.DEBUG)
    logging.getLogger("test").info("config: %r / %s", c, c)
    text = repr(c) + str(c) + caplog.text + c.postgres.safe_dsn + c.rabbitmq.safe_url
    for secret in ("pg-secret", "redis-secret", "mq-secret", "es-secret"):
        assert secret not in text
    assert c.elasticsearch.hosts == ("http://es:9200",)
    assert c.elasticsearch.password == "es-secret"
    # the driver-facing DSN still carries it
    assert "pg-secret" in c.postgres.dsn


def test_redact_url() -> None:
    assert redact_url("amqp://u:p@h:5672/") == "amqp://u:***@h:5672/"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


def test_sections_validate_when_built_from_code() -> None:
    with pytest.raises(ConfigurationError, match="min_connections"):
        PostgresConfig(min_connections=5, max_connections=2)
    with pytest.raises(ConfigurationError, match="partitions"):
        RabbitMQConfig(partitions=0)


def test_a_socket_url_means_a_unix_socket() -> None:
    c = DataLayerConfig.from_env(
        {"SATELLITES_POSTGRES_URL": "postgresql://postgres@/satellites?host=/run/pg&port=5433"}
    )
    assert (c.postgres.host, c.postgres.port, c.postgres.database) == (
        "/run/pg",
        5433,
        "satellites",
    )
    assert c.postgres.dsn == (
        "postgresql://postgres@/satellites?host=/run/pg&port=5433&application_name=satellites-es"
    )


def test_rabbitmq_queue_type_and_delivery_limit_from_the_environment() -> None:
    assert RabbitMQConfig().queue_type == "quorum" and RabbitMQConfig().delivery_limit == 5
    cfg = DataLayerConfig.from_env(
        {"SATELLITES_RABBITMQ_QUEUE_TYPE": "classic", "SATELLITES_RABBITMQ_DELIVERY_LIMIT": "0"}
    )
    assert (cfg.rabbitmq.queue_type, cfg.rabbitmq.delivery_limit) == ("classic", 0)
    with pytest.raises(ConfigurationError, match="SATELLITES_RABBITMQ_QUEUE_TYPE"):
        DataLayerConfig.from_env({"SATELLITES_RABBITMQ_QUEUE_TYPE": "stream"})
    with pytest.raises(ConfigurationError, match="SATELLITES_RABBITMQ_DELIVERY_LIMIT"):
        DataLayerConfig.from_env({"SATELLITES_RABBITMQ_DELIVERY_LIMIT": "-1"})
