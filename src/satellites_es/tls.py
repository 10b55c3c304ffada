"""What TLS each backend connection has, for ``health()``, and which connect errors are final.

The configuration (:mod:`satellites_es.config`) hands TLS to each driver in the driver's own
terms; this module answers the operator's two questions about the result, per backend:

* **encrypted**: is the traffic under TLS? For Postgres this is asked of the server
  (``pg_stat_ssl.ssl`` of the checking connection), because libpq's ``prefer`` and ``allow``
  fall back to plaintext without a word. ``rediss``, ``amqps`` and ``https`` never fall back
  (the driver fails instead), so for them it follows from the configuration.
* **verified**: was the server's certificate checked against a CA (or, for Elasticsearch, a
  pinned fingerprint)? It follows from what the driver was told: asyncpg checks the chain for
  ``verify-ca``, ``verify-full`` and ``require`` with a root certificate (libpq's rule),
  redis-py for ``ssl_cert_reqs=required``, aiormq unless ``no_verify_ssl``, elasticsearch-py
  unless ``verify_certs=false``. ``hostname`` says whether the name was checked too.

:func:`is_refusal` sorts a failed connect: a certificate that does not verify, a TLS handshake
or a login the server refuses will fail the same way on every retry, so ``start()`` reports it
at once instead of retrying until its timeout (a backend that is down is still waited for).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import ServerFingerprintMismatch
from elastic_transport import TlsError

from .config import ElasticsearchConfig, PostgresConfig, RabbitMQConfig, RedisConfig
from .sql import load

__all__ = [
    "TlsState",
    "elasticsearch_tls",
    "is_refusal",
    "postgres_tls",
    "rabbitmq_tls",
    "redis_tls",
    "refusal_reason",
]

#: Whether this session is under TLS (the server's word, not the client's intent): a query.
PG_SSL_IN_USE = load("session_ssl")


@dataclass(frozen=True)
class TlsState:
    """One backend's TLS, as health reports it."""

    encrypted: bool
    verified: bool
    hostname: bool
    #: How it was asked for, in the driver's terms (``sslmode=verify-full``, ``rediss``, ...).
    mode: str

    def to_details(self) -> dict[str, Any]:
        return {
            "encrypted": self.encrypted,
            "verified": self.verified,
            "tls": f"{self.mode}; hostname {'checked' if self.hostname else 'not checked'}"
            if self.encrypted
            else f"{self.mode}; plaintext",
        }


def postgres_tls(config: PostgresConfig, ssl_in_use: bool) -> TlsState:
    """``ssl_in_use``: the server's ``pg_stat_ssl.ssl`` for a connection made from the DSN."""
    mode = config.effective_sslmode
    chain = mode in ("verify-ca", "verify-full") or (mode == "require" and bool(config.sslrootcert))
    return TlsState(
        encrypted=ssl_in_use,
        verified=ssl_in_use and chain,
        hostname=ssl_in_use and mode == "verify-full",
        mode=f"sslmode={mode}" if mode else "sslmode=prefer (driver default)",
    )


def redis_tls(config: RedisConfig) -> TlsState:
    on = config.ssl
    return TlsState(
        encrypted=on,
        verified=on and config.ssl_cert_reqs == "required",
        hostname=on and config.ssl_check_hostname and config.ssl_cert_reqs != "none",
        mode=f"rediss, ssl_cert_reqs={config.ssl_cert_reqs}" if on else "redis",
    )


def rabbitmq_tls(config: RabbitMQConfig) -> TlsState:
    on = config.ssl
    verify = on and not config.no_verify_ssl
    return TlsState(
        encrypted=on,
        verified=verify,
        hostname=verify,
        mode=("amqps, no_verify_ssl" if config.no_verify_ssl else "amqps") if on else "amqp",
    )


def elasticsearch_tls(config: ElasticsearchConfig) -> TlsState:
    # Every host must be https for the connection to be called encrypted: the client spreads
    # requests over all of them.
    on = all(h.startswith("https://") for h in config.hosts)
    pinned = config.ssl_assert_fingerprint is not None
    return TlsState(
        encrypted=on,
        verified=on and (config.verify_certs or pinned),
        hostname=on and config.verify_certs,
        mode=("https, fingerprint pinned" if pinned else "https") if on else "http",
    )


#: TLS errors that mean "the connection was cut" (a restart mid-handshake), not "refused".
_CUT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def is_refusal(exc: BaseException) -> bool:
    """True if ``exc`` (or an error it wraps) is final: TLS refused, login refused."""
    return any(
        (isinstance(e, ssl.SSLError) and not isinstance(e, _CUT))
        or isinstance(
            e, TlsError | ServerFingerprintMismatch | asyncpg.InvalidAuthorizationSpecificationError
        )
        for e in _chain(exc)
    )


def refusal_reason(exc: BaseException) -> str:
    """The most telling error of a refusal: the TLS error inside the driver's wrapper (the
    Elasticsearch client says only "TLS error"), else ``exc`` itself."""
    inner = next(
        (e for e in _chain(exc) if isinstance(e, ssl.SSLError | ServerFingerprintMismatch)), exc
    )
    return f"{type(inner).__name__}: {inner}"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, its causes and contexts, and the errors wrapper types list (``errors``)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
        inner = getattr(e, "errors", None)
        if isinstance(inner, tuple | list):
            todo.extend(x for x in inner if isinstance(x, BaseException))
        for arg in e.args:
            if isinstance(arg, BaseException):
                todo.append(arg)
