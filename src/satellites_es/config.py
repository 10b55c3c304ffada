"""Configuration: frozen dataclasses, built at the edge.

The seed's dataclasses (Redis, Postgres, Elasticsearch, FAISS, DataLayerConfig) plus RabbitMQ,
the event log and the relay. Every section can be disabled (``enabled=False``); the façade then
skips that backend and health reports it as disabled.

Built from code, or from the environment by :meth:`DataLayerConfig.from_env` with a
``SATELLITES_`` prefix: ``SATELLITES_<SECTION>_<FIELD>`` (``SATELLITES_REDIS_PORT=6380``), plus a
URL form per network service (``SATELLITES_POSTGRES_URL``, ``SATELLITES_REDIS_URL``,
``SATELLITES_RABBITMQ_URL``, ``SATELLITES_ELASTICSEARCH_URL``, comma-separated for several ES
hosts). A URL sets the connection fields; a field variable wins over the URL. Nothing below the
edge reads ``os.environ``.

A wrong value raises :class:`~satellites_es.errors.ConfigurationError` naming the variable.
Passwords are ``repr=False`` and never part of an error message; :func:`redact_url` strips them
from any URL that is logged.

**TLS.** Each service takes TLS in its own driver's terms, from its URL or from fields: libpq's
``sslmode``/``sslrootcert``/``sslcert``/``sslkey``/``sslpassword`` for Postgres, redis-py's
``rediss://`` and ``ssl_*`` for Redis, aiormq's ``amqps://`` and ``cafile``/``certfile``/
``keyfile``/``no_verify_ssl`` for RabbitMQ, ``https://`` hosts and ``ca_certs``/``verify_certs``/
``ssl_assert_fingerprint``/``client_cert``/``client_key`` for Elasticsearch. Asking for TLS means
verifying by default: a Postgres ``sslrootcert`` without ``sslmode`` is ``verify-full``, and
``rediss``/``amqps``/``https`` check the certificate and the host name unless told otherwise.
A URL parameter is either honoured or refused: one we do not pass on to the driver is a
``ConfigurationError`` naming it (it used to be dropped silently, and TLS with it). A TLS
option given for a connection that is not TLS (a CA for ``redis://``) is refused the same way.

**Secrets from files.** Every secret field (``password``, ``sslpassword``, ``api_key``) can
instead be read from a file named by ``<VARIABLE>_FILE`` (``SATELLITES_POSTGRES_PASSWORD_FILE``),
the Docker and Kubernetes secrets convention; one trailing newline is stripped.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

from pydantic import TypeAdapter, ValidationError

from .errors import ConfigurationError
from .sql import SCHEMA_NAME

__all__ = [
    "DataLayerConfig",
    "ElasticsearchConfig",
    "EventLogConfig",
    "FaissConfig",
    "PostgresConfig",
    "RabbitMQConfig",
    "RedisConfig",
    "RelayConfig",
    "redact_url",
]

ENV_PREFIX = "SATELLITES_"
#: A Redis key prefix is matched with SCAN patterns (a rebuild's drop, the demo's reset): glob
#: characters in it, or an empty prefix, would match keys that are not ours.
_REDIS_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
#: Elasticsearch index names are lower case and may not hold ``*``, ``,`` or ``?`` (an empty or
#: wildcard-like prefix would make ``{prefix}*`` match every index of the cluster).
_INDEX_PREFIX = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def _require(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigurationError(name, message)


def _check_port(name: str, port: int) -> None:
    _require(1 <= port <= 65535, name, f"must be a port between 1 and 65535 (got {port})")


def _check_positive(section: object, *names: str, zero: bool = False) -> None:
    """Every named field of ``section`` above zero (``zero=True``: at least zero)."""
    prefix = type(section).__name__.removesuffix("Config").lower()
    for name in names:
        value = getattr(section, name)
        ok = value >= 0 if zero else value > 0
        bound = "at least 0" if zero else "greater than 0"
        _require(ok, f"{prefix}.{name}", f"must be {bound} (got {value})")


def _check_url_port(url: str, name: str) -> None:
    """A host URL's port parses and is in range (``urlsplit`` only checks lazily)."""
    try:
        port = urlsplit(url).port
    except ValueError as exc:  # "Port could not be cast to integer value as 'abc'"
        raise ConfigurationError(name, f"invalid URL: {exc}") from None
    if port is not None:
        _check_port(name, port)


def redact_url(url: str) -> str:
    """Return ``url`` with any password (in the user info, or a ``password``/``sslpassword``
    query parameter) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is not None:
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        parts = parts._replace(netloc=f"{user}:***@{netloc}")
    if parts.query:
        pairs = [pair.partition("=") for pair in parts.query.split("&")]
        parts = parts._replace(query="&".join(
            f"{name}{eq}{'***' if name in _SECRET_PARAMS and value else value}"
            for name, eq, value in pairs
        ))  # fmt: skip
    return parts.geturl()


def _userinfo(user: str | None, password: str | None) -> str:
    if not user:  # redis://:password@host (no user, a password): keep the password
        return f":{quote(password, safe='')}@" if password else ""
    if password:
        return f"{quote(user, safe='')}:{quote(password, safe='')}@"
    return f"{quote(user, safe='')}@"


#: Query parameters whose value is a secret: redacted from every URL shown.
_SECRET_PARAMS = frozenset({"password", "sslpassword"})


def _url_fields(
    url: str,
    default_port: int,
    *,
    user: str,
    path: str,
    params: Collection[str],
    schemes: Mapping[str, dict[str, Any]],
) -> dict[str, Any]:
    """Connection fields from a service URL; ``?host=/dir`` (and ``&port=``) is a Unix socket,
    as libpq and asyncpg read it.

    ``schemes`` maps each accepted scheme to the fields it implies (``rediss`` -> ``ssl=True``);
    ``params`` are the query parameters honoured, each setting the field of the same name. Any
    other parameter is refused (``ValueError`` naming it): a dropped ``sslmode`` turned TLS off
    without a word. A repeated parameter is refused too (which one would win?)."""
    p = urlsplit(url)
    scheme = p.scheme.split("+", 1)[0]  # postgresql+asyncpg:// is SQLAlchemy's spelling
    if scheme not in schemes:
        raise ValueError(f"scheme {p.scheme!r} is not one of {', '.join(sorted(schemes))}")
    query = parse_qs(p.query, keep_blank_values=True)
    allowed = {"host", "port", *params}
    for name, values in query.items():
        if name not in allowed:
            raise ValueError(
                f"parameter {name!r} is not supported (supported: {', '.join(sorted(allowed))})"
            )
        if len(values) > 1:
            raise ValueError(f"parameter {name!r} is given {len(values)} times")
    out: dict[str, Any] = dict(schemes[scheme])
    out["host"] = query.pop("host", [p.hostname or "localhost"])[0]
    out["port"] = query.pop("port", [default_port if p.port is None else p.port])[0]
    out.update({name: values[0] for name, values in query.items()})
    if p.path.startswith("/") and len(p.path) > 1:
        out[path] = unquote(p.path[1:])
    if p.username:
        out[user] = unquote(p.username)
    if p.password:
        out["password"] = unquote(p.password)
    return out


def _query(params: Mapping[str, object]) -> str:
    """``name=value`` pairs for the set values, URL-quoted, joined by ``&``."""
    return "&".join(
        f"{name}={quote(str(value), safe='/')}"
        for name, value in params.items()
        if value is not None
    )


def _tls_only(section: str, enabled: bool, why: str, **options: object) -> None:
    """Refuse TLS options given for a connection that is not TLS (they would be ignored)."""
    if enabled:
        return
    for name, value in options.items():
        _require(value is None, f"{section}.{name}", f"{name} has no effect without TLS ({why})")


@dataclass(frozen=True)
class RedisConfig:
    enabled: bool = True
    host: str = "localhost"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    # redis-py 8 defaults both timeouts to 5 s; we set them on purpose (PITFALLS).
    socket_timeout: float = 10.0
    socket_connect_timeout: float = 5.0
    key_prefix: str = "sat:"
    #: TLS (``rediss://``), in redis-py's terms: the CA bundle that signs the server's
    #: certificate (None: the system's), a client certificate and key, and how hard to check.
    ssl: bool = False
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: Literal["required", "optional", "none"] = "required"
    ssl_check_hostname: bool = True

    def __post_init__(self) -> None:
        _check_port("redis.port", self.port)
        _check_positive(self, "db", zero=True)
        _check_positive(self, "socket_timeout", "socket_connect_timeout")
        _require(bool(_REDIS_PREFIX.match(self.key_prefix)), "redis.key_prefix",
                 "must be 1-64 of A-Z a-z 0-9 _ . : - (no glob characters; empty matches "
                 f"every key) (got {self.key_prefix!r})")  # fmt: skip
        _tls_only("redis", self.ssl, "use rediss:// or SATELLITES_REDIS_SSL=true",
                  ssl_ca_certs=self.ssl_ca_certs, ssl_certfile=self.ssl_certfile,
                  ssl_keyfile=self.ssl_keyfile)  # fmt: skip

    @property
    def url(self) -> str:
        """The URL with the password and the TLS options (``redis.asyncio.Redis.from_url``)."""
        scheme = "rediss" if self.ssl else "redis"
        base = (
            f"{scheme}://{_userinfo(self.username, self.password)}{self.host}:{self.port}/{self.db}"
        )
        query = _query(self.tls_options()) if self.ssl else ""
        return f"{base}?{query}" if query else base

    def tls_options(self) -> dict[str, Any]:
        """redis-py's TLS keyword arguments (empty without TLS)."""
        if not self.ssl:
            return {}
        return {
            "ssl_ca_certs": self.ssl_ca_certs,
            "ssl_certfile": self.ssl_certfile,
            "ssl_keyfile": self.ssl_keyfile,
            "ssl_cert_reqs": self.ssl_cert_reqs,
            "ssl_check_hostname": self.ssl_check_hostname,
        }

    @classmethod
    def _from_url(cls, url: str) -> dict[str, Any]:
        return _url_fields(
            url, 6379, user="username", path="db",
            params=("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs",
                    "ssl_check_hostname"),
            schemes={"redis": {}, "rediss": {"ssl": True}},
        )  # fmt: skip


SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


@dataclass(frozen=True)
class PostgresConfig:
    enabled: bool = True
    host: str = "localhost"
    port: int = 5432
    database: str = "satellites"
    user: str = "postgres"
    password: str | None = field(default=None, repr=False)
    #: The schema that holds the event log, checkpoints and Alembic's version table.
    schema: str = "satellites"
    min_connections: int = 2
    max_connections: int = 10
    command_timeout: float = 30.0
    application_name: str = "satellites-es"
    #: TLS, as libpq names it. None: the driver's default (``prefer``: encrypted if the server
    #: offers it, never verified), or ``verify-full`` when a root certificate is given.
    sslmode: SslMode | None = None
    sslrootcert: str | None = None
    sslcert: str | None = None
    sslkey: str | None = None
    sslpassword: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not SCHEMA_NAME.match(self.schema):
            raise ConfigurationError(
                "postgres.schema",
                f"must be 1-63 of a-z 0-9 _, not starting with a digit (got {self.schema!r})",
            )
        _check_port("postgres.port", self.port)
        _check_positive(self, "min_connections", zero=True)
        _check_positive(self, "max_connections", "command_timeout")
        if self.min_connections > self.max_connections:
            raise ConfigurationError(
                "postgres.min_connections", "must not exceed postgres.max_connections"
            )
        _tls_only("postgres", self.sslmode != "disable", "sslmode is disable",
                  sslrootcert=self.sslrootcert, sslcert=self.sslcert, sslkey=self.sslkey,
                  sslpassword=self.sslpassword)  # fmt: skip

    @property
    def effective_sslmode(self) -> SslMode | None:
        """The mode the driver gets: a root certificate without a mode means ``verify-full``
        (asking for a CA is asking to be verified; libpq would default to ``prefer``)."""
        if self.sslmode is None and self.sslrootcert is not None:
            return "verify-full"
        return self.sslmode

    @property
    def dsn(self) -> str:
        """The DSN with the password: hand it to a driver, never to a log (see ``safe_dsn``).

        A ``host`` that is a directory (``/run/postgresql``) means a Unix socket there. The TLS
        parameters ride in it in libpq's spelling, which asyncpg reads: every connection made
        from it (pool, NOTIFY listener, relay lock session, migrations, health) gets them."""
        tls = _query(self.tls_options())
        return (
            self._url()
            + f"{'&' if self.host.startswith('/') else '?'}application_name="
            + quote(self.application_name, safe="")
            + (f"&{tls}" if tls else "")
        )

    def tls_options(self) -> dict[str, str | None]:
        """The libpq TLS parameters that are set (``sslmode`` as :attr:`effective_sslmode`)."""
        return {
            "sslmode": self.effective_sslmode,
            "sslrootcert": self.sslrootcert,
            "sslcert": self.sslcert,
            "sslkey": self.sslkey,
            "sslpassword": self.sslpassword,
        }

    def _url(self) -> str:
        # The application name rides in the DSN, so every connection (pool, NOTIFY listener,
        # relay lock session) carries it: operators find them all in pg_stat_activity.
        if self.host.startswith("/"):
            port = "" if self.port == 5432 else f"&port={self.port}"
            return (
                f"postgresql://{_userinfo(self.user, self.password)}/"
                f"{quote(self.database, safe='')}?host={quote(self.host)}{port}"
            )
        return (
            f"postgresql://{_userinfo(self.user, self.password)}"
            f"{self.host}:{self.port}/{quote(self.database, safe='')}"
        )

    @property
    def safe_dsn(self) -> str:
        return redact_url(self.dsn)

    @property
    def sqlalchemy_url(self) -> str:
        """SQLAlchemy's URL for the dialect. Its connections are made from :attr:`dsn`
        (``migrate.connect_engine`` passes an ``async_creator``), so TLS reaches them too."""
        return self._url().replace("postgresql://", "postgresql+asyncpg://", 1)

    @classmethod
    def _from_url(cls, url: str) -> dict[str, Any]:
        return _url_fields(
            url, 5432, user="user", path="database",
            params=("application_name", "sslmode", "sslrootcert", "sslcert", "sslkey",
                    "sslpassword"),
            schemes={"postgresql": {}, "postgres": {}},
        )  # fmt: skip


@dataclass(frozen=True)
class RabbitMQConfig:
    enabled: bool = True
    host: str = "localhost"
    #: None: 5671 with TLS, else 5672 (AMQP's registered ports).
    port: int | None = None
    user: str = "guest"
    password: str | None = field(default="guest", repr=False)
    vhost: str = "/"
    exchange: str = "satellites.events"
    #: Per-key order with competing consumers: a key hashes to one of N partition queues,
    #: each consumed by a single active consumer.
    partitions: int = 4
    prefetch: int = 256
    publish_timeout: float = 10.0
    max_retries: int = 5
    retry_backoff: float = 0.2
    #: Group and dead-letter queues: ``quorum`` (replicated, the default) or ``classic`` (for a
    #: single-node broker). Changing it for existing queues needs a migration (README).
    queue_type: Literal["quorum", "classic"] = "quorum"
    #: Quorum queues: deliveries of one message (each crash of its consumer counts) after which
    #: the broker moves it to the group's dead-letter queue. ``0`` turns the limit off.
    delivery_limit: int = 5
    #: TLS (``amqps://``), in aiormq's terms: the CA bundle (None: the system's), a client
    #: certificate and key; ``no_verify_ssl`` turns verification off (encrypted, unverified).
    ssl: bool = False
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    no_verify_ssl: bool = False

    def __post_init__(self) -> None:
        if self.port is None:  # frozen: set once, here
            object.__setattr__(self, "port", 5671 if self.ssl else 5672)
        assert self.port is not None
        _check_port("rabbitmq.port", self.port)
        _check_positive(self, "partitions", "prefetch", "publish_timeout")
        _check_positive(self, "max_retries", "retry_backoff", zero=True)
        _require(bool(self.exchange), "rabbitmq.exchange",
                 "must not be empty (that is the broker's default exchange)")  # fmt: skip
        if self.delivery_limit < 0:
            raise ConfigurationError("rabbitmq.delivery_limit", "must be 0 (off) or more")
        _tls_only("rabbitmq", self.ssl, "use amqps:// or SATELLITES_RABBITMQ_SSL=true",
                  cafile=self.cafile, certfile=self.certfile, keyfile=self.keyfile,
                  no_verify_ssl=self.no_verify_ssl or None)  # fmt: skip

    @property
    def url(self) -> str:
        """The URL with the password and the TLS options, as aiormq reads them."""
        vhost = quote(self.vhost, safe="")
        scheme = "amqps" if self.ssl else "amqp"
        base = f"{scheme}://{_userinfo(self.user, self.password)}{self.host}:{self.port}/{vhost}"
        query = _query(self.tls_options())
        return f"{base}?{query}" if query else base

    def tls_options(self) -> dict[str, str | None]:
        """aiormq's TLS query parameters that are set (empty without TLS)."""
        if not self.ssl:
            return {}
        return {
            "cafile": self.cafile,
            "certfile": self.certfile,
            "keyfile": self.keyfile,
            "no_verify_ssl": "1" if self.no_verify_ssl else None,
        }

    @property
    def safe_url(self) -> str:
        return redact_url(self.url)

    @classmethod
    def _from_url(cls, url: str) -> dict[str, Any]:
        out = _url_fields(
            url, 0, user="user", path="vhost",
            params=("cafile", "certfile", "keyfile", "no_verify_ssl"),
            schemes={"amqp": {}, "amqps": {"ssl": True}},
        )  # fmt: skip
        if urlsplit(url).port is None and "port" not in parse_qs(urlsplit(url).query):
            del out["port"]  # no port in the URL: the scheme's own (5671 for amqps)
        return out


@dataclass(frozen=True)
class ElasticsearchConfig:
    enabled: bool = True
    hosts: tuple[str, ...] = ("http://localhost:9200",)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    request_timeout: float = 30.0
    index_prefix: str = "sat-"
    #: TLS for ``https://`` hosts, in elasticsearch-py's terms: the CA bundle (None: certifi's),
    #: whether to verify at all, a pinned certificate fingerprint (SHA-256, hex), and a client
    #: certificate and key.
    ca_certs: str | None = None
    verify_certs: bool = True
    ssl_assert_fingerprint: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    def __post_init__(self) -> None:
        _require(bool(self.hosts), "elasticsearch.hosts", "needs at least one host URL")
        for host in self.hosts:
            _check_url_port(host, "elasticsearch.hosts")
            _require(urlsplit(host).scheme in ("http", "https"), "elasticsearch.hosts",
                     f"must be http:// or https:// URLs (got {redact_url(host)!r})")  # fmt: skip
            _require(not urlsplit(host).query, "elasticsearch.hosts",
                     "host URLs take no query parameters (TLS options are "
                     "SATELLITES_ELASTICSEARCH_CA_CERTS and the like)")  # fmt: skip
        _check_positive(self, "request_timeout")
        _require(bool(_INDEX_PREFIX.match(self.index_prefix)), "elasticsearch.index_prefix",
                 "must be 1-64 of a-z 0-9 _ . -, starting with a letter or digit (no wildcards; "
                 f"empty matches every index) (got {self.index_prefix!r})")  # fmt: skip
        _tls_only("elasticsearch", self.tls, "no host is https://",
                  ca_certs=self.ca_certs, ssl_assert_fingerprint=self.ssl_assert_fingerprint,
                  client_cert=self.client_cert, client_key=self.client_key)  # fmt: skip

    @property
    def tls(self) -> bool:
        return any(urlsplit(h).scheme == "https" for h in self.hosts)

    def tls_options(self) -> dict[str, Any]:
        """elasticsearch-py's TLS keyword arguments (empty when no host is https)."""
        if not self.tls:
            return {}
        return {
            "ca_certs": self.ca_certs,
            "verify_certs": self.verify_certs,
            "ssl_assert_fingerprint": self.ssl_assert_fingerprint,
            "client_cert": self.client_cert,
            "client_key": self.client_key,
        }

    @classmethod
    def _from_url(cls, url: str) -> dict[str, Any]:
        hosts = [h.strip() for h in url.split(",") if h.strip()]
        first = urlsplit(hosts[0]) if hosts else None
        out: dict[str, Any] = {
            # credentials travel as fields, never inside the host URLs
            "hosts": tuple(
                urlsplit(h)._replace(netloc=urlsplit(h).netloc.rsplit("@", 1)[-1]).geturl()
                for h in hosts
            )
        }
        if first is not None and first.username:
            out["username"] = unquote(first.username)
        if first is not None and first.password:
            out["password"] = unquote(first.password)
        return out


@dataclass(frozen=True)
class FaissConfig:
    enabled: bool = True
    index_path: Path = Path("./data/faiss")
    dimension: int = 1536  # OpenAI embedding size default (the seed's)
    metric: Literal["cosine", "ip", "l2"] = "cosine"
    index_kind: Literal["flat", "hnsw", "ivf"] = "flat"
    #: Worker threads for FAISS calls (searches may overlap, writes are exclusive).
    threads: int = 2
    #: Concurrent single queries on one namespace are coalesced into one batched search.
    coalesce_max_batch: int = 256
    #: Replicas from object storage (:mod:`satellites_es.vectors.snapshot_store`):
    #: ``s3://bucket/prefix`` or ``file:///shared/volume``; None: local snapshots only.
    #: Credentials come from the standard AWS environment/credential chain, never from here.
    snapshot_url: str | None = None
    #: An S3-compatible endpoint (MinIO, R2, a test server); None: AWS.
    snapshot_endpoint: str | None = None
    #: Snapshots kept in the store (older ones that we made are deleted).
    snapshot_keep: int = 3
    #: The snapshotter (one process, leader-elected) uploads after this many events...
    snapshot_every_events: int = 100_000
    #: ... or this many seconds after its last upload, if anything was applied since.
    snapshot_every_seconds: float = 300.0
    #: This process may become the snapshotter; False: it only downloads.
    snapshot_upload: bool = True

    def __post_init__(self) -> None:
        _check_positive(self, "dimension", "threads", "coalesce_max_batch")
        _check_positive(self, "snapshot_keep", "snapshot_every_events", "snapshot_every_seconds")
        if self.snapshot_url is not None:
            _require(urlsplit(self.snapshot_url).scheme in ("s3", "file"), "faiss.snapshot_url",
                     f"must be s3://bucket/prefix or file:///path (got {redact_url(self.snapshot_url)!r})")  # fmt: skip
        if self.snapshot_endpoint is not None:
            _check_url_port(self.snapshot_endpoint, "faiss.snapshot_endpoint")
            _require(urlsplit(self.snapshot_endpoint).scheme in ("http", "https"),
                     "faiss.snapshot_endpoint", "must be an http:// or https:// URL")  # fmt: skip


@dataclass(frozen=True)
class EventLogConfig:
    """The Postgres event log (the outbox). Needs the Postgres backend."""

    enabled: bool = True
    #: Upgrade the schema to the latest migration when the layer starts.
    auto_migrate: bool = True
    max_payload_bytes: int = 1_048_576
    notify_channel: str = "satellites_events"
    read_batch_size: int = 1000

    def __post_init__(self) -> None:
        _check_positive(self, "max_payload_bytes", "read_batch_size")


@dataclass(frozen=True)
class RelayConfig:
    #: Run a relay inside every DataLayer (leader-elected: one publishes, others stand by).
    enabled: bool = True
    batch_size: int = 500
    confirm_window: int = 500
    poll_interval: float = 1.0
    #: Stand-by relays try to take the lead this often.
    standby_interval: float = 1.0
    #: The leader numbers events committed inside producers' transactions this often (seconds):
    #: the bound on how long such an event waits to become readable.
    sequence_interval: float = 0.01

    def __post_init__(self) -> None:
        _check_positive(self, "batch_size", "confirm_window", "poll_interval", "standby_interval",
                        "sequence_interval")  # fmt: skip


_SECTIONS: dict[str, type[Any]] = {
    "redis": RedisConfig,
    "postgres": PostgresConfig,
    "elasticsearch": ElasticsearchConfig,
    "faiss": FaissConfig,
    "rabbitmq": RabbitMQConfig,
    "log": EventLogConfig,
    "relay": RelayConfig,
}


@dataclass(frozen=True)
class DataLayerConfig:
    redis: RedisConfig = field(default_factory=RedisConfig)
    postgres: PostgresConfig = field(default_factory=PostgresConfig)
    elasticsearch: ElasticsearchConfig = field(default_factory=ElasticsearchConfig)
    faiss: FaissConfig = field(default_factory=FaissConfig)
    rabbitmq: RabbitMQConfig = field(default_factory=RabbitMQConfig)
    log: EventLogConfig = field(default_factory=EventLogConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    #: How long start() keeps retrying one backend before it gives up, in seconds.
    connect_timeout: float = 10.0
    #: How long stop() waits for background work to finish, in seconds.
    stop_timeout: float = 10.0
    #: The module whose ``PROJECTIONS`` mapping defines the projections; None: the installed
    #: ``satellites_es.projections`` entry points, else the demo's (see ``load_projections``).
    projections_module: str | None = None

    def __post_init__(self) -> None:
        _check_positive(self, "connect_timeout", "stop_timeout")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> DataLayerConfig:
        """Build the config from ``SATELLITES_*`` variables (``os.environ`` by default)."""
        source = os.environ if env is None else env
        top = _parse_fields(cls, source, ENV_PREFIX, skip=set(_SECTIONS))
        sections = {
            name: _build_section(name, section_cls, source)
            for name, section_cls in _SECTIONS.items()
        }
        try:
            return cls(**{**top, **sections, **overrides})
        except ConfigurationError as exc:  # a top-level field: name its variable
            raise ConfigurationError(
                f"{ENV_PREFIX}{exc.field.split('.')[-1].upper()}", _reason(exc)
            ) from exc

    def replace(self, **changes: Any) -> DataLayerConfig:
        return dataclasses.replace(self, **changes)


def _build_section(name: str, section_cls: type[Any], env: Mapping[str, str]) -> Any:
    prefix = f"{ENV_PREFIX}{name.upper()}_"
    values: dict[str, Any] = {}
    url_var = f"{prefix}URL"
    url = env.get(url_var)
    if url and hasattr(section_cls, "_from_url"):
        try:
            values.update(section_cls._from_url(url))
        except ValueError as exc:  # urlsplit's port: "could not be cast", "out of range"
            raise ConfigurationError(url_var, f"invalid URL: {exc}") from None
    from_url = set(values)
    fields = {**_parse_fields(section_cls, env, prefix), **_secret_files(section_cls, env, prefix)}
    values.update(fields)
    hints = typing.get_type_hints(section_cls)
    for key, raw in list(values.items()):
        source = url_var if key in from_url and key not in fields else f"{prefix}{key.upper()}"
        values[key] = _convert(source, hints[key], raw)
    try:
        return section_cls(**values)
    except ConfigurationError as exc:
        key = exc.field.split(".")[-1]
        # a value that came from the URL is the URL's fault: name the variable the user set
        var = url_var if key in from_url and key not in fields else f"{prefix}{key.upper()}"
        raise ConfigurationError(var, _reason(exc)) from exc


def _secret_files(cls: type[Any], env: Mapping[str, str], prefix: str) -> dict[str, str]:
    """Secret fields (``repr=False``) read from the files ``<VARIABLE>_FILE`` name."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        var = f"{prefix}{f.name.upper()}"
        path = env.get(f"{var}_FILE")
        if f.repr or path is None:
            continue
        if var in env:
            raise ConfigurationError(f"{var}_FILE", f"set either {var} or {var}_FILE, not both")
        try:
            out[f.name] = (
                Path(path).read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
            )
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigurationError(f"{var}_FILE", f"cannot read {path}: {why}") from None
    return out


def _reason(exc: ConfigurationError) -> str:
    """The message without the ``field: `` the error put in front of it."""
    return str(exc).removeprefix(f"{exc.field}: ")


def _parse_fields(
    cls: type[Any], env: Mapping[str, str], prefix: str, skip: set[str] | None = None
) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if skip and f.name in skip:
            continue
        var = f"{prefix}{f.name.upper()}"
        if var in env:
            out[f.name] = _convert(var, hints[f.name], env[var])
    return out


def _convert(var: str, hint: Any, raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    if typing.get_origin(hint) is tuple:
        raw = [part.strip() for part in raw.split(",") if part.strip()]
    try:
        return TypeAdapter(hint).validate_python(raw)
    except ValidationError as exc:
        problem = exc.errors()[0]["msg"]
        shown = "<hidden>" if "PASSWORD" in var or "KEY" in var else repr(raw)
        raise ConfigurationError(var, f"{problem} (got {shown})") from None
